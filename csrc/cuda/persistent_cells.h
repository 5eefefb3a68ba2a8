// Per-cell entry points of the persistent kernels, one compilation unit each
// (persistent_lstm.cu, persistent_gru.cu, persistent_rnn.cu); launch.h's launchers dispatch here.
#pragma once

#include "cuda/launch.h"

namespace fused_rnn::cuda::detail {

#define FUSED_RNN_DECLARE_PERSISTENT(cell)                                                       \
  cudaError_t cell##_persistent_forward(const PersistentForwardArgs& args,                     \
                                        const PersistentPlan& plan, Target target,             \
                                        cudaStream_t stream);                                  \
  cudaError_t cell##_persistent_backward(const PersistentBackwardArgs& args,                   \
                                         const PersistentPlan& plan, Target target,            \
                                         cudaStream_t stream);                                 \
  cudaError_t cell##_persistent_occupancy(bool backward, const PersistentPlan& plan, int* blocks);

FUSED_RNN_DECLARE_PERSISTENT(lstm)
FUSED_RNN_DECLARE_PERSISTENT(gru)
FUSED_RNN_DECLARE_PERSISTENT(rnn)

#undef FUSED_RNN_DECLARE_PERSISTENT

}  // namespace fused_rnn::cuda::detail
