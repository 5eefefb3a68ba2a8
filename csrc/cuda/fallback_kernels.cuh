// Pointwise bodies of the fallback path: one thread per (batch row, hidden unit) element of one
// step, after the step's recurrent GEMM (cuBLAS through ATen). The semantics are those of the
// CPU backend's row passes (csrc/cpu), element by element.
#pragma once

#include "cuda/cell_steps.cuh"
#include "cuda/launch.h"

namespace fused_rnn::cuda {

// Forward of element idx = b * H + j of step t. kCell: kLSTM, kGRU, or kRNNTanh for both
// Elman cells (a.relu picks).
template <typename S, CellKind kCell>
FUSED_RNN_HOST_DEVICE void fallback_forward_element(const FallbackForwardStep& a, int64_t idx) {
  using A = acc_t<S>;
  constexpr int G = gates_of(kCell);
  const int64_t H = a.H;
  const int64_t b = idx / H, j = idx - b * H;
  const bool valid = step_is_valid(a.t, length_of(a.lengths, b, a.T));
  const S* gx_row = static_cast<const S*>(a.gx_t) + b * G * H;
  const S* pre_row = static_cast<const S*>(a.pre) + b * G * H;
  S* h = static_cast<S*>(a.h);
  S* y = a.y_t ? static_cast<S*>(a.y_t) + b * H : nullptr;

  if constexpr (kCell == CellKind::kLSTM) {
    A& c = static_cast<A*>(a.c)[idx];
    S* gates_row = a.gates_t ? static_cast<S*>(a.gates_t) + b * 4 * H : nullptr;
    S* cs_row = a.cs_t ? static_cast<S*>(a.cs_t) + b * H : nullptr;
    if (valid) {
      const A pre[4] = {to_acc(pre_row[j]), to_acc(pre_row[H + j]), to_acc(pre_row[2 * H + j]),
                        to_acc(pre_row[3 * H + j])};
      A c_new = c;
      const A h_new = lstm_forward_step(gx_row, pre, H, j, c_new, gates_row, cs_row);
      c = c_new;
      h[idx] = from_acc<S>(h_new);
      if (y) y[j] = h[idx];
    } else {
      lstm_forward_padded(H, j, c, gates_row, cs_row);
      if (y) y[j] = zero_of<S>();
    }
  } else if constexpr (kCell == CellKind::kGRU) {
    S* gates_row = a.gates_t ? static_cast<S*>(a.gates_t) + b * 4 * H : nullptr;
    if (valid) {
      const S* bias = static_cast<const S*>(a.b_hh);
      A gh[3];
      for (int g = 0; g < 3; ++g) {
        gh[g] = to_acc(pre_row[g * H + j]) + (bias ? to_acc(bias[g * H + j]) : A(0));
      }
      h[idx] = from_acc<S>(gru_forward_step(gx_row, gh, to_acc(h[idx]), H, j, gates_row));
      y[j] = h[idx];
    } else {
      gru_forward_padded(H, j, gates_row);
      y[j] = zero_of<S>();
    }
  } else {
    if (valid) {
      h[idx] = from_acc<S>(rnn_forward_step(to_acc(gx_row[j]) + to_acc(pre_row[j]), a.relu));
      y[j] = h[idx];
    } else {
      y[j] = zero_of<S>();
    }
  }
}

// Element idx = b * P + p of the projection commit.
template <typename S>
FUSED_RNN_HOST_DEVICE void projection_commit_element(const FallbackProjectionCommit& a,
                                                     int64_t idx) {
  const int64_t b = idx / a.P;
  S* y = static_cast<S*>(a.y_t);
  if (step_is_valid(a.t, length_of(a.lengths, b, a.T))) {
    const S v = static_cast<const S*>(a.h_proj)[idx];
    static_cast<S*>(a.h)[idx] = v;
    y[idx] = v;
  } else {
    y[idx] = zero_of<S>();
  }
}

// Backward of element idx = b * H + j of step t.
template <typename S, CellKind kCell>
FUSED_RNN_HOST_DEVICE void fallback_backward_element(const FallbackBackwardStep& a, int64_t idx) {
  using A = acc_t<S>;
  constexpr int G = gates_of(kCell);
  const int64_t H = a.H, B = a.B, t = a.t;
  const int64_t b = idx / H, j = idx - b * H;
  const int64_t length = length_of(a.lengths, b, a.T);
  S* dgx_row = static_cast<S*>(a.dgx_t) + b * G * H;
  S* dh = static_cast<S*>(a.dh);

  if (!step_is_valid(t, length)) {
    // Padded step: no gate gradients; dh (and dc) pass through (the product after the step
    // leaves these rows out: add_recurrent_product).
    zero_gates(dgx_row, G, H, j);
    if constexpr (kCell == CellKind::kGRU) zero_gates(static_cast<S*>(a.dgh_t) + b * 3 * H, 3, H, j);
    return;
  }
  const S* dy = static_cast<const S*>(a.dy_t);
  const A dh_total = to_acc(dh[idx]) + (dy ? to_acc(dy[idx]) : A(0));
  const bool first = step_is_first(t, length, a.reverse);
  const int64_t row = t * B + b;
  const int64_t prev_row = prev_time(t, a.reverse) * B + b;  // valid unless `first`

  if constexpr (kCell == CellKind::kLSTM) {
    const S* cs = static_cast<const S*>(a.cs);
    const S* gates_row = static_cast<const S*>(a.gates) + row * 4 * H;
    const A c = to_acc(cs[row * H + j]);
    const A c_prev =
        first ? to_acc(static_cast<const S*>(a.c0)[idx]) : to_acc(cs[prev_row * H + j]);
    A& dc = static_cast<A*>(a.dc)[idx];
    A dc_new = dc;
    lstm_backward_step(gates_row, c, c_prev, dh_total, dc_new, H, j, dgx_row);
    dc = dc_new;
    if (!a.dh_read_only) dh[idx] = zero_of<S>();
  } else if constexpr (kCell == CellKind::kGRU) {
    const S* gates_row = static_cast<const S*>(a.gates) + row * 4 * H;
    const A h_prev = first ? to_acc(static_cast<const S*>(a.h0)[idx])
                           : to_acc(static_cast<const S*>(a.y)[prev_row * H + j]);
    S* dgh_row = static_cast<S*>(a.dgh_t) + b * 3 * H;
    dh[idx] = from_acc<S>(gru_backward_step(gates_row, h_prev, dh_total, H, j, dgx_row, dgh_row));
  } else {
    const A h = to_acc(static_cast<const S*>(a.y)[row * H + j]);
    dgx_row[j] = from_acc<S>(rnn_backward_step(h, dh_total, a.relu));
    dh[idx] = zero_of<S>();
  }
}

// Element idx = b * P + p of the projection gradient step.
template <typename S>
FUSED_RNN_HOST_DEVICE void projection_grad_element(const FallbackProjectionGrad& a, int64_t idx) {
  const int64_t b = idx / a.P;
  if (!step_is_valid(a.t, length_of(a.lengths, b, a.T))) return;
  S* dh = static_cast<S*>(a.dh);
  const S* dy = static_cast<const S*>(a.dy_t);
  using A = acc_t<S>;
  static_cast<S*>(a.total_t)[idx] = from_acc<S>(to_acc(dh[idx]) + (dy ? to_acc(dy[idx]) : A(0)));
  dh[idx] = zero_of<S>();
}

}  // namespace fused_rnn::cuda
