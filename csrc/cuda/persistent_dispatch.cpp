// The cell switch of the persistent launchers declared in launch.h.
#include "cuda/launch.h"
#include "cuda/persistent_cells.h"

namespace fused_rnn::cuda {

cudaError_t persistent_blocks_per_sm(CellKind cell, bool backward, const PersistentPlan& plan,
                                     int* blocks_per_sm) {
  switch (cell) {
    case CellKind::kLSTM:
      return detail::lstm_persistent_occupancy(backward, plan, blocks_per_sm);
    case CellKind::kGRU:
      return detail::gru_persistent_occupancy(backward, plan, blocks_per_sm);
    case CellKind::kRNNTanh:
    case CellKind::kRNNRelu:
      return detail::rnn_persistent_occupancy(backward, plan, blocks_per_sm);
  }
  return cudaErrorInvalidValue;
}

cudaError_t launch_persistent_forward(CellKind cell, const PersistentForwardArgs& args,
                                      const PersistentPlan& plan, Target target,
                                      cudaStream_t stream) {
  switch (cell) {
    case CellKind::kLSTM:
      return detail::lstm_persistent_forward(args, plan, target, stream);
    case CellKind::kGRU:
      return detail::gru_persistent_forward(args, plan, target, stream);
    case CellKind::kRNNTanh:
    case CellKind::kRNNRelu:
      return detail::rnn_persistent_forward(args, plan, target, stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t launch_persistent_backward(CellKind cell, const PersistentBackwardArgs& args,
                                       const PersistentPlan& plan, Target target,
                                       cudaStream_t stream) {
  switch (cell) {
    case CellKind::kLSTM:
      return detail::lstm_persistent_backward(args, plan, target, stream);
    case CellKind::kGRU:
      return detail::gru_persistent_backward(args, plan, target, stream);
    case CellKind::kRNNTanh:
    case CellKind::kRNNRelu:
      return detail::rnn_persistent_backward(args, plan, target, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace fused_rnn::cuda
