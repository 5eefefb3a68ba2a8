"""The readable definition of every recurrence: plain PyTorch, one time step at a time.

These functions have the op interface of ``csrc/ops.cpp`` (one layer, one direction, the input
projection ``gx`` precomputed) and are differentiated by torch's autograd. They are the
reference the kernels are tested against, and the ``"reference"`` backend for devices with no
fused kernel. They are slow on purpose: nothing here is fused.

Shapes: ``gx [T, B, G*H]``, ``w_hh [G*H, P]``, ``w_hr [P, H]``, ``h0 [B, P]``, ``c0 [B, H]``,
``lengths [B]`` (int64; step ``t`` is real for sequence ``b`` iff ``t < lengths[b]``).
Gate order as torch.nn: LSTM (i, f, g, o), GRU (r, z, n).
"""

from __future__ import annotations

import torch
from torch import Tensor


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Gate maths run in fp32 for half-precision storage, as in the kernels."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _time_steps(T: int, reverse: bool) -> range:
    return range(T - 1, -1, -1) if reverse else range(T)


def _step_mask(lengths: Tensor | None, t: int, like: Tensor) -> Tensor | None:
    """[B, 1] bool: which sequences have a real step at time t (None: all of them)."""
    if lengths is None:
        return None
    return (lengths.to(like.device) > t).unsqueeze(1)


def _advance(mask: Tensor | None, new: Tensor, old: Tensor) -> Tensor:
    """A finished sequence keeps its state."""
    return new if mask is None else torch.where(mask, new, old)


def _emit(mask: Tensor | None, h: Tensor) -> Tensor:
    """A finished sequence emits zeros."""
    return h if mask is None else torch.where(mask, h, torch.zeros_like(h))


def _step_inputs(mask: Tensor | None, *tensors: Tensor) -> tuple[Tensor, ...]:
    """The rows a step computes on: those of finished sequences (or, in reverse, of sequences
    not yet begun) are zeros, and their results are dropped. Computed on their own state, a NaN
    or inf there would reach the gradients through the dropped results (0 * inf), where the
    row of a PackedSequence does not exist."""
    return tuple(_emit(mask, t) for t in tensors)


def lstm(
    gx: Tensor,
    w_hh: Tensor,
    w_hr: Tensor | None,
    h0: Tensor,
    c0: Tensor,
    lengths: Tensor | None = None,
    reverse: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """Returns y [T, B, P], h_n [B, P], c_n [B, H]."""
    dtype = gx.dtype
    cdt = _compute_dtype(dtype)
    gx, w_hh, h, c = gx.to(cdt), w_hh.to(cdt), h0.to(cdt), c0.to(cdt)
    w_hr = None if w_hr is None else w_hr.to(cdt)
    ys = [None] * gx.shape[0]
    for t in _time_steps(gx.shape[0], reverse):
        mask = _step_mask(lengths, t, h)
        x_t, h_in, c_in = _step_inputs(mask, gx[t], h, c)
        i, f, g, o = (x_t + h_in @ w_hh.t()).chunk(4, dim=1)
        i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
        c_new = f * c_in + i * g
        h_new = o * torch.tanh(c_new)
        if w_hr is not None:
            h_new = h_new @ w_hr.t()
        ys[t] = _emit(mask, h_new)
        h, c = _advance(mask, h_new, h), _advance(mask, c_new, c)
    y = torch.stack(ys) if ys else gx.new_zeros(0, h.shape[0], h.shape[1])
    return y.to(dtype), h.to(dtype), c.to(dtype)


def gru(
    gx: Tensor,
    w_hh: Tensor,
    b_hh: Tensor | None,
    h0: Tensor,
    lengths: Tensor | None = None,
    reverse: bool = False,
) -> tuple[Tensor, Tensor]:
    """Returns y [T, B, H], h_n [B, H]. ``gx`` holds W_ih x + b_ih; b_hh stays inside."""
    dtype = gx.dtype
    cdt = _compute_dtype(dtype)
    gx, w_hh, h = gx.to(cdt), w_hh.to(cdt), h0.to(cdt)
    b_hh = None if b_hh is None else b_hh.to(cdt)
    ys = [None] * gx.shape[0]
    for t in _time_steps(gx.shape[0], reverse):
        mask = _step_mask(lengths, t, h)
        x_t, h_in = _step_inputs(mask, gx[t], h)
        gh = h_in @ w_hh.t()
        if b_hh is not None:
            gh = gh + b_hh
        x_r, x_z, x_n = x_t.chunk(3, dim=1)
        h_r, h_z, h_n = gh.chunk(3, dim=1)
        r = torch.sigmoid(x_r + h_r)
        z = torch.sigmoid(x_z + h_z)
        n = torch.tanh(x_n + r * h_n)
        h_new = (1 - z) * n + z * h_in
        ys[t] = _emit(mask, h_new)
        h = _advance(mask, h_new, h)
    y = torch.stack(ys) if ys else gx.new_zeros(0, h.shape[0], h.shape[1])
    return y.to(dtype), h.to(dtype)


def _rnn(activation, gx, w_hh, h0, lengths, reverse):
    dtype = gx.dtype
    cdt = _compute_dtype(dtype)
    gx, w_hh, h = gx.to(cdt), w_hh.to(cdt), h0.to(cdt)
    ys = [None] * gx.shape[0]
    for t in _time_steps(gx.shape[0], reverse):
        mask = _step_mask(lengths, t, h)
        x_t, h_in = _step_inputs(mask, gx[t], h)
        h_new = activation(x_t + h_in @ w_hh.t())
        ys[t] = _emit(mask, h_new)
        h = _advance(mask, h_new, h)
    y = torch.stack(ys) if ys else gx.new_zeros(0, h.shape[0], h.shape[1])
    return y.to(dtype), h.to(dtype)


def rnn_tanh(
    gx: Tensor, w_hh: Tensor, h0: Tensor, lengths: Tensor | None = None, reverse: bool = False
) -> tuple[Tensor, Tensor]:
    """Returns y [T, B, H], h_n [B, H] with h_t = tanh(gx_t + W_hh h_{t-1})."""
    return _rnn(torch.tanh, gx, w_hh, h0, lengths, reverse)


def rnn_relu(
    gx: Tensor, w_hh: Tensor, h0: Tensor, lengths: Tensor | None = None, reverse: bool = False
) -> tuple[Tensor, Tensor]:
    """Returns y [T, B, H], h_n [B, H] with h_t = relu(gx_t + W_hh h_{t-1})."""
    return _rnn(torch.relu, gx, w_hh, h0, lengths, reverse)


# ---------------------------------------------------------------------------------------------
# Layer-normalised cells with zoneout (fused_rnn.LayerNormLSTM / LayerNormGRU).
#
# LN(v; γ, β) normalises v over its last dimension: (v - mean(v)) / sqrt(var(v) + eps) * γ + β,
# with the biased variance. Per layer and direction:
#
#   LSTM  a_t = LN(W_ih x_t; γ_ih) + LN(W_hh h_{t-1}; γ_hh) + b           (each LN over 4H)
#         i, f, g, o = σ(a_i), σ(a_f), tanh(a_g), σ(a_o)
#         c'_t = f ⊙ c_{t-1} + i ⊙ g          h'_t = o ⊙ tanh(LN(c'_t; γ_c, β_c))
#   GRU   gx = LN(W_ih x_t; γ_ih) + b_ih      gh = LN(W_hh h_{t-1}; γ_hh) + b_hh   (over 3H)
#         r, z = σ(gx_r + gh_r), σ(gx_z + gh_z)    n = tanh(gx_n + r ⊙ gh_n)
#         h'_t = (1 - z) ⊙ n + z ⊙ h_{t-1}
#
# Zoneout: each unit of the new state keeps its previous value with probability p:
#   h_t = d ⊙ h_{t-1} + (1 - d) ⊙ h'_t  (and c_t likewise from c'_t with its own mask), with
# d a Bernoulli(p) mask per step in training and d = p (the expectation) in eval. The LSTM's
# h'_t is computed from c'_t, the new cell state before zoneout. The output y_t is h_t.
#
# The input side LN(W_ih x_t; γ_ih) + b of all steps does not depend on the recurrence: it is
# computed for all T * B rows at once (layernorm_input_projection), and the recurrence
# functions below take it as ``gx``, as the plain cells' take the input projection.
# ---------------------------------------------------------------------------------------------


def layer_norm(v: Tensor, gamma: Tensor, beta: Tensor | None, eps: float) -> Tensor:
    """LN(v; γ, β) over the last dimension (biased variance), written out."""
    mean = v.mean(-1, keepdim=True)
    var = (v - mean).pow(2).mean(-1, keepdim=True)
    out = (v - mean) * torch.rsqrt(var + eps) * gamma
    return out if beta is None else out + beta


def layernorm_input_projection(
    x: Tensor, w_ih: Tensor, gamma_ih: Tensor, bias: Tensor | None, eps: float
) -> Tensor:
    """gx [T, B, G*H] = LN(x W_ih^T; γ_ih) + bias for every step at once (bias: the LSTM's b,
    the GRU's b_ih, or None)."""
    return layer_norm(x @ w_ih.t(), gamma_ih, bias, eps)


def _zoneout_weight(mask: Tensor | None, p: float, t: int):
    """The weight of the previous state at step t: the mask's step (a bool [B, H]), the constant
    p (eval: the expectation), or None (no zoneout)."""
    if mask is not None:
        return mask[t]
    return p if p != 0 else None


def _zoneout(keep, previous: Tensor, new: Tensor) -> Tensor:
    """keep ⊙ previous + (1 - keep) ⊙ new. A mask selects (so that a value it drops cannot turn
    the result into NaN); a constant blends."""
    if keep is None:
        return new
    if isinstance(keep, Tensor):
        return torch.where(keep, previous, new)
    return keep * previous + (1 - keep) * new


def layernorm_lstm(
    gx: Tensor,
    w_hh: Tensor,
    gamma_hh: Tensor,
    gamma_c: Tensor,
    beta_c: Tensor,
    h0: Tensor,
    c0: Tensor,
    zoneout_h_mask: Tensor | None = None,
    zoneout_c_mask: Tensor | None = None,
    zoneout_h: float = 0.0,
    zoneout_c: float = 0.0,
    lengths: Tensor | None = None,
    reverse: bool = False,
    eps: float = 1e-5,
) -> tuple[Tensor, Tensor, Tensor]:
    """The layer-normalised LSTM with zoneout; returns y [T, B, H], h_n [B, H], c_n [B, H].

    gx [T, B, 4H] is LN(W_ih x_t; γ_ih) + b (layernorm_input_projection); w_hh [4H, H],
    gamma_hh [4H], gamma_c and beta_c [H]. Zoneout masks: bool [T, B, H] (True: the unit keeps
    its previous value), used in training; without a mask the constant probability zoneout_h
    (zoneout_c) weighs the previous state (eval's expectation; 0: no zoneout)."""
    dtype = gx.dtype
    cdt = _compute_dtype(dtype)
    gx, w_hh, h, c = gx.to(cdt), w_hh.to(cdt), h0.to(cdt), c0.to(cdt)
    gamma_hh, gamma_c, beta_c = gamma_hh.to(cdt), gamma_c.to(cdt), beta_c.to(cdt)
    ys = [None] * gx.shape[0]
    for t in _time_steps(gx.shape[0], reverse):
        mask = _step_mask(lengths, t, h)
        x_t, h_in, c_in = _step_inputs(mask, gx[t], h, c)
        a = x_t + layer_norm(h_in @ w_hh.t(), gamma_hh, None, eps)
        i, f, g, o = a.chunk(4, dim=1)
        i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
        c_new = f * c_in + i * g
        h_new = o * torch.tanh(layer_norm(c_new, gamma_c, beta_c, eps))
        h_new = _zoneout(_zoneout_weight(zoneout_h_mask, zoneout_h, t), h_in, h_new)
        c_new = _zoneout(_zoneout_weight(zoneout_c_mask, zoneout_c, t), c_in, c_new)
        ys[t] = _emit(mask, h_new)
        h, c = _advance(mask, h_new, h), _advance(mask, c_new, c)
    y = torch.stack(ys) if ys else gx.new_zeros(0, h.shape[0], h.shape[1])
    return y.to(dtype), h.to(dtype), c.to(dtype)


def layernorm_gru(
    gx: Tensor,
    w_hh: Tensor,
    gamma_hh: Tensor,
    b_hh: Tensor | None,
    h0: Tensor,
    zoneout_h_mask: Tensor | None = None,
    zoneout_h: float = 0.0,
    lengths: Tensor | None = None,
    reverse: bool = False,
    eps: float = 1e-5,
) -> tuple[Tensor, Tensor]:
    """The layer-normalised GRU with zoneout; returns y [T, B, H], h_n [B, H].

    gx [T, B, 3H] is LN(W_ih x_t; γ_ih) + b_ih; w_hh [3H, H], gamma_hh and b_hh [3H] (b_hh the
    recurrent LN's β, inside the reset product as in torch.nn's GRU). Zoneout as
    :func:`layernorm_lstm`."""
    dtype = gx.dtype
    cdt = _compute_dtype(dtype)
    gx, w_hh, h, gamma_hh = gx.to(cdt), w_hh.to(cdt), h0.to(cdt), gamma_hh.to(cdt)
    b_hh = None if b_hh is None else b_hh.to(cdt)
    ys = [None] * gx.shape[0]
    for t in _time_steps(gx.shape[0], reverse):
        mask = _step_mask(lengths, t, h)
        x_t, h_in = _step_inputs(mask, gx[t], h)
        gh = layer_norm(h_in @ w_hh.t(), gamma_hh, b_hh, eps)
        x_r, x_z, x_n = x_t.chunk(3, dim=1)
        h_r, h_z, h_n = gh.chunk(3, dim=1)
        r = torch.sigmoid(x_r + h_r)
        z = torch.sigmoid(x_z + h_z)
        n = torch.tanh(x_n + r * h_n)
        h_new = (1 - z) * n + z * h_in
        h_new = _zoneout(_zoneout_weight(zoneout_h_mask, zoneout_h, t), h_in, h_new)
        ys[t] = _emit(mask, h_new)
        h = _advance(mask, h_new, h)
    y = torch.stack(ys) if ys else gx.new_zeros(0, h.shape[0], h.shape[1])
    return y.to(dtype), h.to(dtype)
