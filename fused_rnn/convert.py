"""Swap torch.nn's recurrent layers and cells in a model for fused_rnn's, or back, keeping the
weights: :func:`convert`."""

from __future__ import annotations

import copy
import warnings

from torch import nn

from . import backends
from .modules import GRU, LSTM, RNN, GRUCell, LSTMCell, RNNCell

_TORCH_TO_FUSED: dict[type, type] = {
    nn.LSTM: LSTM,
    nn.GRU: GRU,
    nn.RNN: RNN,
    nn.LSTMCell: LSTMCell,
    nn.GRUCell: GRUCell,
    nn.RNNCell: RNNCell,
}
_FUSED_TO_TORCH: dict[type, type] = {fused: torch_cls for torch_cls, fused in _TORCH_TO_FUSED.items()}

# Moved (the same dict objects) from the old module to the new one, so that hooks keep firing
# and the handles that registered them can still remove them.
_HOOK_DICTS = (
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_backward_pre_hooks",
    "_backward_hooks",
    "_is_full_backward_hook",
    "_state_dict_hooks",
    "_state_dict_pre_hooks",
    "_load_state_dict_pre_hooks",
    "_load_state_dict_post_hooks",
)


def convert(model: nn.Module, to: str = "fused", *, inplace: bool = False, backend: str = "auto") -> nn.Module:
    """Replaces every ``torch.nn.LSTM``/``GRU``/``RNN``/``LSTMCell``/``GRUCell``/``RNNCell`` in
    ``model`` with the fused_rnn equivalent (``to="fused"``), or every fused_rnn layer and cell
    with the torch.nn one (``to="torch"``), at any depth (inside ``Sequential``, ``ModuleList``,
    ``ModuleDict`` or any module). Returns the converted model; use the return value (when
    ``model`` is itself a layer, it is the new layer).

    The new modules get the same configuration (sizes, layers, bias, ``batch_first``, dropout,
    directions, ``proj_size``, nonlinearity), train/eval mode and hooks. Parameter names and
    shapes are the same in both libraries, so state_dicts and checkpoints load either way.

    Args:
        model: the model, or a single layer or cell.
        to: ``"fused"`` or ``"torch"``.
        inplace: ``False`` (default): ``model`` is deep-copied first and left as it was; the
            result has its own parameters. ``True``: the layers are swapped inside ``model`` and
            the new layers hold the very same ``Parameter`` objects, so an optimizer (and
            anything else) already holding them keeps working; device, dtype and
            ``requires_grad`` are those of the parameters.
        backend: the ``backend=`` of the new fused_rnn modules (``"auto"``, ``"cpu"``,
            ``"cuda"``, ``"triton"``, ``"reference"``); unused with ``to="torch"``.

    Only modules of exactly these classes are converted. A subclass (say ``class
    MyLSTM(torch.nn.LSTM)`` with its own ``forward``, or a layer under weight
    parametrization) is left as it is, with a warning, since its behaviour may differ from
    the class it extends; its children are still converted. So is a module whose parameters
    are not the plain set (e.g. ``torch.nn.utils.weight_norm`` or pruning renamed them).

    Convert before wrapping the model in ``torch.compile``, DDP or FSDP.
    """
    if to not in ("fused", "torch"):
        raise ValueError(f"to must be 'fused' or 'torch', got {to!r}")
    if backend not in backends.BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(map(repr, backends.BACKENDS))}, got {backend!r}")
    mapping = _TORCH_TO_FUSED if to == "fused" else _FUSED_TO_TORCH
    if not inplace:
        model = copy.deepcopy(model)
    converter = _Converter(mapping, backend)
    model = converter.swap(model, path="")
    for message in converter.left_as_is:
        warnings.warn(f"fused_rnn.convert: {message}", stacklevel=2)
    return model


class _Converter:
    def __init__(self, mapping: dict[type, type], backend: str):
        self.mapping = mapping
        self.backend = backend
        # id(old) -> (old, new): a module reachable twice becomes one new module, and the old
        # one is kept alive so that its id cannot be reused by a module made later.
        self.done: dict[int, tuple[nn.Module, nn.Module]] = {}
        self.left_as_is: list[str] = []  # why modules of the converted kinds were not converted

    def swap(self, module: nn.Module, path: str) -> nn.Module:
        if id(module) in self.done:
            return self.done[id(module)][1]
        target = self.mapping.get(type(module))
        new = self._rebuild(module, target, path) if target is not None else None
        if new is None:
            if target is None:
                self._warn_if_subclass(module, path)
            new = module
            for name, child in list(module.named_children()):
                converted = self.swap(child, f"{path}.{name}" if path else name)
                if converted is not child:
                    setattr(module, name, converted)
        self.done[id(module)] = (module, new)
        return new

    def _warn_if_subclass(self, module: nn.Module, path: str) -> None:
        for cls in self.mapping:
            if isinstance(module, cls):
                self.left_as_is.append(
                    f"left {type(module).__name__} at {path or 'the root'!r} as it is: it "
                    f"subclasses {cls.__module__}.{cls.__qualname__}, and only exact classes are "
                    f"converted"
                )
                return

    def _rebuild(self, old: nn.Module, target: type, path: str) -> nn.Module | None:
        """The new module holding ``old``'s parameters, or None (with a warning) when ``old``
        carries more than the plain parameters of its class."""
        kwargs = _constructor_kwargs(old)
        if target in _FUSED_TO_TORCH:
            kwargs["backend"] = self.backend
        with warnings.catch_warnings():
            # e.g. dropout with one layer: the user was told when building the original
            warnings.simplefilter("ignore")
            new = target(**kwargs, device="meta")  # placeholders only: replaced just below

        old_params = dict(old.named_parameters(recurse=False))
        expected = dict(new.named_parameters(recurse=False))
        extra = list(old._buffers) + list(old._modules)
        if set(old_params) != set(expected) or extra:
            self.left_as_is.append(
                f"left {type(old).__name__} at {path or 'the root'!r} as it is: its parameters, "
                f"buffers and submodules {sorted(set(old_params) | set(extra))} are not those of a "
                f"plain {type(old).__name__} {sorted(expected)} (weight norm, pruning?)"
            )
            return None
        for name, param in old_params.items():
            setattr(new, name, param)
        if isinstance(new, nn.RNNBase):
            new._init_flat_weights()  # torch.nn: re-read the weights, flatten them for cuDNN
        new.train(old.training)
        for name in _HOOK_DICTS:
            if hasattr(old, name):
                object.__setattr__(new, name, getattr(old, name))
        return new


def _constructor_kwargs(module: nn.Module) -> dict:
    if isinstance(module, nn.RNNBase):
        kwargs = dict(
            input_size=module.input_size,
            hidden_size=module.hidden_size,
            num_layers=module.num_layers,
            bias=module.bias,
            batch_first=module.batch_first,
            dropout=module.dropout,
            bidirectional=module.bidirectional,
        )
        if module.mode == "LSTM":
            kwargs["proj_size"] = module.proj_size
        elif module.mode.startswith("RNN"):
            kwargs["nonlinearity"] = module.nonlinearity
        return kwargs
    kwargs = dict(input_size=module.input_size, hidden_size=module.hidden_size, bias=module.bias)
    if hasattr(module, "nonlinearity"):  # RNNCell
        kwargs["nonlinearity"] = module.nonlinearity
    return kwargs
