// The recurrent product of a small batch: out[M, N] (+)= a[M, K] @ wt[K, N] for 1 <= M <= 4.
//
// With a few batch rows the per-step product is a matrix-vector product that streams the
// recurrent weight once per step. BLAS libraries spend much of such a call on set-up (measured
// with MKL on a 256 KB weight that sits in L2: ~33 GB/s); this kernel keeps a block of outputs
// in registers, broadcasts a[m, k] and streams row k of wt (the weight pre-transposed once per
// call, N contiguous), so every weight byte is loaded once per step with no reductions, at
// about the cache's bandwidth. Compiled per ISA like the row passes.
#pragma once

#include <cstdint>

namespace fused_rnn::cpu {

constexpr int64_t kSmallBatchGemmMaxRows = 4;

// out[M, N] (+)= a[M, K] @ wt[K, N], row-major with leading dimensions lda, ldw, ldo.
void small_batch_gemm(int64_t M, int64_t N, int64_t K, const float* a, int64_t lda,
                      const float* wt, int64_t ldw, float* out, int64_t ldo, bool accumulate);

namespace detail {

// 8 floats: one AVX register, or two SSE registers in the baseline clone. aligned(4): loads and
// stores through it may be unaligned.
typedef float float8 __attribute__((vector_size(32), aligned(4)));

// Columns [n0, n0 + 8 * NV) of all M rows: M * NV accumulators in registers.
template <int M, int NV>
inline __attribute__((always_inline)) void small_batch_gemm_block(
    int64_t K, const float* __restrict__ a, int64_t lda, const float* __restrict__ wt,
    int64_t ldw, float* __restrict__ out, int64_t ldo, int64_t n0, bool accumulate) {
  float8 acc[M][NV];
#pragma GCC unroll 16
  for (int m = 0; m < M; ++m)
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v)
      acc[m][v] = accumulate ? *reinterpret_cast<const float8*>(out + m * ldo + n0 + 8 * v) : float8{};
  const float* w = wt + n0;
  for (int64_t k = 0; k < K; ++k) {
    float8 wv[NV];
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) wv[v] = *reinterpret_cast<const float8*>(w + k * ldw + 8 * v);
#pragma GCC unroll 16
    for (int m = 0; m < M; ++m) {
      const float8 am = float8{} + a[m * lda + k];  // broadcast
#pragma GCC unroll 16
      for (int v = 0; v < NV; ++v) acc[m][v] += am * wv[v];
    }
  }
#pragma GCC unroll 16
  for (int m = 0; m < M; ++m)
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) *reinterpret_cast<float8*>(out + m * ldo + n0 + 8 * v) = acc[m][v];
}

template <int M>
inline __attribute__((always_inline)) void small_batch_gemm_rows(int64_t N, int64_t K,
                                                                 const float* a, int64_t lda,
                                                                 const float* wt, int64_t ldw,
                                                                 float* out, int64_t ldo,
                                                                 bool accumulate) {
  constexpr int NV = M == 1 ? 8 : (M == 2 ? 4 : 3);  // M * NV <= 12 of the 16 registers
  int64_t n = 0;
  for (; n + 8 * NV <= N; n += 8 * NV)
    small_batch_gemm_block<M, NV>(K, a, lda, wt, ldw, out, ldo, n, accumulate);
  for (; n + 8 <= N; n += 8) small_batch_gemm_block<M, 1>(K, a, lda, wt, ldw, out, ldo, n, accumulate);
  for (; n < N; ++n) {
    for (int m = 0; m < M; ++m) {
      float sum = accumulate ? out[m * ldo + n] : 0.0f;
      for (int64_t k = 0; k < K; ++k) sum += a[m * lda + k] * wt[k * ldw + n];
      out[m * ldo + n] = sum;
    }
  }
}

}  // namespace detail
}  // namespace fused_rnn::cpu
