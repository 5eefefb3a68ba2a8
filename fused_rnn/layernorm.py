"""Layer-normalised LSTM and GRU with zoneout (layers and cells), fused.

Constructors and forward calls follow torch.nn's LSTM/GRU (and cells): ``input_size``,
``hidden_size``, ``num_layers``, ``bias``, ``batch_first``, ``dropout`` (between layers),
``bidirectional``, ``device``, ``dtype``; ``hx``; batched, unbatched and PackedSequence input,
and ``lengths=`` for padded batches of variable length. Extras (keyword-only): ``zoneout`` (the
probability that a unit of h keeps its previous value at a step), ``zoneout_cell`` (the same for
the LSTM's c), ``eps`` (the layer norms') and ``backend``. The equations are in
:mod:`fused_rnn.reference` and the README.

Parameters, per layer ``k`` (``_reverse`` appended for the reverse direction of a bidirectional
layer; the cells have them without the ``_l{k}`` suffix), G = 4 (LSTM: gates i, f, g, o) or 3
(GRU: r, z, n):

    weight_ih_l{k} [G*H, input]   weight_hh_l{k} [G*H, H]   (torch.nn's initialisation)
    LSTM: bias_ih_l{k} [4H]        b, added to the sum of the two LNs (it is the input LN's β;
                                   one bias, as torch.nn's two would only add up)
    GRU:  bias_ih_l{k}, bias_hh_l{k} [3H]   the input and the recurrent LN's β
    (the biases are absent with bias=False)
    gamma_ih_l{k}, gamma_hh_l{k} [G*H]      the two LNs' γ (initialised to 1)
    LSTM: gamma_c_l{k}, beta_c_l{k} [H]     the cell-state LN's γ (1) and β (0)

Weights and biases are initialised as torch.nn's (uniform in ±1/sqrt(hidden_size)). These
modules compile under ``torch.compile(fullgraph=True)``; they are not TorchScript-scriptable and
have no ONNX export (there is no standard operator for these cells).
"""

from __future__ import annotations

import math
import numbers
import warnings
from typing import Optional

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from . import functional, layernorm_functional
from .layernorm_functional import GRUWeights, LSTMWeights
from .modules import _FusedCellBase, _FusedRNNBase, _read_parameter

#: mode -> (gates, parameter names in the order of the weights tuple, weights tuple, the names
#: that are biases, the names that are the layer norms' γ / β)
_KINDS = {
    "LSTM": (4, LSTMWeights, ("weight_ih", "weight_hh", "bias_ih", "gamma_ih", "gamma_hh",
                              "gamma_c", "beta_c")),
    "GRU": (3, GRUWeights, ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "gamma_ih",
                            "gamma_hh")),
}
_BIASES = ("bias_ih", "bias_hh")


def _check_layer_arguments(input_size, hidden_size, num_layers, bias, batch_first, dropout):
    """torch.nn.RNNBase's checks, with its messages."""
    if not isinstance(dropout, numbers.Number) or not 0 <= dropout <= 1 or isinstance(dropout, bool):
        raise ValueError(
            "dropout should be a number in range [0, 1] representing the probability of an "
            "element being zeroed"
        )
    if dropout > 0 and num_layers == 1:
        warnings.warn(
            "dropout option adds dropout after all but last recurrent layer, so non-zero dropout "
            f"expects num_layers greater than 1, but got dropout={dropout} and "
            f"num_layers={num_layers}",
            stacklevel=3,
        )
    for name, value, kind in (("bias", bias, bool), ("batch_first", batch_first, bool),
                              ("input_size", input_size, int), ("hidden_size", hidden_size, int)):
        if not isinstance(value, kind):
            raise TypeError(f"{name} should be of type {kind.__name__}, got: {type(value).__name__}")
    if input_size <= 0:
        raise ValueError("input_size must be greater than zero")
    if hidden_size <= 0:
        raise ValueError("hidden_size must be greater than zero")
    if num_layers <= 0:
        raise ValueError("num_layers must be greater than zero")


def _parameter_shapes(mode: str, input_size: int, hidden_size: int) -> dict:
    gates = _KINDS[mode][0]
    G, H = gates * hidden_size, hidden_size
    return {"weight_ih": (G, input_size), "weight_hh": (G, H), "bias_ih": (G,), "bias_hh": (G,),
            "gamma_ih": (G,), "gamma_hh": (G,), "gamma_c": (H,), "beta_c": (H,)}


def _reset(module: nn.Module, names, hidden_size: int) -> None:
    """torch.nn's initialisation for weights and biases; γ = 1, β = 0."""
    stdv = 1.0 / math.sqrt(hidden_size)
    with torch.no_grad():
        for name in names:
            parameter = getattr(module, name)
            if parameter is None:
                continue
            if name.startswith("gamma"):
                parameter.fill_(1.0)
            elif name.startswith("beta"):
                parameter.zero_()
            else:
                parameter.uniform_(-stdv, stdv)


def _register(module: nn.Module, mode: str, suffix: str, input_size: int, hidden_size: int,
              bias: bool, factory_kwargs: dict) -> tuple[str, ...]:
    """Registers one set of parameters (names + suffix); returns their names."""
    shapes = _parameter_shapes(mode, input_size, hidden_size)
    names = []
    for base in _KINDS[mode][2]:
        name = base + suffix
        if base in _BIASES and not bias:
            module.register_parameter(name, None)
        else:
            module.register_parameter(name, nn.Parameter(torch.empty(shapes[base], **factory_kwargs)))
        names.append(name)
    return tuple(names)


class _LayerNormRNNBase(nn.Module):
    """The layers: parameters, checks, and the forward of every input form."""

    def __init__(self, mode: str, input_size: int, hidden_size: int, num_layers: int = 1,
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0,
                 bidirectional: bool = False, device=None, dtype=None, *, zoneout: float = 0.0,
                 zoneout_cell: float = 0.0, eps: float = 1e-5, backend: str = "auto"):
        super().__init__()
        _check_layer_arguments(input_size, hidden_size, num_layers, bias, batch_first, dropout)
        layernorm_functional.check_options(zoneout, zoneout_cell, eps)
        self.mode = mode
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bias, self.batch_first, self.dropout = bias, batch_first, float(dropout)
        self.bidirectional = bidirectional
        self.zoneout, self.zoneout_cell, self.eps = float(zoneout), float(zoneout_cell), float(eps)
        self.backend = layernorm_functional.check_backend(backend)
        factory_kwargs = {"device": device, "dtype": dtype}
        directions = 2 if bidirectional else 1
        self._weight_names = [
            _register(self, mode, f"_l{layer}{('', '_reverse')[direction]}",
                      input_size if layer == 0 else hidden_size * directions, hidden_size, bias,
                      factory_kwargs)
            for layer in range(num_layers)
            for direction in range(directions)
        ]
        self.reset_parameters()

    def reset_parameters(self) -> None:
        _reset(self, [n for names in self._weight_names for n in names], self.hidden_size)

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        for name, default in (("num_layers", 1), ("bias", True), ("batch_first", False),
                              ("dropout", 0.0), ("bidirectional", False), ("zoneout", 0.0),
                              ("zoneout_cell", 0.0), ("eps", 1e-5), ("backend", "auto")):
            value = getattr(self, name)
            if value != default:
                s += f", {name}={value!r}"
        return s

    def _layer_weights(self) -> list:
        """The weights of every layer and direction, read on every call (functional_call and
        reassigned parameters are honoured)."""
        kind = _KINDS[self.mode][1]
        return [kind(*(_read_parameter(self, n) for n in names)) for names in self._weight_names]

    def _run(self, x: Tensor, h0: Optional[Tensor], c0: Optional[Tensor],
             lengths: Optional[Tensor]):
        """Runs the stack on batched, padded input; returns (output, h_n, c_n or None)."""
        return layernorm_functional.stack(
            self.mode.lower(), x, h0, c0, self._layer_weights(), bidirectional=self.bidirectional,
            dropout=self.dropout, training=self.training, batch_first=self.batch_first,
            lengths=lengths, zoneout=self.zoneout, zoneout_cell=self.zoneout_cell, eps=self.eps,
            backend=self.backend, own_weights=True,
        )

    # The input forms (batched, unbatched, packed, padded with lengths), their checks and
    # errors are those of the plain layers: the same methods.
    _check_hx_dims = _FusedRNNBase._check_hx_dims
    _forward_tensor = _FusedRNNBase._forward_tensor
    _forward_packed = _FusedRNNBase._forward_packed


class LayerNormLSTM(_LayerNormRNNBase):
    """A layer-normalised LSTM with zoneout, called as :class:`torch.nn.LSTM` (see the module's
    documentation for the equations' parameters): ``output, (h_n, c_n) = lstm(input, hx,
    lengths=None)``. Keyword-only extras: ``zoneout`` (of h), ``zoneout_cell`` (of c), ``eps``,
    ``backend``."""

    def __init__(self, *args, **kwargs):
        super().__init__("LSTM", *args, **kwargs)

    def forward(self, input, hx=None, lengths=None):
        if hx is not None and not (isinstance(hx, tuple) and len(hx) == 2):
            raise TypeError("LayerNormLSTM: hx must be a tuple (h_0, c_0)")
        h0, c0 = hx if hx is not None else (None, None)
        if isinstance(input, PackedSequence):
            output, h_n, c_n = self._forward_packed(input, h0, c0, lengths)
        else:
            output, h_n, c_n = self._forward_tensor(input, h0, c0, lengths)
        return output, (h_n, c_n)


class LayerNormGRU(_LayerNormRNNBase):
    """A layer-normalised GRU with zoneout, called as :class:`torch.nn.GRU`: ``output, h_n =
    gru(input, hx, lengths=None)``. Keyword-only extras: ``zoneout``, ``eps``, ``backend``."""

    def __init__(self, *args, **kwargs):
        if "zoneout_cell" in kwargs:
            raise ValueError("zoneout_cell is only supported for LayerNormLSTM (a GRU has no cell state)")
        super().__init__("GRU", *args, **kwargs)

    def forward(self, input, hx=None, lengths=None):
        if isinstance(input, PackedSequence):
            output, h_n, _ = self._forward_packed(input, hx, None, lengths)
        else:
            output, h_n, _ = self._forward_tensor(input, hx, None, lengths)
        return output, h_n


# ---------------------------------------------------------------------------------------------
# Cells: one step, the layer's kernels at T = 1.
# ---------------------------------------------------------------------------------------------


class _LayerNormCellBase(nn.Module):
    def __init__(self, mode: str, input_size: int, hidden_size: int, bias: bool = True,
                 device=None, dtype=None, *, zoneout: float = 0.0, zoneout_cell: float = 0.0,
                 eps: float = 1e-5, backend: str = "auto"):
        super().__init__()
        layernorm_functional.check_options(zoneout, zoneout_cell, eps)
        self.mode = mode
        self.input_size, self.hidden_size, self.bias = input_size, hidden_size, bias
        self.zoneout, self.zoneout_cell, self.eps = float(zoneout), float(zoneout_cell), float(eps)
        self.backend = layernorm_functional.check_backend(backend)
        self._names = _register(self, mode, "", input_size, hidden_size, bias,
                                {"device": device, "dtype": dtype})
        self.reset_parameters()

    def reset_parameters(self) -> None:
        _reset(self, self._names, self.hidden_size)

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        for name, default in (("bias", True), ("zoneout", 0.0), ("zoneout_cell", 0.0),
                              ("eps", 1e-5), ("backend", "auto")):
            if getattr(self, name) != default:
                s += f", {name}={getattr(self, name)!r}"
        return s

    # torch.nn's cells' input forms and their errors, as the plain cells have them.
    _batched_input = _FusedCellBase._batched_input
    _batched_state = _FusedCellBase._batched_state
    _zero_state = _FusedCellBase._zero_state

    def _step(self, input: Tensor, h: Tensor, c: Optional[Tensor]):
        """One step on batched input [B, I], h and c [B, H]: (h', c' or None)."""
        weights = _KINDS[self.mode][1](*(_read_parameter(self, n) for n in self._names))
        autocast = functional._autocast_dtype(input) is not None
        functional._check_cell(input, h, "hidden0", weights.w_ih, self.hidden_size, autocast)
        if c is not None:
            functional._check_cell(input, c, "hidden1", weights.w_ih, self.hidden_size, autocast)
        _, h_n, c_n = layernorm_functional.stack(
            self.mode.lower(), input.unsqueeze(0), h.unsqueeze(0),
            None if c is None else c.unsqueeze(0), [weights], bidirectional=False, dropout=0.0,
            training=self.training, batch_first=False, lengths=None, zoneout=self.zoneout,
            zoneout_cell=self.zoneout_cell, eps=self.eps, backend=self.backend, own_weights=True,
        )
        return h_n[0], None if c_n is None else c_n[0]


class LayerNormLSTMCell(_LayerNormCellBase):
    """One step of :class:`LayerNormLSTM`, called as :class:`torch.nn.LSTMCell`:
    ``h', c' = cell(input, (h, c))``. Parameters as the layer's without the ``_l0`` suffix."""

    def __init__(self, *args, **kwargs):
        super().__init__("LSTM", *args, **kwargs)

    def forward(self, input: Tensor, hx=None):
        if hx is not None and not (isinstance(hx, tuple) and len(hx) == 2):
            raise TypeError("LayerNormLSTMCell: hx must be a tuple (h_0, c_0)")
        input, is_batched = self._batched_input("LayerNormLSTMCell", input)
        if hx is None:
            h = c = self._zero_state(input)
        else:
            h = self._batched_state("LayerNormLSTMCell", "hx[0]", hx[0], is_batched)
            c = self._batched_state("LayerNormLSTMCell", "hx[1]", hx[1], is_batched)
        h, c = self._step(input, h, c)
        return (h, c) if is_batched else (h.squeeze(0), c.squeeze(0))


class LayerNormGRUCell(_LayerNormCellBase):
    """One step of :class:`LayerNormGRU`, called as :class:`torch.nn.GRUCell`:
    ``h' = cell(input, h)``."""

    def __init__(self, *args, **kwargs):
        if "zoneout_cell" in kwargs:
            raise ValueError("zoneout_cell is only supported for LayerNormLSTMCell (a GRU has no cell state)")
        super().__init__("GRU", *args, **kwargs)

    def forward(self, input: Tensor, hx: Optional[Tensor] = None) -> Tensor:
        input, is_batched = self._batched_input("LayerNormGRUCell", input)
        if hx is None:
            h = self._zero_state(input)
        else:
            h = self._batched_state("LayerNormGRUCell", "hidden", hx, is_batched)
        h, _ = self._step(input, h, None)
        return h if is_batched else h.squeeze(0)
