"""NaN and ±inf go through the fused layers and cells as through torch.nn's: with one non-finite
value placed in the input, h0, c0 or a weight, the outputs and every gradient are NaN, +inf and
-inf in the same places as torch.nn's (and equal elsewhere), on every backend that runs on the
CPU. (A NaN that a kernel turns into a number hides a diverging training, or an fp16 overflow
that GradScaler must see.) The CUDA kernels' maths: test_cuda_ops.py, in the host emulation.

torch.nn's fp32 LSTM runs on oneDNN on the CPU; these compare with its ATen path instead
(oneDNN off), the one every other case takes (fp64, GRU, RNN)."""

import itertools

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from helpers import LAYERS, assert_same_nonfinite, flatten_states, make_cell_pair, make_pair

CELLS = list(LAYERS)
VALUES = (float("nan"), float("inf"), float("-inf"))
# The interpreter is slow: Triton gets NaN and +inf (which, through weights of both signs,
# still reaches both tails of every activation).
TRITON_VALUES = VALUES[:2]

pytestmark = [
    # numpy (the Triton interpreter) warns about the NaN and inf these tests feed it
    pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning"),
    pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning"),
    # torch.backends.mkldnn.flags() on a build without Intel GPU support
    pytest.mark.filterwarnings("ignore:TF32 acceleration on top of oneDNN:UserWarning"),
]


def outputs_and_grads(module, x, hx, lengths=None, packed=False):
    """Outputs and the gradients of a random linear function of them with respect to the
    input, the given states and every parameter. With lengths: on padded input and lengths=, or
    (packed) on the PackedSequence, the output padded back."""
    x = x.clone().requires_grad_()
    given = [h.clone().requires_grad_() for h in flatten_states(hx)] if hx is not None else []
    hx = None if hx is None else (tuple(given) if isinstance(hx, tuple) else given[0])
    if lengths is None:
        output, final = module(x, hx)
    elif not packed:
        output, final = module(x, hx, lengths=lengths)
    else:
        output, final = module(pack_padded_sequence(x, lengths, enforce_sorted=False), hx)
        output = pad_packed_sequence(output, total_length=x.shape[0])[0]
    outputs = [output, *flatten_states(final)]
    generator = torch.Generator().manual_seed(5)
    loss = sum((o * torch.randn(o.shape, generator=generator)).sum() for o in outputs)
    inputs = [x, *given, *module.parameters()]
    return [o.detach() for o in outputs] + list(torch.autograd.grad(loss, inputs))


def placements(cell, module, layers):
    """Where a non-finite value goes: (what, index). ``what`` is "input", "h0", "c0", a
    parameter name, or "<parameter> without hx" (zero initial states: inf * 0 in the first
    recurrent product)."""
    places = [("input", (1, 0, 1)), ("h0", (layers - 1, 1, 2))]
    if cell == "lstm":
        places.append(("c0", (0, 0, 3)))
    for name, parameter in module.named_parameters():
        if name.endswith("l0") or name.endswith(f"l{(layers - 1) // 2}_reverse"):
            places.append((name, (parameter.shape[0] - 1,) + (1,) * (parameter.dim() - 1)))
    places.append(("weight_hh_l0 without hx", (3, 0)))
    return places


def compare(fused, reference, cell, layers, x, hx, places, values=VALUES, lengths=None):
    state = {k: v.detach().clone() for k, v in reference.state_dict().items()}
    for (what, index), value in itertools.product(places, values):
        x_, hx_ = x.clone(), tuple(h.clone() for h in flatten_states(hx))
        weights = {k: v.clone() for k, v in state.items()}
        if what == "input":
            x_[index] = value
        elif what in ("h0", "c0"):
            hx_[0 if what == "h0" else 1][index] = value
        else:
            weights[what.split()[0]][index] = value
        hx_ = None if what.endswith("without hx") else (hx_ if cell == "lstm" else hx_[0])
        fused.load_state_dict(weights)
        reference.load_state_dict(weights)
        with torch.backends.mkldnn.flags(enabled=False):
            theirs = outputs_and_grads(reference, x_, hx_, lengths, packed=True)
        ours = outputs_and_grads(fused, x_, hx_, lengths)
        assert_same_nonfinite(ours, theirs, f"{what}{list(index)} = {value}")


def layer_case(cell, backend, T=4, B=2, I=3, H=4, **options):
    fused, reference = make_pair(cell, I, H, backend=backend, **options)
    layers = options.get("num_layers", 1) * (2 if options.get("bidirectional") else 1)
    P = options.get("proj_size") or H
    x = torch.randn(T, B, I)
    h0 = torch.randn(layers, B, P) * 0.5
    hx = (h0, torch.randn(layers, B, H) * 0.5) if cell == "lstm" else h0
    return fused, reference, layers, x, hx


@pytest.mark.parametrize("backend", ["cpu", "reference"])
@pytest.mark.parametrize("cell", CELLS)
def test_layer_nonfinite_like_torch(backend, cell):
    fused, reference, layers, x, hx = layer_case(cell, backend, num_layers=2, bidirectional=True)
    compare(fused, reference, cell, layers, x, hx, placements(cell, reference, layers))


@pytest.mark.parametrize("cell", CELLS)
def test_triton_layer_nonfinite_like_torch(cell):
    """The interpreter's numpy keeps NaN where a GPU's max.f32 drops it; the kernels use
    comparisons that keep it on both (triton_kernels/_common.py: relu)."""
    fused, reference, layers, x, hx = layer_case(cell, "triton", T=2, bidirectional=True)
    places = [p for p in placements(cell, reference, layers) if "_ih_" not in p[0]]
    compare(fused, reference, cell, layers, x, hx, places, TRITON_VALUES)


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_lstm_projection_nonfinite_like_torch(backend):
    fused, reference, layers, x, hx = layer_case("lstm", backend, proj_size=2)
    places = [p for p in placements("lstm", reference, layers) if "hr" in p[0] or "input" in p[0]]
    compare(fused, reference, "lstm", layers, x, hx, places)


@pytest.mark.parametrize("backend", ["cpu", "triton", "reference"])
@pytest.mark.parametrize("cell", CELLS)
def test_variable_lengths_nonfinite_like_torch(backend, cell):
    """Padded input with lengths= against torch.nn's PackedSequence: a non-finite value in a
    sequence reaches only what depends on it, not the weight gradients through the padded
    steps that follow its end."""
    fused, reference, layers, x, hx = layer_case(cell, backend, B=3, bidirectional=True)
    rows = reference.weight_hh_l0.shape[0]
    places = [("input", (1, 2, 0)), ("weight_hh_l0", (rows - 1, 1)),
              ("weight_hh_l0_reverse", (0, 2))]
    places += [("input", (0, 1, 1)), ("h0", (1, 2, 0))] if backend != "triton" else []
    values = TRITON_VALUES if backend == "triton" else VALUES
    compare(fused, reference, cell, layers, x, hx, places, values, lengths=torch.tensor([4, 1, 2]))


@pytest.mark.parametrize("cell", CELLS)
def test_triton_exchanged_operand_nonfinite_like_torch(cell, monkeypatch):
    """The Triton layouts whose recurrent product goes through the exchange buffer (here two
    programs per batch tile, one launch per step): an inf in w_hh reaches no row through the
    zero gradients of padded steps or of the empty buffer the backward starts from."""
    monkeypatch.setenv("FUSED_RNN_TRITON_LAYOUT", "stepwise")
    monkeypatch.setenv("FUSED_RNN_TRITON_BLOCK_H", "16")
    fused, reference, layers, x, hx = layer_case(cell, "triton", T=3, B=3, H=20,
                                                 bidirectional=True)
    places = [("weight_hh_l0", (3, 1)), ("weight_hh_l0_reverse", (7, 19))]
    compare(fused, reference, cell, layers, x, hx, places, values=(float("inf"),),
            lengths=torch.tensor([3, 1, 2]))


@pytest.mark.parametrize("backend", ["cpu", "triton", "reference"])
@pytest.mark.parametrize("cell", CELLS)
def test_cell_nonfinite_like_torch(backend, cell):
    fused, reference = make_cell_pair(cell, 3, 4, backend=backend)
    x = torch.randn(2, 2, 3)
    hx = (torch.randn(2, 4), torch.randn(2, 4)) if cell == "lstm" else torch.randn(2, 4)
    places = [("input", (0, 0, 1)), ("h0", (1, 2)), ("cell.weight_hh", (2, 0)),
              ("cell.weight_hh without hx", (2, 0))]
    places += [("c0", (0, 3))] if cell == "lstm" else []
    if backend != "triton":  # the interpreter is slow; the layer tests place these
        places += [("cell.weight_ih", (3, 1)), ("cell.bias_hh", (1,))]
    compare(fused, reference, cell, 1, x, hx, places,
            TRITON_VALUES if backend == "triton" else VALUES)
