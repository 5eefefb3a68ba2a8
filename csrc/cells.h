// Gate maths of every cell, per element, shared by the CPU and CUDA kernels.
//
// All functions compute in the accumulation type `T` (float for fp32/fp16/bf16 storage, double
// for fp64), in registers. Gate order follows torch.nn: LSTM (i, f, g, o), GRU (r, z, n).
//
// Naming: `a*` are pre-activations (input projection + recurrent product + biases), `d*` are
// gradients of the loss. The recurrent product itself is a GEMM done by the caller.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define FUSED_RNN_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define FUSED_RNN_HOST_DEVICE inline __attribute__((always_inline))
#endif

namespace fused_rnn {

// ------------------------------------------------------------------------------------------
// Transcendentals.
//
// On the host, float exp is a branch-free Cephes-style polynomial (about 1 ulp) so that the
// row loops of the CPU kernels auto-vectorise: a call to libm's expf would stop that, and the
// pointwise pass would then cost more than the recurrent GEMM. double uses libm (fp64 is the
// gradcheck dtype, where accuracy is the point). On the device, expf/exp are the CUDA ones.
//
// Non-finite values go through as in torch: NaN stays NaN (every comparison below is false for
// it), and e^x overflows to inf, so that σ(-inf) and σ of a large negative number are exactly 0
// (as torch's sigmoid gives) and their derivative σ(1 - σ) exactly 0: an inf multiplied by it
// is then NaN in our gradients as in torch's, not a finite or infinite leftover.
// ------------------------------------------------------------------------------------------

#if !defined(__CUDA_ARCH__)
inline __attribute__((always_inline)) float host_expf(float x) {
  constexpr float kOverflow = 88.72283935546875f;  // ln(FLT_MAX): beyond it e^x is no float
  const bool overflows = x > kOverflow;
  // e^x = 2^n * e^r with n = round(x / ln2), |r| <= ln2 / 2.
  x = x < -87.0f ? -87.0f : x;  // keeps 2^n a normal number and the result finite
  x = x > 88.0f ? 88.0f : x;
  const float round_magic = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  float n = (x * 1.44269504088896341f + round_magic) - round_magic;
  float r = x - n * 0.693359375f;  // ln2 split in two for an exact first product
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  // A NaN x gives a NaN p; whatever its n makes of the scale, p * scale is NaN.
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  scale = __builtin_bit_cast(float, bits);
  return overflows ? __builtin_inff() : p * scale;
}
#endif

FUSED_RNN_HOST_DEVICE float exp_(float x) {
#if defined(__CUDA_ARCH__)
  return expf(x);
#else
  return host_expf(x);
#endif
}

FUSED_RNN_HOST_DEVICE double exp_(double x) { return exp(x); }

template <typename T>
FUSED_RNN_HOST_DEVICE T sigmoid(T x) {
  return T(1) / (T(1) + exp_(-x));
}

// tanh(x) = 1 - 2 / (e^{2x} + 1): exact at both tails (e^{2x} -> inf gives 1, -> 0 gives -1),
// absolute error a few ulp near 0. double uses libm's tanh.
FUSED_RNN_HOST_DEVICE float tanh_(float x) { return 1.0f - 2.0f / (exp_(2.0f * x) + 1.0f); }
FUSED_RNN_HOST_DEVICE double tanh_(double x) { return tanh(x); }

// NaN passes through, as in torch.relu (x > 0 ? x : 0 would make it 0).
template <typename T>
FUSED_RNN_HOST_DEVICE T relu_(T x) {
  return x < T(0) ? T(0) : x;
}

// ------------------------------------------------------------------------------------------
// LSTM:  i = σ(a_i)  f = σ(a_f)  g = tanh(a_g)  o = σ(a_o)
//        c = f * c_prev + i * g      h = o * tanh(c)
// ------------------------------------------------------------------------------------------

template <typename T>
struct LSTMGates {
  T i, f, g, o;
};

template <typename T>
FUSED_RNN_HOST_DEVICE LSTMGates<T> lstm_activate(T a_i, T a_f, T a_g, T a_o) {
  return {sigmoid(a_i), sigmoid(a_f), tanh_(a_g), sigmoid(a_o)};
}

template <typename T>
FUSED_RNN_HOST_DEVICE T lstm_cell_state(const LSTMGates<T>& gate, T c_prev) {
  return gate.f * c_prev + gate.i * gate.g;
}

template <typename T>
FUSED_RNN_HOST_DEVICE T lstm_hidden(const LSTMGates<T>& gate, T c) {
  return gate.o * tanh_(c);
}

// Backward of one element. `dh` is the total gradient reaching h_t (output + recurrent),
// `dc` the gradient reaching c_t from step t+1. Writes the pre-activation gradients and
// returns the gradient reaching c_prev.
template <typename T>
FUSED_RNN_HOST_DEVICE T lstm_cell_backward(const LSTMGates<T>& gate, T c, T c_prev, T dh, T dc,
                                           LSTMGates<T>& da) {
  const T tanh_c = tanh_(c);
  dc += dh * gate.o * (T(1) - tanh_c * tanh_c);
  da.i = dc * gate.g * gate.i * (T(1) - gate.i);
  da.f = dc * c_prev * gate.f * (T(1) - gate.f);
  da.g = dc * gate.i * (T(1) - gate.g * gate.g);
  da.o = dh * tanh_c * gate.o * (T(1) - gate.o);
  return dc * gate.f;
}

// ------------------------------------------------------------------------------------------
// GRU (torch.nn's form, with b_hn inside the reset product):
//   r = σ(x_r + gh_r)   z = σ(x_z + gh_z)   n = tanh(x_n + r * gh_n)   h = (1 - z) * n + z * h_prev
// where x_* = W_i* x + b_i* (the input projection) and gh_* = W_h* h_prev + b_h*.
// ------------------------------------------------------------------------------------------

template <typename T>
struct GRUGates {
  T r, z, n;
};

template <typename T>
FUSED_RNN_HOST_DEVICE GRUGates<T> gru_activate(T x_r, T x_z, T x_n, T gh_r, T gh_z, T gh_n) {
  const T r = sigmoid(x_r + gh_r);
  return {r, sigmoid(x_z + gh_z), tanh_(x_n + r * gh_n)};
}

template <typename T>
FUSED_RNN_HOST_DEVICE T gru_hidden(const GRUGates<T>& gate, T h_prev) {
  return (T(1) - gate.z) * gate.n + gate.z * h_prev;
}

// Backward of one element: `gh_n` is the saved recurrent n-part (W_hn h_prev + b_hn), `dh` the
// total gradient reaching h_t. `dx` gets the gradients of the input-projection pre-activations
// (x_r, x_z, x_n); the gradients of the recurrent parts (gh_r, gh_z, gh_n) are (dx.r, dx.z,
// dx.n * r). Returns the direct part of the gradient reaching h_prev (dh * z); the part
// through W_hh is the caller's GEMM.
template <typename T>
FUSED_RNN_HOST_DEVICE T gru_cell_backward(const GRUGates<T>& gate, T gh_n, T h_prev, T dh,
                                          GRUGates<T>& dx) {
  dx.n = dh * (T(1) - gate.z) * (T(1) - gate.n * gate.n);
  dx.z = dh * (h_prev - gate.n) * gate.z * (T(1) - gate.z);
  dx.r = dx.n * gh_n * gate.r * (T(1) - gate.r);
  return dh * gate.z;
}

// ------------------------------------------------------------------------------------------
// Elman RNN: h = tanh(a) or relu(a). The backward uses the output h, not a.
// ------------------------------------------------------------------------------------------

enum class Nonlinearity { kTanh, kRelu };

template <Nonlinearity kAct, typename T>
FUSED_RNN_HOST_DEVICE T rnn_activate(T a) {
  if constexpr (kAct == Nonlinearity::kTanh) {
    return tanh_(a);
  } else {
    return relu_(a);
  }
}

template <Nonlinearity kAct, typename T>
FUSED_RNN_HOST_DEVICE T rnn_cell_backward(T h, T dh) {
  if constexpr (kAct == Nonlinearity::kTanh) {
    return dh * (T(1) - h * h);
  } else {
    // torch's threshold_backward: no gradient where h <= 0, so a NaN h passes dh on
    return h <= T(0) ? T(0) : dh;
  }
}

// ------------------------------------------------------------------------------------------
// Variable lengths: time step `t` is a real step of sequence b iff t < length_b, whichever the
// direction. A forward-direction sequence starts at t = 0, a reverse one at t = length_b - 1.
// ------------------------------------------------------------------------------------------

FUSED_RNN_HOST_DEVICE bool step_is_valid(int64_t t, int64_t length) { return t < length; }

// Whether h_prev of step t is the initial state (else it is the output of the neighbouring
// step: t - 1 forward, t + 1 reverse).
FUSED_RNN_HOST_DEVICE bool step_is_first(int64_t t, int64_t length, bool reverse) {
  return reverse ? t + 1 >= length : t == 0;
}

}  // namespace fused_rnn
