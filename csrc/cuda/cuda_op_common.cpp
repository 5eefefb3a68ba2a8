// Host-side helpers of the CUDA ops; see cuda_op_common.h.
#include "cuda/cuda_op_common.h"

#include <ATen/Context.h>
#include <c10/cuda/CUDAStream.h>

#include "cuda/device_state.h"

namespace fused_rnn::cuda {

ExecContext device_context(const Tensor& like) {
  // Attributes rather than ATen's cached cudaDeviceProp: ATen/cuda/CUDAContext.h pulls in the
  // cuBLAS/cuSPARSE headers, which a bare CUDA toolkit (as in CI) does not have. Queried once
  // per device (device_state.h).
  const int device = like.get_device();
  ExecContext ctx;
  ctx.target = Target::kDevice;
  ctx.device = device;
  check_launch(cached_device_limits(device, &ctx.limits), "cudaDeviceGetAttribute");
  ctx.allow_tf32 = at::globalContext().allowTF32CuBLAS();
  ctx.algo = algo_override_from_env();
  ctx.stream = c10::cuda::getCurrentCUDAStream(device).stream();
  return ctx;
}

ExecContext emulation_context(int64_t sm_count, int64_t smem_per_block, bool allow_tf32,
                              const std::string& algo) {
  TORCH_CHECK(sm_count >= 1 && sm_count <= 4096, "fused_rnn_cuda: sm_count must lie in [1, 4096]");
  TORCH_CHECK(smem_per_block >= 1024, "fused_rnn_cuda: smem_per_block must be at least 1024");
  ExecContext ctx;
  ctx.target = Target::kHostEmulation;
  ctx.device = -1;
  ctx.limits = {static_cast<int>(sm_count), 8, smem_per_block};
  ctx.allow_tf32 = allow_tf32;
  ctx.algo = parse_algo_override(algo);
  ctx.stream = nullptr;
  return ctx;
}

StorageType storage_type_of(at::ScalarType dtype) {
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
      TORCH_CHECK(false, "fused_rnn: unsupported dtype ", dtype);
  }
}

at::ScalarType acc_dtype_of(at::ScalarType dtype) {
  return dtype == at::kDouble ? at::kDouble : at::kFloat;
}

optional<Tensor> kernel_lengths(const optional<Tensor>& lengths, const Tensor& like,
                                const ExecContext& ctx) {
  if (!has(lengths)) return c10::nullopt;
  if (ctx.target == Target::kHostEmulation || lengths->device() == like.device()) {
    return lengths->contiguous();
  }
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  check_launch(cudaStreamIsCapturing(ctx.stream, &capture), "cudaStreamIsCapturing");
  TORCH_CHECK(capture == cudaStreamCaptureStatusNone,
              "fused_rnn: lengths on the CPU cannot be used under CUDA-graph capture (the "
              "captured copy would replay whatever its host buffer holds then); pass lengths on ",
              like.device());
  // A private pinned copy, even of a tensor that is pinned already: the copy to the device runs
  // after this call returns, and the caller may change its own tensor by then. The caching
  // host allocator keeps the block until that copy has run.
  Tensor host = at::empty(lengths->sizes(), lengths->options().pinned_memory(true));
  host.copy_(*lengths);
  return host.to(like.device(), /*non_blocking=*/true);
}

Plan plan_call(CellKind cell, bool backward, const RecurrenceSizes& n, bool projection,
               at::ScalarType dtype, const ExecContext& ctx) {
  PlanRequest request;
  request.cell = cell;
  request.backward = backward;
  request.B = n.B, request.H = n.H, request.P = n.P;
  request.projection = projection;
  request.storage = storage_type_of(dtype);
  request.device = ctx.limits;
  request.allow_tf32 = ctx.allow_tf32;
  request.algo = ctx.algo;
  Plan plan = plan_recurrence(request);
  if (plan.algo != Algo::kPersistent || ctx.target != Target::kDevice) return plan;

  // The planner assumed one block per multiprocessor; check that the kernel (with its registers
  // and this much shared memory) really fits, so the cooperative launch cannot be refused.
  int per_sm = 0;
  check_launch(cached_persistent_blocks_per_sm(ctx.device, request.cell, request.backward,
                                               plan.persistent, &per_sm),
               "the occupancy query of a persistent kernel");
  if (static_cast<int64_t>(per_sm) * ctx.limits.sm_count < plan.persistent.num_blocks) {
    const std::string why = "only " + std::to_string(per_sm) + " block(s) of " +
                            std::to_string(plan.persistent.smem_bytes) +
                            " bytes of shared memory fit per multiprocessor, " +
                            std::to_string(plan.persistent.num_blocks) + " blocks are needed";
    TORCH_CHECK(ctx.algo != AlgoOverride::kPersistent,
                "fused_rnn: FUSED_RNN_CUDA_ALGO=persistent, but ", why);
    plan.algo = Algo::kFallback;
    plan.reason = why;
  }
  return plan;
}

void check_launch(cudaError_t err, const char* what) {
  if (err == cudaSuccess) return;
  (void)cudaGetLastError();  // clear a non-sticky error so that later calls are not blamed
  TORCH_CHECK(false, "fused_rnn: ", what, " failed: ", cudaGetErrorName(err), ": ",
              cudaGetErrorString(err));
}

Tensor state_buffer(const optional<Tensor>& init, int64_t rows, int64_t cols,
                    const at::TensorOptions& options) {
  if (!has(init)) return at::zeros({rows, cols}, options);
  Tensor out = at::empty({rows, cols}, options);
  out.copy_(*init);
  return out;
}

void* step_ptr(const Tensor& t, int64_t step) {
  return static_cast<char*>(t.data_ptr()) + step * t.stride(0) * t.element_size();
}

const void* ptr_or_null(const optional<Tensor>& t) { return has(t) ? t->data_ptr() : nullptr; }

const int64_t* lengths_ptr(const optional<Tensor>& lengths) {
  return has(lengths) ? lengths->data_ptr<int64_t>() : nullptr;
}

Tensor padded_steps(const optional<Tensor>& lengths, int64_t T) {
  if (!has(lengths)) return Tensor();
  return (at::arange(T, lengths->options()).unsqueeze(1) >= lengths->unsqueeze(0)).unsqueeze(2);
}

void add_recurrent_product(Tensor& dh, const Tensor& dgh_t, const Tensor& w_hh,
                           const Tensor& padded_t) {
  if (!padded_t.defined()) {
    at::addmm_out(dh, dh, dgh_t, w_hh);
  } else {
    dh.add_(at::mm(dgh_t, w_hh).masked_fill_(padded_t, 0));
  }
}

Tensor barrier_counter(const Tensor& like) {
  return at::zeros({1}, like.options().dtype(at::kInt));
}

}  // namespace fused_rnn::cuda
