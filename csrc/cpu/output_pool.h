// Large CPU outputs (y, the saved workspace, gradients) on memory that is reused from call to
// call instead of going back to the operating system.
//
// A training step allocates the forward's y and workspace (20 MB for an LSTM layer at T=100,
// B=32, H=256), keeps them until its backward and frees them; glibc hands blocks that large back
// to the kernel, so the next step's forward takes a page fault on every 4 KB it writes: ~4700
// faults, 5-7 ms of a 27 ms forward, more than the time between the forward with and without
// the workspace. Blocks from this pool are kept after they are freed (up to kMaxPooledBytes in
// all) and handed to the next output of a similar size (at most 1.25x), already mapped.
#pragma once

#include <ATen/ATen.h>

#include <cstddef>

namespace fused_rnn::cpu {

// Outputs smaller than this come from at::empty (malloc reuses those well); pooled blocks are
// kept up to kMaxPooledBytes in all, beyond which freed blocks go back to the system.
constexpr size_t kMinPooledBytes = size_t{1} << 20;
constexpr size_t kMaxPooledBytes = size_t{256} << 20;

// at::empty(sizes, options) for a CPU tensor, on a pooled block when it is large enough. The
// tensor is an ordinary contiguous, resizable CPU tensor; its memory returns to the pool when
// its storage is freed.
at::Tensor pooled_empty(at::IntArrayRef sizes, const at::TensorOptions& options);

// Bytes held by the pool in freed blocks waiting for reuse.
size_t pooled_free_bytes();

// Returns the freed blocks to the system (fused_rnn.empty_cpu_cache()); the bytes released.
size_t release_pooled_blocks();

}  // namespace fused_rnn::cpu
