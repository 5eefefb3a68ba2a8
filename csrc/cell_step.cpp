// One step of a cell (the LSTMCell, GRUCell and RNNCell modules on the CPU backend) as one op:
// the input projection (fused_rnn::linear) and the recurrence op at T = 1, composed here in C++.
// A step of B = 1 costs tens of microseconds, and from Python it took three op calls (the bias
// sum, the projection, the recurrence) and the layer code around them; torch.nn's cells are one
// call each. Registered as CompositeImplicitAutograd: the autograd of the ops inside records
// the graph, and torch.compile traces through to them.
//
//   input [B, I], h [B, H] (c [B, H]), w_ih [G*H, I], w_hh [G*H, H], b_ih/b_hh [G*H] or None
//   -> h' [B, H] (and c' [B, H])
#include <torch/library.h>

#include "op_calls.h"

namespace fused_rnn {
namespace {

// gx [1, B, G*H] = input @ w_ih^T + bias, the projection of the single step.
Tensor project(const Tensor& input, const Tensor& w_ih, const optional<Tensor>& bias) {
  static const auto linear = find_op<LinearOp>("fused_rnn::linear");
  return linear.call(input.unsqueeze(0), w_ih, bias);
}

void check_biases(const char* op, const optional<Tensor>& b_ih, const optional<Tensor>& b_hh) {
  TORCH_CHECK(has(b_ih) == has(b_hh), op, ": give both b_ih and b_hh, or neither");
}

// LSTM and RNN fold b_hh into the projection's bias (the GRU keeps it for the reset product).
optional<Tensor> folded_bias(const optional<Tensor>& b_ih, const optional<Tensor>& b_hh) {
  return has(b_ih) ? optional<Tensor>(*b_ih + *b_hh) : c10::nullopt;
}

std::tuple<Tensor, Tensor> lstm_cell(const Tensor& input, const Tensor& h, const Tensor& c,
                                     const Tensor& w_ih, const Tensor& w_hh,
                                     const optional<Tensor>& b_ih, const optional<Tensor>& b_hh) {
  static const auto lstm = find_op<LstmForwardOp>("fused_rnn::lstm_forward");
  check_biases("fused_rnn::lstm_cell", b_ih, b_hh);
  const Tensor gx = project(input, w_ih, folded_bias(b_ih, b_hh));
  const bool save = records_graph({gx, w_hh, h, c});
  auto [y, h_next, c_next, gates, cs] =
      lstm.call(gx, w_hh, c10::nullopt, h, c, c10::nullopt, false, save);
  return {h_next, c_next};
}

Tensor gru_cell(const Tensor& input, const Tensor& h, const Tensor& w_ih, const Tensor& w_hh,
                const optional<Tensor>& b_ih, const optional<Tensor>& b_hh) {
  static const auto gru = find_op<GruForwardOp>("fused_rnn::gru_forward");
  check_biases("fused_rnn::gru_cell", b_ih, b_hh);
  const Tensor gx = project(input, w_ih, b_ih);
  const bool save = records_graph({gx, w_hh, h}, {b_hh});
  return std::get<1>(gru.call(gx, w_hh, b_hh, h, c10::nullopt, false, save));
}

// Name: RnnTanhOps or RnnReluOps (op_calls.h).
template <typename Name>
Tensor rnn_cell(const Tensor& input, const Tensor& h, const Tensor& w_ih, const Tensor& w_hh,
                const optional<Tensor>& b_ih, const optional<Tensor>& b_hh) {
  static const auto rnn = find_op<RnnForwardOp>(Name::forward);
  check_biases(Name::cell, b_ih, b_hh);
  const Tensor gx = project(input, w_ih, folded_bias(b_ih, b_hh));
  return std::get<1>(rnn.call(gx, w_hh, h, c10::nullopt, false));
}

}  // namespace

TORCH_LIBRARY_IMPL(fused_rnn, CompositeImplicitAutograd, m) {
  m.impl("lstm_cell", &lstm_cell);
  m.impl("gru_cell", &gru_cell);
  m.impl("rnn_tanh_cell", &rnn_cell<RnnTanhOps>);
  m.impl("rnn_relu_cell", &rnn_cell<RnnReluOps>);
}

}  // namespace fused_rnn
