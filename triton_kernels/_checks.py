"""Argument checks of the Triton ops: the conditions of csrc/op_common.h, the same messages.

They run before anything is allocated or launched. Under fake tensors (torch.compile, opcheck)
only the metadata is checked: the values of a CPU ``lengths`` tensor are read only when it is
real.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
from torch import Tensor
from torch._subclasses.fake_tensor import is_fake

FLOATING = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


class Sizes(NamedTuple):
    T: int
    B: int
    H: int
    P: int
    G: int


def _fail(op: str, message: str) -> None:
    raise RuntimeError(f"{op}: {message}")


def _shape(t: Tensor) -> list[int]:
    return list(t.shape)


def _check_shape(op: str, name: str, t: Tensor, expected: Sequence[int]) -> None:
    if _shape(t) != list(expected):
        _fail(op, f"expected {name} of shape {list(expected)}, got {_shape(t)}")


def _check_like(op: str, name: str, t: Tensor, ref: Tensor) -> None:
    if t.device != ref.device:
        _fail(op, f"{name} is on {t.device} but the input is on {ref.device}")
    if t.dtype != ref.dtype:
        _fail(op, f"{name} has dtype {t.dtype} but the input has dtype {ref.dtype}")


def _check_optional_like(op: str, name: str, t: Tensor | None, ref: Tensor, expected) -> None:
    if t is not None:
        _check_like(op, name, t, ref)
        _check_shape(op, name, t, expected)


def _check_floating(op: str, t: Tensor) -> None:
    if t.dtype not in FLOATING:
        _fail(op, f"expected a float32, float64, float16 or bfloat16 input, got {t.dtype}")


def _is_real(t: Tensor) -> bool:
    return type(t) is torch.Tensor and not is_fake(t)


def check_lengths(op: str, lengths: Tensor | None, T: int, B: int, device: torch.device) -> None:
    if lengths is None:
        return
    if lengths.dtype != torch.int64:
        _fail(op, f"lengths must be an int64 tensor, got {lengths.dtype}")
    if lengths.dim() != 1 or lengths.shape[0] != B:
        _fail(op, f"expected lengths of shape [{B}] (one per batch entry), got {_shape(lengths)}")
    if lengths.device.type != "cpu" and lengths.device != device:
        _fail(op, f"lengths must be on the CPU or on {device}, got {lengths.device}")
    # Only a CPU tensor can be checked without a device synchronisation; the kernels clamp
    # the values too, so a device tensor with bad values cannot read out of bounds.
    if lengths.device.type == "cpu" and B > 0 and _is_real(lengths):
        lo, hi = int(lengths.min()), int(lengths.max())
        if lo < 0 or hi > T:
            _fail(op, f"lengths must lie in [0, {T}] (the number of time steps), got values in "
                      f"[{lo}, {hi}]")


def check_forward_inputs(
    op: str,
    G: int,
    gx: Tensor,
    w_hh: Tensor,
    w_hr: Tensor | None,
    h0: Tensor,
    c0: Tensor | None,
    b_hh: Tensor | None,
    lengths: Tensor | None,
) -> Sizes:
    if gx.dim() != 3:
        _fail(op, f"expected gx of shape [T, B, {G}*H] (the input projection), got {_shape(gx)}")
    _check_floating(op, gx)
    if gx.shape[2] % G != 0:
        _fail(op, f"the last dimension of gx ({gx.shape[2]}) must be a multiple of the number "
                  f"of gates, {G}")
    T, B, H = gx.shape[0], gx.shape[1], gx.shape[2] // G
    if w_hh.dim() != 2 or w_hh.shape[0] != G * H:
        _fail(op, f"expected w_hh of shape [{G * H}, P], got {_shape(w_hh)}")
    _check_like(op, "w_hh", w_hh, gx)
    P = w_hh.shape[1]
    if w_hr is not None:
        _check_optional_like(op, "w_hr", w_hr, gx, [P, H])
    elif P != H:
        _fail(op, f"w_hh has {P} columns but the hidden size is {H} (only an LSTM with a "
                  f"projection w_hr has another width)")
    _check_like(op, "h0", h0, gx)
    _check_shape(op, "h0", h0, [B, P])
    _check_optional_like(op, "c0", c0, gx, [B, H])
    _check_optional_like(op, "b_hh", b_hh, gx, [G * H])
    check_lengths(op, lengths, T, B, gx.device)
    return Sizes(T, B, H, P, G)


def check_backward_inputs(
    op: str,
    G: int,
    w_hh: Tensor,
    w_hr: Tensor | None,
    h0: Tensor,
    c0: Tensor | None,
    y: Tensor,
    lengths: Tensor | None,
    grad_y: Tensor | None,
    grad_h_n: Tensor | None,
    grad_c_n: Tensor | None,
) -> Sizes:
    if y.dim() != 3:
        _fail(op, f"expected y of shape [T, B, P], got {_shape(y)}")
    _check_floating(op, y)
    if w_hh.dim() != 2 or w_hh.shape[0] % G != 0:
        _fail(op, f"expected w_hh of shape [{G}*H, P], got {_shape(w_hh)}")
    _check_like(op, "w_hh", w_hh, y)
    T, B, P, H = y.shape[0], y.shape[1], y.shape[2], w_hh.shape[0] // G
    _check_shape(op, "w_hh", w_hh, [G * H, P])
    if w_hr is not None:
        _check_optional_like(op, "w_hr", w_hr, y, [P, H])
    elif P != H:
        _fail(op, f"y has width {P} but the hidden size is {H}")
    _check_like(op, "h0", h0, y)
    _check_shape(op, "h0", h0, [B, P])
    _check_optional_like(op, "c0", c0, y, [B, H])
    _check_optional_like(op, "grad_y", grad_y, y, [T, B, P])
    _check_optional_like(op, "grad_h_n", grad_h_n, y, [B, P])
    _check_optional_like(op, "grad_c_n", grad_c_n, y, [B, H])
    check_lengths(op, lengths, T, B, y.device)
    return Sizes(T, B, H, P, G)


def check_workspace(op: str, name: str, t: Tensor, y: Tensor, expected: Sequence[int]) -> None:
    expected_numel = 1
    for size in expected:
        expected_numel *= size
    if t.numel() == 0 and expected_numel != 0:
        _fail(op, f"the {name} workspace is empty: the forward ran with save_for_backward=False")
    _check_like(op, name, t, y)
    _check_shape(op, name, t, expected)


def check_no_projection(op: str, w_hr: Tensor | None) -> None:
    if w_hr is not None:
        raise NotImplementedError(
            f"{op}: the Triton kernels do not implement the LSTM projection (proj_size > 0); "
            f"use the CUDA or CPU ops for it (fused_rnn.triton_kernels.supports(..., proj=True) "
            f"is False)"
        )
