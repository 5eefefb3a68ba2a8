// LSTM recurrence on the CPU, forward and backward (see csrc/ops.cpp for the op contract).
//
// Forward, per step:  gates_pre[B, 4H] = h @ w_hh^T           (one GEMM)
//                     one pass over the rows: activations, c, h (in place), y_t, workspace
//                     with a projection: h = h_raw @ w_hr^T   (a second GEMM) and a commit pass
// Backward, per step: one pass over the rows: gate gradients into grad_gx[t], dc (in place)
//                     dh += grad_gx[t] @ w_hh                  (one GEMM)
// grad_w_hh (and grad_w_hr) are GEMMs over all steps after the loop.
#include <torch/library.h>

#include "cpu/cpu_common.h"

namespace fused_rnn::cpu {
namespace {

// ---------------------------------------------------------------------------------------------
// Row passes. Arrays are row-major with the batch row first: gx_t/pre/gates_t [B, 4H],
// c/h_raw/cs_t [B, H], h/y_t [B, P] (P = H without projection).
// ---------------------------------------------------------------------------------------------

template <typename T>
struct ForwardStep {
  int64_t H, t, T_steps;
  const T* gx_t;        // [B, 4H]
  const T* pre;         // [B, 4H] recurrent product h_prev @ w_hh^T
  T* c;                 // [B, H]  cell state, updated in place
  T* h_out;             // [B, H]  h (no projection, updated in place) or h_raw
  T* y_t;               // [B, H]  output, or nullptr with a projection (written later)
  T* gates_t;           // [B, 4H] saved activations, or nullptr
  T* cs_t;              // [B, H]  saved cell state, or nullptr
  const int64_t* lengths;
};

template <bool kSave, typename T>
__attribute__((always_inline)) inline void lstm_forward_rows_impl(const ForwardStep<T>& s,
                                                                  int64_t b0, int64_t b1) {
  const int64_t H = s.H;
  for (int64_t b = b0; b < b1; ++b) {
    T* __restrict__ c = s.c + b * H;
    T* __restrict__ h = s.h_out + b * H;
    if (!step_is_valid(s.t, length_of(s.lengths, b, s.T_steps))) {
      // Finished sequence: the state stays, the output is zero, the workspace is unused.
      if (s.y_t) std::fill_n(s.y_t + b * H, H, T(0));
      if constexpr (kSave) {
        std::fill_n(s.gates_t + b * 4 * H, 4 * H, T(0));
        std::copy_n(c, H, s.cs_t + b * H);
      }
      continue;
    }
    const T* __restrict__ x = s.gx_t + b * 4 * H;
    const T* __restrict__ p = s.pre + b * 4 * H;
    T* __restrict__ g = kSave ? s.gates_t + b * 4 * H : nullptr;
    for (int64_t j = 0; j < H; ++j) {
      const LSTMGates<T> gate = lstm_activate(x[j] + p[j], x[H + j] + p[H + j],
                                              x[2 * H + j] + p[2 * H + j],
                                              x[3 * H + j] + p[3 * H + j]);
      const T c_new = lstm_cell_state(gate, c[j]);
      c[j] = c_new;
      h[j] = lstm_hidden(gate, c_new);
      if constexpr (kSave) {
        g[j] = gate.i;
        g[H + j] = gate.f;
        g[2 * H + j] = gate.g;
        g[3 * H + j] = gate.o;
      }
    }
    if (s.y_t) std::copy_n(h, H, s.y_t + b * H);
    if constexpr (kSave) std::copy_n(c, H, s.cs_t + b * H);
  }
}

template <typename T>
__attribute__((always_inline)) inline void lstm_forward_rows_impl(const ForwardStep<T>& s,
                                                                  int64_t b0, int64_t b1) {
  if (s.gates_t) {
    lstm_forward_rows_impl<true>(s, b0, b1);
  } else {
    lstm_forward_rows_impl<false>(s, b0, b1);
  }
}

template <typename T>
struct BackwardStep {
  int64_t H, t, T_steps;
  bool reverse;
  const T* gates;       // [T, B, 4H] all steps (the previous step's c is read from cs)
  const T* cs;          // [T, B, H]
  const T* c0;          // [B, H]
  const T* dh_in;       // [B, H] gradient reaching h_t: dh + dy_t (no projection) or dh_raw
  const T* dy_t;        // [B, H] gradient of y_t added to dh_in, or nullptr
  T* dh_state;          // [B, H] zeroed on real steps (the GEMM adds the recurrent part), or nullptr
  T* dc;                // [B, H] gradient reaching c_t, updated in place to c_{t-1}
  T* dgx_t;             // [B, 4H]
  const int64_t* lengths;
  int64_t B;
};

template <typename T>
__attribute__((always_inline)) inline void lstm_backward_rows_impl(const BackwardStep<T>& s,
                                                                   int64_t b0, int64_t b1) {
  const int64_t H = s.H, B = s.B, t = s.t;
  for (int64_t b = b0; b < b1; ++b) {
    T* __restrict__ da = s.dgx_t + b * 4 * H;
    const int64_t length = length_of(s.lengths, b, s.T_steps);
    if (!step_is_valid(t, length)) {
      std::fill_n(da, 4 * H, T(0));  // padded step: no gradient, state gradients pass through
      continue;
    }
    const T* __restrict__ g = s.gates + (t * B + b) * 4 * H;
    const T* __restrict__ c = s.cs + (t * B + b) * H;
    const T* __restrict__ c_prev = step_is_first(t, length, s.reverse)
                                       ? s.c0 + b * H
                                       : s.cs + (prev_time(t, s.reverse) * B + b) * H;
    const T* __restrict__ dh_in = s.dh_in + b * H;
    const T* __restrict__ dy = s.dy_t ? s.dy_t + b * H : nullptr;
    T* __restrict__ dc = s.dc + b * H;
    for (int64_t j = 0; j < H; ++j) {
      const LSTMGates<T> gate{g[j], g[H + j], g[2 * H + j], g[3 * H + j]};
      const T dh = dy ? dh_in[j] + dy[j] : dh_in[j];
      LSTMGates<T> d;
      dc[j] = lstm_cell_backward(gate, c[j], c_prev[j], dh, dc[j], d);
      da[j] = d.i;
      da[H + j] = d.f;
      da[2 * H + j] = d.g;
      da[3 * H + j] = d.o;
    }
    if (s.dh_state) std::fill_n(s.dh_state + b * H, H, T(0));
  }
}

// Float row passes are compiled per ISA (FUSED_RNN_CPU_CLONES); double needs no clones.
FUSED_RNN_CPU_CLONES void lstm_forward_rows(const ForwardStep<float>& s, int64_t b0, int64_t b1) {
  lstm_forward_rows_impl(s, b0, b1);
}
void lstm_forward_rows(const ForwardStep<double>& s, int64_t b0, int64_t b1) {
  lstm_forward_rows_impl(s, b0, b1);
}
FUSED_RNN_CPU_CLONES void lstm_backward_rows(const BackwardStep<float>& s, int64_t b0, int64_t b1) {
  lstm_backward_rows_impl(s, b0, b1);
}
void lstm_backward_rows(const BackwardStep<double>& s, int64_t b0, int64_t b1) {
  lstm_backward_rows_impl(s, b0, b1);
}

// With a projection, the new h comes from a GEMM into `h_proj`; copy it into the state and y
// on real steps (a finished sequence keeps h and emits zeros).
template <typename T>
void commit_projected(int64_t B, int64_t P, int64_t t, int64_t T_steps, const int64_t* lengths,
                      const T* h_proj, T* h, T* y_t) {
  for (int64_t b = 0; b < B; ++b) {
    if (step_is_valid(t, length_of(lengths, b, T_steps))) {
      std::copy_n(h_proj + b * P, P, h + b * P);
      std::copy_n(h_proj + b * P, P, y_t + b * P);
    } else {
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

  Tensor y = empty_output({T_steps, B, P}, opts);
  Tensor h = h0.clone();                         // [B, P] state, updated in place
  Tensor c = c0.clone();                         // [B, H]
  Tensor pre = at::empty({B, 4 * H}, opts);      // recurrent product of one step
  Tensor h_raw = proj ? at::zeros({B, H}, opts) : h;  // zeros: finite in rows never written
  Tensor h_proj = proj ? at::empty({B, P}, opts) : Tensor();
  Tensor gates = save ? empty_output({T_steps, B, 4 * H}, opts) : empty_placeholder(opts);
  Tensor cs = save ? empty_output({T_steps, B, H}, opts) : empty_placeholder(opts);
  const Tensor w_hh_t = w_hh.t();
  const Tensor w_hr_t = proj ? w_hr->t() : Tensor();
  const int64_t* len = data_or_null<int64_t>(lengths);

  for (int64_t s = 0; s < T_steps; ++s) {
    const int64_t t = time_at(s, T_steps, reverse);
    gemm(pre, h, w_hh_t, false);
    ForwardStep<T> step{H,
                        t,
                        T_steps,
                        gx.data_ptr<T>() + t * B * 4 * H,
                        pre.data_ptr<T>(),
                        c.data_ptr<T>(),
                        h_raw.data_ptr<T>(),
                        proj ? nullptr : y.data_ptr<T>() + t * B * P,
                        save ? gates.data_ptr<T>() + t * B * 4 * H : nullptr,
                        save ? cs.data_ptr<T>() + t * B * H : nullptr,
                        len};
    parallel_rows(B, 4 * H, [&](int64_t b0, int64_t b1) { lstm_forward_rows(step, b0, b1); });
    if (proj) {
      gemm(h_proj, h_raw, w_hr_t, false);
      commit_projected(B, P, t, T_steps, len, h_proj.data_ptr<T>(), h.data_ptr<T>(),
                       y.data_ptr<T>() + t * B * P);
    }
  }
  return {y, h, c, gates, cs};
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

  Tensor grad_gx = empty_output({T_steps, B, 4 * H}, opts);
  Tensor dh = has(grad_h_n) ? grad_h_n->clone() : at::zeros({B, P}, opts);  // [B, P]
  Tensor dc = has(grad_c_n) ? grad_c_n->clone() : at::zeros({B, H}, opts);  // [B, H]
  // With a projection: the total gradient of every step's h (for grad_w_hr) and dh_raw.
  Tensor dh_total = proj ? at::zeros({T_steps, B, P}, opts) : Tensor();
  Tensor dh_raw = proj ? at::empty({B, H}, opts) : Tensor();
  const Tensor w_hr_v = proj ? *w_hr : Tensor();
  const T* dy = data_or_null<T>(grad_y);

  for (int64_t s = T_steps - 1; s >= 0; --s) {
    const int64_t t = time_at(s, T_steps, reverse);
    const T* dy_t = dy ? dy + t * B * P : nullptr;
    if (proj) {
      // dh_total[t] = dh + dy_t on real steps; dh restarts from zero there (the GEMM below
      // adds its recurrent part); dh_raw = dh_total[t] @ w_hr.
      T* total = dh_total.data_ptr<T>() + t * B * P;
      T* dh_p = dh.data_ptr<T>();
      for (int64_t b = 0; b < B; ++b) {
        if (!step_is_valid(t, length_of(len, b, T_steps))) continue;
        for (int64_t j = 0; j < P; ++j) {
          total[b * P + j] = dh_p[b * P + j] + (dy_t ? dy_t[b * P + j] : T(0));
          dh_p[b * P + j] = T(0);
        }
      }
      Tensor total_t = dh_total[t];
      gemm(dh_raw, total_t, w_hr_v, false);
    }
    BackwardStep<T> step{H,
                         t,
                         T_steps,
                         reverse,
                         gates.data_ptr<T>(),
                         cs.data_ptr<T>(),
                         c0.data_ptr<T>(),
                         proj ? dh_raw.data_ptr<T>() : dh.data_ptr<T>(),
                         proj ? nullptr : dy_t,
                         proj ? nullptr : dh.data_ptr<T>(),
                         dc.data_ptr<T>(),
                         grad_gx.data_ptr<T>() + t * B * 4 * H,
                         len,
                         B};
    parallel_rows(B, 4 * H, [&](int64_t b0, int64_t b1) { lstm_backward_rows(step, b0, b1); });
    Tensor grad_gx_t = grad_gx[t];
    gemm(dh, grad_gx_t, w_hh, true);
  }

  Tensor grad_w_hh = recurrent_weight_grad(grad_gx, y, h0, lengths, reverse);
  Tensor grad_w_hr = empty_placeholder(opts);
  if (proj) {
    // grad_w_hr[P, H] = sum_t dh_total[t]^T h_raw[t], h_raw = o * tanh(c) recomputed.
    const Tensor o = gates.narrow(2, 3 * H, H);
    const Tensor h_raw = o * at::tanh(cs);
    grad_w_hr = at::mm(dh_total.reshape({-1, P}).t(), h_raw.reshape({-1, H}));
  }
  return {grad_gx, grad_w_hh, grad_w_hr, dh, dc};
}

// ---------------------------------------------------------------------------------------------
// Op entry points: check, convert to the compute dtype, dispatch, convert back.
// ---------------------------------------------------------------------------------------------

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> lstm_forward_cpu(
    const Tensor& gx, const Tensor& w_hh, const optional<Tensor>& w_hr, const Tensor& h0,
    const Tensor& c0, const optional<Tensor>& lengths, bool reverse, bool save_for_backward) {
  const RecurrenceSizes n =
      check_forward_inputs("fused_rnn::lstm_forward", 4, gx, w_hh, w_hr, h0, c0, c10::nullopt, lengths);
  const auto storage = gx.scalar_type();
  const auto lengths_c = has(lengths) ? optional<Tensor>(lengths->contiguous()) : c10::nullopt;
  auto out = AT_DISPATCH_FLOATING_TYPES(compute_dtype(storage), "lstm_forward_cpu", [&] {
    return lstm_forward_impl<scalar_t>(to_compute(gx), to_compute(w_hh), to_compute(w_hr),
                                       to_compute(h0), to_compute(c0), lengths_c, reverse,
                                       save_for_backward, n);
  });
  auto back = [&](const Tensor& t) { return t.to(storage); };
  return {back(std::get<0>(out)), back(std::get<1>(out)), back(std::get<2>(out)),
          back(std::get<3>(out)), back(std::get<4>(out))};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> lstm_backward_cpu(
    const optional<Tensor>& grad_y, const optional<Tensor>& grad_h_n,
    const optional<Tensor>& grad_c_n, const Tensor& w_hh, const optional<Tensor>& w_hr,
    const Tensor& h0, const Tensor& c0, const Tensor& y, const Tensor& gates, const Tensor& cs,
    const optional<Tensor>& lengths, bool reverse) {
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
  auto back = [&](const Tensor& t) { return t.to(storage); };
  return {back(std::get<0>(out)), back(std::get<1>(out)), back(std::get<2>(out)),
          back(std::get<3>(out)), back(std::get<4>(out))};
}

}  // namespace

TORCH_LIBRARY_IMPL(fused_rnn, CPU, m) {
  m.impl("lstm_forward", &lstm_forward_cpu);
  m.impl("lstm_backward", &lstm_backward_cpu);
}

}  // namespace fused_rnn::cpu
