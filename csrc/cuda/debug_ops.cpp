// The fused_rnn_cuda namespace: introspection and host emulation of the CUDA backend, for
// tests that run without a GPU. Not part of the library's interface.
//
//   plan(...)                  the persistent/fallback choice and the persistent layout that
//                              plan_recurrence() makes for a pretend device
//   *_forward/backward_emulated  the CUDA ops' host code and kernel bodies run on CPU tensors
//                              (same schemas as the fused_rnn ops plus the pretend device:
//                              algo override, multiprocessors, shared memory per block, TF32)
//   high_water_sets(...)       the settings HighWaterMarks (device_state.h) makes for a
//                              sequence of requests, from several threads at once
#include <torch/library.h>

#include <thread>
#include <vector>

#include "cuda/device_state.h"
#include "cuda/plan.h"

namespace fused_rnn::cuda {
namespace {

CellKind parse_cell(const std::string& cell) {
  if (cell == "lstm") return CellKind::kLSTM;
  if (cell == "gru") return CellKind::kGRU;
  if (cell == "rnn_tanh") return CellKind::kRNNTanh;
  if (cell == "rnn_relu") return CellKind::kRNNRelu;
  TORCH_CHECK(false, "fused_rnn_cuda::plan: unknown cell '", cell, "'");
}

StorageType parse_storage(at::ScalarType dtype) {
  switch (dtype) {
    case at::kFloat:
      return StorageType::kFloat32;
    case at::kDouble:
      return StorageType::kFloat64;
    case at::kHalf:
      return StorageType::kFloat16;
    case at::kBFloat16:
      return StorageType::kBFloat16;
    default:
      TORCH_CHECK(false, "fused_rnn_cuda::plan: unsupported dtype ", dtype);
  }
}

// [algo, engine, units_per_block, num_blocks, rows_pad, k_valid, k_pad, k_chunk, batch_tile,
//  k_splits, ld_w, ld_a, ld_acc, off_a, off_acc, smem_bytes] (engine and layout -1: fallback)
std::vector<int64_t> plan_op(const std::string& cell, bool backward, int64_t B, int64_t H,
                             int64_t P, bool projection, at::ScalarType dtype, bool allow_tf32,
                             int64_t sm_count, int64_t cc_major, int64_t smem_per_block,
                             const std::string& algo) {
  const PlanRequest request{parse_cell(cell),
                            backward,
                            B,
                            H,
                            P,
                            projection,
                            parse_storage(dtype),
                            allow_tf32,
                            {static_cast<int>(sm_count), static_cast<int>(cc_major),
                             smem_per_block},
                            parse_algo_override(algo)};
  const Plan plan = plan_recurrence(request);
  if (plan.algo != Algo::kPersistent) {
    std::vector<int64_t> out(16, -1);
    out[0] = static_cast<int64_t>(plan.algo);
    return out;
  }
  const PersistentPlan& p = plan.persistent;
  return {static_cast<int64_t>(plan.algo), static_cast<int64_t>(p.engine), p.units_per_block,
          p.num_blocks, p.rows_pad, p.k_valid, p.k_pad, p.k_chunk, p.batch_tile, p.k_splits,
          p.ld_w, p.ld_a, p.ld_acc, p.off_a, p.off_acc, p.smem_bytes};
}

// The values HighWaterMarks passes to its setter (in order) when `threads` threads raise one
// key with `requests`, thread i taking requests i, i + threads, ...: the shared-memory limit
// of a kernel is raised the same way by concurrent calls.
std::vector<int64_t> high_water_sets_op(const std::vector<int64_t>& requests, int64_t threads) {
  TORCH_CHECK(threads >= 1 && threads <= 64, "fused_rnn_cuda::high_water_sets: 1 to 64 threads");
  HighWaterMarks<int> marks;
  std::vector<int64_t> sets;  // appended under the marks' lock
  std::vector<std::thread> workers;
  for (int64_t w = 0; w < threads; ++w) {
    workers.emplace_back([&, w] {
      for (size_t i = static_cast<size_t>(w); i < requests.size();
           i += static_cast<size_t>(threads)) {
        marks.raise(0, requests[i], [&](int64_t value) {
          sets.push_back(value);
          return cudaSuccess;
        });
      }
    });
  }
  for (auto& worker : workers) worker.join();
  return sets;
}

}  // namespace

TORCH_LIBRARY(fused_rnn_cuda, m) {
  m.def("high_water_sets(int[] requests, int threads) -> int[]", &high_water_sets_op);
  m.def(
      "plan(str cell, bool backward, int B, int H, int P, bool projection, ScalarType dtype, "
      "bool allow_tf32, int sm_count, int cc_major, int smem_per_block, str algo) -> int[]",
      &plan_op);

// The pretend device of the emulated ops.
#define FUSED_RNN_DEVICE_ARGS "str algo, int sm_count, int smem_per_block, bool allow_tf32"
  m.def(
      "lstm_forward_emulated(Tensor gx, Tensor w_hh, Tensor? w_hr, Tensor h0, Tensor c0, "
      "Tensor? lengths, bool reverse, bool save_for_backward, " FUSED_RNN_DEVICE_ARGS
      ") -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "lstm_backward_emulated(Tensor? grad_y, Tensor? grad_h_n, Tensor? grad_c_n, Tensor w_hh, "
      "Tensor? w_hr, Tensor h0, Tensor c0, Tensor y, Tensor gates, Tensor cs, Tensor? lengths, "
      "bool reverse, " FUSED_RNN_DEVICE_ARGS ") -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "gru_forward_emulated(Tensor gx, Tensor w_hh, Tensor? b_hh, Tensor h0, Tensor? lengths, "
      "bool reverse, bool save_for_backward, " FUSED_RNN_DEVICE_ARGS
      ") -> (Tensor, Tensor, Tensor)");
  m.def(
      "gru_backward_emulated(Tensor? grad_y, Tensor? grad_h_n, Tensor w_hh, Tensor h0, Tensor y, "
      "Tensor gates, Tensor? lengths, bool reverse, " FUSED_RNN_DEVICE_ARGS
      ") -> (Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "rnn_forward_emulated(str nonlinearity, Tensor gx, Tensor w_hh, Tensor h0, "
      "Tensor? lengths, bool reverse, " FUSED_RNN_DEVICE_ARGS ") -> (Tensor, Tensor)");
  m.def(
      "rnn_backward_emulated(str nonlinearity, Tensor? grad_y, Tensor? grad_h_n, Tensor w_hh, "
      "Tensor h0, Tensor y, Tensor? lengths, bool reverse, " FUSED_RNN_DEVICE_ARGS
      ") -> (Tensor, Tensor, Tensor)");
#undef FUSED_RNN_DEVICE_ARGS
}

}  // namespace fused_rnn::cuda
