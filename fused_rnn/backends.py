"""The one place that picks the implementation of a recurrence: cuda, triton, cpu or reference.

Every backend exposes the same four functions, one layer and one direction each (the op
interface of ``csrc/ops.cpp`` without the workspace):

    lstm(gx, w_hh, w_hr, h0, c0, lengths, reverse) -> (y, h_n, c_n)
    gru(gx, w_hh, b_hh, h0, lengths, reverse)       -> (y, h_n)
    rnn_tanh(gx, w_hh, h0, lengths, reverse)         -> (y, h_n)
    rnn_relu(gx, w_hh, h0, lengths, reverse)         -> (y, h_n)

and the input projection of all steps, ``linear(x, w_ih, bias) -> gx``: torch's ``F.linear``,
except on the CPU backend, whose ``fused_rnn::linear`` op runs its fp32 products on the
library's own blocked GEMM (``csrc/cpu/blocked_gemm.h``). The CPU backend also has
``step(cell, input, h, c, w_ih, w_hh, b_ih, b_hh) -> (h', c' or None)``, one step of a cell as
one op call (``fused_rnn::{cell}_cell``: the projection and the recurrence composed in C++);
the cells of the other backends run the layer path at T = 1.

``"cpu"`` and ``"cuda"`` are the compiled ops (``torch.ops.fused_rnn.*``), which the dispatcher
routes by device; ``"triton"`` the ``*_triton`` ops; ``"reference"`` the plain PyTorch loops of
:mod:`fused_rnn.reference` (any device, slow). ``"auto"`` takes the fastest that runs on the
input's device.
"""

from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from . import _ops, reference

BACKENDS = ("auto", "cpu", "cuda", "triton", "reference")
CELLS = ("lstm", "gru", "rnn_tanh", "rnn_relu")


@dataclass(frozen=True)
class Backend:
    name: str
    lstm: Callable
    gru: Callable
    rnn_tanh: Callable
    rnn_relu: Callable
    linear: Callable = F.linear
    step: Optional[Callable] = None

    def cell(self, cell: str) -> Callable:
        return getattr(self, cell)


def _needs_grad(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _op_backend(name: str, suffix: str) -> Backend:
    """Wraps the ops ``fused_rnn::{cell}_forward{suffix}``: asks for the workspace only when a
    gradient will be taken, and returns the outputs without it."""
    ops = torch.ops.fused_rnn
    lstm_op = getattr(ops, f"lstm_forward{suffix}")
    gru_op = getattr(ops, f"gru_forward{suffix}")
    tanh_op = getattr(ops, f"rnn_tanh_forward{suffix}")
    relu_op = getattr(ops, f"rnn_relu_forward{suffix}")

    def lstm(gx, w_hh, w_hr, h0, c0, lengths, reverse):
        save = _needs_grad(gx, w_hh, w_hr, h0, c0)
        y, h_n, c_n, _, _ = lstm_op(gx, w_hh, w_hr, h0, c0, lengths, reverse, save)
        return y, h_n, c_n

    def gru(gx, w_hh, b_hh, h0, lengths, reverse):
        save = _needs_grad(gx, w_hh, b_hh, h0)
        y, h_n, _ = gru_op(gx, w_hh, b_hh, h0, lengths, reverse, save)
        return y, h_n

    def rnn_tanh(gx, w_hh, h0, lengths, reverse):
        return tanh_op(gx, w_hh, h0, lengths, reverse)

    def rnn_relu(gx, w_hh, h0, lengths, reverse):
        return relu_op(gx, w_hh, h0, lengths, reverse)

    if name == "cpu":
        return Backend(name, lstm, gru, rnn_tanh, rnn_relu, linear=ops.linear, step=_cpu_step)
    return Backend(name, lstm, gru, rnn_tanh, rnn_relu)


def _cpu_step(cell, input, h, c, w_ih, w_hh, b_ih, b_hh):
    """One step of a cell on the CPU backend: one op call. (h', c') with c' None but for LSTM."""
    ops = torch.ops.fused_rnn
    if cell == "lstm":
        return ops.lstm_cell(input, h, c, w_ih, w_hh, b_ih, b_hh)
    if cell == "gru":
        return ops.gru_cell(input, h, w_ih, w_hh, b_ih, b_hh), None
    if cell == "rnn_tanh":
        return ops.rnn_tanh_cell(input, h, w_ih, w_hh, b_ih, b_hh), None
    return ops.rnn_relu_cell(input, h, w_ih, w_hh, b_ih, b_hh), None


_REFERENCE = Backend(
    "reference", reference.lstm, reference.gru, reference.rnn_tanh, reference.rnn_relu
)

# The backends by name, in a plain dict rather than behind functools.cache: torch.compile
# ignores that cache (it traces the wrapped function again, with a warning) but reads a dict
# like any global. The compiled ops exist once _C is loaded; "triton" is added by
# triton_unavailable_reason once it has found that the Triton ops are registered.
_BUILT: dict[str, Backend] = {
    "reference": _REFERENCE,
    "cpu": _op_backend("cpu", ""),
    "cuda": _op_backend("cuda", ""),
}


@functools.cache
def _triton_module():
    """fused_rnn.triton_kernels, or None when Triton (or the module) cannot be imported."""
    try:
        return importlib.import_module("fused_rnn.triton_kernels")
    except ImportError:
        return None


# torch.compile cannot trace the import this may do (importlib is skipped by Dynamo, a graph
# break); assume_constant_result makes Dynamo call it eagerly while tracing and bake in the
# answer, which cannot change within a process (the device is already guarded by the inputs).
# Building the Triton backend here too keeps the traced code to a read of _BUILT.
@torch.compiler.assume_constant_result
def triton_unavailable_reason(cell: str, device: torch.device, proj: bool) -> str | None:
    """Why the Triton backend cannot run this call (None when it can)."""
    module = _triton_module()
    if module is None:
        return "Triton or fused_rnn.triton_kernels could not be imported"
    if not module.supports(cell, proj=proj, device=device):
        what = f"{cell} with a projection" if proj else cell
        return f"its kernels do not run {what} on {device.type} tensors"
    if "triton" not in _BUILT:
        _BUILT["triton"] = _op_backend("triton", "_triton")
    return None


def _unavailable_reason(name: str, cell: str, device: torch.device, proj: bool) -> str | None:
    if name == "cpu":
        return None if device.type == "cpu" else f"it runs on CPU tensors, got {device.type}"
    if name == "cuda":
        if device.type != "cuda":
            return f"it runs on CUDA tensors, got {device.type}"
        if not _ops.WITH_CUDA:
            return "fused_rnn was built without its CUDA kernels (rebuild with FUSED_RNN_CUDA=1)"
        return None
    if name == "triton":
        return triton_unavailable_reason(cell, device, proj)
    return None  # reference runs anywhere


def available(name: str, cell: str, device: torch.device | str, *, proj: bool = False) -> bool:
    """Whether backend ``name`` can run ``cell`` on ``device``."""
    return _unavailable_reason(name, cell, torch.device(device), proj) is None


def auto_backend_name(cell: str, device: torch.device, *, proj: bool = False) -> str:
    """The backend ``"auto"`` resolves to: the compiled kernels of the device, else Triton on a
    GPU, else the reference loops."""
    for name in ("cpu", "cuda", "triton"):
        if _unavailable_reason(name, cell, device, proj) is None:
            return name
    return "reference"


def resolve(backend: str, device: torch.device | str, *, cell: str, proj: bool = False) -> Backend:
    """The implementation of ``cell`` for tensors on ``device``. ``proj``: an LSTM with a
    projection (``proj_size > 0``), which not every backend supports."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(map(repr, BACKENDS))}, got {backend!r}")
    if cell not in CELLS:
        raise ValueError(f"cell must be one of {CELLS}, got {cell!r}")
    device = torch.device(device)
    if backend == "auto":
        return _BUILT[auto_backend_name(cell, device, proj=proj)]
    reason = _unavailable_reason(backend, cell, device, proj)
    if reason is not None:
        raise RuntimeError(f"fused_rnn backend {backend!r} is not available: {reason}")
    return _BUILT[backend]
