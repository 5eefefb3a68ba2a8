// Op schemas of the layer-normalised cells with zoneout (fused_rnn.LayerNormLSTM and
// LayerNormGRU; the readable definition is in fused_rnn/reference.py).
//
// As the plain ops of csrc/ops.cpp, every op runs the recurrence of ONE layer in ONE direction,
// with the same conventions for lengths (a finished sequence keeps its state and emits zeros,
// the reverse direction starts each sequence at its own last real step), reverse, dtypes and
// the workspace returned only when save_for_backward (else empty [0]). The input projection of
// all steps is computed outside, in one GEMM; its LN is the op's own:
//
//   xw       [T, B, G*H]  x_t W_ih^T: the LSTM's (G = 4, gates i, f, g, o) or the GRU's (G = 3,
//                         gates r, z, n); the op computes gx = LN(xw; γ_ih) + b, with
//   gamma_ih [G*H]        its γ, and its β (optional): the LSTM's bias b, the GRU's b_ih
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
// Workspace (in the input's dtype; zeros on padded steps but cs, which keeps the state there):
//   LSTM  p_hat [T, B, 4H]   c_hat [T, B, H] ĉ   cs [T, B, H] the cell state c_t
//         stats [T, B, 4]: mean and rstd of the input LN, rstd_p, rstd_c
//   GRU   p_hat [T, B, 3H]   stats [T, B, 3]: mean and rstd of the input LN, rstd_p
// stats in the compute dtype (float32, or float64 for float64 input), the input LN's on padded
// steps too. The backward recomputes the gates from xw, stats and p_hat: a training step keeps
// xw as the input side's only [T, B, G*H] tensor, where an LN in torch before the op would keep
// xw and the op the gates.
//
// Backward outputs: the gradients of xw, γ_ih and the input LN's β (zeros without one), w_hh,
// the γ/β of the recurrent side (and of the cell LN), h0 (and c0). The projection is
// differentiated by torch.
//
// Implementations: csrc/cpu/layernorm_*_cpu.cpp (CPU), fused_rnn/triton_kernels/layernorm_*.py
// (the *_triton ops, same schemas). Fake kernels: fused_rnn/_layernorm_ops.py. Autograd:
// csrc/layernorm_autograd.cpp. The backward ops are not differentiable (no second derivatives).

#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(fused_rnn, m) {
  m.def(
      "layernorm_lstm_forward(Tensor xw, Tensor gamma_ih, Tensor? bias, Tensor w_hh, "
      "Tensor gamma_hh, Tensor gamma_c, Tensor beta_c, Tensor h0, Tensor c0, "
      "Tensor? zoneout_h_mask, Tensor? zoneout_c_mask, float zoneout_h, float zoneout_c, "
      "Tensor? lengths, bool reverse, float eps, bool save_for_backward) "
      "-> (Tensor y, Tensor h_n, Tensor c_n, Tensor p_hat, Tensor c_hat, Tensor cs, "
      "Tensor stats)");
  m.def(
      "layernorm_lstm_backward(Tensor? grad_y, Tensor? grad_h_n, Tensor? grad_c_n, Tensor xw, "
      "Tensor gamma_ih, Tensor? bias, Tensor w_hh, Tensor gamma_hh, Tensor gamma_c, "
      "Tensor beta_c, Tensor h0, Tensor c0, Tensor? zoneout_h_mask, Tensor? zoneout_c_mask, "
      "float zoneout_h, float zoneout_c, Tensor y, Tensor p_hat, Tensor c_hat, Tensor cs, "
      "Tensor stats, Tensor? lengths, bool reverse) "
      "-> (Tensor grad_xw, Tensor grad_gamma_ih, Tensor grad_bias, Tensor grad_w_hh, "
      "Tensor grad_gamma_hh, Tensor grad_gamma_c, Tensor grad_beta_c, Tensor grad_h0, "
      "Tensor grad_c0)");
  m.def(
      "layernorm_gru_forward(Tensor xw, Tensor gamma_ih, Tensor? b_ih, Tensor w_hh, "
      "Tensor gamma_hh, Tensor? b_hh, Tensor h0, Tensor? zoneout_h_mask, float zoneout_h, "
      "Tensor? lengths, bool reverse, float eps, bool save_for_backward) "
      "-> (Tensor y, Tensor h_n, Tensor p_hat, Tensor stats)");
  m.def(
      "layernorm_gru_backward(Tensor? grad_y, Tensor? grad_h_n, Tensor xw, Tensor gamma_ih, "
      "Tensor? b_ih, Tensor w_hh, Tensor gamma_hh, Tensor? b_hh, Tensor h0, "
      "Tensor? zoneout_h_mask, float zoneout_h, Tensor y, Tensor p_hat, Tensor stats, "
      "Tensor? lengths, bool reverse) "
      "-> (Tensor grad_xw, Tensor grad_gamma_ih, Tensor grad_b_ih, Tensor grad_w_hh, "
      "Tensor grad_gamma_hh, Tensor grad_b_hh, Tensor grad_h0)");
}
