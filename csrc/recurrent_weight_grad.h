// The gradient of the recurrent weight from the gate gradients of all steps, shared by every
// backend's backward (on ATen ops, so on any device): two GEMMs after the time loop, never one
// per step.
#pragma once

#include <ATen/ATen.h>

#include "op_common.h"

namespace fused_rnn {

// out (+)= a @ b on ATen ops (any device): the products of recurrent_weight_grad by default.
inline void aten_matmul_into(Tensor& out, const Tensor& a, const Tensor& b, bool accumulate) {
  if (accumulate) {
    out.addmm_(a, b);
  } else {
    at::mm_out(out, a, b);
  }
}

// grad_w_hh [GH, P] = sum_{t,b} dgh[t,b]^T h_prev[t,b], with dgh [T, B, GH], y [T, B, P],
// h0 [B, P]. h_prev of a step is y of the neighbouring step (taken as zero on padded steps,
// where dgh is zero too), or h0 at each sequence's first step. lengths: on dgh's device, or
// the CPU.
// matmul_into(out, a, b, accumulate) runs the two products (the CPU kernels pass their own).
template <typename MatmulInto = decltype(&aten_matmul_into)>
inline Tensor recurrent_weight_grad(const Tensor& dgh, const Tensor& y, const Tensor& h0,
                                    const optional<Tensor>& lengths, bool reverse,
                                    MatmulInto matmul_into = &aten_matmul_into) {
  const int64_t T = dgh.size(0), B = dgh.size(1), GH = dgh.size(2), P = y.size(2);
  if (T == 0 || B == 0) return at::zeros({GH, P}, dgh.options());
  // Each sequence's first step, whose h_prev is h0: t = 0, or t = length - 1 in reverse.
  Tensor dgh_first;
  if (!reverse) {
    dgh_first = dgh[0];
  } else if (!has(lengths)) {
    dgh_first = dgh[T - 1];
  } else {
    const Tensor first_t = (lengths->to(dgh.device(), at::kLong).clamp(0, T) - 1).clamp_min(0);
    const Tensor rows = first_t * B + at::arange(B, first_t.options());
    // A length-0 sequence maps to row b of step 0, whose gradient is zero.
    dgh_first = dgh.reshape({T * B, GH}).index_select(0, rows);
  }
  Tensor grad_w = uninitialized(at::empty({GH, P}, dgh.options()));
  matmul_into(grad_w, dgh_first.t(), h0, false);
  if (T > 1) {
    // The other steps, whose h_prev is y of the neighbouring step.
    const Tensor dgh_steps = reverse ? dgh.narrow(0, 0, T - 1) : dgh.narrow(0, 1, T - 1);
    Tensor y_prev = reverse ? y.narrow(0, 1, T - 1) : y.narrow(0, 0, T - 1);
    if (!reverse && has(lengths)) {
      // The first padded step of a finished sequence pairs its zero gradient with y of the
      // sequence's last real step: a NaN or inf there would make a NaN in every row (0 * inf),
      // where torch.nn's packed sequences have no such product. (In reverse, padded steps
      // come first and pair with padded y, which is zero.)
      const Tensor steps = at::arange(1, T, y.options().dtype(at::kLong));
      const Tensor real = steps.unsqueeze(1) < lengths->to(y.device(), at::kLong).unsqueeze(0);
      y_prev = at::where(real.unsqueeze(2), y_prev, at::zeros({}, y.options()));
    }
    matmul_into(grad_w, dgh_steps.reshape({(T - 1) * B, GH}).t(), y_prev.reshape({(T - 1) * B, P}),
                true);
  }
  return grad_w;
}

}  // namespace fused_rnn
