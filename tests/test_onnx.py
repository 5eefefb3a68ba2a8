"""ONNX: both of torch's exporters (dynamo=True and the TorchScript-based dynamo=False) turn
fused_rnn's layers and cells into ONNX's LSTM, GRU and RNN operators. The exported file passes
onnx.checker, and onnxruntime's outputs at a batch size and length other than the exported ones
equal torch.nn's with the same weights; options the operators cannot express are refused by
name."""

from __future__ import annotations

import io
import warnings

import pytest
import torch
from torch import nn
from torch.export import Dim
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import fused_rnn
from fused_rnn.deploy import onnx as fused_onnx

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

pytestmark = pytest.mark.filterwarnings(
    "ignore::FutureWarning", "ignore::DeprecationWarning", "ignore::torch.jit.TracerWarning"
)

I, H = 5, 4
EXPORTERS = ["dynamo", "torchscript"]
LAYER = {
    "lstm": (fused_rnn.LSTM, nn.LSTM, {}),
    "gru": (fused_rnn.GRU, nn.GRU, {}),
    "rnn_tanh": (fused_rnn.RNN, nn.RNN, {"nonlinearity": "tanh"}),
    "rnn_relu": (fused_rnn.RNN, nn.RNN, {"nonlinearity": "relu"}),
}


def export(model, args, names, dynamic, exporter):
    """The ONNX model of ``model(*args)``. ``names``: one per argument; ``dynamic``: name ->
    {dim: label}, for both exporters (dynamo gets Dims of those labels). Arguments that are None
    are no inputs of the graph."""
    buffer = io.BytesIO()
    given = [name for name, arg in zip(names, args) if arg is not None]
    if exporter == "dynamo":
        pytest.importorskip("onnxscript")
        dims = {}
        dynamic_shapes = [
            {dim: dims.setdefault(label, Dim(label, min=1)) for dim, label in dynamic[name].items()}
            if name in dynamic and arg is not None else None
            for name, arg in zip(names, args)
        ]
        program = torch.onnx.export(
            model, args, dynamo=True, input_names=given, dynamic_shapes=dynamic_shapes,
            verbose=False,
        )
        program.save(buffer)
    else:
        torch.onnx.export(
            model, args, buffer, dynamo=False, input_names=given,
            dynamic_axes={name: dims for name, dims in dynamic.items() if name in given},
        )
    exported = onnx.load_from_string(buffer.getvalue())
    onnx.checker.check_model(exported, full_check=True)
    return exported


def run(exported, *args):
    """onnxruntime's outputs for ``args`` (those that are None are no inputs of the graph)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(exported.SerializeToString(), options)
    names = [value.name for value in session.get_inputs()]
    feed = {name: arg.numpy() for name, arg in zip(names, [a for a in args if a is not None])}
    return [torch.from_numpy(output) for output in session.run(None, feed)]


def operators(exported) -> list[str]:
    return [node.op_type for node in exported.graph.node]


def assert_close_to(got, want):
    assert len(got) == len(want)
    for index, (a, b) in enumerate(zip(got, want)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5, msg=lambda m: f"output {index}: {m}")


class Layers(nn.Module):
    """Every kind of layer, each as a stack of two: 2 layers, bidirectional, given states and
    lengths; then batch_first, no bias, no states, no lengths. One export serves every kind."""

    def __init__(self, library):
        super().__init__()
        self.first, self.second = nn.ModuleDict(), nn.ModuleDict()
        for cell, (fused_class, torch_class, extra) in LAYER.items():
            layer = fused_class if library == "fused" else torch_class
            self.first[cell] = layer(I, H, num_layers=2, bidirectional=True, **extra)
            self.second[cell] = layer(2 * H, H, batch_first=True, bias=False, **extra)
        self.packs = library == "torch"  # torch.nn's layers take lengths as a PackedSequence

    def forward(self, x, h0, c0, lengths):  # x [T, B, I]
        outputs = []
        for cell in LAYER:
            hx = (h0, c0) if cell == "lstm" else h0
            if self.packs:
                packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
                y, first_states = self.first[cell](packed, hx)
                y = pad_packed_sequence(y, total_length=x.shape[0])[0]
            else:
                y, first_states = self.first[cell](x, hx, lengths)
            z, second_states = self.second[cell](y.transpose(0, 1))
            outputs += [y, z, *_flat(first_states), *_flat(second_states)]
        return tuple(outputs)


def _flat(states):
    return list(states) if isinstance(states, tuple) else [states]


def outputs_of(cell, outputs):
    """The outputs of one kind of layer among Layers' (y, z and the states of both layers)."""
    counts = {name: 6 if name == "lstm" else 4 for name in LAYER}
    start = sum(counts[name] for name in list(LAYER)[: list(LAYER).index(cell)])
    return outputs[start : start + counts[cell]]


def layer_inputs(steps, batch, seed, zero_length=False):
    """(x, h0, c0, lengths) for Layers."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(steps, batch, I, generator=generator)
    h0, c0 = (torch.randn(4, batch, H, generator=generator) for _ in range(2))
    lengths = torch.randint(1, steps + 1, (batch,), generator=generator)
    lengths[0] = steps
    if zero_length:
        lengths[-1] = 0
    return x, h0, c0, lengths


@pytest.fixture(scope="module", params=EXPORTERS)
def layers(request):
    """(torch.nn's model, fused_rnn's with the same weights, its ONNX export)."""
    torch.manual_seed(0)
    reference = Layers("torch").eval()
    model = Layers("fused").eval()
    model.load_state_dict(reference.state_dict())
    batch = {1: "batch"}
    exported = export(
        model, layer_inputs(4, 3, seed=1), ["x", "h0", "c0", "lengths"],
        {"x": {0: "steps", 1: "batch"}, "h0": batch, "c0": batch, "lengths": {0: "batch"}},
        request.param,
    )
    return reference, model, exported


def test_layers_are_onnx_operators(layers):
    _, _, exported = layers
    recurrent = [op for op in operators(exported) if op in ("LSTM", "GRU", "RNN")]
    assert recurrent == ["LSTM"] * 3 + ["GRU"] * 3 + ["RNN"] * 6  # per kind 2 layers, then 1
    assert all(node.domain in ("", "ai.onnx") for node in exported.graph.node)


@pytest.mark.parametrize("cell", list(LAYER))
def test_layers_match_torch_nn(layers, cell):
    reference, model, exported = layers
    args = layer_inputs(6, 2, seed=2)
    with torch.no_grad():
        assert_close_to(outputs_of(cell, run(exported, *args)), outputs_of(cell, reference(*args)))
        # a sequence of length 0 (which torch.nn cannot take) keeps its initial state
        args = layer_inputs(6, 3, seed=3, zero_length=True)
        assert_close_to(outputs_of(cell, run(exported, *args)), outputs_of(cell, model(*args)))


class Cells(nn.Module):
    def __init__(self, library):
        super().__init__()
        fused = library == "fused"
        self.lstm = (fused_rnn.LSTMCell if fused else nn.LSTMCell)(I, H)
        self.gru = (fused_rnn.GRUCell if fused else nn.GRUCell)(H, H, bias=False)
        self.tanh = (fused_rnn.RNNCell if fused else nn.RNNCell)(H, H)
        self.relu = (fused_rnn.RNNCell if fused else nn.RNNCell)(H, H, nonlinearity="relu")

    def forward(self, x, h, c):  # x [B, I], h and c [B, H]
        h, c = self.lstm(x, (h, c))
        g = self.gru(h)
        return h, c, g, self.tanh(g, h), self.relu(g)


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_cells_export_as_onnx_operators(exporter):
    torch.manual_seed(0)
    reference = Cells("torch")
    model = Cells("fused")
    model.load_state_dict(reference.state_dict())
    batch = {0: "batch"}
    exported = export(model, (torch.randn(3, I), torch.randn(3, H), torch.randn(3, H)),
                      ["x", "h", "c"], {"x": batch, "h": batch, "c": batch}, exporter)
    assert [op for op in operators(exported) if op in ("LSTM", "GRU", "RNN")] == [
        "LSTM", "GRU", "RNN", "RNN"
    ]
    args = (torch.randn(2, I), torch.randn(2, H), torch.randn(2, H))
    with torch.no_grad():
        assert_close_to(run(exported, *args), reference(*args))


def test_linear_op_exports_as_matmul():
    """The CPU backend's input projection, called directly: MatMul and Add."""

    class Projection(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.randn(6, I))
            self.bias = nn.Parameter(torch.randn(6))

        def forward(self, x):
            return torch.ops.fused_rnn.linear(x, self.weight, self.bias)

    model, x = Projection(), torch.randn(3, 2, I)
    for exporter in EXPORTERS:
        if exporter == "dynamo":
            pytest.importorskip("onnxscript")
            buffer = io.BytesIO()
            torch.onnx.export(model, (x,), dynamo=True, verbose=False,
                              custom_translation_table=fused_onnx.translation_table()).save(buffer)
            exported = onnx.load_from_string(buffer.getvalue())
        else:
            exported = export(model, (x,), ["x"], {}, exporter)
        assert sorted(operators(exported)) == ["Add", "MatMul"]
        with torch.no_grad():
            assert_close_to(run(exported, x), [model(x)])


# (what, module, input): each is an option ONNX's recurrent operators cannot express
REFUSED = {
    "proj_size": (lambda: fused_rnn.LSTM(I, H, proj_size=2), lambda: torch.randn(4, 3, I)),
    "dropout": (lambda: fused_rnn.GRU(I, H, num_layers=2, dropout=0.5).train(),
                lambda: torch.randn(4, 3, I)),
    "PackedSequence": (lambda: Packing(fused_rnn.RNN(I, H)), lambda: torch.randn(4, 2, I)),
}


class Packing(nn.Module):
    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def forward(self, x):
        return self.layer(pack_padded_sequence(x, [4, 2]))[1]


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("option", list(REFUSED))
def test_inexpressible_option_is_refused_by_name(option, exporter):
    make_module, make_input = REFUSED[option]
    kwargs = {"training": torch.onnx.TrainingMode.PRESERVE} if exporter == "torchscript" else {}
    if exporter == "dynamo":
        pytest.importorskip("onnxscript")
    with pytest.raises(Exception, match=option) as error:
        torch.onnx.export(make_module(), (make_input(),), io.BytesIO(),
                          dynamo=exporter == "dynamo", **kwargs)
    assert "fused_rnn" in str(error.value)


def test_traced_model_is_refused_with_the_way_out():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(fused_rnn.GRU(I, H).eval(), (torch.randn(4, 3, I),))
    with pytest.raises(Exception, match="export the Python module itself"):
        torch.onnx.export(traced, (torch.randn(4, 3, I),), io.BytesIO(), dynamo=False)
