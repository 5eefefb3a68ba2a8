"""Elman RNN recurrence (tanh or relu): fused forward and backward kernels and their launchers.

Forward, per step, in each program (batch rows of its tile x its hidden units j):
    h[:, j] = act(gx_t[:, j] + h_{t-1} @ w_hh[j]^T)                      (1 tl.dot, fp32 acc)
Backward, per step (reverse order), with dh of its units in registers:
    dh += da_{t+1} @ w_hh[:, j]                                          (1 tl.dot)
    da_t = act'(y_t) * (dh + dy_t); dh restarts from 0 on real steps
act' is taken from the output y (1 - y^2 for tanh, y > 0 for relu): no workspace.
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
    load_operand,
    load_weight_tile,
    product,
    relu,
    relu_backward,
    row_lengths,
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

GATES = 1


@triton.jit(do_not_specialize=PER_CALL_INTEGERS)
def rnn_forward_kernel(
    gx_ptr,         # [T, B, H]
    w_ptr,          # [H, H]
    lengths_ptr,    # [B] int64 (read only when HAS_LENGTHS)
    y_ptr,          # [T, B, H]
    h_ptr,          # [B, H] state: h at step_begin on entry, at step_end on exit
    xchg_ptr,       # [2, B_PAD, H_PAD] h of the whole batch tile, ping-pong over steps
    counter_ptr,    # [n_batch_tiles + 1] int32 barrier words (see _launch.barrier_words)
    T, B, H, step_begin, step_end,
    RELU: tl.constexpr,
    REVERSE: tl.constexpr,
    HAS_LENGTHS: tl.constexpr,
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
    if WEIGHTS_RESIDENT:
        w_t = load_weight_tile(w_ptr, 0, offs_j, mask_j, H, True, H_PAD, SPLIT_K)   # [H_PAD, BLOCK_H]

    stuck = tl.program_id(0) * 0     # int32: whether a grid barrier round timed out
    # num_stages=1: the step loop must not be software-pipelined: a prefetch of the next
    # step's operand would run ahead of the barrier that makes it valid.
    for s in tl.range(step_begin, step_end, num_stages=1):
        t = step_time(s, T, REVERSE)
        out_t = t.to(tl.int64) * B * H + state
        x = to_compute(tl.load(gx_ptr + out_t, mask=mask, other=0.0), FP64)
        acc = zeros_acc(BLOCK_B, BLOCK_H, FP64)
        src = xchg_ptr + (s % 2) * xchg_half
        if OPERAND_IN_REGISTERS:
            acc = dot(h.to(w_dtype), w_t, acc, TF32, UPCAST)
        elif WEIGHTS_RESIDENT:
            acc = product(load_operand(src, H_PAD, offs_b, 0, H_PAD, SPLIT_K), w_t, acc, TF32, UPCAST, SPLIT_K)
        else:
            acc = streamed_product(acc, src, H_PAD, offs_b, w_ptr, offs_j, mask_j, H, True, H_PAD,
                                   BLOCK_K, SPLIT_K, TF32, UPCAST)
        if RELU:
            h_new = relu(x + acc)
        else:
            h_new = tanh(x + acc)
        # A finished sequence keeps its state and emits zeros; padding columns stay zero.
        valid = (t < length)[:, None] & mask_j[None, :]
        h = tl.where(valid, h_new, h)
        if not OPERAND_IN_REGISTERS:
            # Publish h_t first: the barrier's release covers only these stores, and the
            # outputs below are written while the other programs catch up.
            dst = xchg_ptr + ((s + 1) % 2) * xchg_half
            tl.store(dst + offs_b[:, None] * H_PAD + offs_j[None, :], h.to(w_dtype), mask=mask)
            step_arrive(counter_ptr, SYNC)

        tl.store(y_ptr + out_t, tl.where(valid, h_new, 0.0).to(y_ptr.dtype.element_ty), mask=mask)
        if not OPERAND_IN_REGISTERS:
            stuck = step_wait(counter_ptr, n_slices * (s - step_begin + 1), stuck, SYNC)

    tl.store(h_ptr + state, h.to(h_ptr.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=PER_CALL_INTEGERS)
def rnn_backward_kernel(
    dy_ptr,         # [T, B, H] (read only when HAS_DY)
    w_ptr,          # [H, H]
    y_ptr,          # [T, B, H]
    lengths_ptr,    # [B] int64 (read only when HAS_LENGTHS)
    dgx_ptr,        # [T, B, H] out: gradients of the pre-activations
    dh_ptr,         # [B, H] state: gradient reaching h (grad_h_n on entry, grad_h0 at the end)
    xchg_ptr,       # [2, B_PAD, H_PAD] pre-activation gradients of the batch tile, ping-pong
    counter_ptr,    # [n_batch_tiles + 1] int32 barrier words
    T, B, H, step_begin, step_end,
    RELU: tl.constexpr,
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
    xchg_half = tl.num_programs(0) * BLOCK_B * H_PAD
    offs_b = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    offs_j = pid_h * BLOCK_H + tl.arange(0, BLOCK_H)
    mask_b = offs_b < B
    mask_j = offs_j < H
    mask = mask_b[:, None] & mask_j[None, :]
    length = row_lengths(lengths_ptr, offs_b, mask_b, T, HAS_LENGTHS)
    w_dtype = w_ptr.dtype.element_ty

    state = offs_b[:, None] * H + offs_j[None, :]
    dh = to_compute(tl.load(dh_ptr + state, mask=mask, other=0.0), FP64)
    if WEIGHTS_RESIDENT:
        w = load_weight_tile(w_ptr, 0, offs_j, mask_j, H, False, H_PAD, SPLIT_K)     # [H_PAD, BLOCK_H]
    else:
        w = w_ptr   # unused: the product streams w_hh from memory

    stuck = tl.program_id(0) * 0     # int32: whether a grid barrier round timed out
    # num_stages=1: the step loop must not be software-pipelined: a prefetch of the next
    # step's operand would run ahead of the barrier that makes it valid.
    for r in tl.range(step_begin, step_end, num_stages=1):
        if not OPERAND_IN_REGISTERS:
            # Recurrent part of dh from the step processed before (zeros at r = 0).
            src = xchg_ptr + (r % 2) * xchg_half
            dh_after = _rnn_exchanged_product(dh, src, offs_b, w_ptr, w, offs_j, mask_j, H, H_PAD,
                                              BLOCK_K, SPLIT_K, WEIGHTS_RESIDENT, TF32, UPCAST)
            dh = tl.where(after_step_is_real(r, T, length, REVERSE), dh_after, dh)
        t = step_time(T - 1 - r, T, REVERSE)
        out_t = t.to(tl.int64) * B * H + state
        valid = (t < length)[:, None] & mask
        h = to_compute(tl.load(y_ptr + out_t, mask=valid, other=0.0), FP64)
        dh_total = dh
        if HAS_DY:
            dh_total += to_compute(tl.load(dy_ptr + out_t, mask=valid, other=0.0), FP64)
        if RELU:
            da = tl.where(valid, relu_backward(h, dh_total), 0.0)
        else:
            da = tl.where(valid, dh_total * (1.0 - h * h), 0.0)
        # Padded steps pass dh through; on real steps it restarts from zero.
        dh = tl.where(valid, 0.0, dh)
        if OPERAND_IN_REGISTERS:
            # (a padded step's rows keep dh: see after_step_is_real)
            dh = tl.where(valid, dot(da.to(w_dtype), w, dh, TF32, UPCAST), dh)
        else:
            # Publish the gradients first; this step's outputs are stored while the
            # other programs catch up (between arrive and wait).
            dst = xchg_ptr + ((r + 1) % 2) * xchg_half
            tl.store(dst + offs_b[:, None] * H_PAD + offs_j[None, :], da.to(w_dtype), mask=mask)
            step_arrive(counter_ptr, SYNC)

        tl.store(dgx_ptr + out_t, da.to(dgx_ptr.dtype.element_ty), mask=mask)
        if not OPERAND_IN_REGISTERS:
            stuck = step_wait(counter_ptr, n_slices * (r - step_begin + 1), stuck, SYNC)

    if not OPERAND_IN_REGISTERS:
        if finishes(step_begin, step_end, T, SYNC):
            # The product of the last step's gradients: dh is then grad_h0.
            src = xchg_ptr + (T % 2) * xchg_half
            dh_after = _rnn_exchanged_product(dh, src, offs_b, w_ptr, w, offs_j, mask_j, H, H_PAD,
                                              BLOCK_K, SPLIT_K, WEIGHTS_RESIDENT, TF32, UPCAST)
            dh = tl.where(after_step_is_real(T, T, length, REVERSE), dh_after, dh)
    tl.store(dh_ptr + state, dh.to(dh_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _rnn_exchanged_product(dh, src, offs_b, w_ptr, w, offs_j, mask_j, H, H_PAD: tl.constexpr,
                           BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr, WEIGHTS_RESIDENT: tl.constexpr,
                           TF32: tl.constexpr, UPCAST: tl.constexpr):
    """dh + (gradients in the exchange buffer) @ w_hh[:, j]."""
    if WEIGHTS_RESIDENT:
        dh = product(load_operand(src, H_PAD, offs_b, 0, H_PAD, SPLIT_K), w, dh, TF32, UPCAST, SPLIT_K)
    else:
        dh = streamed_product(dh, src, H_PAD, offs_b, w_ptr, offs_j, mask_j, H, False, H_PAD,
                              BLOCK_K, SPLIT_K, TF32, UPCAST)
    return dh


# ---------------------------------------------------------------------------------------------
# Launchers: the bodies of fused_rnn::rnn_{tanh,relu}_{forward,backward}_triton (ops.py).
# ---------------------------------------------------------------------------------------------


def _op(nonlinearity: str, direction: str) -> str:
    return f"fused_rnn::rnn_{nonlinearity}_{direction}_triton"


def rnn_forward(
    nonlinearity: str,
    gx: Tensor,
    w_hh: Tensor,
    h0: Tensor,
    lengths: Tensor | None,
    reverse: bool,
) -> tuple[Tensor, Tensor]:
    """``nonlinearity``: "tanh" or "relu"."""
    n = _checks.check_forward_inputs(_op(nonlinearity, "forward"), GATES, gx, w_hh, None, h0,
                                     None, None, lengths)
    T, B, H = n.T, n.B, n.H
    gx, w_hh = gx.contiguous(), w_hh.contiguous()
    y = empty_output((T, B, H), gx)
    if T == 0 or B == 0 or H == 0:
        return y.zero_(), h0.clone()

    layout = choose_layout(GATES, B, H, gx, backward=False)
    xchg = exchange_buffer(layout, layout.h_pad, gx)
    if not layout.operand_in_registers:
        xchg[0, :B, :H].copy_(h0)
    h = state_buffer(h0, h0)
    launch_recurrence(
        rnn_forward_kernel,
        layout,
        (gx, w_hh, kernel_lengths(lengths, gx.device, gx), y, h, xchg, barrier_words(layout, gx)),
        T, B, H, gx,
        dict(RELU=nonlinearity == "relu", REVERSE=reverse, HAS_LENGTHS=lengths is not None),
    )
    return y, h.to(gx.dtype)


def rnn_backward(
    nonlinearity: str,
    grad_y: Tensor | None,
    grad_h_n: Tensor | None,
    w_hh: Tensor,
    h0: Tensor,
    y: Tensor,
    lengths: Tensor | None,
    reverse: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    n = _checks.check_backward_inputs(_op(nonlinearity, "backward"), GATES, w_hh, None, h0, None,
                                      y, lengths, grad_y, grad_h_n, None)
    T, B, H = n.T, n.B, n.H
    grad_gx = empty_output((T, B, H), y)
    if T == 0 or B == 0 or H == 0:
        grad_h0 = grad_h_n.clone() if grad_h_n is not None else torch.zeros_like(h0)
        return grad_gx.zero_(), y.new_zeros(H, H), grad_h0

    w_hh, y = w_hh.contiguous(), y.contiguous()
    layout = choose_layout(GATES, B, H, y, backward=True)
    xchg = exchange_buffer(layout, layout.h_pad, y)
    dh = state_buffer(grad_h_n, h0)
    launch_recurrence(
        rnn_backward_kernel,
        layout,
        (grad_y.contiguous() if grad_y is not None else y, w_hh, y,
         kernel_lengths(lengths, y.device, y), grad_gx, dh, xchg, barrier_words(layout, y)),
        T, B, H, y,
        dict(RELU=nonlinearity == "relu", REVERSE=reverse, HAS_LENGTHS=lengths is not None,
             HAS_DY=grad_y is not None),
        finish=True,
    )
    grad_w_hh = recurrent_weight_grad(grad_gx, y, h0, lengths, reverse)
    return grad_gx, grad_w_hh, dh.to(y.dtype)
