"""GRU recurrence (torch.nn's form, b_hn inside the reset product): fused forward and backward
kernels and their launchers.

Forward, per step, in each program (batch rows of its tile x its hidden units j):
    gh_{r,z,n}[:, j] = h_{t-1} @ w_hh[gate j]^T + b_hh[gate j]          (3 tl.dot, fp32 acc)
    r = sigmoid(x_r + gh_r)   z = sigmoid(x_z + gh_z)   n = tanh(x_n + r * gh_n)
    h = (1 - z) * n + z * h_{t-1}                                         (registers)
    y_t and the workspace (r, z, n, gh_n) stored; h published for the next step
Backward, per step (reverse order), with dh of its units in registers:
    dh += dgh_{t+1} @ w_hh[:, j]                                         (3 tl.dot)
    gradients of x_{r,z,n} (grad_gx) and of gh_{r,z,n} (dgh) from dh + dy_t
    dh restarts from the direct part dh * z on real steps
grad_w_hh from dgh of all steps after the kernel (_weight_grad.py), grad_b_hh = sum of dgh.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from . import _checks
from ._barrier import step_arrive, step_wait
from ._common import (
    after_step_is_real,
    dot,
    finishes,
    is_first_step,
    load_operand,
    load_weight_tile,
    prev_time,
    product,
    row_lengths,
    sigmoid,
    step_time,
    streamed_product,
    tanh,
    to_compute,
    zeros_acc,
)
from ._launch import (
    PER_CALL_INTEGERS,
    barrier_words,
    choose_layout,
    empty_output,
    exchange_buffer,
    kernel_lengths,
    launch_recurrence,
    state_buffer,
)
from ._weight_grad import recurrent_weight_grad

GATES = 3


@triton.jit(do_not_specialize=PER_CALL_INTEGERS)
def gru_forward_kernel(
    gx_ptr,         # [T, B, 3H]
    w_ptr,          # [3H, H]
    b_ptr,          # [3H] (read only when HAS_BIAS)
    lengths_ptr,    # [B] int64 (read only when HAS_LENGTHS)
    y_ptr,          # [T, B, H]
    h_ptr,          # [B, H] state: h at step_begin on entry, at step_end on exit
    gates_ptr,      # [T, B, 4H] r, z, n, gh_n (written when SAVE)
    xchg_ptr,       # [2, B_PAD, H_PAD] h of the whole batch tile, ping-pong over steps
    counter_ptr,    # [n_batch_tiles + 1] int32 barrier words (see _launch.barrier_words)
    T, B, H, step_begin, step_end,
    REVERSE: tl.constexpr,
    HAS_LENGTHS: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    SAVE: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_H: tl.constexpr,
    H_PAD: tl.constexpr,
    BLOCK_K: tl.constexpr,
    SPLIT_K: tl.constexpr,
    WEIGHTS_RESIDENT: tl.constexpr,
    OPERAND_IN_REGISTERS: tl.constexpr,
    SYNC: tl.constexpr,
    TF32: tl.constexpr,
    UPCAST: tl.constexpr,
    FP64: tl.constexpr,
):
    pid_b = tl.program_id(0)
    pid_h = tl.program_id(1)
    n_slices = tl.num_programs(1)
    xchg_half = tl.num_programs(0) * BLOCK_B * H_PAD
    offs_b = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)       # [BLOCK_B] batch rows
    offs_j = pid_h * BLOCK_H + tl.arange(0, BLOCK_H)       # [BLOCK_H] own hidden units
    mask_b = offs_b < B
    mask_j = offs_j < H
    mask = mask_b[:, None] & mask_j[None, :]
    length = row_lengths(lengths_ptr, offs_b, mask_b, T, HAS_LENGTHS)
    w_dtype = w_ptr.dtype.element_ty

    state = offs_b[:, None] * H + offs_j[None, :]
    h = to_compute(tl.load(h_ptr + state, mask=mask, other=0.0), FP64)   # [BLOCK_B, BLOCK_H]
    if HAS_BIAS:
        b_r = to_compute(tl.load(b_ptr + 0 * H + offs_j, mask=mask_j, other=0.0), FP64)[None, :]
        b_z = to_compute(tl.load(b_ptr + 1 * H + offs_j, mask=mask_j, other=0.0), FP64)[None, :]
        b_n = to_compute(tl.load(b_ptr + 2 * H + offs_j, mask=mask_j, other=0.0), FP64)[None, :]
    if WEIGHTS_RESIDENT:
        # This program's rows of w_hh, transposed, on chip for the whole sequence.
        w_r = load_weight_tile(w_ptr + 0 * H * H, 0, offs_j, mask_j, H, True, H_PAD, SPLIT_K)
        w_z = load_weight_tile(w_ptr + 1 * H * H, 0, offs_j, mask_j, H, True, H_PAD, SPLIT_K)
        w_n = load_weight_tile(w_ptr + 2 * H * H, 0, offs_j, mask_j, H, True, H_PAD, SPLIT_K)

    gx_row = offs_b[:, None] * (3 * H) + offs_j[None, :]
    gates_row = offs_b[:, None] * (4 * H) + offs_j[None, :]
    stuck = tl.program_id(0) * 0     # int32: whether a grid barrier round timed out
    # num_stages=1: the step loop must not be software-pipelined: a prefetch of the next
    # step's operand would run ahead of the barrier that makes it valid.
    for s in tl.range(step_begin, step_end, num_stages=1):
        t = step_time(s, T, REVERSE)
        gx_t = gx_ptr + t.to(tl.int64) * B * (3 * H) + gx_row
        x_r = to_compute(tl.load(gx_t + 0 * H, mask=mask, other=0.0), FP64)
        x_z = to_compute(tl.load(gx_t + 1 * H, mask=mask, other=0.0), FP64)
        x_n = to_compute(tl.load(gx_t + 2 * H, mask=mask, other=0.0), FP64)

        gh_r = zeros_acc(BLOCK_B, BLOCK_H, FP64)
        gh_z = zeros_acc(BLOCK_B, BLOCK_H, FP64)
        gh_n = zeros_acc(BLOCK_B, BLOCK_H, FP64)
        src = xchg_ptr + (s % 2) * xchg_half
        if OPERAND_IN_REGISTERS:
            a = h.to(w_dtype)           # BLOCK_H == H_PAD: the program holds all of h
            gh_r = dot(a, w_r, gh_r, TF32, UPCAST)
            gh_z = dot(a, w_z, gh_z, TF32, UPCAST)
            gh_n = dot(a, w_n, gh_n, TF32, UPCAST)
        elif WEIGHTS_RESIDENT:
            a = load_operand(src, H_PAD, offs_b, 0, H_PAD, SPLIT_K)     # all of h_{t-1}
            gh_r = product(a, w_r, gh_r, TF32, UPCAST, SPLIT_K)
            gh_z = product(a, w_z, gh_z, TF32, UPCAST, SPLIT_K)
            gh_n = product(a, w_n, gh_n, TF32, UPCAST, SPLIT_K)
        else:
            gh_r = streamed_product(gh_r, src, H_PAD, offs_b, w_ptr + 0 * H * H, offs_j, mask_j,
                                    H, True, H_PAD, BLOCK_K, SPLIT_K, TF32, UPCAST)
            gh_z = streamed_product(gh_z, src, H_PAD, offs_b, w_ptr + 1 * H * H, offs_j, mask_j,
                                    H, True, H_PAD, BLOCK_K, SPLIT_K, TF32, UPCAST)
            gh_n = streamed_product(gh_n, src, H_PAD, offs_b, w_ptr + 2 * H * H, offs_j, mask_j,
                                    H, True, H_PAD, BLOCK_K, SPLIT_K, TF32, UPCAST)
        if HAS_BIAS:
            gh_r += b_r
            gh_z += b_z
            gh_n += b_n

        r = sigmoid(x_r + gh_r)
        z = sigmoid(x_z + gh_z)
        n = tanh(x_n + r * gh_n)
        h_new = (1.0 - z) * n + z * h
        # A finished sequence keeps its state and emits zeros; padding columns stay zero.
        valid = (t < length)[:, None] & mask_j[None, :]
        h = tl.where(valid, h_new, h)

        if not OPERAND_IN_REGISTERS:
            # Publish h_t first: the barrier's release covers only these stores, and the
            # outputs below are written while the other programs catch up.
            dst = xchg_ptr + ((s + 1) % 2) * xchg_half
            tl.store(dst + offs_b[:, None] * H_PAD + offs_j[None, :], h.to(w_dtype), mask=mask)
            step_arrive(counter_ptr, SYNC)

        out_t = t.to(tl.int64) * B * H + state
        tl.store(y_ptr + out_t, tl.where(valid, h_new, 0.0).to(y_ptr.dtype.element_ty), mask=mask)
        if SAVE:
            gates_t = gates_ptr + t.to(tl.int64) * B * (4 * H) + gates_row
            out_dtype = gates_ptr.dtype.element_ty
            tl.store(gates_t + 0 * H, tl.where(valid, r, 0.0).to(out_dtype), mask=mask)
            tl.store(gates_t + 1 * H, tl.where(valid, z, 0.0).to(out_dtype), mask=mask)
            tl.store(gates_t + 2 * H, tl.where(valid, n, 0.0).to(out_dtype), mask=mask)
            tl.store(gates_t + 3 * H, tl.where(valid, gh_n, 0.0).to(out_dtype), mask=mask)
        if not OPERAND_IN_REGISTERS:
            stuck = step_wait(counter_ptr, n_slices * (s - step_begin + 1), stuck, SYNC)

    tl.store(h_ptr + state, h.to(h_ptr.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=PER_CALL_INTEGERS)
def gru_backward_kernel(
    dy_ptr,         # [T, B, H] (read only when HAS_DY)
    w_ptr,          # [3H, H]
    h0_ptr,         # [B, H]
    y_ptr,          # [T, B, H] (h_prev of a step is y of its neighbour)
    gates_ptr,      # [T, B, 4H] r, z, n, gh_n
    lengths_ptr,    # [B] int64 (read only when HAS_LENGTHS)
    dgx_ptr,        # [T, B, 3H] out: gradients of x_r, x_z, x_n
    dgh_ptr,        # [T, B, 3H] out: gradients of gh_r, gh_z, gh_n
    dh_ptr,         # [B, H] state: gradient reaching h (grad_h_n on entry, grad_h0 at the end)
    xchg_ptr,       # [2, B_PAD, 3 * H_PAD] dgh of the batch tile, ping-pong
    counter_ptr,    # [n_batch_tiles + 1] int32 barrier words
    T, B, H, step_begin, step_end,
    REVERSE: tl.constexpr,
    HAS_LENGTHS: tl.constexpr,
    HAS_DY: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_H: tl.constexpr,
    H_PAD: tl.constexpr,
    BLOCK_K: tl.constexpr,
    SPLIT_K: tl.constexpr,
    WEIGHTS_RESIDENT: tl.constexpr,
    OPERAND_IN_REGISTERS: tl.constexpr,
    SYNC: tl.constexpr,
    TF32: tl.constexpr,
    UPCAST: tl.constexpr,
    FP64: tl.constexpr,
):
    pid_b = tl.program_id(0)
    pid_h = tl.program_id(1)
    n_slices = tl.num_programs(1)
    xchg_half = tl.num_programs(0) * BLOCK_B * (3 * H_PAD)   # row width 3 * H_PAD
    offs_b = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    offs_j = pid_h * BLOCK_H + tl.arange(0, BLOCK_H)
    mask_b = offs_b < B
    mask_j = offs_j < H
    mask = mask_b[:, None] & mask_j[None, :]
    length = row_lengths(lengths_ptr, offs_b, mask_b, T, HAS_LENGTHS)
    w_dtype = w_ptr.dtype.element_ty

    state = offs_b[:, None] * H + offs_j[None, :]
    dh = to_compute(tl.load(dh_ptr + state, mask=mask, other=0.0), FP64)
    h0 = to_compute(tl.load(h0_ptr + state, mask=mask, other=0.0), FP64)
    if WEIGHTS_RESIDENT:
        # Columns j of every gate block of w_hh: [H_PAD, BLOCK_H] per gate (in SPLIT_K parts).
        w_r = load_weight_tile(w_ptr + 0 * H * H, 0, offs_j, mask_j, H, False, H_PAD, SPLIT_K)
        w_z = load_weight_tile(w_ptr + 1 * H * H, 0, offs_j, mask_j, H, False, H_PAD, SPLIT_K)
        w_n = load_weight_tile(w_ptr + 2 * H * H, 0, offs_j, mask_j, H, False, H_PAD, SPLIT_K)
    else:
        # Unused: the product streams w_hh from memory.
        w_r = w_ptr
        w_z = w_ptr
        w_n = w_ptr

    gx_row = offs_b[:, None] * (3 * H) + offs_j[None, :]
    gates_row = offs_b[:, None] * (4 * H) + offs_j[None, :]
    stuck = tl.program_id(0) * 0     # int32: whether a grid barrier round timed out
    # num_stages=1: the step loop must not be software-pipelined: a prefetch of the next
    # step's operand would run ahead of the barrier that makes it valid.
    for r in tl.range(step_begin, step_end, num_stages=1):
        if not OPERAND_IN_REGISTERS:
            # Recurrent part of dh from the step processed before (zeros at r = 0).
            src = xchg_ptr + (r % 2) * xchg_half
            dh_after = _gru_exchanged_product(dh, src, offs_b, w_ptr, w_r, w_z, w_n, offs_j, mask_j,
                                              H, H_PAD, BLOCK_K, SPLIT_K, WEIGHTS_RESIDENT, TF32,
                                              UPCAST)
            dh = tl.where(after_step_is_real(r, T, length, REVERSE), dh_after, dh)
        t = step_time(T - 1 - r, T, REVERSE)
        t64 = t.to(tl.int64)
        valid = (t < length)[:, None] & mask
        first = is_first_step(t, length, REVERSE)[:, None]
        gates_t = gates_ptr + t64 * B * (4 * H) + gates_row
        g_r = to_compute(tl.load(gates_t + 0 * H, mask=valid, other=0.0), FP64)
        g_z = to_compute(tl.load(gates_t + 1 * H, mask=valid, other=0.0), FP64)
        g_n = to_compute(tl.load(gates_t + 2 * H, mask=valid, other=0.0), FP64)
        gh_n = to_compute(tl.load(gates_t + 3 * H, mask=valid, other=0.0), FP64)
        prev_t = prev_time(t, REVERSE).to(tl.int64)
        h_prev = to_compute(tl.load(y_ptr + prev_t * B * H + state, mask=valid & ~first,
                                    other=0.0), FP64)
        h_prev = tl.where(first, h0, h_prev)
        dh_total = dh
        if HAS_DY:
            dh_total += to_compute(tl.load(dy_ptr + t64 * B * H + state, mask=valid, other=0.0),
                                   FP64)

        d_n = tl.where(valid, dh_total * (1.0 - g_z) * (1.0 - g_n * g_n), 0.0)
        d_z = tl.where(valid, dh_total * (h_prev - g_n) * g_z * (1.0 - g_z), 0.0)
        d_r = tl.where(valid, d_n * gh_n * g_r * (1.0 - g_r), 0.0)
        dgh_n = d_n * g_r
        # Padded steps pass dh through; on real steps it restarts from the direct part.
        dh = tl.where(valid, dh_total * g_z, dh)

        if OPERAND_IN_REGISTERS:
            # (a padded step's rows keep dh: see after_step_is_real)
            dh_real = dot(d_r.to(w_dtype), w_r, dh, TF32, UPCAST)
            dh_real = dot(d_z.to(w_dtype), w_z, dh_real, TF32, UPCAST)
            dh_real = dot(dgh_n.to(w_dtype), w_n, dh_real, TF32, UPCAST)
            dh = tl.where(valid, dh_real, dh)
        else:
            # Publish the gradients first; this step's outputs are stored while the
            # other programs catch up (between arrive and wait).
            dst = xchg_ptr + ((r + 1) % 2) * xchg_half + offs_b[:, None] * (3 * H_PAD) + offs_j[None, :]
            tl.store(dst + 0 * H_PAD, d_r.to(w_dtype), mask=mask)
            tl.store(dst + 1 * H_PAD, d_z.to(w_dtype), mask=mask)
            tl.store(dst + 2 * H_PAD, dgh_n.to(w_dtype), mask=mask)
            step_arrive(counter_ptr, SYNC)

        out_dtype = dgx_ptr.dtype.element_ty
        dgx_t = dgx_ptr + t64 * B * (3 * H) + gx_row
        tl.store(dgx_t + 0 * H, d_r.to(out_dtype), mask=mask)
        tl.store(dgx_t + 1 * H, d_z.to(out_dtype), mask=mask)
        tl.store(dgx_t + 2 * H, d_n.to(out_dtype), mask=mask)
        dgh_t = dgh_ptr + t64 * B * (3 * H) + gx_row
        tl.store(dgh_t + 0 * H, d_r.to(out_dtype), mask=mask)
        tl.store(dgh_t + 1 * H, d_z.to(out_dtype), mask=mask)
        tl.store(dgh_t + 2 * H, dgh_n.to(out_dtype), mask=mask)
        if not OPERAND_IN_REGISTERS:
            stuck = step_wait(counter_ptr, n_slices * (r - step_begin + 1), stuck, SYNC)

    if not OPERAND_IN_REGISTERS:
        if finishes(step_begin, step_end, T, SYNC):
            # The product of the last step's dgh: dh is then grad_h0.
            src = xchg_ptr + (T % 2) * xchg_half
            dh_after = _gru_exchanged_product(dh, src, offs_b, w_ptr, w_r, w_z, w_n, offs_j, mask_j,
                                              H, H_PAD, BLOCK_K, SPLIT_K, WEIGHTS_RESIDENT, TF32,
                                              UPCAST)
            dh = tl.where(after_step_is_real(T, T, length, REVERSE), dh_after, dh)
    tl.store(dh_ptr + state, dh.to(dh_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _gru_exchanged_product(dh, src, offs_b, w_ptr, w_r, w_z, w_n, offs_j, mask_j, H,
                           H_PAD: tl.constexpr, BLOCK_K: tl.constexpr,
                           SPLIT_K: tl.constexpr,
                           WEIGHTS_RESIDENT: tl.constexpr, TF32: tl.constexpr,
                           UPCAST: tl.constexpr):
    """dh + sum over the 3 gates of (dgh in the exchange buffer) @ w_hh[gate, j]."""
    if WEIGHTS_RESIDENT:
        dh = product(load_operand(src + 0 * H_PAD, 3 * H_PAD, offs_b, 0, H_PAD, SPLIT_K), w_r, dh, TF32, UPCAST, SPLIT_K)
        dh = product(load_operand(src + 1 * H_PAD, 3 * H_PAD, offs_b, 0, H_PAD, SPLIT_K), w_z, dh, TF32, UPCAST, SPLIT_K)
        dh = product(load_operand(src + 2 * H_PAD, 3 * H_PAD, offs_b, 0, H_PAD, SPLIT_K), w_n, dh, TF32, UPCAST, SPLIT_K)
    else:
        for gate in tl.static_range(3):
            dh = streamed_product(dh, src + gate * H_PAD, 3 * H_PAD, offs_b, w_ptr + gate * H * H,
                                  offs_j, mask_j, H, False, H_PAD, BLOCK_K, SPLIT_K, TF32, UPCAST)
    return dh


# ---------------------------------------------------------------------------------------------
# Launchers: the bodies of fused_rnn::gru_{forward,backward}_triton (ops.py).
# ---------------------------------------------------------------------------------------------

FORWARD_OP = "fused_rnn::gru_forward_triton"
BACKWARD_OP = "fused_rnn::gru_backward_triton"


def gru_forward(
    gx: Tensor,
    w_hh: Tensor,
    b_hh: Tensor | None,
    h0: Tensor,
    lengths: Tensor | None,
    reverse: bool,
    save_for_backward: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    n = _checks.check_forward_inputs(FORWARD_OP, GATES, gx, w_hh, None, h0, None, b_hh, lengths)
    T, B, H = n.T, n.B, n.H
    gx, w_hh = gx.contiguous(), w_hh.contiguous()
    y = empty_output((T, B, H), gx)
    gates = empty_output((T, B, 4 * H), gx) if save_for_backward else gx.new_empty(0)
    if T == 0 or B == 0 or H == 0:
        return y.zero_(), h0.clone(), gates

    layout = choose_layout(GATES, B, H, gx, backward=False)
    xchg = exchange_buffer(layout, layout.h_pad, gx)
    if not layout.operand_in_registers:
        xchg[0, :B, :H].copy_(h0)
    h = state_buffer(h0, h0)
    launch_recurrence(
        gru_forward_kernel,
        layout,
        (gx, w_hh, b_hh.contiguous() if b_hh is not None else gx,
         kernel_lengths(lengths, gx.device, gx), y, h, gates if save_for_backward else gx, xchg,
         barrier_words(layout, gx)),
        T, B, H, gx,
        dict(REVERSE=reverse, HAS_LENGTHS=lengths is not None, HAS_BIAS=b_hh is not None,
             SAVE=save_for_backward),
    )
    return y, h.to(gx.dtype), gates


def gru_backward(
    grad_y: Tensor | None,
    grad_h_n: Tensor | None,
    w_hh: Tensor,
    h0: Tensor,
    y: Tensor,
    gates: Tensor,
    lengths: Tensor | None,
    reverse: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    n = _checks.check_backward_inputs(BACKWARD_OP, GATES, w_hh, None, h0, None, y, lengths,
                                      grad_y, grad_h_n, None)
    T, B, H = n.T, n.B, n.H
    _checks.check_workspace(BACKWARD_OP, "gates", gates, y, (T, B, 4 * H))
    grad_gx = empty_output((T, B, 3 * H), y)
    dgh = empty_output((T, B, 3 * H), y)
    if T == 0 or B == 0 or H == 0:
        grad_h0 = grad_h_n.clone() if grad_h_n is not None else torch.zeros_like(h0)
        return grad_gx.zero_(), y.new_zeros(3 * H, H), y.new_zeros(3 * H), grad_h0

    w_hh, y, h0 = w_hh.contiguous(), y.contiguous(), h0.contiguous()
    layout = choose_layout(GATES, B, H, y, backward=True)
    xchg = exchange_buffer(layout, GATES * layout.h_pad, y)
    dh = state_buffer(grad_h_n, h0)
    launch_recurrence(
        gru_backward_kernel,
        layout,
        (grad_y.contiguous() if grad_y is not None else y, w_hh, h0, y, gates.contiguous(),
         kernel_lengths(lengths, y.device, y), grad_gx, dgh, dh, xchg, barrier_words(layout, y)),
        T, B, H, y,
        dict(REVERSE=reverse, HAS_LENGTHS=lengths is not None, HAS_DY=grad_y is not None),
        finish=True,
    )
    grad_w_hh = recurrent_weight_grad(dgh, y, h0, lengths, reverse)
    grad_b_hh = dgh.reshape(-1, 3 * H).sum(0)
    return grad_gx, grad_w_hh, grad_b_hh, dh.to(y.dtype)
