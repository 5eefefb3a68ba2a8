"""Gradient of the recurrent weight from the gate gradients of all steps: two GEMMs after the
backward kernel (the same as csrc/recurrent_weight_grad.h), never one per step.

  grad_w_hh[G*H, H] = sum_{t,b} dgh[t, b]^T h_prev[t, b]

h_prev is y of the neighbouring step (taken as zero on padded steps, where dgh is zero too) or
h0 at each sequence's first step.
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
    grad = dgh_first.t() @ h0
    if T > 1:
        # Steps whose h_prev is y of the neighbouring step.
        dgh_steps = dgh[: T - 1] if reverse else dgh[1:]
        y_prev = y[1:] if reverse else y[: T - 1]
        if not reverse and lengths is not None:
            # As in csrc/recurrent_weight_grad.h: the first padded step of a finished sequence
            # must not multiply its zero gradient with a NaN or inf in y of its last real step.
            steps = torch.arange(1, T, device=y.device)
            real = steps[:, None] < lengths.to(y.device)[None, :]
            y_prev = torch.where(real[:, :, None], y_prev, torch.zeros((), dtype=y.dtype, device=y.device))
        grad = grad + dgh_steps.reshape(-1, GH).t() @ y_prev.reshape(-1, P)
    return grad
