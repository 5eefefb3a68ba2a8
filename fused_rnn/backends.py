"""The one place that picks the implementation of a recurrence: cuda, triton, cpu, torch or
reference.

Every fused backend exposes the same four functions, one layer and one direction each (the op
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
:mod:`fused_rnn.reference` (any device, slow). ``"torch"`` is torch.nn's own kernels (cuDNN,
oneDNN, ATen) for the whole layer stack or cell step (:mod:`fused_rnn.torch_backend`), so it
has no per-direction functions. ``"auto"`` takes what :mod:`fused_rnn.dispatch` decides: the
backend recorded correct and fastest for the call on this kind of device.
"""

from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from . import _ops, dispatch, reference

BACKENDS = ("auto", "cpu", "cuda", "triton", "torch", "reference")
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
    return None  # torch.nn's kernels and the reference loops run anywhere torch does


def available(name: str, cell: str, device: torch.device | str, *, proj: bool = False) -> bool:
    """Whether backend ``name`` can run ``cell`` on ``device``."""
    return _unavailable_reason(name, cell, torch.device(device), proj) is None


def _check_names(backend: str, cell: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(map(repr, BACKENDS))}, got {backend!r}")
    if cell not in CELLS:
        raise ValueError(f"cell must be one of {CELLS}, got {cell!r}")


# ---------------------------------------------------------------------------------------------
# backend="auto"
# ---------------------------------------------------------------------------------------------

#: (device, device class, call, compiling, policy, extra tables) -> Choice; read as a plain dict
#: (torch.compile reads a dict like any global; functools caches it traces through).
_AUTO_CHOICES: dict[tuple, dispatch.Choice] = {}


def _auto_choice(call: dispatch.Call, device: torch.device, *, compiling: bool = False,
                 device_class: dispatch.DeviceClass | None = None) -> dispatch.Choice:
    # The key holds what can change the answer within a process: the thread count (a CPU's
    # class) and tables written since. The variables FUSED_RNN_AUTO_POLICY and
    # FUSED_RNN_DISPATCH_TABLES are read when a decision is taken (reading the environment
    # costs microseconds): clear_auto_cache() after changing them in a running process.
    key = (call, device, device_class, torch.get_num_threads(), compiling, dispatch.generation)
    choice = _AUTO_CHOICES.get(key)
    if choice is None:
        def runnable(name: str) -> bool:
            return _unavailable_reason(name, call.cell, device, call.proj) is None

        choice = _AUTO_CHOICES[key] = dispatch.decide(
            call, device_class or dispatch.device_class(device), runnable, compiling=compiling)
    return choice


def clear_auto_cache() -> None:
    """Forgets auto's decisions: after FUSED_RNN_AUTO_POLICY or FUSED_RNN_DISPATCH_TABLES
    changed in a running process."""
    _AUTO_CHOICES.clear()


# torch.compile: the decision is taken once while tracing (Dynamo calls this for real and bakes
# in the answer) from what a graph does not vary over (not the batch size or the length), so
# that a graph with dynamic shapes stays valid.
@torch.compiler.assume_constant_result
def _auto_for_graph(cell: str, device: torch.device, dtype: str, training: bool, hidden: int,
                    layers: int, directions: int, lengths: bool, proj: bool) -> str:
    call = dispatch.Call(cell, dtype, training, None, hidden, layers, directions, lengths, None,
                         proj)
    return _auto_choice(call, device, compiling=True).backend


def auto_call(cell: str, dtype: torch.dtype, training: bool, batch: int, hidden: int, *,
              layers: int = 1, directions: int = 1, lengths: bool = False, seq_len: int = 1,
              proj: bool = False) -> dispatch.Call:
    """The :class:`fused_rnn.dispatch.Call` of a layer call (what auto's records are keyed by)."""
    return dispatch.Call(cell, dispatch.DTYPE_NAMES.get(dtype, str(dtype)), training, batch,
                         hidden, layers, directions, lengths, seq_len, proj)


def auto_backend_name(cell: str, device: torch.device | str, *, proj: bool = False,
                      call: dispatch.Call | None = None,
                      device_class: dispatch.DeviceClass | None = None,
                      compiling: bool | None = None) -> str:
    """The backend ``"auto"`` resolves to for ``call`` (default: a one-step fp32 inference call
    of one sequence) on ``device``, or on a device of class ``device_class`` (which need not be
    present: a pretend H100 on a CPU-only machine). :func:`explain_auto` says why."""
    return explain_auto(cell, device, proj=proj, call=call, device_class=device_class,
                        compiling=compiling).backend


def explain_auto(cell: str, device: torch.device | str, *, proj: bool = False,
                 call: dispatch.Call | None = None,
                 device_class: dispatch.DeviceClass | None = None,
                 compiling: bool | None = None) -> dispatch.Choice:
    """What ``"auto"`` takes and why (the record and table it used, or the rule)."""
    device = torch.device(device)
    if call is None:
        call = auto_call(cell, torch.float32, False, 1, 1, proj=proj)
    if compiling is None:
        compiling = torch.compiler.is_compiling()
    return _auto_choice(call, device, compiling=compiling, device_class=device_class)


def explain(module, input, hx=None, lengths=None) -> dispatch.Choice:
    """The backend ``module`` (a fused_rnn layer or cell) runs a call on ``input`` (and ``hx``,
    ``lengths``) with, in the current grad mode and autocast state, and why: for
    ``backend="auto"`` the record and table auto used, or the rule. Runs no kernel."""
    from .modules import describe_call

    cell, device, call = describe_call(module, input, hx, lengths)
    if module.backend != "auto":
        return dispatch.Choice(choose(module.backend, device, cell=cell, proj=call.proj),
                               f"the module's backend is {module.backend!r}")
    return explain_auto(cell, device, proj=call.proj, call=call)


def choose(backend: str, device: torch.device, *, cell: str, proj: bool = False,
           call: Callable[[], dispatch.Call] | None = None) -> str:
    """The backend name a call runs on: ``backend`` itself when it can run the call (else a
    RuntimeError saying why), or auto's choice. ``call`` makes the call's description (only
    asked for auto, outside torch.compile)."""
    _check_names(backend, cell)
    if backend == "auto":
        if call is None:
            return auto_backend_name(cell, device, proj=proj)
        described = call()
        if torch.compiler.is_compiling():
            return _auto_for_graph(cell, device, described.dtype, described.training,
                                   described.hidden, described.layers, described.directions,
                                   described.lengths, proj)
        return _auto_choice(described, device).backend
    reason = _unavailable_reason(backend, cell, device, proj)
    if reason is not None:
        raise RuntimeError(f"fused_rnn backend {backend!r} is not available: {reason}")
    return backend


def implementation(name: str) -> Backend:
    """The per-direction functions of a fused backend (not "torch", not "auto")."""
    return _BUILT[name]


def resolve(backend: str, device: torch.device | str, *, cell: str, proj: bool = False) -> Backend:
    """The per-direction implementation of ``cell`` for tensors on ``device`` (``"auto"``: a
    fused backend, as for a call whose description is not known). ``"torch"`` has none: it
    runs whole layer stacks (:mod:`fused_rnn.torch_backend`)."""
    name = choose(backend, torch.device(device), cell=cell, proj=proj)
    if name == "torch":
        raise ValueError("the 'torch' backend runs whole layer stacks, not single directions")
    return _BUILT[name]
