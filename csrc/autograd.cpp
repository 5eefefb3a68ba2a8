// Autograd of the compiled ops (CPU and CUDA kernels alike): one torch::autograd::Function per
// forward op, whose backward calls the matching backward op. That op's kernels are not
// differentiable: a backward that records a graph (create_graph=True, on the way to a second
// derivative) calls {cell}_backward_differentiable instead, the same gradients in differentiable
// torch ops from the same saved tensors (fused_rnn/reference_backward.py). Those read y and the
// workspace (gates, cs), outputs of the forward op, so the part of a second derivative that
// depends on gx reaches this Function again as gradients of the workspace; a backward that gets
// them takes the differentiable path too. A first derivative without a graph runs the kernels
// only, and the forward saves nothing more for the second.
//
// Registered for the Autograd key here, in C++, rather than with torch.library.register_autograd
// in Python: that runs a Python function on every call, grad mode or not (~8 us per op in
// no_grad, ~45 us with a graph), which at one step of B = 1 cost more than the kernels. The
// Triton ops, Python themselves, keep the Python registration (fused_rnn/_ops.py), with the same
// saved tensors and gradients as here. torch.compile traces through both kinds: the Function's
// forward and backward call the ops through the dispatcher. A call that records no graph (no
// grad mode, or no input that requires grad: records_graph) goes straight to the op, without
// the Function's node (~1 us a call at one step).
#include <ATen/core/stack.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include "op_calls.h"

namespace fused_rnn {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// ---------------------------------------------------------------------------------------------
// fused_rnn::linear
// ---------------------------------------------------------------------------------------------

class LinearFunction : public torch::autograd::Function<LinearFunction> {
 public:
  static const c10::TypedOperatorHandle<LinearOp>& op() {
    static const auto op = find_op<LinearOp>("fused_rnn::linear");
    return op;
  }

  static Tensor forward(AutogradContext* ctx, const Tensor& input, const Tensor& weight,
                        const optional<Tensor>& bias) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    ctx->save_for_backward({input, weight});
    ctx->saved_data["has_bias"] = has(bias);
    return op().call(input, weight, bias);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op =
        find_op<std::tuple<Tensor, Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&,
                                                   std::array<bool, 3>)>(
            "fused_rnn::linear_backward");
    const auto saved = ctx->get_saved_variables();
    const Tensor &input = saved[0], &weight = saved[1];
    // needs_input_grad counts the tensor inputs that were given: bias is the third when present
    const std::array<bool, 3> mask = {
        ctx->needs_input_grad(0), ctx->needs_input_grad(1),
        ctx->saved_data["has_bias"].toBool() && ctx->needs_input_grad(2)};
    if (at::GradMode::is_enabled()) {
      // A graph of the backward is wanted: the same products in differentiable ATen ops.
      const Tensor grad_rows = grads[0].reshape({-1, weight.size(0)});
      return {mask[0] ? at::matmul(grads[0], weight) : Tensor(),
              mask[1] ? grad_rows.t().mm(input.reshape({-1, weight.size(1)})) : Tensor(),
              mask[2] ? grad_rows.sum(0) : Tensor()};
    }
    auto [grad_input, grad_weight, grad_bias] = op.call(grads[0], input, weight, mask);
    return {mask[0] ? grad_input : Tensor(), mask[1] ? grad_weight : Tensor(),
            mask[2] ? grad_bias : Tensor()};
  }
};

Tensor linear_autograd(const Tensor& input, const Tensor& weight, const optional<Tensor>& bias) {
  if (!records_graph({input, weight}, {bias})) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return LinearFunction::op().call(input, weight, bias);
  }
  return LinearFunction::apply(input, weight, bias);
}

// Whether a backward takes the differentiable path: it records a graph, or gradients reach the
// workspace (only on the way to a second derivative).
bool differentiable_backward(std::initializer_list<std::reference_wrapper<const Tensor>>
                                 workspace_grads = {}) {
  if (at::GradMode::is_enabled()) return true;
  for (const Tensor& grad : workspace_grads) {
    if (grad.defined()) return true;
  }
  return false;
}

// ---------------------------------------------------------------------------------------------
// fused_rnn::lstm_forward: saves its inputs, y and the workspace (gates, cs).
// ---------------------------------------------------------------------------------------------

using LstmOutputs = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor>;
using LstmDifferentiableBackwardOp = LstmOutputs(
    const optional<Tensor>&, const optional<Tensor>&, const optional<Tensor>&,
    const optional<Tensor>&, const optional<Tensor>&, const Tensor&, const optional<Tensor>&,
    const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
    const optional<Tensor>&, bool);

class LstmFunction : public torch::autograd::Function<LstmFunction> {
 public:
  static const c10::TypedOperatorHandle<LstmForwardOp>& op() {
    static const auto op = find_op<LstmForwardOp>("fused_rnn::lstm_forward");
    return op;
  }

  static const c10::TypedOperatorHandle<LstmDifferentiableBackwardOp>& differentiable_op() {
    static const auto op =
        find_op<LstmDifferentiableBackwardOp>("fused_rnn::lstm_backward_differentiable");
    return op;
  }

  static variable_list forward(AutogradContext* ctx, const Tensor& gx, const Tensor& w_hh,
                               const optional<Tensor>& w_hr, const Tensor& h0, const Tensor& c0,
                               const optional<Tensor>& lengths, bool reverse, bool save) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [y, h_n, c_n, gates, cs] = op().call(gx, w_hh, w_hr, h0, c0, lengths, reverse, save);
    ctx->save_for_backward({w_hh, saved_or_undefined(w_hr), h0, c0, y, gates, cs,
                            saved_or_undefined(lengths)});
    ctx->saved_data["reverse"] = reverse;
    ctx->saved_data["saved_workspace"] = save;
    ctx->set_materialize_grads(false);
    return {y, h_n, c_n, gates, cs};
  }

  // grads: of y, h_n, c_n, gates, cs (those of the workspace only on the way to a second
  // derivative)
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op = find_op<LstmOutputs(
        const optional<Tensor>&, const optional<Tensor>&, const optional<Tensor>&, const Tensor&,
        const optional<Tensor>&, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
        const Tensor&, const optional<Tensor>&, bool)>("fused_rnn::lstm_backward");
    TORCH_CHECK(ctx->saved_data["saved_workspace"].toBool(), kNoWorkspace);
    const auto s = ctx->get_saved_variables();
    const Tensor &w_hh = s[0], &w_hr = s[1], &h0 = s[2], &c0 = s[3], &y = s[4], &gates = s[5],
                 &cs = s[6], &lengths = s[7];
    const bool reverse = ctx->saved_data["reverse"].toBool();
    auto [grad_gx, grad_w_hh, grad_w_hr, grad_h0, grad_c0] =
        differentiable_backward({grads[3], grads[4]})
            ? differentiable_op().call(grad_or_none(grads[0]), grad_or_none(grads[1]),
                                       grad_or_none(grads[2]), grad_or_none(grads[3]),
                                       grad_or_none(grads[4]), w_hh, grad_or_none(w_hr), h0, c0,
                                       y, gates, cs, grad_or_none(lengths), reverse)
            : op.call(grad_or_none(grads[0]), grad_or_none(grads[1]), grad_or_none(grads[2]),
                      w_hh, grad_or_none(w_hr), h0, c0, y, gates, cs, grad_or_none(lengths),
                      reverse);
    return {grad_gx, grad_w_hh, w_hr.defined() ? grad_w_hr : Tensor(), grad_h0, grad_c0,
            Tensor(), Tensor(), Tensor()};
  }
};

LstmOutputs lstm_forward_autograd(const Tensor& gx, const Tensor& w_hh,
                                  const optional<Tensor>& w_hr, const Tensor& h0,
                                  const Tensor& c0, const optional<Tensor>& lengths, bool reverse,
                                  bool save) {
  if (!records_graph({gx, w_hh, h0, c0}, {w_hr})) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return LstmFunction::op().call(gx, w_hh, w_hr, h0, c0, lengths, reverse, save);
  }
  auto out = LstmFunction::apply(gx, w_hh, w_hr, h0, c0, lengths, reverse, save);
  return {out[0], out[1], out[2], out[3], out[4]};
}

// ---------------------------------------------------------------------------------------------
// fused_rnn::gru_forward: saves w_hh, h0, y, the workspace (gates) and lengths.
// ---------------------------------------------------------------------------------------------

using GruOutputs = std::tuple<Tensor, Tensor, Tensor, Tensor>;
using GruDifferentiableBackwardOp = GruOutputs(const optional<Tensor>&, const optional<Tensor>&,
                                              const optional<Tensor>&, const Tensor&,
                                              const Tensor&, const Tensor&, const Tensor&,
                                              const optional<Tensor>&, bool);

class GruFunction : public torch::autograd::Function<GruFunction> {
 public:
  static const c10::TypedOperatorHandle<GruForwardOp>& op() {
    static const auto op = find_op<GruForwardOp>("fused_rnn::gru_forward");
    return op;
  }

  static const c10::TypedOperatorHandle<GruDifferentiableBackwardOp>& differentiable_op() {
    static const auto op =
        find_op<GruDifferentiableBackwardOp>("fused_rnn::gru_backward_differentiable");
    return op;
  }

  static variable_list forward(AutogradContext* ctx, const Tensor& gx, const Tensor& w_hh,
                               const optional<Tensor>& b_hh, const Tensor& h0,
                               const optional<Tensor>& lengths, bool reverse, bool save) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [y, h_n, gates] = op().call(gx, w_hh, b_hh, h0, lengths, reverse, save);
    ctx->save_for_backward({w_hh, h0, y, gates, saved_or_undefined(lengths)});
    ctx->saved_data["reverse"] = reverse;
    ctx->saved_data["saved_workspace"] = save;
    ctx->saved_data["has_bias"] = has(b_hh);
    ctx->set_materialize_grads(false);
    return {y, h_n, gates};
  }

  // grads: of y, h_n, gates (that of the workspace only on the way to a second derivative)
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op = find_op<GruOutputs(
        const optional<Tensor>&, const optional<Tensor>&, const Tensor&, const Tensor&,
        const Tensor&, const Tensor&, const optional<Tensor>&, bool)>("fused_rnn::gru_backward");
    TORCH_CHECK(ctx->saved_data["saved_workspace"].toBool(), kNoWorkspace);
    const auto s = ctx->get_saved_variables();
    const Tensor &w_hh = s[0], &h0 = s[1], &y = s[2], &gates = s[3], &lengths = s[4];
    const bool reverse = ctx->saved_data["reverse"].toBool();
    auto [grad_gx, grad_w_hh, grad_b_hh, grad_h0] =
        differentiable_backward({grads[2]})
            ? differentiable_op().call(grad_or_none(grads[0]), grad_or_none(grads[1]),
                                       grad_or_none(grads[2]), w_hh, h0, y, gates,
                                       grad_or_none(lengths), reverse)
            : op.call(grad_or_none(grads[0]), grad_or_none(grads[1]), w_hh, h0, y, gates,
                      grad_or_none(lengths), reverse);
    const bool has_bias = ctx->saved_data["has_bias"].toBool();
    return {grad_gx, grad_w_hh, has_bias ? grad_b_hh : Tensor(), grad_h0,
            Tensor(), Tensor(), Tensor()};
  }
};

std::tuple<Tensor, Tensor, Tensor> gru_forward_autograd(const Tensor& gx, const Tensor& w_hh,
                                                        const optional<Tensor>& b_hh,
                                                        const Tensor& h0,
                                                        const optional<Tensor>& lengths,
                                                        bool reverse, bool save) {
  if (!records_graph({gx, w_hh, h0}, {b_hh})) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return GruFunction::op().call(gx, w_hh, b_hh, h0, lengths, reverse, save);
  }
  auto out = GruFunction::apply(gx, w_hh, b_hh, h0, lengths, reverse, save);
  return {out[0], out[1], out[2]};
}

// ---------------------------------------------------------------------------------------------
// fused_rnn::rnn_tanh_forward and rnn_relu_forward: save w_hh, h0, y and lengths (the
// activation's derivative is taken from y).
// ---------------------------------------------------------------------------------------------

using RnnBackwardOp = std::tuple<Tensor, Tensor, Tensor>(const optional<Tensor>&,
                                                         const optional<Tensor>&, const Tensor&,
                                                         const Tensor&, const Tensor&,
                                                         const optional<Tensor>&, bool);

// Name: RnnTanhOps or RnnReluOps (op_calls.h).
template <typename Name>
class RnnFunction : public torch::autograd::Function<RnnFunction<Name>> {
 public:
  static const c10::TypedOperatorHandle<RnnForwardOp>& op() {
    static const auto op = find_op<RnnForwardOp>(Name::forward);
    return op;
  }

  static const c10::TypedOperatorHandle<RnnBackwardOp>& differentiable_op() {
    static const auto op = find_op<RnnBackwardOp>(Name::backward_differentiable);
    return op;
  }

  static variable_list forward(AutogradContext* ctx, const Tensor& gx, const Tensor& w_hh,
                               const Tensor& h0, const optional<Tensor>& lengths, bool reverse) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [y, h_n] = op().call(gx, w_hh, h0, lengths, reverse);
    ctx->save_for_backward({w_hh, h0, y, saved_or_undefined(lengths)});
    ctx->saved_data["reverse"] = reverse;
    ctx->set_materialize_grads(false);
    return {y, h_n};
  }

  // grads: of y, h_n
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op = find_op<RnnBackwardOp>(Name::backward);
    const auto s = ctx->get_saved_variables();
    // Same schema: the differentiable backward needs no workspace gradients (there is none).
    const auto& backward_op = differentiable_backward() ? differentiable_op() : op;
    auto [grad_gx, grad_w_hh, grad_h0] =
        backward_op.call(grad_or_none(grads[0]), grad_or_none(grads[1]), s[0], s[1], s[2],
                         grad_or_none(s[3]), ctx->saved_data["reverse"].toBool());
    return {grad_gx, grad_w_hh, grad_h0, Tensor(), Tensor()};
  }
};

template <typename Name>
std::tuple<Tensor, Tensor> rnn_forward_autograd(const Tensor& gx, const Tensor& w_hh,
                                                const Tensor& h0, const optional<Tensor>& lengths,
                                                bool reverse) {
  if (!records_graph({gx, w_hh, h0})) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return RnnFunction<Name>::op().call(gx, w_hh, h0, lengths, reverse);
  }
  auto out = RnnFunction<Name>::apply(gx, w_hh, h0, lengths, reverse);
  return {out[0], out[1]};
}

// ---------------------------------------------------------------------------------------------
// The backward ops: no derivative of their own (the Functions above never record a graph
// through them). A direct call that would record one is refused; without an Autograd kernel
// torch's fallback only warns, and the second derivatives come out wrong.
// ---------------------------------------------------------------------------------------------

void backward_op_autograd(const c10::OperatorHandle& op, c10::Stack* stack) {
  if (at::GradMode::is_enabled()) {
    for (const c10::IValue& arg : torch::jit::last(*stack, op.schema().arguments().size())) {
      TORCH_CHECK(!(arg.isTensor() && arg.toTensor().requires_grad()), op.schema().name(),
                  " is not differentiable: differentiate the forward op instead (its backward "
                  "with create_graph=True is differentiable)");
    }
  }
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  op.callBoxed(stack);
}

}  // namespace

TORCH_LIBRARY_IMPL(fused_rnn, Autograd, m) {
  for (const char* name : {"linear_backward", "lstm_backward", "gru_backward",
                           "rnn_tanh_backward", "rnn_relu_backward"}) {
    m.impl(name, torch::CppFunction::makeFromBoxedFunction<&backward_op_autograd>());
  }
  m.impl("linear", &linear_autograd);
  m.impl("lstm_forward", &lstm_forward_autograd);
  m.impl("gru_forward", &gru_forward_autograd);
  m.impl("rnn_tanh_forward", &rnn_forward_autograd<RnnTanhOps>);
  m.impl("rnn_relu_forward", &rnn_forward_autograd<RnnReluOps>);
}

}  // namespace fused_rnn
