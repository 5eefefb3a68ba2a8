"""Registration of the Triton ops of the layer-normalised cells,
``fused_rnn::layernorm_{lstm,gru}_{forward,backward}_triton``.

As in ops.py: each op has exactly the schema of its C++ counterpart (csrc/layernorm_ops.cpp, read
from the registered op), is a ``torch.library.triton_op`` (its body is its own fake kernel), and
gets the autograd of the compiled ops (csrc/layernorm_autograd.cpp) from
``fused_rnn._layernorm_ops.register_op_family``.
"""

from __future__ import annotations

from torch import Tensor
from torch.library import triton_op

from fused_rnn import _layernorm_ops

from . import layernorm_gru, layernorm_lstm
from .ops import SUFFIX, _schema_of


@triton_op("fused_rnn::layernorm_lstm_forward" + SUFFIX, mutates_args=(),
           schema=_schema_of("layernorm_lstm_forward"))
def layernorm_lstm_forward_triton(
    xw: Tensor, gamma_ih: Tensor, bias: Tensor | None, w_hh: Tensor, gamma_hh: Tensor,
    gamma_c: Tensor, beta_c: Tensor, h0: Tensor, c0: Tensor, zoneout_h_mask: Tensor | None,
    zoneout_c_mask: Tensor | None, zoneout_h: float, zoneout_c: float, lengths: Tensor | None,
    reverse: bool, eps: float, save_for_backward: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    return layernorm_lstm.layernorm_lstm_forward(
        xw, gamma_ih, bias, w_hh, gamma_hh, gamma_c, beta_c, h0, c0, zoneout_h_mask,
        zoneout_c_mask, zoneout_h, zoneout_c, lengths, reverse, eps, save_for_backward)


@triton_op("fused_rnn::layernorm_lstm_backward" + SUFFIX, mutates_args=(),
           schema=_schema_of("layernorm_lstm_backward"))
def layernorm_lstm_backward_triton(
    grad_y: Tensor | None, grad_h_n: Tensor | None, grad_c_n: Tensor | None, xw: Tensor,
    gamma_ih: Tensor, bias: Tensor | None, w_hh: Tensor, gamma_hh: Tensor, gamma_c: Tensor,
    beta_c: Tensor, h0: Tensor, c0: Tensor, zoneout_h_mask: Tensor | None,
    zoneout_c_mask: Tensor | None, zoneout_h: float, zoneout_c: float, y: Tensor, p_hat: Tensor,
    c_hat: Tensor, cs: Tensor, stats: Tensor, lengths: Tensor | None, reverse: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    return layernorm_lstm.layernorm_lstm_backward(
        grad_y, grad_h_n, grad_c_n, xw, gamma_ih, bias, w_hh, gamma_hh, gamma_c, beta_c, h0, c0,
        zoneout_h_mask, zoneout_c_mask, zoneout_h, zoneout_c, y, p_hat, c_hat, cs, stats,
        lengths, reverse)


@triton_op("fused_rnn::layernorm_gru_forward" + SUFFIX, mutates_args=(),
           schema=_schema_of("layernorm_gru_forward"))
def layernorm_gru_forward_triton(
    xw: Tensor, gamma_ih: Tensor, b_ih: Tensor | None, w_hh: Tensor, gamma_hh: Tensor,
    b_hh: Tensor | None, h0: Tensor, zoneout_h_mask: Tensor | None, zoneout_h: float,
    lengths: Tensor | None, reverse: bool, eps: float, save_for_backward: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return layernorm_gru.layernorm_gru_forward(xw, gamma_ih, b_ih, w_hh, gamma_hh, b_hh, h0,
                                               zoneout_h_mask, zoneout_h, lengths, reverse, eps,
                                               save_for_backward)


@triton_op("fused_rnn::layernorm_gru_backward" + SUFFIX, mutates_args=(),
           schema=_schema_of("layernorm_gru_backward"))
def layernorm_gru_backward_triton(
    grad_y: Tensor | None, grad_h_n: Tensor | None, xw: Tensor, gamma_ih: Tensor,
    b_ih: Tensor | None, w_hh: Tensor, gamma_hh: Tensor, b_hh: Tensor | None, h0: Tensor,
    zoneout_h_mask: Tensor | None, zoneout_h: float, y: Tensor, p_hat: Tensor, stats: Tensor,
    lengths: Tensor | None, reverse: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    return layernorm_gru.layernorm_gru_backward(grad_y, grad_h_n, xw, gamma_ih, b_ih, w_hh,
                                                gamma_hh, b_hh, h0, zoneout_h_mask, zoneout_h, y,
                                                p_hat, stats, lengths, reverse)


# Autograd of both forward ops calls their backward ops, as for the compiled ops.
_layernorm_ops.register_op_family(SUFFIX)
