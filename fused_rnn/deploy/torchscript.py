"""The two ops that TorchScript records for fused_rnn's modules: ``fused_rnn::stack`` (a whole
LSTM/GRU/RNN layer stack, like ``aten::lstm``) and ``fused_rnn::step`` (one step of a cell, like
``aten::lstm_cell``).

A scripted module calls them from its compiled ``forward``; ``torch.jit.trace`` records them in
place of the per-layer ops (``fused_rnn/functional.py`` hands a traced call to
:func:`record_stack` / :func:`run_step`). Their kernel is the eager code itself,
:func:`fused_rnn.functional._stack` and the cell functions, run when the saved program runs: the
same checks, backend choice, autocast and autograd as the eager module, one code path for the
numbers. A traced graph therefore does not freeze decisions that the eager code takes per call
(whether to keep the workspace for a backward, which follows grad mode; the backend for the
device) and is the same graph in grad mode and under ``no_grad``.

The kernels are Python: a saved program runs where ``import fused_rnn`` has registered them.
They are registered as ``CompositeImplicitAutograd``: autograd records the ops inside, so a
scripted or traced model trains, and TorchScript's tracer records the op as one node.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch import Tensor

_LIBRARY = torch.library.Library("fused_rnn", "FRAGMENT")

_LIBRARY.define(
    "stack(str cell, Tensor input, Tensor? h0, Tensor? c0, Tensor[] params, bool has_biases, "
    "bool has_projections, bool bidirectional, float dropout, bool train, bool batch_first, "
    "Tensor? lengths, str backend) -> Tensor[]"
)
_LIBRARY.define(
    "step(str cell, Tensor input, Tensor h, Tensor? c, Tensor w_ih, Tensor w_hh, Tensor? b_ih, "
    "Tensor? b_hh, str backend) -> Tensor[]"
)


def _layer_weights(params, has_biases: bool, has_projections: bool):
    """torch.nn's flat parameter list (``_flat_weights``: w_ih, w_hh[, b_ih, b_hh][, w_hr] per
    layer and direction) -> functional's (w_ih, w_hh, b_ih, b_hh, w_hr) tuples."""
    per_layer = 2 + 2 * has_biases + has_projections
    if len(params) == 0 or len(params) % per_layer != 0:
        raise ValueError(
            f"fused_rnn::stack: expected {per_layer} parameters per layer and direction, "
            f"got {len(params)} in all"
        )
    weights = []
    for start in range(0, len(params), per_layer):
        group = params[start : start + per_layer]
        b_ih, b_hh = (group[2], group[3]) if has_biases else (None, None)
        weights.append((group[0], group[1], b_ih, b_hh, group[-1] if has_projections else None))
    return weights


def _stack_kernel(cell, input, h0, c0, params, has_biases, has_projections, bidirectional,
                  dropout, train, batch_first, lengths, backend):
    from .. import functional  # functional imports this package: import at call time

    output, h_n, c_n = functional._stack(
        cell, input, h0, c0, _layer_weights(params, has_biases, has_projections),
        bidirectional=bidirectional, dropout=dropout, training=train, batch_first=batch_first,
        lengths=lengths, backend=backend,
    )
    return [output, h_n] if c_n is None else [output, h_n, c_n]


def _step_kernel(cell, input, h, c, w_ih, w_hh, b_ih, b_hh, backend):
    from .. import functional

    h_next, c_next = functional.cell_step(
        cell, input, h, c, w_ih, w_hh, b_ih, b_hh, backend=backend
    )
    return [h_next] if c_next is None else [h_next, c_next]


_LIBRARY.impl("stack", _stack_kernel, "CompositeImplicitAutograd")
_LIBRARY.impl("step", _step_kernel, "CompositeImplicitAutograd")


# ---------------------------------------------------------------------------------------------
# Callers. run_stack and run_step are TorchScript: the scripted modules call them.
# ---------------------------------------------------------------------------------------------


def run_stack(
    cell: str,
    input: Tensor,
    h0: Optional[Tensor],
    c0: Optional[Tensor],
    params: List[Tensor],
    has_biases: bool,
    has_projections: bool,
    bidirectional: bool,
    dropout: float,
    train: bool,
    batch_first: bool,
    lengths: Optional[Tensor],
    backend: str,
) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
    """``fused_rnn::stack``: (output, h_n, c_n), c_n None but for the LSTM."""
    outputs = torch.ops.fused_rnn.stack(
        cell, input, h0, c0, params, has_biases, has_projections, bidirectional, dropout, train,
        batch_first, lengths, backend,
    )
    c_n: Optional[Tensor] = None
    if cell == "lstm":
        c_n = outputs[2]
    return outputs[0], outputs[1], c_n


def run_step(
    cell: str,
    input: Tensor,
    h: Tensor,
    c: Optional[Tensor],
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Optional[Tensor],
    b_hh: Optional[Tensor],
    backend: str,
) -> Tuple[Tensor, Optional[Tensor]]:
    """``fused_rnn::step``: (h', c'), c' None but for the LSTM."""
    outputs = torch.ops.fused_rnn.step(cell, input, h, c, w_ih, w_hh, b_ih, b_hh, backend)
    c_next: Optional[Tensor] = None
    if cell == "lstm":
        c_next = outputs[1]
    return outputs[0], c_next


def record_stack(cell, input, h0, c0, weights, *, bidirectional, dropout, training, batch_first,
                 lengths, backend):
    """A traced :func:`fused_rnn.functional._stack` call as one ``fused_rnn::stack`` node."""
    params = [tensor for layer in weights for tensor in layer if tensor is not None]
    has_biases, has_projections = weights[0][2] is not None, weights[0][4] is not None
    if lengths is not None and not isinstance(lengths, Tensor):
        lengths = torch.as_tensor(lengths, dtype=torch.int64)
    return run_stack(
        cell, input, h0, c0, params, has_biases, has_projections, bidirectional, dropout, training,
        batch_first, lengths, backend,
    )
