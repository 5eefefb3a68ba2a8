"""tools/gpu_check.py without a GPU: the dry run (commands, output layout, summary from the
recorded benchmark CSV), the stage runner (limits, process groups, going on past a failure) and
the readers of each stage's outputs."""

import csv
import dataclasses
import json
import os
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))

import gpu_check  # noqa: E402
import gpu_check_summary as summary  # noqa: E402
import merge_dispatch_tables  # noqa: E402


def test_dry_run_layout_commands_and_summary(tmp_path):
    out = tmp_path / "out"
    run = subprocess.run(
        [sys.executable, os.path.join(ROOT, "tools", "gpu_check.py"), str(out), "--dry-run",
         "--jobs", "16", "--pytest-workers", "4"],
        capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert sorted(os.listdir(out)) == ["bench", "dispatch", "logs", "summary.txt"]
    assert sorted(os.listdir(out / "dispatch")) == ["bf16", "fp16", "fp32"]
    assert sorted(os.listdir(out / "logs")) == sorted(f"{s}.log" for s in gpu_check.STAGES)
    with open(gpu_check.FIXTURE_CSV) as f:
        assert (out / "bench" / "results.csv").read_text() == f.read()

    def command(stage):
        return (out / "logs" / f"{stage}.log").read_text().splitlines()[0]

    assert command("build").endswith("-m pip install --no-build-isolation --no-deps -e .")
    assert "FUSED_RNN_CUDA=1 TORCH_CUDA_ARCH_LIST=9.0a MAX_JOBS=16" in command("build")
    assert "-m pytest tests -m cuda" in command("pytest") and "-n 4" in command("pytest")
    assert "--tool racecheck" in command("racecheck") and command("racecheck").endswith("--quick")
    assert command("memcheck").endswith("tests/cuda_sanitizer_check.py")
    assert f"-m fused_rnn.check --devices cuda --json {out}/selftest.json" in command("selftest")
    for dtype in ("bf16", "fp16", "fp32"):
        assert (f"-m fused_rnn.bench --device cuda --grid quick --dtype {dtype} --out {out}/bench "
                f"--no-plot --dispatch-out {out}/dispatch/{dtype}") in command(f"bench-{dtype}")
    assert command("dispatch").endswith(
        f"tools/merge_dispatch_tables.py {out}/dispatch {out}/dispatch/bf16 {out}/dispatch/fp16 "
        f"{out}/dispatch/fp32")

    # the summary: printed last and written; every stage; the recorded CSV's numbers
    text = (out / "summary.txt").read_text()
    assert run.stdout.endswith(text)
    lines = text.splitlines()
    assert [line.split()[0] for line in lines[2:2 + len(gpu_check.STAGES)]] == list(gpu_check.STAGES)
    assert "bench-fp32  dry-run" in text and "42 rows: 42 OK, 0 FAILED" in text
    rows = list(csv.DictReader(open(gpu_check.FIXTURE_CSV)))
    fwd = [float(r["speedup"]) for r in rows if r["mode"] == "fwd"]
    assert f"({min(fwd):.2f}-{max(fwd):.2f}) n={len(fwd)}" in text
    assert "dispatch table: none written" in text
    assert lines[-1] == f"DRY RUN; outputs in {out}"


def test_usage_errors():
    for argv in (["--stages", "build,nonesuch"], ["--jobs", "0", "--dry-run"]):
        with pytest.raises(SystemExit) as exit:
            gpu_check.main(["/tmp/unused", *argv])
        assert exit.value.code == 2


def _running(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie (an orphan whose exit status nobody
    has collected yet, as in a container whose first process does not reap them)."""
    deadline = time.monotonic() + 5  # SIGKILL is delivered asynchronously
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return False
        if state in ("Z", "X"):
            return False
        time.sleep(0.1)
    return True


def test_a_stage_past_its_limit_is_killed_with_its_children_and_the_run_goes_on(tmp_path, monkeypatch):
    (tmp_path / "logs").mkdir()
    monkeypatch.setattr(gpu_check, "MIN_STAGE_SECONDS", 0)
    monkeypatch.setattr(gpu_check, "LIMITS", {"hangs": 1, "fails": 10, "works": 10})
    pid_file = tmp_path / "child.pid"
    stages = [
        gpu_check.Stage("hangs", ["bash", "-c", f"sleep 60 & echo $! > {pid_file}; wait"]),
        gpu_check.Stage("fails", ["bash", "-c", "echo broken; exit 3"]),
        gpu_check.Stage("works", ["bash", "-c", "echo $GREETING"], {"GREETING": "hello"}),
    ]
    start = time.monotonic()
    outcomes = gpu_check.run_phase(stages, str(tmp_path), time.monotonic() + 30, dry_run=False)
    assert time.monotonic() - start < 15
    assert [outcomes[s].status for s in ("hangs", "fails", "works")] == ["TIMEOUT", "FAILED (rc 3)", "ok"]
    assert not _running(int(pid_file.read_text()))  # the background child went with its group
    assert "killed after 1 s" in (tmp_path / "logs" / "hangs.log").read_text()
    assert (tmp_path / "logs" / "works.log").read_text().splitlines()[-1] == "hello"


def test_no_stage_starts_past_the_deadline(tmp_path):
    (tmp_path / "logs").mkdir()
    stage = gpu_check.Stage("env", ["true"])
    outcomes = gpu_check.run_phase([stage], str(tmp_path), time.monotonic() + 1, dry_run=False)
    assert outcomes["env"].status == "not started"


def test_arch_list():
    assert gpu_check.gpu_arch_list(["9.0"]) == "9.0a"
    assert gpu_check.gpu_arch_list(["8.0", "8.6", "8.0"]) == "8.0;8.6"


def test_pytest_result_from_junit_and_from_the_log(tmp_path):
    junit = tmp_path / "junit.xml"
    junit.write_text(
        '<testsuites><testsuite tests="5" failures="1" errors="1" skipped="1">'
        '<testcase classname="tests.test_a" name="test_ok"/>'
        '<testcase classname="tests.test_a" name="test_bad"><failure message="x"/></testcase>'
        '<testcase classname="tests.test_b" name="test_err"><error message="y"/></testcase>'
        '</testsuite></testsuites>')
    text, failing = summary.pytest_result(str(junit), "")
    assert text == "2 passed, 1 failed, 1 errors, 1 skipped"
    assert failing == ["tests.test_a::test_bad", "tests.test_b::test_err"]
    log = tmp_path / "pytest.log"
    log.write_text("....F\n===== 1 failed, 4 passed in 3.21s =====\n")
    assert summary.pytest_result(str(tmp_path / "none.xml"), str(log))[0] == "1 failed, 4 passed in 3.21s"


def test_sanitizer_result(tmp_path):
    log = tmp_path / "memcheck.log"
    log.write_text("========= COMPUTE-SANITIZER\n"
                   "========= Invalid __global__ write of size 4 bytes\n"
                   "198 runs, 0 with non-finite outputs\n"
                   "========= ERROR SUMMARY: 2 errors\n")
    text, errors = summary.sanitizer_result(str(log))
    assert errors == 2
    assert text.startswith("2 errors; 198 runs, 0 with non-finite outputs; first: Invalid __global__ write")
    log.write_text("killed\n")
    assert summary.sanitizer_result(str(log)) == ("no ERROR SUMMARY", None)


def test_selftest_result_reads_the_checks_json(tmp_path):
    from fused_rnn.check import main

    path = tmp_path / "selftest.json"
    assert main(["--devices", "cpu", "--backends", "cpu", "--cells", "rnn_relu", "--dtypes", "fp32",
                 "--quick", "--json", str(path)]) == 0
    assert summary.selftest_result(str(path)) == ("2 cases: 2 passed, 0 failed, 0 skipped", [])
    data = json.loads(path.read_text())
    data.update(failed=1, passed=1, failures=[
        {"case": "cuda:0 triton gru bf16 uni full L1", "status": "FAILED", "details": ["output: error 1 > bound 0.1"]}])
    path.write_text(json.dumps(data))
    assert summary.selftest_result(str(path)) == (
        "2 cases: 1 passed, 1 failed, 0 skipped", ["cuda:0 triton gru bf16 uni full L1: output: error 1 > bound 0.1"])


def test_bench_result_counts_failed_rows(tmp_path):
    rows = list(csv.DictReader(open(gpu_check.FIXTURE_CSV)))
    rows[0].update(status="FAILED", speedup="", note="output: error 1 vs torch.nn exceeds 0.1")
    path = tmp_path / "results.csv"
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    counts, table, failing = summary.bench_result(str(path))
    assert counts == "42 rows: 41 OK, 1 FAILED"
    assert failing == ["lstm cpu fwd fp32 B1 T100 H128: output: error 1 vs torch.nn exceeds 0.1"]
    assert "n=20" in table[1] and "n=21" in table[1]
    assert summary.bench_result(str(path), dtype="bf16")[0] == "no rows of bf16"


def test_dispatch_tables_of_several_runs_merge_into_one(tmp_path, capsys):
    """tools/merge_dispatch_tables.py on two tables of one device class, as two benchmark runs
    (here the recorded CPU run split by mode) write them: one table with every record, which
    backend='auto' reads; a table of another device class is refused."""
    from fused_rnn import dispatch

    rows = list(csv.DictReader(open(gpu_check.FIXTURE_CSV)))
    device = dispatch.DeviceClass("cuda", "NVIDIA H200", "sm_90", "2.11")
    for mode in ("fwd", "fwd+bwd"):
        part = [r for r in rows if r["mode"] == mode]
        dispatch.write_table(str(tmp_path / mode / "h200.json"),
                             dispatch.table_from_rows(part, device, command=f"bench {mode}"))
    merge = [str(tmp_path / "merged"), str(tmp_path / "fwd"), str(tmp_path / "fwd+bwd")]
    assert merge_dispatch_tables.main(merge) == 0
    merged = json.loads((tmp_path / "merged" / "h200.json").read_text())
    assert merged["device"] == dataclasses.asdict(device)
    assert merged["recorded"]["commands"] == ["bench fwd", "bench fwd+bwd"]
    assert len(merged["records"]) == len(dispatch.records_from_rows(rows))
    assert summary.dispatch_result(str(tmp_path / "merged")).startswith(
        f"dispatch/h200.json: {len(merged['records'])} records (fp32 {len(merged['records'])})")

    other = dispatch.DeviceClass("cuda", "NVIDIA H100", "sm_90", "2.11")
    dispatch.write_table(str(tmp_path / "fwd" / "h200.json"), dispatch.table_from_rows(rows, other))
    assert merge_dispatch_tables.main(merge) == 1
    error = capsys.readouterr().err
    assert "fwd+bwd/h200.json is of {" in error and "'name': 'NVIDIA H100'" in error
