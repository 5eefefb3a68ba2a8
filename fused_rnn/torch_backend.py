"""``backend="torch"``: torch.nn's own kernels (cuDNN on a GPU, oneDNN and ATen on the CPU)
behind fused_rnn's layers, cells and functional API.

A layer stack is the call ``torch.nn.LSTM/GRU/RNN.forward`` makes: ``torch._VF.{cell}`` with
the flat weights of all layers, dropout between layers drawn by torch (the masks torch.nn
draws), variable lengths as a PackedSequence, packed and unpacked here with the states in the
packed order. A cell step is ``torch._VF.{cell}_cell``, as torch.nn's cells. fused_rnn's layer
code has already checked the arguments and applied autocast (the whole call in the autocast
dtype), so these run with autocast off.

torch.compile cannot trace torch's RNN layer kernels (Dynamo refuses torch.nn's layers, and
their ATen ops fail under its fake tensors): the layer stack here runs outside compiled graphs,
a graph break, as torch.nn's own layers do. ``backend="auto"`` never picks this backend while
compiling (see fused_rnn/dispatch.py).
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor, _VF
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

_LAYER_OPS = {"lstm": _VF.lstm, "gru": _VF.gru, "rnn_tanh": _VF.rnn_tanh, "rnn_relu": _VF.rnn_relu}
_CELL_OPS = {
    "lstm": _VF.lstm_cell,
    "gru": _VF.gru_cell,
    "rnn_tanh": _VF.rnn_tanh_cell,
    "rnn_relu": _VF.rnn_relu_cell,
}


def _flat(weights: Sequence[Sequence[Optional[Tensor]]]) -> list[Tensor]:
    """torch.nn's ``_flat_weights`` order: per layer and direction w_ih, w_hh, b_ih, b_hh,
    w_hr, leaving out what the layer does not have."""
    return [w for layer in weights for w in layer if w is not None]


@torch.compiler.disable
def stack(
    cell: str,
    x: Tensor,
    h0: Tensor,
    c0: Optional[Tensor],
    weights: Sequence[Sequence[Optional[Tensor]]],
    *,
    bidirectional: bool,
    dropout: float,
    training: bool,
    lengths: Optional[Tensor],
) -> tuple[Tensor, Tensor, Optional[Tensor]]:
    """x [T, B, I] (time-major), h0 [L*D, B, P], c0 [L*D, B, H] (LSTM) -> output [T, B, D*P],
    h_n, c_n (None but for the LSTM). lengths: [B] int64 in [0, T], or None."""
    D = 2 if bidirectional else 1
    options = dict(
        flat=_flat(weights),
        has_biases=weights[0][2] is not None,
        num_layers=len(weights) // D,
        dropout=float(dropout),
        training=training,
        bidirectional=bidirectional,
    )
    with torch.autocast(x.device.type, enabled=False):
        if lengths is None:
            hx = (h0, c0) if cell == "lstm" else h0
            result = _LAYER_OPS[cell](
                x, hx, options["flat"], options["has_biases"], options["num_layers"],
                options["dropout"], training, bidirectional, False,
            )
            output, hidden = result[0], result[1:]
            return output, hidden[0], hidden[1] if cell == "lstm" else None
        return _packed(cell, x, h0, c0, lengths, **options)


def _packed(cell, x, h0, c0, lengths, *, flat, has_biases, num_layers, dropout, training,
            bidirectional):
    """Variable lengths through torch's packed-sequence kernels. torch.nn cannot pack a
    sequence of length 0, which fused_rnn allows (zeros out, the initial state kept): those
    rows are left out of the call and put back around it."""
    T, B = x.shape[0], x.shape[1]
    lengths = lengths.to("cpu")
    rows = (lengths > 0).nonzero().squeeze(1)
    width = h0.shape[2] * (2 if bidirectional else 1)
    if rows.numel() == 0:
        return x.new_zeros(T, B, width), h0.clone(), c0.clone() if c0 is not None else None
    everything = rows.numel() == B
    if not everything:
        on_device = rows.to(x.device)
        x, lengths = x.index_select(1, on_device), lengths.index_select(0, rows)
        h0_rows = h0.index_select(1, on_device)
        c0_rows = c0.index_select(1, on_device) if c0 is not None else None
    else:
        h0_rows, c0_rows = h0, c0
    packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
    order = packed.sorted_indices
    hx = h0_rows.index_select(1, order)
    if cell == "lstm":
        hx = (hx, c0_rows.index_select(1, order))
    result = _LAYER_OPS[cell](packed.data, packed.batch_sizes, hx, flat, has_biases, num_layers,
                              dropout, training, bidirectional)
    restore = packed.unsorted_indices
    output, _ = pad_packed_sequence(
        PackedSequence(result[0], packed.batch_sizes, order, restore), total_length=T)
    h_n = result[1].index_select(1, restore)
    c_n = result[2].index_select(1, restore) if cell == "lstm" else None
    if everything:
        return output, h_n, c_n
    return (
        x.new_zeros(T, B, width).index_copy(1, on_device, output),
        h0.index_copy(1, on_device, h_n),
        c0.index_copy(1, on_device, c_n) if c_n is not None else None,
    )


def step(cell, input, h, c, w_ih, w_hh, b_ih, b_hh):
    """One step of a cell, as torch.nn's cells: (h', c'), c' None but for the LSTM."""
    with torch.autocast(input.device.type, enabled=False):
        if cell == "lstm":
            return _CELL_OPS[cell](input, (h, c), w_ih, w_hh, b_ih, b_hh)
        return _CELL_OPS[cell](input, h, w_ih, w_hh, b_ih, b_hh), None
