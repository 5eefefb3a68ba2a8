#!/usr/bin/env python3
"""Everything a GPU must confirm, in one run that fits 8 minutes of a lent GPU machine.

    python3 tools/gpu_check.py OUT            # from the repository root, on the GPU machine
    make gpu-check OUT=OUT                    # the same
    python3 tools/gpu_check.py OUT --dry-run  # anywhere: the commands, the layout, a summary

Made for the lent machines as they are: torch and Triton preinstalled in the system Python, a
CUDA toolkit with compute-sanitizer, 16 cores, no network (nothing is installed: the build is
``pip install --no-build-isolation --no-deps -e .``). Standard library only.

Stages, each with its own time limit (``LIMITS``, seconds). A stage past its limit is killed
with its whole process group, and the run goes on; so it does after a failed stage. No stage
runs past ``--deadline`` (470 s from the start; the benchmark stops ``TAIL_SECONDS`` earlier,
leaving the merge of the dispatch tables its time), so the whole run, summary included, ends
within 8 minutes. The phases run one after the other; the stages of a phase run side by side.

  1 env         the GPU (nvidia-smi), driver, Python, torch, CUDA, cuDNN, Triton, nvcc
  2 build       fused_rnn._C with the CUDA kernels for the present GPU's architecture only
                (TORCH_CUDA_ARCH_LIST from its compute capability), with every core (MAX_JOBS)
  3 pytest      pytest -m cuda (tests/), on pytest-xdist workers when it is installed
    memcheck    compute-sanitizer --tool memcheck   on tests/cuda_sanitizer_check.py
    racecheck   compute-sanitizer --tool racecheck  on tests/cuda_sanitizer_check.py --quick
    synccheck   compute-sanitizer --tool synccheck  on tests/cuda_sanitizer_check.py --quick
    selftest    python -m fused_rnn.check --devices cuda (every backend, cell, dtype, layout)
  4 bench-bf16  python -m fused_rnn.bench --device cuda --grid quick --dtype bf16, every fused
    bench-fp16  GPU backend with torch.nn (cuDNN) timed beside it in every row, and the
    bench-fp32  dispatch table of the run; one dtype at a time, alone on the GPU
  5 dispatch    the three runs' dispatch tables merged into one for the GPU's device class
                (tools/merge_dispatch_tables.py), as ``auto`` reads one table per class

Correctness runs side by side (phase 3: the GPU is shared, nothing there is timed; the Triton
kernels compile on many cores at once); the benchmark runs alone. It runs once per dtype
because its rows reach the CSV only at the end of a run: a dtype cut short by the deadline
loses its own rows, not the others'.

Output folder (created, or reused):

  OUT/summary.txt                 the one-screen summary, also printed last
  OUT/logs/<stage>.log            each stage's command, then its output
  OUT/pytest-cuda.xml             pytest's JUnit XML
  OUT/selftest.json               the self-test's counts and failures
  OUT/bench/results.csv           the benchmark's rows (every dtype)
  OUT/dispatch/<class>.json       the dispatch table of the GPU's device class, every dtype:
                                  what fused_rnn/dispatch_tables/ ships once committed
  OUT/dispatch/<dtype>/<class>.json  the table of each benchmark run

``--dry-run`` runs nothing: it writes each stage's command into its log, copies a recorded
benchmark CSV (``--bench-csv``, default the fixture in tests/data/) to OUT/bench/results.csv
and writes the summary from it.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gpu_check_summary as summary  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE_CSV = os.path.join(REPO, "tests", "data", "gpu_check", "bench_results_fixture.csv")

BENCH_DTYPES = ("bf16", "fp16", "fp32")
SANITIZERS = ("memcheck", "racecheck", "synccheck")

#: The phases and each stage's time limit, seconds: estimates for an H100/H200 with 16 cores
#: (README.md, "Checking on a GPU", says how they were made), not yet measured there. Together
#: they exceed the deadline, which bounds the whole run whatever the stages take: when the
#: build and the tests use all their time, the last benchmark dtypes get less or none.
PHASES = (
    {"env": 20},
    {"build": 210},
    {"pytest": 120, "memcheck": 120, "racecheck": 120, "synccheck": 90, "selftest": 120},
    {"bench-bf16": 60},
    {"bench-fp16": 50},
    {"bench-fp32": 50},
    {"dispatch": 20},
)
LIMITS = {name: limit for phase in PHASES for name, limit in phase.items()}
STAGES = tuple(LIMITS)
DEFAULT_DEADLINE = 470  # seconds: 8 minutes less the summary and a margin
TAIL_SECONDS = LIMITS["dispatch"]  # kept for the last phase: no other stage runs into it
MIN_STAGE_SECONDS = 10  # a stage that would get less is not started

# The env stage's "key: value" lines (gpu_check_summary.environment reads them).
_ENV_SCRIPT = r"""
import platform
print("python:", platform.python_version())
try:
    import torch
    print("torch:", torch.__version__)
    print("cuda:", torch.version.cuda)
    print("cudnn:", torch.backends.cudnn.version())
except Exception as error:
    print("torch: not importable:", error)
try:
    import triton
    print("triton:", triton.__version__)
except Exception as error:
    print("triton: not importable:", error)
"""


@dataclass
class Stage:
    name: str
    command: list[str]
    env: dict[str, str] = field(default_factory=dict)


@dataclass
class Outcome:
    status: str  # ok, FAILED (rc N), TIMEOUT, not started, missing, dry-run
    seconds: float = 0.0
    limit: float = 0.0


def gpu_arch_list(compute_caps: list[str]) -> str:
    """TORCH_CUDA_ARCH_LIST for the GPUs present: each compute capability once, Hopper (9.0)
    as 9.0a, the target the project compiles for Hopper."""
    arches = []
    for cap in compute_caps:
        arch = "9.0a" if cap == "9.0" else cap
        if arch not in arches:
            arches.append(arch)
    return ";".join(arches)


def query_gpus() -> list[tuple[str, str]]:
    """(name, compute capability) of each GPU, from nvidia-smi; [] without one."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,compute_cap", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [tuple(part.strip() for part in line.split(",", 1)) for line in out.splitlines() if "," in line]


def git_commit() -> str:
    """The checkout's commit, +dirty with local changes; "unknown" outside a git checkout."""
    def git(*args):
        return subprocess.run(["git", "-C", REPO, *args], capture_output=True, text=True, timeout=10)

    try:
        head = git("rev-parse", "--short=12", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no").stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head.stdout.strip() + ("+dirty" if dirty else "") if head.returncode == 0 else "unknown"


def find_sanitizer(cuda_home: str) -> str:
    for candidate in (shutil.which("compute-sanitizer"),
                      os.path.join(cuda_home, "bin", "compute-sanitizer"),
                      os.path.join(cuda_home, "compute-sanitizer", "compute-sanitizer")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return "compute-sanitizer"


def make_stages(args, out: str, arch_list: str) -> dict[str, Stage]:
    py = args.python
    cuda_home = os.environ.get("CUDA_HOME", "/usr/local/cuda")
    sanitizer = find_sanitizer(cuda_home)
    env_command = (
        "nvidia-smi --query-gpu=name,compute_cap,driver_version --format=csv,noheader | head -1 "
        "| awk -F', ' '{print \"gpu: \" $1; print \"compute_cap: \" $2; print \"driver: \" $3}'; "
        "echo \"nvcc: $(nvcc --version 2>/dev/null | grep -o 'release [0-9.]*')\"; "
        f"{shlex.quote(py)} -c {shlex.quote(_ENV_SCRIPT)}; nvidia-smi")
    stages = [
        Stage("env", ["bash", "-c", env_command]),
        Stage("build", [py, "-m", "pip", "install", "--no-build-isolation", "--no-deps", "-e", "."],
              {"FUSED_RNN_CUDA": "1", "TORCH_CUDA_ARCH_LIST": arch_list, "MAX_JOBS": str(args.jobs),
               "CUDA_HOME": cuda_home}),
        # faulthandler_timeout: a test hanging that long has its stack written to the log
        Stage("pytest", [py, "-m", "pytest", "tests", "-m", "cuda", "-q", "-p", "no:cacheprovider",
                         "-o", "faulthandler_timeout=90", "--continue-on-collection-errors",
                         "--junitxml", os.path.join(out, "pytest-cuda.xml"),
                         *(["-n", str(args.pytest_workers)] if args.pytest_workers > 1 else [])]),
        Stage("selftest", [py, "-m", "fused_rnn.check", "--devices", "cuda",
                           "--json", os.path.join(out, "selftest.json")]),
    ]
    for tool in SANITIZERS:
        quick = [] if tool == "memcheck" else ["--quick"]  # racecheck and synccheck are slow
        # --error-exitcode: sanitizer errors fail the stage. Without torch's caching allocator
        # every tensor is its own allocation, so memcheck sees an access past a tensor's end
        # instead of one into the next tensor of a block.
        stages.append(Stage(tool, [sanitizer, "--tool", tool, "--error-exitcode", "1", "--print-limit", "20",
                                   py, "tests/cuda_sanitizer_check.py", *quick],
                            {"PYTORCH_NO_CUDA_MEMORY_CACHING": "1"}))
    dispatch = os.path.join(out, "dispatch")
    for dtype in BENCH_DTYPES:
        # --dispatch-out to a directory: the table is named after the device class
        stages.append(Stage(f"bench-{dtype}", [
            py, "-m", "fused_rnn.bench", "--device", "cuda", "--grid", "quick", "--dtype", dtype,
            "--out", os.path.join(out, "bench"), "--no-plot",
            "--dispatch-out", os.path.join(dispatch, dtype)]))
    stages.append(Stage("dispatch", [py, "tools/merge_dispatch_tables.py", dispatch,
                                     *(os.path.join(dispatch, dtype) for dtype in BENCH_DTYPES)]))
    return {stage.name: stage for stage in stages}


class Running:
    """A stage's process, in its own process group, its output in its log."""

    def __init__(self, stage: Stage, log_path: str, limit: float, dry_run: bool):
        self.stage, self.limit, self.process = stage, limit, None
        self.log = open(log_path, "w")
        env_text = " ".join(f"{k}={shlex.quote(v)}" for k, v in stage.env.items())
        self.log.write(f"$ {env_text + ' ' if env_text else ''}{shlex.join(stage.command)}\n"
                       f"# time limit {limit:.0f} s\n")
        self.log.flush()
        self.start = time.monotonic()
        self.outcome = Outcome("dry-run", 0.0, limit) if dry_run else None
        if dry_run:
            self.log.write("# dry run: not run\n")
            self.log.close()
            return
        try:
            self.process = subprocess.Popen(
                stage.command, cwd=REPO, stdout=self.log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, env={**os.environ, **stage.env}, start_new_session=True)
        except OSError as error:
            self._finish("missing", f"could not start: {error}")

    def poll(self) -> bool:
        """Whether the stage has finished (killed when past its limit)."""
        if self.outcome is not None:
            return True
        code = self.process.poll()
        if code is not None:
            self._finish("ok" if code == 0 else f"FAILED (rc {code})")
        elif time.monotonic() - self.start > self.limit:
            _kill_group(self.process)
            self._finish("TIMEOUT", f"killed after {self.limit:.0f} s (its time limit)")
        return self.outcome is not None

    def _finish(self, status: str, note: str = "") -> None:
        if note:
            self.log.write(f"\n# {note}\n")
        self.log.close()
        self.outcome = Outcome(status, time.monotonic() - self.start, self.limit)


def _kill_group(process: subprocess.Popen) -> None:
    """SIGTERM to the stage's process group, SIGKILL 5 s later to what is left of it."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=5)
            if sig == signal.SIGTERM:
                os.killpg(process.pid, signal.SIGKILL)  # its children, if any outlived it
            return
        except subprocess.TimeoutExpired:
            continue
        except ProcessLookupError:
            return


def run_phase(stages: list[Stage], out: str, deadline: float, dry_run: bool) -> dict[str, Outcome]:
    """Runs ``stages`` side by side, each within its limit and the deadline (time.monotonic())."""
    outcomes, running = {}, []
    for stage in stages:
        limit = min(LIMITS[stage.name], deadline - time.monotonic())
        if limit < MIN_STAGE_SECONDS and not dry_run:
            outcomes[stage.name] = Outcome("not started", 0.0, 0.0)
            print(f"[{stage.name}] not started: {max(limit, 0):.0f} s left before the deadline", flush=True)
            continue
        print(f"[{stage.name}] started (limit {limit:.0f} s)", flush=True)
        running.append(Running(stage, os.path.join(out, "logs", f"{stage.name}.log"), limit, dry_run))
    while running:
        for run in [r for r in running if r.poll()]:
            running.remove(run)
            outcomes[run.stage.name] = run.outcome
            print(f"[{run.stage.name}] {run.outcome.status} in {run.outcome.seconds:.0f} s", flush=True)
        if running:
            time.sleep(0.2)
    return {stage.name: outcomes[stage.name] for stage in stages}


def stage_details(name: str, out: str) -> tuple[str, list[str]]:
    """The key numbers of a finished stage and its failures, read back from OUT."""
    log = os.path.join(out, "logs", f"{name}.log")
    if name == "env":
        return ", ".join(f"{k} {v}" for k, v in summary.environment(log).items()), []
    if name == "build":
        return summary.build(log), []
    if name == "pytest":
        return summary.pytest_result(os.path.join(out, "pytest-cuda.xml"), log)
    if name in SANITIZERS:
        return summary.sanitizer_result(log)[0], []
    if name == "dispatch":
        return summary.dispatch_result(os.path.join(out, "dispatch")), []
    if name == "selftest":
        return summary.selftest_result(os.path.join(out, "selftest.json"))
    dtype = name.split("-", 1)[1]
    counts, _, failing = summary.bench_result(os.path.join(out, "bench", "results.csv"), dtype=dtype)
    return counts, failing


def write_summary(out: str, outcomes: dict[str, Outcome], header: str, dry_run: bool) -> str:
    lines = [header, f"{'stage':11} {'status':13} {'time':>5} {'limit':>5}  result"]
    failures = []
    for name, outcome in outcomes.items():
        details, failing = "", []
        if outcome.status != "not started" and (outcome.status != "dry-run" or name.startswith("bench")):
            details, failing = stage_details(name, out)
        if name == "build" and outcome.status == "ok":
            details = ""  # its first error line means something only when it failed
        lines.append(f"{name:11} {outcome.status:13} {outcome.seconds:4.0f}s {outcome.limit:4.0f}s  {details}")
        failures += [f"  {name}: {f}" for f in failing[:3]]
        if len(failing) > 3:
            failures.append(f"  {name}: ... and {len(failing) - 3} more")
    _, table, _ = summary.bench_result(os.path.join(out, "bench", "results.csv"))
    if table:
        lines += ["speed-up vs torch.nn (cuDNN on a GPU), torch_ms / fused_ms: geometric mean (min-max) "
                  "n=rows", *table]
    lines.append("dispatch table: " + summary.dispatch_result(os.path.join(out, "dispatch")))
    if failures:
        lines += ["failures (the first of each stage):", *failures]
    bad = [n for n, o in outcomes.items() if o.status not in ("ok", "dry-run")]
    verdict = "DRY RUN" if dry_run else ("ALL OK" if not bad else "NOT OK: " + ", ".join(bad))
    lines.append(f"{verdict}; outputs in {out}")
    text = "\n".join(lines) + "\n"
    with open(os.path.join(out, "summary.txt"), "w") as f:
        f.write(text)
    return text


def _default_workers() -> int:
    return 4 if importlib.util.find_spec("xdist") is not None else 1


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tools/gpu_check.py",
        description="Build, test, sanitize, self-test and benchmark fused_rnn on a GPU machine in "
                    "one run of at most 8 minutes; everything lands in OUT, the summary last.")
    p.add_argument("out", metavar="OUT", help="output folder (created)")
    p.add_argument("--dry-run", action="store_true",
                   help="run nothing: the commands, the layout and a summary from --bench-csv")
    p.add_argument("--bench-csv", default=FIXTURE_CSV,
                   help="dry run: the recorded benchmark CSV to summarize (default: the test fixture)")
    p.add_argument("--stages", type=lambda s: [v.strip() for v in s.split(",") if v.strip()],
                   default=list(STAGES), help=f"comma-separated subset of {','.join(STAGES)} (default: all)")
    p.add_argument("--arch", help="TORCH_CUDA_ARCH_LIST (default: from the GPUs present; 9.0a in a dry run)")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                   help="parallel compile jobs, MAX_JOBS (default: every core)")
    p.add_argument("--pytest-workers", type=int, default=_default_workers(),
                   help="pytest-xdist workers of pytest -m cuda (default: 4 when xdist is installed, else 1)")
    p.add_argument("--python", default=sys.executable,
                   help="the Python with torch that builds and runs (default: this one)")
    p.add_argument("--deadline", type=float, default=DEFAULT_DEADLINE,
                   help=f"seconds from the start after which no stage runs (default {DEFAULT_DEADLINE})")
    return p


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    unknown = [s for s in args.stages if s not in STAGES]
    if unknown or not args.stages:
        p.error(f"--stages: {', '.join(unknown) or 'nothing'} not among {', '.join(STAGES)}")
    if args.dry_run and not os.path.isfile(args.bench_csv):
        p.error(f"--bench-csv: no file {args.bench_csv}")
    if args.jobs < 1 or args.deadline <= 0 or args.pytest_workers < 1:
        p.error("--jobs, --pytest-workers and --deadline must be positive")
    gpus = [] if args.dry_run else query_gpus()
    if not gpus and not args.dry_run:
        p.error("no GPU found (nvidia-smi lists none); --dry-run checks the command without one")
    arch_list = args.arch or (gpu_arch_list([cap for _, cap in gpus]) if gpus else "9.0a")
    gpu_name = gpus[0][0] if gpus else "dry-run GPU"

    out = os.path.abspath(args.out)
    for folder in ("logs", "bench", "dispatch", *(f"dispatch/{d}" for d in BENCH_DTYPES)):
        os.makedirs(os.path.join(out, folder), exist_ok=True)
    if args.dry_run:
        shutil.copyfile(args.bench_csv, os.path.join(out, "bench", "results.csv"))

    deadline = time.monotonic() + args.deadline
    stages = make_stages(args, out, arch_list)
    outcomes: dict[str, Outcome] = {}
    for phase in PHASES:
        chosen = [stages[name] for name in phase if name in args.stages]
        last = phase is PHASES[-1]
        outcomes.update(run_phase(chosen, out, deadline if last else deadline - TAIL_SECONDS, args.dry_run))

    header = (f"fused_rnn GPU check of commit {git_commit()} on {gpu_name} "
              f"(TORCH_CUDA_ARCH_LIST={arch_list}, MAX_JOBS={args.jobs})")
    print("\n" + write_summary(out, outcomes, header, args.dry_run), end="", flush=True)
    return 1 if any(o.status not in ("ok", "dry-run") for o in outcomes.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
