// What the CUDA ops keep across calls, per device. A call of one step must not re-query the
// driver for what cannot change while the process runs (device attributes, the occupancy of a
// persistent kernel at a given shared-memory size), and a kernel's dynamic shared-memory limit
// must only ever grow: it is a property of the function, shared by every thread and stream, so
// a smaller call that set its own size would lower it under a larger call in flight.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <map>
#include <mutex>
#include <tuple>

#include "cuda/plan.h"

namespace fused_rnn::cuda {

// Values computed once per key, under a lock. A failed computation is not remembered.
template <class Key, class Value>
class Memo {
 public:
  // compute: cudaError_t(Value*). Returns its error, or cudaSuccess with *out set.
  template <class Compute>
  cudaError_t get(const Key& key, Value* out, Compute&& compute) {
    std::lock_guard<std::mutex> lock(mutex_);
    auto found = values_.find(key);
    if (found == values_.end()) {
      Value value{};
      const cudaError_t err = compute(&value);
      if (err != cudaSuccess) return err;
      found = values_.emplace(key, value).first;
    }
    *out = found->second;
    return cudaSuccess;
  }

 private:
  std::mutex mutex_;
  std::map<Key, Value> values_;
};

// A maximum per key that only grows. raise(key, value, set) calls set(value) when value exceeds
// everything set for that key before, and remembers it; the lock is held across set, so two
// threads cannot interleave their settings and a smaller request never lowers the mark.
template <class Key>
class HighWaterMarks {
 public:
  // set: cudaError_t(int64_t).
  template <class Set>
  cudaError_t raise(const Key& key, int64_t value, Set&& set) {
    std::lock_guard<std::mutex> lock(mutex_);
    int64_t& mark = marks_[key];
    if (value <= mark) return cudaSuccess;
    const cudaError_t err = set(value);
    if (err == cudaSuccess) mark = value;
    return err;
  }

 private:
  std::mutex mutex_;
  std::map<Key, int64_t> marks_;
};

// The multiprocessors, compute capability and opt-in shared memory per block of `device`,
// queried once per device.
cudaError_t cached_device_limits(int device, DeviceLimits* limits);

// Raises the dynamic shared-memory limit of `kernel` on the current device to at least
// `bytes` (cudaFuncAttributeMaxDynamicSharedMemorySize), never lowering it.
cudaError_t raise_shared_memory_limit(const void* kernel, int64_t bytes);

// Blocks of a persistent kernel that fit on one multiprocessor of `device`, queried once per
// (device, cell, direction, engine, shared memory).
cudaError_t cached_persistent_blocks_per_sm(int device, CellKind cell, bool backward,
                                            const PersistentPlan& plan, int* blocks_per_sm);

}  // namespace fused_rnn::cuda
