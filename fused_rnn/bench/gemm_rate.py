"""The device's dense matrix-product rate, measured in the same run: the yardstick for a
layer's TFLOP/s.

A layer's FLOPs (flops.py) are its matrix products, so no implementation of it can run much
faster than the device multiplies large square matrices. Measuring that rate beside the layers
(same process, threads, dtype, TF32 setting) turns each row's TFLOP/s into a fraction of what
the device's GEMM library (MKL/oneDNN on the CPU, cuBLAS on a GPU) reaches, and so tells how
much speed is left to win at a shape, and whether a speed-up asked of a layer is possible at
all: a fused layer at 95% of the GEMM rate has at most a few percent to gain; one at 10% is
held back by the recurrence's latency, not by arithmetic.

It is a yardstick, not a hard bound: a layer whose products are shaped better for the machine
than the square ones measured here can pass 100%.
"""

from __future__ import annotations

import functools

import torch

from . import timing
from .cases import DTYPES

#: The square sizes tried, smallest first, up to the device's cap: the largest products get
#: closest to the device's peak, while on a CPU a slow dtype (fp16 has no fast CPU kernels)
#: stops the doubling early.
FIRST_SIZE = 256
MAX_SIZE = {"cpu": 2048, "cuda": 8192}
#: The doubling stops once one product takes this long.
LONGEST_MS = 25.0


def _rate_tflops(n: int, dtype: torch.dtype, device: torch.device) -> tuple[float, float]:
    """(TFLOP/s, ms) of an n x n x n product: the median of a few timed calls."""
    generator = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, generator=generator).to(dtype)
    b = torch.randn(n, n, device=device, generator=generator).to(dtype)
    (ms,) = timing.median_ms([lambda: torch.mm(a, b)], device, repeats=5, warmup=1)
    return 2 * n**3 / (ms * 1e-3) / 1e12, ms


@functools.cache
def _measure(device: torch.device, dtype: str, threads: int, tf32: bool) -> float:
    """``threads`` and ``tf32`` only key the cache: the rate depends on both."""
    best, n = 0.0, FIRST_SIZE
    while n <= MAX_SIZE[device.type]:
        rate, ms = _rate_tflops(n, DTYPES[dtype], device)
        best = max(best, rate)
        if ms > LONGEST_MS:
            break
        n *= 2
    return best


def gemm_tflops(device: torch.device, dtype: str) -> float:
    """The best TFLOP/s of ``torch.mm`` on square matrices of ``dtype`` ('fp32', 'bf16',
    'fp16') on ``device``, at the current thread count and TF32 setting; measured once per
    process for each."""
    return _measure(device, dtype, torch.get_num_threads(), torch.backends.cuda.matmul.allow_tf32)
