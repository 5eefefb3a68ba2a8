// LSTM recurrence on CUDA, forward and backward (see csrc/ops.cpp for the op contract).
//
// Persistent path (no projection, W_hh slice fits on chip): one kernel launch for the sequence,
// then (backward) grad_w_hh as GEMMs over all steps.
// Fallback path (projection, fp64, or too large): per step a cuBLAS GEMM through ATen into a
// preallocated buffer and one pointwise kernel, exactly the CPU backend's schedule.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "cuda/cuda_op_common.h"

namespace fused_rnn::cuda {
namespace {

using LstmForwardOutputs = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor>;
using LstmBackwardOutputs = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor>;

LstmForwardOutputs lstm_forward_run(const Tensor& gx_in, const Tensor& w_hh_in,
                                    const optional<Tensor>& w_hr_in, const Tensor& h0_in,
                                    const Tensor& c0_in, const optional<Tensor>& lengths_in,
                                    bool reverse, bool save, const RecurrenceSizes& n,
                                    const ExecContext& ctx) {
  const int64_t T = n.T, B = n.B, H = n.H, P = n.P;
  const auto opts = gx_in.options();
  const auto dtype = gx_in.scalar_type();
  const bool proj = has(w_hr_in);
  const Tensor gx = gx_in.contiguous(), w_hh = w_hh_in.contiguous();
  const Tensor h0 = h0_in.contiguous(), c0 = c0_in.contiguous();

  Tensor y = empty_output({T, B, P}, opts);
  Tensor gates = save ? empty_output({T, B, 4 * H}, opts) : empty_placeholder(opts);
  Tensor cs = save ? empty_output({T, B, H}, opts) : empty_placeholder(opts);
  if (T == 0 || B == 0) return {y, h0.clone(), c0.clone(), gates, cs};

  const optional<Tensor> lengths = kernel_lengths(lengths_in, gx, ctx);
  const Plan plan = plan_call(CellKind::kLSTM, false, n, proj, dtype, ctx);

  if (plan.algo == Algo::kPersistent) {
    Tensor h_n = empty_output({B, H}, opts);
    Tensor c_n = empty_output({B, H}, opts);
    Tensor exchange = at::empty({2, B, H}, opts);
    Tensor c_state = state_buffer(c0, B, H, opts.dtype(at::kFloat));
    Tensor barrier = barrier_counter(gx);
    PersistentForwardArgs a{};
    a.T = T, a.B = B, a.H = H, a.reverse = reverse, a.relu = false;
    a.gx = gx.data_ptr(), a.w_hh = w_hh.data_ptr(), a.b_hh = nullptr, a.h0 = h0.data_ptr();
    a.lengths = lengths_ptr(lengths);
    a.y = y.data_ptr(), a.h_n = h_n.data_ptr(), a.c_n = c_n.data_ptr();
    a.gates = save ? gates.data_ptr() : nullptr, a.cs = save ? cs.data_ptr() : nullptr;
    a.h_exchange = exchange.data_ptr(), a.c_state = c_state.data_ptr<float>();
    a.barrier = reinterpret_cast<unsigned int*>(barrier.data_ptr<int>());
    check_launch(launch_persistent_forward(CellKind::kLSTM, a, plan.persistent, ctx.target,
                                           ctx.stream),
                 "the persistent LSTM forward kernel");
    return {y, h_n, c_n, gates, cs};
  }

  Tensor h = h0.clone();                                            // [B, P] state
  Tensor c = state_buffer(c0, B, H, opts.dtype(acc_dtype_of(dtype)));  // [B, H]
  Tensor pre = at::empty({B, 4 * H}, opts);                         // recurrent product of a step
  Tensor h_raw = proj ? at::zeros({B, H}, opts) : h;  // zeros: finite in rows never written
  Tensor h_proj = proj ? at::empty({B, P}, opts) : Tensor();
  const Tensor w_hh_t = w_hh.t();
  const Tensor w_hr_t = proj ? w_hr_in->contiguous().t() : Tensor();
  for (int64_t s = 0; s < T; ++s) {
    const int64_t t = reverse ? T - 1 - s : s;
    at::mm_out(pre, h, w_hh_t);
    FallbackForwardStep step{};
    step.B = B, step.H = H, step.t = t, step.T = T, step.relu = false;
    step.gx_t = step_ptr(gx, t), step.pre = pre.data_ptr(), step.b_hh = nullptr;
    step.lengths = lengths_ptr(lengths);
    step.h = h_raw.data_ptr(), step.y_t = proj ? nullptr : step_ptr(y, t), step.c = c.data_ptr();
    step.gates_t = save ? step_ptr(gates, t) : nullptr;
    step.cs_t = save ? step_ptr(cs, t) : nullptr;
    check_launch(launch_fallback_forward(CellKind::kLSTM, storage_type_of(dtype), step,
                                         ctx.target, ctx.stream),
                 "the LSTM forward step kernel");
    if (proj) {
      at::mm_out(h_proj, h_raw, w_hr_t);
      const FallbackProjectionCommit commit{B,     P, t, T, lengths_ptr(lengths), h_proj.data_ptr(),
                                            h.data_ptr(), step_ptr(y, t)};
      check_launch(launch_projection_commit(storage_type_of(dtype), commit, ctx.target, ctx.stream),
                   "the LSTM projection commit kernel");
    }
  }
  return {y, h, c.to(dtype), gates, cs};
}

LstmBackwardOutputs lstm_backward_run(const optional<Tensor>& grad_y_in,
                                      const optional<Tensor>& grad_h_n,
                                      const optional<Tensor>& grad_c_n, const Tensor& w_hh_in,
                                      const optional<Tensor>& w_hr_in, const Tensor& h0_in,
                                      const Tensor& c0_in, const Tensor& y_in,
                                      const Tensor& gates_in, const Tensor& cs_in,
                                      const optional<Tensor>& lengths_in, bool reverse,
                                      const RecurrenceSizes& n, const ExecContext& ctx) {
  const int64_t T = n.T, B = n.B, H = n.H, P = n.P;
  const auto opts = y_in.options();
  const auto dtype = y_in.scalar_type();
  const bool proj = has(w_hr_in);
  const Tensor w_hh = w_hh_in.contiguous(), h0 = h0_in.contiguous(), c0 = c0_in.contiguous();
  const Tensor y = y_in.contiguous(), gates = gates_in.contiguous(), cs = cs_in.contiguous();
  const optional<Tensor> grad_y =
      has(grad_y_in) ? optional<Tensor>(grad_y_in->contiguous()) : c10::nullopt;

  Tensor grad_gx = empty_output({T, B, 4 * H}, opts);
  if (T == 0 || B == 0) {
    return {grad_gx, at::zeros({4 * H, P}, opts),
            proj ? at::zeros({P, H}, opts) : empty_placeholder(opts),
            has(grad_h_n) ? grad_h_n->clone() : at::zeros({B, P}, opts),
            has(grad_c_n) ? grad_c_n->clone() : at::zeros({B, H}, opts)};
  }
  const optional<Tensor> lengths = kernel_lengths(lengths_in, y, ctx);
  const Plan plan = plan_call(CellKind::kLSTM, true, n, proj, dtype, ctx);

  if (plan.algo == Algo::kPersistent) {
    Tensor dh_carry = state_buffer(grad_h_n, B, H, opts.dtype(at::kFloat));
    Tensor dc_state = state_buffer(grad_c_n, B, H, opts.dtype(at::kFloat));
    Tensor grad_h0 = empty_output({B, H}, opts);
    Tensor grad_c0 = empty_output({B, H}, opts);
    Tensor barrier = barrier_counter(y);
    PersistentBackwardArgs a{};
    a.T = T, a.B = B, a.H = H, a.reverse = reverse, a.relu = false;
    a.w_hh = w_hh.data_ptr(), a.h0 = h0.data_ptr(), a.c0 = c0.data_ptr(), a.y = y.data_ptr();
    a.gates = gates.data_ptr(), a.cs = cs.data_ptr(), a.grad_y = ptr_or_null(grad_y);
    a.lengths = lengths_ptr(lengths);
    a.grad_gx = grad_gx.data_ptr(), a.grad_gh = nullptr;
    a.dh_carry = dh_carry.data_ptr<float>(), a.dc_state = dc_state.data_ptr<float>();
    a.grad_h0 = grad_h0.data_ptr(), a.grad_c0 = grad_c0.data_ptr();
    a.barrier = reinterpret_cast<unsigned int*>(barrier.data_ptr<int>());
    check_launch(launch_persistent_backward(CellKind::kLSTM, a, plan.persistent, ctx.target,
                                            ctx.stream),
                 "the persistent LSTM backward kernel");
    Tensor grad_w_hh = recurrent_weight_grad(grad_gx, y, h0, lengths, reverse);
    return {grad_gx, grad_w_hh, empty_placeholder(opts), grad_h0, grad_c0};
  }

  Tensor dh = state_buffer(grad_h_n, B, P, opts);                        // [B, P]
  const Tensor padded = padded_steps(lengths, T);
  Tensor dc = state_buffer(grad_c_n, B, H, opts.dtype(acc_dtype_of(dtype)));  // [B, H]
  // With a projection: the total gradient of every step's h (for grad_w_hr) and dh_raw.
  Tensor dh_total = proj ? at::zeros({T, B, P}, opts) : Tensor();
  Tensor dh_raw = proj ? at::empty({B, H}, opts) : Tensor();
  const Tensor w_hr = proj ? w_hr_in->contiguous() : Tensor();
  for (int64_t s = T - 1; s >= 0; --s) {
    const int64_t t = reverse ? T - 1 - s : s;
    const void* dy_t = has(grad_y) ? step_ptr(*grad_y, t) : nullptr;
    if (proj) {
      const FallbackProjectionGrad prep{B, P, t, T, lengths_ptr(lengths), dh.data_ptr(), dy_t,
                                        step_ptr(dh_total, t)};
      check_launch(launch_projection_grad(storage_type_of(dtype), prep, ctx.target, ctx.stream),
                   "the LSTM projection gradient kernel");
      at::mm_out(dh_raw, dh_total[t], w_hr);
    }
    FallbackBackwardStep step{};
    step.B = B, step.H = H, step.t = t, step.T = T, step.reverse = reverse, step.relu = false;
    step.gates = gates.data_ptr(), step.cs = cs.data_ptr(), step.c0 = c0.data_ptr();
    step.dy_t = proj ? nullptr : dy_t, step.lengths = lengths_ptr(lengths);
    step.dh = proj ? dh_raw.data_ptr() : dh.data_ptr(), step.dh_read_only = proj;
    step.dc = dc.data_ptr(), step.dgx_t = step_ptr(grad_gx, t);
    check_launch(launch_fallback_backward(CellKind::kLSTM, storage_type_of(dtype), step,
                                          ctx.target, ctx.stream),
                 "the LSTM backward step kernel");
    add_recurrent_product(dh, grad_gx[t], w_hh, padded.defined() ? padded[t] : Tensor());
  }
  Tensor grad_w_hh = recurrent_weight_grad(grad_gx, y, h0, lengths, reverse);
  Tensor grad_w_hr = empty_placeholder(opts);
  if (proj) {
    // grad_w_hr[P, H] = sum_t dh_total[t]^T h_raw[t], h_raw = o * tanh(c) recomputed.
    const auto acc = acc_dtype_of(dtype);
    const Tensor h_raw = (gates.narrow(2, 3 * H, H).to(acc) * at::tanh(cs.to(acc))).to(dtype);
    grad_w_hr = at::mm(dh_total.reshape({T * B, P}).t(), h_raw.reshape({T * B, H}));
  }
  return {grad_gx, grad_w_hh, grad_w_hr, dh, dc.to(dtype)};
}

// ---------------------------------------------------------------------------------------------
// Op entry points: the CUDA kernels, and the host emulation of the same code for CPU tests.
// ---------------------------------------------------------------------------------------------

constexpr const char* kForwardOp = "fused_rnn::lstm_forward";
constexpr const char* kBackwardOp = "fused_rnn::lstm_backward";

LstmForwardOutputs lstm_forward_cuda(const Tensor& gx, const Tensor& w_hh,
                                     const optional<Tensor>& w_hr, const Tensor& h0,
                                     const Tensor& c0, const optional<Tensor>& lengths,
                                     bool reverse, bool save_for_backward) {
  const AutocastOff autocast_off;
  const RecurrenceSizes n =
      check_forward_inputs(kForwardOp, 4, gx, w_hh, w_hr, h0, c0, c10::nullopt, lengths);
  const c10::cuda::CUDAGuard guard(gx.device());
  return lstm_forward_run(gx, w_hh, w_hr, h0, c0, lengths, reverse, save_for_backward, n,
                          device_context(gx));
}

LstmBackwardOutputs lstm_backward_cuda(const optional<Tensor>& grad_y,
                                       const optional<Tensor>& grad_h_n,
                                       const optional<Tensor>& grad_c_n, const Tensor& w_hh,
                                       const optional<Tensor>& w_hr, const Tensor& h0,
                                       const Tensor& c0, const Tensor& y, const Tensor& gates,
                                       const Tensor& cs, const optional<Tensor>& lengths,
                                       bool reverse) {
  const AutocastOff autocast_off;
  const RecurrenceSizes n = check_backward_inputs(kBackwardOp, 4, w_hh, w_hr, h0, c0, y, lengths,
                                                  grad_y, grad_h_n, grad_c_n);
  check_workspace(kBackwardOp, "gates", gates, y, {n.T, n.B, 4 * n.H});
  check_workspace(kBackwardOp, "cs", cs, y, {n.T, n.B, n.H});
  const c10::cuda::CUDAGuard guard(y.device());
  return lstm_backward_run(grad_y, grad_h_n, grad_c_n, w_hh, w_hr, h0, c0, y, gates, cs, lengths,
                           reverse, n, device_context(y));
}

LstmForwardOutputs lstm_forward_emulated(const Tensor& gx, const Tensor& w_hh,
                                         const optional<Tensor>& w_hr, const Tensor& h0,
                                         const Tensor& c0, const optional<Tensor>& lengths,
                                         bool reverse, bool save_for_backward,
                                         const std::string& algo, int64_t sm_count,
                                         int64_t smem_per_block, bool allow_tf32) {
  const AutocastOff autocast_off;
  const RecurrenceSizes n = check_forward_inputs("fused_rnn_cuda::lstm_forward_emulated", 4, gx,
                                                 w_hh, w_hr, h0, c0, c10::nullopt, lengths);
  return lstm_forward_run(gx, w_hh, w_hr, h0, c0, lengths, reverse, save_for_backward, n,
                          emulation_context(sm_count, smem_per_block, allow_tf32, algo));
}

LstmBackwardOutputs lstm_backward_emulated(
    const optional<Tensor>& grad_y, const optional<Tensor>& grad_h_n,
    const optional<Tensor>& grad_c_n, const Tensor& w_hh, const optional<Tensor>& w_hr,
    const Tensor& h0, const Tensor& c0, const Tensor& y, const Tensor& gates, const Tensor& cs,
    const optional<Tensor>& lengths, bool reverse, const std::string& algo, int64_t sm_count,
    int64_t smem_per_block, bool allow_tf32) {
  const AutocastOff autocast_off;
  const char* op = "fused_rnn_cuda::lstm_backward_emulated";
  const RecurrenceSizes n =
      check_backward_inputs(op, 4, w_hh, w_hr, h0, c0, y, lengths, grad_y, grad_h_n, grad_c_n);
  check_workspace(op, "gates", gates, y, {n.T, n.B, 4 * n.H});
  check_workspace(op, "cs", cs, y, {n.T, n.B, n.H});
  return lstm_backward_run(grad_y, grad_h_n, grad_c_n, w_hh, w_hr, h0, c0, y, gates, cs, lengths,
                           reverse, n,
                           emulation_context(sm_count, smem_per_block, allow_tf32, algo));
}

}  // namespace

TORCH_LIBRARY_IMPL(fused_rnn, CUDA, m) {
  m.impl("lstm_forward", &lstm_forward_cuda);
  m.impl("lstm_backward", &lstm_backward_cuda);
}

TORCH_LIBRARY_IMPL(fused_rnn_cuda, CPU, m) {
  m.impl("lstm_forward_emulated", &lstm_forward_emulated);
  m.impl("lstm_backward_emulated", &lstm_backward_emulated);
}

}  // namespace fused_rnn::cuda
