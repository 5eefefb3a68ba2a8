"""torch.compile(fullgraph=True) on models built from fused_rnn layers and cells.

Compiled training (forward, backward, optimizer steps) must match eager training step for step.
On the CPU most cases compile with the ``aot_eager`` backend: it runs everything that matters
for fused_rnn (Dynamo tracing with no graph break, the fake kernels, the registered autograd
under AOTAutograd) at a fraction of Inductor's compile time; one end-to-end case goes through
Inductor, the default backend. On the GPU every case goes through Inductor.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch._dynamo.testing import CompileCounterWithBackend
from torch.nn.utils.rnn import pack_padded_sequence

import fused_rnn

LAYER_CLASSES = {
    "lstm": (fused_rnn.LSTM, {}),
    "gru": (fused_rnn.GRU, {}),
    "rnn_tanh": (fused_rnn.RNN, {"nonlinearity": "tanh"}),
    "rnn_relu": (fused_rnn.RNN, {"nonlinearity": "relu"}),
}

INPUT, HIDDEN, OUT = 5, 6, 3


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Each test starts and ends with empty Dynamo caches, so that compile counts are its own."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


class Tagger(nn.Module):
    """A recurrent layer and a linear head on every step: the usual sequence-labelling shape.
    Returns the per-step scores and the final state so that a loss can depend on both."""

    def __init__(self, rnn: nn.Module, out_width: int):
        super().__init__()
        self.rnn = rnn
        self.head = nn.Linear(out_width, OUT)

    def forward(self, x, hx=None, lengths=None):
        output, state = self.rnn(x, hx, lengths=lengths)
        return self.head(output), state


class CellLoop(nn.Module):
    """An LSTM cell, a GRU cell and an RNN cell unrolled over time by hand."""

    def __init__(self):
        super().__init__()
        self.lstm = fused_rnn.LSTMCell(INPUT, HIDDEN)
        self.gru = fused_rnn.GRUCell(HIDDEN, HIDDEN)
        self.rnn = fused_rnn.RNNCell(HIDDEN, HIDDEN, nonlinearity="relu")
        self.head = nn.Linear(HIDDEN, OUT)

    def forward(self, x, h0):  # x [T, B, I], h0 [B, H]
        h, c = h0, torch.zeros_like(h0)
        g = r = None  # the GRU and RNN cells start from their default zero state
        outputs = []
        for step in x.unbind(0):
            h, c = self.lstm(step, (h, c))
            g = self.gru(h, g)
            r = self.rnn(g, r)
            outputs.append(self.head(r))
        return torch.stack(outputs), (h, c)


def states_of(state):
    return list(state) if isinstance(state, tuple) else [state]


def loss_of(scores, state, target):
    # every output reaches the loss: the per-step scores and each final state
    return nn.functional.mse_loss(scores, target) + sum(s.pow(2).mean() for s in states_of(state))


def train(model, batches, *, forward=None):
    """A few SGD steps with momentum; returns the losses and the gradients of the first step.
    ``forward`` is the (compiled) callable, ``model`` the module that owns the parameters."""
    forward = model if forward is None else forward
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    losses, first_grads = [], None
    for inputs, target in batches:
        optimizer.zero_grad()
        scores, state = forward(*inputs)
        loss = loss_of(scores, state, target)
        loss.backward()
        if first_grads is None:
            first_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        optimizer.step()
        losses.append(loss.detach())
    return losses, first_grads


def assert_training_matches(model, batches, *, backend="aot_eager", atol=1e-6, rtol=1e-5):
    eager = copy.deepcopy(model)
    compiled_model = copy.deepcopy(model)
    counter = CompileCounterWithBackend(backend)
    compiled = torch.compile(compiled_model, fullgraph=True, backend=counter)
    eager_losses, eager_grads = train(eager, batches)
    compiled_losses, compiled_grads = train(compiled_model, batches, forward=compiled)
    # it did compile, and fused_rnn's ops are in the graph (not traced through to something else)
    assert counter.frame_count >= 1
    assert any("torch.ops.fused_rnn." in graph.code for graph in counter.graphs)
    torch.testing.assert_close(torch.stack(compiled_losses), torch.stack(eager_losses), atol=atol, rtol=rtol)
    for name in eager_grads:
        torch.testing.assert_close(compiled_grads[name], eager_grads[name], atol=atol, rtol=rtol, msg=name)
    for (name, p_compiled), p_eager in zip(compiled_model.named_parameters(), eager.parameters()):
        torch.testing.assert_close(p_compiled, p_eager, atol=atol, rtol=rtol, msg=name)


# ---------------------------------------------------------------------------------------------
# Layers: training under fullgraph=True matches eager
# ---------------------------------------------------------------------------------------------

# plain: time-major, one direction, one layer, default hx, no lengths.
# full: batch_first, bidirectional, two layers, hx given (and learned through), lengths; the
#       LSTM with a projection too.
CONFIGS = [
    ("lstm", "plain"),
    ("lstm", "full"),
    ("gru", "plain"),
    ("gru", "full"),
    ("rnn_tanh", "plain"),
    ("rnn_relu", "full"),
]


def make_case(cell, config, *, device="cpu", backend="auto", steps=3, T=7, B=4):
    cls, extra = LAYER_CLASSES[cell]
    full = config == "full"
    kwargs = dict(num_layers=2, bidirectional=True, batch_first=True) if full else {}
    if full and cell == "lstm":
        kwargs["proj_size"] = 4
    rnn = cls(INPUT, HIDDEN, backend=backend, **extra, **kwargs)
    directions = 2 if full else 1
    width = kwargs.get("proj_size", HIDDEN)
    model = Tagger(rnn, directions * width).to(device)

    batches = []
    for _ in range(steps):
        x = torch.randn((B, T, INPUT) if full else (T, B, INPUT), device=device)
        target = torch.randn((B, T, OUT) if full else (T, B, OUT), device=device)
        if not full:
            batches.append(((x,), target))
            continue
        layers = 2 * directions
        h0 = torch.randn(layers, B, width, device=device, requires_grad=True)
        hx = (h0, torch.randn(layers, B, HIDDEN, device=device)) if cell == "lstm" else h0
        lengths = torch.tensor([T, 1, T - 2, 3][:B])  # CPU int64, as torch.nn takes them
        batches.append(((x, hx, lengths), target))
    return model, batches


@pytest.mark.parametrize("cell, config", CONFIGS)
def test_training_matches_eager(cell, config):
    model, batches = make_case(cell, config)
    assert_training_matches(model, batches)


def test_gradient_reaches_given_state():
    """hx that requires grad gets the same gradient compiled and eager."""
    model, batches = make_case("lstm", "full", steps=1)
    (x, (h0, c0), lengths), _ = batches[0]
    grads = []
    for forward in (model, torch.compile(model, fullgraph=True, backend="aot_eager")):
        h0.grad = None
        scores, state = forward(x, (h0, c0), lengths)
        scores.sum().backward()
        grads.append(h0.grad.clone())
    torch.testing.assert_close(grads[1], grads[0], atol=1e-6, rtol=1e-5)


def test_cells_training_matches_eager():
    model = CellLoop()
    batches = [((torch.randn(4, 3, INPUT), torch.randn(3, HIDDEN)), torch.randn(4, 3, OUT)) for _ in range(3)]
    assert_training_matches(model, batches)


def test_inductor_training_matches_eager():
    """The default backend: Inductor generates code around fused_rnn's ops and calls them."""
    model, batches = make_case("lstm", "full")
    assert_training_matches(model, batches, backend="inductor", atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_backend_selection_traces_without_a_break(cell):
    """Asking whether Triton can run may import fused_rnn.triton_kernels, which Dynamo cannot
    trace; the check must still compile whole (it runs eagerly at trace time) and agree with
    eager, wherever Triton is or is not installed."""

    def pick(x):
        return x + 1 if fused_rnn.backends.available("triton", cell, x.device) else x - 1

    x = torch.zeros(2)
    torch.testing.assert_close(torch.compile(pick, fullgraph=True, backend="aot_eager")(x), pick(x))


# ---------------------------------------------------------------------------------------------
# Dynamic shapes
# ---------------------------------------------------------------------------------------------


def run_shapes(compiled, counter, shapes, *, mark=False):
    """Forward and backward for each (B, T); returns the compile count after each call."""
    counts = []
    for B, T in shapes:
        x = torch.randn(B, T, INPUT)
        lengths = torch.arange(B, 0, -1).clamp(max=T)  # varied, at most T
        if mark:
            # lengths has the batch size too: unmarked, it would pin B to a constant
            torch._dynamo.mark_dynamic(x, 0)
            torch._dynamo.mark_dynamic(x, 1)
            torch._dynamo.mark_dynamic(lengths, 0)
        output, (h_n, _) = compiled(x, lengths=lengths)
        (output.sum() + h_n.sum()).backward()
        counts.append(counter.frame_count)
    return counts


SHAPES = [(2, 3), (3, 5), (4, 9), (2, 16)]


@pytest.mark.parametrize("how", ["dynamic=True", "mark_dynamic"])
def test_no_recompile_across_lengths_and_batches(how):
    model = fused_rnn.LSTM(INPUT, HIDDEN, batch_first=True, bidirectional=True)
    counter = CompileCounterWithBackend("aot_eager")
    dynamic = True if how == "dynamic=True" else None
    compiled = torch.compile(model, fullgraph=True, backend=counter, dynamic=dynamic)
    counts = run_shapes(compiled, counter, SHAPES, mark=how == "mark_dynamic")
    assert counts[0] >= 1
    assert counts == [counts[0]] * len(SHAPES), f"recompiled: compile count per call {counts}"


def test_default_compiles_once_more_then_stays_dynamic():
    """Without dynamic= or marks, torch.compile first specialises on the sizes, recompiles once
    with dynamic sizes when they change (automatic dynamic shapes), then no more."""
    model = fused_rnn.GRU(INPUT, HIDDEN, batch_first=True)
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(model, fullgraph=True, backend=counter)
    counts = []
    for B, T in SHAPES:
        output, h_n = compiled(torch.randn(B, T, INPUT), lengths=torch.full((B,), T))
        (output.sum() + h_n.sum()).backward()
        counts.append(counter.frame_count)
    assert counts[1] > counts[0], "a change of sizes should recompile once"
    assert counts[1:] == [counts[1]] * (len(SHAPES) - 1), f"compile count per call {counts}"


# ---------------------------------------------------------------------------------------------
# What torch.nn does, and PackedSequence
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["LSTM", "GRU", "RNN"])
def test_torch_nn_layer_breaks_the_graph_ours_does_not(name):
    """Dynamo refuses torch.nn.LSTM/GRU/RNN (unless torch._dynamo.config.allow_rnn is set);
    the fused_rnn drop-in with the same weights compiles into one graph."""
    reference = getattr(nn, name)(INPUT, HIDDEN)
    ours = getattr(fused_rnn, name)(INPUT, HIDDEN)
    ours.load_state_dict(reference.state_dict())
    x = torch.randn(4, 2, INPUT)
    with pytest.raises(torch._dynamo.exc.Unsupported, match="RNN, GRU, or LSTM"):
        torch.compile(reference, fullgraph=True, backend="aot_eager")(x)
    output, _ = torch.compile(ours, fullgraph=True, backend="aot_eager")(x)
    torch.testing.assert_close(output, reference(x)[0], atol=1e-6, rtol=1e-5)


def test_packed_sequence_compiles_with_graph_breaks_only():
    """The padding and packing around the layer run outside Dynamo's graphs (on its skip list
    in torch 2.14, disabled explicitly for torch 2.11, whose Dynamo failed on them), so a
    PackedSequence input cannot be compiled with fullgraph=True; without it the model compiles
    around the breaks and matches eager. Padded input with ``lengths=`` is the fullgraph
    route."""
    model = fused_rnn.LSTM(INPUT, HIDDEN, batch_first=True)
    x = torch.randn(3, 6, INPUT)
    lengths = torch.tensor([6, 2, 4])

    def run(x):
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        output, (h_n, c_n) = model(packed)
        return output.data, h_n, c_n

    with pytest.raises(torch._dynamo.exc.Unsupported, match="[Ss]kip"):
        torch.compile(run, fullgraph=True, backend="aot_eager")(x)
    torch._dynamo.reset()
    for got, want in zip(torch.compile(run, backend="aot_eager")(x), run(x)):
        torch.testing.assert_close(got, want)
    # the same sequences through lengths= compile whole and agree with the packed run
    output, (h_n, c_n) = torch.compile(model, fullgraph=True, backend="aot_eager")(x, lengths=lengths)
    torch.testing.assert_close(h_n, run(x)[1], atol=1e-6, rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# GPU
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
@pytest.mark.parametrize("cell, config", CONFIGS)
def test_training_matches_eager_cuda(cell, config, backend):
    if backend == "triton" and cell == "lstm" and config == "full":
        pytest.skip("the Triton kernels have no LSTM projection")
    model, batches = make_case(cell, config, device="cuda", backend=backend)
    assert_training_matches(model, batches, backend="inductor", atol=1e-4, rtol=1e-3)


@pytest.mark.cuda
def test_cells_training_matches_eager_cuda():
    model = CellLoop().cuda()
    batches = [
        ((torch.randn(4, 3, INPUT, device="cuda"), torch.randn(3, HIDDEN, device="cuda")),
         torch.randn(4, 3, OUT, device="cuda"))
        for _ in range(3)
    ]
    assert_training_matches(model, batches, backend="inductor", atol=1e-4, rtol=1e-3)


@pytest.mark.cuda
def test_no_recompile_across_lengths_cuda():
    model = fused_rnn.LSTM(INPUT, HIDDEN, batch_first=True).cuda()
    counter = CompileCounterWithBackend("inductor")
    compiled = torch.compile(model, fullgraph=True, backend=counter, dynamic=True)
    counts = []
    for B, T in SHAPES:
        output, (h_n, _) = compiled(torch.randn(B, T, INPUT, device="cuda"), lengths=torch.full((B,), T))
        (output.sum() + h_n.sum()).backward()
        counts.append(counter.frame_count)
    assert counts == [counts[0]] * len(SHAPES), f"recompiled: compile count per call {counts}"
