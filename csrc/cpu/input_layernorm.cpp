// The input LN of the layer-normalised cells (cpu/layernorm_cpu.h): the statistics of all rows
// of the input projection before the loop, and the backward after it, each one pass over the
// T * B rows split across the threads. The float rows are compiled per ISA (cpu/cpu_isa.h).
#include "cpu/layernorm_cpu.h"

namespace fused_rnn::cpu {
namespace {

template <typename T>
__attribute__((always_inline)) inline void statistics_rows_impl(const T* xw, int64_t r0,
                                                                int64_t r1, int64_t width,
                                                                double eps, T* stats,
                                                                int64_t stride) {
  for (int64_t r = r0; r < r1; ++r) {
    const SliceMoments<T> m = slice_moments(width, xw + r * width);
    stats[r * stride] = T(double(m.sum) / double(width));
    stats[r * stride + 1] = T(1.0 / std::sqrt(double(m.m2) / double(width) + eps));
  }
}

// The backward of the rows [r0, r1) of [T * B, width], in place on grad; the rows' terms of the
// gradients of γ and of the bias added into dgamma and dbias ([width] each).
template <typename T>
struct BackwardRows {
  T* grad;
  const T* xw;
  InputStatistics<T> stats;
  const T* gamma;
  int64_t T_steps, B, width;
  const int64_t* lengths;
};

template <typename T>
__attribute__((always_inline)) inline void backward_rows_impl(const BackwardRows<T>& s,
                                                              int64_t r0, int64_t r1,
                                                              T* __restrict__ dgamma,
                                                              T* __restrict__ dbias) {
  const int64_t width = s.width;
  const T* __restrict__ gamma = s.gamma;
  for (int64_t row = r0; row < r1; ++row) {
    const int64_t t = row / s.B, b = row % s.B;
    T* __restrict__ g = s.grad + row * width;
    if (!step_is_valid(t, length_of(s.lengths, b, s.T_steps))) {
      std::fill_n(g, width, T(0));
      continue;
    }
    const T* __restrict__ x = s.xw + row * width;
    const T mean = s.stats.at(t, b, s.B)[0], rstd = s.stats.at(t, b, s.B)[1];
    const T sum = lane_sum<T>(width, [&](int64_t j) { return g[j] * gamma[j]; });
    const T dot = lane_sum<T>(
        width, [&](int64_t j) { return g[j] * gamma[j] * ((x[j] - mean) * rstd); });
    const T mean_g = sum / T(width), mean_dot = dot / T(width);
    for (int64_t j = 0; j < width; ++j) {
      const T x_hat = (x[j] - mean) * rstd;
      dgamma[j] += g[j] * x_hat;
      dbias[j] += g[j];
      g[j] = rstd * (g[j] * gamma[j] - mean_g - x_hat * mean_dot);
    }
  }
}

FUSED_RNN_CPU_ISA_VARIANTS(statistics_rows,
                           (const float* xw, int64_t r0, int64_t r1, int64_t width, double eps,
                            float* stats, int64_t stride),
                           (xw, r0, r1, width, eps, stats, stride),
                           statistics_rows_impl(xw, r0, r1, width, eps, stats, stride))
void statistics_rows(const double* xw, int64_t r0, int64_t r1, int64_t width, double eps,
                     double* stats, int64_t stride) {
  statistics_rows_impl(xw, r0, r1, width, eps, stats, stride);
}
FUSED_RNN_CPU_ISA_VARIANTS(backward_rows,
                           (const BackwardRows<float>& s, int64_t r0, int64_t r1, float* dgamma,
                            float* dbias),
                           (s, r0, r1, dgamma, dbias),
                           backward_rows_impl(s, r0, r1, dgamma, dbias))
void backward_rows(const BackwardRows<double>& s, int64_t r0, int64_t r1, double* dgamma,
                   double* dbias) {
  backward_rows_impl(s, r0, r1, dgamma, dbias);
}

}  // namespace

template <typename T>
void input_layernorm_statistics(const T* xw, int64_t rows, int64_t width, double eps, T* stats,
                                int64_t stride) {
  at::parallel_for(0, rows, 16, [&](int64_t r0, int64_t r1) {
    statistics_rows(xw, r0, r1, width, eps, stats, stride);
  });
}

// The γ and bias gradients are summed in blocks of rows fixed in size (the compute dtype within
// a block, double across blocks, added in block order): the same result on any number of
// threads.
template <typename T>
std::pair<Tensor, Tensor> input_layernorm_backward(T* grad, const T* xw,
                                                   const InputStatistics<T>& stats,
                                                   const T* gamma, int64_t T_steps, int64_t B,
                                                   int64_t width, const int64_t* lengths) {
  constexpr int64_t kBlockRows = 128;
  const int64_t rows = T_steps * B, blocks = (rows + kBlockRows - 1) / kBlockRows;
  std::vector<T> sums(blocks * 2 * width, T(0));  // per block: dγ, then db
  const BackwardRows<T> s{grad, xw, stats, gamma, T_steps, B, width, lengths};
  at::parallel_for(0, blocks, 1, [&](int64_t k0, int64_t k1) {
    for (int64_t k = k0; k < k1; ++k) {
      T* dgamma = sums.data() + k * 2 * width;
      backward_rows(s, k * kBlockRows, std::min(rows, (k + 1) * kBlockRows), dgamma,
                    dgamma + width);
    }
  });
  std::vector<double> total(2 * width, 0.0);
  for (int64_t k = 0; k < blocks; ++k) {
    for (int64_t j = 0; j < 2 * width; ++j) total[j] += double(sums[k * 2 * width + j]);
  }
  auto part = [&](int64_t offset) {  // separate tensors: op outputs must not alias
    return at::tensor(std::vector<double>(total.begin() + offset, total.begin() + offset + width),
                      at::TensorOptions().dtype(at::kDouble));
  };
  return {part(0), part(width)};
}

template void input_layernorm_statistics<float>(const float*, int64_t, int64_t, double, float*,
                                                int64_t);
template void input_layernorm_statistics<double>(const double*, int64_t, int64_t, double,
                                                 double*, int64_t);
template std::pair<Tensor, Tensor> input_layernorm_backward<float>(
    float*, const float*, const InputStatistics<float>&, const float*, int64_t, int64_t, int64_t,
    const int64_t*);
template std::pair<Tensor, Tensor> input_layernorm_backward<double>(
    double*, const double*, const InputStatistics<double>&, const double*, int64_t, int64_t,
    int64_t, const int64_t*);

}  // namespace fused_rnn::cpu
