"""Drop-in replacements for torch.nn.LSTM, GRU, RNN and their cells.

Same constructor, parameter names, shapes and initialisation, state_dict (loadable both ways),
forward signature, outputs, warnings and errors as torch.nn; the recurrence runs in fused_rnn's
kernels. Extras: keyword-only ``backend=`` on the constructor (``"auto"``, ``"cpu"``,
``"cuda"``, ``"triton"``, ``"torch"``, ``"reference"``; also a plain attribute) and ``lengths`` on
``forward`` (after ``hx``) for padded batches of variable length.

Every ``forward`` is TorchScript (``torch.jit.script``), as torch.nn's are: scripted, a layer
calls ``fused_rnn::stack`` and a cell ``fused_rnn::step`` (fused_rnn/deploy/torchscript.py),
whose kernels are the eager code below.

The layers subclass ``torch.nn.RNNBase``, not ``torch.nn.LSTM``/``GRU``/``RNN``:
``torch.compile`` deliberately graph-breaks on instances of those three classes, and compiles
these.
"""

import dataclasses
from typing import Optional, Tuple, overload

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from . import backends, deploy, dispatch, functional
from .deploy import torchscript


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

    def _run(
        self, x: Tensor, h0: Optional[Tensor], c0: Optional[Tensor], lengths: Optional[Tensor]
    ) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
        """Runs the stack on batched, padded input; returns (output, h_n, c_n)."""
        if torch.jit.is_scripting():
            return torchscript.run_stack(
                self.mode.lower(), x, h0, c0, self._flat_weights, self.bias, self.proj_size > 0,
                self.bidirectional, self.dropout, self.training, self.batch_first, lengths,
                self.backend,
            )
        return functional._stack(
            self.mode.lower(),  # the cell: "lstm", "gru", "rnn_tanh", "rnn_relu"
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

    def _check_hx_dims(self, h0: Tensor, c0: Optional[Tensor], expected_dim: int, is_batched: bool):
        if h0.dim() == expected_dim and (c0 is None or c0.dim() == expected_dim):
            return
        form = "batched 3-D" if is_batched else "unbatched 2-D"
        if c0 is not None:
            raise RuntimeError(
                f"For {form} input, hx and cx should also be {expected_dim}-D but got "
                f"({h0.dim()}-D, {c0.dim()}-D) tensors"
            )
        raise RuntimeError(
            f"For {form} input, hx should also be {expected_dim}-D but got {h0.dim()}-D tensor"
        )

    def _forward_tensor(
        self, input: Tensor, h0: Optional[Tensor], c0: Optional[Tensor], lengths: Optional[Tensor]
    ) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
        """Batched or unbatched input: (output, h_n, c_n) in the input's form."""
        if input.dim() != 2 and input.dim() != 3:
            # torch.nn's wording, which differs between RNN and LSTM/GRU
            got = f"{input.dim()}D tensor" if self.mode.startswith("RNN") else f"{input.dim()}D"
            name = "RNN" if self.mode.startswith("RNN") else self.mode
            raise ValueError(f"{name}: Expected input to be 2D or 3D, got {got} instead")
        is_batched = input.dim() == 3
        if h0 is not None:
            self._check_hx_dims(h0, c0, 3 if is_batched else 2, is_batched)
        if not is_batched:
            if lengths is not None:
                raise ValueError("lengths applies to batched (3-D) input only")
            input = input.unsqueeze(1 if not self.batch_first else 0)
            h0 = h0.unsqueeze(1) if h0 is not None else None
            c0 = c0.unsqueeze(1) if c0 is not None else None

        output, h_n, c_n = self._run(input, h0, c0, lengths)
        if not is_batched:
            output = output.squeeze(1 if not self.batch_first else 0)
            h_n = h_n.squeeze(1)
            c_n = c_n.squeeze(1) if c_n is not None else None
        return output, h_n, c_n

    def _forward_packed(
        self, packed: PackedSequence, h0: Optional[Tensor], c0: Optional[Tensor],
        lengths: Optional[Tensor],
    ) -> Tuple[PackedSequence, Tensor, Optional[Tensor]]:
        if lengths is not None:
            raise ValueError("lengths cannot be given with a PackedSequence (it carries its own)")
        if not torch.jit.is_scripting():
            deploy.refuse_packed_sequence()
        # Pad (in the caller's batch order), run with lengths, pack the output back with the
        # input's own ordering, so that the result has the input's batch_sizes and indices.
        if torch.jit.is_scripting():
            padded, lengths = pad_packed_sequence(packed, batch_first=self.batch_first)
        else:
            padded, lengths = _padded_outside_graphs(packed, self.batch_first)
        output, h_n, c_n = self._run(padded, h0, c0, lengths)
        sorted_indices = packed.sorted_indices
        if sorted_indices is not None:
            batch_dim = 0 if self.batch_first else 1
            output = output.index_select(batch_dim, sorted_indices)
            lengths = lengths.index_select(0, sorted_indices.cpu())
        if torch.jit.is_scripting():
            data = pack_padded_sequence(output, lengths, batch_first=self.batch_first).data
        else:
            data = _packed_data_outside_graphs(output, lengths, self.batch_first)
        output_packed = PackedSequence(
            data, packed.batch_sizes, packed.sorted_indices, packed.unsorted_indices
        )
        return output_packed, h_n, c_n


# The conversions between a PackedSequence and a padded batch read the batch sizes as data:
# torch.compile runs them outside its graphs (graph breaks; padded input with ``lengths`` is the
# route that compiles whole). torch 2.14's Dynamo skips these functions by itself; torch 2.11's
# traces into them and fails on fake tensors, so the break is asked for explicitly.
@torch.compiler.disable
def _padded_outside_graphs(packed: PackedSequence, batch_first: bool):
    return pad_packed_sequence(packed, batch_first=batch_first)


@torch.compiler.disable
def _packed_data_outside_graphs(output: Tensor, lengths: Tensor, batch_first: bool) -> Tensor:
    return pack_padded_sequence(output, lengths, batch_first=batch_first).data


class LSTM(_FusedRNNBase):
    """Drop-in for :class:`torch.nn.LSTM` (same arguments, parameters, inputs and outputs).

    Extras: keyword-only ``backend=`` (constructor) and ``lengths`` (forward, for padded
    variable-length batches: the output is zero past each length, ``h_n``/``c_n`` are each
    sequence's state at its last step, as with a PackedSequence).
    """

    def __init__(self, *args, backend: str = "auto", **kwargs):
        super().__init__("LSTM", *args, backend=backend, **kwargs)

    # The forms TorchScript compiles forward in, as torch.nn.LSTM's.
    @overload
    @torch._jit_internal._overload_method  # noqa: F811
    def forward(
        self, input: Tensor, hx: Optional[Tuple[Tensor, Tensor]] = None,
        lengths: Optional[Tensor] = None,
    ) -> Tuple[Tensor, Tuple[Tensor, Tensor]]:
        pass

    @overload
    @torch._jit_internal._overload_method  # noqa: F811
    def forward(
        self, input: PackedSequence, hx: Optional[Tuple[Tensor, Tensor]] = None,
        lengths: Optional[Tensor] = None,
    ) -> Tuple[PackedSequence, Tuple[Tensor, Tensor]]:
        pass

    def forward(self, input, hx=None, lengths=None):  # noqa: F811
        if not torch.jit.is_scripting():
            if hx is not None and not (isinstance(hx, tuple) and len(hx) == 2):
                raise TypeError("LSTM: hx must be a tuple (h_0, c_0)")
        h0: Optional[Tensor] = None
        c0: Optional[Tensor] = None
        if hx is not None:
            h0, c0 = hx
        # isinstance in the forward itself: TorchScript compiles one branch per form
        if isinstance(input, PackedSequence):
            output, h_n, c_n = self._forward_packed(input, h0, c0, lengths)
        else:
            output, h_n, c_n = self._forward_tensor(input, h0, c0, lengths)
        assert c_n is not None  # an LSTM's: tells TorchScript
        return output, (h_n, c_n)


class GRU(_FusedRNNBase):
    """Drop-in for :class:`torch.nn.GRU`; extras as :class:`LSTM`."""

    def __init__(self, *args, backend: str = "auto", **kwargs):
        if "proj_size" in kwargs:
            raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
        super().__init__("GRU", *args, backend=backend, **kwargs)

    # The forms TorchScript compiles forward in, as torch.nn.GRU's. TorchScript looks overloads
    # up by the class that declares them: GRU and RNN each declare theirs, as torch.nn's do.
    @overload
    @torch._jit_internal._overload_method  # noqa: F811
    def forward(
        self, input: Tensor, hx: Optional[Tensor] = None, lengths: Optional[Tensor] = None
    ) -> Tuple[Tensor, Tensor]:
        pass

    @overload
    @torch._jit_internal._overload_method  # noqa: F811
    def forward(
        self, input: PackedSequence, hx: Optional[Tensor] = None, lengths: Optional[Tensor] = None
    ) -> Tuple[PackedSequence, Tensor]:
        pass

    def forward(self, input, hx=None, lengths=None):  # noqa: F811
        if isinstance(input, PackedSequence):
            output, h_n, _ = self._forward_packed(input, hx, None, lengths)
        else:
            output, h_n, _ = self._forward_tensor(input, hx, None, lengths)
        return output, h_n


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

    # The forms TorchScript compiles forward in, as torch.nn.RNN's (the same as GRU's).
    @overload
    @torch._jit_internal._overload_method  # noqa: F811
    def forward(
        self, input: Tensor, hx: Optional[Tensor] = None, lengths: Optional[Tensor] = None
    ) -> Tuple[Tensor, Tensor]:
        pass

    @overload
    @torch._jit_internal._overload_method  # noqa: F811
    def forward(
        self, input: PackedSequence, hx: Optional[Tensor] = None, lengths: Optional[Tensor] = None
    ) -> Tuple[PackedSequence, Tensor]:
        pass

    def forward(self, input, hx=None, lengths=None):  # noqa: F811
        if isinstance(input, PackedSequence):
            output, h_n, _ = self._forward_packed(input, hx, None, lengths)
        else:
            output, h_n, _ = self._forward_tensor(input, hx, None, lengths)
        return output, h_n


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

    def _batched_input(self, name: str, input: Tensor) -> Tuple[Tensor, bool]:
        """input as [B, I], checked as torch.nn's cells check it, and whether it was batched."""
        if input.dim() != 1 and input.dim() != 2:
            raise ValueError(f"{name}: Expected input to be 1D or 2D, got {input.dim()}D instead")
        is_batched = input.dim() == 2
        return (input if is_batched else input.unsqueeze(0)), is_batched

    def _batched_state(self, name: str, label: str, state: Tensor, is_batched: bool) -> Tensor:
        if state.dim() != 1 and state.dim() != 2:
            raise ValueError(f"{name}: Expected {label} to be 1D or 2D, got {state.dim()}D instead")
        return state if is_batched else state.unsqueeze(0)

    def _zero_state(self, input: Tensor) -> Tensor:
        return torch.zeros(input.size(0), self.hidden_size, dtype=input.dtype, device=input.device)

    def _step(
        self, cell: str, input: Tensor, h: Tensor, c: Optional[Tensor]
    ) -> Tuple[Tensor, Optional[Tensor]]:
        """One step on batched input: (h', c' or None)."""
        if torch.jit.is_scripting():
            return torchscript.run_step(
                cell, input, h, c, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh,
                self.backend,
            )
        return functional.cell_step(cell, input, h, c, *self._weights(), backend=self.backend)


class LSTMCell(_FusedCellBase):
    """Drop-in for :class:`torch.nn.LSTMCell`; keyword-only ``backend=``."""

    def __init__(self, input_size, hidden_size, bias=True, device=None, dtype=None, *, backend="auto"):
        super().__init__(input_size, hidden_size, bias, 4, device, dtype, backend=backend)

    def forward(
        self, input: Tensor, hx: Optional[Tuple[Tensor, Tensor]] = None
    ) -> Tuple[Tensor, Tensor]:
        if not torch.jit.is_scripting():
            if hx is not None and not (isinstance(hx, tuple) and len(hx) == 2):
                raise TypeError("LSTMCell: hx must be a tuple (h_0, c_0)")
        input, is_batched = self._batched_input("LSTMCell", input)
        if hx is None:
            h = self._zero_state(input)
            c = h
        else:
            h = self._batched_state("LSTMCell", "hx[0]", hx[0], is_batched)
            c = self._batched_state("LSTMCell", "hx[1]", hx[1], is_batched)
        h, c_next = self._step("lstm", input, h, c)
        assert c_next is not None  # an LSTM's: tells TorchScript
        return (h, c_next) if is_batched else (h.squeeze(0), c_next.squeeze(0))


class GRUCell(_FusedCellBase):
    """Drop-in for :class:`torch.nn.GRUCell`; keyword-only ``backend=``."""

    def __init__(self, input_size, hidden_size, bias=True, device=None, dtype=None, *, backend="auto"):
        super().__init__(input_size, hidden_size, bias, 3, device, dtype, backend=backend)

    def forward(self, input: Tensor, hx: Optional[Tensor] = None) -> Tensor:
        input, is_batched = self._batched_input("GRUCell", input)
        if hx is None:
            h = self._zero_state(input)
        else:
            h = self._batched_state("GRUCell", "hidden", hx, is_batched)
        h, _ = self._step("gru", input, h, None)
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
        input, is_batched = self._batched_input("RNNCell", input)
        if hx is None:
            h = self._zero_state(input)
        else:
            h = self._batched_state("RNNCell", "hidden", hx, is_batched)
        h, _ = self._step(f"rnn_{self.nonlinearity}", input, h, None)
        return h if is_batched else h.squeeze(0)


# ---------------------------------------------------------------------------------------------
# What backend="auto" sees of a call (fused_rnn.backends.explain)
# ---------------------------------------------------------------------------------------------


def describe_call(module: nn.Module, input, hx=None, lengths=None):
    """(cell, device, :class:`fused_rnn.dispatch.Call`) of calling ``module`` (a fused_rnn layer
    or cell) on ``input`` in the current grad mode and autocast state: what auto decides by."""
    if isinstance(module, _FusedRNNBase):
        cell = module.mode.lower()
        if isinstance(input, PackedSequence):
            input, lengths = pad_packed_sequence(input, batch_first=module.batch_first)
        batched = input.dim() == 3
        x = input.transpose(0, 1) if batched and module.batch_first else input
        x = x if batched else x.unsqueeze(1)
        h0, c0 = hx if isinstance(hx, tuple) else (hx, None)
        directions = 2 if module.bidirectional else 1
        call = functional.describe_stack(cell, x, h0, c0, module._layer_weights(), directions,
                                         lengths)
    elif isinstance(module, _FusedCellBase):
        cell = {LSTMCell: "lstm", GRUCell: "gru"}.get(type(module))
        cell = cell or f"rnn_{module.nonlinearity}"
        x = input if input.dim() == 2 else input.unsqueeze(0)
        h, c = hx if isinstance(hx, tuple) else (hx, None)
        call = functional.describe_step(cell, x, h, c, *module._weights())
    else:
        raise TypeError(f"expected a fused_rnn layer or cell, got {type(module).__name__}")
    cast = functional._autocast_dtype(x)
    if cast is not None:
        call = dataclasses.replace(call, dtype=dispatch.DTYPE_NAMES[cast])
    return cell, x.device, call
