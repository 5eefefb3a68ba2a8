"""Loads ``fused_rnn._C`` and registers the fake kernels of its ops, the differentiable
backward ops, and the autograd of the Triton ops.

The schemas live in ``csrc/ops.cpp``. Every forward op has a backward op; autograd of the
forward calls the backward op, whose kernels are not differentiable. A backward that records a
graph (``create_graph=True``, for a second derivative) or gets gradients of the workspace calls
``fused_rnn::{cell}_backward_differentiable`` instead: :mod:`fused_rnn.reference_backward`,
registered here as their CompositeImplicitAutograd kernel. The compiled ops (CPU and CUDA) have
their autograd in C++ (``csrc/autograd.cpp``: a Python autograd function would run on every
call, ~8 us per op even without grad). The Triton ops (``fused_rnn::*_triton``), Python
themselves, have the same schemas and get the same autograd here through
:func:`register_op_family` (``torch.library.triton_op`` derives their fake kernels from the
ops' Python bodies).
"""

from __future__ import annotations

import os

import torch

from . import reference_backward

_REBUILD = "pip install --no-build-isolation -e ."


def _load_extension():
    try:
        from . import _C
    except ImportError as error:
        raise ImportError(
            f"fused_rnn._C could not be loaded ({error}). It is built from csrc/ when the package "
            f"is installed; in a source checkout rebuild it with `{_REBUILD}` (with the torch "
            f"you run, {torch.__version__})."
        ) from error
    package_dir = os.path.dirname(os.path.abspath(__file__))
    csrc = os.path.join(os.path.dirname(package_dir), "csrc")
    in_checkout = os.path.isfile(os.path.join(csrc, "ops.cpp"))
    if in_checkout and os.environ.get("FUSED_RNN_SKIP_SOURCE_CHECK") != "1":
        from ._source_hash import source_hash

        if source_hash(csrc) != _C.source_hash:
            raise ImportError(
                f"fused_rnn._C is stale: it was built from other sources than {csrc}. Rebuild it "
                f"with `{_REBUILD}` (or set FUSED_RNN_SKIP_SOURCE_CHECK=1 to load it anyway)."
            )
    return _C


_C = _load_extension()

#: Whether this build of ``_C`` has the CUDA kernels.
WITH_CUDA: bool = bool(_C.with_cuda)


def _empty_workspace(gx: torch.Tensor, save: bool, *shape: int) -> torch.Tensor:
    return gx.new_empty(shape) if save else gx.new_empty(0)


# ---------------------------------------------------------------------------------------------
# Fake kernels: output shapes and dtypes, no data (torch.compile, meta tensors, opcheck).
# ---------------------------------------------------------------------------------------------


def linear_fake(input, weight, bias):
    return input.new_empty((*input.shape[:-1], weight.shape[0]))


def linear_backward_fake(grad_output, input, weight, output_mask):
    def grad(wanted, shape):
        return input.new_empty(shape if wanted else (0,))

    return (
        grad(output_mask[0], input.shape),
        grad(output_mask[1], weight.shape),
        grad(output_mask[2], (weight.shape[0],)),
    )


def lstm_forward_fake(gx, w_hh, w_hr, h0, c0, lengths, reverse, save_for_backward):
    T, B, H = gx.shape[0], gx.shape[1], gx.shape[2] // 4
    P = w_hh.shape[1]
    return (
        gx.new_empty(T, B, P),
        gx.new_empty(B, P),
        gx.new_empty(B, H),
        _empty_workspace(gx, save_for_backward, T, B, 4 * H),
        _empty_workspace(gx, save_for_backward, T, B, H),
    )


def lstm_backward_fake(
    grad_y, grad_h_n, grad_c_n, w_hh, w_hr, h0, c0, y, gates, cs, lengths, reverse
):
    T, B = y.shape[0], y.shape[1]
    G4H, P = w_hh.shape
    return (
        y.new_empty(T, B, G4H),
        torch.empty_like(w_hh),
        torch.empty_like(w_hr) if w_hr is not None else y.new_empty(0),
        torch.empty_like(h0),
        torch.empty_like(c0),
    )


def gru_forward_fake(gx, w_hh, b_hh, h0, lengths, reverse, save_for_backward):
    T, B, H = gx.shape[0], gx.shape[1], gx.shape[2] // 3
    return (
        gx.new_empty(T, B, H),
        gx.new_empty(B, H),
        _empty_workspace(gx, save_for_backward, T, B, 4 * H),
    )


def gru_backward_fake(grad_y, grad_h_n, w_hh, h0, y, gates, lengths, reverse):
    T, B = y.shape[0], y.shape[1]
    return (
        y.new_empty(T, B, w_hh.shape[0]),
        torch.empty_like(w_hh),
        y.new_empty(w_hh.shape[0]),
        torch.empty_like(h0),
    )


def rnn_forward_fake(gx, w_hh, h0, lengths, reverse):
    T, B, H = gx.shape
    return gx.new_empty(T, B, H), gx.new_empty(B, H)


def rnn_backward_fake(grad_y, grad_h_n, w_hh, h0, y, lengths, reverse):
    return torch.empty_like(y), torch.empty_like(w_hh), torch.empty_like(h0)


# ---------------------------------------------------------------------------------------------
# Autograd of the Triton ops, as csrc/autograd.cpp's of the compiled ops: the forward op saves
# its inputs, y and the workspace; the backward op consumes them. Gradients that do not reach an
# output arrive as None and are passed to the op as None (zero). A backward that records a graph,
# or that gets gradients of the workspace (on the way to a second derivative), runs
# fused_rnn.reference_backward instead, whose ops are differentiable.
# ---------------------------------------------------------------------------------------------

_NO_WORKSPACE = (
    "fused_rnn: backward through a recurrence whose forward ran with save_for_backward=False "
    "(call the layer with grad mode on and an input or parameter that requires grad)"
)


def _differentiable_backward(*workspace_grads) -> bool:
    """Whether a backward runs fused_rnn.reference_backward: it records a graph, or gradients
    reach the workspace."""
    return torch.is_grad_enabled() or any(g is not None for g in workspace_grads)


def _lstm_autograd(backward_op):
    def setup_context(ctx, inputs, output):
        gx, w_hh, w_hr, h0, c0, lengths, reverse, save = inputs
        y, h_n, c_n, gates, cs = output
        ctx.save_for_backward(w_hh, w_hr, h0, c0, y, gates, cs, lengths)
        ctx.reverse, ctx.saved_workspace = reverse, save
        ctx.set_materialize_grads(False)

    def backward(ctx, grad_y, grad_h_n, grad_c_n, grad_gates, grad_cs):
        if not ctx.saved_workspace:
            raise RuntimeError(_NO_WORKSPACE)
        w_hh, w_hr, h0, c0, y, gates, cs, lengths = ctx.saved_tensors
        if _differentiable_backward(grad_gates, grad_cs):
            grads = reference_backward.lstm(grad_y, grad_h_n, grad_c_n, grad_gates, grad_cs, w_hh,
                                            w_hr, h0, c0, y, gates, cs, lengths, ctx.reverse)
        else:
            grads = backward_op(grad_y, grad_h_n, grad_c_n, w_hh, w_hr, h0, c0, y, gates, cs,
                                lengths, ctx.reverse)
        grad_gx, grad_w_hh, grad_w_hr, grad_h0, grad_c0 = grads
        grad_w_hr = grad_w_hr if w_hr is not None else None
        return grad_gx, grad_w_hh, grad_w_hr, grad_h0, grad_c0, None, None, None

    return setup_context, backward


def _gru_autograd(backward_op):
    def setup_context(ctx, inputs, output):
        gx, w_hh, b_hh, h0, lengths, reverse, save = inputs
        y, h_n, gates = output
        ctx.save_for_backward(w_hh, h0, y, gates, lengths)
        ctx.reverse, ctx.saved_workspace, ctx.has_bias = reverse, save, b_hh is not None
        ctx.set_materialize_grads(False)

    def backward(ctx, grad_y, grad_h_n, grad_gates):
        if not ctx.saved_workspace:
            raise RuntimeError(_NO_WORKSPACE)
        w_hh, h0, y, gates, lengths = ctx.saved_tensors
        if _differentiable_backward(grad_gates):
            grads = reference_backward.gru(grad_y, grad_h_n, grad_gates, w_hh, h0, y, gates,
                                           lengths, ctx.reverse)
        else:
            grads = backward_op(grad_y, grad_h_n, w_hh, h0, y, gates, lengths, ctx.reverse)
        grad_gx, grad_w_hh, grad_b_hh, grad_h0 = grads
        grad_b_hh = grad_b_hh if ctx.has_bias else None
        return grad_gx, grad_w_hh, grad_b_hh, grad_h0, None, None, None

    return setup_context, backward


def _rnn_autograd(backward_op, differentiable_backward):
    def setup_context(ctx, inputs, output):
        gx, w_hh, h0, lengths, reverse = inputs
        y, h_n = output
        ctx.save_for_backward(w_hh, h0, y, lengths)
        ctx.reverse = reverse
        ctx.set_materialize_grads(False)

    def backward(ctx, grad_y, grad_h_n):
        w_hh, h0, y, lengths = ctx.saved_tensors
        run = differentiable_backward if _differentiable_backward() else backward_op
        grad_gx, grad_w_hh, grad_h0 = run(grad_y, grad_h_n, w_hh, h0, y, lengths, ctx.reverse)
        return grad_gx, grad_w_hh, grad_h0, None, None

    return setup_context, backward


def _rnn_tanh_autograd(backward_op):
    return _rnn_autograd(backward_op, reference_backward.rnn_tanh)


def _rnn_relu_autograd(backward_op):
    return _rnn_autograd(backward_op, reference_backward.rnn_relu)


#: cell -> (fake forward, fake backward, autograd factory of the Triton ops)
_FAMILY = {
    "lstm": (lstm_forward_fake, lstm_backward_fake, _lstm_autograd),
    "gru": (gru_forward_fake, gru_backward_fake, _gru_autograd),
    "rnn_tanh": (rnn_forward_fake, rnn_backward_fake, _rnn_tanh_autograd),
    "rnn_relu": (rnn_forward_fake, rnn_backward_fake, _rnn_relu_autograd),
}

CELLS = tuple(_FAMILY)


def register_compiled_fakes() -> None:
    """Fake kernels of the compiled ops (their autograd is registered by ``_C``)."""
    torch.library.register_fake("fused_rnn::linear")(linear_fake)
    torch.library.register_fake("fused_rnn::linear_backward")(linear_backward_fake)
    for cell, (forward_fake, backward_fake, _) in _FAMILY.items():
        torch.library.register_fake(f"fused_rnn::{cell}_forward")(forward_fake)
        torch.library.register_fake(f"fused_rnn::{cell}_backward")(backward_fake)


def register_differentiable_backwards() -> None:
    """fused_rnn.reference_backward as the kernels of ``fused_rnn::{cell}_backward_differentiable``
    (CompositeImplicitAutograd: made of differentiable ops, on any device, traced through)."""
    for cell in _FAMILY:
        torch.library.impl(f"fused_rnn::{cell}_backward_differentiable",
                           "CompositeImplicitAutograd")(getattr(reference_backward, cell))


def _refuse_double_backward(ctx, *grads):
    raise RuntimeError(
        "fused_rnn: a backward op is not differentiable: differentiate the forward op instead "
        "(its backward with create_graph=True is differentiable)"
    )


def register_op_family(suffix: str) -> None:
    """Registers the autograd of ``fused_rnn::{cell}_forward{suffix}`` (calling
    ``fused_rnn::{cell}_backward{suffix}``) for every cell: for Python ops such as the Triton
    ones, which bring their own fake kernels. The backward ops get one that refuses to be
    differentiated when called directly (without any, torch only warns and computes it wrong)."""
    for cell, (_, _, autograd) in _FAMILY.items():
        backward_name = f"fused_rnn::{cell}_backward{suffix}"
        backward_op = getattr(torch.ops.fused_rnn, f"{cell}_backward{suffix}").default
        setup_context, backward = autograd(backward_op)
        torch.library.register_autograd(
            f"fused_rnn::{cell}_forward{suffix}", backward, setup_context=setup_context
        )
        torch.library.register_autograd(backward_name, _refuse_double_backward)


register_compiled_fakes()
register_differentiable_backwards()
