"""What the kernels of the layer-normalised LSTM and GRU (layernorm_lstm.py, layernorm_gru.py)
share: their layout and launch, the recurrent product in chunks, the statistics of a row, the
backward of the recurrent layer norm, zoneout.

Layout. A layer norm over all units of a row (the G*H recurrent gate values, the H cell
states) needs the whole row before any unit can go on, so one program owns ``BLOCK_B`` batch
rows and **all** hidden units of them: grid ``cdiv(B, BLOCK_B)``, no exchange between
programs, no grid barrier. The program walks its rows' units in chunks (``BLOCK_N`` columns,
products contracted in ``BLOCK_K`` slices), so the registers it needs do not grow with H.
Values of a step that a later chunk pass needs (the raw product p, the cell states c') go
through scratch rows in global memory; the threads of the program see each other's stores
after a ``tl.debug_barrier()`` (bar.sync orders the CTA's global memory accesses), which
separates every pass that reads what another one wrote. Loops that read such data are
``tl.range(..., num_stages=1)``: Triton's pipeliner would otherwise issue their loads ahead of
the barrier (as cp.async copies).

The recurrent state (h, c; dh, dc in the backward) lives in the gate-maths dtype (fp32, fp64
for fp64) in those scratch rows from step to step, ping-ponged where a step reads the old
value after it has started writing the new one; it is cast to the storage dtype once, at the
end. The recurrent product multiplies the state rounded to w_hh's dtype (the tensor cores'
operand), as the plain kernels do.
"""

from __future__ import annotations

import dataclasses

import torch
import triton
import triton.language as tl
from torch import Tensor

from . import _launch
from ._common import after_step_is_real, dot, step_time, to_compute
from ._layout import allow_tf32, interpreting, upcast_dot

#: Integer arguments that change from call to call: not specialised on (see _launch).
PER_CALL_INTEGERS = ["T", "B"]

#: Zoneout of a state in a call (the KEEP_H / KEEP_C constexprs): none (p = 0, no mask), a
#: bool mask [T, B, H] (training: True keeps the previous value), or the constant weight p of
#: the previous value (eval's expectation).
ZONEOUT_NONE = tl.constexpr(0)
ZONEOUT_MASK = tl.constexpr(1)
ZONEOUT_CONSTANT = tl.constexpr(2)


def zoneout_kind(mask: Tensor | None, p: float) -> int:
    if mask is not None:
        return ZONEOUT_MASK.value
    return ZONEOUT_CONSTANT.value if p != 0.0 else ZONEOUT_NONE.value


# ---------------------------------------------------------------------------------------------
# Host side: tile sizes, scratch, launch.
# ---------------------------------------------------------------------------------------------


# The input LN, gx = LN(xw; γ_ih) + b, in torch around the kernels (the ops take the raw
# projection xw, csrc/layernorm_ops.cpp; the kernels take gx). stats [T, B, >= 2]: mean and rstd
# of each row of xw first, in the compute dtype.


def input_layernorm(xw: Tensor, gamma_ih: Tensor, bias: Tensor | None, eps: float):
    """gx in xw's dtype (the kernels' input), and its statistics [T, B, 2] (mean, rstd)."""
    x = xw.to(_launch.compute_dtype(xw.dtype))
    var, mean = torch.var_mean(x, dim=-1, unbiased=False, keepdim=True)
    rstd = torch.rsqrt(var + eps)
    stats = torch.cat([mean, rstd], dim=-1)
    return input_gates(xw, gamma_ih, bias, stats).to(xw.dtype), stats


def input_gates(xw: Tensor, gamma_ih: Tensor, bias: Tensor | None, stats: Tensor) -> Tensor:
    """gx from xw and its statistics, in the statistics' (compute) dtype."""
    gx = (xw.to(stats.dtype) - stats[..., :1]) * stats[..., 1:2] * gamma_ih.to(stats.dtype)
    return gx + bias.to(stats.dtype) if bias is not None else gx


def on_real_steps(x: Tensor, lengths: Tensor | None) -> Tensor:
    """x [T, B, ...] with zeros on the padded steps (t >= lengths[b])."""
    if lengths is None:
        return x
    steps = torch.arange(x.shape[0], device=x.device)[:, None]
    real = steps < lengths.to(x.device)[None, :]
    return torch.where(real.view(*real.shape, *([1] * (x.dim() - 2))), x, 0.0)


def input_layernorm_backward(grad_gx: Tensor, xw: Tensor, gamma_ih: Tensor, stats: Tensor,
                             lengths: Tensor | None):
    """From the gradient of gx (compute dtype): those of xw, γ_ih and the bias, zero on padded
    steps whatever xw holds there."""
    x_hat = on_real_steps((xw.to(grad_gx.dtype) - stats[..., :1]) * stats[..., 1:2], lengths)
    g = grad_gx * gamma_ih.to(grad_gx.dtype)
    grad_xw = stats[..., 1:2] * (g - g.mean(-1, keepdim=True)
                                 - x_hat * (g * x_hat).mean(-1, keepdim=True))
    grad_xw = on_real_steps(grad_xw, lengths)
    return grad_xw, (grad_gx * x_hat).sum((0, 1)), grad_gx.sum((0, 1))


@dataclasses.dataclass(frozen=True)
class Blocks:
    block_b: int      # batch rows per program
    block_n: int      # columns per chunk (units, or gate values of the flattened G*H row)
    block_k: int      # contraction slice of the recurrent products
    num_warps: int


#: The most columns of a chunk, and of a contraction slice of the recurrent products.
MAX_BLOCK_N = 32
MAX_BLOCK_K = 64


def choose_blocks(H: int) -> Blocks:
    """Tile sizes of a call with H hidden units (larger H only means more chunks, never more
    registers).

    BLOCK_B = 16, tl.dot's smallest M: the grid (cdiv(B, 16) programs) is the only parallelism
    of this layout, so rows are not packed more densely. Chunks of 16 to 32 columns and
    contraction slices of 16 to 64 (tl.dot's smallest N and K is 16), 8 warps, up to 255
    registers a thread (launch_options): the sm_90 compilation (compile_check) of the LSTM's
    kernels, which hold 4 gates' values and their addresses at once, spilled with 64-column
    chunks (at 4 and at 8 warps) and with 32-column chunks at 4 warps, and uses at most ~235
    registers in this choice, fp64 included."""
    pow2 = triton.next_power_of_2(max(H, 1))
    return Blocks(block_b=16, block_n=max(16, min(MAX_BLOCK_N, pow2)),
                  block_k=max(16, min(MAX_BLOCK_K, pow2)), num_warps=8)


def launch_options(blocks: Blocks) -> dict:
    """Triton's compile and launch options: ``maxnreg=255`` lets ptxas use every register
    instead of aiming at more programs per SM and spilling (as for the plain kernels,
    _launch.launch_options)."""
    return dict(num_warps=blocks.num_warps, maxnreg=255)


def scalars(like: Tensor, *values: float) -> Tensor:
    """Float arguments (eps, zoneout probabilities) as a tensor in the gate-maths dtype: a
    Python float reaches a Triton kernel as fp32, which is not the fp64 op's value."""
    return torch.tensor(values, dtype=_launch.compute_dtype(like.dtype), device=like.device)


def state_out(state: Tensor, index: int, dtype: torch.dtype) -> Tensor:
    """Half ``index`` of a ping-ponged state [2, B, H] as an output of its own (a copy: the
    outputs of an op must not be views of a buffer)."""
    return state[index].to(dtype, copy=True)


def mask_bytes(mask: Tensor | None, placeholder: Tensor) -> Tensor:
    """A zoneout mask as the kernels read it: contiguous uint8 (the bool's bytes)."""
    return placeholder if mask is None else mask.contiguous().view(torch.uint8)


def block_constexprs(blocks: Blocks, dtype: torch.dtype) -> dict:
    return dict(BLOCK_B=blocks.block_b, BLOCK_N=blocks.block_n, BLOCK_K=blocks.block_k,
                TF32=allow_tf32(dtype), UPCAST=upcast_dot(dtype),
                ROUND_BF16=interpreting() and dtype == torch.bfloat16,
                FP64=dtype == torch.float64)


def launch_row_tiles(kernel, blocks: Blocks, args: tuple, T: int, B: int, H: int, like: Tensor,
                     constexprs: dict) -> None:
    """Runs ``kernel`` once over all T steps, one program per tile of BLOCK_B rows."""
    grid = (triton.cdiv(B, blocks.block_b),)
    launcher = _launch.kernel_launcher(kernel, grid, args)
    if launcher is None:
        return
    options = dict(constexprs, **block_constexprs(blocks, like.dtype), **launch_options(blocks))
    with _launch._device_guard(like.device, args):
        launcher(*args, T, B, H, **options)


# ---------------------------------------------------------------------------------------------
# Device functions.
# ---------------------------------------------------------------------------------------------


@triton.jit
def zeros_rows(BLOCK_B: tl.constexpr, FP64: tl.constexpr):
    """[BLOCK_B] zeros in the gate-maths dtype: a per-row sum."""
    if FP64:
        return tl.zeros([BLOCK_B], dtype=tl.float64)
    else:
        return tl.zeros([BLOCK_B], dtype=tl.float32)


@triton.jit
def to_storage(x, dtype: tl.constexpr, ROUND_BF16: tl.constexpr):
    """x in a storage dtype (the products' operands, the outputs). ROUND_BF16 (the interpreter
    with bf16 only): rounds to nearest even by hand first, as a GPU's conversion does; the
    interpreter's own conversion to bf16 truncates, which biases every stored value."""
    if ROUND_BF16:
        bits = x.to(tl.float32).to(tl.uint32, bitcast=True)
        bits = bits + 0x7FFF + ((bits >> 16) & 1)
        x = (bits & 0xFFFF0000).to(tl.float32, bitcast=True)
    return x.to(dtype)


@triton.jit
def store_real(ptrs, value, real, m, ROUND_BF16: tl.constexpr):
    """Stores value where the step is real (``real``), zero on padded steps, in the pointers'
    dtype."""
    tl.store(ptrs, to_storage(tl.where(real, value, 0.0), ptrs.dtype.element_ty, ROUND_BF16),
             mask=m)


@triton.jit
def recurrent_product(
    h_ptr,          # [B, H] the state h_{t-1} (gate-maths dtype)
    w_ptr,          # [N, H] w_hh
    p_ptr,          # [B, N] out: p = h_{t-1} @ w_hh^T (gate-maths dtype)
    offs_b,         # [BLOCK_B] own rows
    mask_b,
    N,              # G*H
    H,
    BLOCK_B: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    TF32: tl.constexpr,
    UPCAST: tl.constexpr,
    ROUND_BF16: tl.constexpr,
    FP64: tl.constexpr,
):
    """Stores p of the own rows, chunk by chunk, and returns its row sums [BLOCK_B]. Columns
    and rows outside [B, N] are zero (their operands are masked to zero) and never stored."""
    w_dtype = w_ptr.dtype.element_ty
    total = zeros_rows(BLOCK_B, FP64)
    for n0 in tl.range(0, N, BLOCK_N, num_stages=1):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        mask_n = offs_n < N
        acc = tl.zeros([BLOCK_B, BLOCK_N], dtype=total.dtype)
        # num_stages=1: h was written by other threads of the program (see the module doc)
        for k0 in tl.range(0, H, BLOCK_K, num_stages=1):
            offs_k = k0 + tl.arange(0, BLOCK_K)
            mask_k = offs_k < H
            a = tl.load(h_ptr + offs_b[:, None] * H + offs_k[None, :],
                        mask=mask_b[:, None] & mask_k[None, :], other=0.0)
            w = tl.load(w_ptr + offs_n[None, :].to(tl.int64) * H + offs_k[:, None],
                        mask=mask_k[:, None] & mask_n[None, :], other=0.0)   # [BLOCK_K, BLOCK_N]
            acc = dot(to_storage(a, w_dtype, ROUND_BF16), w, acc, TF32, UPCAST)
        tl.store(p_ptr + offs_b[:, None] * N + offs_n[None, :], acc,
                 mask=mask_b[:, None] & mask_n[None, :])
        total += tl.sum(acc, axis=1)
    return total


@triton.jit
def recurrent_gradient(
    dh,             # [BLOCK_B, BLOCK_N] gradient reaching h of the chunk's units
    dp_ptr,         # [B, N] gradient of the recurrent product of the step after (gate-maths)
    w_ptr,          # [N, H] w_hh
    offs_b,
    mask_b,
    offs_j,         # [BLOCK_N] the chunk's units
    mask_j,
    add,            # [BLOCK_B, 1] rows that take the product
    N,
    H,
    BLOCK_B: tl.constexpr,
    BLOCK_K: tl.constexpr,
    TF32: tl.constexpr,
    UPCAST: tl.constexpr,
    ROUND_BF16: tl.constexpr,
):
    """dh + dp @ w_hh[:, units] on the rows of ``add``; the others keep dh (their dp is zero,
    but zero times a NaN or inf of w_hh would not be)."""
    w_dtype = w_ptr.dtype.element_ty
    acc = dh
    for k0 in tl.range(0, N, BLOCK_K, num_stages=1):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask_k = offs_k < N
        # (the other rows' dp is not read: at the first position there is none yet)
        a = tl.load(dp_ptr + offs_b[:, None] * N + offs_k[None, :],
                    mask=mask_b[:, None] & mask_k[None, :] & add, other=0.0)
        w = tl.load(w_ptr + offs_k[:, None].to(tl.int64) * H + offs_j[None, :],
                    mask=mask_k[:, None] & mask_j[None, :], other=0.0)       # [BLOCK_K, BLOCK_N]
        acc = dot(to_storage(a, w_dtype, ROUND_BF16), w, acc, TF32, UPCAST)
    return tl.where(add, acc, dh)


@triton.jit
def step_after(r, T, length, REVERSE: tl.constexpr):
    """Of the backward's position r (it runs the steps in reverse): whether the step processed
    at r - 1, the one after in the recurrence, is real on each row [BLOCK_B], and its time index
    (clamped into [0, T): a valid address, read only where real)."""
    after = after_step_is_real(r, T, length, REVERSE)
    t_after = tl.minimum(tl.maximum(step_time(T - r, T, REVERSE), 0), T - 1).to(tl.int64)
    return after, t_after


@triton.jit
def initial_state_gradient(
    dh_ptr,         # [2, B, H] the ping-ponged dh: read at [T % 2], grad_h0 written at [(T + 1) % 2]
    dp_ptr,         # [T, B, N] dp of every step (gate-maths dtype)
    w_ptr,          # [N, H] w_hh
    offs_b,
    mask_b,
    length,         # [BLOCK_B]
    T,
    B,
    N,
    H,
    REVERSE: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    TF32: tl.constexpr,
    UPCAST: tl.constexpr,
    ROUND_BF16: tl.constexpr,
):
    """After the last position: the recurrent part of each row's first real step's gradients
    reaches h0 (rows of no real step keep dh)."""
    after, t_after = step_after(T, T, length, REVERSE)
    for j0 in tl.range(0, H, BLOCK_N, num_stages=1):
        offs_j = j0 + tl.arange(0, BLOCK_N)
        mask_j = offs_j < H
        m = mask_b[:, None] & mask_j[None, :]
        unit = offs_b[:, None] * H + offs_j[None, :]
        dh = tl.load(dh_ptr + (T % 2) * B * H + unit, mask=m, other=0.0)
        dh = recurrent_gradient(dh, dp_ptr + t_after * B * N, w_ptr, offs_b, mask_b, offs_j,
                                mask_j, after, N, H, BLOCK_B, BLOCK_K, TF32, UPCAST, ROUND_BF16)
        tl.store(dh_ptr + ((T + 1) % 2) * B * H + unit, dh, mask=m)


@triton.jit
def mean_rstd(
    x_ptr,          # [B, ROW_STRIDE] rows, the normalised values in the first N columns
    ROW_STRIDE,
    offs_b,
    mask_b,
    total,          # [BLOCK_B] row sums of the N values
    N,
    eps,
    BLOCK_N: tl.constexpr,
):
    """Mean and 1 / sqrt(var + eps) of each row (biased variance), the variance from the sum
    of squared deviations from the mean (a second pass: no cancellation as in E[x^2] - E[x]^2)."""
    mean = total / N
    m2 = tl.zeros_like(total)
    for n0 in tl.range(0, N, BLOCK_N, num_stages=1):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        m = mask_b[:, None] & (offs_n < N)[None, :]
        x = tl.load(x_ptr + offs_b[:, None] * ROW_STRIDE + offs_n[None, :], mask=m, other=0.0)
        d = tl.where(m, x - mean[:, None], 0.0)
        m2 += tl.sum(d * d, axis=1)
    return mean, 1.0 / tl.sqrt(m2 / N + eps)


@triton.jit
def parameter(ptr, offs_j, mask_j, FP64: tl.constexpr):
    """[1, BLOCK_N] a per-unit parameter (γ, β) of a chunk's units, in the gate-maths dtype."""
    return to_compute(tl.load(ptr + offs_j, mask=mask_j, other=0.0), FP64)[None, :]


@triton.jit
def normalised(p_ptrs, m, mean, rstd):
    """(p - mean) * rstd of a chunk of a row's values ([BLOCK_B, 1] mean and rstd)."""
    return (tl.load(p_ptrs, mask=m, other=0.0) - mean) * rstd


@triton.jit
def layernorm_backward_rows(
    dx_hat_ptr,     # [B, N] the gradient of the normalised values x̂ (gate-maths dtype)
    x_hat_ptr,      # [B, N] x̂ (the saved workspace of the step)
    dx_ptr,         # [B, N] out: the gradient of x (gate-maths dtype)
    offs_b,
    mask_b,
    real,           # [BLOCK_B] rows whose step is real (the others get zeros)
    rstd,           # [BLOCK_B]
    mean_dx_hat,    # [BLOCK_B] mean of dx̂ over the row
    mean_dot,       # [BLOCK_B] mean of dx̂ x̂ over the row
    N,
    BLOCK_N: tl.constexpr,
):
    """dx = rstd (dx̂ - mean(dx̂) - x̂ mean(dx̂ x̂)), chunk by chunk."""
    for n0 in tl.range(0, N, BLOCK_N, num_stages=1):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        m = mask_b[:, None] & (offs_n < N)[None, :]
        at = offs_b[:, None] * N + offs_n[None, :]
        dx_hat = tl.load(dx_hat_ptr + at, mask=m, other=0.0)
        x_hat = tl.load(x_hat_ptr + at, mask=m, other=0.0).to(dx_hat.dtype)
        dx = rstd[:, None] * (dx_hat - mean_dx_hat[:, None] - x_hat * mean_dot[:, None])
        tl.store(dx_ptr + at, tl.where(real[:, None], dx, 0.0), mask=m)


@triton.jit
def zoneout_keep(mask_ptrs, m, KIND: tl.constexpr):
    """Where the units keep their previous value (KIND == ZONEOUT_MASK; otherwise unused)."""
    if KIND == ZONEOUT_MASK:
        return tl.load(mask_ptrs, mask=m, other=0) != 0
    else:
        return m


@triton.jit
def zoneout(previous, next, keep, p, KIND: tl.constexpr):
    """The new state: previous where kept (a select, as torch.where: the value dropped cannot
    make it NaN), p previous + (1 - p) next for the expectation, else next."""
    if KIND == ZONEOUT_MASK:
        return tl.where(keep, previous, next)
    elif KIND == ZONEOUT_CONSTANT:
        return p * previous + (1.0 - p) * next
    else:
        return next


@triton.jit
def zoneout_previous_grad(grad, keep, p, KIND: tl.constexpr):
    """The part of the new state's gradient that reaches the previous state."""
    if KIND == ZONEOUT_MASK:
        return tl.where(keep, grad, 0.0)
    elif KIND == ZONEOUT_CONSTANT:
        return p * grad
    else:
        return tl.zeros_like(grad)


@triton.jit
def zoneout_next_grad(grad, keep, p, KIND: tl.constexpr):
    """The part of the new state's gradient that reaches the step's own new value."""
    if KIND == ZONEOUT_MASK:
        return tl.where(keep, 0.0, grad)
    elif KIND == ZONEOUT_CONSTANT:
        return (1.0 - p) * grad
    else:
        return grad
