"""How fused_rnn's layers and cells appear in programs exported for deployment.

* ``torch.export``, AOTInductor and ``torch.compile`` record fused_rnn's own ops (the input
  projection and the recurrence ops, with their fake kernels): nothing here is involved.
* TorchScript: a scripted module calls ``fused_rnn::stack`` / ``fused_rnn::step`` from its
  compiled ``forward``, and ``torch.jit.trace`` records the same two ops (:mod:`.torchscript`).
* ONNX: under either exporter the layers and cells become ONNX's ``LSTM``, ``GRU`` and ``RNN``
  operators (:mod:`.onnx`).

:func:`fused_rnn.functional._stack` and the cell functions (``lstm_cell``, ``gru_cell``,
``rnn_cell``) ask :func:`recording` first, and hand a recorded call to :func:`stack` or
:func:`step`.
"""

from __future__ import annotations

import torch

from . import onnx, torchscript

onnx.register_torchscript_symbolics()


# Dynamo answers some questions about the tracing state by rule rather than by asking: False
# to torch.onnx.is_in_onnx_export() (and torch 2.11's Dynamo True to is_exporting(), under
# torch.compile too). assume_constant_result makes Dynamo call these two for real, outside its
# trace: the dynamo ONNX exporter traces with Dynamo (torch.export strict=True) when its first
# capture (strict=False) fails, and must meet the same refusals there.
@torch.compiler.assume_constant_result
def _exporting_to_onnx() -> bool:
    return torch.onnx.is_in_onnx_export()


@torch.compiler.assume_constant_result
def _exporting() -> bool:
    return torch.compiler.is_exporting()


def recording() -> bool:
    """Whether this call is being recorded by TorchScript's tracer or an ONNX exporter. Asked on
    every call, so the cheap checks come first: every ONNX export records by tracing, with
    TorchScript's tracer or with torch.export."""
    if torch._C._get_tracing_state() is not None:  # torch.jit.is_tracing(), as Module.__call__ asks
        return True
    return torch.compiler.is_compiling() and _exporting_to_onnx()


def stack(cell, input, h0, c0, weights, **options):
    """A recorded layer stack: ONNX operators, or one ``fused_rnn::stack`` node."""
    if _exporting_to_onnx():
        return onnx.stack(cell, input, h0, c0, weights, **options)
    return torchscript.record_stack(cell, input, h0, c0, weights, **options)


def step(cell, input, h, c, w_ih, w_hh, b_ih, b_hh, backend):
    """A recorded cell step: an ONNX operator, or one ``fused_rnn::step`` node."""
    if _exporting_to_onnx():
        return onnx.step(cell, input, h, c, w_ih, w_hh, b_ih, b_hh, backend)
    return torchscript.run_step(cell, input, h, c, w_ih, w_hh, b_ih, b_hh, backend)


def refuse_packed_sequence() -> None:
    """A PackedSequence's batch sizes are data: torch.export cannot trace the padding and packing
    around the layer, nor ONNX's operators take them. Refused with a way out, instead of an error
    from deep inside torch.export or the ONNX exporter."""
    if _exporting() or (recording() and _exporting_to_onnx()):
        raise RuntimeError(
            "fused_rnn: a PackedSequence input cannot be exported (torch.export, ONNX): pass the "
            "padded batch and its lengths instead, layer(padded, hx, lengths)"
        )
