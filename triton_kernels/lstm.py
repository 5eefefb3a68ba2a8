"""LSTM recurrence: fused forward and backward kernels and their launchers.

Forward, per step, in each program (batch rows of its tile x its hidden units j):
    a_{i,f,g,o}[:, j] = gx_t[:, gate j] + h_{t-1} @ w_hh[gate j]^T       (4 tl.dot, fp32 acc)
    c = f * c + i * g      h = o * tanh(c)                                (registers)
    y_t, gates_t, cs_t stored; h published for the next step (see README.md)
Backward, per step (reverse order), with dh and dc of its units in registers:
    dh += dgates_{t+1} @ w_hh[:, j]                                      (4 tl.dot)
    gate gradients of step t from dh + dy_t, dc, the saved gates and cell states
    dh restarts from 0 on real steps (the product above adds its recurrent part)
grad_w_hh = one pair of GEMMs over all steps after the kernel (_weight_grad.py).
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

GATES = 4


@triton.jit(do_not_specialize=PER_CALL_INTEGERS)
def lstm_forward_kernel(
    gx_ptr,         # [T, B, 4H]
    w_ptr,          # [4H, H]
    lengths_ptr,    # [B] int64 (read only when HAS_LENGTHS)
    y_ptr,          # [T, B, H]
    h_ptr,          # [B, H] state: h at step_begin on entry, at step_end on exit
    c_ptr,          # [B, H] state, likewise
    gates_ptr,      # [T, B, 4H] activated i, f, g, o (written when SAVE)
    cs_ptr,         # [T, B, H] cell states (written when SAVE)
    xchg_ptr,       # [2, B_PAD, H_PAD] h of the whole batch tile, ping-pong over steps
    counter_ptr,    # [n_batch_tiles + 1] int32 barrier words (see _launch.barrier_words)
    T, B, H, step_begin, step_end,
    REVERSE: tl.constexpr,
    HAS_LENGTHS: tl.constexpr,
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
    c = to_compute(tl.load(c_ptr + state, mask=mask, other=0.0), FP64)
    if WEIGHTS_RESIDENT:
        # This program's rows of w_hh, transposed, on chip for the whole sequence:
        # [H_PAD, BLOCK_H] per gate (in SPLIT_K parts, see _common.product).
        w_i = load_weight_tile(w_ptr + 0 * H * H, 0, offs_j, mask_j, H, True, H_PAD, SPLIT_K)
        w_f = load_weight_tile(w_ptr + 1 * H * H, 0, offs_j, mask_j, H, True, H_PAD, SPLIT_K)
        w_g = load_weight_tile(w_ptr + 2 * H * H, 0, offs_j, mask_j, H, True, H_PAD, SPLIT_K)
        w_o = load_weight_tile(w_ptr + 3 * H * H, 0, offs_j, mask_j, H, True, H_PAD, SPLIT_K)

    gx_row = offs_b[:, None] * (4 * H) + offs_j[None, :]
    stuck = tl.program_id(0) * 0     # int32: whether a grid barrier round timed out
    # num_stages=1: the step loop must not be software-pipelined: a prefetch of the next
    # step's operand would run ahead of the barrier that makes it valid.
    for s in tl.range(step_begin, step_end, num_stages=1):
        t = step_time(s, T, REVERSE)
        gx_t = gx_ptr + t.to(tl.int64) * B * (4 * H) + gx_row
        # Input projections first: independent of the recurrence, their latency overlaps it.
        x_i = to_compute(tl.load(gx_t + 0 * H, mask=mask, other=0.0), FP64)
        x_f = to_compute(tl.load(gx_t + 1 * H, mask=mask, other=0.0), FP64)
        x_g = to_compute(tl.load(gx_t + 2 * H, mask=mask, other=0.0), FP64)
        x_o = to_compute(tl.load(gx_t + 3 * H, mask=mask, other=0.0), FP64)

        # Recurrent product h_{t-1} @ w_hh^T for this program's units.
        acc_i = zeros_acc(BLOCK_B, BLOCK_H, FP64)
        acc_f = zeros_acc(BLOCK_B, BLOCK_H, FP64)
        acc_g = zeros_acc(BLOCK_B, BLOCK_H, FP64)
        acc_o = zeros_acc(BLOCK_B, BLOCK_H, FP64)
        src = xchg_ptr + (s % 2) * xchg_half
        if OPERAND_IN_REGISTERS:
            a = h.to(w_dtype)           # BLOCK_H == H_PAD: the program holds all of h
            acc_i = dot(a, w_i, acc_i, TF32, UPCAST)
            acc_f = dot(a, w_f, acc_f, TF32, UPCAST)
            acc_g = dot(a, w_g, acc_g, TF32, UPCAST)
            acc_o = dot(a, w_o, acc_o, TF32, UPCAST)
        elif WEIGHTS_RESIDENT:
            a = load_operand(src, H_PAD, offs_b, 0, H_PAD, SPLIT_K)     # all of h_{t-1}
            acc_i = product(a, w_i, acc_i, TF32, UPCAST, SPLIT_K)
            acc_f = product(a, w_f, acc_f, TF32, UPCAST, SPLIT_K)
            acc_g = product(a, w_g, acc_g, TF32, UPCAST, SPLIT_K)
            acc_o = product(a, w_o, acc_o, TF32, UPCAST, SPLIT_K)
        else:
            acc_i = streamed_product(acc_i, src, H_PAD, offs_b, w_ptr + 0 * H * H, offs_j,
                                     mask_j, H, True, H_PAD, BLOCK_K, SPLIT_K, TF32, UPCAST)
            acc_f = streamed_product(acc_f, src, H_PAD, offs_b, w_ptr + 1 * H * H, offs_j,
                                     mask_j, H, True, H_PAD, BLOCK_K, SPLIT_K, TF32, UPCAST)
            acc_g = streamed_product(acc_g, src, H_PAD, offs_b, w_ptr + 2 * H * H, offs_j,
                                     mask_j, H, True, H_PAD, BLOCK_K, SPLIT_K, TF32, UPCAST)
            acc_o = streamed_product(acc_o, src, H_PAD, offs_b, w_ptr + 3 * H * H, offs_j,
                                     mask_j, H, True, H_PAD, BLOCK_K, SPLIT_K, TF32, UPCAST)

        i = sigmoid(x_i + acc_i)
        f = sigmoid(x_f + acc_f)
        g = tanh(x_g + acc_g)
        o = sigmoid(x_o + acc_o)
        c_new = f * c + i * g
        h_new = o * tanh(c_new)
        # A finished sequence keeps its state and emits zeros; padding columns stay zero.
        valid = (t < length)[:, None] & mask_j[None, :]
        c = tl.where(valid, c_new, c)
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
            gates_t = gates_ptr + t.to(tl.int64) * B * (4 * H) + gx_row
            out_dtype = gates_ptr.dtype.element_ty
            tl.store(gates_t + 0 * H, tl.where(valid, i, 0.0).to(out_dtype), mask=mask)
            tl.store(gates_t + 1 * H, tl.where(valid, f, 0.0).to(out_dtype), mask=mask)
            tl.store(gates_t + 2 * H, tl.where(valid, g, 0.0).to(out_dtype), mask=mask)
            tl.store(gates_t + 3 * H, tl.where(valid, o, 0.0).to(out_dtype), mask=mask)
            tl.store(cs_ptr + out_t, c.to(out_dtype), mask=mask)
        if not OPERAND_IN_REGISTERS:
            stuck = step_wait(counter_ptr, n_slices * (s - step_begin + 1), stuck, SYNC)

    tl.store(h_ptr + state, h.to(h_ptr.dtype.element_ty), mask=mask)
    tl.store(c_ptr + state, c.to(c_ptr.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=PER_CALL_INTEGERS)
def lstm_backward_kernel(
    dy_ptr,         # [T, B, H] (read only when HAS_DY)
    w_ptr,          # [4H, H]
    c0_ptr,         # [B, H]
    gates_ptr,      # [T, B, 4H] activated i, f, g, o
    cs_ptr,         # [T, B, H]
    lengths_ptr,    # [B] int64 (read only when HAS_LENGTHS)
    dgx_ptr,        # [T, B, 4H] out: gradients of the gate pre-activations
    dh_ptr,         # [B, H] state: gradient reaching h (grad_h_n on entry, grad_h0 at the end)
    dc_ptr,         # [B, H] state: gradient reaching c
    xchg_ptr,       # [2, B_PAD, 4 * H_PAD] gate gradients of the batch tile, ping-pong
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
    xchg_half = tl.num_programs(0) * BLOCK_B * (4 * H_PAD)   # row width 4 * H_PAD
    offs_b = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    offs_j = pid_h * BLOCK_H + tl.arange(0, BLOCK_H)
    mask_b = offs_b < B
    mask_j = offs_j < H
    mask = mask_b[:, None] & mask_j[None, :]
    length = row_lengths(lengths_ptr, offs_b, mask_b, T, HAS_LENGTHS)
    w_dtype = w_ptr.dtype.element_ty

    state = offs_b[:, None] * H + offs_j[None, :]
    dh = to_compute(tl.load(dh_ptr + state, mask=mask, other=0.0), FP64)
    dc = to_compute(tl.load(dc_ptr + state, mask=mask, other=0.0), FP64)
    c0 = to_compute(tl.load(c0_ptr + state, mask=mask, other=0.0), FP64)
    if WEIGHTS_RESIDENT:
        # Columns j of every gate block of w_hh: [H_PAD, BLOCK_H] per gate (in SPLIT_K parts).
        w_i = load_weight_tile(w_ptr + 0 * H * H, 0, offs_j, mask_j, H, False, H_PAD, SPLIT_K)
        w_f = load_weight_tile(w_ptr + 1 * H * H, 0, offs_j, mask_j, H, False, H_PAD, SPLIT_K)
        w_g = load_weight_tile(w_ptr + 2 * H * H, 0, offs_j, mask_j, H, False, H_PAD, SPLIT_K)
        w_o = load_weight_tile(w_ptr + 3 * H * H, 0, offs_j, mask_j, H, False, H_PAD, SPLIT_K)
    else:
        # Unused: the product streams w_hh from memory.
        w_i = w_ptr
        w_f = w_ptr
        w_g = w_ptr
        w_o = w_ptr

    gate_row = offs_b[:, None] * (4 * H) + offs_j[None, :]
    stuck = tl.program_id(0) * 0     # int32: whether a grid barrier round timed out
    # num_stages=1: the step loop must not be software-pipelined: a prefetch of the next
    # step's operand would run ahead of the barrier that makes it valid.
    for r in tl.range(step_begin, step_end, num_stages=1):
        if not OPERAND_IN_REGISTERS:
            # Recurrent part of dh: the gate gradients of the step processed before (the
            # buffer half read at r = 0 is all zeros).
            src = xchg_ptr + (r % 2) * xchg_half
            dh_after = _lstm_exchanged_product(dh, src, 4 * H_PAD, offs_b, w_ptr, w_i, w_f, w_g,
                                               w_o, offs_j, mask_j, H, H_PAD, BLOCK_K, SPLIT_K,
                                               WEIGHTS_RESIDENT, TF32, UPCAST)
            dh = tl.where(after_step_is_real(r, T, length, REVERSE), dh_after, dh)
        t = step_time(T - 1 - r, T, REVERSE)
        t64 = t.to(tl.int64)
        valid = (t < length)[:, None] & mask
        first = is_first_step(t, length, REVERSE)[:, None]
        gates_t = gates_ptr + t64 * B * (4 * H) + gate_row
        i = to_compute(tl.load(gates_t + 0 * H, mask=valid, other=0.0), FP64)
        f = to_compute(tl.load(gates_t + 1 * H, mask=valid, other=0.0), FP64)
        g = to_compute(tl.load(gates_t + 2 * H, mask=valid, other=0.0), FP64)
        o = to_compute(tl.load(gates_t + 3 * H, mask=valid, other=0.0), FP64)
        c = to_compute(tl.load(cs_ptr + t64 * B * H + state, mask=valid, other=0.0), FP64)
        prev_t = prev_time(t, REVERSE).to(tl.int64)
        c_prev = to_compute(tl.load(cs_ptr + prev_t * B * H + state, mask=valid & ~first,
                                    other=0.0), FP64)
        c_prev = tl.where(first, c0, c_prev)
        dh_total = dh
        if HAS_DY:
            dh_total += to_compute(tl.load(dy_ptr + t64 * B * H + state, mask=valid, other=0.0),
                                   FP64)

        tanh_c = tanh(c)
        dc_total = dc + dh_total * o * (1.0 - tanh_c * tanh_c)
        da_i = tl.where(valid, dc_total * g * i * (1.0 - i), 0.0)
        da_f = tl.where(valid, dc_total * c_prev * f * (1.0 - f), 0.0)
        da_g = tl.where(valid, dc_total * i * (1.0 - g * g), 0.0)
        da_o = tl.where(valid, dh_total * tanh_c * o * (1.0 - o), 0.0)
        # Padded steps pass dh and dc through; on real steps dh restarts from zero and gets
        # its recurrent part from the product with this step's gate gradients.
        dc = tl.where(valid, dc_total * f, dc)
        dh = tl.where(valid, 0.0, dh)

        if OPERAND_IN_REGISTERS:
            # (a padded step's rows keep dh: see after_step_is_real)
            dh_real = dot(da_i.to(w_dtype), w_i, dh, TF32, UPCAST)
            dh_real = dot(da_f.to(w_dtype), w_f, dh_real, TF32, UPCAST)
            dh_real = dot(da_g.to(w_dtype), w_g, dh_real, TF32, UPCAST)
            dh_real = dot(da_o.to(w_dtype), w_o, dh_real, TF32, UPCAST)
            dh = tl.where(valid, dh_real, dh)
        else:
            # Publish the gradients first; this step's outputs are stored while the
            # other programs catch up (between arrive and wait).
            dst = xchg_ptr + ((r + 1) % 2) * xchg_half + offs_b[:, None] * (4 * H_PAD) + offs_j[None, :]
            tl.store(dst + 0 * H_PAD, da_i.to(w_dtype), mask=mask)
            tl.store(dst + 1 * H_PAD, da_f.to(w_dtype), mask=mask)
            tl.store(dst + 2 * H_PAD, da_g.to(w_dtype), mask=mask)
            tl.store(dst + 3 * H_PAD, da_o.to(w_dtype), mask=mask)
            step_arrive(counter_ptr, SYNC)

        dgx_t = dgx_ptr + t64 * B * (4 * H) + gate_row
        out_dtype = dgx_ptr.dtype.element_ty
        tl.store(dgx_t + 0 * H, da_i.to(out_dtype), mask=mask)
        tl.store(dgx_t + 1 * H, da_f.to(out_dtype), mask=mask)
        tl.store(dgx_t + 2 * H, da_g.to(out_dtype), mask=mask)
        tl.store(dgx_t + 3 * H, da_o.to(out_dtype), mask=mask)
        if not OPERAND_IN_REGISTERS:
            stuck = step_wait(counter_ptr, n_slices * (r - step_begin + 1), stuck, SYNC)

    if not OPERAND_IN_REGISTERS:
        if finishes(step_begin, step_end, T, SYNC):
            # The product of the last step's gate gradients: dh is then grad_h0.
            src = xchg_ptr + (T % 2) * xchg_half
            dh_after = _lstm_exchanged_product(dh, src, 4 * H_PAD, offs_b, w_ptr, w_i, w_f, w_g,
                                               w_o, offs_j, mask_j, H, H_PAD, BLOCK_K, SPLIT_K,
                                               WEIGHTS_RESIDENT, TF32, UPCAST)
            dh = tl.where(after_step_is_real(T, T, length, REVERSE), dh_after, dh)
    tl.store(dh_ptr + state, dh.to(dh_ptr.dtype.element_ty), mask=mask)
    tl.store(dc_ptr + state, dc.to(dc_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _lstm_exchanged_product(dh, src, ROW_STRIDE: tl.constexpr, offs_b, w_ptr, w_i, w_f, w_g, w_o, offs_j,
                            mask_j, H, H_PAD: tl.constexpr, BLOCK_K: tl.constexpr,
                            SPLIT_K: tl.constexpr,
                            WEIGHTS_RESIDENT: tl.constexpr, TF32: tl.constexpr,
                            UPCAST: tl.constexpr):
    """dh + sum over the 4 gates of (gate gradients in the exchange buffer) @ w_hh[gate, j]."""
    if WEIGHTS_RESIDENT:
        dh = product(load_operand(src + 0 * H_PAD, ROW_STRIDE, offs_b, 0, H_PAD, SPLIT_K), w_i, dh, TF32, UPCAST, SPLIT_K)
        dh = product(load_operand(src + 1 * H_PAD, ROW_STRIDE, offs_b, 0, H_PAD, SPLIT_K), w_f, dh, TF32, UPCAST, SPLIT_K)
        dh = product(load_operand(src + 2 * H_PAD, ROW_STRIDE, offs_b, 0, H_PAD, SPLIT_K), w_g, dh, TF32, UPCAST, SPLIT_K)
        dh = product(load_operand(src + 3 * H_PAD, ROW_STRIDE, offs_b, 0, H_PAD, SPLIT_K), w_o, dh, TF32, UPCAST, SPLIT_K)
    else:
        for gate in tl.static_range(4):
            dh = streamed_product(dh, src + gate * H_PAD, ROW_STRIDE, offs_b, w_ptr + gate * H * H,
                                  offs_j, mask_j, H, False, H_PAD, BLOCK_K, SPLIT_K, TF32, UPCAST)
    return dh


# ---------------------------------------------------------------------------------------------
# Launchers: the bodies of fused_rnn::lstm_{forward,backward}_triton (ops.py).
# ---------------------------------------------------------------------------------------------

FORWARD_OP = "fused_rnn::lstm_forward_triton"
BACKWARD_OP = "fused_rnn::lstm_backward_triton"


def lstm_forward(
    gx: Tensor,
    w_hh: Tensor,
    w_hr: Tensor | None,
    h0: Tensor,
    c0: Tensor,
    lengths: Tensor | None,
    reverse: bool,
    save_for_backward: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    n = _checks.check_forward_inputs(FORWARD_OP, GATES, gx, w_hh, w_hr, h0, c0, None, lengths)
    _checks.check_no_projection(FORWARD_OP, w_hr)
    T, B, H = n.T, n.B, n.H
    gx, w_hh = gx.contiguous(), w_hh.contiguous()
    y = empty_output((T, B, H), gx)
    if save_for_backward:
        gates, cs = empty_output((T, B, 4 * H), gx), empty_output((T, B, H), gx)
    else:
        gates, cs = gx.new_empty(0), gx.new_empty(0)
    if T == 0 or B == 0 or H == 0:
        return y.zero_(), h0.clone(), c0.clone(), gates, cs

    layout = choose_layout(GATES, B, H, gx, backward=False)
    xchg = exchange_buffer(layout, layout.h_pad, gx)
    if not layout.operand_in_registers:
        xchg[0, :B, :H].copy_(h0)
    h, c = state_buffer(h0, h0), state_buffer(c0, c0)
    launch_recurrence(
        lstm_forward_kernel,
        layout,
        (gx, w_hh, kernel_lengths(lengths, gx.device, gx), y, h, c,
         gates if save_for_backward else gx, cs if save_for_backward else gx, xchg,
         barrier_words(layout, gx)),
        T, B, H, gx,
        dict(REVERSE=reverse, HAS_LENGTHS=lengths is not None, SAVE=save_for_backward),
    )
    return y, h.to(gx.dtype), c.to(gx.dtype), gates, cs


def lstm_backward(
    grad_y: Tensor | None,
    grad_h_n: Tensor | None,
    grad_c_n: Tensor | None,
    w_hh: Tensor,
    w_hr: Tensor | None,
    h0: Tensor,
    c0: Tensor,
    y: Tensor,
    gates: Tensor,
    cs: Tensor,
    lengths: Tensor | None,
    reverse: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    n = _checks.check_backward_inputs(BACKWARD_OP, GATES, w_hh, w_hr, h0, c0, y, lengths,
                                      grad_y, grad_h_n, grad_c_n)
    _checks.check_no_projection(BACKWARD_OP, w_hr)
    T, B, H = n.T, n.B, n.H
    _checks.check_workspace(BACKWARD_OP, "gates", gates, y, (T, B, 4 * H))
    _checks.check_workspace(BACKWARD_OP, "cs", cs, y, (T, B, H))
    grad_gx = empty_output((T, B, 4 * H), y)
    grad_w_hr = y.new_empty(0)
    if T == 0 or B == 0 or H == 0:
        grad_h0 = grad_h_n.clone() if grad_h_n is not None else torch.zeros_like(h0)
        grad_c0 = grad_c_n.clone() if grad_c_n is not None else torch.zeros_like(c0)
        return grad_gx.zero_(), y.new_zeros(4 * H, H), grad_w_hr, grad_h0, grad_c0

    w_hh = w_hh.contiguous()
    layout = choose_layout(GATES, B, H, y, backward=True)
    xchg = exchange_buffer(layout, GATES * layout.h_pad, y)
    dh, dc = state_buffer(grad_h_n, h0), state_buffer(grad_c_n, c0)
    launch_recurrence(
        lstm_backward_kernel,
        layout,
        (grad_y.contiguous() if grad_y is not None else y, w_hh, c0.contiguous(),
         gates.contiguous(), cs.contiguous(), kernel_lengths(lengths, y.device, y), grad_gx, dh,
         dc, xchg, barrier_words(layout, y)),
        T, B, H, y,
        dict(REVERSE=reverse, HAS_LENGTHS=lengths is not None, HAS_DY=grad_y is not None),
        finish=True,
    )
    grad_w_hh = recurrent_weight_grad(grad_gx, y, h0, lengths, reverse)
    return grad_gx, grad_w_hh, grad_w_hr, dh.to(y.dtype), dc.to(y.dtype)
