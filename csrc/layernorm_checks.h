// Argument checks of the layer-normalised ops (csrc/layernorm_ops.cpp), beyond those the plain
// ops share (op_common.h): the LN parameters, the zoneout masks and probabilities, eps.
// fused_rnn/triton_kernels/_layernorm_checks.py has the same conditions and messages.
#pragma once

#include "op_common.h"

namespace fused_rnn {

inline void check_layernorm_parameter(const char* op, const char* name, const Tensor& t,
                                      const Tensor& ref, int64_t size) {
  detail::check_like(op, name, t, ref);
  detail::check_shape(op, name, t, {size});
}

// A zoneout mask: bool [T, B, H] on ref's device; and the probability used without one.
inline void check_zoneout(const char* op, const char* name, const optional<Tensor>& mask,
                          double p, const Tensor& ref, int64_t T, int64_t B, int64_t H) {
  TORCH_CHECK(p >= 0.0 && p < 1.0, op, ": ", name, " must lie in [0, 1), got ", p);
  if (!has(mask)) return;
  TORCH_CHECK(mask->scalar_type() == at::kBool, op, ": ", name,
              "_mask must be a bool tensor, got ", mask->scalar_type());
  TORCH_CHECK(mask->device() == ref.device(), op, ": ", name, "_mask is on ", mask->device(),
              " but the input is on ", ref.device());
  detail::check_shape(op, (std::string(name) + "_mask").c_str(), *mask, {T, B, H});
}

// The input LN's γ_ih [size] and its optional bias (β) [size].
inline void check_input_layernorm(const char* op, const Tensor& gamma_ih,
                                  const optional<Tensor>& bias, const Tensor& ref, int64_t size) {
  check_layernorm_parameter(op, "gamma_ih", gamma_ih, ref, size);
  detail::check_optional_like(op, "bias", bias, ref, {size});
}

// The workspace of the LNs' statistics [T, B, width]: like the other workspace tensors, but in
// the compute dtype (float32, or float64 for float64 input: a mean rounded to 16 bits would
// spoil the normalised values recomputed from it).
inline void check_statistics(const char* op, const Tensor& stats, const Tensor& y,
                             at::IntArrayRef expected) {
  TORCH_CHECK(stats.numel() > 0 || c10::multiply_integers(expected) == 0, op,
              ": the stats workspace is empty: the forward ran with save_for_backward=False");
  const auto dtype = y.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  TORCH_CHECK(stats.device() == y.device(), op, ": stats is on ", stats.device(),
              " but the input is on ", y.device());
  TORCH_CHECK(stats.scalar_type() == dtype, op, ": stats has dtype ", stats.scalar_type(),
              " but the input's compute dtype is ", dtype);
  detail::check_shape(op, "stats", stats, expected);
}

inline void check_eps(const char* op, double eps) {
  TORCH_CHECK(eps > 0.0, op, ": eps must be positive, got ", eps);
}

}  // namespace fused_rnn
