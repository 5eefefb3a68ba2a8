"""Layer-normalised GRU with zoneout (fused_rnn::layernorm_gru_{forward,backward}_triton; the op
contract is csrc/layernorm_ops.cpp, the maths that of csrc/cpu/layernorm_gru_cpu.cpp).

One program per tile of BLOCK_B batch rows, owning all their hidden units (see _layernorm.py).
Forward, per step, in passes separated by a barrier of the program:
    1  p = h_{t-1} @ w_hh^T in chunks of the 3H gate values, stored to scratch; row sums
    2  mean and rstd of p (second pass over the stored p); per chunk of units: p̂,
       gh = γ_hh p̂ + b_hh, torch.nn's GRU step on (gx_t, gh), zoneout, the new state, y_t and
       the workspace
Backward, per step in reverse, likewise:
    A  dh (+ dp_{t+1} @ w_hh), zoneout's split of dh, the gate gradients (grad_gx) and those of
       gh (dgh: r, z, and n times r); dp̂ = dgh γ_hh to scratch; row sums of dp̂ and dp̂ p̂
    C  the recurrent LN's backward: dp = rstd (dp̂ - mean dp̂ - p̂ mean(dp̂ p̂)), stored per step
After the kernel, in torch: grad_w_hh = Σ_t dp_t^T h_{t-1} (_weight_grad.py), grad_gamma_hh =
Σ dgh p̂, grad_b_hh = Σ dgh.

The op takes the raw input projection xw (csrc/layernorm_ops.cpp): its LN runs in torch around
the kernels, which take gx = LN(xw; γ_ih) + b_ih (_layernorm.py, input_layernorm); the
forward does not store the gates: the backward recomputes them in torch from xw, the saved
statistics and p̂ for its kernel (the CPU kernels do both inside).
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
    zeros_rows,
    zoneout,
    zoneout_keep,
    zoneout_kind,
    zoneout_next_grad,
    zoneout_previous_grad,
)
from ._weight_grad import recurrent_weight_grad

GATES = 3


@triton.jit
def _recurrent_gate(gamma_ptr, b_ptr, p_hat, offs_j, mask_j, HAS_BIAS: tl.constexpr,
                    FP64: tl.constexpr):
    """gh of one gate: γ_hh p̂ (+ b_hh)."""
    gh = parameter(gamma_ptr, offs_j, mask_j, FP64) * p_hat
    if HAS_BIAS:
        gh += parameter(b_ptr, offs_j, mask_j, FP64)
    return gh


@triton.jit(do_not_specialize=PER_CALL_INTEGERS)
def layernorm_gru_forward_kernel(
    gx_ptr,         # [T, B, 3H]
    w_ptr,          # [3H, H]
    gamma_hh_ptr,   # [3H]
    b_hh_ptr,       # [3H] (read only when HAS_BIAS)
    mask_h_ptr,     # [T, B, H] uint8, nonzero: h keeps its previous value (KEEP_H == mask)
    scalars_ptr,    # [3] eps, zoneout_h, unused (gate-maths dtype)
    lengths_ptr,    # [B] int64 (read only when HAS_LENGTHS)
    y_ptr,          # [T, B, H]
    h_ptr,          # [2, B, H] gate-maths dtype: h before step s at [s % 2] (h0 at [0])
    p_ptr,          # [B, 3H] scratch: the step's recurrent product
    p_hat_ptr,      # [T, B, 3H] workspace (written when SAVE): p̂
    rstd_ptr,       # [T, B] rstd of p
    T, B, H,
    REVERSE: tl.constexpr,
    HAS_LENGTHS: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    SAVE: tl.constexpr,
    KEEP_H: tl.constexpr,
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

    for s in tl.range(0, T, num_stages=1):
        t = step_time(s, T, REVERSE)
        t64 = t.to(tl.int64)
        real = (t < length)[:, None]            # [BLOCK_B, 1] rows whose step t is real
        h_prev_ptr = h_ptr + (s % 2) * B * H
        h_next_ptr = h_ptr + ((s + 1) % 2) * B * H

        # 1: the recurrent product and its row sums.
        p_sum = recurrent_product(h_prev_ptr, w_ptr, p_ptr, offs_b, mask_b, 3 * H, H, BLOCK_B,
                                  BLOCK_N, BLOCK_K, TF32, UPCAST, ROUND_BF16, FP64)
        tl.debug_barrier()

        # 2: its layer norm, the gates, zoneout, the new state.
        p_mean, p_rstd = mean_rstd(p_ptr, 3 * H, offs_b, mask_b, p_sum, 3 * H, eps, BLOCK_N)
        for j0 in tl.range(0, H, BLOCK_N, num_stages=1):
            offs_j = j0 + tl.arange(0, BLOCK_N)
            mask_j = offs_j < H
            m = mask_b[:, None] & mask_j[None, :]
            unit = offs_b[:, None] * H + offs_j[None, :]
            step_unit = t64 * B * H + unit
            gate_col = offs_b[:, None] * (3 * H) + offs_j[None, :]   # gate r of the units
            x_t = gx_ptr + t64 * B * (3 * H) + gate_col
            mean = p_mean[:, None]
            rstd = p_rstd[:, None]
            p_hat_r = normalised(p_ptr + gate_col + 0 * H, m, mean, rstd)
            p_hat_z = normalised(p_ptr + gate_col + 1 * H, m, mean, rstd)
            p_hat_n = normalised(p_ptr + gate_col + 2 * H, m, mean, rstd)
            gh_r = _recurrent_gate(gamma_hh_ptr + 0 * H, b_hh_ptr + 0 * H, p_hat_r, offs_j, mask_j,
                                   HAS_BIAS, FP64)
            gh_z = _recurrent_gate(gamma_hh_ptr + 1 * H, b_hh_ptr + 1 * H, p_hat_z, offs_j, mask_j,
                                   HAS_BIAS, FP64)
            gh_n = _recurrent_gate(gamma_hh_ptr + 2 * H, b_hh_ptr + 2 * H, p_hat_n, offs_j, mask_j,
                                   HAS_BIAS, FP64)
            r = sigmoid(to_compute(tl.load(x_t + 0 * H, mask=m, other=0.0), FP64) + gh_r)
            z = sigmoid(to_compute(tl.load(x_t + 1 * H, mask=m, other=0.0), FP64) + gh_z)
            n = tanh(to_compute(tl.load(x_t + 2 * H, mask=m, other=0.0), FP64) + r * gh_n)
            h_prev = tl.load(h_prev_ptr + unit, mask=m, other=0.0)
            h_new = (1.0 - z) * n + z * h_prev
            keep_h = zoneout_keep(mask_h_ptr + step_unit, m, KEEP_H)
            # A finished sequence keeps its state and emits zeros.
            h = tl.where(real, zoneout(h_prev, h_new, keep_h, p_h, KEEP_H), h_prev)
            tl.store(h_next_ptr + unit, h, mask=m)
            store_real(y_ptr + step_unit, h, real, m, ROUND_BF16)
            if SAVE:
                # zeros on padded steps
                ws = t64 * B * (3 * H) + gate_col
                store_real(p_hat_ptr + ws + 0 * H, p_hat_r, real, m, ROUND_BF16)
                store_real(p_hat_ptr + ws + 1 * H, p_hat_z, real, m, ROUND_BF16)
                store_real(p_hat_ptr + ws + 2 * H, p_hat_n, real, m, ROUND_BF16)
        if SAVE:
            store_real(rstd_ptr + t64 * B + offs_b, p_rstd, t < length, mask_b, ROUND_BF16)
        # the next step reads h, and overwrites the scratch rows read above
        tl.debug_barrier()


@triton.jit(do_not_specialize=PER_CALL_INTEGERS)
def layernorm_gru_backward_kernel(
    dy_ptr,         # [T, B, H] (read only when HAS_DY)
    w_ptr,          # [3H, H]
    gamma_hh_ptr,   # [3H]
    b_hh_ptr,       # [3H] (read only when HAS_BIAS)
    h0_ptr,         # [B, H]
    mask_h_ptr,     # [T, B, H] uint8 (KEEP_H == mask)
    scalars_ptr,    # [3] eps (unused), zoneout_h, unused (gate-maths dtype)
    y_ptr,          # [T, B, H] the forward's output (h_{t-1} of the step after)
    gates_ptr,      # [T, B, 3H] the forward's workspace
    p_hat_ptr,      # [T, B, 3H]
    rstd_ptr,       # [T, B]
    lengths_ptr,    # [B] int64 (read only when HAS_LENGTHS)
    dgx_ptr,        # [T, B, 3H] out, gate-maths dtype: grad_gx
    dp_ptr,         # [T, B, 3H] out, gate-maths dtype: the recurrent product's gradients
    dp_hat_ptr,     # [B, 3H] scratch: the step's dp̂
    dh_ptr,         # [2, B, H] gate-maths dtype: dh before position r at [r % 2] (grad_h_n
                    # at [0]); grad_h0 at [(T + 1) % 2] on exit
    T, B, H,
    REVERSE: tl.constexpr,
    HAS_LENGTHS: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    HAS_DY: tl.constexpr,
    KEEP_H: tl.constexpr,
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

    for r in tl.range(0, T, num_stages=1):
        t = step_time(T - 1 - r, T, REVERSE)
        t64 = t.to(tl.int64)
        real = (t < length)[:, None]
        first = is_first_step(t, length, REVERSE)[:, None]
        # y_{t-1} of the rows whose step t is not their first (clamped: a valid address)
        prev_t = tl.minimum(tl.maximum(prev_time(t, REVERSE), 0), T - 1).to(tl.int64)
        # dp of the step processed at r - 1 (the step after t), on the rows where it is real
        after, t_after = step_after(r, T, length, REVERSE)
        dh_in_ptr = dh_ptr + (r % 2) * B * H
        dh_out_ptr = dh_ptr + ((r + 1) % 2) * B * H

        # A: dh, its zoneout, the gate gradients, dp̂.
        dp_hat_sum = zeros_rows(BLOCK_B, FP64)
        dp_hat_dot = zeros_rows(BLOCK_B, FP64)
        for j0 in tl.range(0, H, BLOCK_N, num_stages=1):
            offs_j = j0 + tl.arange(0, BLOCK_N)
            mask_j = offs_j < H
            m = mask_b[:, None] & mask_j[None, :]
            unit = offs_b[:, None] * H + offs_j[None, :]
            step_unit = t64 * B * H + unit
            gate_col = offs_b[:, None] * (3 * H) + offs_j[None, :]
            step_gate = t64 * B * (3 * H) + gate_col
            dh = tl.load(dh_in_ptr + unit, mask=m, other=0.0)
            dh = recurrent_gradient(dh, dp_ptr + t_after * B * (3 * H), w_ptr, offs_b, mask_b,
                                    offs_j, mask_j, after, 3 * H, H, BLOCK_B, BLOCK_K, TF32,
                                    UPCAST, ROUND_BF16)
            dh_total = dh
            if HAS_DY:
                dh_total += to_compute(tl.load(dy_ptr + step_unit, mask=m, other=0.0), FP64)
            keep_h = zoneout_keep(mask_h_ptr + step_unit, m, KEEP_H)
            dh_new = zoneout_next_grad(dh_total, keep_h, p_h, KEEP_H)
            gr = to_compute(tl.load(gates_ptr + step_gate + 0 * H, mask=m, other=0.0), FP64)
            gz = to_compute(tl.load(gates_ptr + step_gate + 1 * H, mask=m, other=0.0), FP64)
            gn = to_compute(tl.load(gates_ptr + step_gate + 2 * H, mask=m, other=0.0), FP64)
            p_hat_r = to_compute(tl.load(p_hat_ptr + step_gate + 0 * H, mask=m, other=0.0), FP64)
            p_hat_z = to_compute(tl.load(p_hat_ptr + step_gate + 1 * H, mask=m, other=0.0), FP64)
            p_hat_n = to_compute(tl.load(p_hat_ptr + step_gate + 2 * H, mask=m, other=0.0), FP64)
            gh_n = _recurrent_gate(gamma_hh_ptr + 2 * H, b_hh_ptr + 2 * H, p_hat_n, offs_j,
                                   mask_j, HAS_BIAS, FP64)
            h_prev = to_compute(tl.load(y_ptr + prev_t * B * H + unit, mask=m & ~first,
                                        other=0.0), FP64)
            h_prev = tl.where(first, to_compute(tl.load(h0_ptr + unit, mask=m, other=0.0), FP64),
                              h_prev)
            # torch.nn's GRU backward (cells.h gru_cell_backward), on the real steps
            dx_n = tl.where(real & m, dh_new * (1.0 - gz) * (1.0 - gn * gn), 0.0)
            dx_z = tl.where(real & m, dh_new * (h_prev - gn) * gz * (1.0 - gz), 0.0)
            dx_r = dx_n * gh_n * gr * (1.0 - gr)
            # padded steps pass dh through; the product of the next position adds to it
            tl.store(dh_out_ptr + unit,
                     tl.where(real, zoneout_previous_grad(dh_total, keep_h, p_h, KEEP_H)
                              + dh_new * gz, dh), mask=m)
            tl.store(dgx_ptr + step_gate + 0 * H, dx_r, mask=m)
            tl.store(dgx_ptr + step_gate + 1 * H, dx_z, mask=m)
            tl.store(dgx_ptr + step_gate + 2 * H, dx_n, mask=m)
            # the gradients of gh: (dx_r, dx_z, dx_n r); dp̂ = dgh γ_hh
            dp_hat_r = dx_r * parameter(gamma_hh_ptr + 0 * H, offs_j, mask_j, FP64)
            dp_hat_z = dx_z * parameter(gamma_hh_ptr + 1 * H, offs_j, mask_j, FP64)
            dp_hat_n = dx_n * gr * parameter(gamma_hh_ptr + 2 * H, offs_j, mask_j, FP64)
            tl.store(dp_hat_ptr + gate_col + 0 * H, dp_hat_r, mask=m)
            tl.store(dp_hat_ptr + gate_col + 1 * H, dp_hat_z, mask=m)
            tl.store(dp_hat_ptr + gate_col + 2 * H, dp_hat_n, mask=m)
            dp_hat_sum += tl.sum(dp_hat_r + dp_hat_z + dp_hat_n, axis=1)
            dp_hat_dot += tl.sum(dp_hat_r * p_hat_r + dp_hat_z * p_hat_z + dp_hat_n * p_hat_n,
                                 axis=1)
        tl.debug_barrier()

        # C: the recurrent LN's backward, into this step's dp.
        rstd_p = to_compute(tl.load(rstd_ptr + t64 * B + offs_b, mask=mask_b, other=0.0), FP64)
        layernorm_backward_rows(dp_hat_ptr, p_hat_ptr + t64 * B * (3 * H),
                                dp_ptr + t64 * B * (3 * H), offs_b, mask_b, t < length, rstd_p,
                                dp_hat_sum / (3 * H), dp_hat_dot / (3 * H), 3 * H, BLOCK_N)
        # the next position reads dp and dh, and overwrites the scratch rows read above
        tl.debug_barrier()

    initial_state_gradient(dh_ptr, dp_ptr, w_ptr, offs_b, mask_b, length, T, B, 3 * H, H,
                           REVERSE, BLOCK_B, BLOCK_N, BLOCK_K, TF32, UPCAST, ROUND_BF16)


# ---------------------------------------------------------------------------------------------
# Launchers: the bodies of fused_rnn::layernorm_gru_{forward,backward}_triton.
# ---------------------------------------------------------------------------------------------

FORWARD_OP = "fused_rnn::layernorm_gru_forward_triton"
BACKWARD_OP = "fused_rnn::layernorm_gru_backward_triton"


def _check_layernorm_inputs(op, ref, gamma_ih, b_ih, gamma_hh, b_hh, mask_h, zoneout_h,
                            n) -> None:
    _layernorm_checks.check_input_layernorm(op, gamma_ih, b_ih, ref, 3 * n.H)
    _layernorm_checks.check_parameter(op, "gamma_hh", gamma_hh, ref, 3 * n.H)
    _checks._check_optional_like(op, "b_hh", b_hh, ref, [3 * n.H])
    _layernorm_checks.check_zoneout(op, "zoneout_h", mask_h, zoneout_h, ref, n.T, n.B, n.H)


def _gates(xw, gamma_ih, b_ih, gamma_hh, b_hh, p_hat, stats, lengths) -> Tensor:
    """The gates r, z, n [T, B, 3H] (xw's dtype) of the forward, recomputed from xw, the input
    LN's statistics and p̂ (zeros on padded steps): the backward kernel reads them."""
    gx_r, gx_z, gx_n = input_gates(xw, gamma_ih, b_ih, stats).chunk(3, dim=-1)
    gh = gamma_hh.to(stats.dtype) * p_hat.to(stats.dtype)
    if b_hh is not None:
        gh = gh + b_hh.to(stats.dtype)
    gh_r, gh_z, gh_n = gh.chunk(3, dim=-1)
    r = (gx_r + gh_r).sigmoid()
    gates = torch.cat([r, (gx_z + gh_z).sigmoid(), (gx_n + r * gh_n).tanh()], dim=-1)
    return on_real_steps(gates, lengths).to(xw.dtype)


def layernorm_gru_forward(
    xw: Tensor, gamma_ih: Tensor, b_ih: Tensor | None, w_hh: Tensor, gamma_hh: Tensor,
    b_hh: Tensor | None, h0: Tensor, zoneout_h_mask: Tensor | None, zoneout_h: float,
    lengths: Tensor | None, reverse: bool, eps: float, save_for_backward: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    op = FORWARD_OP
    n = _checks.check_forward_inputs(op, GATES, xw, w_hh, None, h0, None, b_hh, lengths)
    _check_layernorm_inputs(op, xw, gamma_ih, b_ih, gamma_hh, b_hh, zoneout_h_mask, zoneout_h, n)
    _layernorm_checks.check_eps(op, eps)
    T, B, H = n.T, n.B, n.H

    def workspace(*shape):
        return empty_output(shape, xw) if save_for_backward else xw.new_empty(0)

    y = empty_output((T, B, H), xw)
    p_hat, rstd = workspace(T, B, 3 * H), workspace(T, B)
    cdt = compute_dtype(xw.dtype)
    if T == 0 or B == 0 or H == 0:
        return y.zero_(), h0.clone(), p_hat, workspace(T, B, 3).to(cdt)
    gx, input_stats = input_layernorm(xw, gamma_ih, b_ih, eps)

    h = gx.new_empty((2, B, H), dtype=cdt)
    h[0].copy_(h0)
    placeholder = gx.new_empty(1)
    launch_row_tiles(
        layernorm_gru_forward_kernel,
        choose_blocks(H),
        (gx.contiguous(), w_hh.contiguous(), gamma_hh.contiguous(),
         b_hh.contiguous() if b_hh is not None else placeholder,
         mask_bytes(zoneout_h_mask, placeholder), scalars(gx, eps, zoneout_h, 0.0),
         kernel_lengths(lengths, gx.device, placeholder), y, h,
         gx.new_empty((B, 3 * H), dtype=cdt),
         *((p_hat, rstd) if save_for_backward else (placeholder,) * 2)),
        T, B, H, gx,
        dict(REVERSE=reverse, HAS_LENGTHS=lengths is not None, HAS_BIAS=b_hh is not None,
             SAVE=save_for_backward, KEEP_H=zoneout_kind(zoneout_h_mask, zoneout_h)),
    )
    stats = (torch.cat([input_stats, rstd.to(cdt)[..., None]], dim=-1) if save_for_backward
             else rstd.to(cdt))
    return y, state_out(h, T % 2, gx.dtype), p_hat, stats


def layernorm_gru_backward(
    grad_y: Tensor | None, grad_h_n: Tensor | None, xw: Tensor, gamma_ih: Tensor,
    b_ih: Tensor | None, w_hh: Tensor, gamma_hh: Tensor, b_hh: Tensor | None, h0: Tensor,
    zoneout_h_mask: Tensor | None, zoneout_h: float, y: Tensor, p_hat: Tensor, stats: Tensor,
    lengths: Tensor | None, reverse: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    op = BACKWARD_OP
    n = _checks.check_backward_inputs(op, GATES, w_hh, None, h0, None, y, lengths, grad_y,
                                      grad_h_n, None)
    T, B, H = n.T, n.B, n.H
    _checks.check_workspace(op, "xw", xw, y, (T, B, 3 * H))
    _check_layernorm_inputs(op, y, gamma_ih, b_ih, gamma_hh, b_hh, zoneout_h_mask, zoneout_h, n)
    _checks.check_workspace(op, "p_hat", p_hat, y, (T, B, 3 * H))
    _layernorm_checks.check_statistics(op, stats, y, [T, B, 3])
    cdt = compute_dtype(y.dtype)
    dh = y.new_zeros((2, B, H), dtype=cdt)
    if grad_h_n is not None:
        dh[0].copy_(grad_h_n)
    if T == 0 or B == 0 or H == 0:
        return (y.new_zeros(T, B, 3 * H), y.new_zeros(3 * H), y.new_zeros(3 * H),
                y.new_zeros(3 * H, H), y.new_zeros(3 * H), y.new_zeros(3 * H),
                state_out(dh, 0, y.dtype))
    gates = _gates(xw, gamma_ih, b_ih, gamma_hh, b_hh, p_hat, stats, lengths)
    rstd = stats[..., 2].to(y.dtype)

    # every element written by the kernel (NaN first under FUSED_RNN_FILL_UNINITIALIZED=1)
    dgx = empty_output((T, B, 3 * H), dh)
    dp = empty_output((T, B, 3 * H), dh)
    placeholder = y.new_empty(1)
    launch_row_tiles(
        layernorm_gru_backward_kernel,
        choose_blocks(H),
        (grad_y.contiguous() if grad_y is not None else placeholder, w_hh.contiguous(),
         gamma_hh.contiguous(), b_hh.contiguous() if b_hh is not None else placeholder,
         h0.contiguous(), mask_bytes(zoneout_h_mask, placeholder),
         scalars(y, 0.0, zoneout_h, 0.0), y.contiguous(), gates.contiguous(),
         p_hat.contiguous(), rstd.contiguous(), kernel_lengths(lengths, y.device, placeholder),
         dgx, dp, y.new_empty((B, 3 * H), dtype=cdt), dh),
        T, B, H, y,
        dict(REVERSE=reverse, HAS_LENGTHS=lengths is not None, HAS_BIAS=b_hh is not None,
             HAS_DY=grad_y is not None, KEEP_H=zoneout_kind(zoneout_h_mask, zoneout_h)),
    )
    # The reductions over all steps (padded steps' rows are zero in dgx, dp and the gates).
    with torch.autocast(y.device.type, enabled=False):
        grad_w_hh = recurrent_weight_grad(dp, y.to(cdt), h0.to(cdt), lengths, reverse)
        dgh = dgx.clone()
        dgh[:, :, 2 * H:] *= gates[:, :, :H].to(cdt)      # gh_n enters as r * gh_n
        grad_gamma_hh = (dgh * p_hat.to(cdt)).sum((0, 1))
        grad_b_hh = dgh.sum((0, 1))
        grad_xw, grad_gamma_ih, grad_b_ih = input_layernorm_backward(dgx, xw, gamma_ih, stats,
                                                                     lengths)
    storage = y.dtype
    return (grad_xw.to(storage), grad_gamma_ih.to(storage), grad_b_ih.to(storage),
            grad_w_hh.to(storage), grad_gamma_hh.to(storage), grad_b_hh.to(storage),
            state_out(dh, (T + 1) % 2, storage))
