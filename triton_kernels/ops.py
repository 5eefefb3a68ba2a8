"""Registration of the Triton ops ``fused_rnn::{cell}_{forward,backward}_triton``.

Each op has exactly the schema of its C++ counterpart (csrc/ops.cpp; the schema string is read
from the registered C++ op, so the two cannot drift apart), is a ``torch.library.triton_op``
whose body validates its arguments like csrc/op_common.h and launches the kernels through
``torch.library.wrap_triton`` (so torch.compile sees the kernels), and gets the same autograd as
the C++ ops (csrc/autograd.cpp) from ``fused_rnn._ops.register_op_family``. ``triton_op`` registers the body itself
as the fake kernel (under fake tensors the launches are no-ops), so no separate fakes.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.library import triton_op

from fused_rnn import _ops

from . import gru, lstm, rnn

SUFFIX = "_triton"


def _schema_of(name: str) -> str:
    """The C++ op's schema without its name: "(Tensor gx, ...) -> (Tensor y, ...)"."""
    schema = str(getattr(torch.ops.fused_rnn, name).default._schema)
    return schema[schema.index("("):]


@triton_op("fused_rnn::lstm_forward" + SUFFIX, mutates_args=(), schema=_schema_of("lstm_forward"))
def lstm_forward_triton(
    gx: Tensor, w_hh: Tensor, w_hr: Tensor | None, h0: Tensor, c0: Tensor,
    lengths: Tensor | None, reverse: bool, save_for_backward: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    return lstm.lstm_forward(gx, w_hh, w_hr, h0, c0, lengths, reverse, save_for_backward)


@triton_op("fused_rnn::lstm_backward" + SUFFIX, mutates_args=(), schema=_schema_of("lstm_backward"))
def lstm_backward_triton(
    grad_y: Tensor | None, grad_h_n: Tensor | None, grad_c_n: Tensor | None, w_hh: Tensor,
    w_hr: Tensor | None, h0: Tensor, c0: Tensor, y: Tensor, gates: Tensor, cs: Tensor,
    lengths: Tensor | None, reverse: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    return lstm.lstm_backward(grad_y, grad_h_n, grad_c_n, w_hh, w_hr, h0, c0, y, gates, cs,
                              lengths, reverse)


@triton_op("fused_rnn::gru_forward" + SUFFIX, mutates_args=(), schema=_schema_of("gru_forward"))
def gru_forward_triton(
    gx: Tensor, w_hh: Tensor, b_hh: Tensor | None, h0: Tensor, lengths: Tensor | None,
    reverse: bool, save_for_backward: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    return gru.gru_forward(gx, w_hh, b_hh, h0, lengths, reverse, save_for_backward)


@triton_op("fused_rnn::gru_backward" + SUFFIX, mutates_args=(), schema=_schema_of("gru_backward"))
def gru_backward_triton(
    grad_y: Tensor | None, grad_h_n: Tensor | None, w_hh: Tensor, h0: Tensor, y: Tensor,
    gates: Tensor, lengths: Tensor | None, reverse: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return gru.gru_backward(grad_y, grad_h_n, w_hh, h0, y, gates, lengths, reverse)


@triton_op("fused_rnn::rnn_tanh_forward" + SUFFIX, mutates_args=(),
           schema=_schema_of("rnn_tanh_forward"))
def rnn_tanh_forward_triton(
    gx: Tensor, w_hh: Tensor, h0: Tensor, lengths: Tensor | None, reverse: bool,
) -> tuple[Tensor, Tensor]:
    return rnn.rnn_forward("tanh", gx, w_hh, h0, lengths, reverse)


@triton_op("fused_rnn::rnn_tanh_backward" + SUFFIX, mutates_args=(),
           schema=_schema_of("rnn_tanh_backward"))
def rnn_tanh_backward_triton(
    grad_y: Tensor | None, grad_h_n: Tensor | None, w_hh: Tensor, h0: Tensor, y: Tensor,
    lengths: Tensor | None, reverse: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    return rnn.rnn_backward("tanh", grad_y, grad_h_n, w_hh, h0, y, lengths, reverse)


@triton_op("fused_rnn::rnn_relu_forward" + SUFFIX, mutates_args=(),
           schema=_schema_of("rnn_relu_forward"))
def rnn_relu_forward_triton(
    gx: Tensor, w_hh: Tensor, h0: Tensor, lengths: Tensor | None, reverse: bool,
) -> tuple[Tensor, Tensor]:
    return rnn.rnn_forward("relu", gx, w_hh, h0, lengths, reverse)


@triton_op("fused_rnn::rnn_relu_backward" + SUFFIX, mutates_args=(),
           schema=_schema_of("rnn_relu_backward"))
def rnn_relu_backward_triton(
    grad_y: Tensor | None, grad_h_n: Tensor | None, w_hh: Tensor, h0: Tensor, y: Tensor,
    lengths: Tensor | None, reverse: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    return rnn.rnn_backward("relu", grad_y, grad_h_n, w_hh, h0, y, lengths, reverse)


# Autograd of every forward op calls its backward op, as for the C++ ops.
_ops.register_op_family(SUFFIX)
