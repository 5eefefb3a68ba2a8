// Helpers shared by every CUDA kernel of the library, all __host__ __device__ so that the kernel
// bodies also run in the host emulation (the fused_rnn_cuda::*_emulated ops tested on the CPU).
//
// Storage types are the CUDA ones (float, double, __half, __nv_bfloat16); torch builds with
// __CUDA_NO_HALF_CONVERSIONS__, so every conversion is an explicit intrinsic here.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstring>

#include "cells.h"

namespace fused_rnn::cuda {

// Gate maths type of a storage type: fp32 registers for fp32/fp16/bf16, fp64 for fp64.
template <typename S>
struct AccOf {
  using type = float;
};
template <>
struct AccOf<double> {
  using type = double;
};
template <typename S>
using acc_t = typename AccOf<S>::type;

FUSED_RNN_HOST_DEVICE float to_acc(float x) { return x; }
FUSED_RNN_HOST_DEVICE double to_acc(double x) { return x; }
FUSED_RNN_HOST_DEVICE float to_acc(__half x) { return __half2float(x); }
FUSED_RNN_HOST_DEVICE float to_acc(__nv_bfloat16 x) { return __bfloat162float(x); }

// Round to the storage type (round to nearest even, as torch's .to(dtype)).
template <typename S>
FUSED_RNN_HOST_DEVICE S from_acc(acc_t<S> x);
template <>
FUSED_RNN_HOST_DEVICE float from_acc<float>(float x) {
  return x;
}
template <>
FUSED_RNN_HOST_DEVICE double from_acc<double>(double x) {
  return x;
}
template <>
FUSED_RNN_HOST_DEVICE __half from_acc<__half>(float x) {
  return __float2half_rn(x);
}
template <>
FUSED_RNN_HOST_DEVICE __nv_bfloat16 from_acc<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

template <typename S>
FUSED_RNN_HOST_DEVICE S zero_of() {
  return from_acc<S>(acc_t<S>(0));
}

FUSED_RNN_HOST_DEVICE int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
FUSED_RNN_HOST_DEVICE int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }
FUSED_RNN_HOST_DEVICE int min32(int a, int b) { return a < b ? a : b; }

// Length of sequence b clamped to [0, T]: a device tensor of lengths is not checked on the host
// (that would synchronise), so a bad value must not make a kernel index out of bounds.
FUSED_RNN_HOST_DEVICE int64_t length_of(const int64_t* lengths, int64_t b, int64_t T) {
  return lengths == nullptr ? T : min64(max64(lengths[b], 0), T);
}

// Time step processed at position s of the forward order, and the step whose output is the
// h_prev of step t (meaningful when t is not the sequence's first step).
FUSED_RNN_HOST_DEVICE int64_t time_at(int64_t s, int64_t T, bool reverse) {
  return reverse ? T - 1 - s : s;
}
FUSED_RNN_HOST_DEVICE int64_t prev_time(int64_t t, bool reverse) { return reverse ? t + 1 : t - 1; }

// ------------------------------------------------------------------------------------------
// Loads of data that other blocks of the same persistent kernel wrote: ld.global.cg caches in
// L2 only, so an L1 line filled before the grid barrier can never serve a stale value. (The
// barrier's acquire makes the data visible; .cg makes sure no earlier L1 copy is read.)
// On the host these are plain loads.
// ------------------------------------------------------------------------------------------

// Raw bits of a storage element: staging copies bits, never converts.
template <typename S>
struct RawOf;
template <>
struct RawOf<float> {
  using type = unsigned int;
};
template <>
struct RawOf<__half> {
  using type = unsigned short;
};
template <>
struct RawOf<__nv_bfloat16> {
  using type = unsigned short;
};

template <typename R>
FUSED_RNN_HOST_DEVICE R load_cg(const R* p) {
#if defined(__CUDA_ARCH__)
  return __ldcg(p);
#else
  return *p;
#endif
}

FUSED_RNN_HOST_DEVICE uint4 load_cg16(const void* p) {
#if defined(__CUDA_ARCH__)
  return __ldcg(reinterpret_cast<const uint4*>(p));
#else
  uint4 v;
  std::memcpy(&v, p, sizeof(v));
  return v;
#endif
}

FUSED_RNN_HOST_DEVICE void store16(void* p, uint4 v) {
#if defined(__CUDA_ARCH__)
  *reinterpret_cast<uint4*>(p) = v;
#else
  std::memcpy(p, &v, sizeof(v));
#endif
}

// Brings the line of a read-only input (gx, the workspace, dy) into L1 ahead of its use, so the
// pointwise pass after the product does not wait on device memory. Never used for data that
// other blocks write. A no-op on the host.
FUSED_RNN_HOST_DEVICE void prefetch_l1(const void* p) {
#if defined(__CUDA_ARCH__)
  asm volatile("prefetch.L1 [%0];" ::"l"(p));  // generic address
#else
  (void)p;
#endif
}

// A storage element written by another block of this launch, as the gate maths type.
template <typename S>
FUSED_RNN_HOST_DEVICE acc_t<S> load_shared_state(const S* p) {
  using R = typename RawOf<S>::type;
  static_assert(sizeof(R) == sizeof(S), "raw type of a storage element");
  const R bits = load_cg(reinterpret_cast<const R*>(p));
  S value;
  std::memcpy(&value, &bits, sizeof(S));
  return to_acc(value);
}

// Copies one storage element written by another block (or the input h0) without converting.
template <typename S>
FUSED_RNN_HOST_DEVICE void copy_shared_state(S* dst, const S* src) {
  using R = typename RawOf<S>::type;
  *reinterpret_cast<R*>(dst) = load_cg(reinterpret_cast<const R*>(src));
}

}  // namespace fused_rnn::cuda
