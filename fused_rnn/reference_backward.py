"""The backward of every recurrence in plain PyTorch: what the backward ops compute, from the same
saved tensors, written with differentiable torch ops.

A backward op's kernel is not differentiable. When the graph of a backward is wanted (a
``backward`` or ``torch.autograd.grad`` with ``create_graph=True``, on the way to a second
derivative), the autograd of the forward ops (``csrc/autograd.cpp``, and ``fused_rnn/_ops.py``
for the Triton ops) calls these functions instead, through the ops
``fused_rnn::{cell}_backward_differentiable``, and torch's autograd differentiates them. They
read the forward's inputs and its outputs ``y`` and workspace (``gates``, ``cs``), which are
outputs of the forward op: the part of a second derivative that goes through them reaches the
forward op's autograd again as the gradients of those outputs, which is why these functions
also take the gradients of the workspace (``grad_gates``, ``grad_cs``; None in a first
derivative). The forward's autograd calls them for that case too, with or without a graph.

Shapes and the workspace are those of ``csrc/ops.cpp``: ``w_hh [G*H, P]``, ``w_hr [P, H]``,
``h0 [B, P]``, ``c0 [B, H]``, ``y [T, B, P]``, LSTM ``gates [T, B, 4H]`` (activated i, f, g, o)
and ``cs [T, B, H]``, GRU ``gates [T, B, 4H]`` (r, z, n and gh_n = W_hn h_prev + b_hn). The
workspace of padded steps is not differentiated (the kernels write it as they please there).
Maths in fp32 for fp16/bf16 storage, as in the kernels; the gradients come back in ``y``'s dtype.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor

from .reference import _advance, _compute_dtype, _emit, _step_mask, _time_steps


def _previous_states(first: Tensor, outputs: Tensor, lengths, reverse: bool) -> list:
    """[T] list: the state each step starts from: ``first`` (h0 or c0) at a sequence's first
    step, else the output (y or cs) of the step before it in the forward's order."""
    previous = [None] * outputs.shape[0]
    state = first
    for t in _time_steps(outputs.shape[0], reverse):
        previous[t] = state
        state = _advance(_step_mask(lengths, t, state), outputs[t], state)
    return previous


def _start(grad: Optional[Tensor], like: Tensor) -> Tensor:
    """The gradient reaching a final state (None: zero), in the compute dtype."""
    return torch.zeros_like(like) if grad is None else grad.to(like.dtype)


def _step_grad(grad: Optional[Tensor], t: int, dtype: torch.dtype) -> Optional[Tensor]:
    return None if grad is None else grad[t].to(dtype)


def _stack(grads: list, T: int, B: int, width: int, like: Tensor) -> Tensor:
    return torch.stack(grads) if T > 0 else like.new_zeros(0, B, width)


def lstm(
    grad_y: Optional[Tensor],
    grad_h_n: Optional[Tensor],
    grad_c_n: Optional[Tensor],
    grad_gates: Optional[Tensor],
    grad_cs: Optional[Tensor],
    w_hh: Tensor,
    w_hr: Optional[Tensor],
    h0: Tensor,
    c0: Tensor,
    y: Tensor,
    gates: Tensor,
    cs: Tensor,
    lengths: Optional[Tensor] = None,
    reverse: bool = False,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Returns grad_gx [T, B, 4H], grad_w_hh, grad_w_hr ([0] without a projection), grad_h0,
    grad_c0, as fused_rnn::lstm_backward."""
    dtype = y.dtype
    cdt = _compute_dtype(dtype)
    w_hh, h0, c0, y, gates, cs = (t.to(cdt) for t in (w_hh, h0, c0, y, gates, cs))
    w_hr = None if w_hr is None else w_hr.to(cdt)
    T, B, H = cs.shape
    h_prev = _previous_states(h0, y, lengths, reverse)
    c_prev = _previous_states(c0, cs, lengths, reverse)
    dh, dc = _start(grad_h_n, h0), _start(grad_c_n, c0)
    grad_gx = [None] * T
    grad_w_hh = torch.zeros_like(w_hh)
    grad_w_hr = None if w_hr is None else torch.zeros_like(w_hr)
    for t in reversed(_time_steps(T, reverse)):
        mask = _step_mask(lengths, t, dh)
        dy = _step_grad(grad_y, t, cdt)
        dh_t = dh if dy is None else dh + dy
        i, f, g, o = gates[t].chunk(4, dim=1)
        tanh_c = torch.tanh(cs[t])
        if w_hr is not None:  # y = h_raw @ w_hr^T with h_raw = o * tanh(c)
            grad_w_hr = grad_w_hr + _emit(mask, dh_t).t() @ _emit(mask, o * tanh_c)
            dh_t = dh_t @ w_hr
        dc_t = dc + dh_t * o * (1 - tanh_c * tanh_c)
        d_cs = _step_grad(grad_cs, t, cdt)
        if d_cs is not None:
            dc_t = dc_t + d_cs
        # gradients of the activated gates, then through the activations (from their outputs)
        d_i, d_f, d_g, d_o = dc_t * g, dc_t * c_prev[t], dc_t * i, dh_t * tanh_c
        d_gates = _step_grad(grad_gates, t, cdt)
        if d_gates is not None:
            e_i, e_f, e_g, e_o = d_gates.chunk(4, dim=1)
            d_i, d_f, d_g, d_o = d_i + e_i, d_f + e_f, d_g + e_g, d_o + e_o
        da = torch.cat(
            [d_i * i * (1 - i), d_f * f * (1 - f), d_g * (1 - g * g), d_o * o * (1 - o)], dim=1
        )
        da = _emit(mask, da)  # padded steps have no gradient and pass dh, dc through
        grad_gx[t] = da
        grad_w_hh = grad_w_hh + da.t() @ h_prev[t]
        dh = _advance(mask, da @ w_hh, dh)
        dc = _advance(mask, dc_t * f, dc)
    grad_gx = _stack(grad_gx, T, B, 4 * H, cs)
    grad_w_hr = y.new_zeros(0) if grad_w_hr is None else grad_w_hr
    return tuple(g.to(dtype) for g in (grad_gx, grad_w_hh, grad_w_hr, dh, dc))


def gru(
    grad_y: Optional[Tensor],
    grad_h_n: Optional[Tensor],
    grad_gates: Optional[Tensor],
    w_hh: Tensor,
    h0: Tensor,
    y: Tensor,
    gates: Tensor,
    lengths: Optional[Tensor] = None,
    reverse: bool = False,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Returns grad_gx [T, B, 3H], grad_w_hh, grad_b_hh [3H], grad_h0, as
    fused_rnn::gru_backward."""
    dtype = y.dtype
    cdt = _compute_dtype(dtype)
    w_hh, h0, y, gates = (t.to(cdt) for t in (w_hh, h0, y, gates))
    T, B, H = y.shape
    h_prev = _previous_states(h0, y, lengths, reverse)
    dh = _start(grad_h_n, h0)
    grad_gx = [None] * T
    grad_w_hh = torch.zeros_like(w_hh)
    grad_b_hh = w_hh.new_zeros(w_hh.shape[0])
    for t in reversed(_time_steps(T, reverse)):
        mask = _step_mask(lengths, t, dh)
        dy = _step_grad(grad_y, t, cdt)
        dh_t = dh if dy is None else dh + dy
        r, z, n, gh_n = gates[t].chunk(4, dim=1)
        # h = (1 - z) * n + z * h_prev,  n = tanh(x_n + r * gh_n)
        d_n, d_z, d_r, d_gh_n = dh_t * (1 - z), dh_t * (h_prev[t] - n), 0, 0
        d_gates = _step_grad(grad_gates, t, cdt)
        if d_gates is not None:
            e_r, e_z, e_n, d_gh_n = d_gates.chunk(4, dim=1)
            d_n, d_z, d_r = d_n + e_n, d_z + e_z, e_r
        dx_n = d_n * (1 - n * n)
        dx_z = d_z * z * (1 - z)
        dx_r = (dx_n * gh_n + d_r) * r * (1 - r)
        # gh = h_prev @ w_hh^T + b_hh: its gradient is (dx_r, dx_z, dx_n * r + that of gh_n)
        dgh = _emit(mask, torch.cat([dx_r, dx_z, dx_n * r + d_gh_n], dim=1))
        grad_gx[t] = _emit(mask, torch.cat([dx_r, dx_z, dx_n], dim=1))
        grad_w_hh = grad_w_hh + dgh.t() @ h_prev[t]
        grad_b_hh = grad_b_hh + dgh.sum(0)
        dh = _advance(mask, dh_t * z + dgh @ w_hh, dh)
    grad_gx = _stack(grad_gx, T, B, 3 * H, y)
    return tuple(g.to(dtype) for g in (grad_gx, grad_w_hh, grad_b_hh, dh))


def _rnn(activation_backward: Callable, grad_y, grad_h_n, w_hh, h0, y, lengths, reverse):
    dtype = y.dtype
    cdt = _compute_dtype(dtype)
    w_hh, h0, y = (t.to(cdt) for t in (w_hh, h0, y))
    T, B, H = y.shape
    h_prev = _previous_states(h0, y, lengths, reverse)
    dh = _start(grad_h_n, h0)
    grad_gx = [None] * T
    grad_w_hh = torch.zeros_like(w_hh)
    for t in reversed(_time_steps(T, reverse)):
        mask = _step_mask(lengths, t, dh)
        dy = _step_grad(grad_y, t, cdt)
        da = _emit(mask, activation_backward(y[t], dh if dy is None else dh + dy))
        grad_gx[t] = da
        grad_w_hh = grad_w_hh + da.t() @ h_prev[t]
        dh = _advance(mask, da @ w_hh, dh)
    grad_gx = _stack(grad_gx, T, B, H, y)
    return tuple(g.to(dtype) for g in (grad_gx, grad_w_hh, dh))


def _tanh_backward(h: Tensor, dh: Tensor) -> Tensor:
    return dh * (1 - h * h)


def _relu_backward(h: Tensor, dh: Tensor) -> Tensor:
    # torch's threshold_backward: no gradient where h <= 0, so a NaN h passes it on
    return torch.where(h <= 0, torch.zeros_like(dh), dh)


def rnn_tanh(
    grad_y: Optional[Tensor],
    grad_h_n: Optional[Tensor],
    w_hh: Tensor,
    h0: Tensor,
    y: Tensor,
    lengths: Optional[Tensor] = None,
    reverse: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """Returns grad_gx [T, B, H], grad_w_hh, grad_h0, as fused_rnn::rnn_tanh_backward."""
    return _rnn(_tanh_backward, grad_y, grad_h_n, w_hh, h0, y, lengths, reverse)


def rnn_relu(
    grad_y: Optional[Tensor],
    grad_h_n: Optional[Tensor],
    w_hh: Tensor,
    h0: Tensor,
    y: Tensor,
    lengths: Optional[Tensor] = None,
    reverse: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """Returns grad_gx [T, B, H], grad_w_hh, grad_h0, as fused_rnn::rnn_relu_backward."""
    return _rnn(_relu_backward, grad_y, grad_h_n, w_hh, h0, y, lengths, reverse)
