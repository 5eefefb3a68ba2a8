// Elman RNN recurrence (tanh and relu) on CUDA, forward and backward (see csrc/ops.cpp).
//
// Persistent path: one kernel launch for the sequence (tanh and relu share the kernels).
// Fallback path (fp64, or too large): per step a cuBLAS GEMM and one pointwise kernel.
// The backward needs no workspace: tanh' and relu' are taken from y.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "cells.h"
#include "cuda/cuda_op_common.h"

namespace fused_rnn::cuda {
namespace {

std::tuple<Tensor, Tensor> rnn_forward_run(Nonlinearity act, const Tensor& gx_in,
                                           const Tensor& w_hh_in, const Tensor& h0_in,
                                           const optional<Tensor>& lengths_in, bool reverse,
                                           const RecurrenceSizes& n, const ExecContext& ctx) {
  const int64_t T = n.T, B = n.B, H = n.H;
  const bool relu = act == Nonlinearity::kRelu;
  const CellKind cell = relu ? CellKind::kRNNRelu : CellKind::kRNNTanh;
  const auto opts = gx_in.options();
  const auto dtype = gx_in.scalar_type();
  const Tensor gx = gx_in.contiguous(), w_hh = w_hh_in.contiguous(), h0 = h0_in.contiguous();

  Tensor y = empty_output({T, B, H}, opts);
  if (T == 0 || B == 0) return {y, h0.clone()};

  const optional<Tensor> lengths = kernel_lengths(lengths_in, gx, ctx);
  const Plan plan = plan_call(cell, false, n, false, dtype, ctx);

  if (plan.algo == Algo::kPersistent) {
    Tensor h_n = empty_output({B, H}, opts);
    Tensor exchange = at::empty({2, B, H}, opts);
    Tensor barrier = barrier_counter(gx);
    PersistentForwardArgs a{};
    a.T = T, a.B = B, a.H = H, a.reverse = reverse, a.relu = relu;
    a.gx = gx.data_ptr(), a.w_hh = w_hh.data_ptr(), a.b_hh = nullptr, a.h0 = h0.data_ptr();
    a.lengths = lengths_ptr(lengths);
    a.y = y.data_ptr(), a.h_n = h_n.data_ptr(), a.c_n = nullptr;
    a.gates = nullptr, a.cs = nullptr, a.h_exchange = exchange.data_ptr(), a.c_state = nullptr;
    a.barrier = reinterpret_cast<unsigned int*>(barrier.data_ptr<int>());
    check_launch(launch_persistent_forward(cell, a, plan.persistent, ctx.target, ctx.stream),
                 "the persistent RNN forward kernel");
    return {y, h_n};
  }

  Tensor h = h0.clone();                // [B, H] state
  Tensor pre = at::empty({B, H}, opts);  // h_prev @ w_hh^T of a step
  const Tensor w_hh_t = w_hh.t();
  for (int64_t s = 0; s < T; ++s) {
    const int64_t t = reverse ? T - 1 - s : s;
    at::mm_out(pre, h, w_hh_t);
    FallbackForwardStep step{};
    step.B = B, step.H = H, step.t = t, step.T = T, step.relu = relu;
    step.gx_t = step_ptr(gx, t), step.pre = pre.data_ptr(), step.b_hh = nullptr;
    step.lengths = lengths_ptr(lengths);
    step.h = h.data_ptr(), step.y_t = step_ptr(y, t), step.c = nullptr;
    step.gates_t = nullptr, step.cs_t = nullptr;
    check_launch(launch_fallback_forward(cell, storage_type_of(dtype), step, ctx.target,
                                         ctx.stream),
                 "the RNN forward step kernel");
  }
  return {y, h};
}

std::tuple<Tensor, Tensor, Tensor> rnn_backward_run(Nonlinearity act,
                                                    const optional<Tensor>& grad_y_in,
                                                    const optional<Tensor>& grad_h_n,
                                                    const Tensor& w_hh_in, const Tensor& h0_in,
                                                    const Tensor& y_in,
                                                    const optional<Tensor>& lengths_in,
                                                    bool reverse, const RecurrenceSizes& n,
                                                    const ExecContext& ctx) {
  const int64_t T = n.T, B = n.B, H = n.H;
  const bool relu = act == Nonlinearity::kRelu;
  const CellKind cell = relu ? CellKind::kRNNRelu : CellKind::kRNNTanh;
  const auto opts = y_in.options();
  const auto dtype = y_in.scalar_type();
  const Tensor w_hh = w_hh_in.contiguous(), h0 = h0_in.contiguous(), y = y_in.contiguous();
  const optional<Tensor> grad_y =
      has(grad_y_in) ? optional<Tensor>(grad_y_in->contiguous()) : c10::nullopt;

  Tensor grad_gx = empty_output({T, B, H}, opts);
  if (T == 0 || B == 0) {
    return {grad_gx, at::zeros({H, H}, opts),
            has(grad_h_n) ? grad_h_n->clone() : at::zeros({B, H}, opts)};
  }
  const optional<Tensor> lengths = kernel_lengths(lengths_in, y, ctx);
  const Plan plan = plan_call(cell, true, n, false, dtype, ctx);

  Tensor grad_h0;
  if (plan.algo == Algo::kPersistent) {
    Tensor dh_carry = state_buffer(grad_h_n, B, H, opts.dtype(at::kFloat));
    Tensor barrier = barrier_counter(y);
    grad_h0 = empty_output({B, H}, opts);
    PersistentBackwardArgs a{};
    a.T = T, a.B = B, a.H = H, a.reverse = reverse, a.relu = relu;
    a.w_hh = w_hh.data_ptr(), a.h0 = h0.data_ptr(), a.c0 = nullptr, a.y = y.data_ptr();
    a.gates = nullptr, a.cs = nullptr, a.grad_y = ptr_or_null(grad_y);
    a.lengths = lengths_ptr(lengths);
    a.grad_gx = grad_gx.data_ptr(), a.grad_gh = nullptr;
    a.dh_carry = dh_carry.data_ptr<float>(), a.dc_state = nullptr;
    a.grad_h0 = grad_h0.data_ptr(), a.grad_c0 = nullptr;
    a.barrier = reinterpret_cast<unsigned int*>(barrier.data_ptr<int>());
    check_launch(launch_persistent_backward(cell, a, plan.persistent, ctx.target, ctx.stream),
                 "the persistent RNN backward kernel");
  } else {
    Tensor dh = state_buffer(grad_h_n, B, H, opts);  // [B, H]
    const Tensor padded = padded_steps(lengths, T);
    for (int64_t s = T - 1; s >= 0; --s) {
      const int64_t t = reverse ? T - 1 - s : s;
      FallbackBackwardStep step{};
      step.B = B, step.H = H, step.t = t, step.T = T, step.reverse = reverse, step.relu = relu;
      step.y = y.data_ptr(), step.dy_t = has(grad_y) ? step_ptr(*grad_y, t) : nullptr;
      step.lengths = lengths_ptr(lengths);
      step.dh = dh.data_ptr(), step.dh_read_only = false, step.dgx_t = step_ptr(grad_gx, t);
      check_launch(launch_fallback_backward(cell, storage_type_of(dtype), step, ctx.target,
                                            ctx.stream),
                   "the RNN backward step kernel");
      add_recurrent_product(dh, grad_gx[t], w_hh, padded.defined() ? padded[t] : Tensor());
    }
    grad_h0 = dh;
  }
  Tensor grad_w_hh = recurrent_weight_grad(grad_gx, y, h0, lengths, reverse);
  return {grad_gx, grad_w_hh, grad_h0};
}

// ---------------------------------------------------------------------------------------------
// Op entry points: the CUDA kernels, and the host emulation of the same code for CPU tests.
// ---------------------------------------------------------------------------------------------

template <Nonlinearity kAct>
constexpr const char* forward_op_name() {
  return kAct == Nonlinearity::kTanh ? "fused_rnn::rnn_tanh_forward" : "fused_rnn::rnn_relu_forward";
}
template <Nonlinearity kAct>
constexpr const char* backward_op_name() {
  return kAct == Nonlinearity::kTanh ? "fused_rnn::rnn_tanh_backward"
                                     : "fused_rnn::rnn_relu_backward";
}

template <Nonlinearity kAct>
std::tuple<Tensor, Tensor> rnn_forward_cuda(const Tensor& gx, const Tensor& w_hh,
                                            const Tensor& h0, const optional<Tensor>& lengths,
                                            bool reverse) {
  const AutocastOff autocast_off;
  const RecurrenceSizes n = check_forward_inputs(forward_op_name<kAct>(), 1, gx, w_hh,
                                                 c10::nullopt, h0, c10::nullopt, c10::nullopt,
                                                 lengths);
  const c10::cuda::CUDAGuard guard(gx.device());
  return rnn_forward_run(kAct, gx, w_hh, h0, lengths, reverse, n, device_context(gx));
}

template <Nonlinearity kAct>
std::tuple<Tensor, Tensor, Tensor> rnn_backward_cuda(const optional<Tensor>& grad_y,
                                                     const optional<Tensor>& grad_h_n,
                                                     const Tensor& w_hh, const Tensor& h0,
                                                     const Tensor& y,
                                                     const optional<Tensor>& lengths,
                                                     bool reverse) {
  const AutocastOff autocast_off;
  const RecurrenceSizes n =
      check_backward_inputs(backward_op_name<kAct>(), 1, w_hh, c10::nullopt, h0, c10::nullopt, y,
                            lengths, grad_y, grad_h_n, c10::nullopt);
  const c10::cuda::CUDAGuard guard(y.device());
  return rnn_backward_run(kAct, grad_y, grad_h_n, w_hh, h0, y, lengths, reverse, n,
                          device_context(y));
}

Nonlinearity parse_nonlinearity(const std::string& nonlinearity) {
  TORCH_CHECK(nonlinearity == "tanh" || nonlinearity == "relu",
              "fused_rnn_cuda: nonlinearity must be tanh or relu, got '", nonlinearity, "'");
  return nonlinearity == "relu" ? Nonlinearity::kRelu : Nonlinearity::kTanh;
}

std::tuple<Tensor, Tensor> rnn_forward_emulated(const std::string& nonlinearity, const Tensor& gx,
                                                const Tensor& w_hh, const Tensor& h0,
                                                const optional<Tensor>& lengths, bool reverse,
                                                const std::string& algo, int64_t sm_count,
                                                int64_t smem_per_block, bool allow_tf32) {
  const AutocastOff autocast_off;
  const RecurrenceSizes n =
      check_forward_inputs("fused_rnn_cuda::rnn_forward_emulated", 1, gx, w_hh, c10::nullopt, h0,
                           c10::nullopt, c10::nullopt, lengths);
  return rnn_forward_run(parse_nonlinearity(nonlinearity), gx, w_hh, h0, lengths, reverse, n,
                         emulation_context(sm_count, smem_per_block, allow_tf32, algo));
}

std::tuple<Tensor, Tensor, Tensor> rnn_backward_emulated(
    const std::string& nonlinearity, const optional<Tensor>& grad_y,
    const optional<Tensor>& grad_h_n, const Tensor& w_hh, const Tensor& h0, const Tensor& y,
    const optional<Tensor>& lengths, bool reverse, const std::string& algo, int64_t sm_count,
    int64_t smem_per_block, bool allow_tf32) {
  const AutocastOff autocast_off;
  const RecurrenceSizes n =
      check_backward_inputs("fused_rnn_cuda::rnn_backward_emulated", 1, w_hh, c10::nullopt, h0,
                            c10::nullopt, y, lengths, grad_y, grad_h_n, c10::nullopt);
  return rnn_backward_run(parse_nonlinearity(nonlinearity), grad_y, grad_h_n, w_hh, h0, y,
                          lengths, reverse, n,
                          emulation_context(sm_count, smem_per_block, allow_tf32, algo));
}

}  // namespace

TORCH_LIBRARY_IMPL(fused_rnn, CUDA, m) {
  m.impl("rnn_tanh_forward", &rnn_forward_cuda<Nonlinearity::kTanh>);
  m.impl("rnn_tanh_backward", &rnn_backward_cuda<Nonlinearity::kTanh>);
  m.impl("rnn_relu_forward", &rnn_forward_cuda<Nonlinearity::kRelu>);
  m.impl("rnn_relu_backward", &rnn_backward_cuda<Nonlinearity::kRelu>);
}

TORCH_LIBRARY_IMPL(fused_rnn_cuda, CPU, m) {
  m.impl("rnn_forward_emulated", &rnn_forward_emulated);
  m.impl("rnn_backward_emulated", &rnn_backward_emulated);
}

}  // namespace fused_rnn::cuda
