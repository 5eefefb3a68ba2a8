"""Plots of the results CSV: speed-up over torch.nn against batch size.

One figure per device (``device_name``), dtype and sequence length; in it one panel per cell
and mode, and one line per backend and hidden size (log batch axis, log speed-up axis, a line
at 1 = as fast as torch.nn). Only single-layer, unidirectional rows that passed the correctness
gate are drawn (the multi-layer and bidirectional rows are in the CSV and the table); where the
CSV holds the same configuration more than once, its latest row is drawn.

Redraw from a recorded CSV:

    python -m fused_rnn.bench.plots bench/results/results.csv bench/results/plots
    python -m fused_rnn.bench.plots results.csv plots --device-name H100 --commit 1a2b3c
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections import defaultdict
from typing import Sequence

from . import results_csv

#: A configuration: rows with the same key measure the same thing (latest one wins).
_KEY = (
    "device_name",
    "cell",
    "backend",
    "mode",
    "dtype",
    "batch",
    "seq_len",
    "input_size",
    "hidden_size",
    "num_layers",
    "bidirectional",
)
_CELL_ORDER = ("lstm", "gru", "rnn_tanh", "rnn_relu")
_MODE_ORDER = ("fwd", "fwd+bwd")
_BACKEND_STYLES = ("-", "--", ":", "-.")
_BACKEND_MARKERS = ("o", "s", "^", "D")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()


def latest_rows(
    rows: Sequence[dict], *, device_name: str | None = None, commit: str | None = None
) -> list[dict]:
    """The rows to plot: passed the gate, single layer, one direction, optionally only of a
    device (substring of device_name) or a commit (prefix); the latest of each configuration."""
    latest: dict[tuple, dict] = {}
    for row in rows:
        if row["status"] != "OK" or not row["speedup"]:
            continue
        if row["num_layers"] != "1" or row["bidirectional"] != "False":
            continue
        if device_name and device_name.lower() not in row["device_name"].lower():
            continue
        if commit and not row["git_commit"].startswith(commit):
            continue
        key = tuple(row[c] for c in _KEY)
        if key not in latest or row["timestamp"] >= latest[key]["timestamp"]:
            latest[key] = row
    return list(latest.values())


def _ordered(values, order) -> list:
    return sorted(set(values), key=lambda v: (order.index(v) if v in order else len(order), v))


def _figure(rows: list[dict], title: str, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, NullFormatter

    cells = _ordered((r["cell"] for r in rows), _CELL_ORDER)
    modes = _ordered((r["mode"] for r in rows), _MODE_ORDER)
    backends = sorted({r["backend"] for r in rows})
    hiddens = sorted({int(r["hidden_size"]) for r in rows})
    colours = plt.get_cmap("viridis")
    fig, axes = plt.subplots(
        len(cells), len(modes), figsize=(6 * len(modes), 3.8 * len(cells)), squeeze=False,
    )
    for i, cell in enumerate(cells):
        for j, mode in enumerate(modes):
            ax = axes[i][j]
            lines = defaultdict(list)
            for r in rows:
                if r["cell"] == cell and r["mode"] == mode:
                    key = (r["backend"], int(r["hidden_size"]), int(r["input_size"]))
                    lines[key].append((int(r["batch"]), float(r["speedup"])))
            for (backend, hidden, input_size), points in sorted(lines.items()):
                points.sort()
                b = backends.index(backend)
                label = f"{backend} H={hidden}" + (f" I={input_size}" if input_size != hidden else "")
                ax.plot(
                    [p[0] for p in points],
                    [p[1] for p in points],
                    linestyle=_BACKEND_STYLES[b % len(_BACKEND_STYLES)],
                    marker=_BACKEND_MARKERS[b % len(_BACKEND_MARKERS)],
                    color=colours(hiddens.index(hidden) / max(1, len(hiddens) - 1) * 0.9),
                    label=label,
                )
            ax.axhline(1.0, color="grey", linewidth=1, linestyle="--")
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            batches = sorted({b for points in lines.values() for b, _ in points})
            ax.set_xticks(batches, [str(b) for b in batches])
            ax.xaxis.set_minor_formatter(NullFormatter())
            # Label the minor ticks too: a panel often spans less than a decade of speed-ups.
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}x"))
            ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:.3g}x"))
            ax.tick_params(axis="y", which="minor", labelsize="x-small")
            ax.set_title(f"{cell}, {mode}")
            ax.set_xlabel("batch size")
            ax.set_ylabel("speed-up over torch.nn")
            ax.grid(True, which="both", alpha=0.3)
            if lines:
                ax.legend(fontsize="small")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_rows(rows: Sequence[dict], out_dir: str) -> list[str]:
    """Writes one PNG per (device, dtype, seq_len) of ``rows`` (already filtered) into
    ``out_dir``; returns their paths."""
    groups = defaultdict(list)
    for row in rows:
        groups[(row["device_name"], row["dtype"], int(row["seq_len"]))].append(row)
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for (device_name, dtype, seq_len), group in sorted(groups.items()):
        commits = ", ".join(sorted({r["git_commit"] for r in group}))
        title = f"{device_name}: {dtype}, seq_len {seq_len} (commit {commits})"
        path = os.path.join(out_dir, f"speedup_{_slug(device_name)}_{dtype}_T{seq_len}.png")
        _figure(group, title, path)
        paths.append(path)
    return paths


def plot_csv(
    csv_path: str, out_dir: str, *, device_name: str | None = None, commit: str | None = None
) -> list[str]:
    """Draws the plots of a results CSV; returns the paths of the PNGs written."""
    rows = latest_rows(results_csv.read(csv_path), device_name=device_name, commit=commit)
    return plot_rows(rows, out_dir)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fused_rnn.bench.plots",
        description="Draw speed-up plots from a fused_rnn benchmark CSV.",
    )
    parser.add_argument("csv", help="results CSV written by python -m fused_rnn.bench")
    parser.add_argument("out_dir", help="directory for the PNG files")
    parser.add_argument("--device-name", help="only rows whose device_name contains this")
    parser.add_argument("--commit", help="only rows whose git_commit starts with this")
    args = parser.parse_args(argv)
    paths = plot_csv(args.csv, args.out_dir, device_name=args.device_name, commit=args.commit)
    if not paths:
        print("nothing to plot: no single-layer rows that passed the gate", file=sys.stderr)
        return 1
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
