// Op schemas of the layer-normalised cells with zoneout (fused_rnn.LayerNormLSTM and
// LayerNormGRU; the readable definition is in fused_rnn/reference.py).
//
// As the plain ops of csrc/ops.cpp, every op runs the recurrence of ONE layer in ONE direction,
// with the same conventions for lengths (a finished sequence keeps its state and emits zeros,
// the reverse direction starts each sequence at its own last real step), reverse, dtypes and
// the workspace returned only when save_for_backward (else empty [0]). The input side of all
// steps is computed outside, in one pass over the T * B rows:
//
//   gx       [T, B, G*H]  LN(x_t W_ih^T; γ_ih) + b: the LSTM's b (G = 4, gates i, f, g, o) or
//                         the GRU's b_ih (G = 3, gates r, z, n)
//   w_hh     [G*H, H]     recurrent weight
//   gamma_hh [G*H]        γ of the recurrent LN (over all G*H gate values of a row)
//   gamma_c, beta_c [H]   LSTM: γ and β of the cell-state LN
//   b_hh     [3*H]        GRU (optional): the recurrent LN's β, inside the reset product
//   zoneout_h_mask, zoneout_c_mask   bool [T, B, H] (optional): True where the unit keeps its
//                         previous state at that step (training); without a mask the float
//                         zoneout_h / zoneout_c is the weight of the previous state (eval's
//                         expectation; 0: no zoneout). In [0, 1).
//   eps                   the LNs' epsilon (> 0)
//
// A step of the LSTM (LN over the last dimension, biased variance):
//   p = h_{t-1} W_hh^T,  p̂ = (p - mean p) * rstd_p,  a = gx_t + γ_hh p̂,  i, f, g, o = act(a)
//   c' = f c_{t-1} + i g,  ĉ = (c' - mean c') * rstd_c,  h' = o tanh(γ_c ĉ + β_c)
//   h_t = zoneout(h_{t-1}, h'),  c_t = zoneout(c_{t-1}, c'),  y_t = h_t
// and of the GRU: gh = γ_hh p̂ + b_hh, then torch.nn's GRU step on (gx_t, gh), h_t = zoneout.
//
// Workspace (in gx's dtype; zeros on padded steps but cs, which keeps the state there):
//   LSTM  gates [T, B, 4H] activated i, f, g, o   p_hat [T, B, 4H]   c_hat [T, B, H] ĉ
//         cs [T, B, H] the cell state c_t         rstd [T, B, 2] (rstd_p, rstd_c)
//   GRU   gates [T, B, 3H] r, z, n                p_hat [T, B, 3H]   rstd [T, B]
//
// Backward outputs: the gradients of gx, w_hh, the γ/β of the recurrent side (and of the cell
// LN), h0 (and c0). The input side's LN and projection are differentiated by torch.
//
// Implementations: csrc/cpu/layernorm_*_cpu.cpp (CPU), fused_rnn/triton_kernels/layernorm_*.py
// (the *_triton ops, same schemas). Fake kernels: fused_rnn/_layernorm_ops.py. Autograd:
// csrc/layernorm_autograd.cpp. The backward ops are not differentiable (no second derivatives).

#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(fused_rnn, m) {
  m.def(
      "layernorm_lstm_forward(Tensor gx, Tensor w_hh, Tensor gamma_hh, Tensor gamma_c, "
      "Tensor beta_c, Tensor h0, Tensor c0, Tensor? zoneout_h_mask, Tensor? zoneout_c_mask, "
      "float zoneout_h, float zoneout_c, Tensor? lengths, bool reverse, float eps, "
      "bool save_for_backward) "
      "-> (Tensor y, Tensor h_n, Tensor c_n, Tensor gates, Tensor p_hat, Tensor c_hat, "
      "Tensor cs, Tensor rstd)");
  m.def(
      "layernorm_lstm_backward(Tensor? grad_y, Tensor? grad_h_n, Tensor? grad_c_n, Tensor w_hh, "
      "Tensor gamma_hh, Tensor gamma_c, Tensor beta_c, Tensor h0, Tensor c0, "
      "Tensor? zoneout_h_mask, Tensor? zoneout_c_mask, float zoneout_h, float zoneout_c, "
      "Tensor y, Tensor gates, Tensor p_hat, Tensor c_hat, Tensor cs, Tensor rstd, "
      "Tensor? lengths, bool reverse) "
      "-> (Tensor grad_gx, Tensor grad_w_hh, Tensor grad_gamma_hh, Tensor grad_gamma_c, "
      "Tensor grad_beta_c, Tensor grad_h0, Tensor grad_c0)");
  m.def(
      "layernorm_gru_forward(Tensor gx, Tensor w_hh, Tensor gamma_hh, Tensor? b_hh, Tensor h0, "
      "Tensor? zoneout_h_mask, float zoneout_h, Tensor? lengths, bool reverse, float eps, "
      "bool save_for_backward) "
      "-> (Tensor y, Tensor h_n, Tensor gates, Tensor p_hat, Tensor rstd)");
  m.def(
      "layernorm_gru_backward(Tensor? grad_y, Tensor? grad_h_n, Tensor w_hh, Tensor gamma_hh, "
      "Tensor? b_hh, Tensor h0, Tensor? zoneout_h_mask, float zoneout_h, Tensor y, "
      "Tensor gates, Tensor p_hat, Tensor rstd, Tensor? lengths, bool reverse) "
      "-> (Tensor grad_gx, Tensor grad_w_hh, Tensor grad_gamma_hh, Tensor grad_b_hh, "
      "Tensor grad_h0)");
}
