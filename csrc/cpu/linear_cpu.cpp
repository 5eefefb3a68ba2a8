// The input projection of a layer on the CPU, forward and backward (see csrc/ops.cpp):
//   y [..., O] = x [..., I] @ weight [O, I]^T + bias [O]
//   grad_x = grad_y @ weight, grad_weight = grad_y^T @ x, grad_bias = grad_y summed over rows
// In fp32 the three products run on blocked_gemm (faster than BLAS on these shapes, and the
// transposed operands cost only its packing; grad_bias is summed from grad_weight's packed
// operand); other dtypes, and products too small to pay for the packing, on ATen's BLAS.
#include <torch/library.h>

#include "cpu/blocked_gemm.h"
#include "cpu/cpu_common.h"

namespace fused_rnn::cpu {
namespace {

void check_linear_inputs(const char* op, const Tensor& x, const Tensor& weight) {
  TORCH_CHECK(x.dim() >= 1, op, ": expected an input with at least 1 dimension");
  TORCH_CHECK(weight.dim() == 2, op, ": expected weight of shape [out_features, in_features], got ",
              weight.sizes());
  TORCH_CHECK(x.size(-1) == weight.size(1), op, ": input has ", x.size(-1),
              " features (last dimension) but weight expects ", weight.size(1));
  TORCH_CHECK(x.is_floating_point(), op, ": expected a floating-point input, got ", x.scalar_type());
  fused_rnn::detail::check_like(op, "weight", weight, x);
}

// [..., O] sizes of an output whose rows are those of x.
std::vector<int64_t> rows_like(const Tensor& x, int64_t features) {
  std::vector<int64_t> sizes(x.sizes().begin(), x.sizes().end());
  sizes.back() = features;
  return sizes;
}

Tensor linear_cpu(const Tensor& x, const Tensor& weight, const optional<Tensor>& bias) {
  const AutocastOff autocast_off;
  const char* op = "fused_rnn::linear";
  check_linear_inputs(op, x, weight);
  const int64_t O = weight.size(0), I = weight.size(1);
  fused_rnn::detail::check_optional_like(op, "bias", bias, x, {O});
  const Tensor x2 = x.reshape({-1, I});  // [M, I]
  Tensor y = cpu_output({x2.size(0), O}, x.options());
  matmul_into(y, x2, weight.t(), false, bias);
  return y.view(rows_like(x, O));
}

std::tuple<Tensor, Tensor, Tensor> linear_backward_cpu(const Tensor& grad_y, const Tensor& x,
                                                       const Tensor& weight,
                                                       std::array<bool, 3> output_mask) {
  const AutocastOff autocast_off;
  const char* op = "fused_rnn::linear_backward";
  check_linear_inputs(op, x, weight);
  const int64_t O = weight.size(0), I = weight.size(1);
  fused_rnn::detail::check_like(op, "grad_y", grad_y, x);
  fused_rnn::detail::check_shape(op, "grad_y", grad_y, rows_like(x, O));
  const Tensor g2 = grad_y.reshape({-1, O});  // [M, O]
  const Tensor x2 = x.reshape({-1, I});       // [M, I]
  // outputs not asked for are empty placeholders, as the recurrence ops' unused outputs
  Tensor grad_x = empty_placeholder(x.options()), grad_weight = grad_x, grad_bias = grad_x;
  if (output_mask[0]) {
    grad_x = cpu_output({g2.size(0), I}, x.options());
    matmul_into(grad_x, g2, weight, false);
    grad_x = grad_x.view(x.sizes());
  }
  if (output_mask[2]) grad_bias = uninitialized(at::empty({O}, x.options()));
  if (output_mask[1]) {
    grad_weight = uninitialized(at::empty({O, I}, x.options()));
    // grad_bias: the row sums of grad_y^T, taken while the product packs them
    matmul_into(grad_weight, g2.t(), x2, false, c10::nullopt, output_mask[2] ? &grad_bias : nullptr);
  } else if (output_mask[2]) {
    at::sum_out(grad_bias, g2, {0});
  }
  return {grad_x, grad_weight, grad_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(fused_rnn, CPU, m) {
  m.impl("linear", &linear_cpu);
  m.impl("linear_backward", &linear_backward_cpu);
}

}  // namespace fused_rnn::cpu
