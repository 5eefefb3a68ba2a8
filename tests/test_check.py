"""``python -m fused_rnn.check``, run in-process on a small selection: the report, the JSON
summary and the exit code, which must be 1 when a backend computes something else than torch.nn."""

import dataclasses
import json

import pytest

from fused_rnn import backends, dispatch
from fused_rnn.check import main

SMALL = ["--devices", "cpu", "--cells", "gru,lstm+proj", "--quick"]


@pytest.fixture
def fused_policy(monkeypatch):
    """auto under a forced policy, so that a recorded table cannot change what it takes."""
    monkeypatch.setenv(dispatch.POLICY_VARIABLE, "fused")
    backends.clear_auto_cache()
    yield
    backends.clear_auto_cache()


def test_passes_and_reports(capsys, tmp_path, fused_policy):
    summary = tmp_path / "check.json"
    code = main([*SMALL, "--backends", "auto,torch,reference", "--dtypes", "fp32,bf16", "--json", str(summary)])
    out = capsys.readouterr().out
    assert code == 0, out
    for heading in ("Versions", "Build", "Devices", "Backends", "Results"):
        assert f"\n{heading}" in out
    assert "CUDA kernels" in out and "torch" in out
    # one line per device, backend, cell and dtype: 2 layouts each
    rows = [line.split() for line in out.splitlines() if line.startswith("  cpu ") and "/" in line]
    # auto: what it took (the fused policy: the CPU backend)
    assert {(r[1], r[2], r[3], r[4]) for r in rows} == {
        (backend, cell, dtype, "2/2")
        for backend in ("auto(cpu)", "torch", "reference") for cell in ("gru", "lstm+proj")
        for dtype in ("fp32", "bf16")
    }
    assert out.rstrip().splitlines()[-1].startswith("OK: 24 cases, 24 passed, 0 failed")
    data = json.loads(summary.read_text())
    assert (data["cases"], data["passed"], data["failed"], data["failures"]) == (24, 24, 0, [])


def test_a_wrong_backend_fails_and_is_named(capsys, monkeypatch, tmp_path):
    """The reference backend's GRU made wrong by one part in 1e4: every fp32 GRU case fails with
    the tensors named, the other cells pass, and the exit code is 1."""
    real_implementation = backends.implementation

    def implementation(name):
        impl = real_implementation(name)
        if name != "reference":
            return impl

        def wrong_gru(*args):
            y, h_n = impl.gru(*args)
            return y * (1 + 1e-4), h_n

        return dataclasses.replace(impl, gru=wrong_gru)

    monkeypatch.setattr(backends, "implementation", implementation)
    summary = tmp_path / "check.json"
    code = main([*SMALL, "--backends", "cpu,reference", "--dtypes", "fp32", "--json", str(summary)])
    out = capsys.readouterr().out
    assert code == 1, out
    assert "FAILED cpu reference gru fp32 uni full L1: output: error" in out
    assert "FAILED cpu reference gru fp32 bi lengths L2" in out
    assert "FAILED cpu cpu" not in out and "lstm+proj fp32 uni" not in out.split("Failures")[1]
    assert out.rstrip().splitlines()[-1].startswith("FAILED: 8 cases, 6 passed, 2 failed")
    data = json.loads(summary.read_text())
    assert [f["case"] for f in data["failures"]] == [
        "cpu reference gru fp32 uni full L1", "cpu reference gru fp32 bi lengths L2"]
    assert any(d.startswith("grad weight_hh_l0: error") for d in data["failures"][0]["details"])


@pytest.mark.parametrize("argv", [
    ["--backends", "cpu,nonesuch"],
    ["--cells", "lstm2"],
    ["--dtypes", "fp8"],
    ["--devices", "cuda:7"],
    ["--devices", "nonesuch"],
    ["--devices", "cpu", "--backends", "cpu,cuda"],  # a backend named that runs nowhere here
])
def test_usage_errors_exit_2(argv, capsys):
    assert main(argv) == 2
    assert "error:" in capsys.readouterr().err
