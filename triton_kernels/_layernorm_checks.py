"""Argument checks of the layer-normalised Triton ops beyond those of the plain ops (_checks.py):
the conditions and messages of csrc/layernorm_checks.h. They run before anything is launched."""

from __future__ import annotations

import torch
from torch import Tensor

from ._checks import _check_like, _check_shape, _fail
from ._launch import compute_dtype


def check_parameter(op: str, name: str, t: Tensor, ref: Tensor, size: int) -> None:
    """A γ or β: ``ref``'s dtype and device, shape [size]."""
    _check_like(op, name, t, ref)
    _check_shape(op, name, t, [size])


def check_zoneout(op: str, name: str, mask: Tensor | None, p: float, ref: Tensor, T: int, B: int,
                  H: int) -> None:
    """A zoneout probability in [0, 1), and its mask: bool [T, B, H] on ``ref``'s device."""
    if not 0.0 <= p < 1.0:
        _fail(op, f"{name} must lie in [0, 1), got {p:g}")
    if mask is None:
        return
    if mask.dtype != torch.bool:
        _fail(op, f"{name}_mask must be a bool tensor, got {mask.dtype}")
    if mask.device != ref.device:
        _fail(op, f"{name}_mask is on {mask.device} but the input is on {ref.device}")
    _check_shape(op, f"{name}_mask", mask, [T, B, H])


def check_input_layernorm(op: str, gamma_ih: Tensor, bias: Tensor | None, ref: Tensor,
                          size: int) -> None:
    """The input LN's γ_ih [size] and its optional bias [size]."""
    check_parameter(op, "gamma_ih", gamma_ih, ref, size)
    if bias is not None:
        check_parameter(op, "bias", bias, ref, size)


def check_statistics(op: str, stats: Tensor, y: Tensor, shape: list[int]) -> None:
    """The LNs' statistics workspace: ``y``'s device, its compute dtype, ``shape``."""
    if stats.numel() == 0 and 0 not in shape:
        _fail(op, "the stats workspace is empty: the forward ran with save_for_backward=False")
    dtype = compute_dtype(y.dtype)
    if stats.device != y.device:
        _fail(op, f"stats is on {stats.device} but the input is on {y.device}")
    if stats.dtype != dtype:
        _fail(op, f"stats has dtype {stats.dtype} but the input's compute dtype is {dtype}")
    _check_shape(op, "stats", stats, shape)


def check_eps(op: str, eps: float) -> None:
    if not eps > 0.0:
        _fail(op, f"eps must be positive, got {eps:g}")
