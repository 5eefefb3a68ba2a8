"""Drop-in replacements for torch.nn.LSTM, GRU, RNN and their cells.

Same constructor, parameter names, shapes and initialisation, state_dict (loadable both ways),
forward signature, outputs, warnings and errors as torch.nn; the recurrence runs in fused_rnn's
kernels. Extras, all keyword-only: ``backend=`` on the constructor (``"auto"``, ``"cpu"``,
``"cuda"``, ``"triton"``, ``"reference"``; also a plain attribute) and ``lengths=`` on
``forward`` for padded batches of variable length.

The layers subclass ``torch.nn.RNNBase``, not ``torch.nn.LSTM``/``GRU``/``RNN``:
``torch.compile`` deliberately graph-breaks on instances of those three classes, and compiles
these.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from . import backends, functional

_CELL_OF_MODE = {"LSTM": "lstm", "GRU": "gru", "RNN_TANH": "rnn_tanh", "RNN_RELU": "rnn_relu"}


def _check_backend(backend: str) -> str:
    if backend not in backends.BACKENDS:
        raise ValueError(
            f"backend must be one of {', '.join(map(repr, backends.BACKENDS))}, got {backend!r}"
        )
    return backend


def _read_parameter(module: nn.Module, name: str) -> Optional[Tensor]:
    """The tensor ``module`` holds under ``name``, read on every call so that
    torch.func.functional_call and reassigned parameters are honoured: from ``_parameters``,
    where both put it, else as an attribute (a parametrized weight). Module.__getattr__ is
    slower than the dict, and for a name the module does not have it raises an AttributeError
    that, even caught, slowed the rest of a one-step call by several microseconds: callers
    ask only for names the module has."""
    parameters = module._parameters
    return parameters[name] if name in parameters else getattr(module, name)


class _FusedRNNBase(nn.RNNBase):
    """The forward shared by LSTM, GRU and RNN: input forms (batched, unbatched, packed, padded
    with lengths), default and given states, then :mod:`fused_rnn.functional`."""

    def __init__(self, mode: str, *args, backend: str = "auto", **kwargs):
        super().__init__(mode, *args, **kwargs)
        self.backend = _check_backend(backend)
        self._set_weight_names()

    def __setstate__(self, state):
        super().__setstate__(state)
        if "_weight_names" not in self.__dict__:  # pickled by a version that did not keep them
            self._set_weight_names()

    def flatten_parameters(self) -> None:
        """No-op: the fused kernels read the parameters where they are (torch.nn packs them into
        one buffer for cuDNN)."""

    def extra_repr(self) -> str:
        s = super().extra_repr()
        return s if self.backend == "auto" else f"{s}, backend={self.backend!r}"

    def _layer_weights(self) -> list[tuple[Optional[Tensor], ...]]:
        """(w_ih, w_hh, b_ih, b_hh, w_hr) per layer and direction (None for what the module does
        not have: no bias, no projection)."""
        return [
            tuple(None if name is None else _read_parameter(self, name) for name in names)
            for names in self._weight_names
        ]

    def _set_weight_names(self) -> None:
        """The names of (w_ih, w_hh, b_ih, b_hh, w_hr) per layer and direction, None for what
        the module does not have."""
        self._weight_names = [
            tuple(
                f"{name}_l{layer}{suffix}" if hasattr(self, f"{name}_l{layer}{suffix}") else None
                for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr")
            )
            for layer in range(self.num_layers)
            for suffix in ("", "_reverse")[: 2 if self.bidirectional else 1]
        ]

    def _run(self, x: Tensor, hx, lengths):
        """Runs the stack on batched, padded input; returns (output, h_n, c_n)."""
        cell = _CELL_OF_MODE[self.mode]
        if cell == "lstm":
            h0, c0 = hx if hx is not None else (None, None)
        else:
            h0, c0 = hx, None
        return functional._stack(
            cell,
            x,
            h0,
            c0,
            self._layer_weights(),
            bidirectional=self.bidirectional,
            dropout=self.dropout,
            training=self.training,
            batch_first=self.batch_first,
            lengths=lengths,
            backend=self.backend,
            own_weights=True,
        )

    def _check_hx_dims(self, hx, expected_dim: int, is_batched: bool):
        states = hx if isinstance(hx, tuple) else (hx,)
        if all(state.dim() == expected_dim for state in states):
            return
        form = "batched 3-D" if is_batched else "unbatched 2-D"
        if self.mode == "LSTM":
            dims = ", ".join(f"{state.dim()}-D" for state in states)
            raise RuntimeError(
                f"For {form} input, hx and cx should also be {expected_dim}-D but got ({dims}) tensors"
            )
        raise RuntimeError(
            f"For {form} input, hx should also be {expected_dim}-D but got {states[0].dim()}-D tensor"
        )

    def forward(self, input, hx=None, *, lengths=None):
        if self.mode == "LSTM" and hx is not None and not (isinstance(hx, tuple) and len(hx) == 2):
            raise TypeError("LSTM: hx must be a tuple (h_0, c_0)")
        if isinstance(input, PackedSequence):
            if lengths is not None:
                raise ValueError("lengths cannot be given with a PackedSequence (it carries its own)")
            return self._forward_packed(input, hx)

        if input.dim() not in (2, 3):
            # torch.nn's wording, which differs between RNN and LSTM/GRU
            got = f"{input.dim()}D tensor" if self.mode.startswith("RNN") else f"{input.dim()}D"
            name = "RNN" if self.mode.startswith("RNN") else self.mode
            raise ValueError(f"{name}: Expected input to be 2D or 3D, got {got} instead")
        is_batched = input.dim() == 3
        if hx is not None:
            self._check_hx_dims(hx, 3 if is_batched else 2, is_batched)
        if not is_batched:
            if lengths is not None:
                raise ValueError("lengths applies to batched (3-D) input only")
            input = input.unsqueeze(1 if not self.batch_first else 0)
            if hx is not None:
                hx = tuple(h.unsqueeze(1) for h in hx) if isinstance(hx, tuple) else hx.unsqueeze(1)

        output, h_n, c_n = self._run(input, hx, lengths)
        if not is_batched:
            output = output.squeeze(1 if not self.batch_first else 0)
            h_n = h_n.squeeze(1)
            c_n = c_n.squeeze(1) if c_n is not None else None
        return output, ((h_n, c_n) if self.mode == "LSTM" else h_n)

    def _forward_packed(self, packed: PackedSequence, hx):
        # Pad (in the caller's batch order), run with lengths, pack the output back with the
        # input's own ordering, so that the result has the input's batch_sizes and indices.
        padded, lengths = pad_packed_sequence(packed, batch_first=self.batch_first)
        output, h_n, c_n = self._run(padded, hx, lengths)
        sorted_indices = packed.sorted_indices
        if sorted_indices is not None:
            batch_dim = 0 if self.batch_first else 1
            output = output.index_select(batch_dim, sorted_indices)
            lengths = lengths.index_select(0, sorted_indices.cpu())
        data = pack_padded_sequence(output, lengths, batch_first=self.batch_first).data
        output_packed = PackedSequence(
            data, packed.batch_sizes, packed.sorted_indices, packed.unsorted_indices
        )
        return output_packed, ((h_n, c_n) if self.mode == "LSTM" else h_n)


class LSTM(_FusedRNNBase):
    """Drop-in for :class:`torch.nn.LSTM` (same arguments, parameters, inputs and outputs).

    Extras: keyword-only ``backend=`` (constructor) and ``lengths=`` (forward, for padded
    variable-length batches: the output is zero past each length, ``h_n``/``c_n`` are each
    sequence's state at its last step, as with a PackedSequence).
    """

    def __init__(self, *args, backend: str = "auto", **kwargs):
        super().__init__("LSTM", *args, backend=backend, **kwargs)


class GRU(_FusedRNNBase):
    """Drop-in for :class:`torch.nn.GRU`; extras as :class:`LSTM`."""

    def __init__(self, *args, backend: str = "auto", **kwargs):
        if "proj_size" in kwargs:
            raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
        super().__init__("GRU", *args, backend=backend, **kwargs)


class RNN(_FusedRNNBase):
    """Drop-in for :class:`torch.nn.RNN` (``nonlinearity`` ``"tanh"`` or ``"relu"``); extras as
    :class:`LSTM`."""

    def __init__(self, *args, backend: str = "auto", **kwargs):
        if "proj_size" in kwargs:
            raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
        if len(args) > 3:
            self.nonlinearity = args[3]
            args = args[:3] + args[4:]
        else:
            self.nonlinearity = kwargs.pop("nonlinearity", "tanh")
        if self.nonlinearity not in ("tanh", "relu"):
            raise ValueError(
                f"Unknown nonlinearity '{self.nonlinearity}'. Select from 'tanh' or 'relu'."
            )
        mode = "RNN_TANH" if self.nonlinearity == "tanh" else "RNN_RELU"
        super().__init__(mode, *args, backend=backend, **kwargs)


# ---------------------------------------------------------------------------------------------
# Cells
# ---------------------------------------------------------------------------------------------


class _FusedCellBase(nn.RNNCellBase):
    def __init__(self, input_size, hidden_size, bias, num_chunks, device=None, dtype=None, *, backend="auto"):
        super().__init__(input_size, hidden_size, bias, num_chunks, device=device, dtype=dtype)
        self.backend = _check_backend(backend)

    def _weights(self) -> tuple[Optional[Tensor], ...]:
        """(weight_ih, weight_hh, bias_ih, bias_hh) (bias=False registers the biases as None)."""
        return tuple(
            _read_parameter(self, name) for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
        )

    def _batched(self, input: Tensor, hx, n_states: int):
        """Checks dims as torch.nn's cells do; returns (input [B, I], states, is_batched)."""
        name = type(self).__name__
        if input.dim() not in (1, 2):
            raise ValueError(f"{name}: Expected input to be 1D or 2D, got {input.dim()}D instead")
        states = hx if isinstance(hx, tuple) else (hx,)
        if hx is not None:
            for index, state in enumerate(states):
                if state.dim() not in (1, 2):
                    label = f"hx[{index}]" if n_states > 1 else "hidden"
                    raise ValueError(f"{name}: Expected {label} to be 1D or 2D, got {state.dim()}D instead")
        is_batched = input.dim() == 2
        if not is_batched:
            input = input.unsqueeze(0)
        if hx is None:
            zeros = torch.zeros(input.size(0), self.hidden_size, dtype=input.dtype, device=input.device)
            states = (zeros,) * n_states
        elif not is_batched:
            states = tuple(state.unsqueeze(0) for state in states)
        return input, states, is_batched


class LSTMCell(_FusedCellBase):
    """Drop-in for :class:`torch.nn.LSTMCell`; keyword-only ``backend=``."""

    def __init__(self, input_size, hidden_size, bias=True, device=None, dtype=None, *, backend="auto"):
        super().__init__(input_size, hidden_size, bias, 4, device, dtype, backend=backend)

    def forward(self, input: Tensor, hx: Optional[tuple[Tensor, Tensor]] = None):
        input, (h, c), is_batched = self._batched(input, hx, 2)
        h, c = functional.lstm_cell(input, (h, c), *self._weights(), backend=self.backend)
        return (h, c) if is_batched else (h.squeeze(0), c.squeeze(0))


class GRUCell(_FusedCellBase):
    """Drop-in for :class:`torch.nn.GRUCell`; keyword-only ``backend=``."""

    def __init__(self, input_size, hidden_size, bias=True, device=None, dtype=None, *, backend="auto"):
        super().__init__(input_size, hidden_size, bias, 3, device, dtype, backend=backend)

    def forward(self, input: Tensor, hx: Optional[Tensor] = None) -> Tensor:
        input, (h,), is_batched = self._batched(input, hx, 1)
        h = functional.gru_cell(input, h, *self._weights(), backend=self.backend)
        return h if is_batched else h.squeeze(0)


class RNNCell(_FusedCellBase):
    """Drop-in for :class:`torch.nn.RNNCell`; keyword-only ``backend=``."""

    __constants__ = ["input_size", "hidden_size", "bias", "nonlinearity"]

    def __init__(
        self, input_size, hidden_size, bias=True, nonlinearity="tanh", device=None, dtype=None,
        *, backend="auto",
    ):
        super().__init__(input_size, hidden_size, bias, 1, device, dtype, backend=backend)
        self.nonlinearity = nonlinearity

    def forward(self, input: Tensor, hx: Optional[Tensor] = None) -> Tensor:
        input, (h,), is_batched = self._batched(input, hx, 1)
        h = functional.rnn_cell(
            input, h, *self._weights(), nonlinearity=self.nonlinearity, backend=self.backend
        )
        return h if is_batched else h.squeeze(0)
