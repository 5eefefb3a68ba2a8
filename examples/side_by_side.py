"""What the examples share: the command line, a torch.nn model and its fused_rnn twin with the
same initial weights, and timing of training steps.

Both models see the same batches in the same order, so their losses stay close (they differ
only by floating-point rounding, which training slowly amplifies) and their step times compare
like for like: torch.nn runs cuDNN on a GPU and ATen's RNN kernels on the CPU.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

import fused_rnn

NAMES = ("torch.nn", "fused_rnn")


def make_parser(description: str, *, steps: int) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=steps, help="optimizer steps per model")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log-every", type=int, default=max(1, steps // 10))
    return parser


def twin_models(build, device) -> dict[str, nn.Module]:
    """``build()`` makes a model with torch.nn recurrent layers; its twin is a copy with the
    layers swapped for fused_rnn's by :func:`fused_rnn.convert` (same weights)."""
    reference = build().to(device)
    return {"torch.nn": reference, "fused_rnn": fused_rnn.convert(reference)}


class StepTimer:
    """Wall time of each timed block (a training step), waiting for the GPU at both ends."""

    def __init__(self, device):
        self.cuda = torch.device(device).type == "cuda"
        self.seconds: list[float] = []

    def __enter__(self):
        if self.cuda:
            torch.cuda.synchronize()
        self.start = time.perf_counter()

    def __exit__(self, *exc):
        if self.cuda:
            torch.cuda.synchronize()
        self.seconds.append(time.perf_counter() - self.start)

    def median_ms(self) -> float:
        # the first steps include warm-up (allocations, kernel selection): leave them out
        timed = self.seconds[3:] or self.seconds
        return 1000 * statistics.median(timed)


def log(step: int, metrics: dict[str, dict[str, float]]) -> None:
    """One line per report: ``metrics[name][metric]`` for torch.nn and fused_rnn."""
    parts = [f"step {step:5d}"]
    for name in NAMES:
        values = ", ".join(f"{key} {value:.4g}" for key, value in metrics[name].items())
        parts.append(f"{name}: {values}")
    print(" | ".join(parts), flush=True)
