"""The results file: one CSV, one row per (configuration, backend), appended to by every run.

Columns (bench/README.md explains them at more length):

========================  =====================================================================
run_id                    start time of the run (UTC, ISO 8601); the same for all its rows
timestamp                 when the row was measured (UTC, ISO 8601)
cell                      lstm, gru, rnn_tanh or rnn_relu
backend                   the fused_rnn backend measured (cpu, cuda, triton, reference, auto)
mode                      fwd (inference, no_grad) or fwd+bwd (training step)
dtype                     fp32, fp16 or bf16
batch, seq_len, input_size, hidden_size, num_layers, bidirectional
                          the layer's shape (time-major input, zero initial state)
status                    OK, or FAILED when the correctness gate failed (no timings then)
fused_ms, torch_ms        median time of one call, fused_rnn and torch.nn (cuDNN on a GPU)
speedup                   torch_ms / fused_ms (above 1: fused_rnn is faster)
us_per_step               fused_ms per time step, in microseconds
torch_us_per_step         torch_ms per time step, in microseconds
tflops, torch_tflops      achieved TFLOP/s (matrix-product FLOPs of the layer, see flops.py)
gemm_tflops               the device's dense GEMM rate in this dtype, measured in the run
                          (gemm_rate.py)
gemm_fraction             tflops / gemm_tflops: how near the fused layer runs to that rate
fused_peak_mb             peak memory of one call above what was held before, MiB (memory.py)
torch_peak_mb             the same for torch.nn
max_abs_err               max abs error of output and final states (vs torch.nn in fp32, vs
                          a high-precision reference in fp16/bf16; see correctness.py)
torch_max_abs_err         torch.nn's own error vs the high-precision reference (fp16/bf16 only)
repeats, warmup           timed runs (median taken) and warm-up runs of each call
threads                   torch.get_num_threads() during the run
device                    cpu or cuda
device_name               GPU name, or the CPU model
torch_version, cuda_version, cudnn_version, git_commit
                          the software measured (git_commit ends in +dirty for local changes)
note                      why a row FAILED
========================  =====================================================================
"""

from __future__ import annotations

import csv
import math
import os
from typing import Iterable, Mapping

COLUMNS = (
    "run_id",
    "timestamp",
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
    "status",
    "fused_ms",
    "torch_ms",
    "speedup",
    "us_per_step",
    "torch_us_per_step",
    "tflops",
    "torch_tflops",
    "gemm_tflops",
    "gemm_fraction",
    "fused_peak_mb",
    "torch_peak_mb",
    "max_abs_err",
    "torch_max_abs_err",
    "repeats",
    "warmup",
    "threads",
    "device",
    "device_name",
    "torch_version",
    "cuda_version",
    "cudnn_version",
    "git_commit",
    "note",
)

#: Columns that hold a measurement of speed or memory: empty in a FAILED row.
TIMING_COLUMNS = (
    "fused_ms",
    "torch_ms",
    "speedup",
    "us_per_step",
    "torch_us_per_step",
    "tflops",
    "torch_tflops",
    "gemm_tflops",
    "gemm_fraction",
    "fused_peak_mb",
    "torch_peak_mb",
)

FILE_NAME = "results.csv"


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.6g}"
    return str(value)


def append(path: str, rows: Iterable[Mapping]) -> None:
    """Appends ``rows`` to the CSV at ``path``, writing the header when the file is new. A file
    written with other columns (an older version of this tool) is rewritten with the current
    ones first, its rows kept, so that the file stays one table."""
    rows = list(rows)
    directory = os.path.dirname(path)
    if directory:
        os.makedirs(directory, exist_ok=True)
    if os.path.exists(path) and os.path.getsize(path) > 0:
        with open(path, newline="") as f:
            header = next(csv.reader(f), None)
        if header != list(COLUMNS):
            old_rows = read(path)
            with open(path, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
                writer.writeheader()
                writer.writerows(old_rows)
        mode = "a"
    else:
        mode = "w"
    with open(path, mode, newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        if mode == "w":
            writer.writeheader()
        for row in rows:
            writer.writerow({column: _cell(row.get(column)) for column in COLUMNS})


def read(path: str) -> list[dict[str, str]]:
    """The rows of a results CSV, as strings (missing columns read as empty)."""
    with open(path, newline="") as f:
        return [{c: (row.get(c) or "") for c in COLUMNS} for row in csv.DictReader(f)]
