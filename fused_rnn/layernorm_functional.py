"""The layer stack of the layer-normalised LSTM and GRU with zoneout, around their recurrence ops.

Per layer and direction: the input projection of all steps at once, ``xw = x W_ih^T`` (one
GEMM), then one fused recurrence op (``fused_rnn::layernorm_{lstm,gru}_forward``: the recurrent
product, its LN, the gates, the cell LN and zoneout in each step's pass). The input side's LN,
``gx = LN(xw; γ_ih) + b`` over each of the T * B rows (the bias as its β), is the op's own: its
backward then keeps xw alone for the input side. Directions, dropout between layers and
variable lengths as in :mod:`fused_rnn.functional`. Zoneout masks are drawn from torch's
generator (``torch.manual_seed`` reproduces them) in training; in eval the kernels use the
expectation. The readable definition is in :mod:`fused_rnn.reference`.

Weights per layer and direction (``layer * num_directions + direction``) as
:class:`LSTMWeights` / :class:`GRUWeights`, in the shapes of the modules' parameters.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from . import _layernorm_ops  # noqa: F401  (fake kernels of the ops)
from . import backends, reference
from .functional import _autocast_dtype, _check_hidden, _check_input, check_lengths, layer_stack

BACKENDS = ("auto", "cpu", "cuda", "triton", "reference")
_GATES = {"lstm": 4, "gru": 3}


class LSTMWeights(NamedTuple):
    """One layer and direction of a LayerNormLSTM (G = 4 gates i, f, g, o)."""

    w_ih: Tensor             # [4H, I]
    w_hh: Tensor             # [4H, H]
    bias: Optional[Tensor]   # [4H] b (the input LN's β), or None
    gamma_ih: Tensor         # [4H]
    gamma_hh: Tensor         # [4H]
    gamma_c: Tensor          # [H]
    beta_c: Tensor           # [H]


class GRUWeights(NamedTuple):
    """One layer and direction of a LayerNormGRU (G = 3 gates r, z, n)."""

    w_ih: Tensor             # [3H, I]
    w_hh: Tensor             # [3H, H]
    b_ih: Optional[Tensor]   # [3H] the input LN's β, or None
    b_hh: Optional[Tensor]   # [3H] the recurrent LN's β, or None
    gamma_ih: Tensor         # [3H]
    gamma_hh: Tensor         # [3H]


# ---------------------------------------------------------------------------------------------
# Backends: which implementation of the recurrence runs a call.
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Backend:
    """``lstm(xw, gamma_ih, bias, w_hh, gamma_hh, gamma_c, beta_c, h0, c0, mask_h, mask_c,
    zoneout_h, zoneout_c, lengths, reverse, eps) -> (y, h_n, c_n)``, ``gru(xw, gamma_ih, b_ih,
    w_hh, gamma_hh, b_hh, h0, mask_h, zoneout_h, lengths, reverse, eps) -> (y, h_n)``, and the
    input projection."""

    name: str
    lstm: Callable
    gru: Callable
    linear: Callable = F.linear


def _needs_grad(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _op_backend(name: str, suffix: str, linear: Callable = F.linear) -> _Backend:
    """The ops ``fused_rnn::layernorm_{lstm,gru}_forward{suffix}``, asked for the workspace only
    when a gradient will be taken."""

    def lstm(xw, gamma_ih, bias, w_hh, gamma_hh, gamma_c, beta_c, h0, c0, mask_h, mask_c,
             zoneout_h, zoneout_c, lengths, reverse, eps):
        op = getattr(torch.ops.fused_rnn, f"layernorm_lstm_forward{suffix}")
        save = _needs_grad(xw, gamma_ih, bias, w_hh, gamma_hh, gamma_c, beta_c, h0, c0)
        out = op(xw, gamma_ih, bias, w_hh, gamma_hh, gamma_c, beta_c, h0, c0, mask_h, mask_c,
                 zoneout_h, zoneout_c, lengths, reverse, eps, save)
        return out[0], out[1], out[2]

    def gru(xw, gamma_ih, b_ih, w_hh, gamma_hh, b_hh, h0, mask_h, zoneout_h, lengths, reverse,
            eps):
        op = getattr(torch.ops.fused_rnn, f"layernorm_gru_forward{suffix}")
        save = _needs_grad(xw, gamma_ih, b_ih, w_hh, gamma_hh, b_hh, h0)
        out = op(xw, gamma_ih, b_ih, w_hh, gamma_hh, b_hh, h0, mask_h, zoneout_h, lengths,
                 reverse, eps, save)
        return out[0], out[1]

    return _Backend(name, lstm, gru, linear)


def _reference_lstm(xw, gamma_ih, bias, w_hh, gamma_hh, gamma_c, beta_c, h0, c0, mask_h, mask_c,
                    zoneout_h, zoneout_c, lengths, reverse, eps):
    gx = F.layer_norm(xw, (xw.shape[-1],), gamma_ih, bias, eps)
    return reference.layernorm_lstm(gx, w_hh, gamma_hh, gamma_c, beta_c, h0, c0, mask_h, mask_c,
                                    zoneout_h, zoneout_c, lengths, reverse, eps)


def _reference_gru(xw, gamma_ih, b_ih, w_hh, gamma_hh, b_hh, h0, mask_h, zoneout_h, lengths,
                   reverse, eps):
    gx = F.layer_norm(xw, (xw.shape[-1],), gamma_ih, b_ih, eps)
    return reference.layernorm_gru(gx, w_hh, gamma_hh, b_hh, h0, mask_h, zoneout_h, lengths,
                                   reverse, eps)


_BUILT: dict[str, _Backend] = {
    "cpu": _op_backend("cpu", "", linear=torch.ops.fused_rnn.linear),
    "reference": _Backend("reference", _reference_lstm, _reference_gru),
}


# torch.compile cannot trace the import; the answer cannot change within a process.
@torch.compiler.assume_constant_result
def _triton_unavailable_reason(device: torch.device) -> str | None:
    module = backends._triton_module()
    if module is None:
        return "Triton or fused_rnn.triton_kernels could not be imported"
    if not module.is_available(device):
        return f"its kernels do not run on {device.type} tensors"
    if not hasattr(torch.ops.fused_rnn, "layernorm_lstm_forward_triton"):
        return "the Triton ops of the layer-normalised cells are not registered"
    if "triton" not in _BUILT:
        _BUILT["triton"] = _op_backend("triton", "_triton")
    return None


def _unavailable_reason(name: str, device: torch.device) -> str | None:
    if name == "cpu":
        return None if device.type == "cpu" else f"it runs on CPU tensors, got {device.type}"
    if name in ("cuda", "triton"):
        if name == "cuda" and device.type != "cuda":
            return f"it runs on CUDA tensors, got {device.type}"
        return _triton_unavailable_reason(device)
    return None  # reference runs anywhere


def available(backend: str, device: torch.device | str) -> bool:
    """Whether ``backend`` runs the layer-normalised cells on ``device`` (``"torch"`` never:
    torch.nn has no such layers)."""
    device = torch.device(device)
    if backend not in BACKENDS and backend in backends.BACKENDS:
        return False
    name = auto_backend_name(device) if backend == "auto" else check_backend(backend)
    return _unavailable_reason(name, device) is None


def auto_backend_name(device: torch.device) -> str:
    """What ``"auto"`` runs: the C++ kernels on the CPU; elsewhere the reference loop, until a GPU
    run has confirmed the Triton kernels (a kernel that has not passed on real hardware is never
    the default: pass ``backend="triton"`` to use them)."""
    return "cpu" if device.type == "cpu" else "reference"


def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(
            f"backend must be one of {', '.join(map(repr, BACKENDS))} for the layer-normalised "
            f"cells, got {backend!r}"
        )
    return backend


def resolve(backend: str, device: torch.device | str) -> _Backend:
    """The implementation of the layer-normalised recurrences for tensors on ``device``. On
    CUDA tensors ``"cuda"`` runs the Triton kernels (there are no CUDA C++ kernels for these
    cells)."""
    check_backend(backend)
    device = torch.device(device)
    if backend == "auto":
        backend = auto_backend_name(device)
    reason = _unavailable_reason(backend, device)
    if reason is not None:
        raise RuntimeError(f"fused_rnn backend {backend!r} is not available: {reason}")
    return _BUILT["triton" if backend == "cuda" else backend]


# ---------------------------------------------------------------------------------------------
# Checks beyond those of fused_rnn.functional.
# ---------------------------------------------------------------------------------------------


def check_options(zoneout: float, zoneout_cell: float, eps: float) -> None:
    """zoneout probabilities in [0, 1), eps > 0: refused at construction, before any kernel."""
    for name, p in (("zoneout", zoneout), ("zoneout_cell", zoneout_cell)):
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p < 1:
            raise ValueError(f"{name} must be a probability in [0, 1), got {p!r}")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
        raise ValueError(f"eps must be a positive number, got {eps!r}")


def _check_weights(cell: str, weights: Sequence, num_directions: int) -> None:
    kind = LSTMWeights if cell == "lstm" else GRUWeights
    if len(weights) == 0 or len(weights) % num_directions != 0:
        raise ValueError(
            f"expected weights for num_layers * {num_directions} layer-directions, got {len(weights)}"
        )
    for index, layer in enumerate(weights):
        if not isinstance(layer, kind):
            raise TypeError(f"weights[{index}] must be a {kind.__name__}, got {type(layer).__name__}")
        G = _GATES[cell]
        if layer.w_hh.dim() != 2 or layer.w_hh.shape[0] != G * layer.w_hh.shape[1]:
            raise ValueError(
                f"weights[{index}]: expected w_hh of shape ({G} * hidden_size, hidden_size), got "
                f"{tuple(layer.w_hh.shape)}"
            )
        H = layer.w_hh.shape[1]
        if layer.w_ih.dim() != 2 or layer.w_ih.shape[0] != G * H:
            raise ValueError(f"weights[{index}]: expected w_ih of shape ({G * H}, input_size), "
                             f"got {tuple(layer.w_ih.shape)}")
        if index >= num_directions and layer.w_ih.shape[1] != num_directions * H:
            raise ValueError(
                f"weights[{index}]: w_ih of a layer above the first takes the previous layer's "
                f"output of width {num_directions * H}, got {layer.w_ih.shape[1]} columns"
            )
        sizes = {"bias": G * H, "b_ih": G * H, "b_hh": G * H, "gamma_ih": G * H,
                 "gamma_hh": G * H, "gamma_c": H, "beta_c": H}
        for name, tensor in layer._asdict().items():
            if name in sizes and tensor is not None and tuple(tensor.shape) != (sizes[name],):
                raise ValueError(f"weights[{index}]: expected {name} of shape ({sizes[name]},), "
                                 f"got {tuple(tensor.shape)}")
        if cell == "gru" and (layer.b_ih is None) != (layer.b_hh is None):
            raise ValueError(f"weights[{index}]: give both b_ih and b_hh, or neither")


# ---------------------------------------------------------------------------------------------
# The stack.
# ---------------------------------------------------------------------------------------------


def _zoneout_mask(p: float, training: bool, shape: tuple, device: torch.device) -> Optional[Tensor]:
    """bool ``shape`` ([T, B, H]): True where a unit keeps its previous state (training with
    p > 0), drawn from torch's generator; None otherwise (the kernels then weigh by p, the
    expectation in eval, or do nothing for p = 0)."""
    if not training or p == 0:
        return None
    return torch.rand(shape, device=device) < p


def _run_layer(impl: _Backend, cell: str, x: Tensor, weights, h0, c0, lengths, reverse, *,
               zoneout, zoneout_cell, training, eps):
    """One layer and direction: (y, h_n, c_n or None)."""
    H = weights.w_hh.shape[1]
    # The input projection of all steps: one GEMM (its LN is the op's).
    xw = impl.linear(x, weights.w_ih, None)
    shape = (x.shape[0], x.shape[1], H)
    mask_h = _zoneout_mask(zoneout, training, shape, x.device)
    if cell == "lstm":
        mask_c = _zoneout_mask(zoneout_cell, training, shape, x.device)
        return impl.lstm(xw, weights.gamma_ih, weights.bias, weights.w_hh, weights.gamma_hh,
                         weights.gamma_c, weights.beta_c, h0, c0, mask_h, mask_c, float(zoneout),
                         float(zoneout_cell), lengths, reverse, eps)
    y, h_n = impl.gru(xw, weights.gamma_ih, weights.b_ih, weights.w_hh, weights.gamma_hh,
                      weights.b_hh, h0, mask_h, float(zoneout), lengths, reverse, eps)
    return y, h_n, None


def stack(
    cell: str,
    input: Tensor,
    h0: Optional[Tensor],
    c0: Optional[Tensor],
    weights: Sequence,
    *,
    bidirectional: bool,
    dropout: float,
    training: bool,
    batch_first: bool,
    lengths,
    zoneout: float,
    zoneout_cell: float,
    eps: float,
    backend: str,
    own_weights: bool = False,
):
    """The layers of ``cell`` (``"lstm"`` or ``"gru"``) on padded input; returns (output, h_n,
    c_n or None). own_weights: the weights are a module's own parameters, in the right shapes
    by construction (checked by the ops all the same)."""
    num_directions = 2 if bidirectional else 1
    if not own_weights:
        _check_weights(cell, weights, num_directions)
        check_options(zoneout, zoneout_cell, eps)
    num_layers = len(weights) // num_directions
    x = input.transpose(0, 1) if batch_first else input  # time-major [T, B, I]
    cast_dtype = _autocast_dtype(x)
    autocast = cast_dtype is not None
    _check_input(x, weights, autocast)
    T, B = x.shape[0], x.shape[1]
    hidden = weights[0].w_hh.shape[1]
    dtype = cast_dtype if autocast else x.dtype
    states = num_layers * num_directions
    if h0 is None:
        h0 = x.new_zeros(states, B, hidden, dtype=dtype)
    else:
        _check_hidden("hidden[0]" if cell == "lstm" else "hidden", h0, (states, B, hidden), x,
                      autocast)
    if cell == "lstm":
        if c0 is None:
            c0 = x.new_zeros(states, B, hidden, dtype=dtype)
        else:
            _check_hidden("hidden[1]", c0, (states, B, hidden), x, autocast)
    if T == 0:
        raise RuntimeError("Expected sequence length to be larger than 0 in RNN")  # torch.nn's
    lengths = check_lengths(lengths, T, B, x.device)

    if autocast:
        x, h0 = x.to(dtype), h0.to(dtype)
        c0 = c0.to(dtype) if c0 is not None else None
        weights = [type(w)(*(t.to(dtype) if t is not None else None for t in w)) for w in weights]

    impl = resolve(backend, x.device)

    def run_layer(x, index, h0, c0, reverse):
        return _run_layer(impl, cell, x, weights[index], h0, c0, lengths, reverse,
                          zoneout=zoneout, zoneout_cell=zoneout_cell, training=training, eps=eps)

    return layer_stack(run_layer, x, h0, c0, num_layers=num_layers,
                       num_directions=num_directions, dropout=dropout, training=training,
                       batch_first=batch_first)


def layernorm_lstm(
    input: Tensor,
    hx: Optional[tuple[Tensor, Tensor]],
    weights: Sequence[LSTMWeights],
    *,
    bidirectional: bool = False,
    dropout: float = 0.0,
    training: bool = False,
    batch_first: bool = False,
    lengths=None,
    zoneout: float = 0.0,
    zoneout_cell: float = 0.0,
    eps: float = 1e-5,
    backend: str = "auto",
) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """A multi-layer layer-normalised LSTM with zoneout on padded input; arguments as
    :func:`fused_rnn.functional.lstm`, with ``zoneout`` (of h), ``zoneout_cell`` (of c) and
    ``eps``. Returns ``output`` and ``(h_n, c_n)``."""
    h0, c0 = hx if hx is not None else (None, None)
    output, h_n, c_n = stack(
        "lstm", input, h0, c0, weights, bidirectional=bidirectional, dropout=dropout,
        training=training, batch_first=batch_first, lengths=lengths, zoneout=zoneout,
        zoneout_cell=zoneout_cell, eps=eps, backend=backend,
    )
    return output, (h_n, c_n)


def layernorm_gru(
    input: Tensor,
    hx: Optional[Tensor],
    weights: Sequence[GRUWeights],
    *,
    bidirectional: bool = False,
    dropout: float = 0.0,
    training: bool = False,
    batch_first: bool = False,
    lengths=None,
    zoneout: float = 0.0,
    eps: float = 1e-5,
    backend: str = "auto",
) -> tuple[Tensor, Tensor]:
    """A multi-layer layer-normalised GRU with zoneout on padded input; arguments as
    :func:`layernorm_lstm` (``hx`` is ``h0``, no ``zoneout_cell``)."""
    output, h_n, _ = stack(
        "gru", input, hx, None, weights, bidirectional=bidirectional, dropout=dropout,
        training=training, batch_first=batch_first, lengths=lengths, zoneout=zoneout,
        zoneout_cell=0.0, eps=eps, backend=backend,
    )
    return output, h_n
