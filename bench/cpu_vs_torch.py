"""fused_rnn's CPU kernels against torch.nn on the CPU, side by side: the ratio table.

Runs the CPU grid of the benchmark (``python -m fused_rnn.bench --device cpu``: batch {1, 32},
hidden {128, 256}, T=100, input = hidden, and one step of one sequence, T=1, B=1) for the
``cpu`` backend, with the benchmark's own
correctness gate, interleaved median timing at a fixed thread count and peak memory, and prints
one line per shape with inference and training-step ratios (torch.nn time / fused_rnn time:
above 1, fused_rnn is faster). Nothing is written to disk; for the CSV and plots use
``python -m fused_rnn.bench --device cpu``.

    python bench/cpu_vs_torch.py [--threads 2] [--repeats 15]
"""

from __future__ import annotations

import argparse

import torch

from fused_rnn.bench import cases as bench_cases
from fused_rnn.bench import runner
from fused_rnn.bench.candidates import fused_backend


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    device = torch.device("cpu")
    shapes = bench_cases.grid_shapes("cpu", "full")
    cases = bench_cases.make_cases(shapes, ["lstm", "gru", "rnn_tanh"], ["fp32"], list(bench_cases.MODES))
    candidates = [fused_backend("cpu")]
    settings = runner.Settings(device=device, repeats=args.repeats, warmup=2)
    rows = runner.run(cases, candidates, settings)

    by_shape: dict[tuple, dict[str, dict]] = {}
    for row in rows:
        key = (row["cell"], row["seq_len"], row["batch"], row["hidden_size"], row["num_layers"],
               row["bidirectional"])
        by_shape.setdefault(key, {})[row["mode"]] = row

    def cell(row, column, fmt):
        return format(row[column], fmt) if row and row.get(column) is not None else "-"

    print(f"threads={args.threads}, input=hidden, fp32; ms are medians of {args.repeats} interleaved runs")
    header = (
        f"{'cell':8} {'T':>3} {'B':>3} {'H':>4} {'layers':>6} | {'fwd torch':>9} {'fused':>7} {'ratio':>6} | "
        f"{'train torch':>11} {'fused':>7} {'ratio':>6} | {'train peak MiB torch/fused':>26}"
    )
    print(header)
    print("-" * len(header))
    failed = 0
    for (name, steps, batch, hidden, layers, bidirectional), modes in by_shape.items():
        fwd, train = modes.get("fwd"), modes.get("fwd+bwd")
        failed += sum(r["status"] != "OK" for r in modes.values())
        stack = f"{layers}{' bi' if bidirectional else ''}"
        print(
            f"{name:8} {steps:>3} {batch:>3} {hidden:>4} {stack:>6} | {cell(fwd, 'torch_ms', '9.3f')} "
            f"{cell(fwd, 'fused_ms', '7.3f')} {cell(fwd, 'speedup', '6.2f')} | "
            f"{cell(train, 'torch_ms', '11.3f')} {cell(train, 'fused_ms', '7.3f')} "
            f"{cell(train, 'speedup', '6.2f')} | "
            f"{cell(train, 'torch_peak_mb', '12.1f')} / {cell(train, 'fused_peak_mb', '<11.1f')}"
        )
    if failed:
        print(f"{failed} configuration(s) FAILED the correctness gate (see python -m fused_rnn.bench)")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
