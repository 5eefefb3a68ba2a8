// One (batch row, hidden unit) element of one time step of every cell, forward and backward:
// reads the gate inputs, runs the gate maths of cells.h in registers, writes the outputs and the
// workspace of that element. Shared by the persistent kernels (recurrent product from shared
// memory) and the fallback pointwise kernels (recurrent product from a cuBLAS GEMM).
//
// Row pointers point at the batch row's data of one step: gx/gates/dgx rows hold G*H (or 4H)
// gate values in gate blocks of H, so gate g of unit j is at [g*H + j]. `A` is the gate maths
// type (float, or double for fp64 storage).
#pragma once

#include "cuda/common.cuh"

namespace fused_rnn::cuda {

// ------------------------------------------------------------------------------------------
// LSTM
// ------------------------------------------------------------------------------------------

// Real step: pre[g] is the recurrent product of gate g (i, f, g, o). Updates the cell state `c`
// and returns h = o * tanh(c). gates_row [4H] and cs_row [H] are the workspace or nullptr.
template <typename S, typename A>
FUSED_RNN_HOST_DEVICE A lstm_forward_step(const S* gx_row, const A (&pre)[4], int64_t H, int64_t j,
                                          A& c, S* gates_row, S* cs_row) {
  const LSTMGates<A> gate =
      lstm_activate(to_acc(gx_row[j]) + pre[0], to_acc(gx_row[H + j]) + pre[1],
                    to_acc(gx_row[2 * H + j]) + pre[2], to_acc(gx_row[3 * H + j]) + pre[3]);
  c = lstm_cell_state(gate, c);
  if (gates_row != nullptr) {
    gates_row[j] = from_acc<S>(gate.i);
    gates_row[H + j] = from_acc<S>(gate.f);
    gates_row[2 * H + j] = from_acc<S>(gate.g);
    gates_row[3 * H + j] = from_acc<S>(gate.o);
  }
  if (cs_row != nullptr) cs_row[j] = from_acc<S>(c);
  return lstm_hidden(gate, c);
}

// Padded step of a finished sequence: the state stays; the workspace holds zero gates and the
// unchanged cell state (what the CPU backend writes).
template <typename S, typename A>
FUSED_RNN_HOST_DEVICE void lstm_forward_padded(int64_t H, int64_t j, A c, S* gates_row, S* cs_row) {
  if (gates_row != nullptr) {
    for (int g = 0; g < 4; ++g) gates_row[g * H + j] = zero_of<S>();
  }
  if (cs_row != nullptr) cs_row[j] = from_acc<S>(c);
}

// Backward of a real step. dh: total gradient reaching h_t; dc: gradient reaching c_t, updated
// to the one reaching c_{t-1}. Writes the pre-activation gradients into dgx_row [4H].
template <typename S, typename A>
FUSED_RNN_HOST_DEVICE void lstm_backward_step(const S* gates_row, A c, A c_prev, A dh, A& dc,
                                              int64_t H, int64_t j, S* dgx_row) {
  const LSTMGates<A> gate{to_acc(gates_row[j]), to_acc(gates_row[H + j]),
                          to_acc(gates_row[2 * H + j]), to_acc(gates_row[3 * H + j])};
  LSTMGates<A> d;
  dc = lstm_cell_backward(gate, c, c_prev, dh, dc, d);
  dgx_row[j] = from_acc<S>(d.i);
  dgx_row[H + j] = from_acc<S>(d.f);
  dgx_row[2 * H + j] = from_acc<S>(d.g);
  dgx_row[3 * H + j] = from_acc<S>(d.o);
}

// ------------------------------------------------------------------------------------------
// GRU
// ------------------------------------------------------------------------------------------

// Real step: gh[g] = (W_hg h_prev + b_hg) of gate g (r, z, n). Returns the new h.
// gates_row [4H] (r, z, n, gh_n) is the workspace or nullptr.
template <typename S, typename A>
FUSED_RNN_HOST_DEVICE A gru_forward_step(const S* gx_row, const A (&gh)[3], A h_prev, int64_t H,
                                         int64_t j, S* gates_row) {
  const GRUGates<A> gate = gru_activate(to_acc(gx_row[j]), to_acc(gx_row[H + j]),
                                        to_acc(gx_row[2 * H + j]), gh[0], gh[1], gh[2]);
  if (gates_row != nullptr) {
    gates_row[j] = from_acc<S>(gate.r);
    gates_row[H + j] = from_acc<S>(gate.z);
    gates_row[2 * H + j] = from_acc<S>(gate.n);
    gates_row[3 * H + j] = from_acc<S>(gh[2]);
  }
  return gru_hidden(gate, h_prev);
}

template <typename S>
FUSED_RNN_HOST_DEVICE void gru_forward_padded(int64_t H, int64_t j, S* gates_row) {
  if (gates_row != nullptr) {
    for (int g = 0; g < 4; ++g) gates_row[g * H + j] = zero_of<S>();
  }
}

// Backward of a real step: writes the input-projection gradients dgx_row [3H] and the gradients
// of the recurrent products dgh_row [3H] (the latter: nullptr when not wanted). Returns the
// direct part of the gradient reaching h_prev (dh * z); the part through W_hh is a product.
template <typename S, typename A>
FUSED_RNN_HOST_DEVICE A gru_backward_step(const S* gates_row, A h_prev, A dh, int64_t H, int64_t j,
                                          S* dgx_row, S* dgh_row) {
  const GRUGates<A> gate{to_acc(gates_row[j]), to_acc(gates_row[H + j]),
                         to_acc(gates_row[2 * H + j])};
  const A gh_n = to_acc(gates_row[3 * H + j]);
  GRUGates<A> d;
  const A dh_direct = gru_cell_backward(gate, gh_n, h_prev, dh, d);
  dgx_row[j] = from_acc<S>(d.r);
  dgx_row[H + j] = from_acc<S>(d.z);
  dgx_row[2 * H + j] = from_acc<S>(d.n);
  if (dgh_row != nullptr) {
    dgh_row[j] = from_acc<S>(d.r);
    dgh_row[H + j] = from_acc<S>(d.z);
    dgh_row[2 * H + j] = from_acc<S>(d.n * gate.r);
  }
  return dh_direct;
}

// ------------------------------------------------------------------------------------------
// Elman RNN (tanh or relu, chosen at run time: one kernel serves both)
// ------------------------------------------------------------------------------------------

template <typename A>
FUSED_RNN_HOST_DEVICE A rnn_forward_step(A a, bool relu) {
  return relu ? rnn_activate<Nonlinearity::kRelu>(a) : rnn_activate<Nonlinearity::kTanh>(a);
}

// Gradient of the pre-activation from the output h and the total gradient reaching it.
template <typename A>
FUSED_RNN_HOST_DEVICE A rnn_backward_step(A h, A dh, bool relu) {
  return relu ? rnn_cell_backward<Nonlinearity::kRelu>(h, dh)
              : rnn_cell_backward<Nonlinearity::kTanh>(h, dh);
}

// Zeroes the G gate gradients of element j of a padded step.
template <typename S>
FUSED_RNN_HOST_DEVICE void zero_gates(S* row, int G, int64_t H, int64_t j) {
  for (int g = 0; g < G; ++g) row[g * H + j] = zero_of<S>();
}

}  // namespace fused_rnn::cuda
