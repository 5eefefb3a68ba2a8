"""Launching a recurrence kernel in the chosen layout, and the buffers the layouts need.

Every kernel has the same trailing arguments::

    ..., xchg_ptr, counter_ptr, T, B, H, step_begin, step_end, <constexprs>

and runs the steps [step_begin, step_end) of its loop, reading its per-program state (h and c,
or dh and dc) from its state tensors on entry and writing it back on exit. So the persistent
and single layouts are one launch over [0, T), and the stepwise layout is T launches of one
step each, plus (``finish=True``, the backward) one launch over the empty range [T, T) that
only applies the last step's recurrent product.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor
from torch._subclasses.fake_tensor import is_fake
from torch.library import wrap_triton

from ._barrier import SYNC_GRID
from ._layout import Layout, allow_tf32, interpreting, upcast_dot


def empty_output(shape, like: Tensor) -> Tensor:
    """An output every element of which the kernels write; NaN-filled under
    FUSED_RNN_FILL_UNINITIALIZED=1 (as in the C++ ops) so that a forgotten one shows up."""
    out = like.new_empty(shape)
    if os.environ.get("FUSED_RNN_FILL_UNINITIALIZED") == "1":
        out.fill_(float("nan"))
    return out


def exchange_buffer(layout: Layout, width: int, like: Tensor) -> Tensor:
    """[2, padded batch, width] operand exchange buffer, ping-ponged over the steps (step s
    reads half s % 2 and writes the other), zero so that its padding contributes nothing to
    the products. A placeholder when the operand stays in registers."""
    if layout.operand_in_registers:
        return like.new_empty(1)
    return like.new_zeros(2, layout.padded_batch, width)


def barrier_counters(layout: Layout, like: Tensor) -> Tensor:
    """One int32 arrival counter per batch tile for the grid barrier (zero at the start)."""
    if layout.sync == SYNC_GRID:
        return torch.zeros(layout.n_batch_tiles, dtype=torch.int32, device=like.device)
    return like.new_empty(1)


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


def _capturing_graph() -> bool:
    """Whether torch.compile / AOT dispatch is tracing the op into a graph right now."""
    modes = (torch._C._TorchDispatchModeKey.FUNCTIONAL, torch._C._TorchDispatchModeKey.PROXY)
    return torch.compiler.is_compiling() or any(
        torch._C._get_dispatch_mode(mode) is not None for mode in modes)


def launch_recurrence(
    kernel,
    layout: Layout,
    args: tuple,
    T: int,
    B: int,
    H: int,
    dtype: torch.dtype,
    constexprs: dict,
    *,
    finish: bool = False,
) -> None:
    """Runs ``kernel`` over all T steps in ``layout``; ``args`` are the arguments up to and
    including the counter pointer, ``dtype`` the storage dtype, ``constexprs`` the cell's own."""
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
        return
    launcher = wrap_triton(kernel)[layout.grid]
    options = dict(constexprs, **layout_constexprs(layout, dtype))
    if layout.name == "stepwise":
        for step in range(T):
            launcher(*args, T, B, H, step, step + 1, **options, num_warps=layout.num_warps)
        if finish:
            launcher(*args, T, B, H, T, T, **options, num_warps=layout.num_warps)
    else:
        launcher(*args, T, B, H, 0, T, **options, num_warps=layout.num_warps)
