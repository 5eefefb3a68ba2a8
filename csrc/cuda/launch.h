// Launchers of the CUDA kernels, callable from the host code of the ops (csrc/cuda/*_cuda.cpp).
//
// Arguments are plain structs of pointers (storage-typed data as void*, the storage type passed
// beside), so the op code needs no CUDA kernel headers and the kernel files no torch headers.
// Every launcher runs its kernel either on the device (on `stream`) or, for the CPU tests, in
// the host emulation (Target::kHostEmulation: the same kernel bodies on host memory, one
// std::thread per persistent block). Launchers return the CUDA error of the launch.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "cuda/plan.h"

namespace fused_rnn::cuda {

enum class Target : int { kDevice = 0, kHostEmulation = 1 };

// ------------------------------------------------------------------------------------------
// Persistent kernels: one launch for the whole sequence (see README.md).
// Shapes: G gates (4 LSTM, 3 GRU, 1 RNN), P = H (no projection on this path).
// ------------------------------------------------------------------------------------------

struct PersistentForwardArgs {
  int64_t T, B, H;
  bool reverse;
  bool relu;                // RNN: relu instead of tanh
  const void* gx;           // [T, B, G*H]
  const void* w_hh;         // [G*H, H]
  const void* b_hh;         // [3H] GRU, or nullptr
  const void* h0;           // [B, H]
  const int64_t* lengths;   // [B] in the kernel's memory, or nullptr
  void* y;                  // [T, B, H]
  void* h_n;                // [B, H]
  void* c_n;                // [B, H] LSTM
  void* gates;              // [T, B, 4H] workspace (LSTM, GRU), or nullptr
  void* cs;                 // [T, B, H] workspace (LSTM), or nullptr
  void* h_exchange;         // [2, B, H] h of consecutive steps: written by its owner, read by all
  float* c_state;           // [B, H] LSTM cell state in fp32, initialised to c0
  unsigned int* barrier;    // one counter, zeroed before the launch
};

struct PersistentBackwardArgs {
  int64_t T, B, H;
  bool reverse;
  bool relu;
  const void* w_hh;         // [G*H, H]
  const void* h0;           // [B, H] (GRU: h_prev of each sequence's first step)
  const void* c0;           // [B, H] LSTM
  const void* y;            // [T, B, H]
  const void* gates;        // [T, B, 4H] LSTM, GRU
  const void* cs;           // [T, B, H] LSTM
  const void* grad_y;       // [T, B, H] or nullptr
  const int64_t* lengths;   // [B] or nullptr
  void* grad_gx;            // [T, B, G*H]
  void* grad_gh;            // GRU: [T, B, 3H] gradients of the recurrent products; else nullptr
  float* dh_carry;          // [B, H] fp32, initialised to grad_h_n (or 0)
  float* dc_state;          // [B, H] fp32 LSTM, initialised to grad_c_n (or 0)
  void* grad_h0;            // [B, H]
  void* grad_c0;            // [B, H] LSTM
  unsigned int* barrier;    // one counter, zeroed before the launch
};

// Raises the kernel's dynamic shared-memory limit to the plan's (never lowering it, see
// device_state.h) and returns how many of its blocks fit on one multiprocessor
// (cudaOccupancyMaxActiveBlocksPerMultiprocessor).
cudaError_t persistent_blocks_per_sm(CellKind cell, bool backward, const PersistentPlan& plan,
                                     int* blocks_per_sm);

cudaError_t launch_persistent_forward(CellKind cell, const PersistentForwardArgs& args,
                                      const PersistentPlan& plan, Target target,
                                      cudaStream_t stream);
cudaError_t launch_persistent_backward(CellKind cell, const PersistentBackwardArgs& args,
                                       const PersistentPlan& plan, Target target,
                                       cudaStream_t stream);

// ------------------------------------------------------------------------------------------
// Fallback: per step, a cuBLAS GEMM (issued by the op through ATen) and one pointwise kernel.
// Per-step tensors are [B, ...] slices of step t.
// ------------------------------------------------------------------------------------------

struct FallbackForwardStep {
  int64_t B, H, t, T;
  bool relu;                // RNN
  const void* gx_t;         // [B, G*H]
  const void* pre;          // [B, G*H] h_prev @ w_hh^T
  const void* b_hh;         // [3H] GRU, or nullptr
  const int64_t* lengths;   // [B] or nullptr
  void* h;                  // [B, H] state, updated on real steps (LSTM with projection: h_raw)
  void* y_t;                // [B, H], or nullptr (LSTM with projection: written by the commit)
  void* c;                  // [B, H] LSTM cell state in the gate maths type (float or double)
  void* gates_t;            // [B, 4H] workspace (LSTM, GRU), or nullptr
  void* cs_t;               // [B, H] workspace (LSTM), or nullptr
};

// LSTM with projection, after h_proj = h_raw @ w_hr^T: real steps take h_proj as state and
// output, finished sequences keep h and emit zeros.
struct FallbackProjectionCommit {
  int64_t B, P, t, T;
  const int64_t* lengths;
  const void* h_proj;       // [B, P]
  void* h;                  // [B, P] state
  void* y_t;                // [B, P]
};

struct FallbackBackwardStep {
  int64_t B, H, t, T;
  bool reverse;
  bool relu;
  const void* gates;        // [T, B, 4H] all steps (LSTM, GRU)
  const void* cs;           // [T, B, H] all steps (LSTM)
  const void* c0;           // [B, H] LSTM
  const void* h0;           // [B, H] GRU
  const void* y;            // [T, B, H] all steps (GRU: h_prev, RNN: h)
  const void* dy_t;         // [B, H] or nullptr
  const int64_t* lengths;   // [B] or nullptr
  void* dh;                 // [B, H] gradient reaching h_t from later steps. On real steps it is
                            // replaced by 0 (LSTM, RNN) or its direct part dh * z (GRU), the
                            // GEMM that follows adding the part through W_hh. LSTM with
                            // projection: dh_raw, only read (dh_read_only).
  bool dh_read_only;
  void* dc;                 // [B, H] LSTM, gate maths type, updated in place
  void* dgx_t;              // [B, G*H]
  void* dgh_t;              // [B, 3H] GRU
};

// LSTM with projection, before the backward pointwise of step t: on real steps
// total_t = dh + dy_t (the gradient of the projected h) and dh restarts from 0.
struct FallbackProjectionGrad {
  int64_t B, P, t, T;
  const int64_t* lengths;
  void* dh;                 // [B, P]
  const void* dy_t;         // [B, P] or nullptr
  void* total_t;            // [B, P], zero on padded rows already
};

cudaError_t launch_fallback_forward(CellKind cell, StorageType storage,
                                    const FallbackForwardStep& args, Target target,
                                    cudaStream_t stream);
cudaError_t launch_fallback_backward(CellKind cell, StorageType storage,
                                     const FallbackBackwardStep& args, Target target,
                                     cudaStream_t stream);
cudaError_t launch_projection_commit(StorageType storage, const FallbackProjectionCommit& args,
                                     Target target, cudaStream_t stream);
cudaError_t launch_projection_grad(StorageType storage, const FallbackProjectionGrad& args,
                                   Target target, cudaStream_t stream);

}  // namespace fused_rnn::cuda
