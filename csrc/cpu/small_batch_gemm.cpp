#include "cpu/small_batch_gemm.h"

#include "cpu/cpu_common.h"

namespace fused_rnn::cpu {

FUSED_RNN_CPU_CLONES void small_batch_gemm(int64_t M, int64_t N, int64_t K, const float* a,
                                           int64_t lda, const float* wt, int64_t ldw, float* out,
                                           int64_t ldo, bool accumulate) {
  switch (M) {
    case 1: return detail::small_batch_gemm_rows<1>(N, K, a, lda, wt, ldw, out, ldo, accumulate);
    case 2: return detail::small_batch_gemm_rows<2>(N, K, a, lda, wt, ldw, out, ldo, accumulate);
    case 3: return detail::small_batch_gemm_rows<3>(N, K, a, lda, wt, ldw, out, ldo, accumulate);
    case 4: return detail::small_batch_gemm_rows<4>(N, K, a, lda, wt, ldw, out, ldo, accumulate);
    default: TORCH_CHECK(false, "small_batch_gemm: M must lie in [1, 4], got ", M);
  }
}

}  // namespace fused_rnn::cpu
