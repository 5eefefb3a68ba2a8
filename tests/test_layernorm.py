"""The layer-normalised LSTM and GRU with zoneout (fused_rnn.LayerNormLSTM, LayerNormGRU and their
cells): the ops against fused_rnn/reference.py, the modules against an independent per-step
implementation written with torch.nn.functional.layer_norm (outputs, states and every gradient,
γ and β included), zoneout, fp64 gradcheck, opcheck, torch.compile and bad input."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import fused_rnn
from fused_rnn.bench.layernorm_loop import PerStepLayerNormGRU, PerStepLayerNormLSTM
from helpers import layernorm_op_inputs as op_inputs
from helpers import make_lengths, run_layernorm_op
from helpers import outputs_and_leaf_grads as outputs_and_grads
from helpers import run_layernorm_reference as run_reference

ops = torch.ops.fused_rnn
F64 = torch.float64


# ---------------------------------------------------------------------------------------------
# The ops against fused_rnn/reference.py
# ---------------------------------------------------------------------------------------------


def run_op(cell, t, masks, probabilities, lengths, reverse, eps=1e-5):
    """The CPU op's outputs y, h_n (and c_n)."""
    out = run_layernorm_op("", cell, t, masks, probabilities, lengths, reverse, eps)
    return out[:3] if cell == "lstm" else out[:2]


# (T, B, H): odd sizes, T = 1, B = 1, H = 1; (3, 1, 96) and (2, 3, 90) split the hidden units
# across the two threads (B = 1 and 3: slices of units whose rows' statistics are combined after
# a barrier), (3, 17, 24) splits the batch rows. The last two are long enough for the backward's
# ring of dp to fill and wrap (csrc/cpu/layernorm_cpu.h, RecurrentGradRing: 32 steps of two row
# groups, then 64 steps of two unit slices), each ending on a part-filled ring.
SHAPES = [(4, 3, 5), (1, 1, 1), (3, 17, 24), (3, 1, 96), (2, 3, 90), (67, 17, 24), (70, 1, 96)]


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("lengths_kind", ["none", "varied"])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("zoneout", ["none", "mask", "expectation"])
def test_op_matches_reference_fp64(cell, shape, lengths_kind, reverse, zoneout):
    T, B, H = shape
    torch.manual_seed(hash((cell, shape, lengths_kind, reverse, zoneout)) % 2**31)
    t, masks, probabilities = op_inputs(cell, T, B, H, F64, zoneout=zoneout)
    lengths = make_lengths(lengths_kind, T, B)
    seeds = [torch.randn(T, B, H, dtype=F64)] + [torch.randn(B, H, dtype=F64)] * 2
    ours = outputs_and_grads(lambda: run_op(cell, t, masks, probabilities, lengths, reverse), t,
                             seeds)
    theirs = outputs_and_grads(
        lambda: run_reference(cell, t, masks, probabilities, lengths, reverse), t, seeds)
    for a, b in zip(ours, theirs):
        # of the tensor's scale: over the long shapes the LSTM's gradients grow to ~1e3
        scale = max(1.0, b.abs().max().item())
        torch.testing.assert_close(a, b, atol=1e-10 * scale, rtol=1e-10)


# fp32 runs a step's products on the packed GEMM or on BLAS (csrc/cpu/cpu_common.h): a partial
# panel on one and on two threads' slices, BLAS in the backward (B = 66).
@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("shape", [(3, 3, 21), (2, 1, 45), (2, 66, 9), (3, 40, 70)], ids=str)
def test_op_matches_reference_fp32(cell, shape):
    T, B, H = shape
    torch.manual_seed(1)
    t, masks, probabilities = op_inputs(cell, T, B, H, torch.float32, zoneout="mask")
    lengths = make_lengths("varied", T, B)
    seeds = [torch.randn(T, B, H, dtype=F64)] + [torch.randn(B, H, dtype=F64)] * 2
    ours = outputs_and_grads(lambda: run_op(cell, t, masks, probabilities, lengths, True), t,
                             seeds)
    t64 = {k: None if v is None else v.detach().double().requires_grad_() for k, v in t.items()}
    theirs = outputs_and_grads(
        lambda: run_reference(cell, t64, masks, probabilities, lengths, True), t64, seeds)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a.double(), b, atol=2e-4, rtol=1e-3)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_op_low_precision(cell, dtype):
    """bf16/fp16 storage, fp32 compute: within a few storage roundings of the fp64 reference."""
    T, B, H = 4, 3, 12
    torch.manual_seed(2)
    t, masks, probabilities = op_inputs(cell, T, B, H, dtype, zoneout="mask")
    seeds = [torch.randn(T, B, H, dtype=F64)] + [torch.randn(B, H, dtype=F64)] * 2
    ours = outputs_and_grads(lambda: run_op(cell, t, masks, probabilities, None, False), t, seeds)
    t64 = {k: None if v is None else v.detach().double().requires_grad_() for k, v in t.items()}
    theirs = outputs_and_grads(
        lambda: run_reference(cell, t64, masks, probabilities, None, False), t64, seeds)
    for a, b in zip(ours, theirs):
        assert a.dtype == dtype
        torch.testing.assert_close(a.double(), b, atol=0.05, rtol=0.05)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_gru_and_lstm_eps(cell):
    """eps reaches both layer norms of the step: a large one changes the result as the reference."""
    torch.manual_seed(3)
    t, masks, probabilities = op_inputs(cell, 3, 2, 4, F64, zoneout="none")
    ours = run_op(cell, t, masks, probabilities, None, False, eps=0.5)
    theirs = run_reference(cell, t, masks, probabilities, None, False, eps=0.5)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)


# ---------------------------------------------------------------------------------------------
# gradcheck (fp64) and opcheck
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("zoneout", ["mask", "expectation"])
def test_gradcheck(cell, reverse, zoneout):
    T, B, H = 3, 3, 2
    torch.manual_seed(4)
    t, masks, probabilities = op_inputs(cell, T, B, H, F64, zoneout=zoneout)
    lengths = make_lengths("varied", T, B)
    names = [k for k, v in t.items() if v is not None]

    def fn(*leaves):
        values = dict(t, **dict(zip(names, leaves)))
        return tuple(run_op(cell, values, masks, probabilities, lengths, reverse))

    torch.autograd.gradcheck(fn, [t[k] for k in names])


def test_no_second_derivative():
    t, masks, probabilities = op_inputs("gru", 2, 2, 3, F64, zoneout="none")
    y, _ = run_op("gru", t, masks, probabilities, None, False)
    with pytest.raises(RuntimeError, match="no second derivative"):
        torch.autograd.grad(y.sum(), t["w_hh"], create_graph=True)


def _opcheck_samples():
    T, B, H = 3, 2, 4
    lengths = torch.tensor([3, 1])
    mask = torch.rand(T, B, H) < 0.5
    samples = []
    for requires_grad in (False, True):
        def leaf(*shape):
            return torch.randn(*shape, requires_grad=requires_grad)

        for lens, m, p in ((None, None, 0.0), (lengths, mask, 0.3), (lengths, None, 0.3)):
            for bias in (leaf(4 * H), None):
                samples.append(("layernorm_lstm_forward", (
                    leaf(T, B, 4 * H), leaf(4 * H), bias, leaf(4 * H, H), leaf(4 * H), leaf(H),
                    leaf(H), leaf(B, H), leaf(B, H), m, m, p, p, lens, False, 1e-5,
                    requires_grad)))
            for b_ih, b_hh in ((leaf(3 * H), leaf(3 * H)), (None, None)):
                samples.append(("layernorm_gru_forward", (
                    leaf(T, B, 3 * H), leaf(3 * H), b_ih, leaf(3 * H, H), leaf(3 * H), b_hh,
                    leaf(B, H), m, p, lens, True, 1e-5, requires_grad)))
    # backward ops, from a real forward
    w4, g4, gc, bc = torch.randn(4 * H, H), torch.randn(4 * H), torch.randn(H), torch.randn(H)
    h0, c0 = torch.randn(B, H), torch.randn(B, H)
    xw, g_ih, bias = torch.randn(T, B, 4 * H), torch.randn(4 * H), torch.randn(4 * H)
    y, h_n, c_n, *ws = ops.layernorm_lstm_forward(xw, g_ih, bias, w4, g4, gc, bc, h0, c0, mask,
                                                  None, 0.0, 0.2, lengths, False, 1e-5, True)
    samples.append(("layernorm_lstm_backward", (torch.randn_like(y), None, torch.randn_like(c_n),
                                                xw, g_ih, bias, w4, g4, gc, bc, h0, c0, mask,
                                                None, 0.0, 0.2, y, *ws, lengths, False)))
    w3, g3, b3 = torch.randn(3 * H, H), torch.randn(3 * H), torch.randn(3 * H)
    xw3, g3_ih, b3_ih = torch.randn(T, B, 3 * H), torch.randn(3 * H), torch.randn(3 * H)
    y, h_n, *ws = ops.layernorm_gru_forward(xw3, g3_ih, b3_ih, w3, g3, b3, h0, None, 0.4, None,
                                            True, 1e-5, True)
    samples.append(("layernorm_gru_backward", (torch.randn_like(y), torch.randn_like(h_n), xw3,
                                               g3_ih, b3_ih, w3, g3, b3, h0, None, 0.4, y, *ws,
                                               None, True)))
    return samples


@pytest.mark.parametrize("sample", range(len(_opcheck_samples())))
def test_opcheck(sample):
    torch.manual_seed(5)
    name, args = _opcheck_samples()[sample]
    torch.library.opcheck(getattr(ops, name).default, args)


# ---------------------------------------------------------------------------------------------
# The modules against an independent per-step implementation with F.layer_norm
# ---------------------------------------------------------------------------------------------


def per_step_twin(module):
    """The per-step F.layer_norm loop (fused_rnn/bench/layernorm_loop.py) with the module's
    configuration and parameters."""
    cls = PerStepLayerNormLSTM if module.mode == "LSTM" else PerStepLayerNormGRU
    kwargs = dict(zoneout_cell=module.zoneout_cell) if module.mode == "LSTM" else {}
    twin = cls(module.input_size, module.hidden_size, module.num_layers, module.bias,
               module.batch_first, module.dropout, module.bidirectional, zoneout=module.zoneout,
               eps=module.eps, **kwargs)
    first = next(module.parameters())
    twin.to(device=first.device, dtype=first.dtype).load_state_dict(module.state_dict())
    return twin.train(module.training)


def flat(output, state):
    return [output] + (list(state) if isinstance(state, tuple) else [state])


def perturbed(module):
    """γ and β away from 1 and 0, so that their gradients and roles are tested."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.startswith(("gamma", "beta")):
                p.add_(torch.randn_like(p) * 0.3)
    return module


LAYER_CASES = {
    # cell, sizes, options, training
    "lstm-plain": ("lstm", dict(num_layers=1), False),
    "lstm-full": ("lstm", dict(num_layers=2, bidirectional=True, dropout=0.3, zoneout=0.25,
                               zoneout_cell=0.15), True),
    "lstm-eval": ("lstm", dict(num_layers=2, bidirectional=True, zoneout=0.25, zoneout_cell=0.15,
                               eps=1e-3), False),
    "lstm-no-bias": ("lstm", dict(bias=False, zoneout=0.4), True),
    "gru-plain": ("gru", dict(num_layers=1), False),
    "gru-full": ("gru", dict(num_layers=2, bidirectional=True, dropout=0.3, zoneout=0.25), True),
    "gru-eval": ("gru", dict(num_layers=3, zoneout=0.25), False),
    "gru-no-bias": ("gru", dict(bias=False, bidirectional=True, zoneout=0.4), True),
}


@pytest.mark.parametrize("case", list(LAYER_CASES))
@pytest.mark.parametrize("lengths_kind, with_hx", [("none", False), ("varied", True)])
def test_layer_matches_per_step_layer_norm(case, lengths_kind, with_hx):
    cell, options, training = LAYER_CASES[case]
    T, B, I, H = 5, 4, 3, 7
    torch.manual_seed(6)
    cls = fused_rnn.LayerNormLSTM if cell == "lstm" else fused_rnn.LayerNormGRU
    module = perturbed(cls(I, H, dtype=F64, **options)).train(training)
    directions = 2 if module.bidirectional else 1
    x = torch.randn(T, B, I, dtype=F64, requires_grad=True)
    lengths = make_lengths(lengths_kind, T, B)
    hx = None
    if with_hx:
        shape = (module.num_layers * directions, B, H)
        h0 = torch.randn(shape, dtype=F64, requires_grad=True)
        hx = (h0, torch.randn(shape, dtype=F64, requires_grad=True)) if cell == "lstm" else h0
    leaves = [x] + ([] if hx is None else list(hx) if cell == "lstm" else [hx])
    results = []
    for layer in (module, per_step_twin(module)):
        torch.manual_seed(7)  # the same zoneout masks and dropout
        outputs = flat(*layer(x, hx, lengths=lengths))
        seeds = torch.Generator().manual_seed(8)
        loss = sum((o * torch.randn(o.shape, generator=seeds, dtype=F64)).sum() for o in outputs)
        wrt = leaves + list(layer.parameters())
        results.append(outputs + list(torch.autograd.grad(loss, wrt)))
    names = ["output", "h_n", "c_n"][: 3 if cell == "lstm" else 2] + ["x"] + (
        [] if hx is None else ["h0", "c0"][: 2 if cell == "lstm" else 1]) + [
        n for n, _ in module.named_parameters()]
    for name, ours, theirs in zip(names, *results):
        torch.testing.assert_close(ours, theirs, atol=1e-10, rtol=1e-9, msg=name)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_layer_fp32_batch_first_threads(cell):
    """fp32, batch_first, sizes that split the work across threads; the fused layer against the
    per-step implementation in fp64."""
    torch.manual_seed(9)
    cls = fused_rnn.LayerNormLSTM if cell == "lstm" else fused_rnn.LayerNormGRU
    module = perturbed(cls(11, 90, batch_first=True, zoneout=0.2)).eval()
    x = torch.randn(2, 4, 11)
    with torch.no_grad():
        ours = flat(*module(x))
        theirs = flat(*per_step_twin(copy.deepcopy(module).double())(x.double()))
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a.double(), b, atol=1e-5, rtol=1e-4)


# ---------------------------------------------------------------------------------------------
# Zoneout
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_zoneout_reproducible_under_seed(cell):
    torch.manual_seed(10)
    cls = fused_rnn.LayerNormLSTM if cell == "lstm" else fused_rnn.LayerNormGRU
    kwargs = dict(zoneout_cell=0.5) if cell == "lstm" else {}
    module = cls(3, 16, zoneout=0.5, **kwargs).train()
    x = torch.randn(20, 8, 3)
    with torch.no_grad():
        torch.manual_seed(11)
        first = module(x)[0]
        torch.manual_seed(11)
        again = module(x)[0]
        other = module(x)[0]  # the generator has moved on: other masks
    torch.testing.assert_close(first, again, atol=0, rtol=0)
    assert not torch.equal(first, other)
    # about half of the units keep their previous value at each step (exactly: y_t == y_{t-1})
    kept = (first[1:] == first[:-1]).double().mean().item()
    assert 0.4 < kept < 0.6, kept


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_zoneout_eval_is_expectation(cell):
    """In eval the previous state weighs p: the fused op with a constant matches the reference
    blend, and differs from no zoneout."""
    torch.manual_seed(12)
    cls = fused_rnn.LayerNormLSTM if cell == "lstm" else fused_rnn.LayerNormGRU
    kwargs = dict(zoneout_cell=0.3) if cell == "lstm" else {}
    module = perturbed(cls(3, 5, zoneout=0.3, dtype=F64, **kwargs)).eval()
    x = torch.randn(6, 2, 3, dtype=F64)
    with torch.no_grad():
        ours = flat(*module(x))
        theirs = flat(*per_step_twin(module)(x))  # eval: p * prev + (1 - p) * new
        plain = copy.deepcopy(module)
        plain.zoneout = plain.zoneout_cell = 0.0
        without = flat(*plain(x))
        # the expectation of training's random masks: the mean over many draws of one step
        module_one = copy.deepcopy(module).train()
        h0 = torch.randn(1, 2, 5, dtype=F64)
        hx = (h0, torch.randn(1, 2, 5, dtype=F64)) if cell == "lstm" else h0
        draws = torch.stack([flat(*module_one(x[:1].expand(1, 2, 3), hx))[1] for _ in range(400)])
        expected = flat(*module(x[:1], hx))[1]
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)
    assert not torch.allclose(ours[0], without[0])
    if cell == "gru":  # one step of h is linear in the mask
        torch.testing.assert_close(draws.mean(0), expected, atol=0.05, rtol=0)


# ---------------------------------------------------------------------------------------------
# Input forms and cells
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_packed_unbatched_and_lengths_agree(cell):
    torch.manual_seed(13)
    cls = fused_rnn.LayerNormLSTM if cell == "lstm" else fused_rnn.LayerNormGRU
    module = perturbed(cls(3, 5, num_layers=2, bidirectional=True, dtype=F64))
    x = torch.randn(6, 3, 3, dtype=F64)
    lengths = torch.tensor([6, 2, 4])
    padded_out, padded_state = module(x, lengths=lengths)
    packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
    packed_out, packed_state = module(packed)
    out, out_lengths = pad_packed_sequence(packed_out)
    torch.testing.assert_close(out, padded_out[: out.shape[0]])
    assert torch.equal(out_lengths, lengths)
    for a, b in zip(flat(out, packed_state)[1:], flat(out, padded_state)[1:]):
        torch.testing.assert_close(a, b)
    # unbatched: one sequence, the batched result's row
    single_out, single_state = module(x[:, 0])
    torch.testing.assert_close(single_out, module(x[:, :1])[0][:, 0])
    assert flat(single_out, single_state)[1].shape == (4, 5)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("training", [False, True])
def test_cell_is_one_step_of_the_layer(cell, training):
    torch.manual_seed(14)
    layer_cls = fused_rnn.LayerNormLSTM if cell == "lstm" else fused_rnn.LayerNormGRU
    cell_cls = fused_rnn.LayerNormLSTMCell if cell == "lstm" else fused_rnn.LayerNormGRUCell
    kwargs = dict(zoneout=0.3, **(dict(zoneout_cell=0.2) if cell == "lstm" else {}))
    layer = perturbed(layer_cls(4, 6, dtype=F64, **kwargs)).train(training)
    one = cell_cls(4, 6, dtype=F64, **kwargs).train(training)
    one.load_state_dict({name.removesuffix("_l0"): p for name, p in layer.state_dict().items()})
    x = torch.randn(3, 4, dtype=F64)
    h = torch.randn(3, 6, dtype=F64)
    hx = (h, torch.randn(3, 6, dtype=F64)) if cell == "lstm" else h
    layer_hx = tuple(s.unsqueeze(0) for s in hx) if cell == "lstm" else h.unsqueeze(0)
    torch.manual_seed(15)
    ours = one(x, hx)
    torch.manual_seed(15)
    _, theirs = layer(x.unsqueeze(0), layer_hx)
    ours = list(ours) if cell == "lstm" else [ours]
    theirs = [s[0] for s in theirs] if cell == "lstm" else [theirs[0]]
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b)
    # unbatched and default state
    single = one(x[0], tuple(s[0] for s in hx) if cell == "lstm" else h[0])
    assert (single[0] if cell == "lstm" else single).shape == (6,)
    assert (one(x)[0] if cell == "lstm" else one(x)).shape == (3, 6)


def test_parameters_names_shapes_and_initialisation():
    lstm = fused_rnn.LayerNormLSTM(3, 5, num_layers=2, bidirectional=True)
    shapes = {n: tuple(p.shape) for n, p in lstm.named_parameters()}
    assert shapes["weight_ih_l0"] == (20, 3) and shapes["weight_ih_l1_reverse"] == (20, 10)
    assert shapes["gamma_hh_l1"] == (20,) and shapes["gamma_c_l0_reverse"] == (5,)
    assert shapes["bias_ih_l0"] == (20,) and shapes["beta_c_l1"] == (5,)
    assert len(shapes) == 4 * 7
    gru = fused_rnn.LayerNormGRU(3, 5, bias=False)
    assert [n for n, _ in gru.named_parameters()] == [
        "weight_ih_l0", "weight_hh_l0", "gamma_ih_l0", "gamma_hh_l0"]
    cell = fused_rnn.LayerNormGRUCell(3, 5)
    assert {n for n, _ in cell.named_parameters()} == {
        "weight_ih", "weight_hh", "bias_ih", "bias_hh", "gamma_ih", "gamma_hh"}
    for name, p in lstm.named_parameters():
        if name.startswith("gamma"):
            assert torch.equal(p, torch.ones_like(p))
        elif name.startswith("beta"):
            assert torch.equal(p, torch.zeros_like(p))
        else:
            assert p.abs().max() <= 5**-0.5


# ---------------------------------------------------------------------------------------------
# torch.compile: training under fullgraph=True equals eager
# ---------------------------------------------------------------------------------------------


class Tagger(torch.nn.Module):
    def __init__(self, rnn):
        super().__init__()
        self.rnn = rnn
        self.head = torch.nn.Linear(2 * rnn.hidden_size, 2)

    def forward(self, x, lengths):
        output, state = self.rnn(x, lengths=lengths)
        h = state[0] if isinstance(state, tuple) else state
        return self.head(output).pow(2).mean() + h.pow(2).mean()


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_compile_fullgraph_training_matches_eager(cell):
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    torch.manual_seed(16)
    cls = fused_rnn.LayerNormLSTM if cell == "lstm" else fused_rnn.LayerNormGRU
    rnn = cls(3, 6, num_layers=2, bidirectional=True, batch_first=True, zoneout=0.2, dropout=0.1)
    eager = Tagger(perturbed(rnn))
    compiled_model = copy.deepcopy(eager)
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(compiled_model, fullgraph=True, backend=counter)
    lengths = torch.tensor([5, 3, 4])
    for model, forward in ((eager, eager), (compiled_model, compiled)):
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        model.losses = []
        for step in range(3):
            torch.manual_seed(100 + step)  # the same data, zoneout masks and dropout
            x = torch.randn(3, 5, 3)
            optimizer.zero_grad()
            loss = forward(x, lengths)
            loss.backward()
            optimizer.step()
            model.losses.append(loss.detach())
    assert counter.frame_count >= 1
    assert any("torch.ops.fused_rnn.layernorm_" in graph.code for graph in counter.graphs)
    torch.testing.assert_close(torch.stack(compiled_model.losses), torch.stack(eager.losses))
    for (name, a), b in zip(compiled_model.named_parameters(), eager.parameters()):
        torch.testing.assert_close(a, b, msg=name)
    torch._dynamo.reset()


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [fused_rnn.LayerNormLSTM, fused_rnn.LayerNormGRU,
                                 fused_rnn.LayerNormLSTMCell, fused_rnn.LayerNormGRUCell])
@pytest.mark.parametrize("kwargs, message", [
    (dict(zoneout=1.0), "zoneout must be a probability in"),
    (dict(zoneout=-0.1), "zoneout must be a probability in"),
    (dict(eps=0.0), "eps must be a positive number"),
    (dict(eps=-1e-5), "eps must be a positive number"),
])
def test_bad_options_refused_at_construction(cls, kwargs, message):
    with pytest.raises(ValueError, match=message):
        cls(3, 4, **kwargs)


def test_bad_zoneout_cell_refused():
    with pytest.raises(ValueError, match="zoneout_cell must be a probability"):
        fused_rnn.LayerNormLSTM(3, 4, zoneout_cell=1.5)
    with pytest.raises(ValueError, match="only supported for LayerNormLSTM"):
        fused_rnn.LayerNormGRU(3, 4, zoneout_cell=0.1)


def test_bad_constructor_arguments_as_torch_nn():
    for make_ours, make_theirs in ((fused_rnn.LayerNormLSTM, torch.nn.LSTM),
                                   (fused_rnn.LayerNormGRU, torch.nn.GRU)):
        for args, kwargs in (((3, 0), {}), ((3, 4), dict(dropout=1.5)), ((3, 4), dict(num_layers=0))):
            with pytest.raises(ValueError) as theirs:
                make_theirs(*args, **kwargs)
            with pytest.raises(ValueError) as ours:
                make_ours(*args, **kwargs)
            assert str(ours.value) == str(theirs.value)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_bad_input_errors_as_torch_nn(cell):
    ours_cls = fused_rnn.LayerNormLSTM if cell == "lstm" else fused_rnn.LayerNormGRU
    theirs_cls = torch.nn.LSTM if cell == "lstm" else torch.nn.GRU
    ours, theirs = ours_cls(3, 4), theirs_cls(3, 4)
    bad_h = torch.zeros(1, 2, 5)
    bad_hx = (bad_h, torch.zeros(1, 2, 4)) if cell == "lstm" else bad_h
    for args in ((torch.zeros(5, 2, 4),), (torch.zeros(5, 2, 3), bad_hx), (torch.zeros(2, 3, 4, 5),)):
        with pytest.raises(Exception) as expected:
            theirs(*args)
        with pytest.raises(type(expected.value)) as got:
            ours(*args)
        assert str(got.value) == str(expected.value)


def test_op_argument_errors():
    T, B, H = 2, 2, 3
    xw3, w, g, h0 = torch.randn(T, B, 3 * H), torch.randn(3 * H, H), torch.ones(3 * H), torch.zeros(B, H)

    def gru(gamma_ih=g, gamma_hh=g, mask=None, p=0.0, eps=1e-5):
        return ops.layernorm_gru_forward(xw3, gamma_ih, None, w, gamma_hh, None, h0, mask, p, None,
                                         False, eps, True)

    with pytest.raises(RuntimeError, match="zoneout_h_mask must be a bool tensor"):
        gru(mask=torch.zeros(T, B, H))
    with pytest.raises(RuntimeError, match="zoneout_h_mask"):
        gru(mask=torch.zeros(T, B, H + 1, dtype=torch.bool))
    with pytest.raises(RuntimeError, match=r"zoneout_h must lie in \[0, 1\)"):
        gru(p=1.0)
    with pytest.raises(RuntimeError, match="eps must be positive"):
        gru(eps=0.0)
    with pytest.raises(RuntimeError, match="gamma_hh"):
        gru(gamma_hh=torch.ones(H))
    with pytest.raises(RuntimeError, match="gamma_ih"):
        gru(gamma_ih=torch.ones(H))
    y, _, p_hat, stats = gru()
    assert stats.dtype == torch.float32 and stats.shape == (T, B, 3)
    with pytest.raises(RuntimeError, match="stats"):
        ops.layernorm_gru_backward(y, None, xw3, g, None, w, g, None, h0, None, 0.0, y, p_hat,
                                   stats[..., :2], None, False)
    # the LSTM op's input LN and its statistics workspace
    xw, w4, g4, g = torch.randn(T, B, 4 * H), torch.randn(4 * H, H), torch.ones(4 * H), torch.ones(H)

    def lstm(gamma_ih=g4, bias=None):
        return ops.layernorm_lstm_forward(xw, gamma_ih, bias, w4, g4, g, g, h0, h0, None, None,
                                          0.0, 0.0, None, False, 1e-5, True)

    with pytest.raises(RuntimeError, match="gamma_ih"):
        lstm(gamma_ih=torch.ones(3 * H))
    with pytest.raises(RuntimeError, match="bias"):
        lstm(bias=torch.ones(4 * H, dtype=torch.float64))
    y, _, _, p_hat, c_hat, cs, stats = lstm()
    assert stats.dtype == torch.float32 and stats.shape == (T, B, 4)

    def lstm_backward(stats):
        return ops.layernorm_lstm_backward(y, None, None, xw, g4, None, w4, g4, g, g, h0, h0, None,
                                           None, 0.0, 0.0, y, p_hat, c_hat, cs, stats, None, False)

    with pytest.raises(RuntimeError, match="stats has dtype"):
        lstm_backward(stats.double())
    with pytest.raises(RuntimeError, match="stats"):
        lstm_backward(stats[..., :2])


def test_unavailable_backend_refused():
    module = fused_rnn.LayerNormGRU(3, 4, backend="cuda")
    with pytest.raises(RuntimeError, match="backend 'cuda' is not available"):
        module(torch.zeros(2, 1, 3))
    with pytest.raises(ValueError, match="backend must be one of"):
        fused_rnn.LayerNormGRU(3, 4, backend="fast")
