// Persistent forward and backward kernels of the GRU.
#include "cuda/persistent_cells.h"
#include "cuda/persistent_launch.cuh"

namespace fused_rnn::cuda::detail {

cudaError_t gru_persistent_forward(const PersistentForwardArgs& args, const PersistentPlan& plan,
                                     Target target, cudaStream_t stream) {
  return run_persistent_forward<CellKind::kGRU>(args, plan, target, stream);
}

cudaError_t gru_persistent_backward(const PersistentBackwardArgs& args,
                                      const PersistentPlan& plan, Target target,
                                      cudaStream_t stream) {
  return run_persistent_backward<CellKind::kGRU>(args, plan, target, stream);
}

cudaError_t gru_persistent_occupancy(bool backward, const PersistentPlan& plan, int* blocks) {
  return persistent_occupancy<CellKind::kGRU>(backward, plan, blocks);
}

}  // namespace fused_rnn::cuda::detail
