"""fused_rnn under torch.autocast.

The chosen semantics, on every device and for layers and cells alike: the whole layer runs in
the autocast dtype (input projection, recurrence, states), as cuDNN's RNNs do under CUDA
autocast; output, h_n and c_n come back in that dtype; fp32 parameters and fp32 inputs and
states receive fp32 gradients. float64 is left alone, as autocast leaves float64 tensors.

torch.nn has no single behaviour to copy on the CPU (in torch 2.14 under CPU autocast nn.RNN
returns bfloat16, nn.GRU float32, and nn.LSTM may fail inside oneDNN), so on the CPU the
reference for the numbers is torch.nn run wholly in the low dtype: our error against a float64
run must stay within a small multiple of the error that torch.nn makes in that dtype.
"""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import LAYERS, flatten_states, low_precision_bound, outputs_and_grads

import fused_rnn

CELLS = ["lstm", "gru", "rnn_tanh", "rnn_relu"]
LOW_DTYPES = [torch.bfloat16, torch.float16]
T, B, I, H = 12, 3, 5, 16


def layer_trio(cell, *, device="cpu", **kwargs):
    """A fused_rnn layer (fp32), torch.nn with the same weights in fp32, and torch.nn in fp64."""
    fused_cls, torch_cls, extra = LAYERS[cell]
    kwargs = {**extra, **kwargs}
    reference = torch_cls(I, H, **kwargs).to(device)
    fused = fused_cls(I, H, **kwargs).to(device)
    fused.load_state_dict(reference.state_dict())
    return fused, reference, copy.deepcopy(reference).double()


def grads_by_name(module, grads, n_inputs):
    """The parameter part of outputs_and_grads' gradients, by parameter name."""
    return dict(zip([name for name, _ in module.named_parameters()], grads[n_inputs:]))


@pytest.mark.parametrize("dtype", LOW_DTYPES)
@pytest.mark.parametrize("cell", CELLS)
def test_layer_runs_in_autocast_dtype_cpu(cell, dtype):
    fused, reference, reference64 = layer_trio(cell, num_layers=2, bidirectional=True)
    x = torch.randn(T, B, I, requires_grad=True)

    with torch.autocast("cpu", dtype=dtype):
        outs, grads, seeds = outputs_and_grads(fused, x)
    for out in outs:
        assert out.dtype == dtype
    assert x.grad is None and grads[0].dtype == torch.float32  # grad of the fp32 input
    for name, grad in grads_by_name(fused, grads, 1).items():
        assert grad.dtype == torch.float32, name

    low = copy.deepcopy(reference).to(dtype)
    x_low = x.detach().to(dtype).requires_grad_()
    low_outs, low_grads, _ = outputs_and_grads(low, x_low, seed_grads=seeds)
    x64 = x.detach().double().requires_grad_()
    outs64, grads64, _ = outputs_and_grads(reference64, x64, seed_grads=seeds)
    low_precision_bound(outs, low_outs, outs64)
    low_precision_bound(grads, low_grads, grads64)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_given_fp32_state_is_cast(cell):
    """hx in fp32 under autocast is accepted and runs as if given in the low dtype, and its
    gradient comes back in fp32."""
    fused, _, _ = layer_trio(cell, batch_first=True)
    x = torch.randn(B, T, I)
    h0 = torch.randn(1, B, H, requires_grad=True)
    hx = (h0, torch.randn(1, B, H)) if cell == "lstm" else h0
    lengths = torch.tensor([T, 4, 1])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output, state = fused(x, hx, lengths=lengths)
        low_hx = tuple(h.bfloat16() for h in hx) if cell == "lstm" else hx.bfloat16()
        output_low, state_low = fused(x, low_hx, lengths=lengths)
    assert output.dtype == torch.bfloat16
    torch.testing.assert_close(output, output_low, atol=0, rtol=0)
    for got, want in zip(flatten_states(state), flatten_states(state_low)):
        torch.testing.assert_close(got, want, atol=0, rtol=0)
    output.float().sum().backward()
    assert h0.grad is not None and h0.grad.dtype == torch.float32


CELL_CLASSES = {
    "lstm": (fused_rnn.LSTMCell, torch.nn.LSTMCell, {}),
    "gru": (fused_rnn.GRUCell, torch.nn.GRUCell, {}),
    "rnn_tanh": (fused_rnn.RNNCell, torch.nn.RNNCell, {"nonlinearity": "tanh"}),
    "rnn_relu": (fused_rnn.RNNCell, torch.nn.RNNCell, {"nonlinearity": "relu"}),
}


def cell_outputs_and_grads(cell_module, x, hx, seeds):
    out = cell_module(x, hx)
    outs = list(out) if isinstance(out, tuple) else [out]
    loss = sum((o.double() * s).sum() for o, s in zip(outs, seeds))
    params = list(cell_module.parameters())
    return outs, list(torch.autograd.grad(loss, params))


@pytest.mark.parametrize("dtype", LOW_DTYPES)
@pytest.mark.parametrize("cell", CELLS)
def test_cell_runs_in_autocast_dtype_cpu(cell, dtype):
    fused_cls, torch_cls, extra = CELL_CLASSES[cell]
    reference = torch_cls(I, H, **extra)
    fused = fused_cls(I, H, **extra)
    fused.load_state_dict(reference.state_dict())
    x, h = torch.randn(B, I), torch.randn(B, H)
    hx = (h, torch.randn(B, H)) if cell == "lstm" else h
    seeds = [torch.randn(B, H, dtype=torch.float64) for _ in range(2 if cell == "lstm" else 1)]

    with torch.autocast("cpu", dtype=dtype):
        outs, grads = cell_outputs_and_grads(fused, x, hx, seeds)
    assert all(o.dtype == dtype for o in outs)
    assert all(g.dtype == torch.float32 for g in grads)

    def cast(value, to):
        return tuple(v.to(to) for v in value) if isinstance(value, tuple) else value.to(to)

    low_outs, low_grads = cell_outputs_and_grads(copy.deepcopy(reference).to(dtype), x.to(dtype), cast(hx, dtype), seeds)
    outs64, grads64 = cell_outputs_and_grads(copy.deepcopy(reference).double(), x.double(), cast(hx, torch.float64), seeds)
    low_precision_bound(outs, low_outs, outs64)
    low_precision_bound(grads, low_grads, grads64)


def test_unbatched_cell_without_state_under_autocast():
    cell = fused_rnn.GRUCell(I, H)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = cell(torch.randn(I))
    assert h.shape == (H,) and h.dtype == torch.bfloat16


def test_float64_is_left_alone():
    fused, reference, _ = layer_trio("lstm")
    fused, reference = fused.double(), reference.double()
    x = torch.randn(T, B, I, dtype=torch.float64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output, (h_n, c_n) = fused(x)
    assert output.dtype == h_n.dtype == c_n.dtype == torch.float64
    torch.testing.assert_close(output, reference(x)[0], atol=1e-10, rtol=1e-10)


def test_autocast_disabled_inside_runs_fp32():
    fused, reference, _ = layer_trio("gru")
    x = torch.randn(T, B, I)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with torch.autocast("cpu", enabled=False):
            output, h_n = fused(x)
    assert output.dtype == h_n.dtype == torch.float32
    torch.testing.assert_close(output, reference(x)[0], atol=1e-5, rtol=1e-5)


def test_autocast_under_compile_matches_eager():
    fused, _, _ = layer_trio("lstm", batch_first=True, bidirectional=True)
    x = torch.randn(B, T, I)
    lengths = torch.tensor([T, 4, 1])
    torch._dynamo.reset()
    compiled = torch.compile(fused, fullgraph=True, backend="aot_eager")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output, (h_n, c_n) = compiled(x, lengths=lengths)
        eager_output, (eager_h_n, eager_c_n) = fused(x, lengths=lengths)
    assert output.dtype == h_n.dtype == c_n.dtype == torch.bfloat16
    for got, want in [(output, eager_output), (h_n, eager_h_n), (c_n, eager_c_n)]:
        torch.testing.assert_close(got, want, atol=1e-2, rtol=1e-2)
    output.float().sum().backward()
    assert all(p.grad.dtype == torch.float32 for p in fused.parameters())
    torch._dynamo.reset()


# ---------------------------------------------------------------------------------------------
# GPU: the same semantics as cuDNN under CUDA autocast
# ---------------------------------------------------------------------------------------------


def gpu_backends():
    return [
        "auto",
        pytest.param(
            "triton",
            marks=pytest.mark.skipif(
                torch.cuda.is_available() and not fused_rnn.backends.available("triton", "lstm", "cuda"),
                reason="the Triton backend is not available",
            ),
        ),
    ]


@pytest.mark.cuda
@pytest.mark.parametrize("backend", gpu_backends())
@pytest.mark.parametrize("dtype", LOW_DTYPES)
@pytest.mark.parametrize("cell", CELLS)
def test_layer_matches_cudnn_autocast(cell, dtype, backend):
    fused, reference, reference64 = layer_trio(cell, device="cuda", num_layers=2, bidirectional=True)
    fused.backend = backend
    x = torch.randn(T, B, I, device="cuda", requires_grad=True)
    with torch.autocast("cuda", dtype=dtype):
        outs, grads, seeds = outputs_and_grads(fused, x)
        cudnn_outs, cudnn_grads, _ = outputs_and_grads(reference, x, seed_grads=seeds)
    assert [o.dtype for o in outs] == [o.dtype for o in cudnn_outs] == [dtype] * len(outs)
    assert [g.dtype for g in grads] == [g.dtype for g in cudnn_grads]
    x64 = x.detach().double().requires_grad_()
    with torch.backends.cudnn.flags(enabled=False):
        outs64, grads64, _ = outputs_and_grads(reference64, x64, seed_grads=seeds)
    low_precision_bound(outs, cudnn_outs, outs64)
    low_precision_bound(grads, cudnn_grads, grads64)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", LOW_DTYPES)
@pytest.mark.parametrize("cell", CELLS)
def test_cell_matches_torch_cell_autocast_cuda(cell, dtype):
    fused_cls, torch_cls, extra = CELL_CLASSES[cell]
    reference = torch_cls(I, H, **extra).cuda()
    fused = fused_cls(I, H, **extra).cuda()
    fused.load_state_dict(reference.state_dict())
    x, h = torch.randn(B, I, device="cuda"), torch.randn(B, H, device="cuda")
    hx = (h, torch.randn(B, H, device="cuda")) if cell == "lstm" else h
    seeds = [torch.randn(B, H, dtype=torch.float64, device="cuda") for _ in range(2 if cell == "lstm" else 1)]
    with torch.autocast("cuda", dtype=dtype):
        outs, grads = cell_outputs_and_grads(fused, x, hx, seeds)
        torch_outs, _ = cell_outputs_and_grads(reference, x, hx, seeds)
    assert [o.dtype for o in outs] == [o.dtype for o in torch_outs] == [dtype] * len(outs)
    assert all(g.dtype == torch.float32 for g in grads)
