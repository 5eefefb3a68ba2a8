// Layer-normalised GRU with zoneout on the CPU, forward and backward (see
// csrc/layernorm_ops.cpp for the op contract, cpu/layernorm_cpu.h for the phases).
//
// Forward: the input LN's statistics of all rows (cpu/layernorm_cpu.h), then per step, on each
// worker's rows and slice of units, in two phases:
//   0  p[rows, 3n] = h_prev[rows] @ w_hh[the slice's gate rows]^T (one GEMM); the slice's
//      moments of p per row
//   1  mean and rstd of p per row; gx = LN(xw; γ_ih) + b_ih, gh = γ_hh p̂ + b_hh, r, z, n, h',
//      zoneout, y, the workspace
// Backward, per step (reverse order), in two phases, the gates recomputed from xw and p̂:
//   0  dh += dp[step after] @ w_hh[:, units] (one GEMM); zoneout of dh, the gate gradients
//      (of gx) and those of gh, dp̂ = dgh γ_hh, the sums of γ_hh's and b_hh's gradients; the
//      slice's row sums of dp̂ and dp̂ p̂
//   1  the recurrent LN's backward: dp = rstd (dp̂ - mean dp̂ - p̂ mean(dp̂ p̂))
// then the input LN's backward on the gradients of gx of all steps, in place: that of xw.
// grad_w_hh = sum over all steps of dp^T h_prev: GEMMs in the loop, every few steps, by each
// worker on its rows and units (RecurrentGradRing: dp is kept for the last steps only).
#include <torch/library.h>

#include "cpu/layernorm_cpu.h"
#include "layernorm_checks.h"

namespace fused_rnn::cpu {
namespace {

constexpr int64_t kPhases = 2;

// Worker k's part of one forward step: batch rows [b0, b1), units [j0, j0 + n). xw_t, p_hat_t
// [B, 3H] (gate q of unit j at q*H + j); p [b1 - b0, 3n] (at q*n + j - j0); h_prev, h_next,
// y_t [B, H]; stats_t [B, 3] (mean and rstd of the input LN, filled before the loop; rstd of
// the recurrent LN) or, without the workspace, [B, 2].
template <typename T>
struct ForwardSlice {
  int64_t B, b0, b1, H, j0, n, k, t, T_steps;
  double eps;
  const T* xw_t;
  const T* p;
  const T* gamma_ih;   // [3H]
  const T* b_ih;       // [3H] (zeros without biases)
  const T* gamma_hh;   // [3H]
  const T* b_hh;       // [3H] or nullptr
  const T* h_prev;
  T* h_next;
  T* y_t;
  Zoneout zoneout_h;
  T* stats_t;
  int64_t stats_width;  // 3 with the workspace, else 2
  T* p_hat_t;          // the workspace, or nullptr
  const int64_t* lengths;
  SliceStatistics* p_stats;
};

// The gates of unit j (offset from the slice's first unit) from the input side and gh.
template <typename T>
__attribute__((always_inline)) inline GRUGates<T> gates_of(int64_t j, int64_t H,
                                                           const InputRow<T>& in, const T* gh) {
  return gru_activate(in.gate(j), in.gate(H + j), in.gate(2 * H + j), gh[0], gh[1], gh[2]);
}

template <bool kSave, bool kBias, typename T, typename Keep>
__attribute__((always_inline)) inline void forward_row(
    int64_t n, int64_t H, const InputRow<T>& in, const T* __restrict__ p, T mean, T rstd,
    const T* __restrict__ gamma, const T* __restrict__ bias, Keep keep_h,
    const T* __restrict__ h_prev, T* __restrict__ h_next, T* __restrict__ y,
    T* __restrict__ p_hat) {
  for (int64_t j = 0; j < n; ++j) {
    T gh[3];
    for (int64_t q = 0; q < 3; ++q) {
      const T normalised = (p[q * n + j] - mean) * rstd;
      gh[q] = gamma[q * H + j] * normalised;
      if constexpr (kBias) gh[q] += bias[q * H + j];
      if constexpr (kSave) p_hat[q * H + j] = normalised;
    }
    const GRUGates<T> gate = gates_of(j, H, in, gh);
    const T h = keep_h.state(j, h_prev[j], gru_hidden(gate, h_prev[j]));
    h_next[j] = h;
    y[j] = h;
  }
}

template <bool kSave, bool kBias, typename T>
__attribute__((always_inline)) inline void forward_phase_impl(const ForwardSlice<T>& s,
                                                              int64_t phase) {
  const int64_t B = s.B, H = s.H, j0 = s.j0, n = s.n, t = s.t;
  for (int64_t b = s.b0; b < s.b1; ++b) {
    const bool valid = step_is_valid(t, length_of(s.lengths, b, s.T_steps));
    const int64_t row = b * H + j0, r = b - s.b0;
    const T* p = s.p + r * 3 * n;
    T* stats = s.stats_t + b * s.stats_width;
    if (phase == 0) {
      if (!valid) continue;
      const SliceMoments<T> m = slice_moments(3 * n, p);
      s.p_stats->put(s.k, b, m.sum, m.m2);
    } else if (!valid) {
      // Finished sequence: the state stays, the output is zero, the workspace is unused.
      std::copy_n(s.h_prev + row, n, s.h_next + row);
      std::fill_n(s.y_t + row, n, T(0));
      if constexpr (kSave) {
        for (int64_t q = 0; q < 3; ++q) std::fill_n(s.p_hat_t + b * 3 * H + q * H + j0, n, T(0));
        if (j0 == 0) stats[2] = T(0);
      }
    } else {
      const auto [mean, rstd] = s.p_stats->mean_rstd(b, s.eps);
      // always_inline: a lambda does not inherit the caller's target ISA unless inlined
      const InputRow<T> in{s.xw_t + b * 3 * H + j0, stats[0], stats[1], s.gamma_ih + j0,
                           s.b_ih + j0};
      auto run = [&](auto keep_h) __attribute__((always_inline)) {
        forward_row<kSave, kBias>(n, H, in, p, T(mean), T(rstd), s.gamma_hh + j0,
                                  kBias ? s.b_hh + j0 : nullptr, keep_h, s.h_prev + row,
                                  s.h_next + row, s.y_t + row,
                                  kSave ? s.p_hat_t + b * 3 * H + j0 : nullptr);
      };
      with_keep(s.zoneout_h.row(t, b, B, H, j0), T(s.zoneout_h.p), run);
      if (kSave && j0 == 0) stats[2] = T(rstd);  // one worker per row writes it
    }
  }
}

template <typename T>
__attribute__((always_inline)) inline void forward_phase_impl(const ForwardSlice<T>& s,
                                                              int64_t phase) {
  const bool save = s.p_hat_t != nullptr, bias = s.b_hh != nullptr;
  if (save && bias) forward_phase_impl<true, true>(s, phase);
  if (save && !bias) forward_phase_impl<true, false>(s, phase);
  if (!save && bias) forward_phase_impl<false, true>(s, phase);
  if (!save && !bias) forward_phase_impl<false, false>(s, phase);
}

// Worker k's part of one backward step. xw and the workspace arrays of all steps ([T, B, ...];
// h_prev is y of the neighbouring step); dgx_t [B, 3H] (the gradient of gx); dp_t the step's
// rows in RecurrentGradRing's ring (row b at b * 3H); dh [b1 - b0, n] carried from step to
// step; dp_hat [b1 - b0, 3n] between the phases.
template <typename T>
struct BackwardSlice {
  int64_t B, b0, b1, H, j0, n, k, t, T_steps;
  bool reverse;
  const T* xw;
  const T* gamma_ih;
  const T* b_ih;          // zeros without biases
  const T* p_hat;
  const T* stats;         // [T, B, 3]
  const T* y;
  const T* h0;
  const T* gamma_hh;
  const T* b_hh;          // or nullptr
  Zoneout zoneout_h;
  const T* dy_t;          // [B, H] or nullptr
  T* dh;
  T* gates;               // [4n]: r, z, n and gh_n of a row, recomputed (phase 0)
  T* dp_hat;
  T* dgx_t;
  T* dp_t;
  double* gamma_hh_grad;  // the worker's sums: [3n]
  double* b_hh_grad;      // [3n]
  const int64_t* lengths;
  SliceStatistics* dp_stats;
};

// Phase 0 of one row, first: the gates r, z, n of the slice's units and gh_n = γ_hh p̂_n + b_hh
// recomputed as the forward computed them (at q*n + j). A loop of its own, which the compiler
// vectorises (inside the loop below the activations would run one unit at a time).
template <bool kBias, typename T>
__attribute__((always_inline)) inline void recompute_gates_row(
    int64_t n, int64_t H, const InputRow<T>& in, const T* __restrict__ p_hat,
    const T* __restrict__ gamma, const T* __restrict__ bias, T* __restrict__ gates) {
  for (int64_t j = 0; j < n; ++j) {
    T gh[3];
    for (int64_t q = 0; q < 3; ++q) {
      gh[q] = gamma[q * H + j] * p_hat[q * H + j];
      if constexpr (kBias) gh[q] += bias[q * H + j];
    }
    const GRUGates<T> gate = gates_of(j, H, in, gh);
    gates[j] = gate.r;
    gates[n + j] = gate.z;
    gates[2 * n + j] = gate.n;
    gates[3 * n + j] = gh[2];
  }
}

template <bool kHasDy, typename T, typename Keep>
__attribute__((always_inline)) inline void gates_backward_row(
    int64_t n, int64_t H, const T* __restrict__ gates, const T* __restrict__ p_hat,
    const T* __restrict__ gamma, Keep keep_h, const T* __restrict__ h_prev,
    const T* __restrict__ dy, T* __restrict__ dh, T* __restrict__ dgx, T* __restrict__ dp_hat,
    double* __restrict__ dgamma, double* __restrict__ dbias) {
  for (int64_t j = 0; j < n; ++j) {
    const T dh_total = kHasDy ? dh[j] + dy[j] : dh[j];
    const T dh_new = keep_h.next_grad(j, dh_total);
    const GRUGates<T> gate{gates[j], gates[n + j], gates[2 * n + j]};
    const T gh_n = gates[3 * n + j];
    GRUGates<T> d;
    // the direct part; the GEMM of the next position adds the recurrent one
    dh[j] = keep_h.previous_grad(j, dh_total) +
            gru_cell_backward(gate, gh_n, h_prev[j], dh_new, d);
    dgx[j] = d.r;
    dgx[H + j] = d.z;
    dgx[2 * H + j] = d.n;
    const T dgh[3] = {d.r, d.z, d.n * gate.r};
    for (int64_t q = 0; q < 3; ++q) {
      dp_hat[q * n + j] = dgh[q] * gamma[q * H + j];
      dgamma[q * n + j] += dgh[q] * p_hat[q * H + j];
      dbias[q * n + j] += dgh[q];
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
    const int64_t gate_row = (t * B + b) * 3 * H + j0;  // unit j0 of row b in [T, B, 3H]
    if (!step_is_valid(t, length)) {
      // padded step: no gradient; dh passes through unchanged
      if (phase == 0) zero_padded_step_gradients<3>(b, H, j0, n, s.dgx_t, s.dp_t);
      continue;
    }
    const T* p_hat = s.p_hat + gate_row;
    T* dp_hat = s.dp_hat + r * 3 * n;
    if (phase == 0) {
      const T* h_prev = step_is_first(t, length, s.reverse)
                            ? s.h0 + row
                            : s.y + prev_time(t, s.reverse) * B * H + row;
      const bool* keep_h = s.zoneout_h.row(t, b, B, H, j0);
      const T* dy = s.dy_t ? s.dy_t + row : nullptr;
      const T* bias = s.b_hh ? s.b_hh + j0 : nullptr;
      T* dgx = s.dgx_t + b * 3 * H + j0;
      const T* stats = s.stats + (t * B + b) * 3;
      const InputRow<T> in{s.xw + gate_row, stats[0], stats[1], s.gamma_ih + j0, s.b_ih + j0};
      T* gates = s.gates;
      if (bias) {
        recompute_gates_row<true>(n, H, in, p_hat, s.gamma_hh + j0, bias, gates);
      } else {
        recompute_gates_row<false>(n, H, in, p_hat, s.gamma_hh + j0, bias, gates);
      }
      auto run = [&](auto has_dy) __attribute__((always_inline)) {
        with_keep(keep_h, T(s.zoneout_h.p), [&](auto keep) __attribute__((always_inline)) {
          gates_backward_row<decltype(has_dy)::value>(n, H, gates, p_hat, s.gamma_hh + j0, keep,
                                                      h_prev, dy, s.dh + r * n, dgx, dp_hat,
                                                      s.gamma_hh_grad, s.b_hh_grad);
        });
      };
      if (dy) {
        run(std::true_type());
      } else {
        run(std::false_type());
      }
      const auto [sum, dot] = gate_gradient_sums<3>(n, H, dp_hat, p_hat);
      s.dp_stats->put(s.k, b, sum, dot);
    } else {
      const auto [mean, mean_dot] = s.dp_stats->means(b);
      recurrent_layernorm_backward_row<3>(n, H, dp_hat, p_hat, s.stats[(t * B + b) * 3 + 2],
                                          T(mean), T(mean_dot), s.dp_t + b * 3 * H + j0);
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

using ForwardOutputs = std::tuple<Tensor, Tensor, Tensor, Tensor>;
using BackwardOutputs = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>;

template <typename T>
ForwardOutputs forward_impl(const Tensor& xw, const Tensor& gamma_ih, const Tensor& b_ih,
                            const Tensor& w_hh, const Tensor& gamma_hh,
                            const optional<Tensor>& b_hh, const Tensor& h0,
                            const Zoneout& zoneout_h, const optional<Tensor>& lengths,
                            bool reverse, double eps, bool save, const RecurrenceSizes& n) {
  const int64_t T_steps = n.T, B = n.B, H = n.H;
  const auto opts = xw.options();
  Tensor y = cpu_output({T_steps, B, H}, opts);
  // [B, H] each: h_state[s % 2] is h before step s, h_state[(s + 1) % 2] after it
  const Tensor h_state[2] = {h0.clone(), at::empty({B, H}, opts)};
  Tensor p_hat = save ? cpu_output({T_steps, B, 3 * H}, opts) : empty_placeholder(opts);
  // the statistics of both LNs (the workspace), or of the input LN alone
  const int64_t stats_width = save ? 3 : 2;
  Tensor stats = at::empty({T_steps, B, stats_width}, opts);
  input_layernorm_statistics(xw.data_ptr<T>(), T_steps * B, 3 * H, eps, stats.data_ptr<T>(),
                             stats_width);
  const int64_t* len = data_or_null<int64_t>(lengths);
  const Partition part(H, B, B * 3 * H * H, T_steps, /*split_rows=*/true);
  ForwardGemms gemms(part, w_hh, 3, T_steps);
  SliceStatistics p_stats(part, 3);

  part.for_each_step(T_steps * kPhases, [&](int64_t k, int64_t position) {
    const int64_t s = position / kPhases, phase = position % kPhases;
    const int64_t t = time_at(s, T_steps, reverse);
    const Tensor& h_prev = h_state[s % 2];
    if (phase == 0) gemms.run(k, h_prev);
    const ForwardSlice<T> slice{B, part.row_begin(k), part.row_end(k), H, part.begin(k),
                                part.units(k), k, t, T_steps, eps,
                                xw.data_ptr<T>() + t * B * 3 * H, gemms.pre[k].data_ptr<T>(),
                                gamma_ih.data_ptr<T>(), b_ih.data_ptr<T>(),
                                gamma_hh.data_ptr<T>(), data_or_null<T>(b_hh),
                                h_prev.data_ptr<T>(), h_state[(s + 1) % 2].data_ptr<T>(),
                                y.data_ptr<T>() + t * B * H, zoneout_h,
                                stats.data_ptr<T>() + t * B * stats_width, stats_width,
                                save ? p_hat.data_ptr<T>() + t * B * 3 * H : nullptr, len,
                                &p_stats};
    forward_phase(slice, phase);
  });
  if (!save) stats = empty_placeholder(opts);
  return {y, h_state[T_steps % 2], p_hat, stats};
}

template <typename T>
BackwardOutputs backward_impl(const optional<Tensor>& grad_y, const optional<Tensor>& grad_h_n,
                              const Tensor& xw, const Tensor& gamma_ih, const Tensor& b_ih,
                              const Tensor& w_hh, const Tensor& gamma_hh,
                              const optional<Tensor>& b_hh, const Tensor& h0,
                              const Zoneout& zoneout_h, const Tensor& y, const Tensor& p_hat,
                              const Tensor& stats, const optional<Tensor>& lengths, bool reverse,
                              const RecurrenceSizes& n) {
  const int64_t T_steps = n.T, B = n.B, H = n.H;
  const auto opts = y.options();
  const int64_t* len = data_or_null<int64_t>(lengths);
  const T* dy = data_or_null<T>(grad_y);
  // the gradient of gx in the loop; that of xw after it
  Tensor grad_xw = cpu_output({T_steps, B, 3 * H}, opts);
  const Partition units(H, B, B * 3 * H * H, T_steps, /*split_rows=*/true);
  BackwardState state(units, w_hh, grad_h_n, len);
  // dp, the gradient of the recurrent product, of the last steps; and grad_w_hh
  RecurrentGradRing dp(units, 3, T_steps, y, h0, len, reverse);
  SliceStatistics dp_stats(units, 3);
  UnitGradients gamma_hh_grad(units, 3), b_hh_grad(units, 3);
  std::vector<Tensor> gates, dp_hat;  // per worker: a row's gates; dp̂ between the phases
  for (int64_t k = 0; k < units.size(); ++k) {
    gates.push_back(at::empty({4 * units.units(k)}, opts));
    dp_hat.push_back(at::empty({units.rows(k), 3 * units.units(k)}, opts));
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
                                 gamma_ih.data_ptr<T>(), b_ih.data_ptr<T>(),
                                 p_hat.data_ptr<T>(), stats.data_ptr<T>(), y.data_ptr<T>(),
                                 h0.data_ptr<T>(), gamma_hh.data_ptr<T>(),
                                 data_or_null<T>(b_hh), zoneout_h,
                                 dy ? dy + t * B * H : nullptr, state.dh[k].data_ptr<T>(),
                                 gates[k].data_ptr<T>(), dp_hat[k].data_ptr<T>(),
                                 grad_xw.data_ptr<T>() + t * B * 3 * H,
                                 dp.step_rows<T>(k, i), gamma_hh_grad.of(k), b_hh_grad.of(k),
                                 len, &dp_stats};
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
  const auto [grad_gamma_ih, grad_b_ih] = input_layernorm_backward(
      grad_xw.data_ptr<T>(), xw.data_ptr<T>(), InputStatistics<T>{stats.data_ptr<T>(), 3},
      gamma_ih.data_ptr<T>(), T_steps, B, 3 * H, len);
  return {grad_xw, grad_gamma_ih.to(opts), grad_b_ih.to(opts), grad_w_hh,
          gamma_hh_grad.total(opts), b_hh_grad.total(opts), grad_h0};
}

void check_layernorm_inputs(const char* op, const Tensor& ref, const Tensor& gamma_ih,
                            const optional<Tensor>& b_ih, const Tensor& gamma_hh,
                            const optional<Tensor>& b_hh, const optional<Tensor>& zoneout_h_mask,
                            double zoneout_h, const RecurrenceSizes& n) {
  check_input_layernorm(op, gamma_ih, b_ih, ref, 3 * n.H);
  check_layernorm_parameter(op, "gamma_hh", gamma_hh, ref, 3 * n.H);
  ::fused_rnn::detail::check_optional_like(op, "b_hh", b_hh, ref, {3 * n.H});
  check_zoneout(op, "zoneout_h", zoneout_h_mask, zoneout_h, ref, n.T, n.B, n.H);
}

ForwardOutputs layernorm_gru_forward_cpu(const Tensor& xw, const Tensor& gamma_ih,
                                         const optional<Tensor>& b_ih, const Tensor& w_hh,
                                         const Tensor& gamma_hh, const optional<Tensor>& b_hh,
                                         const Tensor& h0, const optional<Tensor>& zoneout_h_mask,
                                         double zoneout_h, const optional<Tensor>& lengths,
                                         bool reverse, double eps, bool save_for_backward) {
  const AutocastOff autocast_off;
  const char* op = "fused_rnn::layernorm_gru_forward";
  const RecurrenceSizes n =
      check_forward_inputs(op, 3, xw, w_hh, c10::nullopt, h0, c10::nullopt, b_hh, lengths);
  check_layernorm_inputs(op, xw, gamma_ih, b_ih, gamma_hh, b_hh, zoneout_h_mask, zoneout_h, n);
  check_eps(op, eps);
  const auto mask_h = contiguous_or_none(zoneout_h_mask);
  const auto storage = xw.scalar_type();
  auto out = AT_DISPATCH_FLOATING_TYPES(compute_dtype(storage), "layernorm_gru_forward_cpu", [&] {
    const Tensor gamma = to_compute(gamma_ih);
    return forward_impl<scalar_t>(to_compute(xw), gamma, to_compute(bias_or_zeros(b_ih, gamma)),
                                  to_compute(w_hh), to_compute(gamma_hh), to_compute(b_hh),
                                  to_compute(h0), Zoneout(mask_h, zoneout_h),
                                  contiguous_or_none(lengths), reverse, eps, save_for_backward,
                                  n);
  });
  return with_statistics_in_compute(out, storage);
}

BackwardOutputs layernorm_gru_backward_cpu(
    const optional<Tensor>& grad_y, const optional<Tensor>& grad_h_n, const Tensor& xw,
    const Tensor& gamma_ih, const optional<Tensor>& b_ih, const Tensor& w_hh,
    const Tensor& gamma_hh, const optional<Tensor>& b_hh, const Tensor& h0,
    const optional<Tensor>& zoneout_h_mask, double zoneout_h, const Tensor& y,
    const Tensor& p_hat, const Tensor& stats, const optional<Tensor>& lengths, bool reverse) {
  const AutocastOff autocast_off;
  const char* op = "fused_rnn::layernorm_gru_backward";
  const RecurrenceSizes n = check_backward_inputs(op, 3, w_hh, c10::nullopt, h0, c10::nullopt,
                                                  y, lengths, grad_y, grad_h_n, c10::nullopt);
  check_workspace(op, "xw", xw, y, {n.T, n.B, 3 * n.H});
  check_layernorm_inputs(op, y, gamma_ih, b_ih, gamma_hh, b_hh, zoneout_h_mask, zoneout_h, n);
  check_workspace(op, "p_hat", p_hat, y, {n.T, n.B, 3 * n.H});
  check_statistics(op, stats, y, {n.T, n.B, 3});
  const auto mask_h = contiguous_or_none(zoneout_h_mask);
  const auto storage = y.scalar_type();
  auto out = AT_DISPATCH_FLOATING_TYPES(compute_dtype(storage), "layernorm_gru_backward_cpu", [&] {
    const Tensor gamma = to_compute(gamma_ih);
    return backward_impl<scalar_t>(
        to_compute(grad_y), to_compute(grad_h_n), to_compute(xw), gamma,
        to_compute(bias_or_zeros(b_ih, gamma)), to_compute(w_hh), to_compute(gamma_hh),
        to_compute(b_hh), to_compute(h0), Zoneout(mask_h, zoneout_h), to_compute(y),
        to_compute(p_hat), stats.contiguous(), contiguous_or_none(lengths), reverse, n);
  });
  return outputs_in_storage(out, storage);
}

}  // namespace

TORCH_LIBRARY_IMPL(fused_rnn, CPU, m) {
  m.impl("layernorm_gru_forward", &layernorm_gru_forward_cpu);
  m.impl("layernorm_gru_backward", &layernorm_gru_backward_cpu);
}

}  // namespace fused_rnn::cpu
