// Launch (or host emulation) of the persistent kernels of one cell, for the plan's engine.
// Each persistent_<cell>.cu instantiates these for its cell; persistent_dispatch.cpp picks the
// cell. One cell per file keeps each compilation unit at 8 kernels (4 engines x 2 directions).
#pragma once

#include "cuda/persistent_backward.cuh"
#include "cuda/persistent_forward.cuh"

namespace fused_rnn::cuda {

template <CellKind kCell>
cudaError_t run_persistent_forward(const PersistentForwardArgs& args, const PersistentPlan& plan,
                                   Target target, cudaStream_t stream) {
  return dispatch_engine(plan.engine, [&](auto engine) -> cudaError_t {
    constexpr Engine E = decltype(engine)::value;
    if (target == Target::kHostEmulation) {
      emulate_persistent<PersistentForwardBlock<kCell, E>>(args, plan);
      return cudaSuccess;
    }
    return launch_cooperative(persistent_forward_kernel<kCell, E>, args, plan, stream);
  });
}

template <CellKind kCell>
cudaError_t run_persistent_backward(const PersistentBackwardArgs& args,
                                    const PersistentPlan& plan, Target target,
                                    cudaStream_t stream) {
  return dispatch_engine(plan.engine, [&](auto engine) -> cudaError_t {
    constexpr Engine E = decltype(engine)::value;
    if (target == Target::kHostEmulation) {
      emulate_persistent<PersistentBackwardBlock<kCell, E>>(args, plan);
      return cudaSuccess;
    }
    return launch_cooperative(persistent_backward_kernel<kCell, E>, args, plan, stream);
  });
}

template <CellKind kCell>
cudaError_t persistent_occupancy(bool backward, const PersistentPlan& plan, int* blocks) {
  return dispatch_engine(plan.engine, [&](auto engine) -> cudaError_t {
    constexpr Engine E = decltype(engine)::value;
    return backward ? blocks_per_sm(persistent_backward_kernel<kCell, E>, plan, blocks)
                    : blocks_per_sm(persistent_forward_kernel<kCell, E>, plan, blocks);
  });
}

}  // namespace fused_rnn::cuda
