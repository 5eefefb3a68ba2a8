"""The correctness gate: a configuration is timed only after the fused layer has computed what
torch.nn computes, at that exact shape and dtype, from the same weights and input.

Compared tensors: ``output``, ``h_n`` (and ``c_n`` for the LSTM); in ``fwd+bwd`` mode also the
gradients of the input and of every parameter, for the loss ``sum(output * g) + sum(h_n * g')
(+ sum(c_n * g''))`` with fixed random weights ``g``, so every output's gradient path is used.

Tolerances (DESIGN.md, Numerics):

* fp32: the fused result must be close to torch.nn's fp32 result,
  ``max|fused - torch| <= FP32_RTOL * max(1, max|torch|)``.
* fp16 / bf16 (the flash-attention rule): both are judged against a high-precision torch.nn
  (fp64 on the CPU, strict fp32 on a GPU) fed the same rounded weights and input; the fused
  error must stay within a small multiple of torch.nn's own error in that dtype, plus a floor:
  ``err(fused) <= LOW_PRECISION_FACTOR * err(torch) + LOW_PRECISION_FLOOR * max(1, max|ref|)``.
* the layer-normalised cells (``ln_lstm``, ``ln_gru``) in fp32 by the same rule with the fp32
  floor ``FP32_RTOL``: their baseline, the per-step loop, is no closer to the exact result than
  the fused layer (the LN-LSTM amplifies fp32 rounding over the steps: at B=32, T=100, H=256 the
  loop itself is ~1e-3 off its fp64 result by the last step, as is the same loop under
  torch.compile, so a bound of 1e-4 against the fp32 loop would fail any correct kernel).

A failure (or an exception from the fused layer) makes the row FAILED, with the reason.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..testing import LOW_PRECISION_FACTOR, LOW_PRECISION_FLOOR, low_precision_bound, same_dtype_bound
from ..testing import max_abs_error as _max_abs, scale as _scale
from .cases import LAYERNORM_CELLS, Case
from .layers import make_input
from .precision import strict_fp32

FP32_RTOL = 1e-4

_STATE_NAMES = ("output", "h_n", "c_n")
_GRAD_SEED = 2


@dataclass(frozen=True)
class GateResult:
    ok: bool
    #: max abs error of the fused output and final states (against torch.nn in fp32, against
    #: the high-precision reference in fp16/bf16); NaN when it could not be computed.
    max_abs_err: float
    #: torch.nn's own error in fp16/bf16 against the high-precision reference (None in fp32)
    torch_max_abs_err: float | None = None
    note: str = ""


def _as_tuple(states) -> tuple:
    return states if isinstance(states, tuple) else (states,)


def _results(layer: nn.Module, x: Tensor, mode: str, param_names: list[str]) -> dict[str, Tensor]:
    """The tensors the gate compares, by name, for one layer."""
    if mode == "fwd":
        layer.eval()
        with torch.no_grad():
            output, states = layer(x)
        return dict(zip(_STATE_NAMES, (output, *_as_tuple(states))))

    layer.train()
    x = x.detach().requires_grad_(True)
    params = list(layer.parameters())
    if len(params) != len(param_names):
        raise RuntimeError(f"the layer has {len(params)} parameters, torch.nn's has {len(param_names)}")
    output, states = layer(x)
    outs = (output, *_as_tuple(states))
    generator = torch.Generator(device=x.device).manual_seed(_GRAD_SEED)
    loss = 0
    for out in outs:
        # Reduce in at least fp32 (fp64 stays fp64), so the loss adds no low-precision error.
        acc = torch.promote_types(out.dtype, torch.float32)
        weight = torch.randn(out.shape, generator=generator, device=out.device, dtype=torch.float32)
        loss = loss + (out.to(acc) * weight.to(acc)).sum()
    grads = torch.autograd.grad(loss, [x, *params])
    named = dict(zip(_STATE_NAMES, (t.detach() for t in outs)))
    named["grad input"] = grads[0]
    named.update((f"grad {name}", g) for name, g in zip(param_names, grads[1:]))
    return named


def _worse(a: float, b: float) -> float:
    """The larger error; NaN wins, so a NaN is never hidden."""
    return a if math.isnan(a) or a >= b else b


def _describe(error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}".splitlines()[0]
    return text[:200]


def check(
    case: Case, reference: nn.Module, candidate: nn.Module, device: torch.device, x: Tensor | None = None
) -> GateResult:
    """Runs the gate for one case: ``reference`` is the torch.nn layer, ``candidate`` the fused
    layer with the same weights (both on ``device`` in the case's dtype), ``x`` the input
    (default: the case's, from :func:`make_input`)."""
    param_names = [name for name, _ in reference.named_parameters()]
    if x is None:
        x = make_input(case, device)
    try:
        expected = _results(reference, x, case.mode, param_names)
    except Exception as error:  # noqa: BLE001 - reported in the row, not raised
        return GateResult(False, math.nan, note=f"torch.nn raised {_describe(error)}")
    try:
        actual = _results(candidate, x, case.mode, param_names)
    except Exception as error:  # noqa: BLE001
        return GateResult(False, math.nan, note=f"raised {_describe(error)}")
    if actual.keys() != expected.keys():
        return GateResult(False, math.nan, note=f"returned {sorted(actual)}, expected {sorted(expected)}")
    for name in expected:
        if actual[name].shape != expected[name].shape:
            return GateResult(
                False, math.nan,
                note=f"{name}: shape {tuple(actual[name].shape)}, expected {tuple(expected[name].shape)}",
            )

    layernorm = case.cell in LAYERNORM_CELLS
    if case.torch_dtype == torch.float32 and not layernorm:
        return _judge_fp32(actual, expected)
    high_dtype = torch.float64 if device.type == "cpu" or layernorm else torch.float32
    with strict_fp32():
        high = _results(copy.deepcopy(reference).to(high_dtype), x.to(high_dtype), case.mode, param_names)
    floor = FP32_RTOL if case.torch_dtype == torch.float32 else LOW_PRECISION_FLOOR
    return _judge_low_precision(actual, expected, high, floor)


def _judge_fp32(actual: dict[str, Tensor], expected: dict[str, Tensor]) -> GateResult:
    worst, note = 0.0, ""
    for name, want in expected.items():
        err = _max_abs(actual[name], want)
        bound = same_dtype_bound(want, FP32_RTOL)
        if name in _STATE_NAMES:
            worst = _worse(worst, err)
        if not err <= bound and not note:  # `not <=` also catches NaN
            note = f"{name}: error {err:.3g} vs torch.nn exceeds {bound:.3g}"
    return GateResult(not note, worst, None, note)


def _judge_low_precision(
    actual: dict[str, Tensor], lowp: dict[str, Tensor], high: dict[str, Tensor],
    floor: float = LOW_PRECISION_FLOOR,
) -> GateResult:
    worst, torch_worst, note = 0.0, 0.0, ""
    for name, ref in high.items():
        err = _max_abs(actual[name], ref)
        torch_err = _max_abs(lowp[name], ref)
        bound = low_precision_bound(torch_err, ref, floor)
        if name in _STATE_NAMES:
            worst, torch_worst = _worse(worst, err), _worse(torch_worst, torch_err)
        if not err <= bound and not note:
            note = (
                f"{name}: error {err:.3g} exceeds {LOW_PRECISION_FACTOR:g} x torch.nn's "
                f"{torch_err:.3g} + {floor * _scale(ref):.3g}"
            )
    return GateResult(not note, worst, torch_worst, note)
