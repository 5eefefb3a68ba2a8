// LSTM recurrence on the CPU, forward and backward (see csrc/ops.cpp for the op contract).
//
// Forward, per step, on each thread's rows and slice of hidden units (cpu/partition.h):
//                     pre[rows, 4n] = h_prev[rows] @ w_hh[the slice's gate rows]^T (one GEMM)
//                     one pass over the slice: activations, c (in place), h_next, y_t, workspace
//                     with a projection: h = h_raw @ w_hr^T (a second GEMM) and a commit pass
// Backward, per step, on the same workers: dh[rows, units] += grad_gx[t+1, rows] @ w_hh[:, units]
//                     (the recurrent part from the step after, one GEMM), then one pass over the
//                     slice: gate gradients into grad_gx[t], dc (in place)
// grad_w_hh (and grad_w_hr) are GEMMs over all steps after the loop.
#include <torch/library.h>

#include "cpu/cpu_common.h"

namespace fused_rnn::cpu {
namespace {

// ---------------------------------------------------------------------------------------------
// Pointwise passes.
// ---------------------------------------------------------------------------------------------

// The units [j0, j0 + n) of one forward step, batch rows [b0, b1). Row-major arrays with the
// batch row first: gx_t/gates_t [B, 4H] (gate k of unit j at k*H + j), pre [b1 - b0, 4n] (row
// b - b0, at k*n + j - j0),
// c/h_raw/cs_t and h/y_t [B, H] (with a projection h_next is h_raw; h and y are then [B, P] and
// written by the commit pass).
template <typename T>
struct ForwardSlice {
  int64_t B, b0, b1, H, j0, n, t, T_steps;
  const T* gx_t;
  const T* gx_next;   // gx of the next step (prefetched), or nullptr
  const T* pre;       // this slice's recurrent product h_prev @ w_hh[rows of the slice]^T
  const T* h_prev;    // [B, H] state before the step (kept by finished sequences), or nullptr
  T* h_next;          // [B, H] state after the step, or h_raw with a projection
  T* c;               // [B, H] cell state, updated in place
  T* y_t;             // [B, H] output, or nullptr with a projection (written after the GEMM)
  T* gates_t;         // saved activations, or nullptr
  T* cs_t;            // saved cell state, or nullptr
  const int64_t* lengths;
};

// One batch row of a slice. Plain restrict pointers (not struct members) let the compiler
// vectorise the loop over units.
template <bool kSave, bool kWriteY, typename T>
__attribute__((always_inline)) inline void lstm_forward_row(
    int64_t n, int64_t H, const T* __restrict__ x, const T* __restrict__ p, T* __restrict__ c,
    T* __restrict__ h, T* __restrict__ y, T* __restrict__ g, T* __restrict__ cs) {
  for (int64_t j = 0; j < n; ++j) {
    const LSTMGates<T> gate = lstm_activate(x[j] + p[j], x[H + j] + p[n + j],
                                            x[2 * H + j] + p[2 * n + j],
                                            x[3 * H + j] + p[3 * n + j]);
    const T c_new = lstm_cell_state(gate, c[j]);
    const T h_new = lstm_hidden(gate, c_new);
    c[j] = c_new;
    h[j] = h_new;
    if constexpr (kWriteY) y[j] = h_new;
    if constexpr (kSave) {
      g[j] = gate.i;
      g[H + j] = gate.f;
      g[2 * H + j] = gate.g;
      g[3 * H + j] = gate.o;
      cs[j] = c_new;
    }
  }
}

template <typename T>
__attribute__((always_inline)) inline void lstm_forward_slice_impl(const ForwardSlice<T>& s) {
  const int64_t H = s.H, j0 = s.j0, n = s.n;
  for (int64_t b = s.b0; b < s.b1; ++b) {
    const int64_t row = b * H + j0;  // unit j0 of batch row b in [B, H] arrays
    if (s.gx_next) {
      for (int64_t k = 0; k < 4; ++k) prefetch_range(s.gx_next + b * 4 * H + k * H + j0, n);
    }
    if (!step_is_valid(s.t, length_of(s.lengths, b, s.T_steps))) {
      // Finished sequence: the state stays, the output is zero, the workspace is unused.
      if (s.h_prev) std::copy_n(s.h_prev + row, n, s.h_next + row);
      if (s.y_t) std::fill_n(s.y_t + row, n, T(0));
      if (s.gates_t) {
        for (int64_t k = 0; k < 4; ++k) std::fill_n(s.gates_t + b * 4 * H + k * H + j0, n, T(0));
        std::copy_n(s.c + row, n, s.cs_t + row);
      }
      continue;
    }
    const T* x = s.gx_t + b * 4 * H + j0;
    const T* p = s.pre + (b - s.b0) * 4 * n;
    // Every combination is its own loop: a branch inside would stop the vectorisation.
    T* c = s.c + row;
    T* h = s.h_next + row;
    T* y = s.y_t ? s.y_t + row : nullptr;
    T* g = s.gates_t ? s.gates_t + b * 4 * H + j0 : nullptr;
    T* cs = s.cs_t ? s.cs_t + row : nullptr;
    if (g && y) lstm_forward_row<true, true>(n, H, x, p, c, h, y, g, cs);
    if (g && !y) lstm_forward_row<true, false>(n, H, x, p, c, h, y, g, cs);
    if (!g && y) lstm_forward_row<false, true>(n, H, x, p, c, h, y, g, cs);
    if (!g && !y) lstm_forward_row<false, false>(n, H, x, p, c, h, y, g, cs);
  }
}

// The units [j0, j0 + n) of one backward step, batch rows [b0, b1).
template <typename T>
struct BackwardSlice {
  int64_t B, b0, b1, H, j0, n, t, T_steps;
  bool reverse;
  const T* gates;   // [T, B, 4H] all steps (c_prev is read from cs of the neighbouring step)
  const T* cs;      // [T, B, H]
  const T* c0;      // [B, H]
  T* dh;            // [b1 - b0, n] gradient reaching h_t (or h_raw with a projection) of these units
  bool zero_dh;     // dh is the carried state: zero it on real steps (the next GEMM adds to it)
  const T* dy_t;    // [B, H] gradient of y_t, added to dh; nullptr if none or already added
  T* dc;            // [B, H] gradient reaching c_t, updated in place to c_{t-1}
  T* dgx_t;         // [B, 4H]
  const int64_t* lengths;
  int64_t t_next;   // the step the next position runs (its rows are prefetched), or -1
  const T* dy;      // [T, B, H] all steps, or nullptr
};

template <bool kHasDy, typename T>
__attribute__((always_inline)) inline void lstm_backward_row(
    int64_t n, int64_t H, const T* __restrict__ g, const T* __restrict__ c,
    const T* __restrict__ c_prev, const T* __restrict__ dh_in, const T* __restrict__ dy,
    T* __restrict__ dc, T* __restrict__ da) {
  for (int64_t j = 0; j < n; ++j) {
    const LSTMGates<T> gate{g[j], g[H + j], g[2 * H + j], g[3 * H + j]};
    const T dh = kHasDy ? dh_in[j] + dy[j] : dh_in[j];
    LSTMGates<T> d;
    dc[j] = lstm_cell_backward(gate, c[j], c_prev[j], dh, dc[j], d);
    da[j] = d.i;
    da[H + j] = d.f;
    da[2 * H + j] = d.g;
    da[3 * H + j] = d.o;
  }
}

template <typename T>
__attribute__((always_inline)) inline void lstm_backward_slice_impl(const BackwardSlice<T>& s) {
  const int64_t B = s.B, H = s.H, j0 = s.j0, n = s.n, t = s.t;
  for (int64_t b = s.b0; b < s.b1; ++b) {
    T* da = s.dgx_t + b * 4 * H + j0;
    const int64_t length = length_of(s.lengths, b, s.T_steps);
    if (!step_is_valid(t, length)) {
      // padded step: no gradient; the state gradients pass through unchanged
      for (int64_t k = 0; k < 4; ++k) std::fill_n(da + k * H, n, T(0));
      continue;
    }
    const int64_t row = b * H + j0;
    if (s.t_next >= 0) {
      for (int64_t k = 0; k < 4; ++k) prefetch_range(s.gates + (s.t_next * B + b) * 4 * H + k * H + j0, n);
      prefetch_range(s.cs + s.t_next * B * H + row, n);
      if (s.dy) prefetch_range(s.dy + s.t_next * B * H + row, n);
    }
    const T* g = s.gates + (t * B + b) * 4 * H + j0;
    const T* c = s.cs + t * B * H + row;
    const T* c_prev = step_is_first(t, length, s.reverse)
                          ? s.c0 + row
                          : s.cs + prev_time(t, s.reverse) * B * H + row;
    T* dh = s.dh + (b - s.b0) * n;
    if (s.dy_t) {
      lstm_backward_row<true>(n, H, g, c, c_prev, dh, s.dy_t + row, s.dc + row, da);
    } else {
      lstm_backward_row<false, T>(n, H, g, c, c_prev, dh, nullptr, s.dc + row, da);
    }
    if (s.zero_dh) std::fill_n(dh, n, T(0));
  }
}

// Float row passes are compiled per ISA (cpu/cpu_isa.h); double needs no variants.
FUSED_RNN_CPU_ISA_VARIANTS(lstm_forward_slice, (const ForwardSlice<float>& s), (s),
                           lstm_forward_slice_impl(s))
void lstm_forward_slice(const ForwardSlice<double>& s) { lstm_forward_slice_impl(s); }
FUSED_RNN_CPU_ISA_VARIANTS(lstm_backward_slice, (const BackwardSlice<float>& s), (s),
                           lstm_backward_slice_impl(s))
void lstm_backward_slice(const BackwardSlice<double>& s) { lstm_backward_slice_impl(s); }

// With a projection, the new h comes from a GEMM into `h_proj`; it becomes the state and y on
// real steps (a finished sequence keeps h_prev and emits zeros).
template <typename T>
void commit_projected(int64_t B, int64_t P, int64_t t, int64_t T_steps, const int64_t* lengths,
                      const T* h_proj, const T* h_prev, T* h_next, T* y_t) {
  for (int64_t b = 0; b < B; ++b) {
    if (step_is_valid(t, length_of(lengths, b, T_steps))) {
      std::copy_n(h_proj + b * P, P, h_next + b * P);
      std::copy_n(h_proj + b * P, P, y_t + b * P);
    } else {
      std::copy_n(h_prev + b * P, P, h_next + b * P);
      std::fill_n(y_t + b * P, P, T(0));
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Drivers (compute dtype T, contiguous tensors).
// ---------------------------------------------------------------------------------------------

template <typename T>
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> lstm_forward_impl(
    const Tensor& gx, const Tensor& w_hh, const optional<Tensor>& w_hr, const Tensor& h0,
    const Tensor& c0, const optional<Tensor>& lengths, bool reverse, bool save,
    const RecurrenceSizes& n) {
  const int64_t T_steps = n.T, B = n.B, H = n.H, P = n.P;
  const auto opts = gx.options();
  const bool proj = has(w_hr);

  Tensor y = cpu_output({T_steps, B, P}, opts);
  // [B, P] each: h_state[s % 2] is h before step s, h_state[(s + 1) % 2] after it
  const Tensor h_state[2] = {h0.clone(), at::empty({B, P}, opts)};
  Tensor c = c0.clone();       // [B, H], updated in place
  Tensor h_raw = proj ? at::zeros({B, H}, opts) : Tensor();  // o * tanh(c) before w_hr
  Tensor h_proj = proj ? at::empty({B, P}, opts) : Tensor();
  Tensor gates = save ? cpu_output({T_steps, B, 4 * H}, opts) : empty_placeholder(opts);
  Tensor cs = save ? cpu_output({T_steps, B, H}, opts) : empty_placeholder(opts);
  const std::optional<StepOperand> w_hr_t =
      proj ? std::optional<StepOperand>(StepOperand(w_hr->t(), B, kForwardPackedMaxRows))
           : std::nullopt;
  const int64_t* len = data_or_null<int64_t>(lengths);
  // with a projection, h of all rows comes from one product between the steps
  const Partition part(H, B, B * 4 * H * P, T_steps, /*split_rows=*/!proj);
  ForwardGemms slices(part, w_hh, 4, T_steps);

  // Slice k of step s: its units' gate products, then their cell maths.
  auto step = [&](int64_t k, int64_t s) {
    const int64_t t = time_at(s, T_steps, reverse);
    const Tensor& h_prev = h_state[s % 2];
    const Tensor& h_next = h_state[(s + 1) % 2];
    slices.run(k, h_prev);
    const ForwardSlice<T> slice{B,
                                part.row_begin(k),
                                part.row_end(k),
                                H,
                                part.begin(k),
                                part.units(k),
                                t,
                                T_steps,
                                gx.data_ptr<T>() + t * B * 4 * H,
                                step_data_or_null<T>(gx, time_or_none(s + 1, T_steps, reverse)),
                                slices.pre[k].data_ptr<T>(),
                                // with a projection the commit below handles finished rows
                                proj ? nullptr : h_prev.data_ptr<T>(),
                                proj ? h_raw.data_ptr<T>() : h_next.data_ptr<T>(),
                                c.data_ptr<T>(),
                                proj ? nullptr : y.data_ptr<T>() + t * B * P,
                                save ? gates.data_ptr<T>() + t * B * 4 * H : nullptr,
                                save ? cs.data_ptr<T>() + t * B * H : nullptr,
                                len};
    lstm_forward_slice(slice);
  };
  if (!proj) {
    part.for_each_step(T_steps, step);
  } else {
    // The projection's product needs all units of h_raw: it runs between the steps.
    for (int64_t s = 0; s < T_steps; ++s) {
      const int64_t t = time_at(s, T_steps, reverse);
      part.for_each([&](int64_t k) { step(k, s); });
      w_hr_t->multiply(h_proj, h_raw, false);
      commit_projected(B, P, t, T_steps, len, h_proj.data_ptr<T>(), h_state[s % 2].data_ptr<T>(),
                       h_state[(s + 1) % 2].data_ptr<T>(), y.data_ptr<T>() + t * B * P);
    }
  }
  return {y, h_state[T_steps % 2], c, gates, cs};
}

template <typename T>
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> lstm_backward_impl(
    const optional<Tensor>& grad_y, const optional<Tensor>& grad_h_n,
    const optional<Tensor>& grad_c_n, const Tensor& w_hh, const optional<Tensor>& w_hr,
    const Tensor& h0, const Tensor& c0, const Tensor& y, const Tensor& gates, const Tensor& cs,
    const optional<Tensor>& lengths, bool reverse, const RecurrenceSizes& n) {
  const int64_t T_steps = n.T, B = n.B, H = n.H, P = n.P;
  const auto opts = y.options();
  const bool proj = has(w_hr);
  const int64_t* len = data_or_null<int64_t>(lengths);
  const T* dy = data_or_null<T>(grad_y);

  Tensor grad_gx = cpu_output({T_steps, B, 4 * H}, opts);
  Tensor dc = has(grad_c_n) ? grad_c_n->clone() : at::zeros({B, H}, opts);  // [B, H]
  // Units of the cell maths; without a projection they are also the columns of dh.
  const Partition units(H, B, B * 4 * H * P, T_steps, /*split_rows=*/!proj);
  const Partition columns = proj ? Partition(P, B, B * 4 * H * P, T_steps, false) : units;
  BackwardState state(columns, w_hh, grad_h_n, len);

  // With a projection: the total gradient of every step's h (for grad_w_hr), and per unit
  // slice dh_raw = dh_total[t] @ w_hr[:, units].
  Tensor dh_total = proj ? at::zeros({T_steps, B, P}, opts) : Tensor();
  std::vector<Tensor> dh_raw;
  std::vector<StepOperand> w_hr_units;
  for (int64_t k = 0; proj && k < units.size(); ++k) {
    dh_raw.push_back(at::empty({B, units.units(k)}, opts));
    // K = P, as in the forward's products
    w_hr_units.emplace_back(w_hr->narrow(1, units.begin(k), units.units(k)), B,
                            kForwardPackedMaxRows);
  }

  // t_next: the step of the next position (prefetched), or -1.
  auto cell_backward = [&](int64_t k, int64_t t, int64_t t_next, T* dh, bool zero_dh,
                           const T* dy_t) {
    const BackwardSlice<T> slice{B, units.row_begin(k), units.row_end(k), H, units.begin(k),
                                 units.units(k), t, T_steps, reverse,
                                 gates.data_ptr<T>(), cs.data_ptr<T>(), c0.data_ptr<T>(),
                                 dh, zero_dh, dy_t, dc.data_ptr<T>(),
                                 grad_gx.data_ptr<T>() + t * B * 4 * H, len, t_next,
                                 proj ? nullptr : dy};
    lstm_backward_slice(slice);
  };

  if (!proj) {
    // Position i runs step s = T - 1 - i of the forward order.
    units.for_each_step(T_steps, [&](int64_t k, int64_t i) {
      const int64_t s = T_steps - 1 - i, t = time_at(s, T_steps, reverse);
      if (i > 0) state.add_recurrent(k, grad_gx, time_at(s + 1, T_steps, reverse));
      cell_backward(k, t, time_or_none(s - 1, T_steps, reverse), state.dh[k].data_ptr<T>(), true,
                    dy ? dy + t * B * P : nullptr);
    });
  } else {
    for (int64_t s = T_steps - 1; s >= 0; --s) {
      const int64_t t = time_at(s, T_steps, reverse);
      const bool has_after = s + 1 < T_steps;
      // With a projection the columns of dh (P) and the units (H) are split differently, so
      // dh_total[t] is completed before any unit slice reads it: two fork/joins per step.
      T* total = dh_total.data_ptr<T>() + t * B * P;
      columns.for_each([&](int64_t k) {
        if (has_after) state.add_recurrent(k, grad_gx, time_at(s + 1, T_steps, reverse));
        const int64_t p0 = columns.begin(k), m = columns.units(k);
        T* dh = state.dh[k].data_ptr<T>();
        for (int64_t b = 0; b < B; ++b) {
          if (!step_is_valid(t, length_of(len, b, T_steps))) continue;
          for (int64_t j = 0; j < m; ++j) {
            total[b * P + p0 + j] = dh[b * m + j] + (dy ? dy[(t * B + b) * P + p0 + j] : T(0));
            dh[b * m + j] = T(0);
          }
        }
      });
      const Tensor total_t = dh_total[t];
      units.for_each([&](int64_t k) {
        w_hr_units[k].multiply(dh_raw[k], total_t, false);
        cell_backward(k, t, time_or_none(s - 1, T_steps, reverse), dh_raw[k].data_ptr<T>(), false,
                      nullptr);
      });
    }
  }
  // The recurrent part of the first step's gate gradients reaches h0.
  if (T_steps > 0) {
    columns.for_each([&](int64_t k) { state.add_recurrent(k, grad_gx, time_at(0, T_steps, reverse)); });
  }

  Tensor grad_h0 = state.release();
  Tensor grad_w_hh = cpu_recurrent_weight_grad(grad_gx, y, h0, lengths, reverse);
  Tensor grad_w_hr = empty_placeholder(opts);
  if (proj) {
    // grad_w_hr[P, H] = sum_t dh_total[t]^T h_raw[t], h_raw = o * tanh(c) recomputed.
    const Tensor o = gates.narrow(2, 3 * H, H);
    const Tensor h_raw = o * at::tanh(cs);
    grad_w_hr = at::mm(dh_total.reshape({-1, P}).t(), h_raw.reshape({-1, H}));
  }
  return {grad_gx, grad_w_hh, grad_w_hr, grad_h0, dc};
}

// ---------------------------------------------------------------------------------------------
// Op entry points: check, convert to the compute dtype, dispatch, convert back.
// ---------------------------------------------------------------------------------------------

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> lstm_forward_cpu(
    const Tensor& gx, const Tensor& w_hh, const optional<Tensor>& w_hr, const Tensor& h0,
    const Tensor& c0, const optional<Tensor>& lengths, bool reverse, bool save_for_backward) {
  const AutocastOff autocast_off;
  const RecurrenceSizes n =
      check_forward_inputs("fused_rnn::lstm_forward", 4, gx, w_hh, w_hr, h0, c0, c10::nullopt, lengths);
  const auto storage = gx.scalar_type();
  const auto lengths_c = has(lengths) ? optional<Tensor>(lengths->contiguous()) : c10::nullopt;
  auto out = AT_DISPATCH_FLOATING_TYPES(compute_dtype(storage), "lstm_forward_cpu", [&] {
    return lstm_forward_impl<scalar_t>(to_compute(gx), to_compute(w_hh), to_compute(w_hr),
                                       to_compute(h0), to_compute(c0), lengths_c, reverse,
                                       save_for_backward, n);
  });
  auto back = [&](const Tensor& t) { return to_storage(t, storage); };
  return {back(std::get<0>(out)), back(std::get<1>(out)), back(std::get<2>(out)),
          back(std::get<3>(out)), back(std::get<4>(out))};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> lstm_backward_cpu(
    const optional<Tensor>& grad_y, const optional<Tensor>& grad_h_n,
    const optional<Tensor>& grad_c_n, const Tensor& w_hh, const optional<Tensor>& w_hr,
    const Tensor& h0, const Tensor& c0, const Tensor& y, const Tensor& gates, const Tensor& cs,
    const optional<Tensor>& lengths, bool reverse) {
  const AutocastOff autocast_off;
  const char* op = "fused_rnn::lstm_backward";
  const RecurrenceSizes n = check_backward_inputs(op, 4, w_hh, w_hr, h0, c0, y, lengths, grad_y,
                                                  grad_h_n, grad_c_n);
  check_workspace(op, "gates", gates, y, {n.T, n.B, 4 * n.H});
  check_workspace(op, "cs", cs, y, {n.T, n.B, n.H});
  const auto storage = y.scalar_type();
  const auto lengths_c = has(lengths) ? optional<Tensor>(lengths->contiguous()) : c10::nullopt;
  auto out = AT_DISPATCH_FLOATING_TYPES(compute_dtype(storage), "lstm_backward_cpu", [&] {
    return lstm_backward_impl<scalar_t>(to_compute(grad_y), to_compute(grad_h_n),
                                        to_compute(grad_c_n), to_compute(w_hh), to_compute(w_hr),
                                        to_compute(h0), to_compute(c0), to_compute(y),
                                        to_compute(gates), to_compute(cs), lengths_c, reverse, n);
  });
  auto back = [&](const Tensor& t) { return to_storage(t, storage); };
  return {back(std::get<0>(out)), back(std::get<1>(out)), back(std::get<2>(out)),
          back(std::get<3>(out)), back(std::get<4>(out))};
}

}  // namespace

TORCH_LIBRARY_IMPL(fused_rnn, CPU, m) {
  m.impl("lstm_forward", &lstm_forward_cpu);
  m.impl("lstm_backward", &lstm_backward_cpu);
}

}  // namespace fused_rnn::cpu
