// Helpers of the CPU kernels: compute-dtype conversion, the per-step GEMM, row parallelism,
// time-step order and the weight-gradient GEMMs shared by every cell.
//
// The CPU kernels compute in the accumulation type: float for fp32/fp16/bf16 storage (fp16 and
// bf16 tensors are converted once at the op's boundary), double for fp64. Every step is one
// GEMM into a preallocated buffer followed by one fused pointwise pass over the batch rows.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/ops/addmm_cpu_dispatch.h>
#include <ATen/ops/mm_cpu_dispatch.h>

#include "cells.h"
#include "op_common.h"

// Row loops of float kernels are compiled twice, for AVX2+FMA machines and for any x86-64,
// and picked at load time: the gate maths is most of a step's cost at small hidden sizes and
// vectorises 8-wide only with AVX2.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 11
#define FUSED_RNN_CPU_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define FUSED_RNN_CPU_CLONES
#endif

namespace fused_rnn::cpu {

inline at::ScalarType compute_dtype(at::ScalarType storage) {
  return storage == at::kDouble ? at::kDouble : at::kFloat;
}

// Contiguous copy (or the tensor itself) in the compute dtype.
inline Tensor to_compute(const Tensor& t) {
  return t.to(compute_dtype(t.scalar_type())).contiguous();
}

inline optional<Tensor> to_compute(const optional<Tensor>& t) {
  if (!has(t)) return c10::nullopt;
  return to_compute(*t);
}

// Pointer to an optional tensor's data, or nullptr.
template <typename T>
inline const T* data_or_null(const optional<Tensor>& t) {
  return has(t) ? t->data_ptr<T>() : nullptr;
}

// out[M, N] (+)= a[M, K] @ b[K, N]. `b` may be a transposed view. Calls ATen's CPU kernel
// directly (no dispatcher), which runs MKL/OpenBLAS on the given buffers without allocating.
inline void gemm(Tensor& out, const Tensor& a, const Tensor& b, bool accumulate) {
  if (accumulate) {
    at::cpu::addmm_out(out, out, a, b);
  } else {
    at::cpu::mm_out(out, a, b);
  }
}

// Runs fn(row_begin, row_end) over the batch rows in parallel, with enough elements per task
// that the threading overhead stays small next to the work.
template <typename F>
inline void parallel_rows(int64_t rows, int64_t elements_per_row, const F& fn) {
  constexpr int64_t kElementsPerTask = 16384;
  const int64_t grain = std::max<int64_t>(1, kElementsPerTask / std::max<int64_t>(1, elements_per_row));
  at::parallel_for(0, rows, grain, fn);
}

// Time step processed at position s of the forward pass.
inline int64_t time_at(int64_t s, int64_t T, bool reverse) { return reverse ? T - 1 - s : s; }

// Time step whose output is h_prev of step t (valid only when t is not a sequence's first step).
inline int64_t prev_time(int64_t t, bool reverse) { return reverse ? t + 1 : t - 1; }

inline int64_t length_of(const int64_t* lengths, int64_t b, int64_t T) {
  return lengths == nullptr ? T : lengths[b];
}

// Gradient of the recurrent weight from the gate gradients of all steps, as two GEMMs:
//   grad_w_hh[GH, P] = sum_{t,b} dgh[t,b]^T h_prev[t,b]
// where h_prev is y of the neighbouring step (zero on padded steps, where dgh is zero too) or
// h0 at each sequence's first step. dgh [T, B, GH], y [T, B, P], h0 [B, P].
inline Tensor recurrent_weight_grad(const Tensor& dgh, const Tensor& y, const Tensor& h0,
                                    const optional<Tensor>& lengths, bool reverse) {
  const int64_t T = dgh.size(0), B = dgh.size(1), GH = dgh.size(2), P = y.size(2);
  Tensor grad_w = at::zeros({GH, P}, dgh.options());
  if (T == 0 || B == 0) return grad_w;
  if (T > 1) {
    // Steps whose h_prev is y of the neighbouring step.
    const Tensor dgh_steps = reverse ? dgh.narrow(0, 0, T - 1) : dgh.narrow(0, 1, T - 1);
    const Tensor y_prev = reverse ? y.narrow(0, 1, T - 1) : y.narrow(0, 0, T - 1);
    gemm(grad_w, dgh_steps.reshape({-1, GH}).t(), y_prev.reshape({-1, P}), true);
  }
  // Each sequence's first step, whose h_prev is h0: t = 0, or t = length - 1 in reverse.
  Tensor dgh_first;
  if (!reverse) {
    dgh_first = dgh[0];
  } else if (!has(lengths)) {
    dgh_first = dgh[T - 1];
  } else {
    const Tensor first_t = (lengths->to(at::kLong) - 1).clamp_min(0);
    const Tensor rows = first_t * B + at::arange(B, first_t.options());
    // A length-0 sequence maps to row b of step 0, whose gradient is zero.
    dgh_first = dgh.reshape({T * B, GH}).index_select(0, rows);
  }
  gemm(grad_w, dgh_first.t(), h0, true);
  return grad_w;
}

}  // namespace fused_rnn::cpu
