#include "cpu/packed_gemm.h"

#include "cpu/cpu_common.h"
#include "cpu/transpose.h"

namespace fused_rnn::cpu {

namespace {

using detail::transpose_8x8;

// panel[k * w + j] = columns[j][k] for k < K, j < w: each column of b contiguous (a row of the
// weight). 8 x 8 blocks, k-major so that a block row of the panel is written while its lines
// are in L1.
inline __attribute__((always_inline)) void pack_panel_from_columns_impl(
    const float* const* columns, int64_t K, int64_t w, float* panel) {
  const int64_t K8 = K - K % 8;
  int64_t j0 = 0;
  for (; j0 + 8 <= w; j0 += 8) {
    for (int64_t k = 0; k < K8; k += 8) transpose_8x8(columns + j0, k, panel + k * w + j0, w);
    for (int64_t k = K8; k < K; ++k) {
      for (int64_t j = j0; j < j0 + 8; ++j) panel[k * w + j] = columns[j][k];
    }
  }
  for (int64_t j = j0; j < w; ++j) {
    for (int64_t k = 0; k < K; ++k) panel[k * w + j] = columns[j][k];
  }
}

FUSED_RNN_CPU_ISA_VARIANTS(pack_panel_from_columns,
                           (const float* const* columns, int64_t K, int64_t w, float* panel),
                           (columns, K, w, panel),
                           pack_panel_from_columns_impl(columns, K, w, panel))

// out (+)= a @ b on the panels, rows in blocks of 4; K >= 1.
inline __attribute__((always_inline)) void packed_gemm_impl(int64_t M, int64_t N, int64_t K,
                                                            const float* a, int64_t lda,
                                                            const float* packed, float* out,
                                                            int64_t ldo, bool accumulate) {
  switch (packed_gemm_vectors(M)) {
    case 8: return detail::packed_gemm_panels<8>(M, N, K, a, lda, packed, out, ldo, accumulate);
    case 4: return detail::packed_gemm_panels<4>(M, N, K, a, lda, packed, out, ldo, accumulate);
    default: return detail::packed_gemm_panels<3>(M, N, K, a, lda, packed, out, ldo, accumulate);
  }
}

FUSED_RNN_CPU_ISA_VARIANTS(packed_gemm_variant,
                           (int64_t M, int64_t N, int64_t K, const float* a, int64_t lda,
                            const float* packed, float* out, int64_t ldo, bool accumulate),
                           (M, N, K, a, lda, packed, out, ldo, accumulate),
                           packed_gemm_impl(M, N, K, a, lda, packed, out, ldo, accumulate))

// Columns [j0, j0 + NC) of out for rows [0, M), M <= 2: NC * M dot products over K, 8 lanes
// at a time, each with its own accumulator (NC * M independent FMA chains).
template <int M, int NC>
inline __attribute__((always_inline)) void rows_gemm_block(int64_t K, const float* __restrict__ a,
                                                           int64_t lda,
                                                           const float* const* columns,
                                                           float* __restrict__ out, int64_t ldo) {
  using detail::float8;
  float8 acc[M][NC];
#pragma GCC unroll 8
  for (int m = 0; m < M; ++m)
#pragma GCC unroll 8
    for (int c = 0; c < NC; ++c) acc[m][c] = float8{};
  const int64_t K8 = K - K % 8;
  for (int64_t k = 0; k < K8; k += 8) {
    float8 av[M];
#pragma GCC unroll 8
    for (int m = 0; m < M; ++m) av[m] = *reinterpret_cast<const float8*>(a + m * lda + k);
#pragma GCC unroll 8
    for (int c = 0; c < NC; ++c) {
      const float8 wv = *reinterpret_cast<const float8*>(columns[c] + k);
#pragma GCC unroll 8
      for (int m = 0; m < M; ++m) acc[m][c] += av[m] * wv;
    }
  }
#pragma GCC unroll 8
  for (int m = 0; m < M; ++m) {
#pragma GCC unroll 8
    for (int c = 0; c < NC; ++c) {
      float sum = 0.0f;
      for (int lane = 0; lane < 8; ++lane) sum += acc[m][c][lane];
      for (int64_t k = K8; k < K; ++k) sum += a[m * lda + k] * columns[c][k];
      out[m * ldo + c] = sum;
    }
  }
}

// All columns, 4 at a time (then one by one), for rows in pairs.
inline __attribute__((always_inline)) void rows_gemm_impl(int64_t M, int64_t N, int64_t K,
                                                          const float* a, int64_t lda,
                                                          const float* const* columns,
                                                          float* out, int64_t ldo) {
  for (int64_t m0 = 0; m0 < M; m0 += 2) {
    const float* a_m = a + m0 * lda;
    float* out_m = out + m0 * ldo;
    const bool pair = M - m0 >= 2;
    int64_t j = 0;
    for (; j + 4 <= N; j += 4) {
      if (pair) {
        rows_gemm_block<2, 4>(K, a_m, lda, columns + j, out_m + j, ldo);
      } else {
        rows_gemm_block<1, 4>(K, a_m, lda, columns + j, out_m + j, ldo);
      }
    }
    for (; j < N; ++j) {
      if (pair) {
        rows_gemm_block<2, 1>(K, a_m, lda, columns + j, out_m + j, ldo);
      } else {
        rows_gemm_block<1, 1>(K, a_m, lda, columns + j, out_m + j, ldo);
      }
    }
  }
}

FUSED_RNN_CPU_ISA_VARIANTS(rows_gemm_variant,
                           (int64_t M, int64_t N, int64_t K, const float* a, int64_t lda,
                            const float* const* columns, float* out, int64_t ldo),
                           (M, N, K, a, lda, columns, out, ldo),
                           rows_gemm_impl(M, N, K, a, lda, columns, out, ldo))

}  // namespace

at::Tensor pack_gemm_operand(const at::Tensor& b, int64_t M) {
  TORCH_CHECK(b.dim() == 2 && b.scalar_type() == at::kFloat,
              "pack_gemm_operand: expected a 2-D float tensor");
  if (b.stride(1) != 1) {
    // b is a transposed weight: its columns are the weight's rows (contiguous after this).
    const at::Tensor rows = b.t().contiguous();
    return pack_gemm_operand_from_rows({rows}, M);
  }
  const int64_t K = b.size(0), N = b.size(1), W = packed_gemm_panel_width(M);
  const float* src = b.data_ptr<float>();
  at::Tensor packed = at::empty({K * N}, b.options());
  float* dst = packed.data_ptr<float>();
  for (int64_t p0 = 0; p0 < N; p0 += W) {
    const int64_t w = std::min(W, N - p0);
    float* panel = dst + p0 * K;  // [K][w]
    for (int64_t k = 0; k < K; ++k) std::copy_n(src + k * b.stride(0) + p0, w, panel + k * w);
  }
  return packed;
}

std::vector<const float*> weight_rows_pointers(at::TensorList weight_rows) {
  TORCH_CHECK(!weight_rows.empty(), "weight_rows_pointers: no rows");
  const int64_t K = weight_rows[0].size(1);
  int64_t n = 0;
  for (const at::Tensor& rows : weight_rows) n += rows.size(0);
  std::vector<const float*> pointers;
  pointers.reserve(n);
  for (const at::Tensor& rows : weight_rows) {
    TORCH_CHECK(rows.dim() == 2 && rows.scalar_type() == at::kFloat && rows.size(1) == K &&
                    rows.stride(1) == 1,
                "weight_rows_pointers: expected float [n, K] blocks with contiguous rows");
    // data_ptr once per block: its checks cost more than the loop (~2 us for 512 rows)
    const float* first = rows.data_ptr<float>();
    for (int64_t r = 0; r < rows.size(0); ++r) pointers.push_back(first + r * rows.stride(0));
  }
  return pointers;
}

at::Tensor pack_gemm_operand_from_rows(at::TensorList weight_rows, int64_t M) {
  // Column j of b: a pointer to row j of the concatenated blocks.
  const std::vector<const float*> columns = weight_rows_pointers(weight_rows);
  const int64_t K = weight_rows[0].size(1);
  const int64_t N = static_cast<int64_t>(columns.size()), W = packed_gemm_panel_width(M);
  at::Tensor packed = at::empty({K * N}, weight_rows[0].options());
  float* dst = packed.data_ptr<float>();
  // Packing runs on every call: with a strided copy_ per panel it cost more than the whole
  // recurrence of a short sequence.
  for (int64_t p0 = 0; p0 < N; p0 += W) {
    pack_panel_from_columns(columns.data() + p0, K, std::min(W, N - p0), dst + p0 * K);
  }
  return packed;
}

void packed_gemm(int64_t M, int64_t N, int64_t K, const float* a, int64_t lda,
                 const float* packed, float* out, int64_t ldo, bool accumulate) {
  TORCH_CHECK(M >= 1, "packed_gemm: M must be positive, got ", M);
  if (K == 0) {
    // no chunk of k runs: a product over nothing is zero
    if (!accumulate) {
      for (int64_t m = 0; m < M; ++m) std::fill_n(out + m * ldo, N, 0.0f);
    }
    return;
  }
  packed_gemm_variant(M, N, K, a, lda, packed, out, ldo, accumulate);
}

void rows_gemm(int64_t M, int64_t N, int64_t K, const float* a, int64_t lda,
               const float* const* columns, float* out, int64_t ldo) {
  TORCH_CHECK(M >= 1, "rows_gemm: M must be positive, got ", M);
  rows_gemm_variant(M, N, K, a, lda, columns, out, ldo);
}

}  // namespace fused_rnn::cpu
