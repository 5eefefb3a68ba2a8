// The recurrent product of one step, out[M, N] (+)= a[M, K] @ b[K, N], on a weight b packed
// once per call.
//
// BLAS re-packs the weight on every call, and for the shapes of a recurrence (a few to a few
// hundred rows, the same weight every step) that set-up is a large part of the call: MKL's
// sgemm spends ~6% of an LSTM forward copying w_hh, and with one or two rows reads the 256 KB
// weight at ~33 GB/s from L2. Here b is packed once into panels of W columns, each panel
// [K][W] contiguous, and every step streams the panels strictly in order. A block of up to 4
// rows x W columns of out stays in registers while a[m, k] is broadcast against row k of the
// panel; all row blocks run over a chunk of kPanelRows rows of a panel before the next, so the
// chunk (24 KB at W = 24) is read from L2 once per step and then from L1, however large K is
// (K = G * H in the backward). Compiled per ISA like the row passes: on AVX2 with FMA a block
// of 4 x 24 runs at ~112 GFLOP/s on one Zen 4 core.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdint>
#include <vector>

namespace fused_rnn::cpu {

// Vectors of 8 columns per panel for M rows: M * NV accumulators stay within 12 of the 16
// AVX2 registers, leaving room for the weight loads; from 4 rows on, row blocks of 4.
constexpr int64_t packed_gemm_vectors(int64_t M) { return M == 1 ? 8 : (M == 2 ? 4 : 3); }
constexpr int64_t packed_gemm_panel_width(int64_t M) { return 8 * packed_gemm_vectors(M); }

// Rows of a panel (values of k) per pass of the row blocks: 256 x 24 floats = 24 KB, within a
// 32 KB L1 data cache.
constexpr int64_t kPanelRows = 256;

// b [K, N] (any strides) -> the panel layout for M rows: panel p holds columns
// [p*W, p*W + w_p) as [K][w_p] contiguous at offset p*W*K, w_p = min(W, N - p*W).
at::Tensor pack_gemm_operand(const at::Tensor& b, int64_t M);

// The same for b = cat(weight_rows).t() (float [n_i, K] blocks with contiguous rows), read in
// place: a slice's gate rows are packed without first being concatenated.
at::Tensor pack_gemm_operand_from_rows(at::TensorList weight_rows, int64_t M);

// A pointer to each row of the float [n_i, K] blocks (contiguous rows), in order: the columns
// of b = cat(weight_rows).t().
std::vector<const float*> weight_rows_pointers(at::TensorList weight_rows);

// out[M, N] (+)= a[M, K] @ b, with b packed by pack_gemm_operand(b, M) for this M.
void packed_gemm(int64_t M, int64_t N, int64_t K, const float* a, int64_t lda,
                 const float* packed, float* out, int64_t ldo, bool accumulate);

// out[M, N] = a[M, K] @ b for b = cat(weight_rows).t() read in place, column j of b being the
// K contiguous floats at columns[j]: one dot product per element. For a product that runs
// once on a few rows (a single step of B <= 4), where packing would read and write the whole
// weight to then read it once more.
void rows_gemm(int64_t M, int64_t N, int64_t K, const float* a, int64_t lda,
               const float* const* columns, float* out, int64_t ldo);

namespace detail {

// 8 floats: one AVX register, or two SSE registers in the baseline clone. aligned(4): loads and
// stores through it may be unaligned.
typedef float float8 __attribute__((vector_size(32), aligned(4)));

// Columns [n0, n0 + 8 * NV) of a panel of width w (ldw), rows [0, M) of a and out.
template <int M, int NV>
inline __attribute__((always_inline)) void packed_gemm_block(
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
      // a[m, k] in all lanes, written out here so that it becomes one vbroadcastss from memory
      // in each ISA clone (a helper function is lowered for the baseline ISA before it is
      // inlined, and `float8{} + x` is an add before the broadcast, as 0 + x is not x for
      // x = -0): either way a quarter of the product's speed was lost.
      const float x = a[m * lda + k];
      const float8 am = {x, x, x, x, x, x, x, x};
#pragma GCC unroll 16
      for (int v = 0; v < NV; ++v) acc[m][v] += am * wv[v];
    }
  }
#pragma GCC unroll 16
  for (int m = 0; m < M; ++m)
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) *reinterpret_cast<float8*>(out + m * ldo + n0 + 8 * v) = acc[m][v];
}

// One panel of width w (at most 8 * NV), rows [0, M) with M <= 4.
template <int M, int NV>
inline __attribute__((always_inline)) void packed_gemm_panel(int64_t K, const float* a,
                                                             int64_t lda, const float* panel,
                                                             int64_t w, float* out, int64_t ldo,
                                                             bool accumulate) {
  if (w == 8 * NV) return packed_gemm_block<M, NV>(K, a, lda, panel, w, out, ldo, 0, accumulate);
  // The last, narrower panel: 16 columns, then 8, then one by one. A block of 8 has too few
  // accumulators to hide the FMA latency (half speed): with 16 a tail of 16 (H = 128 on two
  // threads: 64 columns each in the backward, 4 * 64 in the forward) runs at full speed.
  int64_t n = 0;
  if constexpr (NV > 2) {
    if (w >= 16) {
      packed_gemm_block<M, 2>(K, a, lda, panel, w, out, ldo, 0, accumulate);
      n = 16;
    }
  }
  for (; n + 8 <= w; n += 8) packed_gemm_block<M, 1>(K, a, lda, panel, w, out, ldo, n, accumulate);
  for (; n < w; ++n) {
    for (int m = 0; m < M; ++m) {
      float sum = accumulate ? out[m * ldo + n] : 0.0f;
      for (int64_t k = 0; k < K; ++k) sum += a[m * lda + k] * panel[k * w + n];
      out[m * ldo + n] = sum;
    }
  }
}

// All panels, by chunks of kPanelRows values of k (the first chunk writes out or adds to it,
// the others add); within a panel's chunk, every block of up to 4 rows.
template <int NV>
inline __attribute__((always_inline)) void packed_gemm_panels(int64_t M, int64_t N, int64_t K,
                                                              const float* a, int64_t lda,
                                                              const float* packed, float* out,
                                                              int64_t ldo, bool accumulate) {
  constexpr int64_t W = 8 * NV;
  for (int64_t k0 = 0; k0 < K; k0 += kPanelRows) {
    const int64_t kc = std::min(kPanelRows, K - k0);
    const bool add = accumulate || k0 > 0;
    for (int64_t p0 = 0; p0 < N; p0 += W) {
      const int64_t w = std::min(W, N - p0);
      const float* panel = packed + p0 * K + k0 * w;  // rows [k0, k0 + kc) of panel p0 / W
      for (int64_t m0 = 0; m0 < M; m0 += 4) {
        const float* a_m = a + m0 * lda + k0;
        float* out_m = out + m0 * ldo + p0;
        switch (std::min<int64_t>(4, M - m0)) {
          case 1: packed_gemm_panel<1, NV>(kc, a_m, lda, panel, w, out_m, ldo, add); break;
          case 2: packed_gemm_panel<2, NV>(kc, a_m, lda, panel, w, out_m, ldo, add); break;
          case 3: packed_gemm_panel<3, NV>(kc, a_m, lda, panel, w, out_m, ldo, add); break;
          default: packed_gemm_panel<4, NV>(kc, a_m, lda, panel, w, out_m, ldo, add); break;
        }
      }
    }
  }
}

}  // namespace detail
}  // namespace fused_rnn::cpu
