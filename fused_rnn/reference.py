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
