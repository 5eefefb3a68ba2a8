"""Wall time of a call: the median of repeated runs, taken in turns.

The calls being compared are run interleaved (a, b, a, b, ... and the order reversed every
other round), so a change in machine load, clock speed or cache state during the measurement
hits each of them alike instead of biasing whichever ran last. Each is warmed up first (lazy
initialisation, Triton compilation and autotuning, cuDNN plans, allocator growth). The Python
garbage collector is paused while timing, as ``timeit`` does.

* CPU: ``time.perf_counter`` around each call, at the thread count the caller set. With
  ``min_time_ms``, more rounds than ``repeats`` when the calls are short: enough that the
  slowest call is timed for at least that long in all, so that calls of tens of microseconds
  (one step of one sequence) get hundreds of samples instead of a handful.
* CUDA: a pair of CUDA events around each call on the current stream, read after one
  synchronisation at the end; this is the time the GPU spends from the start of the call's
  first kernel to the end of its last, including gaps where it waits for the host to launch.
"""

from __future__ import annotations

import gc
import math
import statistics
import time
from typing import Callable, Sequence

import torch


def _rounds(count: int, repeats: int):
    forward, backward = list(range(count)), list(reversed(range(count)))
    for r in range(repeats):
        yield forward if r % 2 == 0 else backward


def _cpu_rounds(fns: Sequence[Callable], repeats: int, min_time_ms: float) -> int:
    """``repeats``, or more: enough rounds for ``min_time_ms`` of the slowest of ``fns``."""
    if min_time_ms <= 0:
        return repeats
    slowest_ms = 0.0
    for fn in fns:
        start = time.perf_counter()
        fn()
        slowest_ms = max(slowest_ms, (time.perf_counter() - start) * 1e3)
    return max(repeats, math.ceil(min_time_ms / max(slowest_ms, 1e-6)))


def _cpu_samples(fns: Sequence[Callable], repeats: int) -> list[list[float]]:
    samples = [[] for _ in fns]
    for order in _rounds(len(fns), repeats):
        for i in order:
            start = time.perf_counter()
            fns[i]()
            samples[i].append((time.perf_counter() - start) * 1e3)
    return samples


def _cuda_samples(fns: Sequence[Callable], repeats: int) -> list[list[float]]:
    events = [[] for _ in fns]
    torch.cuda.synchronize()
    for order in _rounds(len(fns), repeats):
        for i in order:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fns[i]()
            end.record()
            events[i].append((start, end))
    torch.cuda.synchronize()
    return [[start.elapsed_time(end) for start, end in pairs] for pairs in events]


def median_ms(
    fns: Sequence[Callable[[], object]],
    device: torch.device,
    *,
    repeats: int,
    warmup: int,
    min_time_ms: float = 0.0,
) -> list[float]:
    """The median time in milliseconds of each of ``fns``, measured interleaved.
    ``min_time_ms`` (CPU only): run more rounds than ``repeats`` while the slowest call's
    total stays below it."""
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    for fn in fns:
        for _ in range(warmup):
            fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        if device.type == "cuda":
            with torch.cuda.device(device):
                samples = _cuda_samples(fns, repeats)
        else:
            samples = _cpu_samples(fns, _cpu_rounds(fns, repeats, min_time_ms))
    finally:
        if was_enabled:
            gc.enable()
    return [statistics.median(s) for s in samples]
