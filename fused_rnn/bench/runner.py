"""Runs the benchmark: for every case and candidate, the correctness gate, then (only if it
passed) the interleaved timing and the peak memory of the fused layer and of torch.nn, and the
fused layer's TFLOP/s as a fraction of the device's GEMM rate (gemm_rate.py).
Produces one row (a dict of results_csv.COLUMNS) per case and candidate."""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from . import correctness, environment, flops, gemm_rate, memory, timing
from .candidates import Candidate
from .cases import Case
from .layers import make_input, torch_layer
from .precision import strict_fp32
from .steps import make_step


#: On the CPU, the rounds of short calls go on until the slowest has been timed this long in
#: all (timing.median_ms): a few hundred samples of one step of one sequence.
CPU_MIN_TIME_MS = 50.0


@dataclass(frozen=True)
class Settings:
    device: torch.device
    repeats: int
    warmup: int


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _shape_columns(case: Case) -> dict:
    return {
        "cell": case.cell,
        "mode": case.mode,
        "dtype": case.dtype,
        "batch": case.batch,
        "seq_len": case.seq_len,
        "input_size": case.input_size,
        "hidden_size": case.hidden_size,
        "num_layers": case.num_layers,
        "bidirectional": case.bidirectional,
    }


def _timing_columns(case: Case, fused_ms: float, torch_ms: float) -> dict:
    return {
        "fused_ms": fused_ms,
        "torch_ms": torch_ms,
        "speedup": torch_ms / fused_ms,
        "us_per_step": fused_ms * 1e3 / case.seq_len,
        "torch_us_per_step": torch_ms * 1e3 / case.seq_len,
        "tflops": flops.tflops(case, fused_ms),
        "torch_tflops": flops.tflops(case, torch_ms),
    }


def measure(case: Case, candidate: Candidate, settings: Settings, x: torch.Tensor | None = None) -> dict:
    """One row: gate, and if it passed, time and memory of the candidate and of torch.nn.
    ``x``: the case's input, when the caller already made it (the same for every candidate)."""
    device = settings.device
    if x is None:
        x = make_input(case, device)
    row = {
        **_shape_columns(case),
        "backend": candidate.name,
        "repeats": settings.repeats,
        "warmup": settings.warmup,
        "threads": torch.get_num_threads(),
    }
    reference = torch_layer(case, device)
    try:
        fused = candidate.build(case, reference)
    except Exception as error:  # noqa: BLE001 - a backend that cannot build is a failed row
        gate = correctness.GateResult(False, float("nan"), note=f"could not be built: {error}"[:200])
    else:
        gate = correctness.check(case, reference, fused, device, x)
    row.update(
        max_abs_err=gate.max_abs_err,
        torch_max_abs_err=gate.torch_max_abs_err,
        status="OK" if gate.ok else "FAILED",
        note=gate.note,
    )
    if gate.ok:
        try:
            row.update(_time_and_memory(case, fused, reference, x, settings))
        except Exception as error:  # noqa: BLE001 - e.g. out of memory at a large shape
            row.update(status="FAILED", note=f"raised while timing: {error}"[:200])
    row["timestamp"] = now()
    return row


def _time_and_memory(case: Case, fused, reference, x: torch.Tensor, settings: Settings) -> dict:
    fused_step = make_step(case.mode, fused, x)
    torch_step = make_step(case.mode, reference, x)
    fused_ms, torch_ms = timing.median_ms(
        [fused_step, torch_step],
        settings.device,
        repeats=settings.repeats,
        warmup=settings.warmup,
        min_time_ms=CPU_MIN_TIME_MS if settings.device.type == "cpu" else 0.0,
    )
    columns = _timing_columns(case, fused_ms, torch_ms)
    device_rate = gemm_rate.gemm_tflops(settings.device, case.dtype)
    return {
        **columns,
        "gemm_tflops": device_rate,
        "gemm_fraction": columns["tflops"] / device_rate,
        "fused_peak_mb": memory.peak_mb(fused_step, settings.device),
        "torch_peak_mb": memory.peak_mb(torch_step, settings.device),
    }


def run(
    cases: Sequence[Case],
    candidates: Sequence[Candidate],
    settings: Settings,
    *,
    on_start: Callable[[Case, Candidate], None] | None = None,
    on_row: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Measures every case with every candidate that supports it; returns the rows. For a
    progress display, ``on_start`` is called before each measurement and ``on_row`` with each
    finished row."""
    base = {"run_id": now(), **environment.describe(settings.device)}
    rows = []
    with strict_fp32():
        for case in cases:
            x = None
            for candidate in candidates:
                if not candidate.supports(case, settings.device):
                    continue
                if on_start is not None:
                    on_start(case, candidate)
                if x is None:
                    x = make_input(case, settings.device)
                row = {**base, **measure(case, candidate, settings, x)}
                rows.append(row)
                if on_row is not None:
                    on_row(row)
    return rows


def planned(cases: Sequence[Case], candidates: Sequence[Candidate], device: torch.device) -> int:
    """How many rows :func:`run` will produce (for a progress bar)."""
    return sum(c.supports(case, device) for case in cases for c in candidates)
