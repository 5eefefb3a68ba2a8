"""torch.export and AOTInductor: a model built from fused_rnn's layers and cells exports with
dynamic batch size and sequence length (torch.nn's LSTM cannot make the length dynamic), records
fused_rnn's ops, saves and loads, and runs as an AOTInductor package in a fresh process that
either imports fused_rnn or only loads its library with torch.ops.load_library."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch.export import Dim
from torch.nn.utils.rnn import pack_padded_sequence

import fused_rnn
from deploy_models import Transducer, assert_same_outputs, inputs

SHAPES = [(6, 2), (1, 1)]  # (T, B): neither is the exported (4, 3)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return Transducer().eval()


@pytest.fixture(scope="module")
def exported(model):
    batch, steps = Dim("batch", min=1), Dim("steps", min=1)
    dynamic_shapes = ({0: steps, 1: batch}, {1: batch}, {1: batch}, {0: batch})
    with torch.no_grad():
        return torch.export.export(model, inputs(4, 3), dynamic_shapes=dynamic_shapes)


def test_export_has_dynamic_batch_and_time(model, exported, tmp_path):
    targets = {str(node.target) for node in exported.graph.nodes if node.op == "call_function"}
    assert {"fused_rnn.lstm_forward.default", "fused_rnn.gru_forward.default"} <= targets
    path = tmp_path / "model.pt2"
    torch.export.save(exported, path)
    for program in (exported, torch.export.load(path)):
        for shape in SHAPES:
            args = inputs(*shape, seed=1)
            assert_same_outputs(program.module()(*args), model(*args))


_FRESH_PROCESS = """
import sys
import torch

if sys.argv[3] == "import":
    import fused_rnn
else:  # the ops' kernels only, without fused_rnn's Python package
    torch.ops.load_library(sys.argv[3])
    assert "fused_rnn" not in sys.modules
program = torch._inductor.aoti_load_package(sys.argv[1])
torch.save(program(*torch.load(sys.argv[2])), sys.argv[2] + ".out")
"""


def test_aoti_package_runs_in_a_fresh_process(model, exported, tmp_path):
    package = torch._inductor.aoti_compile_and_package(
        exported, package_path=str(tmp_path / "model.pt2")
    )
    args = inputs(7, 2, seed=2)
    torch.save(args, tmp_path / "args.pt")
    with torch.no_grad():
        expected = model(*args)
    for finder in ("import", fused_rnn._ops._C.__file__):
        result = subprocess.run(
            [sys.executable, "-c", _FRESH_PROCESS, package, str(tmp_path / "args.pt"), finder],
            capture_output=True, text=True,
        )
        assert result.returncode == 0, result.stderr
        assert_same_outputs(torch.load(tmp_path / "args.pt.out"), expected, atol=1e-5)


def test_packed_sequence_is_refused_by_name():
    lstm = fused_rnn.LSTM(3, 4)
    packed = pack_padded_sequence(torch.randn(5, 2, 3), [5, 3])
    with pytest.raises(RuntimeError, match="PackedSequence input cannot be exported"):
        torch.export.export(lstm, (packed,))
