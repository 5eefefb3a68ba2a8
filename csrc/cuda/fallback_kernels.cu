// Fallback pointwise kernels (one launch per step) and their launchers; see fallback_kernels.cuh.
#include "cuda/fallback_kernels.cuh"

#include <algorithm>

namespace fused_rnn::cuda {
namespace {

// Elementwise kernels: a grid-stride loop over n elements calling Body::apply(args, idx).
template <class Body, class Args>
__global__ void __launch_bounds__(kBlockThreads) elementwise_kernel(const Args args, int64_t n) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    Body::apply(args, i);
  }
}

template <class Body, class Args>
cudaError_t run_elementwise(const Args& args, int64_t n, Target target, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  if (target == Target::kHostEmulation) {
    for (int64_t i = 0; i < n; ++i) Body::apply(args, i);
    return cudaSuccess;
  }
  // Enough blocks for one element per thread, capped: the loop strides over the rest.
  const int64_t blocks = std::min<int64_t>((n + kBlockThreads - 1) / kBlockThreads, 65536);
  elementwise_kernel<Body, Args><<<static_cast<unsigned int>(blocks), kBlockThreads, 0, stream>>>(
      args, n);
  return cudaGetLastError();
}

template <typename S, CellKind kCell>
struct ForwardBody {
  FUSED_RNN_HOST_DEVICE static void apply(const FallbackForwardStep& a, int64_t i) {
    fallback_forward_element<S, kCell>(a, i);
  }
};

template <typename S, CellKind kCell>
struct BackwardBody {
  FUSED_RNN_HOST_DEVICE static void apply(const FallbackBackwardStep& a, int64_t i) {
    fallback_backward_element<S, kCell>(a, i);
  }
};

template <typename S>
struct CommitBody {
  FUSED_RNN_HOST_DEVICE static void apply(const FallbackProjectionCommit& a, int64_t i) {
    projection_commit_element<S>(a, i);
  }
};

template <typename S>
struct ProjectionGradBody {
  FUSED_RNN_HOST_DEVICE static void apply(const FallbackProjectionGrad& a, int64_t i) {
    projection_grad_element<S>(a, i);
  }
};

// Calls fn(S{}) with the CUDA storage type S.
template <class Fn>
cudaError_t dispatch_storage(StorageType storage, Fn&& fn) {
  switch (storage) {
    case StorageType::kFloat32:
      return fn(float{});
    case StorageType::kFloat64:
      return fn(double{});
    case StorageType::kFloat16:
      return fn(__half{});
    case StorageType::kBFloat16:
      return fn(__nv_bfloat16{});
  }
  return cudaErrorInvalidValue;
}

// Calls fn(std::integral_constant<CellKind, family>) where both Elman cells share kRNNTanh.
template <class Fn>
cudaError_t dispatch_cell(CellKind cell, Fn&& fn) {
  switch (cell) {
    case CellKind::kLSTM:
      return fn(std::integral_constant<CellKind, CellKind::kLSTM>{});
    case CellKind::kGRU:
      return fn(std::integral_constant<CellKind, CellKind::kGRU>{});
    case CellKind::kRNNTanh:
    case CellKind::kRNNRelu:
      return fn(std::integral_constant<CellKind, CellKind::kRNNTanh>{});
  }
  return cudaErrorInvalidValue;
}

}  // namespace

cudaError_t launch_fallback_forward(CellKind cell, StorageType storage,
                                    const FallbackForwardStep& args, Target target,
                                    cudaStream_t stream) {
  return dispatch_storage(storage, [&](auto storage_tag) {
    using S = decltype(storage_tag);
    return dispatch_cell(cell, [&](auto cell_tag) {
      return run_elementwise<ForwardBody<S, decltype(cell_tag)::value>>(args, args.B * args.H,
                                                                        target, stream);
    });
  });
}

cudaError_t launch_fallback_backward(CellKind cell, StorageType storage,
                                     const FallbackBackwardStep& args, Target target,
                                     cudaStream_t stream) {
  return dispatch_storage(storage, [&](auto storage_tag) {
    using S = decltype(storage_tag);
    return dispatch_cell(cell, [&](auto cell_tag) {
      return run_elementwise<BackwardBody<S, decltype(cell_tag)::value>>(args, args.B * args.H,
                                                                         target, stream);
    });
  });
}

cudaError_t launch_projection_commit(StorageType storage, const FallbackProjectionCommit& args,
                                     Target target, cudaStream_t stream) {
  return dispatch_storage(storage, [&](auto storage_tag) {
    using S = decltype(storage_tag);
    return run_elementwise<CommitBody<S>>(args, args.B * args.P, target, stream);
  });
}

cudaError_t launch_projection_grad(StorageType storage, const FallbackProjectionGrad& args,
                                   Target target, cudaStream_t stream) {
  return dispatch_storage(storage, [&](auto storage_tag) {
    using S = decltype(storage_tag);
    return run_elementwise<ProjectionGradBody<S>>(args, args.B * args.P, target, stream);
  });
}

}  // namespace fused_rnn::cuda
