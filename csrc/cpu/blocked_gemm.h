// The large products of a layer, out[M, N] (+)= a[M, K] @ b[K, N] (+ bias[N]), in fp32: the
// input projection of all time steps (M = T * B), its two gradients and the recurrent weight's
// gradient (K = T * B).
//
// Why not BLAS: MKL's sgemm runs these shapes at ~70-75% of the FMA peak of 2 Zen 4 cores
// (155-168 GFLOP/s of ~224; its AMD path), and the four products are two thirds of an LSTM
// training step. This is the textbook blocked GEMM: b is packed per block of kc rows into
// panels of kNr columns ([kc][kNr], zero-padded), a per block of mc rows into slivers of kMr
// rows ([kc][kMr], zero-padded), so that any strides (a transposed operand included) cost only
// the packing, and a kMr x kNr tile of out stays in registers over a panel of b that stays in
// L1 while the slivers of a stream from L2. Threads split the rows of out, or its columns when
// there are less than a block of rows per thread (each packs its own blocks; no
// synchronisation).
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

namespace fused_rnn::cpu {

// out (contiguous rows, [M, N] with row stride ldo) (+)= a @ b (+ bias), with a[m, k] at
// a[m * a_rs + k * a_cs] and b[k, n] at b[k * b_rs + n * b_cs]. With accumulate the product is
// added to out; bias (nullptr or [N]) is added to every row. a_row_sums (nullptr or [M]) is
// set to the sums of a's rows over k, taken from a's packed blocks (no second pass over a).
void blocked_gemm(int64_t M, int64_t N, int64_t K, const float* a, int64_t a_rs, int64_t a_cs,
                  const float* b, int64_t b_rs, int64_t b_cs, float* out, int64_t ldo,
                  bool accumulate, const float* bias, float* a_row_sums = nullptr);

// Whether blocked_gemm runs a product of these sizes (fp32, an AVX2 CPU, and enough work per
// thread that packing pays off); otherwise matmul_into uses ATen's BLAS. a_transposed: a's
// columns are contiguous (grad_gx^T in the weight gradients).
bool use_blocked_gemm(at::ScalarType dtype, int64_t M, int64_t N, int64_t K, bool a_transposed);

// out [M, N] (contiguous rows) (+)= a [M, K] @ b [K, N] (+ bias [N]), any strides of a and b:
// blocked_gemm where use_blocked_gemm says so, else ATen's CPU kernels. a_row_sums (a
// contiguous [M] tensor, or nullptr) is set to a.sum(1), on the blocked path while a is packed.
void matmul_into(at::Tensor& out, const at::Tensor& a, const at::Tensor& b, bool accumulate,
                 const c10::optional<at::Tensor>& bias = c10::nullopt,
                 at::Tensor* a_row_sums = nullptr);

}  // namespace fused_rnn::cpu
