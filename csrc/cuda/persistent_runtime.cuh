// What a persistent block's schedule needs from where it runs: its thread index, the block and
// grid barriers, and the on-chip product. The schedules (persistent_forward.cuh,
// persistent_backward.cuh) are written once against this interface and run
//   - on the GPU with DeviceRuntime: 256 threads, __syncthreads, the grid barrier, wmma/FFMA;
//   - on the host with HostRuntime (the emulation behind the CPU tests): one thread per block
//     doing every thread's share (tid 0 of 1), a std::thread barrier between blocks, and a plain
//     loop for the product with the same split-K contract.
// Also the launch helpers: cooperative launch on the device, one std::thread per block on the
// host.
#pragma once

#include <cstring>
#include <thread>
#include <vector>

#include "cuda/block_product.cuh"
#include "cuda/device_state.h"
#include "cuda/grid_barrier.cuh"
#include "cuda/launch.h"

namespace fused_rnn::cuda {

#if defined(__CUDACC__)
template <Engine E>
struct DeviceRuntime {
  using S = typename EngineStorage<E>::type;
  DeviceGridBarrier grid;

  __device__ __forceinline__ int tid() const { return static_cast<int>(threadIdx.x); }
  __device__ __forceinline__ int nthreads() const { return kBlockThreads; }
  __device__ __forceinline__ void sync_block() { __syncthreads(); }
  __device__ __forceinline__ void sync_grid() { grid.sync(); }
  __device__ __forceinline__ void product(const S* A, const S* W, float* acc, int k0, int kc,
                                          const PersistentPlan& plan) {
    device_accumulate<E>(A, W, acc, k0, kc, plan);
  }
};
#endif

// Methods are __host__ __device__ only so that the schedules (host-device templates) can call
// them without execution-space warnings; they are used on the host alone.
template <Engine E>
struct HostRuntime {
  using S = typename EngineStorage<E>::type;
  HostGridBarrier* grid;

  FUSED_RNN_HOST_DEVICE int tid() const { return 0; }
  FUSED_RNN_HOST_DEVICE int nthreads() const { return 1; }
  FUSED_RNN_HOST_DEVICE void sync_block() {}
  FUSED_RNN_HOST_DEVICE void sync_grid() {
#if !defined(__CUDA_ARCH__)
    grid->sync();
#endif
  }
  FUSED_RNN_HOST_DEVICE void product(const S* A, const S* W, float* acc, int k0, int kc,
                                     const PersistentPlan& plan) {
#if !defined(__CUDA_ARCH__)
    host_accumulate<E>(A, W, acc, k0, kc, plan);
#endif
  }
};

// Runs Block (a persistent schedule) for every block of the plan on the host. Shared memory is
// filled with 0xFF bytes (NaN in every float format) so that a read of anything the schedule
// did not write shows up in the results.
template <class Block, class Args>
void emulate_persistent(const Args& args, const PersistentPlan& plan) {
  HostGridBarrier grid(plan.num_blocks);
  std::vector<std::thread> threads;
  threads.reserve(plan.num_blocks);
  for (int block = 0; block < plan.num_blocks; ++block) {
    threads.emplace_back([&args, &plan, &grid, block] {
      std::vector<uint4> smem(static_cast<size_t>(plan.smem_bytes + 15) / 16);
      std::memset(smem.data(), 0xFF, smem.size() * sizeof(uint4));
      Block blk(args, plan, block, reinterpret_cast<unsigned char*>(smem.data()));
      HostRuntime<Block::kEngine> rt{&grid};
      blk.run(rt);
    });
  }
  for (auto& thread : threads) thread.join();
}

#if defined(__CUDACC__)
// Cooperative launch: every block co-resident or cudaErrorCooperativeLaunchTooLarge, never a
// grid that deadlocks in its barrier. Captured into CUDA graphs as a cooperative kernel node.
template <class Args>
cudaError_t launch_cooperative(void (*kernel)(Args, PersistentPlan), const Args& args,
                               const PersistentPlan& plan, cudaStream_t stream) {
  cudaError_t err =
      raise_shared_memory_limit(reinterpret_cast<const void*>(kernel), plan.smem_bytes);
  if (err != cudaSuccess) return err;
  cudaLaunchAttribute attribute[1];
  attribute[0].id = cudaLaunchAttributeCooperative;
  attribute[0].val.cooperative = 1;
  cudaLaunchConfig_t config = {};
  config.gridDim = dim3(static_cast<unsigned int>(plan.num_blocks));
  config.blockDim = dim3(kBlockThreads);
  config.dynamicSmemBytes = static_cast<size_t>(plan.smem_bytes);
  config.stream = stream;
  config.attrs = attribute;
  config.numAttrs = 1;
  err = cudaLaunchKernelEx(&config, kernel, args, plan);
  if (err != cudaSuccess) return err;
  return cudaGetLastError();
}

template <class Args>
cudaError_t blocks_per_sm(void (*kernel)(Args, PersistentPlan), const PersistentPlan& plan,
                          int* result) {
  cudaError_t err =
      raise_shared_memory_limit(reinterpret_cast<const void*>(kernel), plan.smem_bytes);
  if (err != cudaSuccess) return err;
  return cudaOccupancyMaxActiveBlocksPerMultiprocessor(result, kernel, kBlockThreads,
                                                       static_cast<size_t>(plan.smem_bytes));
}
#endif

// Calls fn(std::integral_constant<Engine, E>{}) for the plan's engine.
template <class Fn>
cudaError_t dispatch_engine(Engine engine, Fn&& fn) {
  switch (engine) {
    case Engine::kWmmaBF16:
      return fn(std::integral_constant<Engine, Engine::kWmmaBF16>{});
    case Engine::kWmmaF16:
      return fn(std::integral_constant<Engine, Engine::kWmmaF16>{});
    case Engine::kWmmaTF32:
      return fn(std::integral_constant<Engine, Engine::kWmmaTF32>{});
    case Engine::kFFMA:
      return fn(std::integral_constant<Engine, Engine::kFFMA>{});
  }
  return cudaErrorInvalidValue;
}

}  // namespace fused_rnn::cuda
