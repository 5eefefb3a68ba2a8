"""Comparison helpers shared by the tests."""

from __future__ import annotations

import torch

import fused_rnn

#: fused_rnn class, torch.nn class, extra constructor kwargs
LAYERS = {
    "lstm": (fused_rnn.LSTM, torch.nn.LSTM, {}),
    "gru": (fused_rnn.GRU, torch.nn.GRU, {}),
    "rnn_tanh": (fused_rnn.RNN, torch.nn.RNN, {"nonlinearity": "tanh"}),
    "rnn_relu": (fused_rnn.RNN, torch.nn.RNN, {"nonlinearity": "relu"}),
}


#: fused_rnn cell class, torch.nn cell class, extra constructor kwargs
CELL_MODULES = {
    "lstm": (fused_rnn.LSTMCell, torch.nn.LSTMCell, {}),
    "gru": (fused_rnn.GRUCell, torch.nn.GRUCell, {}),
    "rnn_tanh": (fused_rnn.RNNCell, torch.nn.RNNCell, {"nonlinearity": "tanh"}),
    "rnn_relu": (fused_rnn.RNNCell, torch.nn.RNNCell, {"nonlinearity": "relu"}),
}


class Unrolled(torch.nn.Module):
    """A cell run over the steps of a sequence, the way cells are used: (output, final state)
    like a layer's."""

    def __init__(self, cell_module):
        super().__init__()
        self.cell = cell_module

    def forward(self, x, hx=None):
        h, outputs = hx, []
        for x_t in x:
            h = self.cell(x_t, h)
            outputs.append(h[0] if isinstance(h, tuple) else h)
        return torch.stack(outputs), h


def make_cell_pair(cell: str, *args, dtype=torch.float32, backend="auto", **kwargs):
    """A torch.nn cell and the fused_rnn cell with the same weights, each unrolled over time."""
    fused_cls, torch_cls, extra = CELL_MODULES[cell]
    reference = torch_cls(*args, dtype=dtype, **extra, **kwargs)
    fused = fused_cls(*args, dtype=dtype, backend=backend, **extra, **kwargs)
    fused.load_state_dict(reference.state_dict())
    return Unrolled(fused), Unrolled(reference)


def make_pair(cell: str, *args, dtype=torch.float32, device="cpu", backend="auto", **kwargs):
    """A torch.nn layer and the fused_rnn layer with the same weights."""
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
    outputs followed by the gradients of the input, of hx and of every parameter."""
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


def assert_all_close(actual, expected, *, atol, rtol=0.0, names=None):
    assert len(actual) == len(expected)
    for index, (a, e) in enumerate(zip(actual, expected)):
        name = names[index] if names else f"#{index}"
        assert a is not None and e is not None, f"{name}: missing gradient"
        assert a.shape == e.shape, f"{name}: shape {tuple(a.shape)} != {tuple(e.shape)}"
        torch.testing.assert_close(a.double(), e.double(), atol=atol, rtol=rtol, msg=lambda m: f"{name}: {m}")


def low_precision_bound(ours, reference_lowp, reference_fp64, *, factor: float = 3.0, floor: float = 1e-3):
    """The flash-attention rule: our error against an fp64 reference must stay within a small
    multiple of the error the reference implementation makes in the same low precision."""
    for index, (o, lp, hp) in enumerate(zip(ours, reference_lowp, reference_fp64)):
        ours_err = (o.double() - hp.double()).abs().max().item()
        ref_err = (lp.double() - hp.double()).abs().max().item()
        assert ours_err <= factor * ref_err + floor, (
            f"#{index}: error {ours_err:.3e} exceeds {factor} x the reference's {ref_err:.3e} + {floor}"
        )


def assert_same_nonfinite(ours, theirs, label, *, atol=1e-4, rtol=1e-3):
    """NaN, +inf and -inf in the same places in each pair of tensors, the finite values close."""
    for index, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        for kind, test in (("NaN", torch.isnan), ("+inf", torch.isposinf), ("-inf", torch.isneginf)):
            assert torch.equal(test(a), test(b)), (
                f"{label}, tensor #{index}: {kind} at {test(a).sum()} places, expected "
                f"{test(b).sum()}")
        finite = torch.isfinite(b)
        torch.testing.assert_close(a[finite], b[finite], atol=atol, rtol=rtol,
                                   msg=lambda m: f"{label}, tensor #{index}: {m}")
