"""backend="auto": the rule without a table, the choice from a recorded table (nearest record,
fastest correct backend, torch.nn's kernels on a tie), the forced policies, bad tables, the
cache, torch.compile, and the benchmark writing a table auto reads."""

import json
import os
import warnings

import pytest
import torch

import fused_rnn
from fused_rnn import backends, dispatch
from fused_rnn.bench import cli

TORCH_MINOR = dispatch._torch_minor(torch.__version__)
# Device classes no shipped table is recorded for: a pretend H100, a pretend CPU.
H100 = dispatch.DeviceClass("cuda", "NVIDIA H100 80GB HBM3", "sm_90", TORCH_MINOR)
TEST_CPU = dispatch.DeviceClass("cpu", "Test CPU", "avx2, 3 threads", TORCH_MINOR)


@pytest.fixture(autouse=True)
def fresh_decisions(monkeypatch, tmp_path):
    """Every test starts with no extra tables, the recorded policy and no cached decision."""
    monkeypatch.delenv(dispatch.POLICY_VARIABLE, raising=False)
    monkeypatch.setenv(dispatch.TABLES_VARIABLE, str(tmp_path / "tables"))
    backends.clear_auto_cache()
    yield
    backends.clear_auto_cache()


def bench_row(cell, backend, speedup, *, batch=32, hidden=256, mode="fwd", dtype="bf16",
              seq_len=100, layers=1, bidirectional=False, status="OK"):
    """A row as the benchmark writes it (results_csv.COLUMNS that the table reads)."""
    return dict(cell=cell, backend=backend, mode=mode, dtype=dtype, batch=batch,
                seq_len=seq_len, input_size=hidden, hidden_size=hidden, num_layers=layers,
                bidirectional=bidirectional, status=status, speedup=speedup,
                git_commit="abc", run_id="run")


def write_table(tmp_path, device_class, rows, name="table.json"):
    path = tmp_path / "tables" / name
    dispatch.write_table(str(path), dispatch.table_from_rows(rows, device_class))
    backends.clear_auto_cache()
    return path


def call(cell="lstm", *, batch=32, hidden=256, training=False, dtype=torch.bfloat16, **kw):
    return backends.auto_call(cell, dtype, training, batch, hidden, seq_len=100, **kw)


def test_without_a_table_cpu_takes_the_cpu_backend_and_cuda_takes_torch():
    choice = backends.explain_auto("lstm", "cpu", call=call(dtype=torch.float32),
                                   device_class=TEST_CPU)
    assert choice.backend == "cpu" and choice.record is None and "no table" in choice.reason
    choice = backends.explain_auto("lstm", "cuda", call=call(), device_class=H100)
    assert choice.backend == "torch" and "no table" in choice.reason
    assert backends.auto_backend_name("gru", "cuda", device_class=H100) == "torch"


@pytest.mark.skipif(not backends.available("cuda", "lstm", "cuda"),
                    reason="fused_rnn was built without its CUDA kernels")
def test_a_record_for_an_h100_sends_its_calls_to_the_recorded_winner(tmp_path):
    rows = [bench_row("lstm", "cuda", 1.6), bench_row("lstm", "triton", 1.2),
            bench_row("lstm", "torch", 0.99),
            bench_row("lstm", "cuda", 0.7, batch=256), bench_row("lstm", "torch", 1.0, batch=256)]
    path = write_table(tmp_path, H100, rows)
    choice = backends.explain_auto("lstm", "cuda", call=call(batch=16), device_class=H100)
    assert choice.backend == "cuda" and choice.table == str(path)
    assert choice.record["batch"] == 32                      # the nearest record
    assert backends.auto_backend_name("lstm", "cuda", call=call(batch=512),
                                      device_class=H100) == "torch"
    # no record of the mode: the rule
    assert backends.explain_auto("lstm", "cuda", call=call(training=True),
                                 device_class=H100).record is None


def test_a_tie_goes_to_torch_nn_and_a_failed_backend_is_never_taken(tmp_path):
    rows = [bench_row("gru", "cpu", 1.02, dtype="fp32"), bench_row("gru", "torch", 1.0, dtype="fp32"),
            bench_row("lstm", "cpu", 1.5, dtype="fp32", status="FAILED"),
            bench_row("lstm", "torch", 1.0, dtype="fp32"),
            bench_row("rnn_tanh", "cpu", 2.0, dtype="fp32"), bench_row("rnn_tanh", "torch", 1.0, dtype="fp32")]
    write_table(tmp_path, TEST_CPU, rows)

    def name(cell):
        return backends.auto_backend_name(cell, "cpu", call=call(cell, dtype=torch.float32),
                                          device_class=TEST_CPU)

    assert name("gru") == "torch"
    assert name("lstm") == "torch"
    assert name("rnn_tanh") == "cpu"
    assert name("rnn_relu") == "cpu"       # the tanh RNN's record stands for the relu one


def test_while_compiling_auto_takes_a_backend_that_compiles(tmp_path):
    rows = [bench_row("lstm", "cpu", 0.8, dtype="fp32"), bench_row("lstm", "torch", 1.0, dtype="fp32")]
    write_table(tmp_path, TEST_CPU, rows)
    lstm_call = call(dtype=torch.float32)
    assert backends.auto_backend_name("lstm", "cpu", call=lstm_call, device_class=TEST_CPU,
                                      compiling=False) == "torch"
    assert backends.auto_backend_name("lstm", "cpu", call=lstm_call, device_class=TEST_CPU,
                                      compiling=True) == "cpu"


def test_auto_compiles_whole_when_the_table_prefers_torch_nn(tmp_path):
    """A table for this very machine that sends the layer to torch.nn's kernels in eager, and
    fullgraph compilation still works (with a fused backend) and agrees with eager."""
    here = dispatch.device_class(torch.device("cpu"))
    rows = [bench_row("gru", "cpu", 0.5, dtype="fp32", batch=2, hidden=8, seq_len=5, mode=mode)
            for mode in ("fwd", "fwd+bwd")]
    write_table(tmp_path, here, rows)
    layer = fused_rnn.GRU(8, 8)
    x = torch.randn(5, 2, 8)
    assert backends.explain(layer, x).backend == "torch"
    eager = layer(x)[0]
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")(x)[0]
    torch.testing.assert_close(compiled, eager, atol=1e-5, rtol=1e-5)


def test_explain_names_the_record_and_the_module_backend(tmp_path):
    here = dispatch.device_class(torch.device("cpu"))
    path = write_table(tmp_path, here, [bench_row("lstm", "cpu", 1.4, dtype="fp32", mode="fwd+bwd")])
    layer = fused_rnn.LSTM(6, 6)
    x = torch.randn(4, 3, 6)
    choice = backends.explain(layer, x)                  # grad mode, parameters require grad
    assert choice.backend == "cpu" and choice.table == str(path)
    assert choice.record["mode"] == "fwd+bwd"
    with torch.no_grad():
        assert backends.explain(layer, x).record is None  # no inference record
    layer.backend = "torch"
    assert backends.explain(layer, x) == dispatch.Choice("torch", "the module's backend is 'torch'")


def test_explain_under_autocast_asks_for_the_autocast_dtype(tmp_path):
    here = dispatch.device_class(torch.device("cpu"))
    write_table(tmp_path, here, [bench_row("gru", "torch", 1.2, dtype="bf16", mode="fwd")])
    layer, x = fused_rnn.GRU(6, 6), torch.randn(4, 3, 6)
    with torch.no_grad():
        assert backends.explain(layer, x).record is None  # fp32: no record
        with torch.autocast("cpu", dtype=torch.bfloat16):
            choice = backends.explain(layer, x)
    assert choice.backend == "torch" and choice.record["dtype"] == "bf16"


def test_policy_variable_forces_a_policy(monkeypatch):
    monkeypatch.setenv(dispatch.POLICY_VARIABLE, "torch")
    backends.clear_auto_cache()
    assert backends.auto_backend_name("gru", "cpu", device_class=TEST_CPU) == "torch"
    monkeypatch.setenv(dispatch.POLICY_VARIABLE, "fused")
    backends.clear_auto_cache()
    assert backends.auto_backend_name("gru", "cuda", device_class=H100) in ("cuda", "triton", "reference")
    monkeypatch.setenv(dispatch.POLICY_VARIABLE, "fastest")
    backends.clear_auto_cache()
    with pytest.raises(ValueError, match="FUSED_RNN_AUTO_POLICY='fastest'"):
        backends.auto_backend_name("gru", "cpu", device_class=TEST_CPU)


@pytest.mark.parametrize("content, why", [
    ("{not json", "Expecting property name"),
    (json.dumps({"format": 99, "device": {}, "records": []}), "format 99"),
    (json.dumps({"format": dispatch.FORMAT, "device": {"kind": "cpu"}, "records": []}), "device class"),
    (json.dumps({"format": dispatch.FORMAT, "device": dict(kind="cpu", name="Test CPU",
                 detail="avx2, 3 threads", torch=TORCH_MINOR), "records": [{"cell": "lstm"}]}),
     "a record lacks"),
])
def test_a_bad_table_is_skipped_with_a_warning_naming_it(tmp_path, content, why):
    path = tmp_path / "tables" / "bad.json"
    path.parent.mkdir()
    path.write_text(content)
    dispatch._load.cache_clear()
    with pytest.warns(UserWarning, match=why) as caught:
        choice = backends.explain_auto("lstm", "cpu", call=call(dtype=torch.float32),
                                       device_class=TEST_CPU)
    assert str(path) in str(caught[0].message)
    assert choice.backend == "cpu" and choice.record is None


def test_decisions_are_cached_per_configuration(monkeypatch):
    decided = []
    real_decide = dispatch.decide

    def counting(*args, **kwargs):
        decided.append(args[0])
        return real_decide(*args, **kwargs)

    monkeypatch.setattr(dispatch, "decide", counting)
    layer = fused_rnn.GRU(4, 4)
    for batch in (2, 2, 3, 2):
        layer(torch.randn(3, batch, 4))
    assert [c.batch for c in decided] == [2, 3]


def test_a_layer_call_follows_a_table_written_after_its_first_decision(tmp_path, monkeypatch):
    ran = []
    real_stack = fused_rnn.torch_backend.stack
    monkeypatch.setattr(fused_rnn.torch_backend, "stack",
                        lambda *a, **k: ran.append("torch") or real_stack(*a, **k))
    layer, x = fused_rnn.RNN(5, 5), torch.randn(7, 2, 5)
    with torch.no_grad():
        layer(x)                                  # decided (and memoised) without a table: cpu
        assert ran == []
        here = dispatch.device_class(torch.device("cpu"))
        write_table(tmp_path, here, [bench_row("rnn_tanh", "torch", 1.0, dtype="fp32",
                                               batch=2, hidden=5, seq_len=7)])
        layer(x)                                  # the new table: torch.nn's kernels
        assert ran == ["torch"]
    layer(x)                                      # a training call has no record: cpu
    assert ran == ["torch"]


SHIPPED = os.path.join(os.path.dirname(dispatch.__file__), "dispatch_tables")


@pytest.mark.parametrize("name", sorted(f for f in os.listdir(SHIPPED) if f.endswith(".json")))
def test_a_shipped_table_is_valid_and_auto_never_takes_a_slower_backend_from_it(
        name, monkeypatch):
    monkeypatch.setattr(dispatch, "SHIPPED_TABLES", SHIPPED)
    path = os.path.join(SHIPPED, name)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a shipped table that cannot be read fails here
        (found_path, table), = [t for t in dispatch.tables() if t[0] == path]
    device = dispatch.DeviceClass(**table["device"])
    assert name == dispatch.table_file_name(device)
    recorded = table["recorded"]  # one run's, or the runs' of a merged table
    commands = recorded.get("commands") or [recorded["command"]]
    assert commands and all("python -m fused_rnn.bench" in c for c in commands)
    for record in table["records"]:
        call = dispatch.Call(record["cell"], record["dtype"], record["mode"] == "fwd+bwd",
                             record["batch"], record["hidden"], record["layers"],
                             record["directions"], record["lengths"], record["seq_len"])
        choice = dispatch.decide(call, device, lambda backend: True)
        assert choice.record == record and choice.table == path
        speedups = record["speedup"]
        assert choice.backend not in record["failed"]
        # the fastest recorded, or torch.nn's kernels within the tie margin of it
        assert speedups[choice.backend] * dispatch.TORCH_TIE >= max(speedups.values())


def test_unknown_and_unavailable_backends_are_refused():
    with pytest.raises(ValueError, match="backend must be one of"):
        fused_rnn.LSTM(3, 4, backend="fastest")
    with pytest.raises(RuntimeError, match="'cuda' is not available"):
        fused_rnn.LSTM(3, 4, backend="cuda")(torch.randn(2, 1, 3))


def test_the_benchmark_writes_a_table_that_auto_reads(tmp_path):
    out = tmp_path / "tables"
    argv = ["--device", "cpu", "--batch", "2", "--hidden", "8", "--seq-len", "4", "--repeats", "2",
            "--cells", "gru", "--backends", "cpu,torch,auto", "--out", str(tmp_path / "results"),
            "--no-plot", "--dispatch-out", str(out)]
    threads = torch.get_num_threads()
    assert cli.main(argv) == 0
    here = dispatch.device_class(torch.device("cpu"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        path, table = dispatch.table_for(dispatch.DeviceClass(
            here.kind, here.name, here.detail.replace(f"{threads} threads", "2 threads"), here.torch))
    assert path == str(out / dispatch.table_file_name(dispatch.DeviceClass(**table["device"])))
    assert {(r["cell"], r["mode"]) for r in table["records"]} == {("gru", "fwd"), ("gru", "fwd+bwd")}
    for record in table["records"]:
        assert set(record["speedup"]) == {"cpu", "torch"}     # auto's own rows left out
        assert record["batch"] == 2 and record["hidden"] == 8 and record["seq_len"] == 4
    assert "--dispatch-out" in table["recorded"]["command"]
