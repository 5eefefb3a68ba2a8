// The per-step product of a persistent block, on chip:
//
//   acc[s][b][n] += sum_{k in chunk, k-step of split s} A[b][k] * W[n][k0 + k]
//
//   A    [batch_tile][ld_a]      activation rows staged from global memory (h_{t-1} in the
//                                forward, the gate gradients of the step before in the backward)
//   W    [rows_pad][ld_w]        the block's weight slice, resident for the whole sequence
//   acc  [k_splits][batch_tile][ld_acc] fp32 partial sums, summed by the pointwise pass
//
// With the weight as the column-major B operand (B[k][n] = W[n][k]), batch rows are the M
// dimension of the product and weight rows the N dimension, in the forward (N = G*U gate rows)
// and the backward (N = U columns of W_hh) alike.
//
// Engines: wmma (bf16/fp16 m16n16k16, TF32 m16n16k8) with fp32 accumulators, one (m-tile,
// n-tile, split) item per warp at a time, the accumulator loaded from and stored back to acc so
// that K chunks accumulate; FFMA for fp32 without TF32, lanes splitting K and a warp reduction.
// Both are device-only; the host emulation has its own loop (HostRuntime::product in
// persistent_runtime.cuh) with the same contract.
#pragma once

#include <mma.h>

#include "cuda/common.cuh"
#include "cuda/plan.h"

namespace fused_rnn::cuda {

// Storage (= shared-memory operand) type of an engine.
template <Engine E>
struct EngineStorage {
  using type = float;
};
template <>
struct EngineStorage<Engine::kWmmaBF16> {
  using type = __nv_bfloat16;
};
template <>
struct EngineStorage<Engine::kWmmaF16> {
  using type = __half;
};

// ------------------------------------------------------------------------------------------
// Staging: rows [0, rows) of src (row stride ld_src elements, k_valid valid columns), columns
// [k0, k0 + kc), to dst [batch_tile][ld_dst]; rows >= rows and columns >= k_valid become zero
// so the padded product tiles add nothing (and no NaN from uninitialised memory). Copies raw
// bits with L2-only loads (the source was written by other blocks: see common.cuh). 16-byte
// vectors when the source rows allow it, else one element at a time (odd sizes).
// ------------------------------------------------------------------------------------------
template <typename S>
FUSED_RNN_HOST_DEVICE void stage_rows(S* dst, int ld_dst, const S* src, int64_t ld_src, int rows,
                                      int batch_tile, int64_t k0, int kc, int64_t k_valid,
                                      int tid, int nthreads) {
  using R = typename RawOf<S>::type;
  constexpr int kVec = 16 / static_cast<int>(sizeof(S));
  const bool vectorized = ld_src % kVec == 0 && k_valid % kVec == 0 &&
                          reinterpret_cast<uintptr_t>(src) % 16 == 0;
  if (vectorized) {
    const int chunks = kc / kVec;  // kc is a multiple of 16
    const int count = batch_tile * chunks;
    // kLoadsInFlight independent L2 loads per thread before their stores: the staging is
    // latency-bound, one load at a time would wait a full L2 round trip each.
    constexpr int kLoadsInFlight = 8;
    for (int base = tid; base < count; base += kLoadsInFlight * nthreads) {
      uint4 v[kLoadsInFlight];
#pragma unroll
      for (int l = 0; l < kLoadsInFlight; ++l) {
        const int i = base + l * nthreads;
        const int r = i / chunks;
        const int c = (i - r * chunks) * kVec;
        v[l] = make_uint4(0u, 0u, 0u, 0u);
        // k_valid is a multiple of kVec: a vector is wholly valid or wholly padding.
        if (i < count && r < rows && k0 + c < k_valid) v[l] = load_cg16(src + r * ld_src + k0 + c);
      }
#pragma unroll
      for (int l = 0; l < kLoadsInFlight; ++l) {
        const int i = base + l * nthreads;
        const int r = i / chunks;
        const int c = (i - r * chunks) * kVec;
        if (i < count) store16(dst + static_cast<int64_t>(r) * ld_dst + c, v[l]);
      }
    }
  } else {
    R* dst_bits = reinterpret_cast<R*>(dst);
    const R* src_bits = reinterpret_cast<const R*>(src);
    for (int i = tid; i < batch_tile * kc; i += nthreads) {
      const int r = i / kc;
      const int c = i - r * kc;
      R v = 0;
      if (r < rows && k0 + c < k_valid) v = load_cg(src_bits + r * ld_src + k0 + c);
      dst_bits[static_cast<int64_t>(r) * ld_dst + c] = v;
    }
  }
}

// Zeroes the fp32 partial sums before the first K chunk of a batch tile.
FUSED_RNN_HOST_DEVICE void zero_acc(float* acc, int64_t count, int tid, int nthreads) {
  for (int64_t i = tid; i < count; i += nthreads) acc[i] = 0.0f;
}

#if defined(__CUDACC__)

// ------------------------------------------------------------------------------------------
// Tensor-core engine (wmma). Fragment pointers are 256-bit aligned and leading dimensions
// multiples of 16 bytes: regions start on 128 bytes, ld_a/ld_w are multiples of 8 (16-bit) or 4
// (fp32) elements, tile origins are multiples of 16 rows and of one K step (16 or 8 elements).
// ------------------------------------------------------------------------------------------
template <Engine E>
struct WmmaTraits;
template <>
struct WmmaTraits<Engine::kWmmaBF16> {
  using Operand = __nv_bfloat16;
  using FragmentType = __nv_bfloat16;
  static constexpr int kK = 16;
};
template <>
struct WmmaTraits<Engine::kWmmaF16> {
  using Operand = __half;
  using FragmentType = __half;
  static constexpr int kK = 16;
};
template <>
struct WmmaTraits<Engine::kWmmaTF32> {
  using Operand = float;
  using FragmentType = nvcuda::wmma::precision::tf32;
  static constexpr int kK = 8;
};

template <Engine E>
__device__ __forceinline__ void wmma_accumulate(const typename WmmaTraits<E>::Operand* A,
                                                const typename WmmaTraits<E>::Operand* W,
                                                float* acc, int k0, int kc,
                                                const PersistentPlan& plan) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  namespace wmma = nvcuda::wmma;
  using Tr = WmmaTraits<E>;
  using FragA = wmma::fragment<wmma::matrix_a, 16, 16, Tr::kK, typename Tr::FragmentType,
                               wmma::row_major>;
  using FragB = wmma::fragment<wmma::matrix_b, 16, 16, Tr::kK, typename Tr::FragmentType,
                               wmma::col_major>;
  using FragC = wmma::fragment<wmma::accumulator, 16, 16, Tr::kK, float>;
  static_assert(engine_shape(E).k_step == Tr::kK, "plan and engine disagree on the K step");

  const int warp = threadIdx.x / 32;
  const int m_tiles = plan.batch_tile / 16;
  const int n_tiles = plan.rows_pad / 16;
  const int splits = plan.k_splits;
  const int k_steps = kc / Tr::kK;
  const int64_t split_stride = static_cast<int64_t>(plan.batch_tile) * plan.ld_acc;
  for (int item = warp; item < m_tiles * n_tiles * splits; item += kBlockWarps) {
    const int split = item % splits;
    const int tile = item / splits;
    const int m = tile / n_tiles;
    const int n = tile - m * n_tiles;
    float* c_ptr = acc + split * split_stride + static_cast<int64_t>(m) * 16 * plan.ld_acc + n * 16;
    const auto* a_ptr = A + static_cast<int64_t>(m) * 16 * plan.ld_a;
    const auto* w_ptr = W + static_cast<int64_t>(n) * 16 * plan.ld_w + k0;
    FragC c;
    wmma::load_matrix_sync(c, c_ptr, plan.ld_acc, wmma::mem_row_major);
    for (int ks = split; ks < k_steps; ks += splits) {
      FragA a;
      FragB b;
      wmma::load_matrix_sync(a, a_ptr + ks * Tr::kK, plan.ld_a);
      wmma::load_matrix_sync(b, w_ptr + ks * Tr::kK, plan.ld_w);
      if constexpr (E == Engine::kWmmaTF32) {
#pragma unroll
        for (int i = 0; i < a.num_elements; ++i) a.x[i] = wmma::__float_to_tf32(a.x[i]);
#pragma unroll
        for (int i = 0; i < b.num_elements; ++i) b.x[i] = wmma::__float_to_tf32(b.x[i]);
      }
      wmma::mma_sync(c, a, b, c);
    }
    wmma::store_matrix_sync(c_ptr, c, plan.ld_acc, wmma::mem_row_major);
  }
#else
  __trap();  // the planner never picks the persistent kernels below compute capability 8.0
#endif
}

// ------------------------------------------------------------------------------------------
// FFMA engine (fp32 without TF32). An item is 16 batch rows x 4 weight rows x one K split. A
// K step is 128 columns, one 4-column piece per lane (16-byte loads, consecutive lanes on
// consecutive addresses: no bank conflicts); split s takes steps s, s + k_splits, ... Then a
// butterfly reduction gives every lane the 64 sums and lane (i % 32) adds sum i to its split's
// partial sums.
// ------------------------------------------------------------------------------------------
constexpr int kFfmaRows = 4;
constexpr int kFfmaBatch = 16;

__device__ __forceinline__ void ffma_accumulate(const float* A, const float* W, float* acc, int k0,
                                                int kc, const PersistentPlan& plan) {
  static_assert(engine_shape(Engine::kFFMA).k_step == 32 * 4, "a K step is one pass of a warp");
  static_assert(engine_shape(Engine::kFFMA).row_granule == kFfmaRows, "FFMA tile rows");
  constexpr int kStep = 32 * 4;
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int m_tiles = plan.batch_tile / kFfmaBatch;
  const int n_groups = plan.rows_pad / kFfmaRows;
  const int splits = plan.k_splits;
  const int64_t split_stride = static_cast<int64_t>(plan.batch_tile) * plan.ld_acc;
  for (int item = warp; item < m_tiles * n_groups * splits; item += kBlockWarps) {
    const int split = item % splits;
    const int tile = item / splits;
    const int m = tile / n_groups;
    const int n = tile - m * n_groups;
    const float* a_base = A + static_cast<int64_t>(m) * kFfmaBatch * plan.ld_a;
    const float* w_base = W + static_cast<int64_t>(n) * kFfmaRows * plan.ld_w + k0;
    float sum[kFfmaRows][kFfmaBatch];
#pragma unroll
    for (int r = 0; r < kFfmaRows; ++r) {
#pragma unroll
      for (int b = 0; b < kFfmaBatch; ++b) sum[r][b] = 0.0f;
    }
    for (int k = split * kStep + lane * 4; k < kc; k += splits * kStep) {
      float4 w[kFfmaRows];
#pragma unroll
      for (int r = 0; r < kFfmaRows; ++r) {
        w[r] = *reinterpret_cast<const float4*>(w_base + static_cast<int64_t>(r) * plan.ld_w + k);
      }
#pragma unroll
      for (int b = 0; b < kFfmaBatch; ++b) {
        const float4 a =
            *reinterpret_cast<const float4*>(a_base + static_cast<int64_t>(b) * plan.ld_a + k);
#pragma unroll
        for (int r = 0; r < kFfmaRows; ++r) {
          sum[r][b] = fmaf(a.x, w[r].x, sum[r][b]);
          sum[r][b] = fmaf(a.y, w[r].y, sum[r][b]);
          sum[r][b] = fmaf(a.z, w[r].z, sum[r][b]);
          sum[r][b] = fmaf(a.w, w[r].w, sum[r][b]);
        }
      }
    }
#pragma unroll
    for (int r = 0; r < kFfmaRows; ++r) {
#pragma unroll
      for (int b = 0; b < kFfmaBatch; ++b) {
#pragma unroll
        for (int offset = 16; offset > 0; offset /= 2) {
          sum[r][b] += __shfl_xor_sync(0xffffffffu, sum[r][b], offset);
        }
        // Every lane holds the sum; one lane per value writes it (64 values over 32 lanes).
        if (lane == (r * kFfmaBatch + b) % 32) {
          acc[split * split_stride + static_cast<int64_t>(m * kFfmaBatch + b) * plan.ld_acc +
              n * kFfmaRows + r] += sum[r][b];
        }
      }
    }
  }
}

// The product of one staged chunk on the device.
template <Engine E>
__device__ __forceinline__ void device_accumulate(const typename EngineStorage<E>::type* A,
                                                  const typename EngineStorage<E>::type* W,
                                                  float* acc, int k0, int kc,
                                                  const PersistentPlan& plan) {
  if constexpr (E == Engine::kFFMA) {
    ffma_accumulate(A, W, acc, k0, kc, plan);
  } else {
    wmma_accumulate<E>(A, W, acc, k0, kc, plan);
  }
}

#endif  // __CUDACC__

// The same contract on the host (emulation): split s takes the K steps ks with ks % k_splits == s
// (the last step of a chunk may be partial: FFMA steps are 128 columns, chunks multiples of 16).
template <Engine E>
void host_accumulate(const typename EngineStorage<E>::type* A,
                     const typename EngineStorage<E>::type* W, float* acc, int k0, int kc,
                     const PersistentPlan& plan) {
  const int k_step = engine_shape(E).k_step;
  const int64_t split_stride = static_cast<int64_t>(plan.batch_tile) * plan.ld_acc;
  for (int ks = 0; ks * k_step < kc; ++ks) {
    float* acc_split = acc + (ks % plan.k_splits) * split_stride;
    const int k_end = min32((ks + 1) * k_step, kc);
    for (int b = 0; b < plan.batch_tile; ++b) {
      for (int n = 0; n < plan.rows_pad; ++n) {
        float sum = 0.0f;
        for (int k = ks * k_step; k < k_end; ++k) {
          sum += to_acc(A[static_cast<int64_t>(b) * plan.ld_a + k]) *
                 to_acc(W[static_cast<int64_t>(n) * plan.ld_w + k0 + k]);
        }
        acc_split[static_cast<int64_t>(b) * plan.ld_acc + n] += sum;
      }
    }
  }
}

}  // namespace fused_rnn::cuda
