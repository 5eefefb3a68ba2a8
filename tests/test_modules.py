"""fused_rnn.LSTM/GRU/RNN and the cells against torch.nn with the same state_dict: outputs, final
states and the gradients of the input, the initial states and every parameter."""

import copy
import io
import itertools
import warnings

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import fused_rnn
from helpers import LAYERS, assert_all_close, flatten_states, make_pair, outputs_and_grads

F64 = torch.float64
CELLS = list(LAYERS)


def random_hx(cell, layers, batch, hidden, proj=0, dtype=F64, unbatched=False):
    shape = (layers, hidden if not proj else proj) if unbatched else (layers, batch, proj or hidden)
    h0 = torch.randn(*shape, dtype=dtype, requires_grad=True)
    if cell != "lstm":
        return h0
    c_shape = (layers, hidden) if unbatched else (layers, batch, hidden)
    return h0, torch.randn(*c_shape, dtype=dtype, requires_grad=True)


def check_against_torch(fused, reference, x, hx=None, *, atol=1e-10, **forward_kwargs):
    x_ref = x.detach().clone().requires_grad_(x.requires_grad)
    hx_ref = None
    if hx is not None:
        hx_ref = tuple(h.detach().clone().requires_grad_() for h in flatten_states(hx))
        hx_ref = hx_ref if isinstance(hx, tuple) else hx_ref[0]
    outs, grads, seeds = outputs_and_grads(fused, x, hx, **forward_kwargs)
    ref_outs, ref_grads, _ = outputs_and_grads(reference, x_ref, hx_ref, seed_grads=seeds)
    assert_all_close(outs, ref_outs, atol=atol, rtol=atol)
    names = ["input"] + [f"hx[{i}]" for i in range(len(flatten_states(hx)) if hx is not None else 0)]
    names += [name for name, _ in fused.named_parameters()]
    assert_all_close(grads, ref_grads, atol=atol, rtol=atol, names=names)


# Every option of the constructor, over odd sizes: T=1, B=1, H=1 and input_size != hidden_size.
OPTIONS = [
    dict(num_layers=1),
    dict(num_layers=2),
    dict(num_layers=2, bidirectional=True),
    dict(num_layers=3, bias=False, batch_first=True),
    dict(num_layers=2, bidirectional=True, batch_first=True, bias=False),
]
SIZES = [(7, 3, 5, 4), (1, 1, 2, 1), (4, 2, 1, 3)]  # (T, B, input_size, hidden_size)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
@pytest.mark.parametrize("size", SIZES, ids=lambda s: "T{}B{}I{}H{}".format(*s))
@pytest.mark.parametrize("given_hx", [False, True])
def test_layer_matches_torch(cell, options, size, given_hx):
    T, B, I, H = size
    fused, reference = make_pair(cell, I, H, dtype=F64, **options)
    D = 2 if options.get("bidirectional") else 1
    x = torch.randn((B, T, I) if options.get("batch_first") else (T, B, I), dtype=F64, requires_grad=True)
    hx = random_hx(cell, options["num_layers"] * D, B, H) if given_hx else None
    check_against_torch(fused, reference, x, hx)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("options", [dict(), dict(bias=False, batch_first=True)], ids=str)
@pytest.mark.parametrize("given_hx", [False, True])
def test_one_inference_step_matches_torch(cell, options, given_hx):
    """One step of a one-layer net without gradients takes the cell's one-op step."""
    fused, reference = make_pair(cell, 5, 4, dtype=F64, backend="cpu", **options)
    x = torch.randn((3, 1, 5) if options.get("batch_first") else (1, 3, 5), dtype=F64)  # T=1, B=3
    hx = random_hx(cell, 1, 3, 4) if given_hx else None
    with torch.no_grad():
        out, state = fused(x, hx)
        ref_out, ref_state = reference(x, hx)
        torch.testing.assert_close(out, ref_out)
        for a, b in zip(state if cell == "lstm" else (state,),
                        ref_state if cell == "lstm" else (ref_state,)):
            torch.testing.assert_close(a, b)


@pytest.mark.parametrize("options", OPTIONS[:3], ids=str)
@pytest.mark.parametrize("given_hx", [False, True])
def test_lstm_projection_matches_torch(options, given_hx):
    T, B, I, H, P = 5, 3, 4, 6, 2
    fused, reference = make_pair("lstm", I, H, proj_size=P, dtype=F64, **options)
    D = 2 if options.get("bidirectional") else 1
    x = torch.randn(T, B, I, dtype=F64, requires_grad=True)
    hx = random_hx("lstm", options["num_layers"] * D, B, H, proj=P) if given_hx else None
    check_against_torch(fused, reference, x, hx)


@pytest.mark.parametrize("cell", CELLS)
def test_float32_matches_torch(cell):
    """fp32 on the default path (vectorised gate maths, threads) within 1e-5 of torch.nn."""
    torch.set_num_threads(2)
    fused, reference = make_pair(cell, 48, 64, num_layers=2, bidirectional=True)
    x = torch.randn(12, 6, 48, requires_grad=True)
    check_against_torch(fused, reference, x, atol=1e-5)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("given_hx", [False, True])
@pytest.mark.parametrize("batch_first", [False, True])
def test_unbatched_input(cell, given_hx, batch_first):
    fused, reference = make_pair(cell, 3, 4, num_layers=2, bidirectional=True, batch_first=batch_first, dtype=F64)
    x = torch.randn(5, 3, dtype=F64, requires_grad=True)
    hx = random_hx(cell, 4, None, 4, unbatched=True) if given_hx else None
    check_against_torch(fused, reference, x, hx)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("enforce_sorted", [True, False])
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("given_hx", [False, True])
def test_packed_sequence(cell, enforce_sorted, batch_first, given_hx):
    T, B, I, H = 6, 4, 3, 5
    fused, reference = make_pair(cell, I, H, num_layers=2, bidirectional=True, batch_first=batch_first, dtype=F64)
    lengths = torch.tensor([6, 4, 4, 1]) if enforce_sorted else torch.tensor([2, 6, 1, 4])
    padded = torch.randn((B, T, I) if batch_first else (T, B, I), dtype=F64, requires_grad=True)
    packed = pack_padded_sequence(padded, lengths, batch_first=batch_first, enforce_sorted=enforce_sorted)
    hx = random_hx(cell, 4, B, H) if given_hx else None
    out, states = fused(packed, hx)
    assert torch.equal(out.batch_sizes, packed.batch_sizes)
    for a, b in [(out.sorted_indices, packed.sorted_indices), (out.unsorted_indices, packed.unsorted_indices)]:
        assert (a is None and b is None) or torch.equal(a, b)
    # full comparison of outputs and gradients through the packed path
    padded_ref = padded.detach().clone().requires_grad_()
    packed_ref = pack_padded_sequence(padded_ref, lengths, batch_first=batch_first, enforce_sorted=enforce_sorted)
    hx_ref = None
    if hx is not None:
        hx_ref = tuple(h.detach().clone().requires_grad_() for h in flatten_states(hx))
        hx_ref = hx_ref if cell == "lstm" else hx_ref[0]
    # outputs, and the gradients of hx and of every parameter (a PackedSequence input is not a
    # leaf: its gradient is checked on the padded tensor below)
    outs, grads, seeds = outputs_and_grads(fused, packed, hx)
    ref_outs, ref_grads, _ = outputs_and_grads(reference, packed_ref, hx_ref, seed_grads=seeds)
    assert_all_close(outs, ref_outs, atol=1e-10)
    assert_all_close(grads, ref_grads, atol=1e-10)
    out_f, _ = fused(pack_padded_sequence(padded, lengths, batch_first=batch_first, enforce_sorted=enforce_sorted), hx)
    out_r, _ = reference(packed_ref, hx_ref)
    g_f = torch.autograd.grad((out_f.data * seeds[0]).sum(), padded)[0]
    g_r = torch.autograd.grad((out_r.data * seeds[0]).sum(), padded_ref)[0]
    torch.testing.assert_close(g_f, g_r, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("bidirectional", [False, True])
def test_lengths_match_a_loop_over_sequences(cell, bidirectional):
    """forward(padded, lengths=...) equals running every sequence on its own, unpadded."""
    T, B, I, H = 7, 4, 3, 5
    fused, reference = make_pair(cell, I, H, num_layers=2, bidirectional=bidirectional, batch_first=True, dtype=F64)
    lengths = [7, 3, 1, 5]
    x = torch.randn(B, T, I, dtype=F64)
    hx = random_hx(cell, 2 * (2 if bidirectional else 1), B, H)
    hx = tuple(h.detach() for h in flatten_states(hx))
    out, states = fused(x, hx if cell == "lstm" else hx[0], lengths=torch.tensor(lengths))
    for b, length in enumerate(lengths):
        hx_b = tuple(h[:, b : b + 1] for h in hx)
        out_b, states_b = reference(x[b : b + 1, :length], hx_b if cell == "lstm" else hx_b[0])
        torch.testing.assert_close(out[b : b + 1, :length], out_b, atol=1e-10, rtol=1e-10)
        assert torch.all(out[b, length:] == 0)
        for s, s_b in zip(flatten_states(states), flatten_states(states_b)):
            torch.testing.assert_close(s[:, b : b + 1], s_b, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("cell", CELLS)
def test_lengths_as_list_and_on_every_sequence_full(cell):
    fused, _ = make_pair(cell, 3, 4, dtype=F64)
    x = torch.randn(5, 2, 3, dtype=F64)
    full, states = fused(x)
    same, same_states = fused(x, lengths=[5, 5])
    torch.testing.assert_close(full, same, atol=0, rtol=0)
    for a, b in zip(flatten_states(states), flatten_states(same_states)):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


@pytest.mark.parametrize("backend", ["cpu", "torch"])
@pytest.mark.parametrize("cell", CELLS)
def test_dropout_matches_torch_in_training(cell, backend):
    """Same seed, same masks: dropout between layers consumes the generator as torch.nn does."""
    fused, reference = make_pair(cell, 4, 6, num_layers=3, dropout=0.5, bidirectional=True, dtype=F64,
                                 backend=backend)
    fused.train()
    reference.train()
    x = torch.randn(5, 3, 4, dtype=F64)
    torch.manual_seed(7)
    out_f, _ = fused(x)
    torch.manual_seed(7)
    out_r, _ = reference(x)
    torch.testing.assert_close(out_f, out_r, atol=1e-10, rtol=1e-10)
    # dropout is really applied (differs from eval) and off in eval
    fused.eval()
    reference.eval()
    out_eval, _ = fused(x)
    assert not torch.allclose(out_eval, out_f)
    torch.testing.assert_close(out_eval, reference(x)[0], atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("cell", CELLS)
def test_parameters_and_initialisation_match_torch(cell):
    fused_cls, torch_cls, extra = LAYERS[cell]
    kwargs = dict(num_layers=2, bidirectional=True, **extra)
    if cell == "lstm":
        kwargs["proj_size"] = 2
    torch.manual_seed(3)
    fused = fused_cls(5, 4, **kwargs)
    torch.manual_seed(3)
    reference = torch_cls(5, 4, **kwargs)
    fused_params = dict(fused.named_parameters())
    reference_params = dict(reference.named_parameters())
    assert list(fused_params) == list(reference_params)
    for name, p in reference_params.items():
        assert torch.equal(fused_params[name], p), name
    assert fused.extra_repr() == reference.extra_repr()


@pytest.mark.parametrize("cell", CELLS)
def test_state_dict_loads_both_ways(cell):
    fused_cls, torch_cls, extra = LAYERS[cell]
    fused = fused_cls(3, 4, num_layers=2, bidirectional=True, **extra)
    reference = torch_cls(3, 4, num_layers=2, bidirectional=True, **extra)
    fused.load_state_dict(reference.state_dict())
    x = torch.randn(5, 2, 3)
    torch.testing.assert_close(fused(x)[0], reference(x)[0], atol=1e-5, rtol=1e-5)
    other = torch_cls(3, 4, num_layers=2, bidirectional=True, **extra)
    with torch.no_grad():
        for p in fused.parameters():
            p.add_(0.1)
    other.load_state_dict(fused.state_dict())
    torch.testing.assert_close(fused(x)[0], other(x)[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("cell", CELLS)
def test_pickle_deepcopy_and_functional_call(cell):
    fused, _ = make_pair(cell, 3, 4, num_layers=2)
    x = torch.randn(4, 2, 3)
    expected = fused(x)[0]
    buffer = io.BytesIO()
    torch.save(fused, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    torch.testing.assert_close(loaded(x)[0], expected, atol=0, rtol=0)
    torch.testing.assert_close(copy.deepcopy(fused)(x)[0], expected, atol=0, rtol=0)
    zeros = {name: torch.zeros_like(p) for name, p in fused.named_parameters()}
    out = torch.func.functional_call(fused, zeros, (x,))[0]
    assert torch.all(out == 0)
    # a module pickled before the weight names were kept in it
    state = dict(fused.__dict__)
    del state["_weight_names"]
    old = type(fused).__new__(type(fused))
    old.__setstate__(state)
    torch.testing.assert_close(old(x)[0], expected, atol=0, rtol=0)


@pytest.mark.parametrize("cell", CELLS)
def test_torch_func_transforms(cell):
    """vmap runs (torch's fallback: the ops once per mapped element) and matches torch.nn;
    torch.func.grad is refused with torch's own error (the ops' autograd is a C++ Function, which
    functorch does not take), never a wrong gradient."""
    fused, reference = make_pair(cell, 3, 4)
    xs = torch.randn(5, 4, 2, 3)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "There is a performance drop ... batching rule"
        mapped = torch.func.vmap(lambda x: fused(x)[0])(xs)
    torch.testing.assert_close(mapped, torch.stack([reference(x)[0] for x in xs]), atol=1e-5, rtol=1e-5)
    params = {name: p.detach() for name, p in fused.named_parameters()}

    def loss(params):
        return torch.func.functional_call(fused, params, (xs[0],))[0].sum()

    with pytest.raises(RuntimeError, match="functorch transforms"):
        torch.func.grad(loss)(params)


class _Doubled(torch.nn.Module):
    def forward(self, weight):
        return 2 * weight


@pytest.mark.parametrize("cell", CELLS)
def test_parametrized_and_reassigned_weights_are_read(cell):
    """The layers read each weight by name on every call: through a parametrization (not in
    _parameters any more), and after a parameter is replaced by another."""
    fused, reference = make_pair(cell, 3, 4, num_layers=2, dtype=F64)
    x = torch.randn(5, 2, 3, dtype=F64)
    torch.nn.utils.parametrize.register_parametrization(fused, "weight_hh_l1", _Doubled())
    fused.bias_ih_l0 = torch.nn.Parameter(fused.bias_ih_l0.detach() + 1)
    with torch.no_grad():
        reference.weight_hh_l1.mul_(2)
        reference.bias_ih_l0.add_(1)
    output, hx = fused(x)
    expected_output, expected_hx = reference(x)
    assert_all_close([output, *flatten_states(hx)], [expected_output, *flatten_states(expected_hx)],
                     atol=1e-10, rtol=1e-10)


def test_dropout_warning_matches_torch():
    with warnings.catch_warnings(record=True) as ours:
        warnings.simplefilter("always")
        fused_rnn.LSTM(3, 4, dropout=0.5)
    with warnings.catch_warnings(record=True) as theirs:
        warnings.simplefilter("always")
        torch.nn.LSTM(3, 4, dropout=0.5)
    assert [str(w.message) for w in ours] == [str(w.message) for w in theirs] != []


def test_positional_constructor_arguments_match_torch():
    # RNN's nonlinearity is its fourth positional argument, as in torch.nn
    fused = fused_rnn.RNN(3, 4, 2, "relu", False, True, 0.0, True)
    reference = torch.nn.RNN(3, 4, 2, "relu", False, True, 0.0, True)
    assert fused.extra_repr() == reference.extra_repr()
    assert fused.mode == reference.mode == "RNN_RELU"


def test_backend_is_a_keyword_and_an_attribute():
    layer = fused_rnn.GRU(3, 4, backend="reference")
    assert layer.backend == "reference"
    assert "backend='reference'" in repr(layer)
    x = torch.randn(5, 2, 3)
    expected = layer(x)[0]
    layer.backend = "cpu"
    torch.testing.assert_close(layer(x)[0], expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("cell", CELLS)
def test_reference_backend_matches_cpu(cell):
    fused, reference = make_pair(cell, 3, 4, num_layers=2, bidirectional=True, dtype=F64, backend="reference")
    x = torch.randn(5, 2, 3, dtype=F64, requires_grad=True)
    check_against_torch(fused, reference, x, lengths=None)


@pytest.mark.parametrize("cell", CELLS)
def test_bfloat16_layer_close_to_fp32(cell):
    """A bf16 layer (gate maths in fp32) stays within a small multiple of torch.nn's own bf16
    error, both measured against the fp64 layer."""
    fused64, reference64 = make_pair(cell, 16, 32, num_layers=2, dtype=F64)
    fused = copy.deepcopy(fused64).to(torch.bfloat16)
    x64 = torch.randn(10, 4, 16, dtype=F64)
    exact = reference64(x64)[0]
    ours = fused(x64.to(torch.bfloat16))[0]
    assert ours.dtype == torch.bfloat16
    try:
        theirs = copy.deepcopy(reference64).to(torch.bfloat16)(x64.to(torch.bfloat16))[0]
        ref_err = (theirs.double() - exact).abs().max().item()
    except RuntimeError:  # torch.nn has no bf16 kernel for this cell on this CPU
        ref_err = 2**-8
    ours_err = (ours.double() - exact).abs().max().item()
    assert ours_err <= 3 * ref_err + 1e-3, (ours_err, ref_err)


# ---------------------------------------------------------------------------------------------
# Cells
# ---------------------------------------------------------------------------------------------

CELL_CLASSES = [
    (fused_rnn.LSTMCell, torch.nn.LSTMCell, {}),
    (fused_rnn.GRUCell, torch.nn.GRUCell, {}),
    (fused_rnn.RNNCell, torch.nn.RNNCell, {"nonlinearity": "tanh"}),
    (fused_rnn.RNNCell, torch.nn.RNNCell, {"nonlinearity": "relu"}),
]


@pytest.mark.parametrize("classes", CELL_CLASSES, ids=lambda c: f"{c[0].__name__}{c[2]}")
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("batched, given_hx", list(itertools.product([True, False], [True, False])))
def test_cell_matches_torch(classes, bias, batched, given_hx):
    fused_cls, torch_cls, extra = classes
    reference = torch_cls(3, 5, bias=bias, **extra).double()
    fused = fused_cls(3, 5, bias=bias, **extra).double()
    fused.load_state_dict(reference.state_dict())
    shape = (4, 3) if batched else (3,)
    x = torch.randn(*shape, dtype=F64, requires_grad=True)
    h_shape = (4, 5) if batched else (5,)
    hx = None
    if given_hx:
        hx = tuple(torch.randn(*h_shape, dtype=F64, requires_grad=True) for _ in range(2))
        hx = hx if fused_cls is fused_rnn.LSTMCell else hx[0]
    x_ref = x.detach().clone().requires_grad_()
    hx_ref = None if hx is None else (
        tuple(h.detach().clone().requires_grad_() for h in hx) if isinstance(hx, tuple) else hx.detach().clone().requires_grad_()
    )
    out = flatten_states(fused(x, hx))
    out_ref = flatten_states(reference(x_ref, hx_ref))
    assert_all_close(out, out_ref, atol=1e-12)
    seeds = [torch.randn_like(o) for o in out]
    leaves = [x, *([] if hx is None else flatten_states(hx)), *fused.parameters()]
    leaves_ref = [x_ref, *([] if hx_ref is None else flatten_states(hx_ref)), *reference.parameters()]
    grads = torch.autograd.grad(sum((o * s).sum() for o, s in zip(out, seeds)), leaves)
    grads_ref = torch.autograd.grad(sum((o * s).sum() for o, s in zip(out_ref, seeds)), leaves_ref)
    assert_all_close(list(grads), list(grads_ref), atol=1e-12)


def test_cell_parameters_match_torch():
    for fused_cls, torch_cls, extra in CELL_CLASSES:
        torch.manual_seed(5)
        fused = fused_cls(3, 4, **extra)
        torch.manual_seed(5)
        reference = torch_cls(3, 4, **extra)
        assert fused.state_dict().keys() == reference.state_dict().keys()
        for (name, p), (_, q) in zip(fused.state_dict().items(), reference.state_dict().items()):
            assert torch.equal(p, q), name
        assert fused.extra_repr() == reference.extra_repr()
