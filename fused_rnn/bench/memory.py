"""Peak memory of a call: how far the memory held by tensors rises above what was held before.

* CUDA: ``torch.cuda.max_memory_allocated()`` after ``reset_peak_memory_stats()``, minus
  ``memory_allocated()`` before the call: every tensor and workspace the caching allocator hands
  out during the call (cuDNN's workspace and reserve space included), not the allocator's cache.
* CPU: the allocation events of torch's profiler (``profile_memory=True``): every allocation and
  free through c10's CPU allocator during one call, replayed in order; the peak of the running
  sum of the bytes allocated in the call and not yet freed. This counts every tensor, including
  those the C++ kernels and ATen ops allocate internally. It does not see memory that libraries
  take from ``malloc`` directly (oneDNN/MKL scratch buffers, OpenMP thread stacks), nor
  fragmentation; RSS-based numbers would see those but are dominated by the allocator's reuse
  of freed pages, so they say little about the call itself.

Measured in a separate, untimed call after the warm-up.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Callable

import torch


def peak_mb(fn: Callable[[], object], device: torch.device) -> float | None:
    """Peak memory of ``fn()`` above the memory held before it, in MiB (None if unmeasurable)."""
    if device.type == "cuda":
        return _cuda_peak(fn, device) / 2**20
    peak = _cpu_peak(fn)
    return None if peak is None else peak / 2**20


def _cuda_peak(fn: Callable[[], object], device: torch.device) -> int:
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - before


@contextlib.contextmanager
def _stderr_silenced():
    """The profiler's C++ side logs to file descriptor 2 on every start and stop; keep that off
    the terminal (and the progress bar)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _cpu_peak(fn: Callable[[], object]) -> int | None:
    try:
        from torch._C._profiler import _EventType
    except ImportError:
        return None
    profiler = torch.autograd.profiler.profile(use_cpu=True, profile_memory=True, use_kineto=True)
    try:
        with _stderr_silenced(), profiler:
            fn()
    except RuntimeError:
        # A profiler already running (the caller's own) cannot be nested: no measurement.
        return None
    results = getattr(profiler, "kineto_results", None)
    if results is None:
        return None

    allocations = []
    stack = list(results.experimental_event_tree())
    while stack:
        event = stack.pop()
        stack.extend(event.children)
        if event.tag == _EventType.Allocation and event.extra_fields.device.type == "cpu":
            allocations.append(event)
    # At equal timestamps an allocation goes first: a block freed before it was allocated
    # would otherwise stay counted for good.
    allocations.sort(key=lambda event: (event.start_time_ns, event.extra_fields.alloc_size < 0))

    # Frees of blocks allocated before the call are not the call's doing: only blocks the call
    # allocated count, from their allocation to their free.
    live: dict[int, int] = {}
    current = peak = 0
    for event in allocations:
        fields = event.extra_fields
        if fields.alloc_size > 0:
            live[fields.ptr] = fields.alloc_size
            current += fields.alloc_size
            peak = max(peak, current)
        else:
            current -= live.pop(fields.ptr, 0)
    return peak
