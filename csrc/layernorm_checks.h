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

inline void check_eps(const char* op, double eps) {
  TORCH_CHECK(eps > 0.0, op, ": eps must be positive, got ", eps);
}

}  // namespace fused_rnn
