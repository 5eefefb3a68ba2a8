"""What the tests, the benchmark's correctness gate and ``python -m fused_rnn.check`` share: a
fused_rnn layer beside torch.nn's with the same weights, the outputs and every gradient of a
layer, and the rule by which ours and torch.nn's are judged close (DESIGN.md, Numerics).

The rule, per tensor (output, h_n, c_n, and each gradient):

* fp32 and fp64, against torch.nn in the same dtype:
  ``max|ours - torch.nn| <= rtol * max(1, max|torch.nn|)``, rtol by purpose (small shapes
  ~1e-5 in fp32; the benchmark's long sequences allow more).
* fp16 and bf16 (the flash-attention rule): ours and torch.nn's, both in that dtype, against
  torch.nn in high precision (fp64, or fp32 without TF32) fed the same rounded weights and
  input. Ours must stay within a small multiple of torch.nn's own error, plus a floor:
  ``err(ours) <= LOW_PRECISION_FACTOR * err(torch.nn) + LOW_PRECISION_FLOOR * max(1, max|ref|)``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import modules

#: fused_rnn layer class, torch.nn layer class, extra constructor kwargs, by cell
LAYERS = {
    "lstm": (modules.LSTM, torch.nn.LSTM, {}),
    "gru": (modules.GRU, torch.nn.GRU, {}),
    "rnn_tanh": (modules.RNN, torch.nn.RNN, {"nonlinearity": "tanh"}),
    "rnn_relu": (modules.RNN, torch.nn.RNN, {"nonlinearity": "relu"}),
}

LOW_PRECISION_FACTOR = 3.0
LOW_PRECISION_FLOOR = 1e-3


def make_pair(cell: str, *args, dtype=torch.float32, device="cpu", backend="auto", **kwargs):
    """A fused_rnn layer and the torch.nn layer with the same weights: (fused, torch.nn)."""
    fused_cls, torch_cls, extra = LAYERS[cell]
    kwargs = {**extra, **kwargs}
    reference = torch_cls(*args, **kwargs).to(device=device, dtype=dtype)
    fused = fused_cls(*args, backend=backend, **kwargs).to(device=device, dtype=dtype)
    fused.load_state_dict(reference.state_dict())
    return fused, reference


def flatten_states(states):
    """h_n, or (h_n, c_n), as a tuple."""
    return states if isinstance(states, tuple) else (states,)


def outputs_and_grads(module, x, hx=None, *, seed_grads=None, **forward_kwargs):
    """Runs forward and backward of a random linear function of every output; returns the
    outputs, the gradients of the input, of hx and of every parameter (None where there is
    none), and the weights of that function (``seed_grads``: pass them to the next module
    compared, so that both are differentiated along the same direction)."""
    inputs = [x] + [h for h in flatten_states(hx) if h is not None] if hx is not None else [x]
    output, states = module(x, hx, **forward_kwargs) if hx is not None else module(x, **forward_kwargs)
    data = output.data if isinstance(output, torch.nn.utils.rnn.PackedSequence) else output
    outs = [data, *flatten_states(states)]
    if seed_grads is None:
        generator = torch.Generator().manual_seed(1234)
        seed_grads = [torch.randn(o.shape, generator=generator, dtype=torch.float64) for o in outs]
    loss = sum((o * g.to(o.dtype).to(o.device)).sum() for o, g in zip(outs, seed_grads))
    tracked = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]
    tracked += [p for p in module.parameters()]
    grads = torch.autograd.grad(loss, tracked, allow_unused=True)
    return outs, list(grads), seed_grads


def max_abs_error(a: Tensor, b: Tensor) -> float:
    """max |a - b| in at least fp32 (NaN if either has a NaN where the other differs)."""
    if a.numel() == 0:
        return 0.0
    dtype = torch.promote_types(torch.promote_types(a.dtype, b.dtype), torch.float32)
    return (a.to(dtype) - b.to(dtype).to(a.device)).abs().max().item()


def scale(t: Tensor) -> float:
    """max(1, max|t|): what the relative parts of the bounds are relative to."""
    return max(1.0, t.abs().max().item()) if t.numel() else 1.0


def same_dtype_bound(expected: Tensor, rtol: float) -> float:
    """The largest error allowed against torch.nn's ``expected`` in the same dtype."""
    return rtol * scale(expected)


def low_precision_bound(torch_error: float, reference: Tensor,
                        floor: float = LOW_PRECISION_FLOOR) -> float:
    """The largest error allowed against the high-precision ``reference`` for an fp16/bf16
    result, when torch.nn's own result in that dtype is ``torch_error`` away from it (``floor``
    relative to the reference's scale)."""
    return LOW_PRECISION_FACTOR * torch_error + floor * scale(reference)
