// How one recurrence call runs on the GPU: the persistent kernel (recurrent weight on chip for
// all steps) or the per-step fallback (cuBLAS GEMM + one pointwise kernel per step), and for the
// persistent kernel its partition and shared-memory layout.
//
// Plain C++ (no CUDA or torch types in the interface), so the planner is unit-tested on the CPU
// through the fused_rnn_cuda::plan debug op, and the same plan drives the host emulation of the
// persistent kernels (fused_rnn_cuda::*_emulated ops).
#pragma once

#include <cstdint>
#include <string>

namespace fused_rnn::cuda {

// Threads of every persistent block (8 warps), and of the fallback pointwise kernels.
constexpr int kBlockThreads = 256;
constexpr int kBlockWarps = kBlockThreads / 32;
// Largest batch tile the persistent kernels stage per pass (rows of h or of the gate gradients).
constexpr int kMaxBatchTile = 64;
// Largest split-K factor of the product (partial sums summed by the pointwise pass).
constexpr int kMaxKSplits = 4;
// Every persistent shared-memory region starts on this boundary (wmma needs 32 bytes).
constexpr int64_t kSmemAlign = 128;

enum class CellKind : int { kLSTM = 0, kGRU = 1, kRNNTanh = 2, kRNNRelu = 3 };
enum class StorageType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2, kFloat64 = 3 };
enum class Algo : int { kPersistent = 0, kFallback = 1 };
// FUSED_RNN_CUDA_ALGO: auto (default), persistent (error when it cannot run), fallback.
enum class AlgoOverride : int { kAuto = 0, kPersistent = 1, kFallback = 2 };

// The product unit of the persistent kernels. The operand type in shared memory equals the
// storage type: bf16/fp16 on tensor cores (wmma m16n16k16, fp32 accumulation); fp32 either as
// TF32 on tensor cores (wmma m16n16k8, only when torch allows TF32 for cuBLAS) or as FFMA.
enum class Engine : int { kWmmaBF16 = 0, kWmmaF16 = 1, kWmmaTF32 = 2, kFFMA = 3 };

struct EngineShape {
  int operand_bytes;  // bytes of one shared-memory operand element
  int k_step;         // K columns of one step (split s takes steps s, s + k_splits, ...):
                      // one mma instruction, or one pass of a warp's 32 lanes x 4 for FFMA
  int row_granule;    // weight rows per product tile: the slice's rows are padded to this
};

constexpr EngineShape engine_shape(Engine e) {
  switch (e) {
    case Engine::kWmmaBF16:
    case Engine::kWmmaF16:
      return {2, 16, 16};
    case Engine::kWmmaTF32:
      return {4, 8, 16};
    case Engine::kFFMA:
    default:
      return {4, 128, 4};
  }
}

constexpr int gates_of(CellKind cell) {
  return cell == CellKind::kLSTM ? 4 : cell == CellKind::kGRU ? 3 : 1;
}

struct DeviceLimits {
  int sm_count;                  // multiprocessors: one persistent block each at most
  int cc_major;                  // compute capability major (the kernels need 8+)
  int64_t smem_per_block_optin;  // cudaDevAttrMaxSharedMemoryPerBlockOptin
};

struct PlanRequest {
  CellKind cell;
  bool backward;
  int64_t B, H, P;  // batch, hidden units, width of h (P != H only with a projection)
  bool projection;  // LSTM with w_hr
  StorageType storage;
  bool allow_tf32;  // at::globalContext().allowTF32CuBLAS()
  DeviceLimits device;
  AlgoOverride algo;
};

// Partition and shared-memory layout of a persistent kernel.
//
// Block j owns hidden units [j*U, min((j+1)*U, H)). Its weight slice sits in shared memory for
// the whole sequence as `rows_pad` rows of `k_pad` columns (leading dimension ld_w):
//   forward   row g*U + u  =  w_hh[g*H + j*U + u, :]    (the G gate rows of each owned unit)
//   backward  row u        =  w_hh[:, j*U + u]          (the owned columns: W_hh^T slice)
// Rows past the owned units and columns past K are zero. Every step, per batch tile of
// `batch_tile` rows and per K chunk of `k_chunk` columns, the activation rows (h_{t-1}, or the
// gate gradients of the step before) are staged to A [batch_tile][ld_a] and multiplied into
// acc [k_splits][batch_tile][ld_acc] (fp32; the pointwise pass sums the k_splits partials).
struct PersistentPlan {
  Engine engine;
  int units_per_block;  // U
  int num_blocks;       // ceil(H / U) <= sm_count, all co-resident
  int rows_pad;         // weight rows per block, padded to the engine's row granule
  int k_valid;          // K: P forward, G*H backward
  int k_pad;            // K rounded up to 16
  int k_chunk;          // columns staged per pass, a multiple of 16
  int batch_tile;       // rows staged per pass, a multiple of 16
  int k_splits;         // split-K partial sums of the product
  int ld_w, ld_a, ld_acc;
  int64_t off_a, off_acc, smem_bytes;  // byte offsets in dynamic shared memory (W at 0)
};

struct Plan {
  Algo algo;
  PersistentPlan persistent;  // meaningful when algo == kPersistent
  std::string reason;         // why the fallback was chosen
};

// Picks the algorithm and, for the persistent kernel, the plan. Throws (c10::Error) when the
// persistent kernel is forced but cannot run this shape.
Plan plan_recurrence(const PlanRequest& request);

// Shared-memory bytes of the weight slice of a persistent kernel: what must fit on chip.
int64_t weight_slice_bytes(const PersistentPlan& plan);

AlgoOverride parse_algo_override(const std::string& value);
// Reads FUSED_RNN_CUDA_ALGO on every call (tests change it at run time).
AlgoOverride algo_override_from_env();

}  // namespace fused_rnn::cuda
