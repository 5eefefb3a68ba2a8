"""pytest-benchmark suite: each fused_rnn backend and torch.nn on every case of the grid, in one
benchmark group per case so that ``--benchmark-compare`` / the summary sets them side by side.

    pytest bench/ --benchmark-only [--bench-grid quick] [--bench-device cpu]

The cases and the timed calls are those of ``python -m fused_rnn.bench`` (fused_rnn.bench.cases
and .steps). A fused backend is timed only after it passed the correctness gate at that case;
a failing one is reported as a test failure, not as a time.
"""

from __future__ import annotations

import pytest
import torch

from fused_rnn.bench import candidates, correctness, environment, flops
from fused_rnn.bench.layers import make_input, torch_layer
from fused_rnn.bench.steps import make_step

pytest.importorskip("pytest_benchmark")

WARMUP = {"cuda": 10, "cpu": 1}


def test_layer(benchmark, device, case, implementation):
    reference = torch_layer(case, device)
    if implementation == candidates.TORCH_NN:
        layer = reference
    else:
        layer = candidates.fused_backend(implementation).build(case, reference)
        gate = correctness.check(case, reference, layer, device)
        if not gate.ok:
            pytest.fail(f"correctness gate FAILED, not timed: {gate.note}")
    step = make_step(case.mode, layer, make_input(case, device))

    if device.type == "cuda":
        # Wait for the GPU, so that the wall time is the call's, not its launch's.
        def timed():
            step()
            torch.cuda.synchronize(device)
    else:
        timed = step

    benchmark.group = case.id
    benchmark.extra_info.update(
        implementation=implementation, flops=flops.flops(case), **environment.describe(device)
    )
    # Warm up here (Triton compilation and autotuning, cuDNN plans, allocator growth): the
    # benchmark fixture does not by default. Rounds follow the --benchmark-* options.
    for _ in range(WARMUP[device.type]):
        timed()
    benchmark(timed)
