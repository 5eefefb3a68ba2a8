"""fused_rnn's layers and cells as ONNX's ``LSTM``, ``GRU`` and ``RNN`` operators, under both of
torch's ONNX exporters (``torch.onnx.export(..., dynamo=True)`` and ``dynamo=False``).

During an ONNX export, :func:`fused_rnn.functional._stack` and the cell step hand their call to
:func:`stack` and :func:`step` instead of running the fused ops. ONNX's operator takes the raw
input of a layer and the weights of both its directions, the input projection included, so a
stack of L layers becomes L operators (a cell step one operator at T = 1):

    X [T, B, I], W [D, G*H, I], R [D, G*H, H], B [D, 2*G*H], sequence_lens [B] int32,
    initial_h [D, B, H] (, initial_c [D, B, H])  ->  Y [T, D, B, H], Y_h [D, B, H] (, Y_c)

The weights are rearranged by torch ops on the parameters, which the exporters fold into
constants: gate blocks from torch.nn's order into ONNX's (LSTM i,f,g,o -> i,o,f,c; GRU r,z,n ->
z,r,h), b_ih and b_hh side by side in B. The GRU gets ``linear_before_reset=1``, which is
torch.nn's GRU (the reset gate multiplies W_hn h + b_hn). ``lengths`` becomes ``sequence_lens``
(ONNX's operators then emit zeros past each length, run the reverse direction from each
sequence's own last step and return each sequence's last state, as fused_rnn does); absent
initial states and biases are absent inputs. The operator itself is made by
``torch.onnx.ops.symbolic_multi_out`` under the dynamo exporter and by an autograd Function with
a ``symbolic`` method under the TorchScript exporter.

What the operators cannot express is refused before anything is recorded, with an error naming
the option: an LSTM projection (``proj_size > 0``) and dropout between layers in training mode.

The CPU backend's input projection, ``fused_rnn::linear``, is not part of these graphs (ONNX's
operators project the input themselves); a model that calls it directly exports it as MatMul
(+ Add): under the TorchScript exporter by the symbolic registered on import, under the dynamo
exporter with ``custom_translation_table=``:func:`translation_table`.
"""

from __future__ import annotations

import warnings

import torch

_OPERATOR = {"lstm": "LSTM", "gru": "GRU", "rnn_tanh": "RNN", "rnn_relu": "RNN"}

# torch.nn's gate blocks in the order of ONNX's operator
_ONNX_GATE_ORDER = {
    "lstm": (0, 3, 1, 2),  # i, f, g, o -> i, o, f, c
    "gru": (1, 0, 2),  # r, z, n -> z, r, h
    "rnn_tanh": (0,),
    "rnn_relu": (0,),
}


_ATTRIBUTE_SUFFIX = {int: "i", float: "f", str: "s"}


class CannotExport(RuntimeError):
    """A layer option that ONNX's recurrent operators cannot express."""


def _refuse(option: str, why: str) -> CannotExport:
    return CannotExport(f"fused_rnn: cannot export {option} to ONNX: {why}")


def _in_onnx_gate_order(cell: str, tensor: torch.Tensor) -> torch.Tensor:
    """A weight [G*H, K] or bias [G*H] with torch.nn's gate blocks, in ONNX's gate order.
    Slices and a concatenation (not chunk, whose Split the exporters leave unfolded)."""
    order = _ONNX_GATE_ORDER[cell]
    if len(order) == 1:
        return tensor
    hidden = tensor.shape[0] // len(order)
    return torch.cat([tensor[gate * hidden : (gate + 1) * hidden] for gate in order])


class _TorchScriptNode(torch.autograd.Function):
    """An ONNX recurrent operator in a TorchScript trace: the exporter calls ``symbolic``. While
    tracing, ``forward`` only provides outputs of the right shapes (zeros, as
    ``torch.onnx.ops.symbolic`` does under the dynamo exporter): the ONNX runtime computes them."""

    @staticmethod
    def forward(ctx, operator, attributes, num_outputs, x, w, *inputs):
        steps, batch, directions, hidden = x.shape[0], x.shape[1], w.shape[0], inputs[0].shape[2]
        states = tuple(x.new_zeros(directions, batch, hidden) for _ in range(num_outputs - 1))
        return (x.new_zeros(steps, directions, batch, hidden), *states)

    @staticmethod
    def symbolic(g, operator, attributes, num_outputs, *inputs):
        def absent():  # an optional input left out
            value = g.op("prim::Constant")
            value.setType(torch._C.OptionalType.ofTensor())
            return value

        named = {}  # g.op's attributes carry their kind as a suffix: hidden_size_i
        for name, value in attributes:
            if isinstance(value, torch.Tensor):  # a size, which the tracer hands on as a tensor
                value = int(value)
            kind = type(value[0] if isinstance(value, (list, tuple)) else value)
            named[f"{name}_{_ATTRIBUTE_SUFFIX[kind]}"] = value
        inputs = [absent() if value is None else value for value in inputs]
        return g.op(operator, *inputs, outputs=num_outputs, **named)


def _operator(cell, x, w, r, b, sequence_lens, initial_h, initial_c):
    """The ONNX operator of one layer: (Y [T, D, B, H], Y_h [D, B, H], Y_c or None)."""
    directions, hidden = w.shape[0], r.shape[2]
    attributes = {
        "hidden_size": hidden,
        "direction": "bidirectional" if directions == 2 else "forward",
    }
    if cell == "gru":
        attributes["linear_before_reset"] = 1
    elif cell != "lstm":
        attributes["activations"] = ["Tanh" if cell == "rnn_tanh" else "Relu"] * directions
    inputs = [x, w, r, b, sequence_lens, initial_h]
    if cell == "lstm":
        inputs.append(initial_c)
    num_outputs = 3 if cell == "lstm" else 2
    if torch.jit.is_tracing():
        outputs = _TorchScriptNode.apply(
            _OPERATOR[cell], tuple(attributes.items()), num_outputs, *inputs
        )
    else:
        steps, batch = x.shape[0], x.shape[1]
        outputs = torch.onnx.ops.symbolic_multi_out(
            _OPERATOR[cell],
            inputs,
            attributes,
            dtypes=[x.dtype] * num_outputs,
            shapes=[[steps, directions, batch, hidden]]
            + [[directions, batch, hidden]] * (num_outputs - 1),
        )
    y, h, c = outputs[0], outputs[1], outputs[2] if cell == "lstm" else None
    if sequence_lens is not None and initial_h is not None:
        # ONNX leaves the final state of a sequence of length 0 to the runtime (onnxruntime
        # returns zeros); fused_rnn's is the initial state, as for any sequence that has not run
        empty = (sequence_lens == 0).view(1, -1, 1)  # [1, B, 1]
        h = torch.where(empty, initial_h, h)
        if c is not None and initial_c is not None:
            c = torch.where(empty, initial_c, c)
    return y, h, c


def stack(cell, input, h0, c0, weights, *, bidirectional, dropout, training, batch_first,
          lengths, backend):
    """:func:`fused_rnn.functional._stack` as ONNX operators: (output, h_n, c_n or None)."""
    from .. import functional  # functional imports this package: import at call time

    num_directions = 2 if bidirectional else 1
    num_layers = len(weights) // num_directions
    if weights[0][4] is not None:
        raise _refuse("an LSTM with proj_size > 0", "ONNX's LSTM operator has no projection")
    if dropout > 0 and training and num_layers > 1:
        raise _refuse(
            f"dropout={dropout} between layers in training mode",
            "ONNX's recurrent operators have no dropout; export the model in eval mode",
        )
    x = input.transpose(0, 1) if batch_first else input  # [T, B, I]
    functional._check_input(x, weights, autocast=False)
    steps, batch = x.shape[0], x.shape[1]
    hidden = weights[0][1].shape[1]
    for name, state in (("hidden[0]" if cell == "lstm" else "hidden", h0), ("hidden[1]", c0)):
        if state is not None:
            functional._check_hidden(name, state, (len(weights), batch, hidden), x, False)
    with warnings.catch_warnings():
        # its range check reads the values, which the recorded graph does not depend on
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        lengths = functional.check_lengths(lengths, steps, batch, x.device)
    sequence_lens = lengths.to(torch.int32) if lengths is not None else None
    has_biases = weights[0][2] is not None

    h_n, c_n = [], []
    for layer in range(num_layers):
        states = slice(layer * num_directions, (layer + 1) * num_directions)
        directions = weights[states]
        w = torch.stack([_in_onnx_gate_order(cell, w_ih) for w_ih, *_ in directions])
        r = torch.stack([_in_onnx_gate_order(cell, w_hh) for _, w_hh, *_ in directions])
        b = None
        if has_biases:
            b = torch.stack(
                [
                    torch.cat([_in_onnx_gate_order(cell, b_ih), _in_onnx_gate_order(cell, b_hh)])
                    for _, _, b_ih, b_hh, _ in directions
                ]
            )
        y, h, c = _operator(
            cell, x, w, r, b, sequence_lens,
            h0[states] if h0 is not None else None,
            c0[states] if c0 is not None else None,
        )
        # y [T, D, B, H] -> the next layer's input [T, B, D*H]
        x = y.squeeze(1) if num_directions == 1 else y.transpose(1, 2).flatten(2)
        h_n.append(h)
        c_n.append(c)
    output = x.transpose(0, 1) if batch_first else x
    return output, torch.cat(h_n), torch.cat(c_n) if cell == "lstm" else None


def step(cell, input, h, c, w_ih, w_hh, b_ih, b_hh, backend):
    """One step of a cell (input [B, I], h and c [B, H]) as an ONNX operator at T = 1:
    (h', c' or None)."""
    _, h_n, c_n = stack(
        cell, input.unsqueeze(0), h.unsqueeze(0), c.unsqueeze(0) if c is not None else None,
        [(w_ih, w_hh, b_ih, b_hh, None)], bidirectional=False, dropout=0.0, training=False,
        batch_first=False, lengths=None, backend=backend,
    )
    return h_n.squeeze(0), c_n.squeeze(0) if c_n is not None else None


# ---------------------------------------------------------------------------------------------
# fused_rnn's ops met by the exporters themselves
# ---------------------------------------------------------------------------------------------


def translation_table() -> dict:
    """``custom_translation_table=`` for ``torch.onnx.export(..., dynamo=True)`` of a model that
    calls ``fused_rnn::linear`` directly (needs onnxscript, as that exporter does)."""
    from onnxscript import opset18 as op

    def linear(input, weight, bias=None):
        output = op.MatMul(input, op.Transpose(weight, perm=[1, 0]))
        return output if bias is None else op.Add(output, bias)

    return {torch.ops.fused_rnn.linear.default: linear}


def _linear_symbolic(g, input, weight, bias):
    output = g.op("MatMul", input, g.op("Transpose", weight, perm_i=[1, 0]))
    return output if bias.node().mustBeNone() else g.op("Add", output, bias)


def _scripted_symbolic(g, *args):
    raise _refuse(
        "a scripted or traced fused_rnn layer or cell (fused_rnn::stack, fused_rnn::step)",
        "export the Python module itself, torch.onnx.export(model, ...), not its TorchScript form",
    )


def register_torchscript_symbolics() -> None:
    """For the TorchScript exporter (dynamo=False), which looks ops up by name."""
    torch.onnx.register_custom_op_symbolic("fused_rnn::linear", _linear_symbolic, 9)
    for name in ("fused_rnn::stack", "fused_rnn::step"):
        torch.onnx.register_custom_op_symbolic(name, _scripted_symbolic, 9)
