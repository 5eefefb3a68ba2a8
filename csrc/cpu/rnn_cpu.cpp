// Elman RNN recurrence (tanh and relu) on the CPU, forward and backward (see csrc/ops.cpp).
//
// Forward, per step, on each thread's rows and slice of hidden units (cpu/partition.h):
//                     pre[rows, n] = h_prev[rows] @ w_hh[the slice's rows]^T (one GEMM),
//                     one pass: h_next = act(gx_t + pre), y_t
// Backward, per step, on the same workers: dh[rows, units] += grad_gx[t+1, rows] @
//                     w_hh[:, units] (one GEMM), then one pass: grad_gx[t] = act'(y_t) *
//                     (dh + dy_t), dh = 0
#include <torch/library.h>

#include "cpu/cpu_common.h"

namespace fused_rnn::cpu {
namespace {

// The units [j0, j0 + n) of one forward step, batch rows [b0, b1): gx_t/h_prev/h_next/y_t
// [B, H], pre [b1 - b0, n].
template <typename T>
struct ForwardSlice {
  int64_t B, b0, b1, H, j0, n, t, T_steps;
  const T* gx_t;
  const T* pre;     // this slice's recurrent product h_prev @ w_hh[rows of the slice]^T
  const T* h_prev;
  T* h_next;
  T* y_t;
  const int64_t* lengths;
};

// One batch row of a slice, on plain restrict pointers so that the loop vectorises.
template <Nonlinearity kAct, typename T>
__attribute__((always_inline)) inline void rnn_forward_row(int64_t n, const T* __restrict__ x,
                                                           const T* __restrict__ p,
                                                           T* __restrict__ h, T* __restrict__ y) {
  for (int64_t j = 0; j < n; ++j) {
    const T h_new = rnn_activate<kAct>(x[j] + p[j]);
    h[j] = h_new;
    y[j] = h_new;
  }
}

template <Nonlinearity kAct, typename T>
__attribute__((always_inline)) inline void rnn_forward_slice_impl(const ForwardSlice<T>& s) {
  const int64_t H = s.H, j0 = s.j0, n = s.n;
  for (int64_t b = s.b0; b < s.b1; ++b) {
    const int64_t row = b * H + j0;
    if (!step_is_valid(s.t, length_of(s.lengths, b, s.T_steps))) {
      std::copy_n(s.h_prev + row, n, s.h_next + row);
      std::fill_n(s.y_t + row, n, T(0));
      continue;
    }
    rnn_forward_row<kAct>(n, s.gx_t + row, s.pre + (b - s.b0) * n, s.h_next + row, s.y_t + row);
  }
}

// The units [j0, j0 + n) of one backward step, batch rows [b0, b1).
template <typename T>
struct BackwardSlice {
  int64_t B, b0, b1, H, j0, n, t, T_steps;
  const T* y_t;    // [B, H] h_t on real steps
  const T* dy_t;   // [B, H] or nullptr
  T* dh;           // [b1 - b0, n] in: gradient reaching h_t; set to 0 on real steps
  T* dgx_t;        // [B, H]
  const int64_t* lengths;
};

template <Nonlinearity kAct, bool kHasDy, typename T>
__attribute__((always_inline)) inline void rnn_backward_row(int64_t n, const T* __restrict__ h,
                                                            const T* __restrict__ dy,
                                                            T* __restrict__ dh,
                                                            T* __restrict__ da) {
  for (int64_t j = 0; j < n; ++j) {
    const T dh_total = kHasDy ? dh[j] + dy[j] : dh[j];
    da[j] = rnn_cell_backward<kAct>(h[j], dh_total);
    dh[j] = T(0);
  }
}

template <Nonlinearity kAct, typename T>
__attribute__((always_inline)) inline void rnn_backward_slice_impl(const BackwardSlice<T>& s) {
  const int64_t H = s.H, j0 = s.j0, n = s.n;
  for (int64_t b = s.b0; b < s.b1; ++b) {
    const int64_t row = b * H + j0;
    if (!step_is_valid(s.t, length_of(s.lengths, b, s.T_steps))) {
      std::fill_n(s.dgx_t + row, n, T(0));
      continue;
    }
    if (s.dy_t) {
      rnn_backward_row<kAct, true>(n, s.y_t + row, s.dy_t + row, s.dh + (b - s.b0) * n,
                                   s.dgx_t + row);
    } else {
      rnn_backward_row<kAct, false, T>(n, s.y_t + row, nullptr, s.dh + (b - s.b0) * n,
                                       s.dgx_t + row);
    }
  }
}

// Float row passes are compiled per ISA (cpu/cpu_isa.h), one function per nonlinearity;
// double needs no variants.
FUSED_RNN_CPU_ISA_VARIANTS(rnn_tanh_forward_slice, (const ForwardSlice<float>& s), (s),
                           rnn_forward_slice_impl<Nonlinearity::kTanh>(s))
FUSED_RNN_CPU_ISA_VARIANTS(rnn_relu_forward_slice, (const ForwardSlice<float>& s), (s),
                           rnn_forward_slice_impl<Nonlinearity::kRelu>(s))
FUSED_RNN_CPU_ISA_VARIANTS(rnn_tanh_backward_slice, (const BackwardSlice<float>& s), (s),
                           rnn_backward_slice_impl<Nonlinearity::kTanh>(s))
FUSED_RNN_CPU_ISA_VARIANTS(rnn_relu_backward_slice, (const BackwardSlice<float>& s), (s),
                           rnn_backward_slice_impl<Nonlinearity::kRelu>(s))

template <Nonlinearity kAct>
void rnn_forward_slice(const ForwardSlice<float>& s) {
  if constexpr (kAct == Nonlinearity::kTanh) {
    rnn_tanh_forward_slice(s);
  } else {
    rnn_relu_forward_slice(s);
  }
}
template <Nonlinearity kAct>
void rnn_forward_slice(const ForwardSlice<double>& s) {
  rnn_forward_slice_impl<kAct>(s);
}
template <Nonlinearity kAct>
void rnn_backward_slice(const BackwardSlice<float>& s) {
  if constexpr (kAct == Nonlinearity::kTanh) {
    rnn_tanh_backward_slice(s);
  } else {
    rnn_relu_backward_slice(s);
  }
}
template <Nonlinearity kAct>
void rnn_backward_slice(const BackwardSlice<double>& s) {
  rnn_backward_slice_impl<kAct>(s);
}

template <Nonlinearity kAct, typename T>
std::tuple<Tensor, Tensor> rnn_forward_impl(const Tensor& gx, const Tensor& w_hh,
                                            const Tensor& h0, const optional<Tensor>& lengths,
                                            bool reverse, const RecurrenceSizes& n) {
  const int64_t T_steps = n.T, B = n.B, H = n.H;
  Tensor y = cpu_output({T_steps, B, H}, gx.options());
  // [B, H] each: h_state[s % 2] is h before step s, h_state[(s + 1) % 2] after it
  const Tensor h_state[2] = {h0.clone(), at::empty({B, H}, gx.options())};
  const int64_t* len = data_or_null<int64_t>(lengths);
  const Partition part(H, B, B * H * H, T_steps, /*split_rows=*/true);
  ForwardGemms slices(part, w_hh, 1, T_steps);
  part.for_each_step(T_steps, [&](int64_t k, int64_t s) {
    const int64_t t = time_at(s, T_steps, reverse);
    const Tensor& h_prev = h_state[s % 2];
    slices.run(k, h_prev);
    const ForwardSlice<T> slice{B, part.row_begin(k), part.row_end(k), H, part.begin(k),
                                part.units(k), t, T_steps,
                                gx.data_ptr<T>() + t * B * H, slices.pre[k].data_ptr<T>(),
                                h_prev.data_ptr<T>(), h_state[(s + 1) % 2].data_ptr<T>(),
                                y.data_ptr<T>() + t * B * H, len};
    rnn_forward_slice<kAct>(slice);
  });
  return {y, h_state[T_steps % 2]};
}

template <Nonlinearity kAct, typename T>
std::tuple<Tensor, Tensor, Tensor> rnn_backward_impl(const optional<Tensor>& grad_y,
                                                     const optional<Tensor>& grad_h_n,
                                                     const Tensor& w_hh, const Tensor& h0,
                                                     const Tensor& y,
                                                     const optional<Tensor>& lengths,
                                                     bool reverse, const RecurrenceSizes& n) {
  const int64_t T_steps = n.T, B = n.B, H = n.H;
  Tensor grad_gx = cpu_output({T_steps, B, H}, y.options());
  const T* dy = data_or_null<T>(grad_y);
  const int64_t* len = data_or_null<int64_t>(lengths);
  const Partition units(H, B, B * H * H, T_steps, /*split_rows=*/true);
  BackwardState state(units, w_hh, grad_h_n, len);
  // Position i runs step s = T - 1 - i of the forward order.
  units.for_each_step(T_steps, [&](int64_t k, int64_t i) {
    const int64_t s = T_steps - 1 - i, t = time_at(s, T_steps, reverse);
    if (i > 0) state.add_recurrent(k, grad_gx, time_at(s + 1, T_steps, reverse));
    const BackwardSlice<T> slice{B, units.row_begin(k), units.row_end(k), H, units.begin(k),
                                 units.units(k), t, T_steps,
                                 y.data_ptr<T>() + t * B * H, dy ? dy + t * B * H : nullptr,
                                 state.dh[k].data_ptr<T>(), grad_gx.data_ptr<T>() + t * B * H,
                                 len};
    rnn_backward_slice<kAct>(slice);
  });
  // The recurrent part of the first step's gradients reaches h0.
  if (T_steps > 0) {
    units.for_each([&](int64_t k) { state.add_recurrent(k, grad_gx, time_at(0, T_steps, reverse)); });
  }
  Tensor grad_h0 = state.release();
  Tensor grad_w_hh = cpu_recurrent_weight_grad(grad_gx, y, h0, lengths, reverse);
  return {grad_gx, grad_w_hh, grad_h0};
}

template <Nonlinearity kAct>
std::tuple<Tensor, Tensor> rnn_forward_cpu(const Tensor& gx, const Tensor& w_hh,
                                           const Tensor& h0, const optional<Tensor>& lengths,
                                           bool reverse) {
  const AutocastOff autocast_off;
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
  return {to_storage(std::get<0>(out), storage), to_storage(std::get<1>(out), storage)};
}

template <Nonlinearity kAct>
std::tuple<Tensor, Tensor, Tensor> rnn_backward_cpu(const optional<Tensor>& grad_y,
                                                    const optional<Tensor>& grad_h_n,
                                                    const Tensor& w_hh, const Tensor& h0,
                                                    const Tensor& y,
                                                    const optional<Tensor>& lengths,
                                                    bool reverse) {
  const AutocastOff autocast_off;
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
  return {to_storage(std::get<0>(out), storage), to_storage(std::get<1>(out), storage),
          to_storage(std::get<2>(out), storage)};
}

}  // namespace

TORCH_LIBRARY_IMPL(fused_rnn, CPU, m) {
  m.impl("rnn_tanh_forward", &rnn_forward_cpu<Nonlinearity::kTanh>);
  m.impl("rnn_tanh_backward", &rnn_backward_cpu<Nonlinearity::kTanh>);
  m.impl("rnn_relu_forward", &rnn_forward_cpu<Nonlinearity::kRelu>);
  m.impl("rnn_relu_backward", &rnn_backward_cpu<Nonlinearity::kRelu>);
}

}  // namespace fused_rnn::cpu
