"""backend="torch": torch.nn's own kernels behind fused_rnn's layers, cells and functional API,
against torch.nn with the same weights: outputs, final states and every gradient, for every
option the layers take (layers, directions, bias, batch_first, proj_size, hx, unbatched input,
PackedSequence, lengths= with sequences of length 0, dropout), and as a backend like the others
(available, convert, autocast, torch.compile)."""

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import fused_rnn
from fused_rnn import backends
from helpers import (
    LAYERS,
    assert_all_close,
    flatten_states,
    make_cell_pair,
    make_pair,
    outputs_and_grads,
)
from test_modules import OPTIONS, check_against_torch, random_hx

F64 = torch.float64
CELLS = list(LAYERS)


def test_torch_is_a_backend_everywhere():
    assert "torch" in backends.BACKENDS
    for cell in CELLS:
        assert backends.available("torch", cell, "cpu")
        assert backends.available("torch", cell, "cpu", proj=True)
    assert fused_rnn.LSTM(3, 4, backend="torch").backend == "torch"


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
@pytest.mark.parametrize("given_hx", [False, True])
def test_layer_matches_torch(cell, options, given_hx):
    T, B, I, H = 5, 3, 4, 6
    fused, reference = make_pair(cell, I, H, dtype=F64, backend="torch", **options)
    D = 2 if options.get("bidirectional") else 1
    x = torch.randn((B, T, I) if options.get("batch_first") else (T, B, I), dtype=F64, requires_grad=True)
    hx = random_hx(cell, options["num_layers"] * D, B, H) if given_hx else None
    check_against_torch(fused, reference, x, hx)


@pytest.mark.parametrize("given_hx", [False, True])
def test_lstm_projection(given_hx):
    fused, reference = make_pair("lstm", 4, 6, num_layers=2, bidirectional=True, proj_size=3,
                                 dtype=F64, backend="torch")
    x = torch.randn(5, 3, 4, dtype=F64, requires_grad=True)
    hx = random_hx("lstm", 4, 3, 6, proj=3) if given_hx else None
    check_against_torch(fused, reference, x, hx)


@pytest.mark.parametrize("cell", CELLS)
def test_unbatched_input(cell):
    fused, reference = make_pair(cell, 3, 4, num_layers=2, bidirectional=True, dtype=F64,
                                 backend="torch")
    x = torch.randn(5, 3, dtype=F64, requires_grad=True)
    check_against_torch(fused, reference, x, random_hx(cell, 4, None, 4, unbatched=True))


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("batch_first", [False, True])
def test_lengths_equal_a_packed_sequence_and_the_fused_backend(cell, batch_first):
    """lengths= on padded input (packed for torch underneath, a sequence of length 0 left out
    and put back): the outputs and gradients of the cpu backend, which the other tests hold to
    torch.nn's PackedSequence results; zeros past each length."""
    T, B, I, H = 6, 4, 3, 5
    torch_layer, _ = make_pair(cell, I, H, num_layers=2, bidirectional=True,
                               batch_first=batch_first, dtype=F64, backend="torch")
    cpu_layer, _ = make_pair(cell, I, H, num_layers=2, bidirectional=True,
                             batch_first=batch_first, dtype=F64, backend="cpu")
    cpu_layer.load_state_dict(torch_layer.state_dict())
    lengths = torch.tensor([2, 6, 0, 4])
    x = torch.randn((B, T, I) if batch_first else (T, B, I), dtype=F64, requires_grad=True)
    hx = random_hx(cell, 4, B, H)
    outs, grads, seeds = outputs_and_grads(torch_layer, x, hx, lengths=lengths)
    expected_outs, expected_grads, _ = outputs_and_grads(cpu_layer, x, hx, seed_grads=seeds,
                                                         lengths=lengths)
    assert_all_close(outs + grads, expected_outs + expected_grads, atol=1e-10, rtol=1e-10)
    out, _ = torch_layer(x, hx, lengths=lengths)
    time_major = out.transpose(0, 1) if batch_first else out
    for b, length in enumerate(lengths.tolist()):
        assert torch.all(time_major[length:, b] == 0)


@pytest.mark.parametrize("cell", CELLS)
def test_every_sequence_of_length_zero_keeps_its_state(cell):
    layer, _ = make_pair(cell, 3, 4, dtype=F64, backend="torch")
    x = torch.randn(5, 2, 3, dtype=F64)
    hx = tuple(h.detach() for h in flatten_states(random_hx(cell, 1, 2, 4)))
    out, states = layer(x, hx if cell == "lstm" else hx[0], lengths=torch.tensor([0, 0]))
    assert torch.all(out == 0)
    for state, initial in zip(flatten_states(states), hx):
        assert torch.equal(state, initial)


@pytest.mark.parametrize("cell", CELLS)
def test_packed_sequence_input(cell):
    fused, reference = make_pair(cell, 3, 5, num_layers=2, bidirectional=True, dtype=F64,
                                 backend="torch")
    padded = torch.randn(6, 4, 3, dtype=F64)
    packed = pack_padded_sequence(padded, torch.tensor([2, 6, 1, 4]), enforce_sorted=False)
    out, states = fused(packed)
    ref_out, ref_states = reference(packed)
    torch.testing.assert_close(out.data, ref_out.data, atol=1e-10, rtol=1e-10)
    for a, b in zip(flatten_states(states), flatten_states(ref_states)):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("batched", [True, False])
@pytest.mark.parametrize("given_hx", [True, False])
def test_cells_match_torch(cell, batched, given_hx):
    """Cells unrolled over a sequence: every step's output, the final state, every gradient."""
    fused, reference = make_cell_pair(cell, 3, 5, dtype=F64, backend="torch")
    x = torch.randn(*((4, 2, 3) if batched else (4, 3)), dtype=F64, requires_grad=True)
    hx = None
    if given_hx:
        shape = (2, 5) if batched else (5,)
        hx = torch.randn(*shape, dtype=F64, requires_grad=True)
        if cell == "lstm":
            hx = (hx, torch.randn(*shape, dtype=F64, requires_grad=True))
    check_against_torch(fused, reference, x, hx, atol=1e-12)


def test_functional_api_and_convert():
    reference = torch.nn.GRU(3, 4, num_layers=2)
    x = torch.randn(5, 2, 3)
    weights = [tuple(getattr(reference, f"{n}_l{k}") for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))
               + (None,) for k in range(2)]
    out, h_n = fused_rnn.functional.gru(x, None, weights, backend="torch")
    ref_out, ref_h_n = reference(x)
    torch.testing.assert_close(out, ref_out, atol=1e-6, rtol=1e-6)
    converted = fused_rnn.convert(torch.nn.Sequential(reference), backend="torch")
    assert converted[0].backend == "torch"
    torch.testing.assert_close(converted[0](x)[0], ref_out, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_autocast_runs_the_whole_layer_in_the_autocast_dtype(cell):
    """As with every fused_rnn backend: the layer, its states and outputs in bf16."""
    fused, _ = make_pair(cell, 8, 8, backend="torch")
    x = torch.randn(4, 2, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, states = fused(x)
    assert out.dtype == torch.bfloat16
    assert all(s.dtype == torch.bfloat16 for s in flatten_states(states))
    reference_run, _ = make_pair(cell, 8, 8, backend="cpu")
    reference_run.load_state_dict(fused.state_dict())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected, _ = reference_run(x)
    torch.testing.assert_close(out.float(), expected.float(), atol=0.05, rtol=0.05)


def test_torch_compile_runs_the_layer_outside_the_graph():
    """torch.nn's layer kernels cannot be traced (as torch.nn's layers, which Dynamo refuses):
    a graph break, so fullgraph=True fails and a plain compile equals eager."""
    layer = fused_rnn.LSTM(4, 6, backend="torch")
    x = torch.randn(5, 2, 4)
    with pytest.raises(torch._dynamo.exc.Unsupported):
        torch.compile(layer, fullgraph=True, backend="aot_eager")(x)
    torch._dynamo.reset()
    compiled = torch.compile(layer, backend="aot_eager")(x)
    torch.testing.assert_close(compiled[0], layer(x)[0])
