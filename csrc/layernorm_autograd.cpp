// Autograd of the layer-normalised ops (csrc/layernorm_ops.cpp), as csrc/autograd.cpp's of the
// plain ones: one torch::autograd::Function per forward op, whose backward calls the matching
// backward op, and a call that records no graph goes straight to the op. The Triton ops
// register the same in Python (fused_rnn/_layernorm_ops.py).
//
// The workspace outputs are marked non-differentiable (they only carry the forward's
// intermediates to the backward op). These cells have no differentiable backward: a backward
// that would record a graph (create_graph=True, on the way to a second derivative) is refused
// with an error that says so.
#include <ATen/core/stack.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include "op_calls.h"

namespace fused_rnn {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

constexpr const char* kNoSecondDerivative =
    "fused_rnn: the layer-normalised cells (LayerNormLSTM, LayerNormGRU) have no second "
    "derivative: a backward with create_graph=True through them is not supported";

void check_first_derivative() { TORCH_CHECK(!at::GradMode::is_enabled(), kNoSecondDerivative); }

// ---------------------------------------------------------------------------------------------
// fused_rnn::layernorm_lstm_forward
// ---------------------------------------------------------------------------------------------

using LnLstmOutputs = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>;
using LnLstmForwardOp = LnLstmOutputs(const Tensor&, const Tensor&, const optional<Tensor>&,
                                      const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                      const Tensor&, const Tensor&, const optional<Tensor>&,
                                      const optional<Tensor>&, double, double,
                                      const optional<Tensor>&, bool, double, bool);
using LnLstmBackwardOp =
    std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>(
        const optional<Tensor>&, const optional<Tensor>&, const optional<Tensor>&, const Tensor&,
        const Tensor&, const optional<Tensor>&, const Tensor&, const Tensor&, const Tensor&,
        const Tensor&, const Tensor&, const Tensor&, const optional<Tensor>&,
        const optional<Tensor>&, double, double, const Tensor&, const Tensor&, const Tensor&,
        const Tensor&, const Tensor&, const optional<Tensor>&, bool);

class LnLstmFunction : public torch::autograd::Function<LnLstmFunction> {
 public:
  static const c10::TypedOperatorHandle<LnLstmForwardOp>& op() {
    static const auto op = find_op<LnLstmForwardOp>("fused_rnn::layernorm_lstm_forward");
    return op;
  }

  static variable_list forward(AutogradContext* ctx, const Tensor& xw, const Tensor& gamma_ih,
                               const optional<Tensor>& bias, const Tensor& w_hh,
                               const Tensor& gamma_hh, const Tensor& gamma_c,
                               const Tensor& beta_c, const Tensor& h0, const Tensor& c0,
                               const optional<Tensor>& zoneout_h_mask,
                               const optional<Tensor>& zoneout_c_mask, double zoneout_h,
                               double zoneout_c, const optional<Tensor>& lengths, bool reverse,
                               double eps, bool save) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [y, h_n, c_n, p_hat, c_hat, cs, stats] =
        op().call(xw, gamma_ih, bias, w_hh, gamma_hh, gamma_c, beta_c, h0, c0, zoneout_h_mask,
                  zoneout_c_mask, zoneout_h, zoneout_c, lengths, reverse, eps, save);
    ctx->save_for_backward({xw, gamma_ih, saved_or_undefined(bias), w_hh, gamma_hh, gamma_c,
                            beta_c, h0, c0, saved_or_undefined(zoneout_h_mask),
                            saved_or_undefined(zoneout_c_mask), y, p_hat, c_hat, cs, stats,
                            saved_or_undefined(lengths)});
    ctx->saved_data["zoneout_h"] = zoneout_h;
    ctx->saved_data["zoneout_c"] = zoneout_c;
    ctx->saved_data["reverse"] = reverse;
    ctx->saved_data["saved_workspace"] = save;
    ctx->mark_non_differentiable({p_hat, c_hat, cs, stats});
    ctx->set_materialize_grads(false);
    return {y, h_n, c_n, p_hat, c_hat, cs, stats};
  }

  // grads: of y, h_n, c_n (the workspace is not differentiable)
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op = find_op<LnLstmBackwardOp>("fused_rnn::layernorm_lstm_backward");
    TORCH_CHECK(ctx->saved_data["saved_workspace"].toBool(), kNoWorkspace);
    check_first_derivative();
    const auto s = ctx->get_saved_variables();
    const bool has_bias = s[2].defined();
    auto [grad_xw, grad_gamma_ih, grad_bias, grad_w_hh, grad_gamma_hh, grad_gamma_c, grad_beta_c,
          grad_h0, grad_c0] =
        op.call(grad_or_none(grads[0]), grad_or_none(grads[1]), grad_or_none(grads[2]), s[0],
                s[1], grad_or_none(s[2]), s[3], s[4], s[5], s[6], s[7], s[8], grad_or_none(s[9]),
                grad_or_none(s[10]), ctx->saved_data["zoneout_h"].toDouble(),
                ctx->saved_data["zoneout_c"].toDouble(), s[11], s[12], s[13], s[14], s[15],
                grad_or_none(s[16]), ctx->saved_data["reverse"].toBool());
    return {grad_xw, grad_gamma_ih, has_bias ? grad_bias : Tensor(), grad_w_hh, grad_gamma_hh,
            grad_gamma_c, grad_beta_c, grad_h0, grad_c0, Tensor(), Tensor(), Tensor(), Tensor(),
            Tensor(), Tensor(), Tensor(), Tensor()};
  }
};

LnLstmOutputs lstm_forward_autograd(const Tensor& xw, const Tensor& gamma_ih,
                                    const optional<Tensor>& bias, const Tensor& w_hh,
                                    const Tensor& gamma_hh, const Tensor& gamma_c,
                                    const Tensor& beta_c, const Tensor& h0, const Tensor& c0,
                                    const optional<Tensor>& zoneout_h_mask,
                                    const optional<Tensor>& zoneout_c_mask, double zoneout_h,
                                    double zoneout_c, const optional<Tensor>& lengths,
                                    bool reverse, double eps, bool save) {
  if (!records_graph({xw, gamma_ih, w_hh, gamma_hh, gamma_c, beta_c, h0, c0}, {bias})) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return LnLstmFunction::op().call(xw, gamma_ih, bias, w_hh, gamma_hh, gamma_c, beta_c, h0, c0,
                                     zoneout_h_mask, zoneout_c_mask, zoneout_h, zoneout_c,
                                     lengths, reverse, eps, save);
  }
  auto out = LnLstmFunction::apply(xw, gamma_ih, bias, w_hh, gamma_hh, gamma_c, beta_c, h0, c0,
                                   zoneout_h_mask, zoneout_c_mask, zoneout_h, zoneout_c, lengths,
                                   reverse, eps, save);
  return {out[0], out[1], out[2], out[3], out[4], out[5], out[6]};
}

// ---------------------------------------------------------------------------------------------
// fused_rnn::layernorm_gru_forward
// ---------------------------------------------------------------------------------------------

using LnGruOutputs = std::tuple<Tensor, Tensor, Tensor, Tensor>;
using LnGruForwardOp = LnGruOutputs(const Tensor&, const Tensor&, const optional<Tensor>&,
                                    const Tensor&, const Tensor&, const optional<Tensor>&,
                                    const Tensor&, const optional<Tensor>&, double,
                                    const optional<Tensor>&, bool, double, bool);
using LnGruBackwardOp = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>(
    const optional<Tensor>&, const optional<Tensor>&, const Tensor&, const Tensor&,
    const optional<Tensor>&, const Tensor&, const Tensor&, const optional<Tensor>&,
    const Tensor&, const optional<Tensor>&, double, const Tensor&, const Tensor&, const Tensor&,
    const optional<Tensor>&, bool);

class LnGruFunction : public torch::autograd::Function<LnGruFunction> {
 public:
  static const c10::TypedOperatorHandle<LnGruForwardOp>& op() {
    static const auto op = find_op<LnGruForwardOp>("fused_rnn::layernorm_gru_forward");
    return op;
  }

  static variable_list forward(AutogradContext* ctx, const Tensor& xw, const Tensor& gamma_ih,
                               const optional<Tensor>& b_ih, const Tensor& w_hh,
                               const Tensor& gamma_hh, const optional<Tensor>& b_hh,
                               const Tensor& h0, const optional<Tensor>& zoneout_h_mask,
                               double zoneout_h, const optional<Tensor>& lengths, bool reverse,
                               double eps, bool save) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [y, h_n, p_hat, stats] = op().call(xw, gamma_ih, b_ih, w_hh, gamma_hh, b_hh, h0,
                                            zoneout_h_mask, zoneout_h, lengths, reverse, eps,
                                            save);
    ctx->save_for_backward({xw, gamma_ih, saved_or_undefined(b_ih), w_hh, gamma_hh,
                            saved_or_undefined(b_hh), h0, saved_or_undefined(zoneout_h_mask), y,
                            p_hat, stats, saved_or_undefined(lengths)});
    ctx->saved_data["zoneout_h"] = zoneout_h;
    ctx->saved_data["reverse"] = reverse;
    ctx->saved_data["saved_workspace"] = save;
    ctx->mark_non_differentiable({p_hat, stats});
    ctx->set_materialize_grads(false);
    return {y, h_n, p_hat, stats};
  }

  // grads: of y, h_n (the workspace is not differentiable)
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op = find_op<LnGruBackwardOp>("fused_rnn::layernorm_gru_backward");
    TORCH_CHECK(ctx->saved_data["saved_workspace"].toBool(), kNoWorkspace);
    check_first_derivative();
    const auto s = ctx->get_saved_variables();
    const bool has_b_ih = s[2].defined(), has_b_hh = s[5].defined();
    auto [grad_xw, grad_gamma_ih, grad_b_ih, grad_w_hh, grad_gamma_hh, grad_b_hh, grad_h0] =
        op.call(grad_or_none(grads[0]), grad_or_none(grads[1]), s[0], s[1], grad_or_none(s[2]),
                s[3], s[4], grad_or_none(s[5]), s[6], grad_or_none(s[7]),
                ctx->saved_data["zoneout_h"].toDouble(), s[8], s[9], s[10], grad_or_none(s[11]),
                ctx->saved_data["reverse"].toBool());
    return {grad_xw, grad_gamma_ih, has_b_ih ? grad_b_ih : Tensor(), grad_w_hh, grad_gamma_hh,
            has_b_hh ? grad_b_hh : Tensor(), grad_h0, Tensor(), Tensor(), Tensor(), Tensor(),
            Tensor(), Tensor()};
  }
};

LnGruOutputs gru_forward_autograd(const Tensor& xw, const Tensor& gamma_ih,
                                  const optional<Tensor>& b_ih, const Tensor& w_hh,
                                  const Tensor& gamma_hh, const optional<Tensor>& b_hh,
                                  const Tensor& h0, const optional<Tensor>& zoneout_h_mask,
                                  double zoneout_h, const optional<Tensor>& lengths, bool reverse,
                                  double eps, bool save) {
  if (!records_graph({xw, gamma_ih, w_hh, gamma_hh, h0}, {b_ih, b_hh})) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return LnGruFunction::op().call(xw, gamma_ih, b_ih, w_hh, gamma_hh, b_hh, h0, zoneout_h_mask,
                                    zoneout_h, lengths, reverse, eps, save);
  }
  auto out = LnGruFunction::apply(xw, gamma_ih, b_ih, w_hh, gamma_hh, b_hh, h0, zoneout_h_mask,
                                  zoneout_h, lengths, reverse, eps, save);
  return {out[0], out[1], out[2], out[3]};
}

// The backward ops have no derivative: a direct call that would record a graph is refused
// (without an Autograd kernel torch's fallback only warns, and the derivative comes out wrong).
void backward_op_autograd(const c10::OperatorHandle& op, c10::Stack* stack) {
  if (at::GradMode::is_enabled()) {
    for (const c10::IValue& arg : torch::jit::last(*stack, op.schema().arguments().size())) {
      TORCH_CHECK(!(arg.isTensor() && arg.toTensor().requires_grad()), op.schema().name(),
                  " is not differentiable. ", kNoSecondDerivative);
    }
  }
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  op.callBoxed(stack);
}

}  // namespace

TORCH_LIBRARY_IMPL(fused_rnn, Autograd, m) {
  m.impl("layernorm_lstm_forward", &lstm_forward_autograd);
  m.impl("layernorm_gru_forward", &gru_forward_autograd);
  for (const char* name : {"layernorm_lstm_backward", "layernorm_gru_backward"}) {
    m.impl(name, torch::CppFunction::makeFromBoxedFunction<&backward_op_autograd>());
  }
}

}  // namespace fused_rnn
