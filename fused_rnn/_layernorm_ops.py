"""Fake kernels of the layer-normalised ops (``fused_rnn::layernorm_{lstm,gru}_{forward,backward}``,
schemas in ``csrc/layernorm_ops.cpp``) and the autograd of their Triton twins (``*_triton``).

The compiled ops have their autograd in C++ (``csrc/layernorm_autograd.cpp``); the Triton ops,
Python themselves, get the same here: the forward saves its inputs, ``y`` and the workspace, the
backward op consumes them. These cells have no second derivative: a backward that records a
graph, or gets gradients of the workspace, is refused.
"""

from __future__ import annotations

import torch

from ._ops import _NO_WORKSPACE, _empty_workspace
from .reference import _compute_dtype

NO_SECOND_DERIVATIVE = (
    "fused_rnn: the layer-normalised cells (LayerNormLSTM, LayerNormGRU) have no second "
    "derivative: a backward with create_graph=True through them is not supported"
)


# ---------------------------------------------------------------------------------------------
# Fake kernels: output shapes and dtypes, no data.
# ---------------------------------------------------------------------------------------------


def layernorm_lstm_forward_fake(xw, gamma_ih, bias, w_hh, gamma_hh, gamma_c, beta_c, h0, c0,
                                zoneout_h_mask, zoneout_c_mask, zoneout_h, zoneout_c, lengths,
                                reverse, eps, save_for_backward):
    T, B, H = xw.shape[0], xw.shape[1], xw.shape[2] // 4

    def workspace(*shape):
        return _empty_workspace(xw, save_for_backward, *shape)

    stats = workspace(T, B, 4).to(_compute_dtype(xw.dtype))  # the stats are in the compute dtype
    return (xw.new_empty(T, B, H), xw.new_empty(B, H), xw.new_empty(B, H),
            workspace(T, B, 4 * H), workspace(T, B, H), workspace(T, B, H), stats)


def layernorm_lstm_backward_fake(grad_y, grad_h_n, grad_c_n, xw, gamma_ih, bias, w_hh, gamma_hh,
                                 gamma_c, beta_c, h0, c0, zoneout_h_mask, zoneout_c_mask,
                                 zoneout_h, zoneout_c, y, p_hat, c_hat, cs, stats, lengths,
                                 reverse):
    return (torch.empty_like(xw), torch.empty_like(gamma_ih), torch.empty_like(gamma_ih),
            torch.empty_like(w_hh), torch.empty_like(gamma_hh), torch.empty_like(gamma_c),
            torch.empty_like(beta_c), torch.empty_like(h0), torch.empty_like(c0))


def layernorm_gru_forward_fake(xw, gamma_ih, b_ih, w_hh, gamma_hh, b_hh, h0, zoneout_h_mask,
                               zoneout_h, lengths, reverse, eps, save_for_backward):
    T, B, H = xw.shape[0], xw.shape[1], xw.shape[2] // 3

    def workspace(*shape):
        return _empty_workspace(xw, save_for_backward, *shape)

    stats = workspace(T, B, 3).to(_compute_dtype(xw.dtype))
    return xw.new_empty(T, B, H), xw.new_empty(B, H), workspace(T, B, 3 * H), stats


def layernorm_gru_backward_fake(grad_y, grad_h_n, xw, gamma_ih, b_ih, w_hh, gamma_hh, b_hh, h0,
                                zoneout_h_mask, zoneout_h, y, p_hat, stats, lengths, reverse):
    return (torch.empty_like(xw), torch.empty_like(gamma_ih), torch.empty_like(gamma_ih),
            torch.empty_like(w_hh), torch.empty_like(gamma_hh), torch.empty_like(gamma_hh),
            torch.empty_like(h0))


# ---------------------------------------------------------------------------------------------
# Autograd of the Triton ops, as csrc/layernorm_autograd.cpp's of the compiled ones.
# ---------------------------------------------------------------------------------------------


def _refuse_derivative(ctx, *grads):
    raise RuntimeError(NO_SECOND_DERIVATIVE)


def _check_first_derivative(ctx) -> None:
    if not ctx.saved_workspace:
        raise RuntimeError(_NO_WORKSPACE)
    if torch.is_grad_enabled():
        raise RuntimeError(NO_SECOND_DERIVATIVE)


def _lstm_autograd(backward_op):
    def setup_context(ctx, inputs, output):
        (xw, gamma_ih, bias, w_hh, gamma_hh, gamma_c, beta_c, h0, c0, mask_h, mask_c, zoneout_h,
         zoneout_c, lengths, reverse, eps, save) = inputs
        y, h_n, c_n, p_hat, c_hat, cs, stats = output
        ctx.save_for_backward(xw, gamma_ih, bias, w_hh, gamma_hh, gamma_c, beta_c, h0, c0, mask_h,
                              mask_c, y, p_hat, c_hat, cs, stats, lengths)
        ctx.zoneout = (zoneout_h, zoneout_c)
        ctx.reverse, ctx.saved_workspace = reverse, save
        ctx.has_bias = bias is not None
        ctx.mark_non_differentiable(p_hat, c_hat, cs, stats)
        ctx.set_materialize_grads(False)

    def backward(ctx, grad_y, grad_h_n, grad_c_n, *workspace_grads):
        _check_first_derivative(ctx)
        (xw, gamma_ih, bias, w_hh, gamma_hh, gamma_c, beta_c, h0, c0, mask_h, mask_c, y, p_hat,
         c_hat, cs, stats, lengths) = ctx.saved_tensors
        grads = list(backward_op(grad_y, grad_h_n, grad_c_n, xw, gamma_ih, bias, w_hh, gamma_hh,
                                 gamma_c, beta_c, h0, c0, mask_h, mask_c, *ctx.zoneout, y, p_hat,
                                 c_hat, cs, stats, lengths, ctx.reverse))
        if not ctx.has_bias:
            grads[2] = None
        return (*grads,) + (None,) * 8

    return setup_context, backward


def _gru_autograd(backward_op):
    def setup_context(ctx, inputs, output):
        (xw, gamma_ih, b_ih, w_hh, gamma_hh, b_hh, h0, mask_h, zoneout_h, lengths, reverse, eps,
         save) = inputs
        y, h_n, p_hat, stats = output
        ctx.save_for_backward(xw, gamma_ih, b_ih, w_hh, gamma_hh, b_hh, h0, mask_h, y, p_hat,
                              stats, lengths)
        ctx.zoneout_h, ctx.reverse, ctx.saved_workspace = zoneout_h, reverse, save
        ctx.has_bias = (b_ih is not None, b_hh is not None)
        ctx.mark_non_differentiable(p_hat, stats)
        ctx.set_materialize_grads(False)

    def backward(ctx, grad_y, grad_h_n, *workspace_grads):
        _check_first_derivative(ctx)
        (xw, gamma_ih, b_ih, w_hh, gamma_hh, b_hh, h0, mask_h, y, p_hat, stats,
         lengths) = ctx.saved_tensors
        grads = list(backward_op(grad_y, grad_h_n, xw, gamma_ih, b_ih, w_hh, gamma_hh, b_hh, h0,
                                 mask_h, ctx.zoneout_h, y, p_hat, stats, lengths, ctx.reverse))
        for index, has_bias in ((2, ctx.has_bias[0]), (5, ctx.has_bias[1])):
            if not has_bias:
                grads[index] = None
        return (*grads,) + (None,) * 6

    return setup_context, backward


#: cell -> (fake forward, fake backward, autograd factory of the Triton ops)
_FAMILY = {
    "layernorm_lstm": (layernorm_lstm_forward_fake, layernorm_lstm_backward_fake, _lstm_autograd),
    "layernorm_gru": (layernorm_gru_forward_fake, layernorm_gru_backward_fake, _gru_autograd),
}

CELLS = tuple(_FAMILY)


def register_compiled_fakes() -> None:
    for cell, (forward_fake, backward_fake, _) in _FAMILY.items():
        torch.library.register_fake(f"fused_rnn::{cell}_forward")(forward_fake)
        torch.library.register_fake(f"fused_rnn::{cell}_backward")(backward_fake)


def register_op_family(suffix: str) -> None:
    """The autograd of ``fused_rnn::{cell}_forward{suffix}`` (calling the backward op of the
    same suffix) for both cells, as :func:`fused_rnn._ops.register_op_family` for the plain
    cells."""
    for cell, (_, _, autograd) in _FAMILY.items():
        backward_op = getattr(torch.ops.fused_rnn, f"{cell}_backward{suffix}").default
        setup_context, backward = autograd(backward_op)
        torch.library.register_autograd(f"fused_rnn::{cell}_forward{suffix}", backward,
                                        setup_context=setup_context)
        torch.library.register_autograd(f"fused_rnn::{cell}_backward{suffix}",
                                        _refuse_derivative)


register_compiled_fakes()
