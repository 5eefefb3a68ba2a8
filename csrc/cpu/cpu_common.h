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
#include "cpu/small_batch_gemm.h"
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

// The forward pass splits the hidden units into contiguous slices, one per thread. A thread
// computes the recurrent product of its slice's gate rows (all G gates of its units, so the
// cell maths needs nothing from other threads) and then the cell maths of those units: one
// fork/join per step, and each thread's slice of w_hh stays in its own core's cache for all
// T steps instead of streaming the whole matrix through every step's GEMM.
class UnitPartition {
 public:
  // work_per_step: multiply-adds of one step's recurrent product; below a few tens of
  // thousands the threading costs more than it saves.
  UnitPartition(int64_t H, int64_t G, int64_t work_per_step) : H_(H), G_(G) {
    constexpr int64_t kMinWork = 1 << 15;
    constexpr int64_t kMinUnits = 8;  // one 8-wide vector of units per thread at least
    const int64_t threads = at::in_parallel_region() ? 1 : at::get_num_threads();
    const int64_t count =
        work_per_step < kMinWork ? 1 : std::max<int64_t>(1, std::min(threads, H / kMinUnits));
    for (int64_t k = 0; k <= count; ++k) begin_.push_back(H * k / count);
  }

  int64_t size() const { return static_cast<int64_t>(begin_.size()) - 1; }
  int64_t gates() const { return G_; }
  int64_t begin(int64_t k) const { return begin_[k]; }
  int64_t units(int64_t k) const { return begin_[k + 1] - begin_[k]; }

  // w [G*H, P] (gate blocks of H rows) -> the same rows, each slice's G*units rows contiguous:
  // slice k is rows [G*begin(k), G*begin(k+1)), gate g of its units at offset g*units(k).
  Tensor pack_rows(const Tensor& w) const {
    std::vector<Tensor> rows;
    for (int64_t k = 0; k < size(); ++k) {
      for (int64_t g = 0; g < G_; ++g) rows.push_back(w.narrow(0, g * H_ + begin(k), units(k)));
    }
    return at::cat(rows).contiguous();
  }

  // Runs fn(k) for every slice, slice k on thread k.
  template <typename F>
  void for_each(const F& fn) const {
    at::parallel_for(0, size(), 1, [&](int64_t k0, int64_t k1) {
      for (int64_t k = k0; k < k1; ++k) fn(k);
    });
  }

 private:
  int64_t H_, G_;
  std::vector<int64_t> begin_;
};

// Per-slice GEMM operands of the forward pass: slice k computes
//   pre[k] [B, G*units(k)] = h_prev [B, P] @ w_t[k] [P, G*units(k)]
// with w_t[k] a contiguous transposed copy of the slice's gate rows (made once per call).
struct SliceGemms {
  std::vector<Tensor> w_t, pre;

  SliceGemms(const UnitPartition& part, const Tensor& w_hh, int64_t B) {
    const Tensor packed = part.pack_rows(w_hh);
    const int64_t G = part.gates();
    Tensor pre_buffer = at::empty({B * w_hh.size(0)}, w_hh.options());
    for (int64_t k = 0; k < part.size(); ++k) {
      const int64_t rows = G * part.units(k);
      w_t.push_back(packed.narrow(0, G * part.begin(k), rows).t().contiguous());
      pre.push_back(pre_buffer.narrow(0, B * G * part.begin(k), B * rows).view({B, rows}));
    }
  }

  void run(int64_t k, const Tensor& h_prev) {
    Tensor& out = pre[k];
    const int64_t B = h_prev.size(0), P = h_prev.size(1), N = out.size(1);
    if (h_prev.scalar_type() == at::kFloat && B > 0 && B <= kSmallBatchGemmMaxRows) {
      small_batch_gemm(B, N, P, h_prev.data_ptr<float>(), P, w_t[k].data_ptr<float>(), N,
                       out.data_ptr<float>(), N);
    } else {
      gemm(out, h_prev, w_t[k], false);
    }
  }
};

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
