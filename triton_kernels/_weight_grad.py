"""Gradient of the recurrent weight from the gate gradients of all steps: two GEMMs after the
backward kernel (the same as csrc/recurrent_weight_grad.h), never one per step.

  grad_w_hh[G*H, H] = sum_{t,b} dgh[t, b]^T h_prev[t, b]   over the real steps

h_prev is y of the neighbouring step or h0 at each sequence's first step. With lengths, the
pairs that are not (real step, its h_prev) have a zero side, and their other side is zeroed too
(zero times a NaN or inf would be NaN, where torch.nn's packed sequences have no such pair).
"""

from __future__ import annotations

import torch
from torch import Tensor


def recurrent_weight_grad(
    dgh: Tensor, y: Tensor, h0: Tensor, lengths: Tensor | None, reverse: bool
) -> Tensor:
    """dgh [T, B, G*H], y [T, B, H], h0 [B, H] -> [G*H, H]."""
    # A backward run inside an autocast region must not recast these GEMMs: the op chose its
    # operands' precision itself.
    with torch.autocast(dgh.device.type, enabled=False):
        return _recurrent_weight_grad(dgh, y, h0, lengths, reverse)


def _recurrent_weight_grad(
    dgh: Tensor, y: Tensor, h0: Tensor, lengths: Tensor | None, reverse: bool
) -> Tensor:
    T, B, GH = dgh.shape
    P = y.shape[2]
    if T == 0 or B == 0:
        return dgh.new_zeros(GH, P)
    zero = torch.zeros((), dtype=y.dtype, device=y.device)
    # Each sequence's first step, whose h_prev is h0: t = 0, or t = length - 1 in reverse.
    if not reverse:
        dgh_first = dgh[0]
    elif lengths is None:
        dgh_first = dgh[T - 1]
    else:
        first_t = (lengths.to(dgh.device) - 1).clamp(min=0)
        rows = first_t * B + torch.arange(B, device=dgh.device)
        # A length-0 sequence maps to row b of step 0, whose gradient is zero.
        dgh_first = dgh.reshape(T * B, GH).index_select(0, rows)
    if lengths is not None:  # a sequence of length 0 has no first step
        h0 = torch.where((lengths.to(h0.device) > 0)[:, None], h0, zero)
    grad = dgh_first.t() @ h0
    if T > 1:
        # Steps whose h_prev is y of the neighbouring step. Pair i is step i + 1 with y[i]
        # (forward), or step i with y[i + 1] (reverse): real pairs iff i + 1 < length.
        dgh_steps = dgh[: T - 1] if reverse else dgh[1:]
        y_prev = y[1:] if reverse else y[: T - 1]
        if lengths is not None:
            steps = torch.arange(1, T, device=y.device)
            real_pair = (steps[:, None] < lengths.to(y.device)[None, :])[:, :, None]
            if reverse:  # the side that is not zero already
                dgh_steps = torch.where(real_pair, dgh_steps, zero)
            else:
                y_prev = torch.where(real_pair, y_prev, zero)
        grad = grad + dgh_steps.reshape(-1, GH).t() @ y_prev.reshape(-1, P)
    return grad
