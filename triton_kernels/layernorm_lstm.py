"""Layer-normalised LSTM with zoneout (fused_rnn::layernorm_lstm_{forward,backward}_triton; the
op contract is csrc/layernorm_ops.cpp, the maths that of csrc/cpu/layernorm_lstm_cpu.cpp).

One program per tile of BLOCK_B batch rows, owning all their hidden units (see _layernorm.py).
Forward, per step, in passes separated by a barrier of the program:
    1  p = h_{t-1} @ w_hh^T in chunks of the 4H gate values, stored to scratch; row sums
    2  mean and rstd of p (second pass over the stored p); per chunk of units: p̂, the gates,
       c' = f c + i g and o to scratch; row sums of c'
    3  mean and rstd of c'; per chunk of units: ĉ, h' = o tanh(γ_c ĉ + β_c), zoneout of h and c,
       the new state, y_t and the workspace
Backward, per step in reverse, likewise:
    A  dh (+ dp_{t+1} @ w_hh), zoneout's split of dh, the output gate's gradient and that of the
       cell LN's output (dn); dp̂ of the output gate; row sums of dĉ = dn γ_c and dĉ ĉ
    B  the cell LN's backward, zoneout of dc, the gradients of i, f, g; dp̂ = da γ_hh to
       scratch; row sums of dp̂ and dp̂ p̂
    C  the recurrent LN's backward: dp = rstd_p (dp̂ - mean dp̂ - p̂ mean(dp̂ p̂)), stored per step
After the kernel, in torch: grad_w_hh = Σ_t dp_t^T h_{t-1} (_weight_grad.py), grad_gamma_hh =
Σ da p̂, grad_gamma_c = Σ dn ĉ, grad_beta_c = Σ dn.

The op takes the raw input projection xw (csrc/layernorm_ops.cpp): its LN runs in torch around
the kernels, which take gx = LN(xw; γ_ih) + b (_layernorm.py, input_layernorm); the forward
does not store the gates: the backward recomputes them in torch from xw, the saved statistics
and p̂ for its kernel (the CPU kernels do both inside).

No buffer is updated in place within a step: each pass reads one buffer and writes another
(the states are ping-ponged over the steps), so no thread of the program can read a value that
another one has already replaced.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from . import _checks, _layernorm_checks
from ._common import (
    is_first_step,
    prev_time,
    row_lengths,
    sigmoid,
    step_time,
    tanh,
    to_compute,
)
from ._launch import compute_dtype, empty_output, kernel_lengths
from ._layernorm import (
    PER_CALL_INTEGERS,
    choose_blocks,
    initial_state_gradient,
    input_gates,
    input_layernorm,
    input_layernorm_backward,
    launch_row_tiles,
    layernorm_backward_rows,
    mask_bytes,
    mean_rstd,
    normalised,
    on_real_steps,
    parameter,
    recurrent_gradient,
    recurrent_product,
    scalars,
    state_out,
    step_after,
    store_real,
    to_storage,
    zeros_rows,
    zoneout,
    zoneout_keep,
    zoneout_kind,
    zoneout_next_grad,
    zoneout_previous_grad,
)
from ._weight_grad import recurrent_weight_grad

GATES = 4


@triton.jit(do_not_specialize=PER_CALL_INTEGERS)
def layernorm_lstm_forward_kernel(
    gx_ptr,         # [T, B, 4H]
    w_ptr,          # [4H, H]
    gamma_hh_ptr,   # [4H]
    gamma_c_ptr,    # [H]
    beta_c_ptr,     # [H]
    mask_h_ptr,     # [T, B, H] uint8, nonzero: h keeps its previous value (KEEP_H == mask)
    mask_c_ptr,     # [T, B, H] uint8, the same for c
    scalars_ptr,    # [3] eps, zoneout_h, zoneout_c (gate-maths dtype)
    lengths_ptr,    # [B] int64 (read only when HAS_LENGTHS)
    y_ptr,          # [T, B, H]
    h_ptr,          # [2, B, H] gate-maths dtype: h before step s at [s % 2] (h0 at [0])
    c_ptr,          # [2, B, H] the same for c
    p_ptr,          # [B, 4H] scratch: the step's recurrent product
    cell_ptr,       # [B, 2H] scratch: the step's c', then o
    p_hat_ptr,      # [T, B, 4H] workspace (written when SAVE): p̂
    c_hat_ptr,      # [T, B, H] ĉ
    cs_ptr,         # [T, B, H] c_t
    rstd_ptr,       # [T, B, 2] rstd of p and of c'
    T, B, H,
    REVERSE: tl.constexpr,
    HAS_LENGTHS: tl.constexpr,
    SAVE: tl.constexpr,
    KEEP_H: tl.constexpr,
    KEEP_C: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    TF32: tl.constexpr,
    UPCAST: tl.constexpr,
    ROUND_BF16: tl.constexpr,
    FP64: tl.constexpr,
):
    offs_b = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)     # [BLOCK_B] own rows
    mask_b = offs_b < B
    length = row_lengths(lengths_ptr, offs_b, mask_b, T, HAS_LENGTHS)
    eps = tl.load(scalars_ptr)
    p_h = tl.load(scalars_ptr + 1)
    p_c = tl.load(scalars_ptr + 2)
    out_dtype = y_ptr.dtype.element_ty

    for s in tl.range(0, T, num_stages=1):
        t = step_time(s, T, REVERSE)
        t64 = t.to(tl.int64)
        real = (t < length)[:, None]            # [BLOCK_B, 1] rows whose step t is real
        h_prev_ptr = h_ptr + (s % 2) * B * H
        h_next_ptr = h_ptr + ((s + 1) % 2) * B * H
        c_prev_ptr = c_ptr + (s % 2) * B * H
        c_next_ptr = c_ptr + ((s + 1) % 2) * B * H

        # 1: the recurrent product and its row sums.
        p_sum = recurrent_product(h_prev_ptr, w_ptr, p_ptr, offs_b, mask_b, 4 * H, H, BLOCK_B,
                                  BLOCK_N, BLOCK_K, TF32, UPCAST, ROUND_BF16, FP64)
        tl.debug_barrier()

        # 2: its layer norm, the gates, c'.
        p_mean, p_rstd = mean_rstd(p_ptr, 4 * H, offs_b, mask_b, p_sum, 4 * H, eps, BLOCK_N)
        c_sum = zeros_rows(BLOCK_B, FP64)
        for j0 in tl.range(0, H, BLOCK_N, num_stages=1):
            offs_j = j0 + tl.arange(0, BLOCK_N)
            mask_j = offs_j < H
            m = mask_b[:, None] & mask_j[None, :]
            gate_col = offs_b[:, None] * (4 * H) + offs_j[None, :]   # gate i of the units
            x_t = gx_ptr + t64 * B * (4 * H) + gate_col
            mean = p_mean[:, None]
            rstd = p_rstd[:, None]
            p_hat_i = normalised(p_ptr + gate_col + 0 * H, m, mean, rstd)
            p_hat_f = normalised(p_ptr + gate_col + 1 * H, m, mean, rstd)
            p_hat_g = normalised(p_ptr + gate_col + 2 * H, m, mean, rstd)
            p_hat_o = normalised(p_ptr + gate_col + 3 * H, m, mean, rstd)
            i = sigmoid(to_compute(tl.load(x_t + 0 * H, mask=m, other=0.0), FP64)
                        + parameter(gamma_hh_ptr + 0 * H, offs_j, mask_j, FP64) * p_hat_i)
            f = sigmoid(to_compute(tl.load(x_t + 1 * H, mask=m, other=0.0), FP64)
                        + parameter(gamma_hh_ptr + 1 * H, offs_j, mask_j, FP64) * p_hat_f)
            g = tanh(to_compute(tl.load(x_t + 2 * H, mask=m, other=0.0), FP64)
                     + parameter(gamma_hh_ptr + 2 * H, offs_j, mask_j, FP64) * p_hat_g)
            o = sigmoid(to_compute(tl.load(x_t + 3 * H, mask=m, other=0.0), FP64)
                        + parameter(gamma_hh_ptr + 3 * H, offs_j, mask_j, FP64) * p_hat_o)
            c_prev = tl.load(c_prev_ptr + offs_b[:, None] * H + offs_j[None, :], mask=m,
                             other=0.0)
            c_new = f * c_prev + i * g
            cell = cell_ptr + offs_b[:, None] * (2 * H) + offs_j[None, :]
            tl.store(cell, c_new, mask=m)
            tl.store(cell + H, o, mask=m)
            c_sum += tl.sum(tl.where(m, c_new, 0.0), axis=1)
            if SAVE:
                # zeros on padded steps
                ws = t64 * B * (4 * H) + gate_col
                store_real(p_hat_ptr + ws + 0 * H, p_hat_i, real, m, ROUND_BF16)
                store_real(p_hat_ptr + ws + 1 * H, p_hat_f, real, m, ROUND_BF16)
                store_real(p_hat_ptr + ws + 2 * H, p_hat_g, real, m, ROUND_BF16)
                store_real(p_hat_ptr + ws + 3 * H, p_hat_o, real, m, ROUND_BF16)
        tl.debug_barrier()

        # 3: the cell's layer norm, h', zoneout, the new state.
        c_mean, c_rstd = mean_rstd(cell_ptr, 2 * H, offs_b, mask_b, c_sum, H, eps, BLOCK_N)
        for j0 in tl.range(0, H, BLOCK_N, num_stages=1):
            offs_j = j0 + tl.arange(0, BLOCK_N)
            mask_j = offs_j < H
            m = mask_b[:, None] & mask_j[None, :]
            unit = offs_b[:, None] * H + offs_j[None, :]
            cell = cell_ptr + offs_b[:, None] * (2 * H) + offs_j[None, :]
            c_new = tl.load(cell, mask=m, other=0.0)
            o = tl.load(cell + H, mask=m, other=0.0)
            c_hat = (c_new - c_mean[:, None]) * c_rstd[:, None]
            h_new = o * tanh(parameter(gamma_c_ptr, offs_j, mask_j, FP64) * c_hat
                             + parameter(beta_c_ptr, offs_j, mask_j, FP64))
            h_prev = tl.load(h_prev_ptr + unit, mask=m, other=0.0)
            c_prev = tl.load(c_prev_ptr + unit, mask=m, other=0.0)
            step_unit = t64 * B * H + unit
            keep_h = zoneout_keep(mask_h_ptr + step_unit, m, KEEP_H)
            keep_c = zoneout_keep(mask_c_ptr + step_unit, m, KEEP_C)
            # A finished sequence keeps its state and emits zeros.
            h = tl.where(real, zoneout(h_prev, h_new, keep_h, p_h, KEEP_H), h_prev)
            c = tl.where(real, zoneout(c_prev, c_new, keep_c, p_c, KEEP_C), c_prev)
            tl.store(h_next_ptr + unit, h, mask=m)
            tl.store(c_next_ptr + unit, c, mask=m)
            store_real(y_ptr + step_unit, h, real, m, ROUND_BF16)
            if SAVE:
                store_real(c_hat_ptr + step_unit, c_hat, real, m, ROUND_BF16)
                # cs keeps the state on padded steps too
                tl.store(cs_ptr + step_unit, to_storage(c, out_dtype, ROUND_BF16), mask=m)
        if SAVE:
            rstd_row = rstd_ptr + (t64 * B + offs_b) * 2
            store_real(rstd_row, p_rstd, t < length, mask_b, ROUND_BF16)
            store_real(rstd_row + 1, c_rstd, t < length, mask_b, ROUND_BF16)
        # the next step reads h and c, and overwrites the scratch rows read above
        tl.debug_barrier()


@triton.jit(do_not_specialize=PER_CALL_INTEGERS)
def layernorm_lstm_backward_kernel(
    dy_ptr,         # [T, B, H] (read only when HAS_DY)
    w_ptr,          # [4H, H]
    gamma_hh_ptr,   # [4H]
    gamma_c_ptr,    # [H]
    beta_c_ptr,     # [H]
    c0_ptr,         # [B, H]
    mask_h_ptr,     # [T, B, H] uint8 (KEEP_H == mask)
    mask_c_ptr,     # [T, B, H] uint8 (KEEP_C == mask)
    scalars_ptr,    # [3] eps (unused), zoneout_h, zoneout_c (gate-maths dtype)
    gates_ptr,      # [T, B, 4H] the forward's workspace
    p_hat_ptr,      # [T, B, 4H]
    c_hat_ptr,      # [T, B, H]
    cs_ptr,         # [T, B, H]
    rstd_ptr,       # [T, B, 2]
    lengths_ptr,    # [B] int64 (read only when HAS_LENGTHS)
    dgx_ptr,        # [T, B, 4H] out, gate-maths dtype: the gate gradients da (= grad_gx)
    dp_ptr,         # [T, B, 4H] out, gate-maths dtype: the recurrent product's gradients
    dn_ptr,         # [T, B, H] out, gate-maths dtype: the gradients of γ_c ĉ + β_c
    dp_hat_ptr,     # [B, 4H] scratch: the step's dp̂
    dh_ptr,         # [2, B, H] gate-maths dtype: dh before position r at [r % 2] (grad_h_n
                    # at [0]); grad_h0 at [(T + 1) % 2] on exit
    dc_ptr,         # [2, B, H] the same for c; grad_c0 at [T % 2] on exit
    T, B, H,
    REVERSE: tl.constexpr,
    HAS_LENGTHS: tl.constexpr,
    HAS_DY: tl.constexpr,
    KEEP_H: tl.constexpr,
    KEEP_C: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    TF32: tl.constexpr,
    UPCAST: tl.constexpr,
    ROUND_BF16: tl.constexpr,
    FP64: tl.constexpr,
):
    offs_b = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    mask_b = offs_b < B
    length = row_lengths(lengths_ptr, offs_b, mask_b, T, HAS_LENGTHS)
    p_h = tl.load(scalars_ptr + 1)
    p_c = tl.load(scalars_ptr + 2)

    for r in tl.range(0, T, num_stages=1):
        t = step_time(T - 1 - r, T, REVERSE)
        t64 = t.to(tl.int64)
        real = (t < length)[:, None]
        first = is_first_step(t, length, REVERSE)[:, None]
        # c_{t-1} of the rows whose step t is not their first (clamped: a valid address)
        prev_t = tl.minimum(tl.maximum(prev_time(t, REVERSE), 0), T - 1).to(tl.int64)
        # dp of the step processed at r - 1 (the step after t), on the rows where it is real
        after, t_after = step_after(r, T, length, REVERSE)
        dp_after_ptr = dp_ptr + t_after * B * (4 * H)
        dh_in_ptr = dh_ptr + (r % 2) * B * H
        dh_out_ptr = dh_ptr + ((r + 1) % 2) * B * H
        dc_in_ptr = dc_ptr + (r % 2) * B * H
        dc_out_ptr = dc_ptr + ((r + 1) % 2) * B * H
        rstd_row = rstd_ptr + (t64 * B + offs_b) * 2

        # A: dh, its zoneout, the output gate, the cell LN's output.
        dc_hat_sum = zeros_rows(BLOCK_B, FP64)
        dc_hat_dot = zeros_rows(BLOCK_B, FP64)
        dp_hat_sum = zeros_rows(BLOCK_B, FP64)
        dp_hat_dot = zeros_rows(BLOCK_B, FP64)
        for j0 in tl.range(0, H, BLOCK_N, num_stages=1):
            offs_j = j0 + tl.arange(0, BLOCK_N)
            mask_j = offs_j < H
            m = mask_b[:, None] & mask_j[None, :]
            unit = offs_b[:, None] * H + offs_j[None, :]
            step_unit = t64 * B * H + unit
            gate_col = offs_b[:, None] * (4 * H) + offs_j[None, :]
            step_gate = t64 * B * (4 * H) + gate_col
            dh = tl.load(dh_in_ptr + unit, mask=m, other=0.0)
            dh = recurrent_gradient(dh, dp_after_ptr, w_ptr, offs_b, mask_b, offs_j, mask_j,
                                    after, 4 * H, H, BLOCK_B, BLOCK_K, TF32, UPCAST, ROUND_BF16)
            dh_total = dh
            if HAS_DY:
                dh_total += to_compute(tl.load(dy_ptr + step_unit, mask=m, other=0.0), FP64)
            keep_h = zoneout_keep(mask_h_ptr + step_unit, m, KEEP_H)
            dh_new = zoneout_next_grad(dh_total, keep_h, p_h, KEEP_H)
            # padded steps pass dh through; the product of the next position adds to it
            tl.store(dh_out_ptr + unit,
                     tl.where(real, zoneout_previous_grad(dh_total, keep_h, p_h, KEEP_H), dh),
                     mask=m)
            o = to_compute(tl.load(gates_ptr + step_gate + 3 * H, mask=m, other=0.0), FP64)
            c_hat = to_compute(tl.load(c_hat_ptr + step_unit, mask=m, other=0.0), FP64)
            gamma_c = parameter(gamma_c_ptr, offs_j, mask_j, FP64)
            tanh_n = tanh(gamma_c * c_hat + parameter(beta_c_ptr, offs_j, mask_j, FP64))
            dn = tl.where(real & m, dh_new * o * (1.0 - tanh_n * tanh_n), 0.0)
            da_o = tl.where(real & m, dh_new * tanh_n * o * (1.0 - o), 0.0)
            tl.store(dn_ptr + step_unit, dn, mask=m)
            tl.store(dgx_ptr + step_gate + 3 * H, da_o, mask=m)
            dc_hat = dn * gamma_c
            dc_hat_sum += tl.sum(dc_hat, axis=1)
            dc_hat_dot += tl.sum(dc_hat * c_hat, axis=1)
            p_hat_o = to_compute(tl.load(p_hat_ptr + step_gate + 3 * H, mask=m, other=0.0), FP64)
            dp_hat_o = da_o * parameter(gamma_hh_ptr + 3 * H, offs_j, mask_j, FP64)
            tl.store(dp_hat_ptr + gate_col + 3 * H, dp_hat_o, mask=m)
            dp_hat_sum += tl.sum(dp_hat_o, axis=1)
            dp_hat_dot += tl.sum(dp_hat_o * p_hat_o, axis=1)
        tl.debug_barrier()

        # B: the cell LN's backward, zoneout of dc, the gates i, f, g.
        mean_dc_hat = (dc_hat_sum / H)[:, None]
        mean_dc_hat_dot = (dc_hat_dot / H)[:, None]
        rstd_c = to_compute(tl.load(rstd_row + 1, mask=mask_b, other=0.0), FP64)[:, None]
        for j0 in tl.range(0, H, BLOCK_N, num_stages=1):
            offs_j = j0 + tl.arange(0, BLOCK_N)
            mask_j = offs_j < H
            m = mask_b[:, None] & mask_j[None, :]
            unit = offs_b[:, None] * H + offs_j[None, :]
            step_unit = t64 * B * H + unit
            gate_col = offs_b[:, None] * (4 * H) + offs_j[None, :]
            step_gate = t64 * B * (4 * H) + gate_col
            c_hat = to_compute(tl.load(c_hat_ptr + step_unit, mask=m, other=0.0), FP64)
            dc_hat = tl.load(dn_ptr + step_unit, mask=m, other=0.0) * parameter(
                gamma_c_ptr, offs_j, mask_j, FP64)
            dc_ln = rstd_c * (dc_hat - mean_dc_hat - c_hat * mean_dc_hat_dot)
            dc_state = tl.load(dc_in_ptr + unit, mask=m, other=0.0)
            keep_c = zoneout_keep(mask_c_ptr + step_unit, m, KEEP_C)
            dc_new = zoneout_next_grad(dc_state, keep_c, p_c, KEEP_C) + dc_ln
            i = to_compute(tl.load(gates_ptr + step_gate + 0 * H, mask=m, other=0.0), FP64)
            f = to_compute(tl.load(gates_ptr + step_gate + 1 * H, mask=m, other=0.0), FP64)
            g = to_compute(tl.load(gates_ptr + step_gate + 2 * H, mask=m, other=0.0), FP64)
            c_prev = to_compute(tl.load(cs_ptr + prev_t * B * H + unit, mask=m & ~first,
                                        other=0.0), FP64)
            c_prev = tl.where(first, to_compute(tl.load(c0_ptr + unit, mask=m, other=0.0), FP64),
                              c_prev)
            # padded steps pass dc through
            tl.store(dc_out_ptr + unit,
                     tl.where(real, zoneout_previous_grad(dc_state, keep_c, p_c, KEEP_C)
                              + dc_new * f, dc_state), mask=m)
            da_i = tl.where(real & m, dc_new * g * i * (1.0 - i), 0.0)
            da_f = tl.where(real & m, dc_new * c_prev * f * (1.0 - f), 0.0)
            da_g = tl.where(real & m, dc_new * i * (1.0 - g * g), 0.0)
            tl.store(dgx_ptr + step_gate + 0 * H, da_i, mask=m)
            tl.store(dgx_ptr + step_gate + 1 * H, da_f, mask=m)
            tl.store(dgx_ptr + step_gate + 2 * H, da_g, mask=m)
            dp_hat_i = da_i * parameter(gamma_hh_ptr + 0 * H, offs_j, mask_j, FP64)
            dp_hat_f = da_f * parameter(gamma_hh_ptr + 1 * H, offs_j, mask_j, FP64)
            dp_hat_g = da_g * parameter(gamma_hh_ptr + 2 * H, offs_j, mask_j, FP64)
            tl.store(dp_hat_ptr + gate_col + 0 * H, dp_hat_i, mask=m)
            tl.store(dp_hat_ptr + gate_col + 1 * H, dp_hat_f, mask=m)
            tl.store(dp_hat_ptr + gate_col + 2 * H, dp_hat_g, mask=m)
            p_hat_i = to_compute(tl.load(p_hat_ptr + step_gate + 0 * H, mask=m, other=0.0), FP64)
            p_hat_f = to_compute(tl.load(p_hat_ptr + step_gate + 1 * H, mask=m, other=0.0), FP64)
            p_hat_g = to_compute(tl.load(p_hat_ptr + step_gate + 2 * H, mask=m, other=0.0), FP64)
            dp_hat_sum += tl.sum(dp_hat_i + dp_hat_f + dp_hat_g, axis=1)
            dp_hat_dot += tl.sum(dp_hat_i * p_hat_i + dp_hat_f * p_hat_f + dp_hat_g * p_hat_g,
                                 axis=1)
        tl.debug_barrier()

        # C: the recurrent LN's backward, into this step's dp.
        rstd_p = to_compute(tl.load(rstd_row, mask=mask_b, other=0.0), FP64)
        layernorm_backward_rows(dp_hat_ptr, p_hat_ptr + t64 * B * (4 * H),
                                dp_ptr + t64 * B * (4 * H), offs_b, mask_b, t < length, rstd_p,
                                dp_hat_sum / (4 * H), dp_hat_dot / (4 * H), 4 * H, BLOCK_N)
        # the next position reads dp, dh and dc, and overwrites the scratch rows read above
        tl.debug_barrier()

    initial_state_gradient(dh_ptr, dp_ptr, w_ptr, offs_b, mask_b, length, T, B, 4 * H, H,
                           REVERSE, BLOCK_B, BLOCK_N, BLOCK_K, TF32, UPCAST, ROUND_BF16)


# ---------------------------------------------------------------------------------------------
# Launchers: the bodies of fused_rnn::layernorm_lstm_{forward,backward}_triton.
# ---------------------------------------------------------------------------------------------

FORWARD_OP = "fused_rnn::layernorm_lstm_forward_triton"
BACKWARD_OP = "fused_rnn::layernorm_lstm_backward_triton"


def _check_layernorm_inputs(op, ref, gamma_hh, gamma_c, beta_c, mask_h, mask_c, zoneout_h,
                            zoneout_c, n) -> None:
    _layernorm_checks.check_parameter(op, "gamma_hh", gamma_hh, ref, 4 * n.H)
    _layernorm_checks.check_parameter(op, "gamma_c", gamma_c, ref, n.H)
    _layernorm_checks.check_parameter(op, "beta_c", beta_c, ref, n.H)
    _layernorm_checks.check_zoneout(op, "zoneout_h", mask_h, zoneout_h, ref, n.T, n.B, n.H)
    _layernorm_checks.check_zoneout(op, "zoneout_c", mask_c, zoneout_c, ref, n.T, n.B, n.H)


def _gates(xw, gamma_ih, bias, gamma_hh, p_hat, stats, lengths) -> Tensor:
    """The activated gates i, f, g, o [T, B, 4H] (xw's dtype) of the forward, recomputed from
    xw, the input LN's statistics and p̂ (zeros on padded steps): the backward kernel reads them."""
    a = input_gates(xw, gamma_ih, bias, stats) + gamma_hh.to(stats.dtype) * p_hat.to(stats.dtype)
    i, f, g, o = a.chunk(4, dim=-1)
    gates = torch.cat([i.sigmoid(), f.sigmoid(), g.tanh(), o.sigmoid()], dim=-1)
    return on_real_steps(gates, lengths).to(xw.dtype)


def layernorm_lstm_forward(
    xw: Tensor, gamma_ih: Tensor, bias: Tensor | None, w_hh: Tensor, gamma_hh: Tensor,
    gamma_c: Tensor, beta_c: Tensor, h0: Tensor, c0: Tensor, zoneout_h_mask: Tensor | None,
    zoneout_c_mask: Tensor | None, zoneout_h: float, zoneout_c: float, lengths: Tensor | None,
    reverse: bool, eps: float, save_for_backward: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    op = FORWARD_OP
    n = _checks.check_forward_inputs(op, GATES, xw, w_hh, None, h0, c0, None, lengths)
    _layernorm_checks.check_input_layernorm(op, gamma_ih, bias, xw, 4 * n.H)
    _check_layernorm_inputs(op, xw, gamma_hh, gamma_c, beta_c, zoneout_h_mask, zoneout_c_mask,
                            zoneout_h, zoneout_c, n)
    _layernorm_checks.check_eps(op, eps)
    T, B, H = n.T, n.B, n.H

    def workspace(*shape):
        return empty_output(shape, xw) if save_for_backward else xw.new_empty(0)

    y = empty_output((T, B, H), xw)
    p_hat = workspace(T, B, 4 * H)
    c_hat, cs, rstd = workspace(T, B, H), workspace(T, B, H), workspace(T, B, 2)
    cdt = compute_dtype(xw.dtype)
    if T == 0 or B == 0 or H == 0:
        stats = workspace(T, B, 4).to(cdt)
        return y.zero_(), h0.clone(), c0.clone(), p_hat, c_hat, cs, stats
    gx, input_stats = input_layernorm(xw, gamma_ih, bias, eps)

    h = gx.new_empty((2, B, H), dtype=cdt)
    c = gx.new_empty((2, B, H), dtype=cdt)
    h[0].copy_(h0)
    c[0].copy_(c0)
    placeholder = gx.new_empty(1)
    launch_row_tiles(
        layernorm_lstm_forward_kernel,
        choose_blocks(H),
        (gx.contiguous(), w_hh.contiguous(), gamma_hh.contiguous(), gamma_c.contiguous(),
         beta_c.contiguous(), mask_bytes(zoneout_h_mask, placeholder),
         mask_bytes(zoneout_c_mask, placeholder), scalars(gx, eps, zoneout_h, zoneout_c),
         kernel_lengths(lengths, gx.device, placeholder), y, h, c,
         gx.new_empty((B, 4 * H), dtype=cdt), gx.new_empty((B, 2 * H), dtype=cdt),
         *((p_hat, c_hat, cs, rstd) if save_for_backward else (placeholder,) * 4)),
        T, B, H, gx,
        dict(REVERSE=reverse, HAS_LENGTHS=lengths is not None, SAVE=save_for_backward,
             KEEP_H=zoneout_kind(zoneout_h_mask, zoneout_h),
             KEEP_C=zoneout_kind(zoneout_c_mask, zoneout_c)),
    )
    stats = torch.cat([input_stats, rstd.to(cdt)], dim=-1) if save_for_backward else rstd.to(cdt)
    return (y, state_out(h, T % 2, gx.dtype), state_out(c, T % 2, gx.dtype), p_hat, c_hat, cs,
            stats)


def layernorm_lstm_backward(
    grad_y: Tensor | None, grad_h_n: Tensor | None, grad_c_n: Tensor | None, xw: Tensor,
    gamma_ih: Tensor, bias: Tensor | None, w_hh: Tensor, gamma_hh: Tensor, gamma_c: Tensor,
    beta_c: Tensor, h0: Tensor, c0: Tensor, zoneout_h_mask: Tensor | None,
    zoneout_c_mask: Tensor | None, zoneout_h: float, zoneout_c: float, y: Tensor, p_hat: Tensor,
    c_hat: Tensor, cs: Tensor, stats: Tensor, lengths: Tensor | None, reverse: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    op = BACKWARD_OP
    n = _checks.check_backward_inputs(op, GATES, w_hh, None, h0, c0, y, lengths, grad_y,
                                      grad_h_n, grad_c_n)
    T, B, H = n.T, n.B, n.H
    _checks.check_workspace(op, "xw", xw, y, (T, B, 4 * H))
    _layernorm_checks.check_input_layernorm(op, gamma_ih, bias, y, 4 * H)
    _check_layernorm_inputs(op, y, gamma_hh, gamma_c, beta_c, zoneout_h_mask, zoneout_c_mask,
                            zoneout_h, zoneout_c, n)
    _checks.check_workspace(op, "p_hat", p_hat, y, (T, B, 4 * H))
    _checks.check_workspace(op, "c_hat", c_hat, y, (T, B, H))
    _checks.check_workspace(op, "cs", cs, y, (T, B, H))
    _layernorm_checks.check_statistics(op, stats, y, [T, B, 4])
    cdt = compute_dtype(y.dtype)
    dh = y.new_zeros((2, B, H), dtype=cdt)
    dc = y.new_zeros((2, B, H), dtype=cdt)
    if grad_h_n is not None:
        dh[0].copy_(grad_h_n)
    if grad_c_n is not None:
        dc[0].copy_(grad_c_n)
    if T == 0 or B == 0 or H == 0:
        return (y.new_zeros(T, B, 4 * H), y.new_zeros(4 * H), y.new_zeros(4 * H),
                y.new_zeros(4 * H, H), y.new_zeros(4 * H), y.new_zeros(H), y.new_zeros(H),
                state_out(dh, 0, y.dtype), state_out(dc, 0, y.dtype))
    gates = _gates(xw, gamma_ih, bias, gamma_hh, p_hat, stats, lengths)
    rstd = stats[..., 2:].to(y.dtype)

    # every element written by the kernel (NaN first under FUSED_RNN_FILL_UNINITIALIZED=1)
    dgx = empty_output((T, B, 4 * H), dh)
    dp = empty_output((T, B, 4 * H), dh)
    dn = empty_output((T, B, H), dh)
    placeholder = y.new_empty(1)
    launch_row_tiles(
        layernorm_lstm_backward_kernel,
        choose_blocks(H),
        (grad_y.contiguous() if grad_y is not None else placeholder, w_hh.contiguous(),
         gamma_hh.contiguous(), gamma_c.contiguous(), beta_c.contiguous(), c0.contiguous(),
         mask_bytes(zoneout_h_mask, placeholder), mask_bytes(zoneout_c_mask, placeholder),
         scalars(y, 0.0, zoneout_h, zoneout_c), gates.contiguous(), p_hat.contiguous(),
         c_hat.contiguous(), cs.contiguous(), rstd.contiguous(),
         kernel_lengths(lengths, y.device, placeholder), dgx, dp, dn,
         y.new_empty((B, 4 * H), dtype=cdt), dh, dc),
        T, B, H, y,
        dict(REVERSE=reverse, HAS_LENGTHS=lengths is not None, HAS_DY=grad_y is not None,
             KEEP_H=zoneout_kind(zoneout_h_mask, zoneout_h),
             KEEP_C=zoneout_kind(zoneout_c_mask, zoneout_c)),
    )
    # The reductions over all steps (padded steps' rows are zero in dgx, dp and dn).
    with torch.autocast(y.device.type, enabled=False):
        grad_w_hh = recurrent_weight_grad(dp, y.to(cdt), h0.to(cdt), lengths, reverse)
        grad_gamma_hh = (dgx * p_hat.to(cdt)).sum((0, 1))
        grad_gamma_c = (dn * c_hat.to(cdt)).sum((0, 1))
        grad_beta_c = dn.sum((0, 1))
        grad_xw, grad_gamma_ih, grad_bias = input_layernorm_backward(dgx, xw, gamma_ih, stats,
                                                                     lengths)
    storage = y.dtype
    return (grad_xw.to(storage), grad_gamma_ih.to(storage), grad_bias.to(storage),
            grad_w_hh.to(storage), grad_gamma_hh.to(storage),
            grad_gamma_c.to(storage), grad_beta_c.to(storage), state_out(dh, (T + 1) % 2, storage),
            state_out(dc, T % 2, storage))
