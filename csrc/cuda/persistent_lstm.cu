// Persistent forward and backward kernels of the LSTM.
#include "cuda/persistent_cells.h"
#include "cuda/persistent_launch.cuh"

namespace fused_rnn::cuda::detail {

cudaError_t lstm_persistent_forward(const PersistentForwardArgs& args, const PersistentPlan& plan,
                                     Target target, cudaStream_t stream) {
  return run_persistent_forward<CellKind::kLSTM>(args, plan, target, stream);
}

cudaError_t lstm_persistent_backward(const PersistentBackwardArgs& args,
                                      const PersistentPlan& plan, Target target,
                                      cudaStream_t stream) {
  return run_persistent_backward<CellKind::kLSTM>(args, plan, target, stream);
}

cudaError_t lstm_persistent_occupancy(bool backward, const PersistentPlan& plan, int* blocks) {
  return persistent_occupancy<CellKind::kLSTM>(backward, plan, blocks);
}

}  // namespace fused_rnn::cuda::detail
