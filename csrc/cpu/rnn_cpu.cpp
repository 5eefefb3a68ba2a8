// Elman RNN recurrence (tanh and relu) on the CPU, forward and backward (see csrc/ops.cpp).
//
// Forward, per step:  pre[B, H] = h @ w_hh^T (one GEMM), one pass: h = act(gx_t + pre), y_t
// Backward, per step: one pass: grad_gx[t] = act'(y_t) * (dh + dy_t), dh = 0 on real steps
//                     dh += grad_gx[t] @ w_hh (one GEMM)
#include <torch/library.h>

#include "cpu/cpu_common.h"

namespace fused_rnn::cpu {
namespace {

template <typename T>
struct ForwardStep {
  int64_t H, t, T_steps;
  const T* gx_t;   // [B, H]
  const T* pre;    // [B, H]
  T* h;            // [B, H] updated in place
  T* y_t;          // [B, H]
  const int64_t* lengths;
};

template <Nonlinearity kAct, typename T>
__attribute__((always_inline)) inline void rnn_forward_rows_impl(const ForwardStep<T>& s,
                                                                 int64_t b0, int64_t b1) {
  const int64_t H = s.H;
  for (int64_t b = b0; b < b1; ++b) {
    T* __restrict__ y = s.y_t + b * H;
    if (!step_is_valid(s.t, length_of(s.lengths, b, s.T_steps))) {
      std::fill_n(y, H, T(0));
      continue;
    }
    const T* __restrict__ x = s.gx_t + b * H;
    const T* __restrict__ p = s.pre + b * H;
    T* __restrict__ h = s.h + b * H;
    for (int64_t j = 0; j < H; ++j) {
      const T h_new = rnn_activate<kAct>(x[j] + p[j]);
      h[j] = h_new;
      y[j] = h_new;
    }
  }
}

template <typename T>
struct BackwardStep {
  int64_t H, t, T_steps;
  const T* y_t;    // [B, H] h_t on real steps
  const T* dy_t;   // [B, H] or nullptr
  T* dh;           // [B, H] in: gradient from step t+1; set to 0 on real steps
  T* dgx_t;        // [B, H]
  const int64_t* lengths;
};

template <Nonlinearity kAct, typename T>
__attribute__((always_inline)) inline void rnn_backward_rows_impl(const BackwardStep<T>& s,
                                                                  int64_t b0, int64_t b1) {
  const int64_t H = s.H;
  for (int64_t b = b0; b < b1; ++b) {
    T* __restrict__ da = s.dgx_t + b * H;
    if (!step_is_valid(s.t, length_of(s.lengths, b, s.T_steps))) {
      std::fill_n(da, H, T(0));
      continue;
    }
    const T* __restrict__ h = s.y_t + b * H;
    const T* __restrict__ dy = s.dy_t ? s.dy_t + b * H : nullptr;
    T* __restrict__ dh = s.dh + b * H;
    for (int64_t j = 0; j < H; ++j) {
      const T dh_total = dy ? dh[j] + dy[j] : dh[j];
      da[j] = rnn_cell_backward<kAct>(h[j], dh_total);
      dh[j] = T(0);
    }
  }
}

template <Nonlinearity kAct>
FUSED_RNN_CPU_CLONES void rnn_forward_rows(const ForwardStep<float>& s, int64_t b0, int64_t b1) {
  rnn_forward_rows_impl<kAct>(s, b0, b1);
}
template <Nonlinearity kAct>
void rnn_forward_rows(const ForwardStep<double>& s, int64_t b0, int64_t b1) {
  rnn_forward_rows_impl<kAct>(s, b0, b1);
}
template <Nonlinearity kAct>
FUSED_RNN_CPU_CLONES void rnn_backward_rows(const BackwardStep<float>& s, int64_t b0, int64_t b1) {
  rnn_backward_rows_impl<kAct>(s, b0, b1);
}
template <Nonlinearity kAct>
void rnn_backward_rows(const BackwardStep<double>& s, int64_t b0, int64_t b1) {
  rnn_backward_rows_impl<kAct>(s, b0, b1);
}

template <Nonlinearity kAct, typename T>
std::tuple<Tensor, Tensor> rnn_forward_impl(const Tensor& gx, const Tensor& w_hh,
                                            const Tensor& h0, const optional<Tensor>& lengths,
                                            bool reverse, const RecurrenceSizes& n) {
  const int64_t T_steps = n.T, B = n.B, H = n.H;
  Tensor y = empty_output({T_steps, B, H}, gx.options());
  Tensor h = h0.clone();
  Tensor pre = at::empty({B, H}, gx.options());
  const Tensor w_hh_t = w_hh.t();
  const int64_t* len = data_or_null<int64_t>(lengths);
  for (int64_t s = 0; s < T_steps; ++s) {
    const int64_t t = time_at(s, T_steps, reverse);
    gemm(pre, h, w_hh_t, false);
    ForwardStep<T> step{H, t, T_steps, gx.data_ptr<T>() + t * B * H, pre.data_ptr<T>(),
                        h.data_ptr<T>(), y.data_ptr<T>() + t * B * H, len};
    parallel_rows(B, H, [&](int64_t b0, int64_t b1) { rnn_forward_rows<kAct>(step, b0, b1); });
  }
  return {y, h};
}

template <Nonlinearity kAct, typename T>
std::tuple<Tensor, Tensor, Tensor> rnn_backward_impl(const optional<Tensor>& grad_y,
                                                     const optional<Tensor>& grad_h_n,
                                                     const Tensor& w_hh, const Tensor& h0,
                                                     const Tensor& y,
                                                     const optional<Tensor>& lengths,
                                                     bool reverse, const RecurrenceSizes& n) {
  const int64_t T_steps = n.T, B = n.B, H = n.H;
  Tensor grad_gx = empty_output({T_steps, B, H}, y.options());
  Tensor dh = has(grad_h_n) ? grad_h_n->clone() : at::zeros({B, H}, y.options());
  const T* dy = data_or_null<T>(grad_y);
  const int64_t* len = data_or_null<int64_t>(lengths);
  for (int64_t s = T_steps - 1; s >= 0; --s) {
    const int64_t t = time_at(s, T_steps, reverse);
    BackwardStep<T> step{H, t, T_steps, y.data_ptr<T>() + t * B * H,
                         dy ? dy + t * B * H : nullptr, dh.data_ptr<T>(),
                         grad_gx.data_ptr<T>() + t * B * H, len};
    parallel_rows(B, H, [&](int64_t b0, int64_t b1) { rnn_backward_rows<kAct>(step, b0, b1); });
    Tensor grad_gx_t = grad_gx[t];
    gemm(dh, grad_gx_t, w_hh, true);
  }
  Tensor grad_w_hh = recurrent_weight_grad(grad_gx, y, h0, lengths, reverse);
  return {grad_gx, grad_w_hh, dh};
}

template <Nonlinearity kAct>
std::tuple<Tensor, Tensor> rnn_forward_cpu(const Tensor& gx, const Tensor& w_hh,
                                           const Tensor& h0, const optional<Tensor>& lengths,
                                           bool reverse) {
  const char* op = kAct == Nonlinearity::kTanh ? "fused_rnn::rnn_tanh_forward"
                                               : "fused_rnn::rnn_relu_forward";
  const RecurrenceSizes n = check_forward_inputs(op, 1, gx, w_hh, c10::nullopt, h0,
                                                 c10::nullopt, c10::nullopt, lengths);
  const auto storage = gx.scalar_type();
  const auto lengths_c = has(lengths) ? optional<Tensor>(lengths->contiguous()) : c10::nullopt;
  auto out = AT_DISPATCH_FLOATING_TYPES(compute_dtype(storage), "rnn_forward_cpu", [&] {
    return rnn_forward_impl<kAct, scalar_t>(to_compute(gx), to_compute(w_hh), to_compute(h0),
                                            lengths_c, reverse, n);
  });
  return {std::get<0>(out).to(storage), std::get<1>(out).to(storage)};
}

template <Nonlinearity kAct>
std::tuple<Tensor, Tensor, Tensor> rnn_backward_cpu(const optional<Tensor>& grad_y,
                                                    const optional<Tensor>& grad_h_n,
                                                    const Tensor& w_hh, const Tensor& h0,
                                                    const Tensor& y,
                                                    const optional<Tensor>& lengths,
                                                    bool reverse) {
  const char* op = kAct == Nonlinearity::kTanh ? "fused_rnn::rnn_tanh_backward"
                                               : "fused_rnn::rnn_relu_backward";
  const RecurrenceSizes n = check_backward_inputs(op, 1, w_hh, c10::nullopt, h0, c10::nullopt,
                                                  y, lengths, grad_y, grad_h_n, c10::nullopt);
  const auto storage = y.scalar_type();
  const auto lengths_c = has(lengths) ? optional<Tensor>(lengths->contiguous()) : c10::nullopt;
  auto out = AT_DISPATCH_FLOATING_TYPES(compute_dtype(storage), "rnn_backward_cpu", [&] {
    return rnn_backward_impl<kAct, scalar_t>(to_compute(grad_y), to_compute(grad_h_n),
                                             to_compute(w_hh), to_compute(h0), to_compute(y),
                                             lengths_c, reverse, n);
  });
  return {std::get<0>(out).to(storage), std::get<1>(out).to(storage),
          std::get<2>(out).to(storage)};
}

}  // namespace

TORCH_LIBRARY_IMPL(fused_rnn, CPU, m) {
  m.impl("rnn_tanh_forward", &rnn_forward_cpu<Nonlinearity::kTanh>);
  m.impl("rnn_tanh_backward", &rnn_backward_cpu<Nonlinearity::kTanh>);
  m.impl("rnn_relu_forward", &rnn_forward_cpu<Nonlinearity::kRelu>);
  m.impl("rnn_relu_backward", &rnn_backward_cpu<Nonlinearity::kRelu>);
}

}  // namespace fused_rnn::cpu
