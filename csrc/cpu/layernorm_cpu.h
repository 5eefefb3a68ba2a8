// What the CPU kernels of the layer-normalised cells share: zoneout, the row sums of a layer
// norm over a row split across threads, and the per-thread sums of the γ/β gradients.
//
// The split of the work is the plain cells' (cpu/partition.h): each worker owns a group of
// batch rows and a slice of the hidden units. A layer norm over all units of a row (G*H gate
// values of the recurrent product, H cell states) needs statistics of the whole row, so a step
// runs in phases (Partition::for_each_step over T * phases positions, with the group's barrier
// between positions): each worker writes the partial statistics of its slice of its rows
// (SliceStatistics), and after the barrier every worker combines the slices' partials of its
// rows and goes on with its own units. With one slice per group (from 8 rows per thread, as at
// B = 32 on 2 threads) there is no barrier at all and the combination is the slice's own
// statistics; below that (B = 1 inference) the threads split the units and pay a barrier per
// phase instead of running the whole product on one thread.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstring>
#include <tuple>
#include <utility>
#include <vector>

#include "cpu/cpu_common.h"

namespace fused_rnn::cpu {

inline optional<Tensor> contiguous_or_none(const optional<Tensor>& t) {
  return has(t) ? optional<Tensor>(t->contiguous()) : c10::nullopt;
}

// A tuple of outputs computed in the compute dtype, each in the op's storage dtype.
template <typename Tuple>
Tuple outputs_in_storage(const Tuple& out, at::ScalarType storage) {
  return std::apply([&](const auto&... t) { return Tuple{to_storage(t, storage)...}; }, out);
}

// ---------------------------------------------------------------------------------------------
// Zoneout: the new state is keep ⊙ previous + (1 - keep) ⊙ next, keep from a mask (0 or 1: a
// select, so that the dropped value cannot turn the result into NaN, as torch.where) or the
// constant p (eval's expectation; p = 0: no zoneout).
// ---------------------------------------------------------------------------------------------

// One state's zoneout in a call: a bool mask [T, B, H] (training), else the constant p.
struct Zoneout {
  const bool* mask;  // or nullptr
  double p;

  Zoneout(const optional<Tensor>& mask_tensor, double p)
      : mask(has(mask_tensor) ? mask_tensor->data_ptr<bool>() : nullptr), p(p) {}

  // The mask of units [j0, ...) of row b at step t (nullptr without a mask).
  const bool* row(int64_t t, int64_t b, int64_t B, int64_t H, int64_t j0) const {
    return mask == nullptr ? nullptr : mask + (t * B + b) * H + j0;
  }
};

// The zoneout of a row of units, one type per kind, each with the state's value and the two
// gradients (of previous and of next, from the result's). The row loops take the kind as a
// template type, so that they hold no test of it (a `mask ? mask[j] : p` and the comparisons of
// keep with 0 and 1 in the loop kept GCC from vectorising it).
template <typename T>
struct MaskedKeep {  // training: unit j keeps its previous value where mask[j]
  const bool* __restrict__ mask;
  T state(int64_t j, T previous, T next) const { return mask[j] ? previous : next; }
  T previous_grad(int64_t j, T grad) const { return mask[j] ? grad : T(0); }
  T next_grad(int64_t j, T grad) const { return mask[j] ? T(0) : grad; }
};

template <typename T>
struct ConstantKeep {  // eval: the expectation, p in (0, 1)
  T p;
  T state(int64_t, T previous, T next) const { return p * previous + (T(1) - p) * next; }
  T previous_grad(int64_t, T grad) const { return p * grad; }
  T next_grad(int64_t, T grad) const { return (T(1) - p) * grad; }
};

template <typename T>
struct NoKeep {  // p = 0 and no mask: no zoneout
  T state(int64_t, T, T next) const { return next; }
  T previous_grad(int64_t, T) const { return T(0); }
  T next_grad(int64_t, T grad) const { return grad; }
};

// f(keep) with the zoneout of a row: its mask row (when there is a mask), else p.
template <typename T, typename F>
__attribute__((always_inline)) inline void with_keep(const bool* mask, T p, const F& f) {
  if (mask != nullptr) {
    f(MaskedKeep<T>{mask});
  } else if (p != T(0)) {
    f(ConstantKeep<T>{p});
  } else {
    f(NoKeep<T>{});
  }
}

// ---------------------------------------------------------------------------------------------
// Row sums, vectorised: 16 independent partial sums (one AVX-512 vector of floats) combined at
// the end in a fixed order, so that the compiler may use vectors without reassociating (the
// kernels are built without -ffast-math) and the result is the same on every run.
// ---------------------------------------------------------------------------------------------

constexpr int64_t kSumLanes = 16;

template <typename T, typename F>
__attribute__((always_inline)) inline T lane_sum(int64_t n, const F& term) {
  T lanes[kSumLanes] = {};
  int64_t j = 0;
  for (; j + kSumLanes <= n; j += kSumLanes) {
    for (int64_t l = 0; l < kSumLanes; ++l) lanes[l] += term(j + l);
  }
  for (int64_t l = 0; j < n; ++j, ++l) lanes[l] += term(j);
  T total = T(0);
  for (int64_t l = 0; l < kSumLanes; ++l) total += lanes[l];
  return total;
}

// Sum of x[0, n), and sum of squared deviations from its mean (the moments of a slice).
template <typename T>
struct SliceMoments {
  T sum, m2;
};

template <typename T>
__attribute__((always_inline)) inline SliceMoments<T> slice_moments(int64_t n,
                                                                    const T* __restrict__ x) {
  const T sum = lane_sum<T>(n, [&](int64_t j) { return x[j]; });
  const T mean = n > 0 ? sum / T(n) : T(0);
  const T m2 = lane_sum<T>(n, [&](int64_t j) { return (x[j] - mean) * (x[j] - mean); });
  return {sum, m2};
}

// ---------------------------------------------------------------------------------------------
// The backward of the recurrent LN p̂ = (p - mean p) * rstd over a row's G*H gate values, on a
// slice of n units: dp_hat [G*n] (gate q of unit j at q*n + j), p_hat and dp rows of [B, G*H]
// (at q*H + j, from the slice's first unit).
// ---------------------------------------------------------------------------------------------

// The slice's part of the row sums of dp̂ and of dp̂ p̂ (SliceStatistics::put them).
template <int64_t G, typename T>
__attribute__((always_inline)) inline std::pair<T, T> gate_gradient_sums(
    int64_t n, int64_t H, const T* __restrict__ dp_hat, const T* __restrict__ p_hat) {
  T sum = 0, dot = 0;
  for (int64_t q = 0; q < G; ++q) {
    const T* d = dp_hat + q * n;
    const T* x = p_hat + q * H;
    sum += lane_sum<T>(n, [&](int64_t j) { return d[j]; });
    dot += lane_sum<T>(n, [&](int64_t j) { return d[j] * x[j]; });
  }
  return {sum, dot};
}

// A padded step of row b: no gradient of its gate values (dgx) nor of its recurrent product
// (dp), rows of [B, G*H], on the slice's n units from j0.
template <int64_t G, typename T>
inline void zero_padded_step_gradients(int64_t b, int64_t H, int64_t j0, int64_t n, T* dgx_t,
                                       T* dp_t) {
  for (int64_t q = 0; q < G; ++q) {
    std::fill_n(dgx_t + b * G * H + q * H + j0, n, T(0));
    std::fill_n(dp_t + b * G * H + q * H + j0, n, T(0));
  }
}

// dp = rstd (dp̂ - mean(dp̂) - p̂ mean(dp̂ p̂)), from the row means of all slices' sums.
template <int64_t G, typename T>
__attribute__((always_inline)) inline void recurrent_layernorm_backward_row(
    int64_t n, int64_t H, const T* __restrict__ dp_hat, const T* __restrict__ p_hat, T rstd,
    T mean, T mean_dot, T* __restrict__ dp) {
  for (int64_t q = 0; q < G; ++q) {
    for (int64_t j = 0; j < n; ++j) {
      dp[q * H + j] = rstd * (dp_hat[q * n + j] - mean - p_hat[q * H + j] * mean_dot);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// The statistics of rows split across the unit slices of a row group: partial[slice][b] holds
// two numbers per row, written by the worker of that slice and read, after the group's barrier,
// by every worker of the group. One buffer per reduction of a step suffices: it is written
// again only in the next step, after a barrier that every reader has passed.
// ---------------------------------------------------------------------------------------------

class SliceStatistics {
 public:
  // width: values per unit in the normalised vector (G for the recurrent product, 1 for c).
  SliceStatistics(const Partition& part, int64_t width)
      : part_(part), width_(width), partial_(part.slices() * part.row_count() * 2) {}

  template <typename T>
  void put(int64_t k, int64_t b, T first, T second) {
    double* p = slot(part_.slice(k), b);
    p[0] = first;
    p[1] = second;
  }

  // Mean and 1 / sqrt(var + eps) of row b from the slices' (sum, m2): Chan's combination of
  // the slices' moments, in double.
  std::pair<double, double> mean_rstd(int64_t b, double eps) const {
    const double count = double(width_ * part_.unit_count());
    double sum = 0;
    for (int64_t s = 0; s < part_.slices(); ++s) sum += slot(s, b)[0];
    const double mean = sum / count;
    double m2 = 0;
    for (int64_t s = 0; s < part_.slices(); ++s) {
      const double n = double(width_ * slice_units(s));
      const double deviation = n > 0 ? slot(s, b)[0] / n - mean : 0.0;
      m2 += slot(s, b)[1] + n * deviation * deviation;
    }
    return {mean, 1.0 / std::sqrt(m2 / count + eps)};
  }

  // The two row sums over all slices, each divided by the row's length (the means the
  // backward of a layer norm needs).
  std::pair<double, double> means(int64_t b) const {
    double first = 0, second = 0;
    for (int64_t s = 0; s < part_.slices(); ++s) {
      first += slot(s, b)[0];
      second += slot(s, b)[1];
    }
    const double count = double(width_ * part_.unit_count());
    return {first / count, second / count};
  }

 private:
  int64_t slice_units(int64_t s) const { return part_.units(s); }  // worker s: group 0, slice s
  double* slot(int64_t s, int64_t b) { return partial_.data() + (s * part_.row_count() + b) * 2; }
  const double* slot(int64_t s, int64_t b) const {
    return partial_.data() + (s * part_.row_count() + b) * 2;
  }

  const Partition& part_;
  const int64_t width_;
  std::vector<double> partial_;
};

// ---------------------------------------------------------------------------------------------
// Gradients of per-unit parameters (γ, β), summed over all steps and rows: each worker adds its
// rows' terms for its units into its own double-precision sums during the backward, and the
// workers' sums are added up after the loop (no contention, the same order on every run).
// ---------------------------------------------------------------------------------------------

class UnitGradients {
 public:
  // One vector of `width` values per unit (G gates, or 1), per worker.
  UnitGradients(const Partition& part, int64_t width) : part_(part), width_(width) {
    for (int64_t k = 0; k < part.size(); ++k) sums_.emplace_back(width * part.units(k), 0.0);
  }

  // Worker k's sums: value q of its unit j at [q * units(k) + j].
  double* of(int64_t k) { return sums_[k].data(); }

  // [width * H] with value q of unit j at q * H + j, in `options`' dtype.
  Tensor total(const at::TensorOptions& options) const {
    const int64_t H = part_.unit_count();
    std::vector<double> out(width_ * H, 0.0);
    for (int64_t k = 0; k < part_.size(); ++k) {
      const int64_t n = part_.units(k), j0 = part_.begin(k);
      for (int64_t q = 0; q < width_; ++q) {
        for (int64_t j = 0; j < n; ++j) out[q * H + j0 + j] += sums_[k][q * n + j];
      }
    }
    return at::tensor(out, at::TensorOptions().dtype(at::kDouble)).to(options);
  }

 private:
  const Partition& part_;
  const int64_t width_;
  std::vector<std::vector<double>> sums_;
};

// ---------------------------------------------------------------------------------------------
// The input side's LN, gx = γ_ih (xw - mean) rstd + b over the G*H gate values of each row of
// the input projection xw [T, B, G*H]: its statistics for all rows in one pass before the loop;
// its values recomputed where a step uses them, in the forward and again in the backward, so
// that a training step keeps xw alone for the input side (no normalised copy, no activated
// gates); its backward in one pass after the loop, in place on the gate gradients.
// ---------------------------------------------------------------------------------------------

// A gate value of the input side.
template <typename T>
__attribute__((always_inline)) inline T input_gate(T xw, T mean, T rstd, T gamma, T bias) {
  return gamma * ((xw - mean) * rstd) + bias;
}

// The input side of one row, at the offset of a worker's first unit: gate value i = q*H + j of
// gx = LN(xw; γ_ih) + b.
template <typename T>
struct InputRow {
  const T* xw;     // the row of xw
  T mean, rstd;    // its statistics
  const T* gamma;  // γ_ih
  const T* bias;   // b (zeros without a bias)

  __attribute__((always_inline)) T gate(int64_t i) const {
    return input_gate(xw[i], mean, rstd, gamma[i], bias[i]);
  }
};

// The input LN's statistics of the row of xw at (t, b): stats[0] mean, stats[1] rstd.
template <typename T>
struct InputStatistics {
  const T* data;   // [T, B, stride]
  int64_t stride;  // 2 (the statistics alone) or the width of the workspace holding them
  const T* at(int64_t t, int64_t b, int64_t B) const { return data + (t * B + b) * stride; }
};

// bias, or zeros of gamma_ih's shape (the kernels add a bias either way).
inline Tensor bias_or_zeros(const optional<Tensor>& bias, const Tensor& gamma_ih) {
  return has(bias) ? *bias : at::zeros_like(gamma_ih);
}

// The outputs in the storage dtype, but the statistics (the last), which stay in the compute
// dtype (csrc/layernorm_checks.h, check_statistics).
template <typename Tuple, size_t... I>
Tuple with_statistics_in_compute(const Tuple& out, at::ScalarType storage,
                                 std::index_sequence<I...>) {
  return Tuple{to_storage(std::get<I>(out), storage)..., std::get<sizeof...(I)>(out)};
}

template <typename Tuple>
Tuple with_statistics_in_compute(const Tuple& out, at::ScalarType storage) {
  return with_statistics_in_compute(out, storage,
                                    std::make_index_sequence<std::tuple_size_v<Tuple> - 1>{});
}

// mean and rstd (biased variance, eps) of each of the rows [rows, width] of xw into stats (row
// r at stats + r * stride). In cpu/input_layernorm.cpp, for float and double.
template <typename T>
void input_layernorm_statistics(const T* xw, int64_t rows, int64_t width, double eps, T* stats,
                                int64_t stride);

// The input LN's backward, after the loop: grad [T, B, width] holds the gradient of gx and
// becomes that of xw, rstd (g - mean(g) - x̂ mean(g x̂)) with g = da γ_ih, on the real steps
// (zero on padded ones, whatever xw holds there); returns the gradients of γ_ih and of the
// bias ([width] each, double). In cpu/input_layernorm.cpp, for float and double.
template <typename T>
std::pair<Tensor, Tensor> input_layernorm_backward(T* grad, const T* xw,
                                                   const InputStatistics<T>& stats,
                                                   const T* gamma, int64_t T_steps, int64_t B,
                                                   int64_t width, const int64_t* lengths);

// ---------------------------------------------------------------------------------------------
// The recurrent weight's gradient, grad_w_hh = sum over steps of dp_t^T h_prev_t, accumulated
// during the backward loop instead of from a [T, B, G*H] buffer of dp after it (as the plain
// cells do): that buffer was the largest allocation of a training step after the workspace.
//
// dp of a step lives in a ring of `slots` steps, one block per row group ([slots, rows, G*H],
// so that a block's steps form one matrix), where the next position's recurrent product reads
// it (BackwardState::add_recurrent_from). Each worker keeps the h_prev rows of its steps beside
// it and, when the ring is full (and after the last step), adds its units' part of the block's
// products, dp[its rows, its units]^T @ h_prev[its rows], into its own sums: GEMMs of
// slots * rows terms, run by the worker itself, with no barrier beyond the step's own.
// ---------------------------------------------------------------------------------------------

class RecurrentGradRing {
 public:
  // G gates; T steps; y [T, B, H] and h0 [B, H] (h_prev of each step); lengths [B] or nullptr.
  RecurrentGradRing(const Partition& part, int64_t G, int64_t T, const Tensor& y,
                    const Tensor& h0, const int64_t* lengths, bool reverse)
      : part_(part), G_(G), H_(part.unit_count()), T_(T), slots_(slot_count(part, T)),
        y_(y), h0_(h0), lengths_(lengths), reverse_(reverse) {
    const int64_t GH = G * H_;
    ring_ = at::empty({slots_ * part.row_count() * GH}, y.options());
    for (int64_t k = 0; k < part.size(); ++k) {
      blocks_.push_back(ring_.narrow(0, slots_ * part.row_begin(k) * GH, slots_ * part.rows(k) * GH)
                            .view({slots_, part.rows(k), GH}));
      h_prev_.push_back(at::empty({slots_ * part.rows(k), H_}, y.options()));
      sums_.push_back(at::zeros({G * part.units(k), H_}, y.options()));
    }
  }

  // The dp rows of position i (any step) in worker k's group: row b at + b * G*H.
  // (The group's block is addressed by batch row, from its first row: the pointer stays inside
  // the ring, which holds slots >= 1 blocks of rows before it.)
  template <typename T>
  T* step_rows(int64_t k, int64_t i) const {
    return blocks_[k].data_ptr<T>() + (slot(i) * part_.rows(k) - part_.row_begin(k)) * G_ * H_;
  }

  // The dp of worker k's group, [slots, rows, G*H], for add_recurrent_from, and the index of
  // position i's step in it.
  const Tensor& steps(int64_t k) const { return blocks_[k]; }
  int64_t slot(int64_t i) const { return i % slots_; }

  // Worker k wrote its units of dp at position i (step t): keep its h_prev rows beside it, and
  // add the ring's products once it is full or the steps are done.
  void finish_position(int64_t k, int64_t i, int64_t t) {
    const int64_t b0 = part_.row_begin(k), rows = part_.rows(k), B = part_.row_count();
    const int64_t row_bytes = H_ * y_.element_size();
    const char* y = static_cast<const char*>(y_.data_ptr());
    const char* h0 = static_cast<const char*>(h0_.data_ptr());
    char* out = static_cast<char*>(h_prev_[k].data_ptr()) + slot(i) * rows * row_bytes;
    for (int64_t b = b0; b < b0 + rows; ++b, out += row_bytes) {
      const int64_t length = length_of(lengths_, b, T_);
      // a padded step: dp is zero, and so must h_prev be (zero times a NaN of y is NaN)
      if (!step_is_valid(t, length)) {
        std::memset(out, 0, row_bytes);
        continue;
      }
      const char* source = step_is_first(t, length, reverse_)
                               ? h0 + b * row_bytes
                               : y + (prev_time(t, reverse_) * B + b) * row_bytes;
      std::memcpy(out, source, row_bytes);
    }
    if (slot(i) == slots_ - 1 || i == T_ - 1) add_products(k, slot(i) + 1);
  }

  // grad_w_hh [G*H, H]: the workers' sums in place.
  Tensor total() const {
    Tensor out = at::zeros({G_ * H_, H_}, y_.options());
    for (int64_t k = 0; k < part_.size(); ++k) {
      const int64_t n = part_.units(k);
      for (int64_t q = 0; q < G_; ++q) {
        out.narrow(0, q * H_ + part_.begin(k), n).add_(sums_[k].narrow(0, q * n, n));
      }
    }
    return out;
  }

 private:
  // Enough steps for GEMMs of ~256 terms per group, at least 2 (a slot is written again only
  // after the next position has read it).
  static int64_t slot_count(const Partition& part, int64_t T) {
    const int64_t rows = std::max<int64_t>(1, part.min_rows());
    return std::max<int64_t>(2, std::min<int64_t>({(256 + rows - 1) / rows, 64, T}));
  }

  // Worker k's sums += dp[filled steps, its rows, its units]^T @ h_prev[same rows].
  void add_products(int64_t k, int64_t filled) {
    const int64_t rows = filled * part_.rows(k), n = part_.units(k), j0 = part_.begin(k);
    const Tensor dp = blocks_[k].view({-1, G_ * H_}).narrow(0, 0, rows);
    const Tensor h_prev = h_prev_[k].narrow(0, 0, rows);
    if (n == H_) {  // all units: one product over every gate
      matmul_into(sums_[k], dp.t(), h_prev, true);
      return;
    }
    for (int64_t q = 0; q < G_; ++q) {
      Tensor out = sums_[k].narrow(0, q * n, n);
      matmul_into(out, dp.narrow(1, q * H_ + j0, n).t(), h_prev, true);
    }
  }

  const Partition& part_;
  const int64_t G_, H_, T_, slots_;
  const Tensor y_, h0_;
  const int64_t* lengths_;
  const bool reverse_;
  Tensor ring_;                  // per group: [slots, rows, G*H]
  std::vector<Tensor> blocks_;   // per worker: its group's block
  std::vector<Tensor> h_prev_;   // per worker: [slots * rows, H]
  std::vector<Tensor> sums_;     // per worker: [G * units, H], gate q of unit j at row q*n + j
};

}  // namespace fused_rnn::cpu
