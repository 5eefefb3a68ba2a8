// Op schemas of the fused_rnn library, and the Python module that loads it.
//
// Every op runs the recurrence of ONE layer in ONE direction. The input projection of all time
// steps is done outside (one GEMM by torch), so every op starts from
//
//   gx       [T, B, G*H]  x_t W_ih^T + b_ih (+ b_hh for LSTM and RNN), gate blocks in torch.nn's
//                         order: LSTM (i, f, g, o) G=4, GRU (r, z, n) G=3, RNN G=1
//   w_hh     [G*H, P]     recurrent weight; P = H, or proj_size for an LSTM with projection
//   w_hr     [P, H]       LSTM projection weight (optional): h_t = w_hr (o * tanh(c_t))
//   b_hh     [3*H]        GRU only (optional): the whole recurrent bias, since torch.nn's GRU puts
//                         b_hn inside the reset product  n = tanh(x_n + r * (W_hn h + b_hn))
//   h0 [B, P], c0 [B, H]  initial states
//   lengths  [B] int64    optional, on the CPU or on gx's device, values in [0, T]: step t is a
//                         real step of sequence b iff t < lengths[b]. A finished sequence keeps
//                         its state and emits zeros; with reverse=True each sequence starts at
//                         its own last real step. h_n is the state after each sequence's last
//                         real step.
//   reverse               run t = T-1 .. 0
//
// All floating tensors share gx's dtype and device; gate maths run in fp32 (fp64 for fp64).
//
// Forward outputs: y [T, B, P] (zeros on padded steps), h_n [B, P], c_n [B, H], and the
// workspace the backward needs, in gx's dtype, only when save_for_backward (else empty [0]):
//   LSTM  gates [T, B, 4H]  activated i, f, g, o       cs [T, B, H]  cell states c_t
//   GRU   gates [T, B, 4H]  r, z, n and gh_n = W_hn h_prev + b_hn
//   RNN   nothing: tanh'/relu' are taken from y
// The backward also reads y: on real steps it is h_t, so h_prev of every step is y of the
// neighbouring step (or h0 at a sequence's first step) and need not be stored twice.
//
// Backward inputs: the gradients of y, h_n, c_n (None = zero) and the forward's inputs and
// outputs; backward outputs: the gradients of gx, w_hh (and w_hr / b_hh: always computed,
// [0] when the op has no w_hr), h0, c0.
//
// Implementations: csrc/cpu (CPU), csrc/cuda (CUDA), fused_rnn/triton_kernels (the *_triton ops,
// same schemas). Fake kernels and autograd: fused_rnn/_ops.py. Readable definition:
// fused_rnn/reference.py.
//
// The backward ops are not differentiable. A backward that must record a graph (create_graph,
// for a second derivative), or that gets gradients for the workspace (which is how a second
// derivative reaches gx), calls {cell}_backward_differentiable instead: the same gradients in
// differentiable torch ops, plus those of the workspace (fused_rnn/reference_backward.py,
// registered from Python as their CompositeImplicitAutograd kernel).

#include <Python.h>
#include <torch/library.h>

#include <exception>

#include "build_info.h"
#include "cpu/cpu_isa.h"
#include "cpu/output_pool.h"

extern "C" {
// _C.cpu_isa(): the instruction set the CPU kernels' float code runs with (cpu/cpu_isa.h).
static PyObject* cpu_isa(PyObject* /*module*/, PyObject* /*unused*/) {
  try {
    return PyUnicode_FromString(fused_rnn::cpu::cpu_isa_name());
  } catch (const std::exception& error) {  // a bad FUSED_RNN_CPU_ISA
    PyErr_SetString(PyExc_RuntimeError, error.what());
    return nullptr;
  }
}

// _C.cpu_pool_bytes() / _C.release_cpu_pool(): the CPU kernels' pool of freed output blocks
// (cpu/output_pool.h), for fused_rnn.empty_cpu_cache().
static PyObject* cpu_pool_bytes(PyObject* /*module*/, PyObject* /*unused*/) {
  return PyLong_FromSize_t(fused_rnn::cpu::pooled_free_bytes());
}

static PyObject* release_cpu_pool(PyObject* /*module*/, PyObject* /*unused*/) {
  return PyLong_FromSize_t(fused_rnn::cpu::release_pooled_blocks());
}

static PyMethodDef module_methods[] = {
    {"cpu_isa", cpu_isa, METH_NOARGS,
     "The instruction set of the CPU kernels: 'avx512', 'avx2' or 'baseline'."},
    {"cpu_pool_bytes", cpu_pool_bytes, METH_NOARGS,
     "Bytes of freed CPU output blocks kept for reuse."},
    {"release_cpu_pool", release_cpu_pool, METH_NOARGS,
     "Frees the CPU output blocks kept for reuse; returns the bytes released."},
    {nullptr, nullptr, 0, nullptr},
};

// Importing fused_rnn._C loads this library, whose static initialisers register the ops.
// The module itself carries the build's identity and cpu_isa().
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT,
      "_C",
      "fused_rnn's compiled ops (registered in torch.ops.fused_rnn)",
      -1,              // m_size: no per-module state
      module_methods,  // m_methods
      nullptr,  // m_slots
      nullptr,  // m_traverse
      nullptr,  // m_clear
      nullptr,  // m_free
  };
  PyObject* module = PyModule_Create(&module_def);
  if (module == nullptr) return nullptr;
  if (PyModule_AddStringConstant(module, "source_hash", FUSED_RNN_SOURCE_HASH) < 0 ||
      PyModule_AddIntConstant(module, "with_cuda", FUSED_RNN_WITH_CUDA) < 0 ||
      PyModule_AddStringConstant(module, "cuda_arch_list", FUSED_RNN_CUDA_ARCH_LIST) < 0) {
    Py_DECREF(module);
    return nullptr;
  }
  return module;
}
}

TORCH_LIBRARY(fused_rnn, m) {
  // The input projection of all time steps, y = input @ weight^T + bias; the backward returns
  // an empty tensor for each gradient output_mask does not ask for.
  m.def("linear(Tensor input, Tensor weight, Tensor? bias) -> Tensor");
  m.def(
      "linear_backward(Tensor grad_output, Tensor input, Tensor weight, bool[3] output_mask) "
      "-> (Tensor grad_input, Tensor grad_weight, Tensor grad_bias)");

  m.def(
      "lstm_forward(Tensor gx, Tensor w_hh, Tensor? w_hr, Tensor h0, Tensor c0, Tensor? lengths, "
      "bool reverse, bool save_for_backward) "
      "-> (Tensor y, Tensor h_n, Tensor c_n, Tensor gates, Tensor cs)");
  m.def(
      "lstm_backward(Tensor? grad_y, Tensor? grad_h_n, Tensor? grad_c_n, Tensor w_hh, "
      "Tensor? w_hr, Tensor h0, Tensor c0, Tensor y, Tensor gates, Tensor cs, Tensor? lengths, "
      "bool reverse) "
      "-> (Tensor grad_gx, Tensor grad_w_hh, Tensor grad_w_hr, Tensor grad_h0, Tensor grad_c0)");

  m.def(
      "gru_forward(Tensor gx, Tensor w_hh, Tensor? b_hh, Tensor h0, Tensor? lengths, "
      "bool reverse, bool save_for_backward) -> (Tensor y, Tensor h_n, Tensor gates)");
  m.def(
      "gru_backward(Tensor? grad_y, Tensor? grad_h_n, Tensor w_hh, Tensor h0, Tensor y, "
      "Tensor gates, Tensor? lengths, bool reverse) "
      "-> (Tensor grad_gx, Tensor grad_w_hh, Tensor grad_b_hh, Tensor grad_h0)");

  m.def(
      "rnn_tanh_forward(Tensor gx, Tensor w_hh, Tensor h0, Tensor? lengths, bool reverse) "
      "-> (Tensor y, Tensor h_n)");
  m.def(
      "rnn_tanh_backward(Tensor? grad_y, Tensor? grad_h_n, Tensor w_hh, Tensor h0, Tensor y, "
      "Tensor? lengths, bool reverse) -> (Tensor grad_gx, Tensor grad_w_hh, Tensor grad_h0)");
  m.def(
      "rnn_relu_forward(Tensor gx, Tensor w_hh, Tensor h0, Tensor? lengths, bool reverse) "
      "-> (Tensor y, Tensor h_n)");
  m.def(
      "rnn_relu_backward(Tensor? grad_y, Tensor? grad_h_n, Tensor w_hh, Tensor h0, Tensor y, "
      "Tensor? lengths, bool reverse) -> (Tensor grad_gx, Tensor grad_w_hh, Tensor grad_h0)");

  m.def(
      "lstm_backward_differentiable(Tensor? grad_y, Tensor? grad_h_n, Tensor? grad_c_n, "
      "Tensor? grad_gates, Tensor? grad_cs, Tensor w_hh, Tensor? w_hr, Tensor h0, Tensor c0, "
      "Tensor y, Tensor gates, Tensor cs, Tensor? lengths, bool reverse) "
      "-> (Tensor grad_gx, Tensor grad_w_hh, Tensor grad_w_hr, Tensor grad_h0, Tensor grad_c0)");
  m.def(
      "gru_backward_differentiable(Tensor? grad_y, Tensor? grad_h_n, Tensor? grad_gates, "
      "Tensor w_hh, Tensor h0, Tensor y, Tensor gates, Tensor? lengths, bool reverse) "
      "-> (Tensor grad_gx, Tensor grad_w_hh, Tensor grad_b_hh, Tensor grad_h0)");
  m.def(
      "rnn_tanh_backward_differentiable(Tensor? grad_y, Tensor? grad_h_n, Tensor w_hh, "
      "Tensor h0, Tensor y, Tensor? lengths, bool reverse) "
      "-> (Tensor grad_gx, Tensor grad_w_hh, Tensor grad_h0)");
  m.def(
      "rnn_relu_backward_differentiable(Tensor? grad_y, Tensor? grad_h_n, Tensor w_hh, "
      "Tensor h0, Tensor y, Tensor? lengths, bool reverse) "
      "-> (Tensor grad_gx, Tensor grad_w_hh, Tensor grad_h0)");

  // One step of a cell: linear + the recurrence op at T = 1, composed in C++ (cell_step.cpp)
  // so that a step is one call from Python. input [B, I], h/c [B, H], torch.nn's weights.
  m.def(
      "lstm_cell(Tensor input, Tensor h, Tensor c, Tensor w_ih, Tensor w_hh, Tensor? b_ih, "
      "Tensor? b_hh) -> (Tensor h_next, Tensor c_next)");
  m.def(
      "gru_cell(Tensor input, Tensor h, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh) "
      "-> Tensor");
  m.def(
      "rnn_tanh_cell(Tensor input, Tensor h, Tensor w_ih, Tensor w_hh, Tensor? b_ih, "
      "Tensor? b_hh) -> Tensor");
  m.def(
      "rnn_relu_cell(Tensor input, Tensor h, Tensor w_ih, Tensor w_hh, Tensor? b_ih, "
      "Tensor? b_hh) -> Tensor");
}
