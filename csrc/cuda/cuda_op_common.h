// Host-side helpers of the CUDA ops (csrc/cuda/*_cuda.cpp): where a call runs, its plan,
// lengths in the kernels' memory, launch checks, state buffers and the weight gradient.
//
// Every op body takes an ExecContext, so the same code runs the registered CUDA ops and, on CPU
// tensors, the host emulation behind the fused_rnn_cuda::*_emulated debug ops that the CPU
// tests call (same planner, same buffers, same kernel bodies; only the executor differs).
#pragma once

#include <ATen/ATen.h>

#include <string>

#include "cuda/launch.h"
#include "cuda/plan.h"
#include "op_common.h"
#include "recurrent_weight_grad.h"

namespace fused_rnn::cuda {

struct ExecContext {
  Target target;
  int device;  // the CUDA device index (-1 in the emulation)
  DeviceLimits limits;
  bool allow_tf32;
  AlgoOverride algo;
  cudaStream_t stream;  // the current stream on the device; unused by the emulation
};

// For a call on `like`'s GPU (the caller holds a CUDAGuard): its multiprocessors and shared
// memory (queried once per device), torch's TF32 setting for cuBLAS, FUSED_RNN_CUDA_ALGO and
// the current stream.
ExecContext device_context(const Tensor& like);

// For the host emulation: a pretend device with these limits (compute capability 8).
ExecContext emulation_context(int64_t sm_count, int64_t smem_per_block, bool allow_tf32,
                              const std::string& algo);

StorageType storage_type_of(at::ScalarType dtype);
// The gate maths dtype of a storage dtype: float, or double for double.
at::ScalarType acc_dtype_of(at::ScalarType dtype);

// The lengths where the kernels read them. A device tensor is used as is; a CPU tensor goes to
// the device through a private pinned copy with a non-blocking copy (no host synchronisation,
// and the caller may change its tensor once the op returns). Under CUDA-graph capture CPU
// lengths are refused: a captured copy would re-read the host buffer at every replay.
optional<Tensor> kernel_lengths(const optional<Tensor>& lengths, const Tensor& like,
                                const ExecContext& ctx);

// Plans a call: plan_recurrence() with the context's device, TF32 setting and override, then
// (on the device) the occupancy check that every block of the persistent grid is resident.
Plan plan_call(CellKind cell, bool backward, const RecurrenceSizes& n, bool projection,
               at::ScalarType dtype, const ExecContext& ctx);

// Throws a clear error for a failed launch or CUDA call.
void check_launch(cudaError_t err, const char* what);

// A fresh fp32 (or `dtype`) [rows, cols] state initialised from `init`, or zeros: kernels update
// it in place, so it never aliases a caller's tensor.
Tensor state_buffer(const optional<Tensor>& init, int64_t rows, int64_t cols,
                    const at::TensorOptions& options);

// Pointer to step t of a contiguous [T, ...] tensor.
void* step_ptr(const Tensor& t, int64_t step);
const void* ptr_or_null(const optional<Tensor>& t);
const int64_t* lengths_ptr(const optional<Tensor>& lengths);

// [T, B, 1] bool: whether step t of sequence b is padding (t >= lengths[b]); undefined
// without lengths.
Tensor padded_steps(const optional<Tensor>& lengths, int64_t T);

// The fallback backward's product after step t: dh += dgh_t @ w_hh, on the rows for which
// step t is real (padded_t: padded_steps(...)[t], or undefined). A padded step's gradient row is
// zero, but zero times a NaN or inf of w_hh would be NaN, where torch.nn's packed sequences have
// no such row.
void add_recurrent_product(Tensor& dh, const Tensor& dgh_t, const Tensor& w_hh,
                           const Tensor& padded_t);

// One zeroed counter for the grid barrier of a persistent launch.
Tensor barrier_counter(const Tensor& like);

}  // namespace fused_rnn::cuda
