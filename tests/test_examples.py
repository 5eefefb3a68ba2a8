"""The examples run (a handful of small steps each; the language model and the time series long
enough to show that they learn), their twin models start equal, and the data they train on is
what their docstrings say."""

from __future__ import annotations

import importlib
import importlib.util
import io
import math
import os
import runpy
import sys
import sysconfig

import pytest
import torch

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")
SMALL = ["--steps", "4", "--log-every", "2", "--device", "cpu"]


@pytest.fixture
def example(monkeypatch):
    """Imports an example module by name, with examples/ on sys.path as when run as a script."""
    monkeypatch.syspath_prepend(EXAMPLES)
    return importlib.import_module


def check_twins_trained(results, steps=4):
    """Both models took every step with finite losses, and started from the same weights: on the
    same first batch, torch.nn and fused_rnn have the same loss."""
    torch_losses, fused_losses = results["torch.nn"]["losses"], results["fused_rnn"]["losses"]
    assert len(torch_losses) == len(fused_losses) == steps
    assert all(math.isfinite(v) for v in torch_losses + fused_losses)
    assert math.isclose(fused_losses[0], torch_losses[0], rel_tol=1e-5, abs_tol=1e-6)
    assert all(results[name]["ms_per_step"] > 0 for name in ("torch.nn", "fused_rnn"))


def test_adding_problem_runs(example):
    results = example("adding_problem").main(SMALL + ["--batch", "4", "--hidden", "8", "--chunk", "12"])
    check_twins_trained(results)


def test_copy_memory_runs(example):
    for cell in ("gru", "lstm"):
        results = example("copy_memory").main(SMALL + ["--cell", cell, "--batch", "4", "--hidden", "8", "--chunk", "15"])
        check_twins_trained(results)
        assert all(0 <= r["replay_accuracy"] <= 1 for r in results.values())


def test_digits_classification_runs(example, tmp_path):
    pytest.importorskip("sklearn", reason="the digits example needs scikit-learn")
    plot = tmp_path / "loss.png"
    results = example("digits_classification").main(SMALL + ["--hidden", "8", "--batch", "16", "--plot", str(plot)])
    check_twins_trained(results)
    assert all(0 <= r["test_accuracy"] <= 1 for r in results.values())
    if importlib.util.find_spec("matplotlib") is not None:
        assert plot.stat().st_size > 0


def test_example_runs_as_a_script(monkeypatch, capsys):
    monkeypatch.syspath_prepend(EXAMPLES)
    monkeypatch.setattr(sys, "argv", ["adding_problem.py", *SMALL, "--batch", "2", "--hidden", "4", "--chunk", "5"])
    runpy.run_path(os.path.join(EXAMPLES, "adding_problem.py"), run_name="__main__")
    printed = capsys.readouterr().out
    assert "step     4 | torch.nn: mse" in printed and "fused_rnn: mse" in printed


def test_adding_stream_targets_sum_the_two_latest_marked_values(example):
    stream = example("adding_problem").AddingStream(batch=3, gap=4, generator=torch.Generator().manual_seed(0))
    latest_two = [[0.0, 0.0] for _ in range(3)]  # before any marker, the sum is 0
    for _ in range(4):  # chunk boundaries must not lose the carried values
        x, targets = stream.next_chunk(7)
        for t in range(7):
            for b in range(3):
                if x[t, b, 1] == 1:
                    latest_two[b] = [latest_two[b][1], x[t, b, 0].item()]
                assert targets[t, b, 0].item() == pytest.approx(sum(latest_two[b]), abs=1e-6)


def test_copy_stream_replays_each_symbol_after_the_delay(example):
    symbols, delay, alphabet = 3, 4, 8
    stream = example("copy_memory").CopyStream(5, symbols, delay, alphabet, torch.Generator().manual_seed(0))
    chunks = [stream.next_chunk(7) for _ in range(6)]  # 7 does not divide the episode length 11
    inputs, targets, replay = (torch.cat(parts) for parts in zip(*chunks))
    lag = symbols + delay + 1  # a symbol shown at phase k is replayed at phase k + lag
    assert replay.float().mean().item() == pytest.approx(symbols / (2 * symbols + delay + 1), abs=0.1)
    for t in range(inputs.shape[0]):
        for b in range(inputs.shape[1]):
            if replay[t, b] and t >= lag:
                assert targets[t, b] == inputs[t - lag, b] and 1 <= targets[t, b] <= alphabet
            if replay[t, b] and t >= 1 and not replay[t - 1, b]:  # a replay starts after the delimiter
                assert inputs[t - 1, b] == alphabet + 1
            if not replay[t, b]:
                assert targets[t, b] == 0
    assert (inputs == alphabet + 1).sum() >= 5, "too few delimiters for the checks to mean anything"


def test_progress_bar_draws_only_on_a_terminal(example):
    side_by_side = example("side_by_side")

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    terminal, pipe = Terminal(), io.StringIO()
    for stream in (terminal, pipe):
        bar = side_by_side.ProgressBar(40, stream)
        bar.update(10)
        bar.clear()
    assert pipe.getvalue() == ""
    drawn = terminal.getvalue()
    assert "[" + "#" * 7 + "." * 23 + "] 10/40 steps" in drawn and drawn.endswith("\r\033[K")


# The end-to-end examples train long enough here to show that they learn: seeds are fixed
# and the margins wide, so these checks do not flake.
ARGPARSE_SOURCE = os.path.join(sysconfig.get_paths()["stdlib"], "argparse.py")  # ~100k characters of text
SHORT_LM = ["--text", ARGPARSE_SOURCE, "--device", "cpu", "--hidden", "32", "--layers", "1", "--embedding", "16",
            "--batch", "8", "--bptt", "32", "--lr", "1e-2", "--log-every", "20",
            "--sample-length", "40"]


def test_char_language_model_learns(example, tmp_path):
    steps = 80
    results = example("char_language_model").main(SHORT_LM + ["--steps", str(steps), "--checkpoints", str(tmp_path)])
    check_twins_trained(results, steps)
    for name in ("torch.nn", "fused_rnn"):
        perplexities = results[name]["validation_perplexity"]
        (first_step, first), (last_step, last) = perplexities[0], perplexities[-1]
        assert (first_step, last_step) == (0, steps)
        assert math.log(last) < 0.7 * math.log(first), "the validation loss did not fall well below the starting one"
        assert last < 0.9 * results["unigram_perplexity"], "the model does not beat character frequencies"
        # the checkpoint loaded into the other kind of model scores the same
        assert results[name]["cross_loaded_perplexity"] == pytest.approx(last, rel=1e-4)
    assert sorted(os.listdir(tmp_path)) == ["fused_rnn.pt", "torch.nn.pt"]


def test_char_language_model_runs_in_bf16_compiled(example):
    results = example("char_language_model").main(
        SHORT_LM + ["--steps", "3", "--dtype", "bf16", "--compile", "aot_eager"])
    torch_losses, fused_losses = results["torch.nn"]["losses"], results["fused_rnn"]["losses"]
    assert len(fused_losses) == 3 and all(math.isfinite(v) for v in torch_losses + fused_losses)
    assert fused_losses[0] == pytest.approx(torch_losses[0], rel=0.02)  # bf16 rounding apart


def test_char_language_model_streams_cut_the_text_into_contiguous_chunks(example):
    lm = example("char_language_model")
    text = "".join(chr(ord("a") + i % 26) for i in range(103))
    vocabulary = lm.Vocabulary(text)
    assert vocabulary.decode(vocabulary.encode(text + "!").tolist()) == text + "\ufffd"  # unknown character
    streams = lm.as_streams(vocabulary.encode(text), 4)  # [25, 4]; the last 3 characters dropped
    pieces = list(lm.chunks(streams, 7))  # 7 does not divide 24 (the last target has no next input)
    inputs, targets = (torch.cat(parts) for parts in zip(*pieces))
    for b in range(4):
        stream = text[25 * b : 25 * (b + 1)]
        assert vocabulary.decode(inputs[:, b].tolist()) == stream[:-1]
        assert vocabulary.decode(targets[:, b].tolist()) == stream[1:]
    assert [len(x) for x, _ in pieces] == [7, 7, 7, 3]


SHORT_SERIES = ["--device", "cpu", "--train", "1000", "--test", "400", "--hidden", "64", "--batch", "64"]


def test_irregular_time_series_learns_and_dt_helps(example, tmp_path):
    steps = 150
    results = example("irregular_time_series").main(
        SHORT_SERIES + ["--steps", str(steps), "--log-every", str(steps), "--checkpoints", str(tmp_path)])
    final = {}
    for variant in ("with Δt", "without Δt"):
        check_twins_trained(results[variant], steps)
        for name in ("torch.nn", "fused_rnn"):
            errors = results[variant][name]["test_mse"]
            assert errors[0][0] == 0 and errors[-1][0] == steps
            assert errors[-1][1] < 0.7 * errors[0][1], f"{variant}: the test error did not fall well below its start"
            final[variant, name] = errors[-1][1]
    for name in ("torch.nn", "fused_rnn"):
        assert final["with Δt", name] < 0.85 * final["without Δt", name], "Δt did not help"
        assert results["with Δt"][name]["cross_loaded_test_mse"] == pytest.approx(final["with Δt", name], rel=1e-4)
    assert sorted(os.listdir(tmp_path)) == ["fused_rnn.pt", "torch.nn.pt"]


def test_oscillators_follow_their_documented_process(example):
    series = example("irregular_time_series")
    channels, window, horizon = 3, 6.0, 0.7
    data = series.oscillators(200, channels=channels, window=window, horizon=horizon, observed=0.4,
                              generator=torch.Generator().manual_seed(0))
    values, mask, delta_t = data["inputs"].split([channels, channels, 1], dim=-1)
    lengths, times = data["lengths"], data["times"]
    inside = torch.arange(times.shape[1]) < lengths.unsqueeze(1)
    assert lengths.min() >= 1 and lengths.max() == times.shape[1]
    # Δt is the time since the previous observation (the first: since the window's start)
    assert torch.allclose(torch.where(inside, delta_t[..., 0].cumsum(1) / series.DT_SCALE, 0.0), times, atol=1e-4)
    assert (torch.where(inside, delta_t[..., 0], 1.0) > 0).all() and (data["inputs"][~inside] == 0).all()
    assert times.amax(1).le(series.WINDOW[1] * window).all()

    def reading(t):  # [200, steps] -> [200, steps, channels]
        f, a, p = data["frequency"].view(-1, 1, 1), data["amplitude"].unsqueeze(1), data["phase"].unsqueeze(1)
        return a * torch.sin(2 * math.pi * f * t.unsqueeze(-1) + p)

    mask = mask.bool()
    assert (mask.sum(-1)[inside] >= 1).all() and (values[~mask] == 0).all()
    observed = mask[inside].float().mean().item()
    assert 0.4 < observed < 0.55  # 0.4 per channel, plus one forced where none was read
    noise = (values - reading(times))[mask]
    assert abs(noise.std().item() - series.NOISE) < 0.01 and noise.abs().max() < 6 * series.NOISE
    targets = data["targets"]
    assert torch.allclose(targets[inside], reading(times + horizon)[inside], atol=1e-5)
    assert (targets[~inside] == 0).all()

    naive = series.last_readings(data, channels)
    for i in range(20):
        for c in range(channels):
            read = mask[i, : lengths[i], c].nonzero()
            expected = values[i, read[-1, 0], c] if len(read) else 0.0
            assert naive[i, c] == expected

