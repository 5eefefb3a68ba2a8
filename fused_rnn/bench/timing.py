"""Wall time of a call: the median of repeated runs, taken in turns.

The calls being compared are run interleaved (a, b, a, b, ... and the order reversed every
other round), so a change in machine load, clock speed or cache state during the measurement
hits each of them alike instead of biasing whichever ran last. Each is warmed up first (lazy
initialisation, Triton compilation and autotuning, cuDNN plans, allocator growth). The Python
garbage collector is paused while timing, as ``timeit`` does.

* CPU: ``time.perf_counter`` around each call, at the thread count the caller set.
* CUDA: a pair of CUDA events around each call on the current stream, read after one
  synchronisation at the end; this is the time the GPU spends from the start of the call's
  first kernel to the end of its last, including gaps where it waits for the host to launch.
"""

from __future__ import annotations

import gc
import statistics
import time
from typing import Callable, Sequence

import torch


def _rounds(count: int, repeats: int):
    forward, backward = list(range(count)), list(reversed(range(count)))
    for r in range(repeats):
        yield forward if r % 2 == 0 else backward


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
    fns: Sequence[Callable[[], object]], device: torch.device, *, repeats: int, warmup: int
) -> list[float]:
    """The median time in milliseconds of each of ``fns``, measured interleaved."""
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
            samples = _cpu_samples(fns, repeats)
    finally:
        if was_enabled:
            gc.enable()
    return [statistics.median(s) for s in samples]
