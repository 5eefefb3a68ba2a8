#include "cpu/packed_gemm.h"

#include "cpu/cpu_common.h"

namespace fused_rnn::cpu {

namespace {

using detail::float8;
typedef int int8v __attribute__((vector_size(32)));

// dst[k * ldd + i] = src[i * lds + k] for an 8 x 8 block: eight rows of 8 floats in, their
// columns out. Three rounds of shuffles (unpack pairs, pairs of pairs, 128-bit halves).
inline __attribute__((always_inline)) void transpose_8x8(const float* src, int64_t lds,
                                                         float* dst, int64_t ldd) {
  float8 r[8], t[8], u[8];
  for (int i = 0; i < 8; ++i) r[i] = *reinterpret_cast<const float8*>(src + i * lds);
  for (int i = 0; i < 8; i += 2) {
    t[i] = __builtin_shuffle(r[i], r[i + 1], int8v{0, 8, 1, 9, 4, 12, 5, 13});
    t[i + 1] = __builtin_shuffle(r[i], r[i + 1], int8v{2, 10, 3, 11, 6, 14, 7, 15});
  }
  for (int i = 0; i < 8; i += 4) {
    u[i] = __builtin_shuffle(t[i], t[i + 2], int8v{0, 1, 8, 9, 4, 5, 12, 13});
    u[i + 1] = __builtin_shuffle(t[i], t[i + 2], int8v{2, 3, 10, 11, 6, 7, 14, 15});
    u[i + 2] = __builtin_shuffle(t[i + 1], t[i + 3], int8v{0, 1, 8, 9, 4, 5, 12, 13});
    u[i + 3] = __builtin_shuffle(t[i + 1], t[i + 3], int8v{2, 3, 10, 11, 6, 7, 14, 15});
  }
  // u[k] (k < 4) holds column k of rows 0-3 then column k + 4 of rows 0-3; u[k + 4] rows 4-7.
  for (int k = 0; k < 4; ++k) {
    *reinterpret_cast<float8*>(dst + k * ldd) =
        __builtin_shuffle(u[k], u[k + 4], int8v{0, 1, 2, 3, 8, 9, 10, 11});
    *reinterpret_cast<float8*>(dst + (k + 4) * ldd) =
        __builtin_shuffle(u[k], u[k + 4], int8v{4, 5, 6, 7, 12, 13, 14, 15});
  }
}

// panel[k * w + j] = src[j * stride_n + k * stride_k] for k < K, j < w.
FUSED_RNN_CPU_CLONES void pack_transposed_panel(const float* src, int64_t stride_k,
                                                int64_t stride_n, int64_t K, int64_t w,
                                                float* panel) {
  int64_t j0 = 0;
  if (stride_k == 1) {
    // Contiguous columns (a transposed row-major weight): 8 x 8 blocks, k-major so that a
    // block row of the panel is written while its lines are in L1.
    const int64_t K8 = K - K % 8;
    for (; j0 + 8 <= w; j0 += 8) {
      for (int64_t k = 0; k < K8; k += 8) {
        transpose_8x8(src + j0 * stride_n + k, stride_n, panel + k * w + j0, w);
      }
      for (int64_t k = K8; k < K; ++k) {
        for (int64_t j = j0; j < j0 + 8; ++j) panel[k * w + j] = src[j * stride_n + k];
      }
    }
  }
  for (int64_t j = j0; j < w; ++j) {
    for (int64_t k = 0; k < K; ++k) panel[k * w + j] = src[j * stride_n + k * stride_k];
  }
}

}  // namespace

at::Tensor pack_gemm_operand(const at::Tensor& b, int64_t M) {
  TORCH_CHECK(b.dim() == 2 && b.scalar_type() == at::kFloat,
              "pack_gemm_operand: expected a 2-D float tensor");
  const int64_t K = b.size(0), N = b.size(1), W = packed_gemm_panel_width(M);
  const int64_t stride_k = b.stride(0), stride_n = b.stride(1);
  const float* src = b.data_ptr<float>();
  at::Tensor packed = at::empty({K * N}, b.options());
  float* dst = packed.data_ptr<float>();
  // Packing runs on every call: with a strided copy_ per panel it cost more than the whole
  // recurrence of a short sequence.
  for (int64_t p0 = 0; p0 < N; p0 += W) {
    const int64_t w = std::min(W, N - p0);
    float* panel = dst + p0 * K;  // [K][w]
    if (stride_n == 1) {
      for (int64_t k = 0; k < K; ++k) std::copy_n(src + k * stride_k + p0, w, panel + k * w);
    } else {
      // b is a transposed weight: b's columns are the weight's rows.
      pack_transposed_panel(src + p0 * stride_n, stride_k, stride_n, K, w, panel);
    }
  }
  return packed;
}

FUSED_RNN_CPU_CLONES void packed_gemm(int64_t M, int64_t N, int64_t K, const float* a,
                                      int64_t lda, const float* packed, float* out, int64_t ldo,
                                      bool accumulate) {
  TORCH_CHECK(M >= 1, "packed_gemm: M must be positive, got ", M);
  switch (packed_gemm_vectors(M)) {
    case 8: return detail::packed_gemm_panels<8>(M, N, K, a, lda, packed, out, ldo, accumulate);
    case 4: return detail::packed_gemm_panels<4>(M, N, K, a, lda, packed, out, ldo, accumulate);
    default: return detail::packed_gemm_panels<3>(M, N, K, a, lda, packed, out, ldo, accumulate);
  }
}

}  // namespace fused_rnn::cpu
