// Layer-normalised LSTM with zoneout on the CPU, forward and backward (see
// csrc/layernorm_ops.cpp for the op contract, cpu/layernorm_cpu.h for the phases).
//
// Forward: the input LN's statistics of all rows (cpu/layernorm_cpu.h), then per step, on each
// worker's rows and slice of units, in three phases:
//   0  p[rows, 4n] = h_prev[rows] @ w_hh[the slice's gate rows]^T (one GEMM); the slice's
//      moments of p per row
//   1  mean and rstd of p per row; p̂, a = gx + γ_hh p̂ (gx = LN(xw; γ_ih) + b), the gates,
//      c' = f c + i g; the slice's moments of c' per row
//   2  mean and rstd of c'; h' = o tanh(γ_c ĉ + β_c), zoneout of h and c, y, the workspace
// Backward, per step (reverse order), in three phases, the gates recomputed from xw and p̂:
//   0  dh += dp[step after] @ w_hh[:, units] (one GEMM); zoneout of dh, the gradients of o and of
//      ĉ, the sums of γ_c's and β_c's gradients; the slice's row sums of dĉ and dĉ ĉ
//   1  the cell LN's backward, zoneout of dc, the gate gradients da, dp̂ = da γ_hh and the
//      sums of γ_hh's gradient; the slice's row sums of dp̂ and dp̂ p̂
//   2  the recurrent LN's backward: dp = rstd (dp̂ - mean dp̂ - p̂ mean(dp̂ p̂))
// then the input LN's backward on da of all steps, in place: the gradient of xw.
// grad_w_hh = sum over all steps of dp^T h_prev: GEMMs in the loop, every few steps, by each
// worker on its rows and units (RecurrentGradRing: dp is kept for the last steps only).
#include <torch/library.h>

#include "cpu/layernorm_cpu.h"
#include "layernorm_checks.h"

namespace fused_rnn::cpu {
namespace {

constexpr int64_t kPhases = 3;

// ---------------------------------------------------------------------------------------------
// Forward.
// ---------------------------------------------------------------------------------------------

// The input side and the recurrent LN's γ of one row: gate q of unit j at q*H + j.
template <typename T>
struct GateInputs {
  InputRow<T> input;
  const T* gamma_hh;  // [4H]

  // Gate q's pre-activation at offset i = q*H + j: gx + γ_hh p̂.
  __attribute__((always_inline)) T preactivation(int64_t i, T p_hat) const {
    return input.gate(i) + gamma_hh[i] * p_hat;
  }
};

// Worker k's part of one forward step: batch rows [b0, b1), units [j0, j0 + n). Row-major
// arrays with the batch row first: xw_t, p_hat_t [B, 4H] (gate q of unit j at q*H + j); p
// [b1 - b0, 4n] (gate q of unit j at q*n + j - j0); cell [b1 - b0, 2n] (c', then o); h_prev,
// h_next, c, y_t, c_hat_t, cs_t [B, H]; stats_t [B, 4] (mean and rstd of the input LN, filled
// before the loop; rstd of the recurrent and of the cell LN) or, without the workspace, [B, 2].
template <typename T>
struct ForwardSlice {
  int64_t B, b0, b1, H, j0, n, k, t, T_steps;
  double eps;
  const T* xw_t;
  const T* p;          // this slice's recurrent product h_prev @ w_hh[rows of the slice]^T
  T* cell;             // c' and o between phases 1 and 2
  const T* gamma_ih;   // [4H]
  const T* bias;       // [4H]
  const T* gamma_hh;   // [4H]
  const T* gamma_c;    // [H]
  const T* beta_c;     // [H]
  const T* h_prev;
  T* h_next;
  T* c;                // cell state, updated in place
  T* y_t;
  Zoneout zoneout_h, zoneout_c;
  T* stats_t;
  int64_t stats_width;  // 4 with the workspace, else 2
  T* p_hat_t;          // the workspace, or nullptr
  T* c_hat_t;
  T* cs_t;
  const int64_t* lengths;
  SliceStatistics* p_stats;
  SliceStatistics* c_stats;
};

// Phase 1 of one row: gate values and c' of the slice's units.
template <bool kSave, typename T>
__attribute__((always_inline)) inline void gates_row(
    int64_t n, int64_t H, const GateInputs<T>& in, const T* __restrict__ p, T mean, T rstd,
    const T* __restrict__ c_prev, T* __restrict__ cell, T* __restrict__ p_hat) {
  for (int64_t j = 0; j < n; ++j) {
    T a[4];
    for (int64_t q = 0; q < 4; ++q) {
      const T normalised = (p[q * n + j] - mean) * rstd;
      a[q] = in.preactivation(q * H + j, normalised);
      if constexpr (kSave) p_hat[q * H + j] = normalised;
    }
    const LSTMGates<T> gate = lstm_activate(a[0], a[1], a[2], a[3]);
    cell[j] = lstm_cell_state(gate, c_prev[j]);
    cell[n + j] = gate.o;
  }
}

// Phase 2 of one row: h', zoneout, the new states and the output.
template <bool kSave, typename T, typename KeepH, typename KeepC>
__attribute__((always_inline)) inline void output_row(
    int64_t n, const T* __restrict__ cell, T mean, T rstd, const T* __restrict__ gamma_c,
    const T* __restrict__ beta_c, KeepH keep_h, KeepC keep_c, const T* __restrict__ h_prev,
    T* __restrict__ h_next,
    T* __restrict__ c, T* __restrict__ y, T* __restrict__ c_hat, T* __restrict__ cs) {
  for (int64_t j = 0; j < n; ++j) {
    const T normalised = (cell[j] - mean) * rstd;
    const T h_new = cell[n + j] * tanh_(gamma_c[j] * normalised + beta_c[j]);
    const T h = keep_h.state(j, h_prev[j], h_new);
    const T c_state = keep_c.state(j, c[j], cell[j]);
    h_next[j] = h;
    y[j] = h;
    c[j] = c_state;
    if constexpr (kSave) {
      c_hat[j] = normalised;
      cs[j] = c_state;
    }
  }
}

template <typename T>
__attribute__((always_inline)) inline void forward_phase_impl(const ForwardSlice<T>& s,
                                                              int64_t phase) {
  const int64_t B = s.B, H = s.H, j0 = s.j0, n = s.n, t = s.t;
  const bool save = s.p_hat_t != nullptr;
  for (int64_t b = s.b0; b < s.b1; ++b) {
    const bool valid = step_is_valid(t, length_of(s.lengths, b, s.T_steps));
    const int64_t row = b * H + j0, r = b - s.b0;
    T* stats = s.stats_t + b * s.stats_width;
    if (phase == 0) {
      if (!valid) continue;
      const SliceMoments<T> m = slice_moments(4 * n, s.p + r * 4 * n);
      s.p_stats->put(s.k, b, m.sum, m.m2);
    } else if (phase == 1) {
      if (!valid) continue;
      const auto [mean, rstd] = s.p_stats->mean_rstd(b, s.eps);
      T* cell = s.cell + r * 2 * n;
      const GateInputs<T> in{{s.xw_t + b * 4 * H + j0, stats[0], stats[1], s.gamma_ih + j0,
                              s.bias + j0},
                             s.gamma_hh + j0};
      const T* p = s.p + r * 4 * n;
      if (save) {
        gates_row<true>(n, H, in, p, T(mean), T(rstd), s.c + row, cell,
                        s.p_hat_t + b * 4 * H + j0);
      } else {
        gates_row<false>(n, H, in, p, T(mean), T(rstd), s.c + row, cell,
                         static_cast<T*>(nullptr));
      }
      const SliceMoments<T> m = slice_moments(n, cell);
      s.c_stats->put(s.k, b, m.sum, m.m2);
    } else if (!valid) {
      // Finished sequence: the state stays, the output is zero, the workspace is unused.
      std::copy_n(s.h_prev + row, n, s.h_next + row);
      std::fill_n(s.y_t + row, n, T(0));
      if (save) {
        for (int64_t q = 0; q < 4; ++q) std::fill_n(s.p_hat_t + b * 4 * H + q * H + j0, n, T(0));
        std::fill_n(s.c_hat_t + row, n, T(0));
        std::copy_n(s.c + row, n, s.cs_t + row);
        if (j0 == 0) std::fill_n(stats + 2, 2, T(0));
      }
    } else {
      const auto [mean, rstd] = s.c_stats->mean_rstd(b, s.eps);
      const T* cell = s.cell + r * 2 * n;
      // always_inline: a lambda does not inherit the caller's target ISA unless inlined
      auto run = [&](auto keep_h, auto keep_c) __attribute__((always_inline)) {
        if (save) {
          output_row<true>(n, cell, T(mean), T(rstd), s.gamma_c + j0, s.beta_c + j0, keep_h,
                           keep_c, s.h_prev + row, s.h_next + row, s.c + row, s.y_t + row,
                           s.c_hat_t + row, s.cs_t + row);
        } else {
          output_row<false>(n, cell, T(mean), T(rstd), s.gamma_c + j0, s.beta_c + j0, keep_h,
                            keep_c, s.h_prev + row, s.h_next + row, s.c + row, s.y_t + row,
                            static_cast<T*>(nullptr), static_cast<T*>(nullptr));
        }
      };
      auto with_keep_c = [&](auto keep_h) __attribute__((always_inline)) {
        auto run_c = [&](auto keep_c) __attribute__((always_inline)) { run(keep_h, keep_c); };
        with_keep(s.zoneout_c.row(t, b, B, H, j0), T(s.zoneout_c.p), run_c);
      };
      with_keep(s.zoneout_h.row(t, b, B, H, j0), T(s.zoneout_h.p), with_keep_c);
      if (save && j0 == 0) {  // one worker per row writes the row's statistics
        stats[2] = T(s.p_stats->mean_rstd(b, s.eps).second);
        stats[3] = T(rstd);
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Backward.
// ---------------------------------------------------------------------------------------------

// Worker k's part of one backward step. xw and the workspace arrays of all steps ([T, B, ...],
// c_prev is read from cs of the neighbouring step); dgx_t [B, 4H] (da, the gradient of gx);
// dp_t the step's rows in RecurrentGradRing's ring (row b at b * 4H); dh [b1 - b0, n] (the
// gradient reaching h of its units, carried from step to step); dc [B, H] in place; dc_hat
// [b1 - b0, n] and dp_hat [b1 - b0, 4n] between phases.
template <typename T>
struct BackwardSlice {
  int64_t B, b0, b1, H, j0, n, k, t, T_steps;
  bool reverse;
  const T* xw;
  const T* gamma_ih;
  const T* bias;
  const T* p_hat;
  const T* c_hat;
  const T* cs;
  const T* stats;      // [T, B, 4]
  const T* c0;
  const T* gamma_hh;
  const T* gamma_c;
  const T* beta_c;
  Zoneout zoneout_h, zoneout_c;
  const T* dy_t;       // [B, H] or nullptr
  T* dh;
  T* dc;
  T* gates;            // [b1 - b0, 4n]: i, f, g, o, recomputed in phase 0 for phase 1
  T* dc_hat;
  T* dp_hat;
  T* dgx_t;
  T* dp_t;
  double* gamma_hh_grad;  // the worker's sums: [4n]
  double* cell_grad;      // [2n]: γ_c's, then β_c's
  const int64_t* lengths;
  SliceStatistics* dc_stats;
  SliceStatistics* dp_stats;
};

// Phase 0 of one row, first: the gates of the slice's units, recomputed from the input side and
// p̂ as the forward computed them (gate q of unit j at q*n + j). A loop of its own, which the
// compiler vectorises (inside the loops below the activations would run one unit at a time).
template <typename T>
__attribute__((always_inline)) inline void recompute_gates_row(int64_t n, int64_t H,
                                                               const GateInputs<T>& in,
                                                               const T* __restrict__ p_hat,
                                                               T* __restrict__ gates) {
  for (int64_t j = 0; j < n; ++j) {
    T a[4];
    for (int64_t q = 0; q < 4; ++q) a[q] = in.preactivation(q * H + j, p_hat[q * H + j]);
    const LSTMGates<T> gate = lstm_activate(a[0], a[1], a[2], a[3]);
    gates[j] = gate.i;
    gates[n + j] = gate.f;
    gates[2 * n + j] = gate.g;
    gates[3 * n + j] = gate.o;
  }
}

// Phase 0 of one row: zoneout of dh, the gradients of o (into dgx) and of ĉ.
template <bool kHasDy, typename T, typename Keep>
__attribute__((always_inline)) inline void output_backward_row(
    int64_t n, int64_t H, const T* __restrict__ gates, const T* __restrict__ c_hat,
    const T* __restrict__ gamma_c, const T* __restrict__ beta_c, Keep keep_h,
    const T* __restrict__ dy, T* __restrict__ dh, T* __restrict__ dc_hat,
    T* __restrict__ dgx, double* __restrict__ dgamma_c, double* __restrict__ dbeta_c) {
  for (int64_t j = 0; j < n; ++j) {
    const T dh_total = kHasDy ? dh[j] + dy[j] : dh[j];
    const T dh_new = keep_h.next_grad(j, dh_total);
    dh[j] = keep_h.previous_grad(j, dh_total);  // the GEMM of the next position adds to it
    const T o = gates[3 * n + j];
    const T tanh_n = tanh_(gamma_c[j] * c_hat[j] + beta_c[j]);
    const T dn = dh_new * o * (T(1) - tanh_n * tanh_n);
    dgx[3 * H + j] = dh_new * tanh_n * o * (T(1) - o);
    dgamma_c[j] += dn * c_hat[j];
    dbeta_c[j] += dn;
    dc_hat[j] = dn * gamma_c[j];
  }
}

// Phase 1 of one row: the cell LN's backward, zoneout of dc, the gate gradients and dp̂.
template <typename T, typename Keep>
__attribute__((always_inline)) inline void cell_backward_row(
    int64_t n, int64_t H, const T* __restrict__ gates, const T* __restrict__ c_hat,
    const T* __restrict__ c_prev, const T* __restrict__ p_hat, T rstd_c, T mean_dc_hat,
    T mean_dc_hat_c_hat, Keep keep_c, const T* __restrict__ gamma_hh,
    const T* __restrict__ dc_hat, T* __restrict__ dc, T* __restrict__ dgx,
    T* __restrict__ dp_hat, double* __restrict__ dgamma_hh) {
  for (int64_t j = 0; j < n; ++j) {
    const T dc_ln = rstd_c * (dc_hat[j] - mean_dc_hat - c_hat[j] * mean_dc_hat_c_hat);
    const T dc_state = dc[j];
    const T dc_new = keep_c.next_grad(j, dc_state) + dc_ln;
    const T i = gates[j], f = gates[n + j], g = gates[2 * n + j];
    T da[4];
    da[0] = dc_new * g * i * (T(1) - i);
    da[1] = dc_new * c_prev[j] * f * (T(1) - f);
    da[2] = dc_new * i * (T(1) - g * g);
    da[3] = dgx[3 * H + j];
    dc[j] = keep_c.previous_grad(j, dc_state) + dc_new * f;
    for (int64_t q = 0; q < 4; ++q) {
      if (q < 3) dgx[q * H + j] = da[q];
      dp_hat[q * n + j] = da[q] * gamma_hh[q * H + j];
      dgamma_hh[q * n + j] += da[q] * p_hat[q * H + j];
    }
  }
}

template <typename T>
__attribute__((always_inline)) inline void backward_phase_impl(const BackwardSlice<T>& s,
                                                               int64_t phase) {
  const int64_t B = s.B, H = s.H, j0 = s.j0, n = s.n, t = s.t;
  for (int64_t b = s.b0; b < s.b1; ++b) {
    const int64_t length = length_of(s.lengths, b, s.T_steps);
    const int64_t row = b * H + j0, r = b - s.b0;
    const int64_t gate_row = (t * B + b) * 4 * H + j0;  // unit j0 of row b in [T, B, 4H]
    if (!step_is_valid(t, length)) {
      // padded step: no gradient; the state gradients pass through unchanged
      if (phase == 0) zero_padded_step_gradients<4>(b, H, j0, n, s.dgx_t, s.dp_t);
      continue;
    }
    const T* c_hat = s.c_hat + t * B * H + row;
    const T* p_hat = s.p_hat + gate_row;
    T* dgx = s.dgx_t + b * 4 * H + j0;
    T* dc_hat = s.dc_hat + r * n;
    const T* stats = s.stats + (t * B + b) * 4;
    T* gates = s.gates + r * 4 * n;
    T* dp_hat = s.dp_hat + r * 4 * n;
    if (phase == 0) {
      const GateInputs<T> in{{s.xw + gate_row, stats[0], stats[1], s.gamma_ih + j0, s.bias + j0},
                             s.gamma_hh + j0};
      recompute_gates_row(n, H, in, p_hat, gates);
      const T* dy = s.dy_t ? s.dy_t + row : nullptr;
      T* dh = s.dh + r * n;
      auto run = [&](auto keep_h) __attribute__((always_inline)) {
        if (dy) {
          output_backward_row<true>(n, H, gates, c_hat, s.gamma_c + j0,
                                    s.beta_c + j0, keep_h, dy, dh, dc_hat, dgx, s.cell_grad,
                                    s.cell_grad + n);
        } else {
          output_backward_row<false>(n, H, gates, c_hat, s.gamma_c + j0,
                                     s.beta_c + j0, keep_h, dy, dh, dc_hat, dgx, s.cell_grad,
                                     s.cell_grad + n);
        }
      };
      with_keep(s.zoneout_h.row(t, b, B, H, j0), T(s.zoneout_h.p), run);
      const T sum = lane_sum<T>(n, [&](int64_t j) { return dc_hat[j]; });
      const T dot = lane_sum<T>(n, [&](int64_t j) { return dc_hat[j] * c_hat[j]; });
      s.dc_stats->put(s.k, b, sum, dot);
    } else if (phase == 1) {
      const auto [mean, mean_dot] = s.dc_stats->means(b);
      const T* c_prev = step_is_first(t, length, s.reverse)
                            ? s.c0 + row
                            : s.cs + prev_time(t, s.reverse) * B * H + row;
      auto run = [&](auto keep_c) __attribute__((always_inline)) {
        cell_backward_row(n, H, gates, c_hat, c_prev, p_hat, stats[3], T(mean), T(mean_dot),
                          keep_c, s.gamma_hh + j0, dc_hat, s.dc + row, dgx, dp_hat, s.gamma_hh_grad);
      };
      with_keep(s.zoneout_c.row(t, b, B, H, j0), T(s.zoneout_c.p), run);
      const auto [sum, dot] = gate_gradient_sums<4>(n, H, dp_hat, p_hat);
      s.dp_stats->put(s.k, b, sum, dot);
    } else {
      const auto [mean, mean_dot] = s.dp_stats->means(b);
      recurrent_layernorm_backward_row<4>(n, H, dp_hat, p_hat, stats[2], T(mean), T(mean_dot),
                                          s.dp_t + b * 4 * H + j0);
    }
  }
}

// Float phases are compiled per ISA (cpu/cpu_isa.h); double needs no variants.
FUSED_RNN_CPU_ISA_VARIANTS(forward_phase, (const ForwardSlice<float>& s, int64_t phase),
                           (s, phase), forward_phase_impl(s, phase))
void forward_phase(const ForwardSlice<double>& s, int64_t phase) { forward_phase_impl(s, phase); }
FUSED_RNN_CPU_ISA_VARIANTS(backward_phase, (const BackwardSlice<float>& s, int64_t phase),
                           (s, phase), backward_phase_impl(s, phase))
void backward_phase(const BackwardSlice<double>& s, int64_t phase) {
  backward_phase_impl(s, phase);
}

// ---------------------------------------------------------------------------------------------
// Drivers (compute dtype T, contiguous tensors).
// ---------------------------------------------------------------------------------------------

using ForwardOutputs = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>;
using BackwardOutputs =
    std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>;

template <typename T>
ForwardOutputs forward_impl(const Tensor& xw, const Tensor& gamma_ih, const Tensor& bias,
                            const Tensor& w_hh, const Tensor& gamma_hh, const Tensor& gamma_c,
                            const Tensor& beta_c, const Tensor& h0, const Tensor& c0,
                            const Zoneout& zoneout_h, const Zoneout& zoneout_c,
                            const optional<Tensor>& lengths, bool reverse, double eps, bool save,
                            const RecurrenceSizes& n) {
  const int64_t T_steps = n.T, B = n.B, H = n.H;
  const auto opts = xw.options();
  Tensor y = cpu_output({T_steps, B, H}, opts);
  // [B, H] each: h_state[s % 2] is h before step s, h_state[(s + 1) % 2] after it
  const Tensor h_state[2] = {h0.clone(), at::empty({B, H}, opts)};
  Tensor c = c0.clone();
  auto workspace = [&](at::IntArrayRef sizes) {
    return save ? cpu_output(sizes, opts) : empty_placeholder(opts);
  };
  Tensor p_hat = workspace({T_steps, B, 4 * H});
  Tensor c_hat = workspace({T_steps, B, H}), cs = workspace({T_steps, B, H});
  // the statistics of the three LNs (the workspace), or of the input LN alone
  const int64_t stats_width = save ? 4 : 2;
  Tensor stats = at::empty({T_steps, B, stats_width}, opts);
  input_layernorm_statistics(xw.data_ptr<T>(), T_steps * B, 4 * H, eps, stats.data_ptr<T>(),
                             stats_width);
  const int64_t* len = data_or_null<int64_t>(lengths);
  const Partition part(H, B, B * 4 * H * H, T_steps, /*split_rows=*/true);
  ForwardGemms gemms(part, w_hh, 4, T_steps);
  SliceStatistics p_stats(part, 4), c_stats(part, 1);
  std::vector<Tensor> cell;  // per worker: c' and o of its units
  for (int64_t k = 0; k < part.size(); ++k) {
    cell.push_back(at::empty({part.rows(k), 2 * part.units(k)}, opts));
  }

  part.for_each_step(T_steps * kPhases, [&](int64_t k, int64_t position) {
    const int64_t s = position / kPhases, phase = position % kPhases;
    const int64_t t = time_at(s, T_steps, reverse);
    const Tensor& h_prev = h_state[s % 2];
    if (phase == 0) gemms.run(k, h_prev);
    auto at_t = [&](const Tensor& ws, int64_t width) {
      return save ? ws.data_ptr<T>() + t * B * width : nullptr;
    };
    const ForwardSlice<T> slice{B, part.row_begin(k), part.row_end(k), H, part.begin(k),
                                part.units(k), k, t, T_steps, eps,
                                xw.data_ptr<T>() + t * B * 4 * H, gemms.pre[k].data_ptr<T>(),
                                cell[k].data_ptr<T>(), gamma_ih.data_ptr<T>(),
                                bias.data_ptr<T>(), gamma_hh.data_ptr<T>(),
                                gamma_c.data_ptr<T>(), beta_c.data_ptr<T>(),
                                h_prev.data_ptr<T>(), h_state[(s + 1) % 2].data_ptr<T>(),
                                c.data_ptr<T>(), y.data_ptr<T>() + t * B * H, zoneout_h,
                                zoneout_c, stats.data_ptr<T>() + t * B * stats_width,
                                stats_width, at_t(p_hat, 4 * H), at_t(c_hat, H), at_t(cs, H),
                                len, &p_stats, &c_stats};
    forward_phase(slice, phase);
  });
  if (!save) stats = empty_placeholder(opts);
  return {y, h_state[T_steps % 2], c, p_hat, c_hat, cs, stats};
}

template <typename T>
BackwardOutputs backward_impl(const optional<Tensor>& grad_y, const optional<Tensor>& grad_h_n,
                              const optional<Tensor>& grad_c_n, const Tensor& xw,
                              const Tensor& gamma_ih, const Tensor& bias, const Tensor& w_hh,
                              const Tensor& gamma_hh, const Tensor& gamma_c, const Tensor& beta_c,
                              const Tensor& h0, const Tensor& c0, const Zoneout& zoneout_h,
                              const Zoneout& zoneout_c, const Tensor& y, const Tensor& p_hat,
                              const Tensor& c_hat, const Tensor& cs, const Tensor& stats,
                              const optional<Tensor>& lengths, bool reverse,
                              const RecurrenceSizes& n) {
  const int64_t T_steps = n.T, B = n.B, H = n.H;
  const auto opts = y.options();
  const int64_t* len = data_or_null<int64_t>(lengths);
  const T* dy = data_or_null<T>(grad_y);
  // da, the gradient of gx, in the loop; the gradient of xw after it
  Tensor grad_xw = cpu_output({T_steps, B, 4 * H}, opts);
  Tensor dc = has(grad_c_n) ? grad_c_n->clone() : at::zeros({B, H}, opts);
  const Partition units(H, B, B * 4 * H * H, T_steps, /*split_rows=*/true);
  BackwardState state(units, w_hh, grad_h_n, len);
  // dp, the gradient of the recurrent product, of the last steps; and grad_w_hh
  RecurrentGradRing dp(units, 4, T_steps, y, h0, len, reverse);
  SliceStatistics dc_stats(units, 1), dp_stats(units, 4);
  UnitGradients gamma_hh_grad(units, 4), cell_grad(units, 2);
  std::vector<Tensor> gates, dc_hat, dp_hat;  // per worker, between phases
  for (int64_t k = 0; k < units.size(); ++k) {
    gates.push_back(at::empty({units.rows(k), 4 * units.units(k)}, opts));
    dc_hat.push_back(at::empty({units.rows(k), units.units(k)}, opts));
    dp_hat.push_back(at::empty({units.rows(k), 4 * units.units(k)}, opts));
  }

  // Position i runs step s = T - 1 - i of the forward order.
  units.for_each_step(T_steps * kPhases, [&](int64_t k, int64_t position) {
    const int64_t i = position / kPhases, phase = position % kPhases;
    const int64_t s = T_steps - 1 - i, t = time_at(s, T_steps, reverse);
    if (phase == 0 && i > 0) {
      const int64_t t_after = time_at(s + 1, T_steps, reverse);
      state.add_recurrent_from(k, dp.steps(k), dp.slot(i - 1), 0, t_after);
    }
    const BackwardSlice<T> slice{B, units.row_begin(k), units.row_end(k), H, units.begin(k),
                                 units.units(k), k, t, T_steps, reverse, xw.data_ptr<T>(),
                                 gamma_ih.data_ptr<T>(), bias.data_ptr<T>(),
                                 p_hat.data_ptr<T>(), c_hat.data_ptr<T>(), cs.data_ptr<T>(),
                                 stats.data_ptr<T>(), c0.data_ptr<T>(),
                                 gamma_hh.data_ptr<T>(), gamma_c.data_ptr<T>(),
                                 beta_c.data_ptr<T>(), zoneout_h, zoneout_c,
                                 dy ? dy + t * B * H : nullptr, state.dh[k].data_ptr<T>(),
                                 dc.data_ptr<T>(), gates[k].data_ptr<T>(),
                                 dc_hat[k].data_ptr<T>(), dp_hat[k].data_ptr<T>(), grad_xw.data_ptr<T>() + t * B * 4 * H,
                                 dp.step_rows<T>(k, i), gamma_hh_grad.of(k),
                                 cell_grad.of(k), len, &dc_stats, &dp_stats};
    backward_phase(slice, phase);
    if (phase == kPhases - 1) dp.finish_position(k, i, t);
  });
  // The recurrent part of the first step's gradients reaches h0.
  if (T_steps > 0) {
    units.for_each([&](int64_t k) {
      const int64_t t_first = time_at(0, T_steps, reverse);
      state.add_recurrent_from(k, dp.steps(k), dp.slot(T_steps - 1), 0, t_first);
    });
  }
  Tensor grad_h0 = state.release();
  Tensor grad_w_hh = dp.total();
  const auto [grad_gamma_ih, grad_bias] = input_layernorm_backward(
      grad_xw.data_ptr<T>(), xw.data_ptr<T>(), InputStatistics<T>{stats.data_ptr<T>(), 4},
      gamma_ih.data_ptr<T>(), T_steps, B, 4 * H, len);
  const Tensor cell_grads = cell_grad.total(opts);
  // separate tensors: outputs of an op must not alias each other
  return {grad_xw, grad_gamma_ih.to(opts), grad_bias.to(opts), grad_w_hh,
          gamma_hh_grad.total(opts), cell_grads.narrow(0, 0, H).clone(),
          cell_grads.narrow(0, H, H).clone(), grad_h0, dc};
}

// ---------------------------------------------------------------------------------------------
// Op entry points: check, convert to the compute dtype, dispatch, convert back.
// ---------------------------------------------------------------------------------------------

void check_layernorm_inputs(const char* op, const Tensor& ref, const Tensor& gamma_hh,
                            const Tensor& gamma_c, const Tensor& beta_c,
                            const optional<Tensor>& zoneout_h_mask,
                            const optional<Tensor>& zoneout_c_mask, double zoneout_h,
                            double zoneout_c, const RecurrenceSizes& n) {
  check_layernorm_parameter(op, "gamma_hh", gamma_hh, ref, 4 * n.H);
  check_layernorm_parameter(op, "gamma_c", gamma_c, ref, n.H);
  check_layernorm_parameter(op, "beta_c", beta_c, ref, n.H);
  check_zoneout(op, "zoneout_h", zoneout_h_mask, zoneout_h, ref, n.T, n.B, n.H);
  check_zoneout(op, "zoneout_c", zoneout_c_mask, zoneout_c, ref, n.T, n.B, n.H);
}

ForwardOutputs layernorm_lstm_forward_cpu(
    const Tensor& xw, const Tensor& gamma_ih, const optional<Tensor>& bias, const Tensor& w_hh,
    const Tensor& gamma_hh, const Tensor& gamma_c, const Tensor& beta_c, const Tensor& h0,
    const Tensor& c0, const optional<Tensor>& zoneout_h_mask,
    const optional<Tensor>& zoneout_c_mask, double zoneout_h, double zoneout_c,
    const optional<Tensor>& lengths, bool reverse, double eps, bool save_for_backward) {
  const AutocastOff autocast_off;
  const char* op = "fused_rnn::layernorm_lstm_forward";
  const RecurrenceSizes n =
      check_forward_inputs(op, 4, xw, w_hh, c10::nullopt, h0, c0, c10::nullopt, lengths);
  check_input_layernorm(op, gamma_ih, bias, xw, 4 * n.H);
  check_layernorm_inputs(op, xw, gamma_hh, gamma_c, beta_c, zoneout_h_mask, zoneout_c_mask,
                         zoneout_h, zoneout_c, n);
  check_eps(op, eps);
  const auto mask_h = contiguous_or_none(zoneout_h_mask);
  const auto mask_c = contiguous_or_none(zoneout_c_mask);
  const auto storage = xw.scalar_type();
  auto out = AT_DISPATCH_FLOATING_TYPES(compute_dtype(storage), "layernorm_lstm_forward_cpu", [&] {
    const Tensor gamma = to_compute(gamma_ih);
    return forward_impl<scalar_t>(to_compute(xw), gamma, to_compute(bias_or_zeros(bias, gamma)),
                                  to_compute(w_hh), to_compute(gamma_hh), to_compute(gamma_c),
                                  to_compute(beta_c), to_compute(h0), to_compute(c0),
                                  Zoneout(mask_h, zoneout_h), Zoneout(mask_c, zoneout_c),
                                  contiguous_or_none(lengths), reverse, eps, save_for_backward,
                                  n);
  });
  return with_statistics_in_compute(out, storage);
}

BackwardOutputs layernorm_lstm_backward_cpu(
    const optional<Tensor>& grad_y, const optional<Tensor>& grad_h_n,
    const optional<Tensor>& grad_c_n, const Tensor& xw, const Tensor& gamma_ih,
    const optional<Tensor>& bias, const Tensor& w_hh, const Tensor& gamma_hh,
    const Tensor& gamma_c, const Tensor& beta_c, const Tensor& h0, const Tensor& c0,
    const optional<Tensor>& zoneout_h_mask, const optional<Tensor>& zoneout_c_mask,
    double zoneout_h, double zoneout_c, const Tensor& y, const Tensor& p_hat,
    const Tensor& c_hat, const Tensor& cs, const Tensor& stats, const optional<Tensor>& lengths,
    bool reverse) {
  const AutocastOff autocast_off;
  const char* op = "fused_rnn::layernorm_lstm_backward";
  const RecurrenceSizes n = check_backward_inputs(op, 4, w_hh, c10::nullopt, h0, c0, y, lengths,
                                                  grad_y, grad_h_n, grad_c_n);
  check_workspace(op, "xw", xw, y, {n.T, n.B, 4 * n.H});
  check_input_layernorm(op, gamma_ih, bias, y, 4 * n.H);
  check_layernorm_inputs(op, y, gamma_hh, gamma_c, beta_c, zoneout_h_mask, zoneout_c_mask,
                         zoneout_h, zoneout_c, n);
  check_workspace(op, "p_hat", p_hat, y, {n.T, n.B, 4 * n.H});
  check_workspace(op, "c_hat", c_hat, y, {n.T, n.B, n.H});
  check_workspace(op, "cs", cs, y, {n.T, n.B, n.H});
  check_statistics(op, stats, y, {n.T, n.B, 4});
  const auto mask_h = contiguous_or_none(zoneout_h_mask);
  const auto mask_c = contiguous_or_none(zoneout_c_mask);
  const auto storage = y.scalar_type();
  auto out = AT_DISPATCH_FLOATING_TYPES(compute_dtype(storage), "layernorm_lstm_backward_cpu", [&] {
    const Tensor gamma = to_compute(gamma_ih);
    return backward_impl<scalar_t>(
        to_compute(grad_y), to_compute(grad_h_n), to_compute(grad_c_n), to_compute(xw), gamma,
        to_compute(bias_or_zeros(bias, gamma)), to_compute(w_hh), to_compute(gamma_hh),
        to_compute(gamma_c), to_compute(beta_c), to_compute(h0), to_compute(c0),
        Zoneout(mask_h, zoneout_h), Zoneout(mask_c, zoneout_c), to_compute(y), to_compute(p_hat),
        to_compute(c_hat), to_compute(cs), stats.contiguous(), contiguous_or_none(lengths),
        reverse, n);
  });
  return outputs_in_storage(out, storage);
}

}  // namespace

TORCH_LIBRARY_IMPL(fused_rnn, CPU, m) {
  m.impl("layernorm_lstm_forward", &layernorm_lstm_forward_cpu);
  m.impl("layernorm_lstm_backward", &layernorm_lstm_backward_cpu);
}

}  // namespace fused_rnn::cpu
