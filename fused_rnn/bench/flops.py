"""FLOPs of a layer call, to turn times into TFLOP/s.

Counted: the matrix products of the whole layer, as a dense GEMM counts them (2 FLOPs per
multiply-add). Per layer, per direction, per time step, per sequence, with G gates (LSTM 4,
GRU 3, Elman RNN 1) of width H, and I_l the layer's input width (the input size for the first
layer, ``num_directions * H`` above it):

* input projection ``x W_ih^T``:     2 * I_l * G * H
* recurrence       ``h W_hh^T``:     2 * H * G * H

summed over ``seq_len * batch * num_layers * num_directions``. The element-wise gate maths
(sigmoid, tanh, products; about 10 FLOPs per gate element, under 2% of the total at H >= 256)
is not counted, as GEMM-based FLOP counts usually do not.

``fwd+bwd`` counts 3 x the forward: the backward does two products for each forward one
(the gradient w.r.t. the product's input and w.r.t. its weight).
"""

from __future__ import annotations

from .cases import Case

GATES = {"lstm": 4, "gru": 3, "rnn_tanh": 1, "rnn_relu": 1, "ln_lstm": 4, "ln_gru": 3}


def forward_flops(case: Case) -> int:
    gates_width = GATES[case.cell] * case.hidden_size
    total = 0
    for layer in range(case.num_layers):
        input_width = case.input_size if layer == 0 else case.num_directions * case.hidden_size
        per_step = 2 * gates_width * (input_width + case.hidden_size)
        total += per_step * case.num_directions
    return total * case.seq_len * case.batch


def flops(case: Case) -> int:
    """FLOPs of one call in the case's mode."""
    return forward_flops(case) * (3 if case.mode == "fwd+bwd" else 1)


def tflops(case: Case, milliseconds: float) -> float:
    return flops(case) / (milliseconds * 1e-3) / 1e12
