"""``python -m fused_rnn.bench``: fused_rnn's layers against torch.nn (cuDNN on a GPU).

For every configuration of the grid and every fused_rnn backend available on the device: the
correctness gate, then the median time, µs per step, TFLOP/s and peak memory of fused_rnn and
torch.nn side by side. Prints a table, appends the rows to ``OUT/results.csv`` and redraws the
plots in ``OUT/plots/`` from that CSV. Exits with 1 when a configuration FAILED the gate.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Mapping, Sequence

import torch

from fused_rnn import dispatch

from . import candidates as candidates_module
from . import cases as cases_module
from . import environment, results_csv, runner, table
from .candidates import Candidate

DEFAULT_OUT = os.path.join("bench", "results")

#: Timed runs per call when --repeats is not given.
DEFAULT_REPEATS = {("cuda", "full"): 30, ("cuda", "quick"): 10, ("cpu", "full"): 10, ("cpu", "quick"): 5}
DEFAULT_WARMUP = {"cuda": 10, "cpu": 1}


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _choices(allowed: Sequence[str], aliases: Mapping[str, str] | None = None):
    def parse(text: str) -> list[str]:
        values = [v.strip() for v in text.split(",") if v.strip()]
        bad = [v for v in values if v not in allowed]
        if bad or not values:
            raise argparse.ArgumentTypeError(
                f"{', '.join(bad) or 'nothing'} not among {', '.join(allowed)}"
            )
        return [aliases[v] if aliases else v for v in values]

    return parse


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m fused_rnn.bench",
        description="Benchmark fused_rnn's LSTM/GRU/RNN layers against torch.nn (cuDNN on a GPU).",
    )
    p.add_argument("--device", choices=("cpu", "cuda"),
                   help="where to run (default: cuda when a GPU is available, else cpu)")
    p.add_argument("--cells", type=_choices(tuple(cases_module.CELL_ALIASES), cases_module.CELL_ALIASES),
                   default=list(cases_module.DEFAULT_CELLS),
                   help="comma-separated: lstm, gru, rnn (= rnn_tanh), rnn_relu, ln_lstm, ln_gru "
                        "(the layer-normalised cells, against the per-step PyTorch loop and "
                        "that loop under torch.compile); default: lstm,gru,rnn")
    p.add_argument("--backends", type=lambda s: [v.strip() for v in s.split(",") if v.strip()],
                   help="comma-separated fused_rnn backends (cpu, cuda, triton, torch, reference, "
                        "auto); default: every one available on the device but reference and auto")
    p.add_argument("--dtype", type=_choices(tuple(cases_module.DTYPES)),
                   help="comma-separated: fp32, fp16, bf16 (default: bf16 on a GPU, fp32 on the CPU)")
    p.add_argument("--modes", type=_choices(cases_module.MODES), default=list(cases_module.MODES),
                   help="comma-separated: fwd (inference), fwd+bwd (training step); default both")
    grid = p.add_mutually_exclusive_group()
    grid.add_argument("--grid", choices=cases_module.GRIDS, default="full",
                      help="the grid of shapes (default: full)")
    grid.add_argument("--quick", action="store_const", dest="grid", const="quick",
                      help="the quick grid (same as --grid quick): a smoke test, minutes on a CPU")
    shapes = p.add_argument_group("custom shapes (replace the grid: every combination)")
    shapes.add_argument("--batch", type=_int_list, help="batch sizes, e.g. 1,8,64")
    shapes.add_argument("--hidden", type=_int_list, help="hidden sizes, e.g. 256,1024")
    shapes.add_argument("--seq-len", type=_int_list, help="sequence lengths, e.g. 128")
    shapes.add_argument("--input-size", type=int, help="input size (default: = hidden size)")
    shapes.add_argument("--num-layers", type=int, default=1, help="layers (default 1)")
    shapes.add_argument("--bidirectional", action="store_true", help="both directions")
    p.add_argument("--out", default=DEFAULT_OUT,
                   help=f"directory for results.csv (appended) and plots/ (default: {DEFAULT_OUT})")
    p.add_argument("--threads", type=int, default=2, help="CPU threads (torch.set_num_threads; default 2)")
    p.add_argument("--repeats", type=int, help="timed runs per call, median taken (default: by grid)")
    p.add_argument("--warmup", type=int, help="untimed runs per call first (default: 10 GPU, 1 CPU)")
    p.add_argument("--no-plot", action="store_true", help="do not redraw the plots")
    p.add_argument("--dispatch-out", metavar="PATH",
                   help="write the dispatch table of this run to PATH (a .json file, or a "
                        "directory: then a file named after the device class) for "
                        "backend='auto' (fused_rnn/dispatch.py); the shipped tables live in "
                        "fused_rnn/dispatch_tables/")
    return p


def _device(args, p: argparse.ArgumentParser) -> torch.device:
    name = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA GPU is available")
    return torch.device(name, torch.cuda.current_device()) if name == "cuda" else torch.device("cpu")


def _shapes(args, device: torch.device) -> list[cases_module.Shape]:
    custom = (args.batch, args.hidden, args.seq_len)
    if any(v is not None for v in custom) or args.num_layers != 1 or args.bidirectional:
        defaults = cases_module.grid_shapes(device.type, args.grid)[0]
        return cases_module.custom_shapes(
            args.batch or [defaults.batch],
            args.hidden or [defaults.hidden_size],
            args.seq_len or [defaults.seq_len],
            input_size=args.input_size,
            num_layers=args.num_layers,
            bidirectional=args.bidirectional,
        )
    return cases_module.grid_shapes(device.type, args.grid)


def main(argv: Sequence[str] | None = None, *, extra_candidates: Mapping[str, Candidate] | None = None) -> int:
    """Runs the benchmark CLI. ``extra_candidates``: more implementations to measure by name,
    beside fused_rnn's backends (measured by default, or when named in --backends)."""
    p = parser()
    args = p.parse_args(argv)
    device = _device(args, p)
    dtypes = args.dtype or [cases_module.default_dtype(device.type)]
    try:
        chosen = candidates_module.select(args.backends, device, args.cells, extra_candidates)
    except ValueError as error:
        p.error(str(error))
    cases = cases_module.make_cases(_shapes(args, device), args.cells, dtypes, args.modes)
    settings = runner.Settings(
        device=device,
        repeats=args.repeats or DEFAULT_REPEATS[(device.type, args.grid)],
        warmup=DEFAULT_WARMUP[device.type] if args.warmup is None else args.warmup,
    )
    total = runner.planned(cases, chosen, device)
    if total == 0:
        names = ", ".join(c.name for c in chosen) or "none"
        print(f"nothing to measure: no backend ({names}) runs {', '.join(args.cells)} on {device.type}",
              file=sys.stderr)
        return 1

    try:
        from rich.console import Console
    except ImportError:
        print("python -m fused_rnn.bench needs rich: pip install 'fused_rnn[bench]'", file=sys.stderr)
        return 2
    console = Console(stderr=True)
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    csv_path = os.path.join(args.out, results_csv.FILE_NAME)
    custom = args.batch or args.hidden or args.seq_len or args.num_layers != 1 or args.bidirectional
    try:
        console.print(
            f"fused_rnn benchmark on {device} ({environment.device_name(device)}), "
            f"{'custom shapes' if custom else 'grid ' + args.grid}, {', '.join(dtypes)}, "
            f"backends {', '.join(c.name for c in chosen)}, "
            f"{total} measurements, {settings.repeats} repeats"
            + (f", {torch.get_num_threads()} threads" if device.type == "cpu" else ""),
            highlight=False,
        )
        device_class = dispatch.device_class(device)   # at the thread count measured
        rows = _run_with_progress(cases, chosen, settings, total, console)
    finally:
        torch.set_num_threads(threads)

    results_csv.append(csv_path, rows)
    title = f"fused_rnn vs torch.nn on {rows[0]['device_name']} (commit {rows[0]['git_commit']})"
    table.show(rows, title)
    if any(cell in cases_module.LAYERNORM_CELLS for cell in args.cells):
        console.print("ln_lstm, ln_gru: the 'torch' columns are the per-step PyTorch loop "
                      "(fused_rnn/bench/layernorm_loop.py), eager", highlight=False)
    for dtype, rate in sorted({(row["dtype"], row["gemm_tflops"]) for row in rows if row.get("gemm_tflops")}):
        console.print(f"'of GEMM': TFLOP/s over this device's torch.mm rate in {dtype}, "
                      f"{rate:.3g} TFLOP/s (square products, measured in this run)", highlight=False)
    console.print(f"appended {len(rows)} rows to {csv_path}", highlight=False)
    if not args.no_plot:
        _plot(csv_path, os.path.join(args.out, "plots"), console)
    if args.dispatch_out:
        path = args.dispatch_out
        if os.path.isdir(path) or not path.endswith(".json"):
            path = os.path.join(path, dispatch.table_file_name(device_class))
        command = "python -m fused_rnn.bench " + " ".join(argv if argv is not None else sys.argv[1:])
        dispatch.write_table(path, dispatch.table_from_rows(rows, device_class, command=command))
        console.print(f"dispatch table of {device_class.describe()}: {path}", highlight=False)
    failed = sum(row["status"] != "OK" for row in rows)
    if failed:
        console.print(f"[bold red]{failed} configuration(s) FAILED the correctness gate[/bold red]")
    return 1 if failed else 0


def _plot(csv_path: str, out_dir: str, console) -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        console.print("no plots: matplotlib is not installed (pip install 'fused_rnn[bench]')")
        return
    from .plots import plot_csv

    for path in plot_csv(csv_path, out_dir):
        console.print(f"plot: {path}", highlight=False)


def _run_with_progress(cases, chosen, settings, total, console) -> list[dict]:
    from rich.markup import escape
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("starting", total=total)

        def on_start(case, candidate):
            progress.update(task, description=escape(f"{case.id} on {candidate.name}"))

        def on_row(row):
            progress.advance(task)

        return runner.run(cases, chosen, settings, on_start=on_start, on_row=on_row)
