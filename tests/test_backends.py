"""Backend selection: what "auto" picks, what each backend accepts, and that every available
backend computes the same thing."""

import pytest
import torch

import fused_rnn
from fused_rnn import backends
from helpers import make_pair


def test_auto_on_cpu_is_the_cpu_kernels():
    for cell in backends.CELLS:
        assert backends.auto_backend_name(cell, torch.device("cpu")) == "cpu"
        assert backends.resolve("auto", "cpu", cell=cell).name == "cpu"


def test_auto_without_fused_kernels_falls_back_to_reference():
    # no fused kernel runs on the meta device; the reference loops run anywhere
    assert backends.auto_backend_name("gru", torch.device("meta")) == "reference"
    layer = fused_rnn.GRU(3, 4, device="meta")
    out, h_n = layer(torch.empty(5, 2, 3, device="meta"))
    assert out.shape == (5, 2, 4) and out.device.type == "meta" and h_n.shape == (1, 2, 4)


def test_cpu_and_cuda_backends_need_their_device():
    assert backends.available("cpu", "lstm", "cpu")
    assert not backends.available("cpu", "lstm", "meta")
    assert not backends.available("cuda", "lstm", "cpu")
    with pytest.raises(RuntimeError, match="backend 'cpu' is not available: it runs on CPU tensors"):
        backends.resolve("cpu", "meta", cell="lstm")


def test_unknown_names():
    with pytest.raises(ValueError, match="backend must be one of"):
        backends.resolve("fast", "cpu", cell="lstm")
    with pytest.raises(ValueError, match="cell must be one of"):
        backends.resolve("auto", "cpu", cell="mgu")


@pytest.mark.parametrize("cell", backends.CELLS)
def test_available_backends_agree_on_cpu(cell):
    """Every backend that runs on CPU tensors gives the same outputs and gradients."""
    names = [n for n in ("cpu", "triton", "reference") if backends.available(n, cell, "cpu")]
    assert "cpu" in names and "reference" in names
    results = {}
    for name in names:
        torch.manual_seed(0)  # the same weights and input for every backend
        layer, _ = make_pair(cell, 3, 8, num_layers=2, bidirectional=True, backend=name)
        x = torch.randn(4, 2, 3, requires_grad=True)
        out, _ = layer(x, lengths=[4, 2])
        grads = torch.autograd.grad(out.square().sum(), [x, *layer.parameters()])
        results[name] = (out, grads)
    out_ref, grads_ref = results.pop("reference")
    for name, (out, grads) in results.items():
        torch.testing.assert_close(out, out_ref, atol=1e-5, rtol=1e-5, msg=name)
        for g, g_ref in zip(grads, grads_ref):
            torch.testing.assert_close(g, g_ref, atol=1e-5, rtol=1e-5, msg=name)
