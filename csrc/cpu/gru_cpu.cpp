// GRU recurrence on the CPU, forward and backward (see csrc/ops.cpp for the op contract).
//
// Forward, per step, on each thread's rows and slice of hidden units (cpu/partition.h):
//                     gh[rows, 3n] = h_prev[rows] @ w_hh[the slice's gate rows]^T (one GEMM)
//                     one pass over the slice: r, z, n (b_hh added here), h_next, y_t, workspace
// Backward, per step, on the same workers: dh[rows, units] += dgh[t+1, rows] @ w_hh[:, units]
//                     (the recurrent part from the step after, one GEMM), then one pass over
//                     the slice: dgh[t], the n-part of grad_gx[t] and the direct part dh * z
// dgh (the gradient of the recurrent product) differs from grad_gx only in its n-part
// (dgx_n * r): the loop keeps dgh in grad_gx's buffer and dgx_n aside, grad_w_hh and grad_b_hh
// are taken from dgh after the loop, and then dgx_n is copied in. One [T, B, H] buffer instead
// of a second [T, B, 3H].
#include <torch/library.h>

#include "cpu/cpu_common.h"

namespace fused_rnn::cpu {
namespace {

// The units [j0, j0 + n) of one forward step, batch rows [b0, b1). Row-major arrays with the
// batch row first: gx_t [B, 3H] (gate k of unit j at k*H + j), gh [b1 - b0, 3n] (row b - b0,
// at k*n + j - j0),
// gates_t [B, 4H] (r, z, n, gh_n), h_prev/h_next/y_t [B, H].
template <typename T>
struct ForwardSlice {
  int64_t B, b0, b1, H, j0, n, t, T_steps;
  const T* gx_t;
  const T* gx_next;  // gx of the next step (prefetched), or nullptr
  const T* gh;       // this slice's recurrent product h_prev @ w_hh[rows of the slice]^T
  const T* b_hh;     // [3H] or nullptr
  const T* h_prev;
  T* h_next;
  T* y_t;
  T* gates_t;        // or nullptr
  const int64_t* lengths;
};

// One batch row of a slice, on plain restrict pointers so that the loop vectorises.
template <bool kSave, bool kBias, typename T>
__attribute__((always_inline)) inline void gru_forward_row(
    int64_t n, int64_t H, const T* __restrict__ x, const T* __restrict__ p,
    const T* __restrict__ bias, const T* __restrict__ h_prev, T* __restrict__ h,
    T* __restrict__ y, T* __restrict__ w) {
  for (int64_t j = 0; j < n; ++j) {
    const T gh_r = kBias ? p[j] + bias[j] : p[j];
    const T gh_z = kBias ? p[n + j] + bias[H + j] : p[n + j];
    const T gh_n = kBias ? p[2 * n + j] + bias[2 * H + j] : p[2 * n + j];
    const GRUGates<T> gate = gru_activate(x[j], x[H + j], x[2 * H + j], gh_r, gh_z, gh_n);
    const T h_new = gru_hidden(gate, h_prev[j]);
    h[j] = h_new;
    y[j] = h_new;
    if constexpr (kSave) {
      w[j] = gate.r;
      w[H + j] = gate.z;
      w[2 * H + j] = gate.n;
      w[3 * H + j] = gh_n;
    }
  }
}

template <bool kSave, bool kBias, typename T>
__attribute__((always_inline)) inline void gru_forward_slice_impl(const ForwardSlice<T>& s) {
  const int64_t H = s.H, j0 = s.j0, n = s.n;
  for (int64_t b = s.b0; b < s.b1; ++b) {
    const int64_t row = b * H + j0;
    if (s.gx_next) {
      for (int64_t k = 0; k < 3; ++k) prefetch_range(s.gx_next + b * 3 * H + k * H + j0, n);
    }
    if (!step_is_valid(s.t, length_of(s.lengths, b, s.T_steps))) {
      std::copy_n(s.h_prev + row, n, s.h_next + row);
      std::fill_n(s.y_t + row, n, T(0));
      if constexpr (kSave) {
        for (int64_t k = 0; k < 4; ++k) std::fill_n(s.gates_t + b * 4 * H + k * H + j0, n, T(0));
      }
      continue;
    }
    gru_forward_row<kSave, kBias>(n, H, s.gx_t + b * 3 * H + j0, s.gh + (b - s.b0) * 3 * n,
                                  kBias ? s.b_hh + j0 : nullptr, s.h_prev + row, s.h_next + row,
                                  s.y_t + row, kSave ? s.gates_t + b * 4 * H + j0 : nullptr);
  }
}

template <typename T>
__attribute__((always_inline)) inline void gru_forward_slice_impl(const ForwardSlice<T>& s) {
  const bool save = s.gates_t != nullptr, bias = s.b_hh != nullptr;
  if (save && bias) gru_forward_slice_impl<true, true>(s);
  if (save && !bias) gru_forward_slice_impl<true, false>(s);
  if (!save && bias) gru_forward_slice_impl<false, true>(s);
  if (!save && !bias) gru_forward_slice_impl<false, false>(s);
}

// The units [j0, j0 + n) of one backward step, batch rows [b0, b1).
template <typename T>
struct BackwardSlice {
  int64_t B, b0, b1, H, j0, n, t, T_steps;
  bool reverse;
  const T* gates;   // [T, B, 4H]
  const T* y;       // [T, B, H] (h_prev of a step is y of its neighbour)
  const T* h0;      // [B, H]
  const T* dy_t;    // [B, H] or nullptr
  T* dh;            // [b1 - b0, n] in: gradient reaching h_t; out on real steps: its direct part dh*z
  T* dgh_t;         // [B, 3H] gradient of the recurrent product (+ b_hh): (dx_r, dx_z, dx_n * r)
  T* dgx_n_t;       // [B, H] dx_n, the n-part of grad_gx
  const int64_t* lengths;
};

template <bool kHasDy, typename T>
__attribute__((always_inline)) inline void gru_backward_row(
    int64_t n, int64_t H, const T* __restrict__ w, const T* __restrict__ h_prev,
    const T* __restrict__ dy, T* __restrict__ dh, T* __restrict__ dg, T* __restrict__ dx_n) {
  for (int64_t j = 0; j < n; ++j) {
    const GRUGates<T> gate{w[j], w[H + j], w[2 * H + j]};
    const T dh_total = kHasDy ? dh[j] + dy[j] : dh[j];
    GRUGates<T> d;
    dh[j] = gru_cell_backward(gate, w[3 * H + j], h_prev[j], dh_total, d);
    dx_n[j] = d.n;
    dg[j] = d.r;
    dg[H + j] = d.z;
    dg[2 * H + j] = d.n * gate.r;
  }
}

template <typename T>
__attribute__((always_inline)) inline void gru_backward_slice_impl(const BackwardSlice<T>& s) {
  const int64_t B = s.B, H = s.H, j0 = s.j0, n = s.n, t = s.t;
  for (int64_t b = s.b0; b < s.b1; ++b) {
    T* dg = s.dgh_t + b * 3 * H + j0;
    T* dx_n = s.dgx_n_t + b * H + j0;
    const int64_t length = length_of(s.lengths, b, s.T_steps);
    if (!step_is_valid(t, length)) {
      for (int64_t k = 0; k < 3; ++k) std::fill_n(dg + k * H, n, T(0));
      std::fill_n(dx_n, n, T(0));
      continue;
    }
    const int64_t row = b * H + j0;
    const T* w = s.gates + (t * B + b) * 4 * H + j0;
    const T* h_prev = step_is_first(t, length, s.reverse)
                          ? s.h0 + row
                          : s.y + prev_time(t, s.reverse) * B * H + row;
    if (s.dy_t) {
      gru_backward_row<true>(n, H, w, h_prev, s.dy_t + row, s.dh + (b - s.b0) * n, dg, dx_n);
    } else {
      gru_backward_row<false, T>(n, H, w, h_prev, nullptr, s.dh + (b - s.b0) * n, dg, dx_n);
    }
  }
}

// Float row passes are compiled per ISA (cpu/cpu_isa.h); double needs no variants.
FUSED_RNN_CPU_ISA_VARIANTS(gru_forward_slice, (const ForwardSlice<float>& s), (s),
                           gru_forward_slice_impl(s))
void gru_forward_slice(const ForwardSlice<double>& s) { gru_forward_slice_impl(s); }
FUSED_RNN_CPU_ISA_VARIANTS(gru_backward_slice, (const BackwardSlice<float>& s), (s),
                           gru_backward_slice_impl(s))
void gru_backward_slice(const BackwardSlice<double>& s) { gru_backward_slice_impl(s); }

template <typename T>
std::tuple<Tensor, Tensor, Tensor> gru_forward_impl(const Tensor& gx, const Tensor& w_hh,
                                                    const optional<Tensor>& b_hh, const Tensor& h0,
                                                    const optional<Tensor>& lengths, bool reverse,
                                                    bool save, const RecurrenceSizes& n) {
  const int64_t T_steps = n.T, B = n.B, H = n.H;
  const auto opts = gx.options();
  Tensor y = cpu_output({T_steps, B, H}, opts);
  // [B, H] each: h_state[s % 2] is h before step s, h_state[(s + 1) % 2] after it
  const Tensor h_state[2] = {h0.clone(), at::empty({B, H}, opts)};
  Tensor gates = save ? cpu_output({T_steps, B, 4 * H}, opts) : empty_placeholder(opts);
  const int64_t* len = data_or_null<int64_t>(lengths);
  const Partition part(H, B, B * 3 * H * H, T_steps, /*split_rows=*/true);
  ForwardGemms slices(part, w_hh, 3, T_steps);

  part.for_each_step(T_steps, [&](int64_t k, int64_t s) {
    const int64_t t = time_at(s, T_steps, reverse);
    const Tensor& h_prev = h_state[s % 2];
    slices.run(k, h_prev);
    const ForwardSlice<T> slice{B,
                                part.row_begin(k),
                                part.row_end(k),
                                H,
                                part.begin(k),
                                part.units(k),
                                t,
                                T_steps,
                                gx.data_ptr<T>() + t * B * 3 * H,
                                step_data_or_null<T>(gx, time_or_none(s + 1, T_steps, reverse)),
                                slices.pre[k].data_ptr<T>(),
                                data_or_null<T>(b_hh),
                                h_prev.data_ptr<T>(),
                                h_state[(s + 1) % 2].data_ptr<T>(),
                                y.data_ptr<T>() + t * B * H,
                                save ? gates.data_ptr<T>() + t * B * 4 * H : nullptr,
                                len};
    gru_forward_slice(slice);
  });
  return {y, h_state[T_steps % 2], gates};
}

template <typename T>
std::tuple<Tensor, Tensor, Tensor, Tensor> gru_backward_impl(
    const optional<Tensor>& grad_y, const optional<Tensor>& grad_h_n, const Tensor& w_hh,
    const Tensor& h0, const Tensor& y, const Tensor& gates, const optional<Tensor>& lengths,
    bool reverse, const RecurrenceSizes& n) {
  const int64_t T_steps = n.T, B = n.B, H = n.H;
  const auto opts = y.options();
  Tensor grad_gx = cpu_output({T_steps, B, 3 * H}, opts);
  Tensor& dgh = grad_gx;  // holds dgh until the end, see the top of the file
  Tensor dgx_n = cpu_output({T_steps, B, H}, opts);
  const T* dy = data_or_null<T>(grad_y);
  const int64_t* len = data_or_null<int64_t>(lengths);
  const Partition units(H, B, B * 3 * H * H, T_steps, /*split_rows=*/true);
  BackwardState state(units, w_hh, grad_h_n, len);

  // Position i runs step s = T - 1 - i of the forward order.
  units.for_each_step(T_steps, [&](int64_t k, int64_t i) {
    const int64_t s = T_steps - 1 - i, t = time_at(s, T_steps, reverse);
    if (i > 0) state.add_recurrent(k, dgh, time_at(s + 1, T_steps, reverse));
    const BackwardSlice<T> slice{B, units.row_begin(k), units.row_end(k), H, units.begin(k),
                                 units.units(k), t, T_steps, reverse,
                                 gates.data_ptr<T>(), y.data_ptr<T>(), h0.data_ptr<T>(),
                                 dy ? dy + t * B * H : nullptr, state.dh[k].data_ptr<T>(),
                                 dgh.data_ptr<T>() + t * B * 3 * H,
                                 dgx_n.data_ptr<T>() + t * B * H, len};
    gru_backward_slice(slice);
  });
  // The recurrent part of the first step's gate gradients reaches h0.
  if (T_steps > 0) {
    units.for_each([&](int64_t k) { state.add_recurrent(k, dgh, time_at(0, T_steps, reverse)); });
  }
  Tensor grad_h0 = state.release();
  Tensor grad_w_hh = cpu_recurrent_weight_grad(dgh, y, h0, lengths, reverse);
  Tensor grad_b_hh = dgh.reshape({-1, 3 * H}).sum(0);
  grad_gx.narrow(2, 2 * H, H).copy_(dgx_n);
  return {grad_gx, grad_w_hh, grad_b_hh, grad_h0};
}

std::tuple<Tensor, Tensor, Tensor> gru_forward_cpu(const Tensor& gx, const Tensor& w_hh,
                                                   const optional<Tensor>& b_hh, const Tensor& h0,
                                                   const optional<Tensor>& lengths, bool reverse,
                                                   bool save_for_backward) {
  const AutocastOff autocast_off;
  const RecurrenceSizes n = check_forward_inputs("fused_rnn::gru_forward", 3, gx, w_hh,
                                                 c10::nullopt, h0, c10::nullopt, b_hh, lengths);
  const auto storage = gx.scalar_type();
  const auto lengths_c = has(lengths) ? optional<Tensor>(lengths->contiguous()) : c10::nullopt;
  auto out = AT_DISPATCH_FLOATING_TYPES(compute_dtype(storage), "gru_forward_cpu", [&] {
    return gru_forward_impl<scalar_t>(to_compute(gx), to_compute(w_hh), to_compute(b_hh),
                                      to_compute(h0), lengths_c, reverse, save_for_backward, n);
  });
  auto back = [&](const Tensor& t) { return to_storage(t, storage); };
  return {back(std::get<0>(out)), back(std::get<1>(out)), back(std::get<2>(out))};
}

std::tuple<Tensor, Tensor, Tensor, Tensor> gru_backward_cpu(
    const optional<Tensor>& grad_y, const optional<Tensor>& grad_h_n, const Tensor& w_hh,
    const Tensor& h0, const Tensor& y, const Tensor& gates, const optional<Tensor>& lengths,
    bool reverse) {
  const AutocastOff autocast_off;
  const char* op = "fused_rnn::gru_backward";
  const RecurrenceSizes n = check_backward_inputs(op, 3, w_hh, c10::nullopt, h0, c10::nullopt,
                                                  y, lengths, grad_y, grad_h_n, c10::nullopt);
  check_workspace(op, "gates", gates, y, {n.T, n.B, 4 * n.H});
  const auto storage = y.scalar_type();
  const auto lengths_c = has(lengths) ? optional<Tensor>(lengths->contiguous()) : c10::nullopt;
  auto out = AT_DISPATCH_FLOATING_TYPES(compute_dtype(storage), "gru_backward_cpu", [&] {
    return gru_backward_impl<scalar_t>(to_compute(grad_y), to_compute(grad_h_n),
                                       to_compute(w_hh), to_compute(h0), to_compute(y),
                                       to_compute(gates), lengths_c, reverse, n);
  });
  auto back = [&](const Tensor& t) { return to_storage(t, storage); };
  return {back(std::get<0>(out)), back(std::get<1>(out)), back(std::get<2>(out)),
          back(std::get<3>(out))};
}

}  // namespace

TORCH_LIBRARY_IMPL(fused_rnn, CPU, m) {
  m.impl("gru_forward", &gru_forward_cpu);
  m.impl("gru_backward", &gru_backward_cpu);
}

}  // namespace fused_rnn::cpu
