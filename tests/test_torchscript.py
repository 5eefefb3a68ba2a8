"""TorchScript: torch.jit.script and torch.jit.trace of models built from fused_rnn's layers and
cells give the eager model's outputs and gradients at shapes other than the traced ones, record
fused_rnn's own ops (no torch.nn kernel behind a scripted layer), and load in a fresh process
that imports fused_rnn."""

from __future__ import annotations

import subprocess
import sys
import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

import fused_rnn
from deploy_models import Transducer, assert_same_outputs, inputs

pytestmark = pytest.mark.filterwarnings(
    "ignore:`torch.jit.(script|trace|trace_method)` is deprecated:FutureWarning"
)

SHAPES = [(6, 2), (1, 1)]  # (T, B): neither is the traced (4, 3)


@pytest.fixture(autouse=True)
def nan_filled_empty():
    """Replaces conftest's fixture of that name: TorchScript compiles torch's packing functions,
    which call torch.empty_like, and cannot compile conftest's NaN-filling stand-in for it."""
    yield


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return Transducer().eval()


@pytest.fixture(scope="module")
def scripted(model):
    return torch.jit.script(model)


def node_kinds(module) -> set[str]:
    return {node.kind() for node in module.inlined_graph.nodes()}


def assert_runs_fused_ops(module):
    kinds = node_kinds(module)
    assert {"fused_rnn::stack", "fused_rnn::step"} <= kinds
    torch_nn_kernels = {kind for kind in kinds if kind.startswith("aten::") and "rnn" in kind}
    torch_nn_kernels |= {kind for kind in kinds if "lstm" in kind or "gru" in kind}
    assert not torch_nn_kernels


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "T{}B{}".format(*s))
def test_script_matches_eager_with_and_without_states(model, scripted, shape):
    assert_runs_fused_ops(scripted)
    x, h0, c0, lengths = inputs(*shape, seed=1)
    assert_same_outputs(scripted(x, h0, c0, lengths), model(x, h0, c0, lengths))
    assert_same_outputs(scripted(x), model(x))
    assert_same_outputs(scripted(x, lengths=lengths), model(x, lengths=lengths))


def test_scripted_model_trains_like_eager(model, scripted):
    """The scripted layers and cells run the eager code, autograd included."""
    args = inputs(5, 3, seed=2)
    parameters = list(model.parameters())

    def gradients(module):
        loss = sum((output * output).sum() for output in module(*args))
        return torch.autograd.grad(loss, parameters)

    assert_same_outputs(gradients(scripted), gradients(model), atol=1e-5)


@pytest.mark.parametrize("grad_mode", [True, False], ids=["grad", "no_grad"])
def test_trace_matches_eager(model, grad_mode):
    """torch.jit.trace checks that two traces give the same graph: the layers' ops must not
    depend on grad mode (whether a backward's workspace is kept is decided when they run)."""
    with torch.set_grad_enabled(grad_mode):
        traced = torch.jit.trace(model, inputs(4, 3))
    assert_runs_fused_ops(traced)
    for shape in SHAPES:
        args = inputs(*shape, seed=1)
        assert_same_outputs(traced(*args), model(*args))
        with torch.no_grad():
            assert_same_outputs(traced(*args), model(*args))


class PackedModel(nn.Module):
    """A scripted model that packs: the layers take and return PackedSequences, as torch.nn's."""

    def __init__(self):
        super().__init__()
        self.lstm = fused_rnn.LSTM(3, 4, batch_first=True)
        self.gru = fused_rnn.GRU(4, 4, batch_first=True)

    def forward(self, x, lengths):
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        encoded, (h_n, c_n) = self.lstm(packed)
        decoded, g_n = self.gru(encoded, h_n)
        assert isinstance(decoded, PackedSequence)
        return pad_packed_sequence(decoded, batch_first=True)[0], c_n, g_n


def test_script_takes_packed_sequences():
    model = PackedModel()
    scripted = torch.jit.script(model)
    x, lengths = torch.randn(3, 5, 3), torch.tensor([2, 5, 4])
    assert_same_outputs(scripted(x, lengths), model(x, lengths))


_FRESH_PROCESS = """
import sys
import torch
import fused_rnn  # registers fused_rnn::stack and fused_rnn::step

args = torch.load(sys.argv[1])
outputs = [torch.jit.load(path)(*args) for path in sys.argv[3:]]
torch.save(outputs, sys.argv[2])
"""


def test_saved_programs_run_in_a_fresh_process(model, scripted, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        traced = torch.jit.trace(model, inputs(4, 3))
    paths = [str(tmp_path / "scripted.pt"), str(tmp_path / "traced.pt")]
    scripted.save(paths[0])
    traced.save(paths[1])
    args = inputs(7, 2, seed=3)
    torch.save(args, tmp_path / "args.pt")
    result = subprocess.run(
        [sys.executable, "-c", _FRESH_PROCESS, str(tmp_path / "args.pt"), str(tmp_path / "out.pt"),
         *paths],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr
    expected = model(*args)
    for outputs in torch.load(tmp_path / "out.pt"):
        assert_same_outputs(outputs, expected)


def test_opcheck():
    """torch.library.opcheck on both ops: schema, fake tensors, autograd registration (not AOT
    dispatch: TorchScript runs them, torch.compile and torch.export never meet them)."""
    lstm, cell = fused_rnn.LSTM(3, 4, num_layers=2, proj_size=2), fused_rnn.GRUCell(3, 4)
    x = torch.randn(5, 2, 3, requires_grad=True)
    checks = ("test_schema", "test_autograd_registration", "test_faketensor")
    torch.library.opcheck(
        torch.ops.fused_rnn.stack.default,
        ("lstm", x, None, None, list(lstm._flat_weights), True, True, False, 0.0, False, False,
         torch.tensor([5, 3]), "auto"),
        test_utils=checks,
    )
    torch.library.opcheck(
        torch.ops.fused_rnn.step.default,
        ("gru", x[0], torch.randn(2, 4), None, cell.weight_ih, cell.weight_hh, cell.bias_ih,
         cell.bias_hh, "auto"),
        test_utils=checks,
    )
