// Per-device state of the CUDA ops; see device_state.h.
#include "cuda/device_state.h"

#include "cuda/launch.h"

namespace fused_rnn::cuda {

cudaError_t cached_device_limits(int device, DeviceLimits* limits) {
  static Memo<int, DeviceLimits> memo;
  return memo.get(device, limits, [device](DeviceLimits* out) {
    const std::tuple<cudaDeviceAttr, int*> queries[] = {
        {cudaDevAttrMultiProcessorCount, &out->sm_count},
        {cudaDevAttrComputeCapabilityMajor, &out->cc_major},
    };
    for (const auto& [attribute, value] : queries) {
      const cudaError_t err = cudaDeviceGetAttribute(value, attribute, device);
      if (err != cudaSuccess) return err;
    }
    int smem = 0;
    const cudaError_t err =
        cudaDeviceGetAttribute(&smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
    out->smem_per_block_optin = smem;
    return err;
  });
}

cudaError_t raise_shared_memory_limit(const void* kernel, int64_t bytes) {
  static HighWaterMarks<std::tuple<int, const void*>> marks;
  int device = 0;
  const cudaError_t err = cudaGetDevice(&device);
  if (err != cudaSuccess) return err;
  return marks.raise({device, kernel}, bytes, [kernel](int64_t value) {
    return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                static_cast<int>(value));
  });
}

cudaError_t cached_persistent_blocks_per_sm(int device, CellKind cell, bool backward,
                                            const PersistentPlan& plan, int* blocks_per_sm) {
  using Key = std::tuple<int, int, bool, int, int64_t>;
  static Memo<Key, int> memo;
  const Key key{device, static_cast<int>(cell), backward, static_cast<int>(plan.engine),
                plan.smem_bytes};
  return memo.get(key, blocks_per_sm, [&](int* out) {
    return persistent_blocks_per_sm(cell, backward, plan, out);
  });
}

}  // namespace fused_rnn::cuda
