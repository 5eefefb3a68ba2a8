// Grid-wide barrier of the persistent kernels, between consecutive time steps.
//
// Every block of the grid is co-resident: the kernels are launched cooperatively
// (cudaLaunchAttributeCooperative), which fails instead of hanging when the grid does not fit.
//
// One 32-bit counter in global memory, zeroed before the launch and never reset: barrier number
// n (1, 2, ...) is passed when the counter reaches n * gridDim.x. Each block keeps n itself, so
// there is no reset race between consecutive barriers; the comparison is wrap-safe.
//
// Memory ordering (PTX memory model, gpu scope), the same pattern as cooperative_groups'
// grid.sync():
//   1. __syncthreads(): every thread's writes of this step happen before thread 0's next step.
//   2. thread 0: __threadfence() then a relaxed atomicAdd: a release pattern, cumulative over
//      the writes ordered before it by 1.
//   3. thread 0 spins on ld.acquire.gpu until all blocks arrived: an acquire pattern that
//      synchronises with every block's release (observation order runs through the chain of
//      atomic adds), then __threadfence() for good measure.
//   4. __syncthreads(): the acquire happens before every thread's reads of the next step.
// Data written by other blocks is then read with ld.global.cg (L2), see common.cuh.
#pragma once

#include <condition_variable>
#include <mutex>

#include "cuda/common.cuh"

namespace fused_rnn::cuda {

#if defined(__CUDACC__)
__device__ __forceinline__ unsigned int load_acquire_gpu(const unsigned int* p) {
  unsigned int value;
  asm volatile("ld.acquire.gpu.u32 %0, [%1];" : "=r"(value) : "l"(p) : "memory");  // generic address
  return value;
}

struct DeviceGridBarrier {
  unsigned int* counter;  // zeroed before the launch
  unsigned int generation = 0;

  __device__ __forceinline__ void sync() {
    __syncthreads();
    ++generation;
    if (threadIdx.x == 0) {
      const unsigned int target = generation * gridDim.x;  // wraps after 2^32 arrivals: fine
      __threadfence();
      atomicAdd(counter, 1u);
      while (static_cast<int>(load_acquire_gpu(counter) - target) < 0) {
      }
      __threadfence();
    }
    __syncthreads();
  }
};
#endif

// The host emulation runs one std::thread per block; this is their barrier.
class HostGridBarrier {
 public:
  explicit HostGridBarrier(int count) : count_(count) {}

  void sync() {
    std::unique_lock<std::mutex> lock(mutex_);
    const long generation = generation_;
    if (++arrived_ == count_) {
      arrived_ = 0;
      ++generation_;
      cv_.notify_all();
    } else {
      cv_.wait(lock, [&] { return generation_ != generation; });
    }
  }

 private:
  std::mutex mutex_;
  std::condition_variable cv_;
  int count_;
  int arrived_ = 0;
  long generation_ = 0;
};

}  // namespace fused_rnn::cuda
