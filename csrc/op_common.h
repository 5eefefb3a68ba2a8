// Argument checks and output allocation shared by the CPU and CUDA implementations of every op.
//
// The checks run before any kernel and give torch-style errors (shape, dtype, device), so a
// bad call never reaches a kernel. The Python front end (fused_rnn/functional.py) checks the
// user's input first with torch.nn's messages; these guard direct calls of the ops.
#pragma once

#include <ATen/ATen.h>
#include <c10/core/impl/LocalDispatchKeySet.h>

#include <cstdlib>
#include <limits>
#include <string>

namespace fused_rnn {

using at::Tensor;
using c10::optional;

// Sizes of one recurrence call. H: hidden units (cell state width), P: width of h (H, or
// proj_size), G: gates per hidden unit.
struct RecurrenceSizes {
  int64_t T, B, H, P, G;
};

namespace detail {

inline std::string shape_str(const Tensor& t) { return c10::str(t.sizes()); }

inline void check_shape(const char* op, const char* name, const Tensor& t,
                        at::IntArrayRef expected) {
  TORCH_CHECK(t.sizes().equals(expected), op, ": expected ", name, " of shape ", expected,
              ", got ", t.sizes());
}

inline void check_like(const char* op, const char* name, const Tensor& t, const Tensor& ref) {
  TORCH_CHECK(t.device() == ref.device(), op, ": ", name, " is on ", t.device(),
              " but the input is on ", ref.device());
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), op, ": ", name, " has dtype ",
              t.scalar_type(), " but the input has dtype ", ref.scalar_type());
}

inline void check_optional_like(const char* op, const char* name, const optional<Tensor>& t,
                                const Tensor& ref, at::IntArrayRef expected) {
  if (t.has_value() && t->defined()) {
    check_like(op, name, *t, ref);
    check_shape(op, name, *t, expected);
  }
}

}  // namespace detail

// Held for the whole of every op's implementation. The ops take and return tensors of one
// dtype and choose their own compute precision; when the autograd engine runs a backward
// inside an autocast region, autocast would otherwise recast the ATen GEMMs the op calls
// internally (at::mm of fp32 work buffers to bf16, mixing dtypes).
struct AutocastOff {
  c10::impl::ExcludeDispatchKeyGuard guard{c10::autocast_dispatch_keyset};
};

inline bool has(const optional<Tensor>& t) { return t.has_value() && t->defined(); }

// lengths: int64 [B] on the CPU or on `device`; when on the CPU its values are checked to lie
// in [0, T] (kernels clamp them too, so a device tensor with bad values cannot read out of
// bounds, but only a CPU tensor can be checked without a device synchronisation).
inline void check_lengths(const char* op, const optional<Tensor>& lengths, int64_t T, int64_t B,
                          const at::Device& device) {
  if (!has(lengths)) return;
  const Tensor& len = *lengths;
  TORCH_CHECK(len.scalar_type() == at::kLong, op, ": lengths must be an int64 tensor, got ",
              len.scalar_type());
  TORCH_CHECK(len.dim() == 1 && len.size(0) == B, op, ": expected lengths of shape [", B,
              "] (one per batch entry), got ", len.sizes());
  TORCH_CHECK(len.is_cpu() || len.device() == device, op, ": lengths must be on the CPU or on ",
              device, ", got ", len.device());
  if (len.is_cpu() && B > 0) {
    const auto [lo, hi] = at::aminmax(len);
    const int64_t min_len = lo.item<int64_t>(), max_len = hi.item<int64_t>();
    TORCH_CHECK(min_len >= 0 && max_len <= T, op, ": lengths must lie in [0, ", T,
                "] (the number of time steps), got values in [", min_len, ", ", max_len, "]");
  }
}

inline void check_floating_input(const char* op, const Tensor& gx) {
  const auto dtype = gx.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kHalf ||
                  dtype == at::kBFloat16,
              op, ": expected a float32, float64, float16 or bfloat16 input, got ", dtype);
}

// Checks the inputs of a forward op and returns the sizes. `G` is the number of gates; c0 and
// w_hr only for LSTM, b_hh only for GRU.
inline RecurrenceSizes check_forward_inputs(const char* op, int64_t G, const Tensor& gx,
                                            const Tensor& w_hh, const optional<Tensor>& w_hr,
                                            const Tensor& h0, const optional<Tensor>& c0,
                                            const optional<Tensor>& b_hh,
                                            const optional<Tensor>& lengths) {
  TORCH_CHECK(gx.dim() == 3, op, ": expected gx of shape [T, B, ", G,
              "*H] (the input projection), got ", gx.sizes());
  check_floating_input(op, gx);
  TORCH_CHECK(gx.size(2) % G == 0, op, ": the last dimension of gx (", gx.size(2),
              ") must be a multiple of the number of gates, ", G);
  const int64_t T = gx.size(0), B = gx.size(1), H = gx.size(2) / G;
  TORCH_CHECK(w_hh.dim() == 2 && w_hh.size(0) == G * H, op, ": expected w_hh of shape [", G * H,
              ", P], got ", w_hh.sizes());
  detail::check_like(op, "w_hh", w_hh, gx);
  const int64_t P = w_hh.size(1);
  if (has(w_hr)) {
    detail::check_optional_like(op, "w_hr", w_hr, gx, {P, H});
  } else {
    TORCH_CHECK(P == H, op, ": w_hh has ", P, " columns but the hidden size is ", H,
                " (only an LSTM with a projection w_hr has another width)");
  }
  detail::check_like(op, "h0", h0, gx);
  detail::check_shape(op, "h0", h0, {B, P});
  if (c0.has_value()) {
    TORCH_CHECK(c0->defined(), op, ": c0 is undefined");
    detail::check_optional_like(op, "c0", c0, gx, {B, H});
  }
  detail::check_optional_like(op, "b_hh", b_hh, gx, {G * H});
  check_lengths(op, lengths, T, B, gx.device());
  return {T, B, H, P, G};
}

// Checks what a backward op receives besides the forward's inputs: the output y, the
// workspace tensors (expected shapes given), and the incoming gradients.
inline RecurrenceSizes check_backward_inputs(const char* op, int64_t G, const Tensor& w_hh,
                                             const optional<Tensor>& w_hr, const Tensor& h0,
                                             const optional<Tensor>& c0, const Tensor& y,
                                             const optional<Tensor>& lengths,
                                             const optional<Tensor>& grad_y,
                                             const optional<Tensor>& grad_h_n,
                                             const optional<Tensor>& grad_c_n) {
  TORCH_CHECK(y.dim() == 3, op, ": expected y of shape [T, B, P], got ", y.sizes());
  check_floating_input(op, y);
  TORCH_CHECK(w_hh.dim() == 2 && w_hh.size(0) % G == 0, op, ": expected w_hh of shape [", G,
              "*H, P], got ", w_hh.sizes());
  detail::check_like(op, "w_hh", w_hh, y);
  const int64_t T = y.size(0), B = y.size(1), P = y.size(2), H = w_hh.size(0) / G;
  detail::check_shape(op, "w_hh", w_hh, {G * H, P});
  if (has(w_hr)) {
    detail::check_optional_like(op, "w_hr", w_hr, y, {P, H});
  } else {
    TORCH_CHECK(P == H, op, ": y has width ", P, " but the hidden size is ", H);
  }
  detail::check_like(op, "h0", h0, y);
  detail::check_shape(op, "h0", h0, {B, P});
  if (c0.has_value()) detail::check_optional_like(op, "c0", c0, y, {B, H});
  detail::check_optional_like(op, "grad_y", grad_y, y, {T, B, P});
  detail::check_optional_like(op, "grad_h_n", grad_h_n, y, {B, P});
  detail::check_optional_like(op, "grad_c_n", grad_c_n, y, {B, H});
  check_lengths(op, lengths, T, B, y.device());
  return {T, B, H, P, G};
}

inline void check_workspace(const char* op, const char* name, const Tensor& t, const Tensor& y,
                            at::IntArrayRef expected) {
  TORCH_CHECK(t.numel() > 0 || c10::multiply_integers(expected) == 0, op, ": the ", name,
              " workspace is empty: the forward ran with save_for_backward=False");
  detail::check_like(op, name, t, y);
  detail::check_shape(op, name, t, expected);
}

// Whether outputs are filled with NaN before the kernels write them (tests set
// FUSED_RNN_FILL_UNINITIALIZED=1 so that any element a kernel forgets to write shows up).
inline bool fill_uninitialized() {
  static const bool enabled = [] {
    const char* env = std::getenv("FUSED_RNN_FILL_UNINITIALIZED");
    return env != nullptr && std::string(env) == "1";
  }();
  return enabled;
}

// A freshly allocated output, NaN-filled under FUSED_RNN_FILL_UNINITIALIZED.
inline Tensor uninitialized(Tensor out) {
  if (fill_uninitialized() && at::isFloatingType(out.scalar_type())) {
    out.fill_(std::numeric_limits<double>::quiet_NaN());
  }
  return out;
}

inline Tensor empty_output(at::IntArrayRef sizes, const at::TensorOptions& options) {
  return uninitialized(at::empty(sizes, options));
}

// Placeholder for an output the call does not produce (no workspace, no w_hr gradient).
inline Tensor empty_placeholder(const at::TensorOptions& options) {
  return at::empty({0}, options);
}

}  // namespace fused_rnn
