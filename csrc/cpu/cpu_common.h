// Helpers of the CPU kernels: compute-dtype conversion, outputs, the per-step products and the
// time-step order, shared by every cell (the split of the work across threads is in
// cpu/partition.h).
//
// The CPU kernels compute in the accumulation type: float for fp32/fp16/bf16 storage (fp16 and
// bf16 tensors are converted once at the op's boundary), double for fp64. Every step is, on each
// thread's batch rows and slice of hidden units, one GEMM into a preallocated buffer and one
// fused pointwise pass over those rows.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/ops/addmm_cpu_dispatch.h>
#include <ATen/ops/mm_cpu_dispatch.h>

#include "cells.h"
#include "cpu/blocked_gemm.h"
#include "cpu/cpu_isa.h"
#include "cpu/output_pool.h"
#include "cpu/packed_gemm.h"
#include "cpu/partition.h"
#include "op_common.h"
#include "recurrent_weight_grad.h"

namespace fused_rnn::cpu {

inline at::ScalarType compute_dtype(at::ScalarType storage) {
  return storage == at::kDouble ? at::kDouble : at::kFloat;
}

// Contiguous copy (or the tensor itself) in the compute dtype. The common case is answered
// here: .to() and .contiguous() are dispatcher calls even when they return the tensor itself,
// and an op converts up to ten tensors (a few microseconds of a one-step call).
inline Tensor to_compute(const Tensor& t) {
  const auto dtype = compute_dtype(t.scalar_type());
  if (t.scalar_type() == dtype && t.is_contiguous()) return t;
  return t.to(dtype).contiguous();
}

inline optional<Tensor> to_compute(const optional<Tensor>& t) {
  if (!has(t)) return c10::nullopt;
  return to_compute(*t);
}

// An output computed in the compute dtype, in the op's storage dtype.
inline Tensor to_storage(const Tensor& t, at::ScalarType storage) {
  return t.scalar_type() == storage ? t : t.to(storage);
}

// Pointer to an optional tensor's data, or nullptr.
template <typename T>
inline const T* data_or_null(const optional<Tensor>& t) {
  return has(t) ? t->data_ptr<T>() : nullptr;
}

// empty_output (op_common.h) for the CPU kernels: large outputs on reused memory.
inline Tensor cpu_output(at::IntArrayRef sizes, const at::TensorOptions& options) {
  return uninitialized(pooled_empty(sizes, options));
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

// Largest batch for which a step's product runs on packed_gemm rather than BLAS, measured on
// a 2-core AMD EPYC (Zen 4), fp32, H 128 and 256, LSTM, GRU and RNN ops side by side: the
// forward's products (K = P) win at every batch up to 256 (1.05-1.4x); the backward's
// (K = G * H, in chunks of 256) win or tie up to 64 (up to 1.15x at B = 16) and are mixed
// beyond.
constexpr int64_t kForwardPackedMaxRows = 256;
constexpr int64_t kBackwardPackedMaxRows = 64;

// The weight operand of a per-step product out[B, N] (+)= a[B, K] @ b[K, N], prepared once per
// call: in fp32 with B <= max_packed_rows packed into panels for packed_gemm (or, for a single
// step of a few rows, the weight rows read in place by rows_gemm: from_rows), else b itself
// (a view is fine) for BLAS.
class StepOperand {
 public:
  StepOperand() = default;
  StepOperand(const Tensor& b, int64_t B, int64_t max_packed_rows)
      : b_(b), packed_gemm_(use_packed_gemm(b.scalar_type(), B, max_packed_rows)) {
    if (packed_gemm_) packed_ = pack_gemm_operand(b, B);
  }

  // b = cat(weight_rows).t(); concatenated only for BLAS, packed straight from the rows, or,
  // for a product that runs once (uses = 1: a single step) on at most kDirectMaxRows rows, read
  // in place by rows_gemm: packing would cost more than the product (GRU op at T = 1, B = 1,
  // H = 256: pack ~5 us of 30).
  static StepOperand from_rows(at::TensorList weight_rows, int64_t B, int64_t max_packed_rows,
                               int64_t uses) {
    StepOperand op;
    const bool fast = use_packed_gemm(weight_rows[0].scalar_type(), B, max_packed_rows);
    if (fast && uses == 1 && B <= kDirectMaxRows) {
      op.columns_ = weight_rows_pointers(weight_rows);
      op.b_ = weight_rows[0];  // keeps the weight's storage alive while columns_ point into it
    } else if (fast) {
      op.packed_gemm_ = true;
      op.packed_ = pack_gemm_operand_from_rows(weight_rows, B);
    } else {
      op.b_ = at::cat(weight_rows).t();
    }
    return op;
  }

  // out (contiguous [rows, N]) (+)= a[row0 : row0 + rows] @ b, a [B, K] with contiguous rows.
  // With packed_gemm the rows are addressed in place (a narrowed view costs ~1 us per step).
  void multiply(Tensor& out, const Tensor& a, bool accumulate, int64_t row0 = 0,
                int64_t rows = -1) const {
    if (rows < 0) rows = a.size(0) - row0;
    if (!columns_.empty()) {
      TORCH_INTERNAL_ASSERT(!accumulate && rows <= kDirectMaxRows);
      rows_gemm(rows, static_cast<int64_t>(columns_.size()), a.size(1),
                a.data_ptr<float>() + row0 * a.stride(0), a.stride(0), columns_.data(),
                out.data_ptr<float>(), out.size(1));
      return;
    }
    if (packed_gemm_) {
      packed_gemm(rows, out.size(1), a.size(1), a.data_ptr<float>() + row0 * a.stride(0),
                  a.stride(0), packed_.data_ptr<float>(), out.data_ptr<float>(), out.size(1),
                  accumulate);
    } else {
      gemm(out, a.narrow(0, row0, rows), b_, accumulate);
    }
  }

  // out (+)= steps[t, row0 : row0 + rows] @ b, steps contiguous [T, B, K]. The step's view is
  // made only for BLAS: unbinding all T steps up front cost ~90 us per backward call (a tenth
  // of it at B = 1).
  void multiply_step(Tensor& out, const Tensor& steps, int64_t t, bool accumulate,
                     int64_t row0 = 0, int64_t rows = -1) const {
    TORCH_INTERNAL_ASSERT(columns_.empty(), "multiply_step: not on a direct operand");
    const int64_t B = steps.size(1), K = steps.size(2);
    if (rows < 0) rows = B - row0;
    if (packed_gemm_) {
      packed_gemm(rows, out.size(1), K, steps.data_ptr<float>() + (t * B + row0) * K, K,
                  packed_.data_ptr<float>(), out.data_ptr<float>(), out.size(1), accumulate);
    } else {
      gemm(out, steps[t].narrow(0, row0, rows), b_, accumulate);
    }
  }

 private:
  // Without AVX2 the kernel's 8-wide vectors split into SSE halves and spill (the LSTM op at
  // B = 32, H = 256 took 300 ms instead of 10); BLAS has its own kernels for such machines.
  static bool use_packed_gemm(at::ScalarType dtype, int64_t B, int64_t max_packed_rows) {
    return dtype == at::kFloat && B > 0 && B <= max_packed_rows && cpu_isa() != CpuIsa::kBaseline;
  }

  static constexpr int64_t kDirectMaxRows = 4;

  Tensor b_, packed_;
  bool packed_gemm_ = false;
  std::vector<const float*> columns_;  // rows_gemm's columns of b (direct operand), or empty
};

// Forward operands: worker k computes pre[k] [rows_k, G*n_k] = h_prev[rows of k] [rows_k, P] @
// w_hh[gate rows of k]^T, the gate rows taken as gate g of its units at columns g*n_k ..
// (g+1)*n_k. One operand per unit slice, shared by the row groups; the worker of the first
// group prepares (packs) it, so that it starts out in that core's cache. Operands are prepared
// for the smallest group's rows: packed_gemm's panel width depends on the rows only up to 3,
// and groups of more than one have at least 8 (Partition).
struct ForwardGemms {
  const Partition& part;
  std::vector<StepOperand> w_t;  // per unit slice
  std::vector<Tensor> pre;       // per worker

  // steps: T, the number of products each operand is used for.
  ForwardGemms(const Partition& part, const Tensor& w_hh, int64_t G, int64_t steps)
      : part(part), w_t(part.slices()), pre(part.size()) {
    const int64_t H = w_hh.size(0) / G, rows = part.min_rows();
    for (int64_t k = 0; k < part.size(); ++k) {
      pre[k] = at::empty({part.rows(k), G * part.units(k)}, w_hh.options());
    }
    part.for_each([&](int64_t k) {
      if (part.group(k) != 0) return;
      std::vector<Tensor> gate_rows;
      for (int64_t g = 0; g < G; ++g) {
        gate_rows.push_back(w_hh.narrow(0, g * H + part.begin(k), part.units(k)));
      }
      w_t[part.slice(k)] = StepOperand::from_rows(gate_rows, rows, kForwardPackedMaxRows, steps);
    });
  }

  void run(int64_t k, const Tensor& h_prev) {
    w_t[part.slice(k)].multiply(pre[k], h_prev, false, part.row_begin(k), part.rows(k));
  }
};

// Backward state: worker k owns its rows of columns [begin(k), begin(k) + units(k)) of dh (the
// gradient reaching h, [B, P]) in a contiguous buffer, and adds to them the recurrent part from
// all gate gradients of the step after: dh[k] [rows_k, n_k] += dgh[t, rows of k] [rows_k, G*H]
// @ w_hh[:, columns of k]. Operands per unit slice, prepared as in ForwardGemms.
struct BackwardState {
  const Partition& part;
  const int64_t* lengths;           // [B], or nullptr
  std::vector<Tensor> dh;           // per worker
  std::vector<StepOperand> w_cols;  // per unit slice
  std::vector<std::vector<char>> kept_rows;  // per worker: rows of dh kept out of a product

  BackwardState(const Partition& part, const Tensor& w_hh, const optional<Tensor>& grad_h_n,
                const int64_t* lengths)
      : part(part), lengths(lengths), dh(part.size()), w_cols(part.slices()),
        kept_rows(part.size()) {
    part.for_each([&](int64_t k) {
      const int64_t p0 = part.begin(k), n = part.units(k);
      if (part.group(k) == 0) {
        w_cols[part.slice(k)] =
            StepOperand(w_hh.narrow(1, p0, n), part.min_rows(), kBackwardPackedMaxRows);
      }
      // clone: dh is updated in place, and must never alias the caller's grad_h_n
      dh[k] = has(grad_h_n) ? grad_h_n->narrow(0, part.row_begin(k), part.rows(k))
                                  .narrow(1, p0, n)
                                  .clone(at::MemoryFormat::Contiguous)
                            : at::zeros({part.rows(k), n}, w_hh.options());
    });
  }

  // dh += dgh[t] @ w_hh on worker k's rows and units. dgh: contiguous [T, B, G*H], the gate
  // gradients of all steps; t: the step after. Rows for which step t is padding keep their dh:
  // their gradient row is zero, but zero times a NaN or inf of w_hh would be NaN, where
  // torch.nn's packed sequences have no such row.
  void add_recurrent(int64_t k, const Tensor& dgh, int64_t t) {
    add_recurrent_from(k, dgh, t, part.row_begin(k), t);
  }

  // The same from step `index` of `steps` [*, rows, G*H], whose row row0 is worker k's first
  // (a buffer of some steps, as RecurrentGradRing's); t: the step after, as above.
  void add_recurrent_from(int64_t k, const Tensor& steps, int64_t index, int64_t row0,
                          int64_t t) {
    const int64_t b0 = part.row_begin(k), rows = part.rows(k);
    const auto padded = [&](int64_t r) { return lengths != nullptr && t >= lengths[b0 + r]; };
    const size_t row_bytes = dh[k].size(1) * dh[k].element_size();
    char* const data = static_cast<char*>(dh[k].data_ptr());
    std::vector<char>& kept = kept_rows[k];
    kept.clear();
    for (int64_t r = 0; r < rows; ++r) {
      if (padded(r)) kept.insert(kept.end(), data + r * row_bytes, data + (r + 1) * row_bytes);
    }
    w_cols[part.slice(k)].multiply_step(dh[k], steps, index, true, row0, rows);
    const char* next = kept.data();
    for (int64_t r = 0; r < rows && next != kept.data() + kept.size(); ++r) {
      if (padded(r)) {
        std::memcpy(data + r * row_bytes, next, row_bytes);
        next += row_bytes;
      }
    }
  }

  // dh [B, P] (the gradient reaching h0), the workers' blocks copied into place; then the
  // blocks and the packed operands are freed, before the caller's weight gradient allocates.
  Tensor release() {
    Tensor out = gather();
    dh.clear();
    w_cols.clear();
    return out;
  }

 private:
  Tensor gather() const {
    Tensor out = at::empty({part.row_count(), part.unit_count()}, dh[0].options());
    for (int64_t k = 0; k < part.size(); ++k) {
      out.narrow(0, part.row_begin(k), part.rows(k))
          .narrow(1, part.begin(k), part.units(k))
          .copy_(dh[k]);
    }
    return out;
  }
};

// recurrent_weight_grad (recurrent_weight_grad.h) with its products on matmul_into, so that
// fp32 runs on blocked_gemm.
inline Tensor cpu_recurrent_weight_grad(const Tensor& dgh, const Tensor& y, const Tensor& h0,
                                        const optional<Tensor>& lengths, bool reverse) {
  return recurrent_weight_grad(dgh, y, h0, lengths, reverse,
                               [](Tensor& out, const Tensor& a, const Tensor& b, bool accumulate) {
                                 matmul_into(out, a, b, accumulate);
                               });
}

// Brings the lines of [p, p + count) into L2 ahead of use. The row passes read a step of gx
// (or of the saved workspace) as G separate segments per batch row, a pattern the hardware
// prefetcher does not run ahead of: a pass prefetches, row by row, what the next step will
// read, a whole step (tens of microseconds) early.
template <typename T>
inline __attribute__((always_inline)) void prefetch_range(const T* p, int64_t count) {
  const char* bytes = reinterpret_cast<const char*>(p);
  const int64_t size = count * static_cast<int64_t>(sizeof(T));
  for (int64_t offset = 0; offset < size; offset += 64) __builtin_prefetch(bytes + offset, 0, 2);
}

// Time step processed at position s of the forward pass.
inline int64_t time_at(int64_t s, int64_t T, bool reverse) { return reverse ? T - 1 - s : s; }

// time_at(s), or -1 for a position outside [0, T) (the neighbour of the first or last step).
inline int64_t time_or_none(int64_t s, int64_t T, bool reverse) {
  return s >= 0 && s < T ? time_at(s, T, reverse) : -1;
}

// Step t of a contiguous [T, ...] tensor, or nullptr for t = -1 (see time_or_none).
template <typename T>
inline const T* step_data_or_null(const Tensor& steps, int64_t t) {
  return t < 0 ? nullptr : steps.data_ptr<T>() + t * steps.stride(0);
}

// Time step whose output is h_prev of step t (valid only when t is not a sequence's first step).
inline int64_t prev_time(int64_t t, bool reverse) { return reverse ? t + 1 : t - 1; }

inline int64_t length_of(const int64_t* lengths, int64_t b, int64_t T) {
  return lengths == nullptr ? T : lengths[b];
}

}  // namespace fused_rnn::cpu
