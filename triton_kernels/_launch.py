"""Launching a recurrence kernel in the chosen layout, and the buffers the layouts need.

Every kernel has the same trailing arguments::

    ..., xchg_ptr, counter_ptr, T, B, H, step_begin, step_end, <constexprs>

and runs the steps [step_begin, step_end) of its loop, reading its per-program state (h and c,
or dh and dc) from its state tensors on entry and writing it back on exit. So the persistent
and single layouts are one launch over [0, T), and the stepwise layout is T launches of one
step each, plus (``finish=True``, the backward) one launch over the empty range [T, T) that
only applies the last step's recurrent product. The state tensors are kept in the gate-maths
dtype (fp32, fp64 for fp64) between launches and cast to the storage dtype once at the end.
"""

from __future__ import annotations

import contextlib
import os

import torch
from torch import Tensor
from torch._subclasses.fake_tensor import is_fake
from torch.library import wrap_triton

from . import _layout
from ._barrier import MAX_POLLS, SYNC_GRID
from ._layout import Layout, allow_tf32, interpreting, upcast_dot

#: Integer arguments that change from call to call (or launch to launch in the stepwise
#: layout): not specialised on, or Triton would compile a variant per value class (== 1,
#: divisible by 16) on first use. H is a layer's own constant and stays specialised.
PER_CALL_INTEGERS = ["T", "B", "step_begin", "step_end"]


def empty_output(shape, like: Tensor) -> Tensor:
    """An output every element of which the kernels write; NaN-filled under
    FUSED_RNN_FILL_UNINITIALIZED=1 (as in the C++ ops) so that a forgotten one shows up."""
    out = like.new_empty(shape)
    if os.environ.get("FUSED_RNN_FILL_UNINITIALIZED") == "1":
        out.fill_(float("nan"))
    return out


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of the gate maths and of the recurrent state: fp64 for fp64, else fp32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def state_buffer(init: Tensor | None, like: Tensor) -> Tensor:
    """A recurrent state (h, c, dh or dc) of ``like``'s shape in the gate-maths dtype,
    initialised from ``init`` (zeros when None). The kernels update it in place; the stepwise
    layout keeps it there between its launches, so it is never rounded to fp16/bf16 between
    steps."""
    dtype = compute_dtype(like.dtype)
    if init is None:
        return torch.zeros(like.shape, dtype=dtype, device=like.device)
    return init.to(dtype, copy=True).contiguous()


def kernel_lengths(lengths: Tensor | None, device: torch.device, placeholder: Tensor) -> Tensor:
    """``lengths`` as the kernels read them: contiguous int64 on ``device`` (they index it with
    stride 1), or ``placeholder`` when there are none (HAS_LENGTHS is then off).

    A CPU tensor is copied to the device; under CUDA-graph capture that copy would be
    recorded from the host buffer and replayed stale, so it is refused there."""
    if lengths is None:
        return placeholder
    if lengths.device != device and device.type == "cuda" and _capturing_cuda_graph(device):
        raise RuntimeError(
            "fused_rnn triton: lengths on the CPU cannot be used under CUDA-graph capture (the "
            "captured copy would replay whatever the host buffer holds then); pass lengths on "
            f"{device}"
        )
    return lengths.to(device).contiguous()


def exchange_buffer(layout: Layout, width: int, like: Tensor) -> Tensor:
    """[2, padded batch, width] operand exchange buffer, ping-ponged over the steps (step s
    reads half s % 2 and writes the other), zero so that its padding contributes nothing to
    the products. A placeholder when the operand stays in registers."""
    if layout.operand_in_registers:
        return like.new_empty(1)
    return like.new_zeros(2, layout.padded_batch, width)


def barrier_words(layout: Layout, like: Tensor) -> Tensor:
    """The grid barrier's int32 words, zero at the start: one arrival counter per batch tile,
    then one status word that a timed-out barrier sets (see _barrier.py). Without a grid
    barrier a placeholder, int32 as well: the kernel is then the one compile_check compiled."""
    words = layout.n_batch_tiles + 1 if layout.sync == SYNC_GRID else 1
    return torch.zeros(words, dtype=torch.int32, device=like.device)


def layout_constexprs(layout: Layout, dtype: torch.dtype) -> dict:
    return dict(
        BLOCK_B=layout.block_b,
        BLOCK_H=layout.block_h,
        H_PAD=layout.h_pad,
        BLOCK_K=layout.block_k,
        SPLIT_K=layout.split_k,
        WEIGHTS_RESIDENT=layout.weights_resident,
        OPERAND_IN_REGISTERS=layout.operand_in_registers,
        SYNC=layout.sync,
        TF32=allow_tf32(dtype),
        UPCAST=upcast_dot(dtype),
        FP64=dtype == torch.float64,
    )


def launch_options(layout: Layout) -> dict:
    """Triton's compile and launch options of a kernel in ``layout``."""
    options = dict(
        num_warps=layout.num_warps,
        # One program per SM: registers are not shared with a second one, so ptxas may use
        # them all. Without a bound it aims at more programs per SM and spills instead (the
        # compile check saw 64 registers and spills where 138 fit).
        maxnreg=255,
    )
    if layout.sync == SYNC_GRID:
        # Every program resident at once, or the launch fails: the grid barrier's premise.
        options["launch_cooperative_grid"] = True
    return options


def _capturing_graph() -> bool:
    """Whether torch.compile / AOT dispatch is tracing the op into a graph right now."""
    modes = (torch._C._TorchDispatchModeKey.FUNCTIONAL, torch._C._TorchDispatchModeKey.PROXY)
    return torch.compiler.is_compiling() or any(
        torch._C._get_dispatch_mode(mode) is not None for mode in modes)


def _capturing_cuda_graph(device: torch.device) -> bool:
    return (device.type == "cuda" and torch.cuda.is_available()
            and torch.cuda.is_current_stream_capturing())


def grid_barrier_allowed(like: Tensor) -> bool:
    """Whether a call on ``like`` may run the persistent layout's spin barrier: only when it is
    launched here and now as a cooperative grid. Not under graph capture (torch.compile, CUDA
    graphs), whose launches cannot be relied on to keep that launch option, and not in the
    interpreter (see _layout.py)."""
    return not (interpreting() or _capturing_graph() or _capturing_cuda_graph(like.device))


def choose_layout(gates: int, B: int, H: int, like: Tensor, *, backward: bool) -> Layout:
    """The layout of a call on ``like``'s device and dtype (see _layout.choose_layout)."""
    return _layout.choose_layout(gates, B, H, like.dtype, like.device, backward=backward,
                                 grid_barrier=grid_barrier_allowed(like))


def _device_guard(device: torch.device, args: tuple):
    """Triton launches on the current CUDA device: make it the tensors' device, so a model on
    cuda:1 runs without torch.cuda.set_device. Nothing to do for fake tensors (the launch is
    recorded into a graph, whose code sets the device itself) or off CUDA."""
    real = not any(isinstance(a, Tensor) and is_fake(a) for a in args)
    if device.type == "cuda" and real:
        return torch.cuda.device(device)
    return contextlib.nullcontext()


def _check_barrier_status(layout: Layout, barrier: Tensor) -> None:
    """Raises if a round of the launch's grid barrier timed out (never in a correct run: the
    cooperative launch keeps every program resident). Reading the status word waits for the
    launch to finish: a cost only the persistent layout pays."""
    if layout.sync != SYNC_GRID or is_fake(barrier):
        return
    if int(barrier[-1]) != 0:
        raise RuntimeError(
            f"fused_rnn triton: a grid barrier of the persistent layout did not complete within "
            f"{MAX_POLLS.value} polls: not all {layout.n_batch_tiles * layout.n_slices} programs "
            f"were running at once. The outputs of this call are invalid. Set "
            f"FUSED_RNN_TRITON_LAYOUT=stepwise to avoid the grid barrier."
        )


def kernel_launcher(kernel, grid: tuple, args: tuple):
    """``kernel[grid]``, traceable by torch.compile, or None where there is nothing to run."""
    if interpreting() and any(isinstance(a, Tensor) and is_fake(a) for a in args):
        # Under the interpreter wrap_triton hands the kernel back unwrapped (an interpreted
        # kernel cannot be traced), so fake tensors (shape propagation: opcheck, meta) would
        # reach it. The outputs' shapes are all there is to compute then, unless a graph is
        # being captured, which would then silently lack the kernels.
        if _capturing_graph():
            raise RuntimeError(
                "fused_rnn triton ops cannot be compiled under TRITON_INTERPRET=1 (interpreted "
                "kernels are invisible to torch.compile); compile on a GPU"
            )
        return None
    # torch 2.11's wrap_triton refuses the interpreter's kernel objects (2.14 passes them
    # through); they cannot be traced either way.
    return (kernel if interpreting() else wrap_triton(kernel))[grid]


def launch_recurrence(
    kernel,
    layout: Layout,
    args: tuple,
    T: int,
    B: int,
    H: int,
    like: Tensor,
    constexprs: dict,
    *,
    finish: bool = False,
) -> None:
    """Runs ``kernel`` over all T steps in ``layout``; ``args`` are the arguments up to and
    including the barrier words (the last), ``like`` a tensor of the call (storage dtype and
    device), ``constexprs`` the cell's own."""
    launcher = kernel_launcher(kernel, layout.grid, args)
    if launcher is None:
        return
    options = dict(constexprs, **layout_constexprs(layout, like.dtype), **launch_options(layout))
    with _device_guard(like.device, args):
        if layout.name == "stepwise":
            for step in range(T):
                launcher(*args, T, B, H, step, step + 1, **options)
            if finish:
                launcher(*args, T, B, H, T, T, **options)
        else:
            launcher(*args, T, B, H, 0, T, **options)
    _check_barrier_status(layout, args[-1])
