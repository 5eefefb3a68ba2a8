"""Second derivatives through the fused layers and cells, against torch.nn's (fp64): a backward
with create_graph=True, differentiated again (Hessian-vector products, gradient penalties);
gradgradcheck; a training step with a gradient penalty. Every layer and cell, with the options
of the layers (layers, directions, projection, lengths and PackedSequence, dropout, hx given or
not), on every backend that runs on the CPU."""

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from helpers import LAYERS, flatten_states, make_cell_pair, make_pair

F64 = torch.float64
CELLS = list(LAYERS)
CPU_BACKENDS = ["cpu", "triton", "reference"]


def tracked_inputs(module, x, hx):
    """The tensors a second derivative is taken for: input, given states, parameters."""
    given = list(flatten_states(hx)) if hx is not None else []
    return [x, *given, *module.parameters()]


def second_derivatives(outputs, inputs, *, seed=7):
    """Outputs, the first derivatives (create_graph=True) of a random linear function of the
    outputs, and the derivatives of a penalty on them (linear plus squared, as in a gradient
    penalty), all with respect to ``inputs``."""
    generator = torch.Generator().manual_seed(seed)

    def rand_like(t):
        return torch.randn(t.shape, generator=generator, dtype=t.dtype)

    loss = sum((o * rand_like(o)).sum() for o in outputs)
    firsts = torch.autograd.grad(loss, inputs, create_graph=True)
    penalty = sum((g * rand_like(g)).sum() + (g * g).sum() for g in firsts)
    seconds = torch.autograd.grad(penalty, inputs)
    return [o.detach() for o in outputs] + [g.detach() for g in firsts] + list(seconds)


def leaf(*shape):
    return torch.randn(*shape, dtype=F64, requires_grad=True)


def states(cell, layers, batch, hidden, proj=0):
    h0 = leaf(layers, batch, proj or hidden)
    return (h0, leaf(layers, batch, hidden)) if cell == "lstm" else h0


def assert_same(ours, theirs, atol=1e-10):
    assert len(ours) == len(theirs)
    for index, (a, b) in enumerate(zip(ours, theirs)):
        torch.testing.assert_close(a, b, atol=atol, rtol=atol, msg=lambda m: f"#{index}: {m}")


def compare_layers(cell, options, *, backend="cpu", given_hx=True, lengths=None, packed=False,
                   T=4, B=3, I=3, H=4):
    """Both layers with the same weights, input and states: the same outputs, first and second
    derivatives. With lengths, torch.nn runs the PackedSequence (its output padded back), ours
    the padded input with lengths= (or with packed, the PackedSequence too)."""
    options = dict(options)
    dropout_seed = options.pop("dropout_seed", None)
    fused, reference = make_pair(cell, I, H, dtype=F64, backend=backend, **options)
    D = 2 if options.get("bidirectional") else 1
    x = leaf(T, B, I)
    hx = states(cell, options.get("num_layers", 1) * D, B, H, options.get("proj_size", 0)) if given_hx else None
    results = []
    for module in (fused, reference):
        if dropout_seed is not None:
            module.train()
            torch.manual_seed(dropout_seed)
        if lengths is None:
            output, final = module(x, hx)
        elif module is fused and not packed:
            output, final = module(x, hx, lengths=lengths)
        else:
            output, final = module(pack_padded_sequence(x, lengths, enforce_sorted=False), hx)
            output = pad_packed_sequence(output, total_length=T)[0]
        outputs = [output, *flatten_states(final)]
        results.append(second_derivatives(outputs, tracked_inputs(module, x, hx)))
    assert_same(*results)


OPTIONS = {
    "1 layer": dict(),
    "2 layers bidirectional": dict(num_layers=2, bidirectional=True),
    "3 layers no bias": dict(num_layers=3, bias=False),
    "dropout": dict(num_layers=3, dropout=0.5, dropout_seed=3),
}


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("options", list(OPTIONS))
@pytest.mark.parametrize("given_hx", [True, False])
def test_layer_second_derivatives_match_torch(cell, options, given_hx):
    compare_layers(cell, OPTIONS[options], given_hx=given_hx)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("packed", [False, True], ids=["lengths", "packed"])
def test_variable_lengths_second_derivatives_match_torch(cell, packed):
    compare_layers(cell, dict(num_layers=2, bidirectional=True), lengths=torch.tensor([4, 1, 3]),
                   packed=packed)


@pytest.mark.parametrize("options", [dict(), dict(num_layers=2, bidirectional=True)], ids=str)
def test_lstm_projection_second_derivatives_match_torch(options):
    compare_layers("lstm", dict(options, proj_size=2))


@pytest.mark.parametrize("backend", ["triton", "reference"])
@pytest.mark.parametrize("cell", CELLS)
def test_other_backends_second_derivatives_match_torch(backend, cell):
    compare_layers(cell, dict(num_layers=2, bidirectional=True), backend=backend, T=3, B=2,
                   lengths=torch.tensor([3, 2]))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("bias", [True, False])
def test_cell_second_derivatives_match_torch(backend, cell, bias):
    fused, reference = make_cell_pair(cell, 3, 4, bias=bias, dtype=F64, backend=backend)
    x = leaf(3, 2, 3)
    hx = (leaf(2, 4), leaf(2, 4)) if cell == "lstm" else leaf(2, 4)
    results = []
    for module in (fused, reference):
        output, final = module(x, hx)
        outputs = [output, *flatten_states(final)]
        results.append(second_derivatives(outputs, tracked_inputs(module, x, hx)))
    assert_same(*results)


@pytest.mark.parametrize("cell", CELLS)
def test_gradgradcheck_layers(cell):
    """gradgradcheck of a small layer with everything at once: 2 bidirectional layers,
    lengths, given states (and a projection for the LSTM)."""
    extra = dict(proj_size=1) if cell == "lstm" else {}
    fused, _ = make_pair(cell, 2, 2, dtype=F64, num_layers=2, bidirectional=True, **extra)
    names = [name for name, _ in fused.named_parameters()]
    x = leaf(2, 2, 2)
    hx = states(cell, 4, 2, 2, extra.get("proj_size", 0))
    lengths = torch.tensor([2, 1])

    def fn(x, *rest):
        n_states = len(flatten_states(hx))
        given = tuple(rest[:n_states])
        params = dict(zip(names, rest[n_states:]))
        h = given if cell == "lstm" else given[0]
        output, final = torch.func.functional_call(fused, params, (x, h), {"lengths": lengths})
        return (output, *flatten_states(final))

    # fast_mode: a random projection of the Jacobians (the ops' full check: test_ops.py)
    torch.autograd.gradgradcheck(fn, [x, *flatten_states(hx), *fused.parameters()], fast_mode=True)


@pytest.mark.parametrize("cell", CELLS)
def test_gradgradcheck_cells(cell):
    fused = make_cell_pair(cell, 2, 2, dtype=F64, backend="cpu")[0].cell
    names = [name for name, _ in fused.named_parameters()]
    x = leaf(2, 2)
    hx = (leaf(2, 2), leaf(2, 2)) if cell == "lstm" else leaf(2, 2)

    def fn(x, *rest):
        n_states = len(flatten_states(hx))
        h = tuple(rest[:n_states]) if cell == "lstm" else rest[0]
        out = torch.func.functional_call(fused, dict(zip(names, rest[n_states:])), (x, h))
        return flatten_states(out)

    torch.autograd.gradgradcheck(fn, [x, *flatten_states(hx), *fused.parameters()])


@pytest.mark.parametrize("cell", CELLS)
def test_gradient_penalty_training_matches_torch(cell):
    """A few SGD steps on a loss with a penalty on the input gradient (as in WGAN-GP or
    double backpropagation): the same parameters as torch.nn's after every step."""
    fused, reference = make_pair(cell, 3, 4, dtype=F64, num_layers=2, batch_first=True)
    x = torch.randn(2, 5, 3, dtype=F64)
    target = torch.randn(2, 4, dtype=F64)
    optimizers = [torch.optim.SGD(m.parameters(), lr=0.1) for m in (fused, reference)]
    for _ in range(3):
        for module, optimizer in zip((fused, reference), optimizers):
            inp = x.clone().requires_grad_()
            output, _ = module(inp)
            loss = ((output[:, -1] - target) ** 2).mean()
            (grad_x,) = torch.autograd.grad(loss, inp, create_graph=True)
            optimizer.zero_grad()
            (loss + 10.0 * (grad_x ** 2).sum()).backward()
            optimizer.step()
        for (name, ours), theirs in zip(fused.named_parameters(), reference.parameters()):
            torch.testing.assert_close(ours, theirs, atol=1e-10, rtol=1e-10, msg=name)
