// The recurrent product of a small batch: out[M, N] (+)= a[M, K] @ b[K, N] for 1 <= M <= 4.
//
// With a few batch rows the per-step product is a matrix-vector product that streams the
// recurrent weight once per step. BLAS spends much of such a call on set-up (measured with MKL
// on a 256 KB weight that sits in L2: ~33 GB/s). Here b is packed once per call into panels of
// W = 8 * NV(M) columns, each panel [K][W] contiguous, so a step streams the weight strictly
// sequentially; a block of M x W outputs stays in registers while a[m, k] is broadcast against
// row k of the panel. No reductions, every weight byte loaded once per step. Compiled per ISA
// like the row passes.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

namespace fused_rnn::cpu {

constexpr int64_t kSmallBatchGemmMaxRows = 4;

// Vectors of 8 columns per panel for M rows: M * NV accumulators stay within 12 of the 16
// registers, leaving room for the weight loads.
constexpr int64_t small_batch_vectors(int64_t M) { return M == 1 ? 8 : (M == 2 ? 4 : 3); }
constexpr int64_t small_batch_panel_width(int64_t M) { return 8 * small_batch_vectors(M); }

// b [K, N] (any strides) -> the panel layout for M rows: panel p holds columns
// [p*W, p*W + w_p) as [K][w_p] contiguous at offset p*W*K, w_p = min(W, N - p*W).
at::Tensor pack_small_batch_operand(const at::Tensor& b, int64_t M);

// out[M, N] (+)= a[M, K] @ b, with b packed by pack_small_batch_operand(b, M).
void small_batch_gemm(int64_t M, int64_t N, int64_t K, const float* a, int64_t lda,
                      const float* packed, float* out, int64_t ldo, bool accumulate);

namespace detail {

// 8 floats: one AVX register, or two SSE registers in the baseline clone. aligned(4): loads and
// stores through it may be unaligned.
typedef float float8 __attribute__((vector_size(32), aligned(4)));

// Columns [n0, n0 + 8 * NV) of a panel of width w (ldw), all M rows.
template <int M, int NV>
inline __attribute__((always_inline)) void small_batch_gemm_block(
    int64_t K, const float* __restrict__ a, int64_t lda, const float* __restrict__ panel,
    int64_t w, float* __restrict__ out, int64_t ldo, int64_t n0, bool accumulate) {
  float8 acc[M][NV];
#pragma GCC unroll 16
  for (int m = 0; m < M; ++m)
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v)
      acc[m][v] = accumulate ? *reinterpret_cast<const float8*>(out + m * ldo + n0 + 8 * v) : float8{};
  for (int64_t k = 0; k < K; ++k) {
    float8 wv[NV];
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) wv[v] = *reinterpret_cast<const float8*>(panel + k * w + n0 + 8 * v);
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
                                                                 const float* packed, float* out,
                                                                 int64_t ldo, bool accumulate) {
  constexpr int NV = small_batch_vectors(M);
  constexpr int64_t W = 8 * NV;
  for (int64_t p0 = 0; p0 < N; p0 += W) {
    const float* panel = packed + p0 * K;
    float* out_p = out + p0;
    const int64_t w = std::min(W, N - p0);
    if (w == W) {
      small_batch_gemm_block<M, NV>(K, a, lda, panel, w, out_p, ldo, 0, accumulate);
      continue;
    }
    // The last, narrower panel: 8 columns at a time, then one by one.
    int64_t n = 0;
    for (; n + 8 <= w; n += 8) small_batch_gemm_block<M, 1>(K, a, lda, panel, w, out_p, ldo, n, accumulate);
    for (; n < w; ++n) {
      for (int m = 0; m < M; ++m) {
        float sum = accumulate ? out_p[m * ldo + n] : 0.0f;
        for (int64_t k = 0; k < K; ++k) sum += a[m * lda + k] * panel[k * w + n];
        out_p[m * ldo + n] = sum;
      }
    }
  }
}

}  // namespace detail
}  // namespace fused_rnn::cpu
