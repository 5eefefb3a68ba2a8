#include "cpu/small_batch_gemm.h"

#include "cpu/cpu_common.h"

namespace fused_rnn::cpu {

at::Tensor pack_small_batch_operand(const at::Tensor& b, int64_t M) {
  const int64_t K = b.size(0), N = b.size(1), W = small_batch_panel_width(M);
  at::Tensor packed = at::empty({K * N}, b.options());
  for (int64_t p0 = 0; p0 < N; p0 += W) {
    const int64_t w = std::min(W, N - p0);
    packed.narrow(0, p0 * K, K * w).view({K, w}).copy_(b.narrow(1, p0, w));
  }
  return packed;
}

FUSED_RNN_CPU_CLONES void small_batch_gemm(int64_t M, int64_t N, int64_t K, const float* a,
                                           int64_t lda, const float* packed, float* out,
                                           int64_t ldo, bool accumulate) {
  switch (M) {
    case 1: return detail::small_batch_gemm_rows<1>(N, K, a, lda, packed, out, ldo, accumulate);
    case 2: return detail::small_batch_gemm_rows<2>(N, K, a, lda, packed, out, ldo, accumulate);
    case 3: return detail::small_batch_gemm_rows<3>(N, K, a, lda, packed, out, ldo, accumulate);
    case 4: return detail::small_batch_gemm_rows<4>(N, K, a, lda, packed, out, ldo, accumulate);
    default: TORCH_CHECK(false, "small_batch_gemm: M must lie in [1, 4], got ", M);
  }
}

}  // namespace fused_rnn::cpu
