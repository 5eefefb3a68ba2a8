// GRU recurrence on CUDA, forward and backward (see csrc/ops.cpp for the op contract).
//
// Persistent path: one kernel launch for the sequence; b_hh is added after the product, so all
// three recurrent products (r, z, and n inside the reset gate) are one product per step.
// Fallback path (fp64, or too large): per step a cuBLAS GEMM and one pointwise kernel.
// grad_w_hh and grad_b_hh come from the gradients of the recurrent products of all steps.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "cuda/cuda_op_common.h"

namespace fused_rnn::cuda {
namespace {

using GruForwardOutputs = std::tuple<Tensor, Tensor, Tensor>;
using GruBackwardOutputs = std::tuple<Tensor, Tensor, Tensor, Tensor>;

GruForwardOutputs gru_forward_run(const Tensor& gx_in, const Tensor& w_hh_in,
                                  const optional<Tensor>& b_hh_in, const Tensor& h0_in,
                                  const optional<Tensor>& lengths_in, bool reverse, bool save,
                                  const RecurrenceSizes& n, const ExecContext& ctx) {
  const int64_t T = n.T, B = n.B, H = n.H;
  const auto opts = gx_in.options();
  const auto dtype = gx_in.scalar_type();
  const Tensor gx = gx_in.contiguous(), w_hh = w_hh_in.contiguous(), h0 = h0_in.contiguous();
  const optional<Tensor> b_hh =
      has(b_hh_in) ? optional<Tensor>(b_hh_in->contiguous()) : c10::nullopt;

  Tensor y = empty_output({T, B, H}, opts);
  Tensor gates = save ? empty_output({T, B, 4 * H}, opts) : empty_placeholder(opts);
  if (T == 0 || B == 0) return {y, h0.clone(), gates};

  const optional<Tensor> lengths = kernel_lengths(lengths_in, gx, ctx);
  const Plan plan = plan_call(CellKind::kGRU, false, n, false, dtype, ctx);

  if (plan.algo == Algo::kPersistent) {
    Tensor h_n = empty_output({B, H}, opts);
    Tensor exchange = at::empty({2, B, H}, opts);
    Tensor barrier = barrier_counter(gx);
    PersistentForwardArgs a{};
    a.T = T, a.B = B, a.H = H, a.reverse = reverse, a.relu = false;
    a.gx = gx.data_ptr(), a.w_hh = w_hh.data_ptr(), a.b_hh = ptr_or_null(b_hh);
    a.h0 = h0.data_ptr(), a.lengths = lengths_ptr(lengths);
    a.y = y.data_ptr(), a.h_n = h_n.data_ptr(), a.c_n = nullptr;
    a.gates = save ? gates.data_ptr() : nullptr, a.cs = nullptr;
    a.h_exchange = exchange.data_ptr(), a.c_state = nullptr;
    a.barrier = reinterpret_cast<unsigned int*>(barrier.data_ptr<int>());
    check_launch(launch_persistent_forward(CellKind::kGRU, a, plan.persistent, ctx.target,
                                           ctx.stream),
                 "the persistent GRU forward kernel");
    return {y, h_n, gates};
  }

  Tensor h = h0.clone();                       // [B, H] state
  Tensor gh = at::empty({B, 3 * H}, opts);     // h_prev @ w_hh^T of a step (b_hh added later)
  const Tensor w_hh_t = w_hh.t();
  for (int64_t s = 0; s < T; ++s) {
    const int64_t t = reverse ? T - 1 - s : s;
    at::mm_out(gh, h, w_hh_t);
    FallbackForwardStep step{};
    step.B = B, step.H = H, step.t = t, step.T = T, step.relu = false;
    step.gx_t = step_ptr(gx, t), step.pre = gh.data_ptr(), step.b_hh = ptr_or_null(b_hh);
    step.lengths = lengths_ptr(lengths);
    step.h = h.data_ptr(), step.y_t = step_ptr(y, t), step.c = nullptr;
    step.gates_t = save ? step_ptr(gates, t) : nullptr, step.cs_t = nullptr;
    check_launch(launch_fallback_forward(CellKind::kGRU, storage_type_of(dtype), step, ctx.target,
                                         ctx.stream),
                 "the GRU forward step kernel");
  }
  return {y, h, gates};
}

GruBackwardOutputs gru_backward_run(const optional<Tensor>& grad_y_in,
                                    const optional<Tensor>& grad_h_n, const Tensor& w_hh_in,
                                    const Tensor& h0_in, const Tensor& y_in,
                                    const Tensor& gates_in, const optional<Tensor>& lengths_in,
                                    bool reverse, const RecurrenceSizes& n,
                                    const ExecContext& ctx) {
  const int64_t T = n.T, B = n.B, H = n.H;
  const auto opts = y_in.options();
  const auto dtype = y_in.scalar_type();
  const Tensor w_hh = w_hh_in.contiguous(), h0 = h0_in.contiguous();
  const Tensor y = y_in.contiguous(), gates = gates_in.contiguous();
  const optional<Tensor> grad_y =
      has(grad_y_in) ? optional<Tensor>(grad_y_in->contiguous()) : c10::nullopt;

  Tensor grad_gx = empty_output({T, B, 3 * H}, opts);
  // Gradients of the recurrent products (W_hg h_prev + b_hg) of every step: [T, B, 3H].
  Tensor grad_gh = empty_output({T, B, 3 * H}, opts);
  if (T == 0 || B == 0) {
    return {grad_gx, at::zeros({3 * H, H}, opts), at::zeros({3 * H}, opts),
            has(grad_h_n) ? grad_h_n->clone() : at::zeros({B, H}, opts)};
  }
  const optional<Tensor> lengths = kernel_lengths(lengths_in, y, ctx);
  const Plan plan = plan_call(CellKind::kGRU, true, n, false, dtype, ctx);

  Tensor grad_h0;
  if (plan.algo == Algo::kPersistent) {
    Tensor dh_carry = state_buffer(grad_h_n, B, H, opts.dtype(at::kFloat));
    Tensor barrier = barrier_counter(y);
    grad_h0 = empty_output({B, H}, opts);
    PersistentBackwardArgs a{};
    a.T = T, a.B = B, a.H = H, a.reverse = reverse, a.relu = false;
    a.w_hh = w_hh.data_ptr(), a.h0 = h0.data_ptr(), a.c0 = nullptr, a.y = y.data_ptr();
    a.gates = gates.data_ptr(), a.cs = nullptr, a.grad_y = ptr_or_null(grad_y);
    a.lengths = lengths_ptr(lengths);
    a.grad_gx = grad_gx.data_ptr(), a.grad_gh = grad_gh.data_ptr();
    a.dh_carry = dh_carry.data_ptr<float>(), a.dc_state = nullptr;
    a.grad_h0 = grad_h0.data_ptr(), a.grad_c0 = nullptr;
    a.barrier = reinterpret_cast<unsigned int*>(barrier.data_ptr<int>());
    check_launch(launch_persistent_backward(CellKind::kGRU, a, plan.persistent, ctx.target,
                                            ctx.stream),
                 "the persistent GRU backward kernel");
  } else {
    Tensor dh = state_buffer(grad_h_n, B, H, opts);  // [B, H]
    const Tensor padded = padded_steps(lengths, T);
    for (int64_t s = T - 1; s >= 0; --s) {
      const int64_t t = reverse ? T - 1 - s : s;
      FallbackBackwardStep step{};
      step.B = B, step.H = H, step.t = t, step.T = T, step.reverse = reverse, step.relu = false;
      step.gates = gates.data_ptr(), step.h0 = h0.data_ptr(), step.y = y.data_ptr();
      step.dy_t = has(grad_y) ? step_ptr(*grad_y, t) : nullptr;
      step.lengths = lengths_ptr(lengths);
      step.dh = dh.data_ptr(), step.dh_read_only = false;
      step.dgx_t = step_ptr(grad_gx, t), step.dgh_t = step_ptr(grad_gh, t);
      check_launch(launch_fallback_backward(CellKind::kGRU, storage_type_of(dtype), step,
                                            ctx.target, ctx.stream),
                   "the GRU backward step kernel");
      add_recurrent_product(dh, grad_gh[t], w_hh, padded.defined() ? padded[t] : Tensor());
    }
    grad_h0 = dh;
  }
  Tensor grad_w_hh = recurrent_weight_grad(grad_gh, y, h0, lengths, reverse);
  Tensor grad_b_hh = grad_gh.reshape({T * B, 3 * H}).sum(0);
  return {grad_gx, grad_w_hh, grad_b_hh, grad_h0};
}

// ---------------------------------------------------------------------------------------------
// Op entry points: the CUDA kernels, and the host emulation of the same code for CPU tests.
// ---------------------------------------------------------------------------------------------

constexpr const char* kForwardOp = "fused_rnn::gru_forward";
constexpr const char* kBackwardOp = "fused_rnn::gru_backward";

GruForwardOutputs gru_forward_cuda(const Tensor& gx, const Tensor& w_hh,
                                   const optional<Tensor>& b_hh, const Tensor& h0,
                                   const optional<Tensor>& lengths, bool reverse,
                                   bool save_for_backward) {
  const AutocastOff autocast_off;
  const RecurrenceSizes n = check_forward_inputs(kForwardOp, 3, gx, w_hh, c10::nullopt, h0,
                                                 c10::nullopt, b_hh, lengths);
  const c10::cuda::CUDAGuard guard(gx.device());
  return gru_forward_run(gx, w_hh, b_hh, h0, lengths, reverse, save_for_backward, n,
                         device_context(gx));
}

GruBackwardOutputs gru_backward_cuda(const optional<Tensor>& grad_y,
                                     const optional<Tensor>& grad_h_n, const Tensor& w_hh,
                                     const Tensor& h0, const Tensor& y, const Tensor& gates,
                                     const optional<Tensor>& lengths, bool reverse) {
  const AutocastOff autocast_off;
  const RecurrenceSizes n = check_backward_inputs(kBackwardOp, 3, w_hh, c10::nullopt, h0,
                                                  c10::nullopt, y, lengths, grad_y, grad_h_n,
                                                  c10::nullopt);
  check_workspace(kBackwardOp, "gates", gates, y, {n.T, n.B, 4 * n.H});
  const c10::cuda::CUDAGuard guard(y.device());
  return gru_backward_run(grad_y, grad_h_n, w_hh, h0, y, gates, lengths, reverse, n,
                          device_context(y));
}

GruForwardOutputs gru_forward_emulated(const Tensor& gx, const Tensor& w_hh,
                                       const optional<Tensor>& b_hh, const Tensor& h0,
                                       const optional<Tensor>& lengths, bool reverse,
                                       bool save_for_backward, const std::string& algo,
                                       int64_t sm_count, int64_t smem_per_block,
                                       bool allow_tf32) {
  const AutocastOff autocast_off;
  const RecurrenceSizes n =
      check_forward_inputs("fused_rnn_cuda::gru_forward_emulated", 3, gx, w_hh, c10::nullopt, h0,
                           c10::nullopt, b_hh, lengths);
  return gru_forward_run(gx, w_hh, b_hh, h0, lengths, reverse, save_for_backward, n,
                         emulation_context(sm_count, smem_per_block, allow_tf32, algo));
}

GruBackwardOutputs gru_backward_emulated(const optional<Tensor>& grad_y,
                                         const optional<Tensor>& grad_h_n, const Tensor& w_hh,
                                         const Tensor& h0, const Tensor& y, const Tensor& gates,
                                         const optional<Tensor>& lengths, bool reverse,
                                         const std::string& algo, int64_t sm_count,
                                         int64_t smem_per_block, bool allow_tf32) {
  const AutocastOff autocast_off;
  const char* op = "fused_rnn_cuda::gru_backward_emulated";
  const RecurrenceSizes n = check_backward_inputs(op, 3, w_hh, c10::nullopt, h0, c10::nullopt, y,
                                                  lengths, grad_y, grad_h_n, c10::nullopt);
  check_workspace(op, "gates", gates, y, {n.T, n.B, 4 * n.H});
  return gru_backward_run(grad_y, grad_h_n, w_hh, h0, y, gates, lengths, reverse, n,
                          emulation_context(sm_count, smem_per_block, allow_tf32, algo));
}

}  // namespace

TORCH_LIBRARY_IMPL(fused_rnn, CUDA, m) {
  m.impl("gru_forward", &gru_forward_cuda);
  m.impl("gru_backward", &gru_backward_cuda);
}

TORCH_LIBRARY_IMPL(fused_rnn_cuda, CPU, m) {
  m.impl("gru_forward_emulated", &gru_forward_emulated);
  m.impl("gru_backward_emulated", &gru_backward_emulated);
}

}  // namespace fused_rnn::cuda
