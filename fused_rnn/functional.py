"""The layer stack around the recurrence ops: input projection, layers, directions, dropout,
variable lengths, autocast.

Per layer and direction: one GEMM by torch for the input projection of all time steps
(``gx = x W_ih^T + b_ih (+ b_hh)``, autograd by torch), then one fused recurrence op from the
backend chosen in :mod:`fused_rnn.backends`. Bidirectional layers concatenate both directions'
outputs; dropout (as torch.nn: after every layer but the last, in training) applies to that.

Variable lengths are a ``lengths`` tensor on time-padded input: a finished sequence keeps its
state and emits zeros, the reverse direction starts each sequence at its own last step, and
``h_n``/``c_n`` hold each sequence's state after its last real step — what torch.nn computes
for a PackedSequence, with no loop over steps or sequences in Python.

Weights are given per layer and direction (``layer * num_directions + direction``) as tuples
``(w_ih, w_hh, b_ih, b_hh, w_hr)`` with ``None`` for what the layer does not have (no bias, no
projection): the parameters of torch.nn's modules, in the same shapes.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from . import backends, deploy, dispatch, torch_backend

#: (w_ih, w_hh, b_ih, b_hh, w_hr) of one layer and direction
LayerWeights = Sequence[Optional[Tensor]]

_GATES = {"lstm": 4, "gru": 3, "rnn_tanh": 1, "rnn_relu": 1}


# ---------------------------------------------------------------------------------------------
# Checks: torch.nn's messages, raised before any kernel runs.
# ---------------------------------------------------------------------------------------------


def _check_weights(cell: str, weights: Sequence[LayerWeights], num_directions: int):
    if len(weights) == 0 or len(weights) % num_directions != 0:
        raise ValueError(
            f"expected weights for num_layers * {num_directions} layer-directions, got {len(weights)}"
        )
    for index, layer in enumerate(weights):
        if len(layer) != 5:
            raise ValueError(
                f"weights[{index}] must be (w_ih, w_hh, b_ih, b_hh, w_hr), got {len(layer)} entries"
            )
        w_ih, w_hh, b_ih, b_hh, w_hr = layer
        if w_ih is None or w_hh is None:
            raise ValueError(f"weights[{index}]: w_ih and w_hh are required")
        if (b_ih is None) != (b_hh is None):
            raise ValueError(f"weights[{index}]: give both b_ih and b_hh, or neither")
        if w_hr is not None and cell != "lstm":
            raise ValueError("a projection w_hr is only supported for LSTM")
        if w_hh.dim() != 2 or w_hh.shape[0] % _GATES[cell] != 0:
            raise ValueError(
                f"weights[{index}]: expected w_hh of shape ({_GATES[cell]} * hidden_size, "
                f"hidden_size or proj_size), got {tuple(w_hh.shape)}"
            )
        gate_size = w_hh.shape[0]
        hidden = gate_size // _GATES[cell]
        proj = w_hr.shape[0] if w_hr is not None else hidden
        if w_ih.dim() != 2 or w_ih.shape[0] != gate_size:
            raise ValueError(
                f"weights[{index}]: expected w_ih of shape ({gate_size}, input_size), "
                f"got {tuple(w_ih.shape)}"
            )
        if index >= num_directions and w_ih.shape[1] != num_directions * proj:
            raise ValueError(
                f"weights[{index}]: w_ih of a layer above the first takes the previous layer's "
                f"output of width {num_directions * proj}, got {w_ih.shape[1]} columns"
            )
        expected = {
            "w_hh": (w_hh, (gate_size, proj)),
            "b_ih": (b_ih, (gate_size,)),
            "b_hh": (b_hh, (gate_size,)),
            "w_hr": (w_hr, (proj, hidden)),
        }
        for name, (tensor, shape) in expected.items():
            if tensor is not None and tuple(tensor.shape) != shape:
                raise ValueError(
                    f"weights[{index}]: expected {name} of shape {shape}, got {tuple(tensor.shape)}"
                )


def _check_tensor_like(name: str, tensor: Tensor, input: Tensor, autocast: bool):
    if tensor.device != input.device:
        raise RuntimeError(
            f"Input and {name} tensors are not at the same device, found input tensor at "
            f"{input.device} and {name} tensor at {tensor.device}"
        )
    if tensor.dtype != input.dtype and not autocast:
        raise RuntimeError(
            f"Input and {name} tensors are not the same dtype, found input tensor with "
            f"{input.dtype} and {name} tensor with {tensor.dtype}"
        )


def _check_input(x: Tensor, weights: Sequence[LayerWeights], autocast: bool):
    """x: time-major [T, B, I]."""
    if x.dim() != 3:
        raise RuntimeError(f"input must have 3 dimensions, got {x.dim()}")
    if not x.is_floating_point():
        raise TypeError(f"input must be a floating-point tensor, got {x.dtype}")
    w_ih = weights[0][0]
    if x.dtype != w_ih.dtype and not autocast:
        raise ValueError(
            f"RNN input dtype ({x.dtype}) does not match weight dtype ({w_ih.dtype}). "
            f"Convert input: input.to({w_ih.dtype}), or convert model: model.to({x.dtype})"
        )
    if x.size(-1) != w_ih.shape[1]:
        raise RuntimeError(
            f"input.size(-1) must be equal to input_size. Expected {w_ih.shape[1]}, got {x.size(-1)}"
        )
    for layer in weights:
        for tensor in layer:
            if tensor is not None and tensor.device != x.device:
                raise RuntimeError(
                    f"Input and parameter tensors are not at the same device, found input tensor "
                    f"at {x.device} and parameter tensor at {tensor.device}"
                )


def _check_hidden(name: str, hx: Tensor, expected: tuple, x: Tensor, autocast: bool):
    _check_tensor_like(name, hx, x, autocast)
    if tuple(hx.shape) != expected:
        raise RuntimeError(f"Expected {name} size {expected}, got {list(hx.shape)}")


def check_lengths(lengths, T: int, B: int, device: torch.device) -> Optional[Tensor]:
    """Validates ``lengths`` (a sequence or an int64 tensor of B values in [0, T]) and returns it
    as an int64 tensor on the CPU or on ``device`` (None stays None)."""
    if lengths is None:
        return None
    if not isinstance(lengths, Tensor):
        lengths = torch.as_tensor(lengths, dtype=torch.int64)
    if lengths.dtype != torch.int64:
        if lengths.is_floating_point() or lengths.is_complex() or lengths.dtype == torch.bool:
            raise TypeError(f"lengths must be an integer tensor, got {lengths.dtype}")
        lengths = lengths.to(torch.int64)
    if lengths.dim() != 1 or lengths.shape[0] != B:
        raise ValueError(f"lengths must have shape [{B}] (one per sequence), got {list(lengths.shape)}")
    if lengths.device.type == "cpu":
        if B > 0 and not torch.compiler.is_compiling():
            low, high = int(lengths.min()), int(lengths.max())
            if low < 0 or high > T:
                raise ValueError(
                    f"lengths must lie in [0, {T}] (the number of time steps), got values in [{low}, {high}]"
                )
    elif lengths.device != device:
        raise RuntimeError(f"lengths must be on the CPU or on {device}, got {lengths.device}")
    return lengths


def _autocast_dtype(x: Tensor) -> Optional[torch.dtype]:
    """The dtype autocast runs this layer in, or None outside autocast. As cuDNN's RNNs under
    autocast, the whole layer (projection, recurrence, states) runs in the low dtype. As
    autocast itself, float64 input is left alone (autocast never casts float64 tensors)."""
    device_type = x.device.type
    if x.dtype == torch.float64:
        return None
    if device_type in ("cuda", "cpu") and torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return None


# ---------------------------------------------------------------------------------------------
# The stack.
# ---------------------------------------------------------------------------------------------


def _input_projection(impl, cell: str, x: Tensor, w_ih: Tensor, b_ih, b_hh) -> Tensor:
    """gx [T, B, G*H] for all steps in one GEMM (the backend's ``linear``). b_hh is folded in,
    except for the GRU, whose b_hn sits inside the reset product and so goes to the recurrence
    op."""
    if b_ih is None:
        bias = None
    elif cell == "gru":
        bias = b_ih
    else:
        bias = b_ih + b_hh
    return impl.linear(x, w_ih, bias)


def _run_layer(impl, cell, x, weights, h0, c0, lengths, reverse):
    w_ih, w_hh, b_ih, b_hh, w_hr = weights
    gx = _input_projection(impl, cell, x, w_ih, b_ih, b_hh)
    if cell == "lstm":
        return impl.lstm(gx, w_hh, w_hr, h0, c0, lengths, reverse)
    if cell == "gru":
        y, h_n = impl.gru(gx, w_hh, b_hh, h0, lengths, reverse)
    else:
        y, h_n = impl.cell(cell)(gx, w_hh, h0, lengths, reverse)
    return y, h_n, None


def _stack(
    cell: str,
    input: Tensor,
    h0: Optional[Tensor],
    c0: Optional[Tensor],
    weights: Sequence[LayerWeights],
    *,
    bidirectional: bool,
    dropout: float,
    training: bool,
    batch_first: bool,
    lengths,
    backend: str,
    own_weights: bool = False,
):
    """own_weights: the weights are a module's own parameters, in torch.nn's shapes by
    construction, and are not checked again on every call (microseconds at one step); one the
    user replaced by a tensor of another shape is still refused before any kernel runs, by the
    ops' own checks or, for a bias, by the addition that folds it in (as torch.nn refuses it)."""
    num_directions = 2 if bidirectional else 1
    if not own_weights:
        _check_weights(cell, weights, num_directions)
    if deploy.recording():  # TorchScript's tracer or an ONNX export: see fused_rnn/deploy
        return deploy.stack(
            cell, input, h0, c0, weights, bidirectional=bidirectional, dropout=dropout,
            training=training, batch_first=batch_first, lengths=lengths, backend=backend,
        )
    num_layers = len(weights) // num_directions
    x = input.transpose(0, 1) if batch_first else input  # time-major [T, B, I]
    cast_dtype = _autocast_dtype(x)
    autocast = cast_dtype is not None
    _check_input(x, weights, autocast)
    T, B = x.shape[0], x.shape[1]

    w_hh0, w_hr0 = weights[0][1], weights[0][4]
    hidden = w_hh0.shape[0] // _GATES[cell]
    proj = w_hr0.shape[0] if w_hr0 is not None else hidden
    dtype = cast_dtype if autocast and x.is_floating_point() else x.dtype
    h_name = "hidden[0]" if cell == "lstm" else "hidden"
    if h0 is None:
        h0 = x.new_zeros(num_layers * num_directions, B, proj, dtype=dtype)
    else:
        _check_hidden(h_name, h0, (num_layers * num_directions, B, proj), x, autocast)
    if cell == "lstm":
        if c0 is None:
            c0 = x.new_zeros(num_layers * num_directions, B, hidden, dtype=dtype)
        else:
            _check_hidden("hidden[1]", c0, (num_layers * num_directions, B, hidden), x, autocast)
    if T == 0:
        raise RuntimeError("Expected sequence length to be larger than 0 in RNN")  # torch.nn's
    lengths = check_lengths(lengths, T, B, x.device)

    if autocast:
        x, h0 = x.to(dtype), h0.to(dtype)
        c0 = c0.to(dtype) if c0 is not None else None
        weights = [[w.to(dtype) if w is not None else None for w in layer] for layer in weights]

    training_call = _stack_records_gradients(x, h0, c0, weights)
    if backend == "auto":
        # the raw facts describe_stack's Call is made of: auto's memo key, cheaper to build
        signature = (cell, x.dtype, x.shape, w_hh0.shape, w_hr0 is not None, len(weights),
                     num_directions, lengths is None, training_call)
        name = backends.auto_name(
            x.device, signature,
            lambda: describe_stack(cell, x, h0, c0, weights, num_directions, lengths))
    else:
        name = backends.choose(backend, x.device, cell=cell, proj=w_hr0 is not None)
    if name == "torch":
        output, h_n, c_n = torch_backend.stack(
            cell, x, h0, c0, weights, bidirectional=bidirectional, dropout=dropout,
            training=training, lengths=lengths)
        return (output.transpose(0, 1) if batch_first else output), h_n, c_n
    impl = backends.implementation(name)
    if T == 1 and len(weights) == 1 and lengths is None and impl.step is not None \
            and w_hr0 is None and not training_call:
        # One inference step of one layer (streaming, RL): the cell's one-op step, where the
        # layer path makes two ops (projection, recurrence) and most of the call is around them.
        # (In training the layer path's backward is the faster.)
        h, c = impl.step(cell, x[0], h0[0], c0[0] if c0 is not None else None, *weights[0][:4])
        output = h.unsqueeze(0)
        return ((output.transpose(0, 1) if batch_first else output), h.unsqueeze(0),
                c.unsqueeze(0) if c is not None else None)

    def run_layer(x, index, h0, c0, reverse):
        return _run_layer(impl, cell, x, weights[index], h0, c0, lengths, reverse=reverse)

    return layer_stack(run_layer, x, h0, c0, num_layers=num_layers,
                       num_directions=num_directions, dropout=dropout, training=training,
                       batch_first=batch_first)


def layer_stack(run_layer: Callable, x: Tensor, h0: Tensor, c0: Optional[Tensor], *,
                num_layers: int, num_directions: int, dropout: float, training: bool,
                batch_first: bool):
    """The layers and directions of a stack on time-major x, with dropout between layers:
    ``run_layer(x, index, h0[index], c0[index] or None, reverse) -> (y, h_n, c_n or None)``
    for index = layer * num_directions + direction. Returns (output in the input's layout,
    h_n, c_n or None)."""
    h_n, c_n = [], []
    for layer in range(num_layers):
        outputs = []
        for direction in range(num_directions):
            index = layer * num_directions + direction
            y, h, c = run_layer(x, index, h0[index], c0[index] if c0 is not None else None,
                                direction == 1)
            outputs.append(y)
            h_n.append(h)
            c_n.append(c)
        x = outputs[0] if num_directions == 1 else torch.cat(outputs, dim=2)
        if dropout > 0 and training and layer < num_layers - 1:
            x = F.dropout(x, dropout, training=True)
    output = x.transpose(0, 1) if batch_first else x
    return output, _stack_states(h_n), _stack_states(c_n) if c0 is not None else None


def _stack_states(states: list[Tensor]) -> Tensor:
    """[L*D, B, H] from L*D states [B, H]; one state is a view (no copy: a one-step call of a
    one-layer net notices the microsecond)."""
    return states[0].unsqueeze(0) if len(states) == 1 else torch.stack(states)


def _records_gradients(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _stack_records_gradients(x, h0, c0, weights) -> bool:
    """Whether a stack call is a training call. A module's weights usually record gradients,
    which settles it at the first test (asked on every auto call)."""
    return torch.is_grad_enabled() and (
        weights[0][1].requires_grad
        or _records_gradients(x, h0, c0)
        or any(w is not None and w.requires_grad for layer in weights for w in layer))


def describe_stack(cell, x, h0, c0, weights, num_directions, lengths) -> "dispatch.Call":
    """What decides the speed of a stack call (x time-major [T, B, I]): the key of auto's
    records."""
    w_hh = weights[0][1]
    return dispatch.Call(
        cell, dispatch.dtype_name(x.dtype), _stack_records_gradients(x, h0, c0, weights),
        x.shape[1], w_hh.shape[0] // _GATES[cell], len(weights) // num_directions,
        num_directions, lengths is not None, x.shape[0], weights[0][4] is not None)


def describe_step(cell, input, h, c, w_ih, w_hh, b_ih, b_hh) -> "dispatch.Call":
    """What decides the speed of a cell step (input [B, I])."""
    training = _records_gradients(input, h, c, w_ih, w_hh, b_ih, b_hh)
    return backends.auto_call(cell, input.dtype, training, input.shape[0],
                              w_hh.shape[0] // _GATES[cell])


# ---------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------


def lstm(
    input: Tensor,
    hx: Optional[tuple[Tensor, Tensor]],
    weights: Sequence[LayerWeights],
    *,
    bidirectional: bool = False,
    dropout: float = 0.0,
    training: bool = False,
    batch_first: bool = False,
    lengths=None,
    backend: str = "auto",
) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """A multi-layer LSTM on padded input.

    Args:
        input: ``[T, B, I]`` (``[B, T, I]`` with ``batch_first``).
        hx: ``(h0 [L*D, B, P], c0 [L*D, B, H])``, or None for zeros.
        weights: per layer and direction, ``(w_ih, w_hh, b_ih, b_hh, w_hr)``.
        lengths: optional ``[B]`` sequence lengths (int64 tensor on the CPU or input's
            device, or a list); steps past a sequence's length are padding.
        backend: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"triton"``, ``"torch"`` or ``"reference"``.

    Returns:
        ``output [T, B, D*P]`` (zeros on padding) and ``(h_n, c_n)``.
    """
    h0, c0 = hx if hx is not None else (None, None)
    output, h_n, c_n = _stack(
        "lstm", input, h0, c0, weights, bidirectional=bidirectional, dropout=dropout,
        training=training, batch_first=batch_first, lengths=lengths, backend=backend,
    )
    return output, (h_n, c_n)


def gru(
    input: Tensor,
    hx: Optional[Tensor],
    weights: Sequence[LayerWeights],
    *,
    bidirectional: bool = False,
    dropout: float = 0.0,
    training: bool = False,
    batch_first: bool = False,
    lengths=None,
    backend: str = "auto",
) -> tuple[Tensor, Tensor]:
    """A multi-layer GRU on padded input; arguments as :func:`lstm` (``hx`` is ``h0``)."""
    output, h_n, _ = _stack(
        "gru", input, hx, None, weights, bidirectional=bidirectional, dropout=dropout,
        training=training, batch_first=batch_first, lengths=lengths, backend=backend,
    )
    return output, h_n


def rnn(
    input: Tensor,
    hx: Optional[Tensor],
    weights: Sequence[LayerWeights],
    *,
    nonlinearity: str = "tanh",
    bidirectional: bool = False,
    dropout: float = 0.0,
    training: bool = False,
    batch_first: bool = False,
    lengths=None,
    backend: str = "auto",
) -> tuple[Tensor, Tensor]:
    """A multi-layer Elman RNN (``nonlinearity`` ``"tanh"`` or ``"relu"``) on padded input;
    arguments as :func:`lstm` (``hx`` is ``h0``)."""
    if nonlinearity not in ("tanh", "relu"):
        raise ValueError(f"Unknown nonlinearity '{nonlinearity}'. Select from 'tanh' or 'relu'.")
    output, h_n, _ = _stack(
        f"rnn_{nonlinearity}", input, hx, None, weights, bidirectional=bidirectional,
        dropout=dropout, training=training, batch_first=batch_first, lengths=lengths,
        backend=backend,
    )
    return output, h_n


# ---------------------------------------------------------------------------------------------
# Single steps (the cells): the same ops with T = 1.
# ---------------------------------------------------------------------------------------------


def _check_cell(input: Tensor, hidden: Tensor, name: str, w_ih: Tensor, hidden_size: int,
                autocast: bool):
    if input.size(1) != w_ih.shape[1]:
        raise RuntimeError(
            f"input has inconsistent input_size: got {input.size(1)} expected {w_ih.shape[1]}"
        )
    if hidden.size(0) != input.size(0):
        raise RuntimeError(
            f"Input batch size {input.size(0)} doesn't match {name} batch size {hidden.size(0)}"
        )
    if hidden.size(1) != hidden_size:
        raise RuntimeError(
            f"{name} has inconsistent hidden_size: got {hidden.size(1)}, expected {hidden_size}"
        )
    _check_tensor_like(name, hidden, input, autocast)
    if w_ih.dtype != input.dtype and not autocast:
        raise RuntimeError(
            f"Input and parameter tensors are not the same dtype, found input tensor with "
            f"{input.dtype} and parameter tensor with {w_ih.dtype}"
        )


def _cell_step(cell, input, h, c, w_ih, w_hh, b_ih, b_hh, backend, cast_dtype):
    """input [B, I], h [B, H], c [B, H] or None -> (h', c'). cast_dtype: _autocast_dtype's."""
    if cast_dtype is not None:
        input, h, w_ih, w_hh = (t.to(cast_dtype) for t in (input, h, w_ih, w_hh))
        c = c.to(cast_dtype) if c is not None else None
        b_ih = b_ih.to(cast_dtype) if b_ih is not None else None
        b_hh = b_hh.to(cast_dtype) if b_hh is not None else None
    if backend == "auto":
        signature = (cell, input.dtype, input.shape, w_hh.shape,
                     _records_gradients(input, h, c, w_ih, w_hh, b_ih, b_hh))
        name = backends.auto_name(
            input.device, signature,
            lambda: describe_step(cell, input, h, c, w_ih, w_hh, b_ih, b_hh))
    else:
        name = backends.choose(backend, input.device, cell=cell)
    if name == "torch":
        return torch_backend.step(cell, input, h, c, w_ih, w_hh, b_ih, b_hh)
    impl = backends.implementation(name)
    if impl.step is not None:
        return impl.step(cell, input, h, c, w_ih, w_hh, b_ih, b_hh)
    _, h_new, c_new = _run_layer(
        impl, cell, input.unsqueeze(0), (w_ih, w_hh, b_ih, b_hh, None), h, c, None, False
    )
    return h_new, c_new


def cell_step(cell, input, h, c, w_ih, w_hh, b_ih=None, b_hh=None, *, backend="auto"):
    """One step of ``cell`` (``"lstm"``, ``"gru"``, ``"rnn_tanh"`` or ``"rnn_relu"``):
    ``(h', c')``, ``c'`` None but for the LSTM. What the cell modules and ``fused_rnn::step``
    run."""
    if cell == "lstm":
        return lstm_cell(input, (h, c), w_ih, w_hh, b_ih, b_hh, backend=backend)
    if cell == "gru":
        return gru_cell(input, h, w_ih, w_hh, b_ih, b_hh, backend=backend), None
    if cell.startswith("rnn_"):
        h_next = rnn_cell(
            input, h, w_ih, w_hh, b_ih, b_hh, nonlinearity=cell[len("rnn_"):], backend=backend
        )
        return h_next, None
    raise ValueError(f"cell must be one of {tuple(_GATES)}, got {cell!r}")


def lstm_cell(input, hx, w_ih, w_hh, b_ih=None, b_hh=None, *, backend="auto"):
    """One LSTM step: ``input [B, I]``, ``hx = (h [B, H], c [B, H])`` -> ``(h', c')``."""
    h, c = hx
    if deploy.recording():  # as in _stack; before the checks, which its op runs
        return deploy.step("lstm", input, h, c, w_ih, w_hh, b_ih, b_hh, backend)
    hidden_size = w_hh.shape[1]
    cast_dtype = _autocast_dtype(input)
    _check_cell(input, h, "hidden0", w_ih, hidden_size, cast_dtype is not None)
    _check_cell(input, c, "hidden1", w_ih, hidden_size, cast_dtype is not None)
    return _cell_step("lstm", input, h, c, w_ih, w_hh, b_ih, b_hh, backend, cast_dtype)


def gru_cell(input, hx, w_ih, w_hh, b_ih=None, b_hh=None, *, backend="auto"):
    """One GRU step: ``input [B, I]``, ``hx [B, H]`` -> ``h'``."""
    if deploy.recording():
        return deploy.step("gru", input, hx, None, w_ih, w_hh, b_ih, b_hh, backend)[0]
    cast_dtype = _autocast_dtype(input)
    _check_cell(input, hx, "hidden0", w_ih, w_hh.shape[1], cast_dtype is not None)
    return _cell_step("gru", input, hx, None, w_ih, w_hh, b_ih, b_hh, backend, cast_dtype)[0]


def rnn_cell(input, hx, w_ih, w_hh, b_ih=None, b_hh=None, *, nonlinearity="tanh", backend="auto"):
    """One Elman RNN step: ``input [B, I]``, ``hx [B, H]`` -> ``h'``."""
    if nonlinearity not in ("tanh", "relu"):
        raise RuntimeError(f"Unknown nonlinearity: {nonlinearity}")
    if deploy.recording():
        cell = f"rnn_{nonlinearity}"
        return deploy.step(cell, input, hx, None, w_ih, w_hh, b_ih, b_hh, backend)[0]
    cast_dtype = _autocast_dtype(input)
    _check_cell(input, hx, "hidden0", w_ih, w_hh.shape[1], cast_dtype is not None)
    return _cell_step(
        f"rnn_{nonlinearity}", input, hx, None, w_ih, w_hh, b_ih, b_hh, backend, cast_dtype
    )[0]
