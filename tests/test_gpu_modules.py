"""The layers on a GPU, every GPU backend, against torch.nn (cuDNN) and an fp64 CPU reference:
fp32 with TF32 off, bf16 and fp16 by the low-precision rule, lengths, packed input,
bidirectional and multi-layer stacks. Skipped without a GPU (run with ``pytest -m cuda``)."""

import copy

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

from fused_rnn import backends
from fused_rnn.testing import low_precision_bound
from helpers import LAYERS, flatten_states, make_pair

pytestmark = pytest.mark.cuda

GPU_BACKENDS = ["cuda", "triton"]


@pytest.fixture(autouse=True)
def exact_fp32():
    """fp32 comparisons without TF32 in cuDNN or in the matmuls around it."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def require(backend, cell, proj=False):
    if not backends.available(backend, cell, "cuda", proj=proj):
        pytest.skip(f"backend {backend!r} is not available for {cell} on this machine")


def run(module, x, **kwargs):
    out, states = module(x, **kwargs)
    data = out.data if isinstance(out, torch.nn.utils.rnn.PackedSequence) else out
    return [data, *flatten_states(states)]


def grads_of(module, x, outs, seeds):
    loss = sum((o.float() * s).sum() for o, s in zip(outs, seeds))
    return torch.autograd.grad(loss, [x, *module.parameters()])


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("cell", list(LAYERS))
@pytest.mark.parametrize("options", [
    dict(num_layers=1),
    dict(num_layers=2, bidirectional=True),
    dict(num_layers=3, batch_first=True, bias=False),
], ids=str)
@pytest.mark.parametrize("size", [(33, 5, 24, 40), (1, 1, 3, 3), (17, 64, 128, 256)], ids=str)
def test_fp32_matches_cudnn(backend, cell, options, size):
    require(backend, cell)
    T, B, I, H = size
    fused, reference = make_pair(cell, I, H, device="cuda", backend=backend, **options)
    shape = (B, T, I) if options.get("batch_first") else (T, B, I)
    x = torch.randn(*shape, device="cuda", requires_grad=True)
    x_ref = x.detach().clone().requires_grad_()
    outs, ref_outs = run(fused, x), run(reference, x_ref)
    seeds = [torch.randn_like(o) for o in outs]
    for a, b in zip(outs, ref_outs):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=2e-5)
    for a, b in zip(grads_of(fused, x, outs, seeds), grads_of(reference, x_ref, ref_outs, seeds)):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("cell", list(LAYERS))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("size", [(64, 16, 256, 256), (20, 3, 40, 72)], ids=str)
def test_low_precision_within_cudnn_error(backend, cell, dtype, size):
    """Error against an fp64 CPU reference within a small multiple of cuDNN's own error in the
    same dtype (outputs and gradients)."""
    require(backend, cell)
    T, B, I, H = size
    fused64, reference64 = make_pair(cell, I, H, num_layers=2, dtype=torch.float64)
    x64 = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
    exact = run(reference64, x64)
    seeds = [torch.randn_like(o) for o in exact]
    exact_grads = grads_of(reference64, x64, exact, seeds)

    fused = copy.deepcopy(fused64).to("cuda", dtype)
    fused.backend = backend
    cudnn = copy.deepcopy(reference64).to("cuda", dtype)
    results = {}
    for name, module in (("fused", fused), ("cudnn", cudnn)):
        x = x64.detach().to("cuda", dtype).requires_grad_()
        outs = run(module, x)
        grads = grads_of(module, x, outs, [s.to("cuda") for s in seeds])
        results[name] = [t.double().cpu() for t in [*outs, *grads]]
    for ours, theirs, want in zip(results["fused"], results["cudnn"], [*exact, *exact_grads]):
        ours_err = (ours - want).abs().max().item()
        cudnn_err = (theirs - want).abs().max().item()
        assert ours_err <= low_precision_bound(cudnn_err, want), (ours_err, cudnn_err)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("cell", list(LAYERS))
def test_packed_and_lengths_match_cudnn(backend, cell):
    require(backend, cell)
    fused, reference = make_pair(cell, 12, 32, num_layers=2, bidirectional=True, device="cuda", backend=backend)
    lengths = torch.tensor([9, 1, 5, 9, 3])
    x = torch.randn(9, 5, 12, device="cuda")
    packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
    ours, theirs = run(fused, packed), run(reference, packed)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=2e-5)
    # padded input with lengths= gives the packed result, padded with zeros
    out, states = fused(x, lengths=lengths.cuda())
    torch.testing.assert_close(flatten_states(states)[0], theirs[1], atol=2e-5, rtol=2e-5)
    assert torch.all(out[5:, 1] == 0)


def test_lstm_projection_on_gpu():
    backend = backends.auto_backend_name("lstm", torch.device("cuda"), proj=True)
    fused, reference = make_pair("lstm", 16, 32, proj_size=8, num_layers=2, device="cuda")
    x = torch.randn(11, 4, 16, device="cuda")
    for a, b in zip(run(fused, x), run(reference, x)):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=2e-5, msg=f"auto={backend}")


def test_auto_prefers_compiled_kernels():
    from fused_rnn import _ops

    expected = "cuda" if _ops.WITH_CUDA else ("triton" if backends.available("triton", "lstm", "cuda") else "reference")
    assert backends.auto_backend_name("lstm", torch.device("cuda")) == expected
