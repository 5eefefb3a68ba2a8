"""The benchmark suite (fused_rnn.bench): CSV and plot writing, the correctness gate, timing
order, memory and FLOP accounting. Tiny shapes, so that it stays fast on a busy CPU."""

from __future__ import annotations

import csv
import types

import pytest
import torch
from torch import nn

pytest.importorskip("rich")

from fused_rnn.bench import (  # noqa: E402
    candidates, cli, correctness, flops, gemm_rate, memory, results_csv, timing,
)
from fused_rnn.bench.cases import Case, grid_shapes, make_cases  # noqa: E402
from fused_rnn.bench.layers import torch_layer  # noqa: E402

TINY = ["--device", "cpu", "--batch", "2", "--hidden", "8", "--seq-len", "4", "--repeats", "2"]


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


class _Perturbed(nn.Module):
    """A wrong layer: the fused layer's output plus 1e-2."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x, hx=None):
        output, states = self.inner(x, hx)
        return output + 1e-2, states


class _WrongGradient(nn.Module):
    """Right values, wrong backward: the output's gradient is scaled by 1.5."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x, hx=None):
        output, states = self.inner(x, hx)
        return output + 0.5 * (output - output.detach()), states


def _wrapping(name: str, wrapper) -> candidates.Candidate:
    fused = candidates.fused_backend("cpu")
    return candidates.Candidate(name, lambda case, reference: wrapper(fused.build(case, reference)))


def test_cli_writes_table_csv_and_plots(tmp_path, capsys):
    matplotlib = pytest.importorskip("matplotlib")
    argv = TINY + ["--backends", "cpu", "--cells", "lstm,rnn", "--out", str(tmp_path)]
    assert cli.main(argv) == 0

    csv_path = tmp_path / "results.csv"
    with open(csv_path, newline="") as f:
        header = next(csv.reader(f))
    assert header == list(results_csv.COLUMNS)
    for column in ("cell", "backend", "dtype", "batch", "seq_len", "input_size", "hidden_size",
                   "num_layers", "bidirectional", "mode", "fused_ms", "torch_ms", "speedup",
                   "us_per_step", "torch_us_per_step", "tflops", "fused_peak_mb", "torch_peak_mb",
                   "max_abs_err", "status", "device_name", "torch_version", "cuda_version",
                   "cudnn_version", "git_commit", "timestamp"):
        assert column in header
    rows = _rows(csv_path)
    assert {(r["cell"], r["mode"]) for r in rows} == {
        ("lstm", "fwd"), ("lstm", "fwd+bwd"), ("rnn_tanh", "fwd"), ("rnn_tanh", "fwd+bwd")
    }
    for row in rows:
        assert row["status"] == "OK" and row["backend"] == "cpu" and row["dtype"] == "fp32"
        fused_ms, torch_ms = float(row["fused_ms"]), float(row["torch_ms"])
        assert fused_ms > 0 and torch_ms > 0
        assert float(row["speedup"]) == pytest.approx(torch_ms / fused_ms, rel=1e-4)
        assert float(row["us_per_step"]) == pytest.approx(fused_ms * 1e3 / 4, rel=1e-4)
        assert float(row["fused_peak_mb"]) >= 0 and float(row["max_abs_err"]) < 1e-4
        assert float(row["gemm_tflops"]) > 0
        assert float(row["gemm_fraction"]) == pytest.approx(
            float(row["tflops"]) / float(row["gemm_tflops"]), rel=1e-4)
        assert row["device"] == "cpu" and row["torch_version"] == torch.__version__
    assert "fused_rnn vs torch.nn" in capsys.readouterr().out

    pngs = list((tmp_path / "plots").glob("*.png"))
    assert len(pngs) == 1
    assert pngs[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(pngs[0])
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100

    # A second run appends to the same file, header once.
    assert cli.main(argv[:-2] + ["--out", str(tmp_path), "--modes", "fwd", "--no-plot"]) == 0
    text = csv_path.read_text()
    assert text.count("run_id,") == 1
    assert len(_rows(csv_path)) == len(rows) + 2


def test_wrong_backend_is_failed_and_not_timed(tmp_path, monkeypatch):
    timed = []
    real_median_ms = timing.median_ms
    monkeypatch.setattr(timing, "median_ms", lambda *a, **k: timed.append(a) or real_median_ms(*a, **k))
    extra = {"perturbed": _wrapping("perturbed", _Perturbed)}
    argv = TINY + ["--backends", "perturbed", "--cells", "gru", "--out", str(tmp_path), "--no-plot"]
    assert cli.main(argv, extra_candidates=extra) == 1

    rows = _rows(tmp_path / "results.csv")
    assert len(rows) == 2
    for row in rows:
        assert row["backend"] == "perturbed" and row["status"] == "FAILED"
        assert "output" in row["note"]
        assert float(row["max_abs_err"]) == pytest.approx(1e-2, rel=1e-3)
        for column in results_csv.TIMING_COLUMNS:
            assert row[column] == "", column
    assert timed == []


def test_wrong_gradient_fails_training_step_only(tmp_path):
    extra = {"wrong-grad": _wrapping("wrong-grad", _WrongGradient)}
    argv = TINY + ["--backends", "wrong-grad", "--cells", "lstm", "--out", str(tmp_path), "--no-plot"]
    assert cli.main(argv, extra_candidates=extra) == 1
    status = {row["mode"]: row for row in _rows(tmp_path / "results.csv")}
    assert status["fwd"]["status"] == "OK"
    assert status["fwd+bwd"]["status"] == "FAILED" and "grad" in status["fwd+bwd"]["note"]
    assert status["fwd+bwd"]["fused_ms"] == ""


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_low_precision_gate(dtype):
    case = Case("gru", "fwd+bwd", dtype, batch=3, seq_len=5, input_size=6, hidden_size=8)
    device = torch.device("cpu")
    reference = torch_layer(case, device)
    fused = candidates.fused_backend("cpu").build(case, reference)
    result = correctness.check(case, reference, fused, device)
    assert result.ok, result.note
    assert result.torch_max_abs_err is not None and result.torch_max_abs_err > 0

    result = correctness.check(case, reference, _Perturbed(fused), device)
    assert not result.ok and "output" in result.note


def test_backend_that_raises_is_failed():
    class Broken(nn.Module):
        def forward(self, x, hx=None):
            raise RuntimeError("kernel exploded")

    case = Case("lstm", "fwd", "fp32", batch=2, seq_len=3, input_size=4, hidden_size=4)
    reference = torch_layer(case, torch.device("cpu"))
    result = correctness.check(case, reference, Broken(), torch.device("cpu"))
    assert not result.ok and "kernel exploded" in result.note


def test_default_backends_skip_reference_and_cpu_triton():
    names = candidates.default_backend_names(torch.device("cpu"), ["lstm"])
    assert names == ["cpu", "torch"]
    with pytest.raises(ValueError, match="unknown backend"):
        candidates.select(["nope"], torch.device("cpu"), ["lstm"])


@pytest.mark.parametrize("cell", ["ln_lstm", "ln_gru"])
def test_layernorm_cells_against_the_per_step_loop(cell):
    """The layer-normalised cells are measured against the per-step loop, and the loop under
    torch.compile is among the candidates (not built here: Inductor takes minutes)."""
    chosen = candidates.select(None, torch.device("cpu"), [cell])
    assert [c.name for c in chosen] == ["cpu", "compiled-loop"]
    for mode in ("fwd", "fwd+bwd"):
        case = Case(cell, mode, "fp32", batch=3, seq_len=4, input_size=5, hidden_size=6)
        reference = torch_layer(case, torch.device("cpu"))
        assert type(reference).__name__.startswith("PerStepLayerNorm")
        fused = chosen[0].build(case, reference)
        result = correctness.check(case, reference, fused, torch.device("cpu"))
        assert result.ok, result.note
        wrong = _Perturbed(fused)
        assert not correctness.check(case, reference, wrong, torch.device("cpu")).ok


def test_timing_is_interleaved_and_takes_the_median():
    calls = []
    fns = [lambda: calls.append("a"), lambda: calls.append("b")]
    medians = timing.median_ms(fns, torch.device("cpu"), repeats=4, warmup=1)
    assert calls == ["a", "b"] + ["a", "b", "b", "a"] * 2
    assert len(medians) == 2 and all(m >= 0 for m in medians)


def test_short_cpu_calls_get_more_rounds(monkeypatch):
    # A clock that each call advances by 0.2 ms: what the rounds are sized by, without the
    # machine's load in it.
    clock = [0.0]
    monkeypatch.setattr(timing, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))
    calls = []

    def short():
        calls.append(None)
        clock[0] += 2e-4

    (median,) = timing.median_ms([short], torch.device("cpu"), repeats=3, warmup=1, min_time_ms=4.0)
    # warmup, one call to size the rounds, then 4 / 0.2 = 20 rounds instead of 3
    assert len(calls) == 1 + 1 + 20
    assert median == pytest.approx(0.2)


def test_cpu_peak_memory_counts_tensors_of_the_call():
    def two_buffers():
        a = torch.ones(1 << 18)  # 1 MiB
        b = torch.ones(1 << 19)  # 2 MiB, while a is alive
        del a, b
        return torch.ones(1 << 18)

    assert memory.peak_mb(two_buffers, torch.device("cpu")) == pytest.approx(3.0, abs=0.01)


def test_flops_count_input_projection_and_recurrence():
    case = Case("lstm", "fwd", "fp32", batch=2, seq_len=3, input_size=5, hidden_size=7)
    per_step = 2 * 4 * 7 * (5 + 7)
    assert flops.flops(case) == per_step * 2 * 3
    training = Case("lstm", "fwd+bwd", "fp32", batch=2, seq_len=3, input_size=5, hidden_size=7)
    assert flops.flops(training) == 3 * flops.flops(case)
    stacked = Case("gru", "fwd", "fp32", batch=1, seq_len=1, input_size=5, hidden_size=7,
                   num_layers=2, bidirectional=True)
    # layer 0 reads the input (5), layer 1 both directions of layer 0 (14); two directions each
    assert flops.flops(stacked) == 2 * (2 * 3 * 7 * (5 + 7)) + 2 * (2 * 3 * 7 * (14 + 7))


def test_gemm_rate_doubles_the_size_until_a_product_is_long(monkeypatch):
    """The sizes tried double from FIRST_SIZE until one product takes over LONGEST_MS (or the
    cap); the best rate is kept. A fake product time, so that the machine's load is not in it."""
    tried = []

    def fake_rate(n, dtype, device):
        tried.append(n)
        ms = 0.01 * (n / 256) ** 3 * 1e3   # 10 ms at 256, 80 at 512
        return 2 * n**3 / (ms * 1e-3) / 1e12, ms

    monkeypatch.setattr(gemm_rate, "_rate_tflops", fake_rate)
    gemm_rate._measure.cache_clear()
    try:
        rate = gemm_rate.gemm_tflops(torch.device("cpu"), "fp16")
        assert tried == [256, 512]
        assert rate == pytest.approx(2 * 256**3 / 1e-2 / 1e12)
        assert gemm_rate.gemm_tflops(torch.device("cpu"), "fp16") == rate and tried == [256, 512]
    finally:
        gemm_rate._measure.cache_clear()


def test_gemm_rate_of_a_real_product():
    rate, ms = gemm_rate._rate_tflops(128, torch.float32, torch.device("cpu"))
    assert ms > 0 and rate == pytest.approx(2 * 128**3 / (ms * 1e-3) / 1e12)


def test_grids_have_the_documented_shapes():
    gpu = grid_shapes("cuda", "full")
    single = [s for s in gpu if s.num_layers == 1 and not s.bidirectional]
    assert {s.batch for s in single} == {1, 8, 16, 64, 256}
    assert {s.hidden_size for s in single} == {256, 512, 768, 1024}
    assert {s.seq_len for s in single} == {128, 1024}
    assert all(s.input_size == s.hidden_size for s in gpu)
    assert any(s.num_layers == 3 for s in gpu) and any(s.bidirectional for s in gpu)
    cpu = grid_shapes("cpu", "full")
    assert {(s.batch, s.hidden_size) for s in cpu if s.num_layers == 1 and s.seq_len == 100} == {
        (1, 128), (1, 256), (32, 128), (32, 256)
    }
    assert {(s.batch, s.hidden_size) for s in cpu if s.seq_len == 1} == {(1, 128), (1, 256)}
    cases = make_cases(grid_shapes("cpu", "quick"), ["lstm", "gru"], ["fp32"], ["fwd", "fwd+bwd"])
    assert len(cases) == 2 * 2 * len(grid_shapes("cpu", "quick"))


def test_plots_one_figure_per_device(tmp_path):
    pytest.importorskip("matplotlib")
    from fused_rnn.bench import plots

    rows = []
    for device_name in ("Some GPU", "Some CPU (CPU)"):
        for batch, speedup in ((1, 2.0), (8, 1.5), (64, 0.8)):
            rows.append({
                "timestamp": "2026-01-01T00:00:00+00:00", "cell": "lstm", "backend": "x",
                "mode": "fwd", "dtype": "bf16", "batch": batch, "seq_len": 16, "input_size": 8,
                "hidden_size": 8, "num_layers": 1, "bidirectional": False, "status": "OK",
                "speedup": speedup, "device_name": device_name, "git_commit": "abc",
            })
    # A FAILED row and a multi-layer row are not drawn.
    rows.append({**rows[0], "status": "FAILED", "speedup": None})
    rows.append({**rows[0], "num_layers": 2})
    csv_path = tmp_path / "results.csv"
    results_csv.append(str(csv_path), rows)

    assert plots.main([str(csv_path), str(tmp_path / "all")]) == 0
    assert sorted(p.name for p in (tmp_path / "all").glob("*.png")) == [
        "speedup_some-cpu-cpu_bf16_T16.png", "speedup_some-gpu_bf16_T16.png"
    ]
    assert plots.main([str(csv_path), str(tmp_path / "gpu"), "--device-name", "gpu"]) == 0
    assert [p.name for p in (tmp_path / "gpu").glob("*.png")] == ["speedup_some-gpu_bf16_T16.png"]
    latest = plots.latest_rows(results_csv.read(str(csv_path)))
    assert len(latest) == 6
