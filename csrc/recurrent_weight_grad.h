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

// grad_w_hh [GH, P] = sum_{t,b} dgh[t,b]^T h_prev[t,b] over the real steps, with dgh [T, B, GH],
// y [T, B, P], h0 [B, P]. h_prev of a step is y of the neighbouring step, or h0 at each
// sequence's first step. lengths: on dgh's device, or the CPU.
// matmul_into(out, a, b, accumulate) runs the two products (the CPU kernels pass their own).
//
// The products run over all steps; with lengths, a pair that is not (real step, its h_prev) is
// zero times something: the zero gradient of a padded step (forward), or the zero y of a padded
// step (reverse). The something is zeroed too, since zero times a NaN or inf would be NaN, where
// torch.nn's packed sequences have no such pair.
template <typename MatmulInto = decltype(&aten_matmul_into)>
inline Tensor recurrent_weight_grad(const Tensor& dgh, const Tensor& y, const Tensor& h0,
                                    const optional<Tensor>& lengths, bool reverse,
                                    MatmulInto matmul_into = &aten_matmul_into) {
  const int64_t T = dgh.size(0), B = dgh.size(1), GH = dgh.size(2), P = y.size(2);
  if (T == 0 || B == 0) return at::zeros({GH, P}, dgh.options());
  const Tensor length = has(lengths) ? lengths->to(dgh.device(), at::kLong) : Tensor();
  const Tensor zero = at::zeros({}, y.options());
  // Each sequence's first step, whose h_prev is h0: t = 0, or t = length - 1 in reverse.
  Tensor dgh_first, h0_paired = h0;
  if (!reverse) {
    dgh_first = dgh[0];
  } else if (!has(lengths)) {
    dgh_first = dgh[T - 1];
  } else {
    const Tensor first_t = (length.clamp(0, T) - 1).clamp_min(0);
    const Tensor rows = first_t * B + at::arange(B, first_t.options());
    // A length-0 sequence maps to row b of step 0, whose gradient is zero.
    dgh_first = dgh.reshape({T * B, GH}).index_select(0, rows);
  }
  if (has(lengths)) {  // a sequence of length 0 has no first step
    h0_paired = at::where((length > 0).unsqueeze(1), h0, zero);
  }
  Tensor grad_w = uninitialized(at::empty({GH, P}, dgh.options()));
  matmul_into(grad_w, dgh_first.t(), h0_paired, false);
  if (T > 1) {
    // The other steps, whose h_prev is y of the neighbouring step. Pair i is step i + 1 with
    // y[i] (forward), or step i with y[i + 1] (reverse): real pairs iff i + 1 < length.
    Tensor dgh_steps = reverse ? dgh.narrow(0, 0, T - 1) : dgh.narrow(0, 1, T - 1);
    Tensor y_prev = reverse ? y.narrow(0, 1, T - 1) : y.narrow(0, 0, T - 1);
    if (has(lengths)) {
      const Tensor real_pair =
          (at::arange(1, T, length.options()).unsqueeze(1) < length.unsqueeze(0)).unsqueeze(2);
      Tensor& other = reverse ? dgh_steps : y_prev;  // the side that is not zero already
      other = at::where(real_pair, other, zero);
    }
    matmul_into(grad_w, dgh_steps.reshape({(T - 1) * B, GH}).t(), y_prev.reshape({(T - 1) * B, P}),
                true);
  }
  return grad_w;
}

}  // namespace fused_rnn
