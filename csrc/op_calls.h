// Calling the library's own ops from C++ through the dispatcher (so that every dispatch key,
// autograd and tracing included, sees the call), shared by csrc/autograd.cpp,
// csrc/layernorm_autograd.cpp and csrc/cell_step.cpp.
#pragma once

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <functional>
#include <initializer_list>
#include <tuple>

#include "op_common.h"

namespace fused_rnn {

// The typed handle of op `name` ("fused_rnn::..."); callers keep it in a static.
template <typename Signature>
c10::TypedOperatorHandle<Signature> find_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

// The C++ signatures of the forward ops (csrc/ops.cpp), for find_op.
using LinearOp = Tensor(const Tensor&, const Tensor&, const optional<Tensor>&);
using LstmForwardOp = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor>(
    const Tensor&, const Tensor&, const optional<Tensor>&, const Tensor&, const Tensor&,
    const optional<Tensor>&, bool, bool);
using GruForwardOp = std::tuple<Tensor, Tensor, Tensor>(const Tensor&, const Tensor&,
                                                        const optional<Tensor>&, const Tensor&,
                                                        const optional<Tensor>&, bool, bool);
using RnnForwardOp = std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&,
                                                const optional<Tensor>&, bool);

// Whether a call records a graph: grad mode on and an input that requires grad.
inline bool records_graph(
    std::initializer_list<std::reference_wrapper<const Tensor>> inputs,
    std::initializer_list<std::reference_wrapper<const optional<Tensor>>> optionals = {}) {
  if (!at::GradMode::is_enabled()) return false;
  for (const Tensor& t : inputs) {
    if (t.requires_grad()) return true;
  }
  for (const optional<Tensor>& t : optionals) {
    if (has(t) && t->requires_grad()) return true;
  }
  return false;
}

// For the autograd functions of csrc/autograd.cpp and csrc/layernorm_autograd.cpp:

constexpr const char* kNoWorkspace =
    "fused_rnn: backward through a recurrence whose forward ran with save_for_backward=False "
    "(call the layer with grad mode on and an input or parameter that requires grad)";

// A gradient that reaches an output (defined), or None: set_materialize_grads(false) passes
// the gradients of unused outputs as undefined tensors, which the backward ops take as zero.
inline optional<Tensor> grad_or_none(const Tensor& grad) {
  return grad.defined() ? optional<Tensor>(grad) : c10::nullopt;
}

// An optional input saved for the backward: an undefined tensor stands for None.
inline Tensor saved_or_undefined(const optional<Tensor>& t) { return has(t) ? *t : Tensor(); }

// The op names of each Elman RNN, for the code templated on its nonlinearity.
struct RnnTanhOps {
  static constexpr const char* forward = "fused_rnn::rnn_tanh_forward";
  static constexpr const char* backward = "fused_rnn::rnn_tanh_backward";
  static constexpr const char* backward_differentiable =
      "fused_rnn::rnn_tanh_backward_differentiable";
  static constexpr const char* cell = "fused_rnn::rnn_tanh_cell";
};

struct RnnReluOps {
  static constexpr const char* forward = "fused_rnn::rnn_relu_forward";
  static constexpr const char* backward = "fused_rnn::rnn_relu_backward";
  static constexpr const char* backward_differentiable =
      "fused_rnn::rnn_relu_backward_differentiable";
  static constexpr const char* cell = "fused_rnn::rnn_relu_cell";
};

}  // namespace fused_rnn
