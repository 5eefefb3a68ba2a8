"""What the examples share: the command line, a torch.nn model and its fused_rnn twin with the
same initial weights, and timing of training steps; for the longer trainings also bf16 autocast
and torch.compile (``--dtype``, ``--compile``), AdamW with a warm-up and cosine schedule,
gradient clipping, checkpoints loaded from one kind of model into the other, and a progress bar.

Both models see the same batches in the same order, so their losses stay close (they differ
only by floating-point rounding, which training slowly amplifies) and their step times compare
like for like: torch.nn runs cuDNN on a GPU and ATen's RNN kernels on the CPU.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import statistics
import sys
import tempfile
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


def add_training_options(parser: argparse.ArgumentParser, *, lr: float) -> None:
    """The options of the longer trainings: optimizer and schedule (:func:`optimizers_and_schedules`),
    gradient clipping (:func:`clipped_step`), precision (:func:`autocast`), compilation
    (:func:`compiled`) and checkpoints (:func:`swap_checkpoints`)."""
    parser.add_argument("--lr", type=float, default=lr, help="peak learning rate")
    parser.add_argument("--warmup", type=int, default=None, help="warm-up steps (default: 5%% of --steps)")
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--clip", type=float, default=1.0, help="gradient norm clip")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32",
                        help="bf16: forward passes under bfloat16 autocast (parameters, optimizer state: fp32)")
    parser.add_argument("--compile", nargs="?", const="inductor", default=None, metavar="BACKEND",
                        help="torch.compile the training steps' models (default backend: inductor); fused_rnn's "
                             "compiles whole (fullgraph=True), torch.nn's recurrent layers break the graph and "
                             "run eagerly")
    parser.add_argument("--checkpoints", help="directory for the checkpoints (default: a temporary one)")


def autocast(args):
    """The context the forward passes run in: bfloat16 autocast on ``args.device`` for
    ``--dtype bf16``, else none."""
    if args.dtype == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(args.device).type, dtype=torch.bfloat16)


def compiled(models: dict[str, nn.Module], args) -> dict[str, nn.Module]:
    """What the training steps call: the models themselves, or with ``--compile BACKEND``
    ``torch.compile`` of them, sharing their parameters. Dynamo refuses to trace torch.nn's
    LSTM/GRU/RNN, so the torch.nn model compiles in pieces around its recurrent layers, which
    run eagerly (cuDNN or ATen); the fused_rnn model compiles into one graph or fails."""
    if args.compile is None:
        return dict(models)
    return {
        "torch.nn": torch.compile(models["torch.nn"], backend=args.compile),
        "fused_rnn": torch.compile(models["fused_rnn"], backend=args.compile, fullgraph=True),
    }


def twin_models(build, device) -> dict[str, nn.Module]:
    """``build()`` makes a model with torch.nn recurrent layers; its twin is a copy with the
    layers swapped for fused_rnn's by :func:`fused_rnn.convert` (same weights)."""
    reference = build().to(device)
    return {"torch.nn": reference, "fused_rnn": fused_rnn.convert(reference)}


def swap_checkpoints(models: dict[str, nn.Module], build, args, evaluate, scores: dict[str, float], metric: str,
                     **extra) -> dict[str, float]:
    """Saves each model's checkpoint (its ``state_dict``, the command line's options and
    ``extra``) to ``args.checkpoints/NAME.pt``, loads it into a fresh model of the other kind and prints what
    ``evaluate`` gives there next to the model's own ``scores``: the same, to rounding, since
    torch.nn and fused_rnn layers have the same parameter names and shapes. Returns the scores
    of the loaded models, under the name of the model that saved them."""
    fresh = {"torch.nn": lambda: build().to(args.device),
             "fused_rnn": lambda: fused_rnn.convert(build().to(args.device))}
    loaded = {}
    with tempfile.TemporaryDirectory() as scratch:
        directory = args.checkpoints or scratch
        os.makedirs(directory, exist_ok=True)
        for name, model in models.items():
            path = os.path.join(directory, f"{name}.pt")
            torch.save({"model": model.state_dict(), "options": vars(args), **extra}, path)
            other = NAMES[1 - NAMES.index(name)]
            twin = fresh[other]()
            twin.load_state_dict(torch.load(path, map_location=args.device)["model"])
            loaded[name] = evaluate(twin)
            print(f"{name}'s checkpoint in a {other} model: {metric} {loaded[name]:.6g} ({name}: {scores[name]:.6g})")
    if args.checkpoints:
        print(f"checkpoints: {os.path.join(args.checkpoints, '{' + ','.join(NAMES) + '}.pt')}")
    return loaded


def optimizers_and_schedules(models: dict[str, nn.Module], args):
    """AdamW per model, and a schedule per optimizer that raises the learning rate linearly over
    ``--warmup`` steps (default: the first 5%), then lowers it along a half cosine to a tenth of
    ``--lr`` at the last step."""
    warmup = max(1, args.steps // 20) if args.warmup is None else args.warmup

    def factor(step: int) -> float:  # step: optimizer steps taken so far
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, args.steps - warmup))
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    optimizers = {name: torch.optim.AdamW(m.parameters(), lr=args.lr, weight_decay=args.weight_decay)
                  for name, m in models.items()}
    schedules = {name: torch.optim.lr_scheduler.LambdaLR(o, factor) for name, o in optimizers.items()}
    return optimizers, schedules


def clipped_step(loss: torch.Tensor, model: nn.Module, optimizer, schedule, args) -> None:
    """Backward, gradient norm clipped to ``--clip``, optimizer step, schedule step."""
    optimizer.zero_grad()
    loss.backward()
    nn.utils.clip_grad_norm_(model.parameters(), args.clip)
    optimizer.step()
    schedule.step()


class ProgressBar:
    """A one-line bar on stderr, redrawn in place: steps done, steps per second, time left.
    Drawn only when stderr is a terminal, so logs and pipes get only the printed lines."""

    WIDTH = 30

    def __init__(self, total: int, stream=None):
        self.total, self.stream = total, sys.stderr if stream is None else stream
        self.enabled = self.stream.isatty()
        self.start = time.perf_counter()

    def update(self, step: int) -> None:
        if not self.enabled:
            return
        rate = step / max(time.perf_counter() - self.start, 1e-9)
        filled = self.WIDTH * step // self.total
        bar = "#" * filled + "." * (self.WIDTH - filled)
        left = (self.total - step) / rate
        self.stream.write(f"\r[{bar}] {step}/{self.total} steps, {rate:.2f}/s, {left:.0f} s left\033[K")
        self.stream.flush()

    def clear(self) -> None:
        """Erases the bar (before a line is printed; the next update draws it again)."""
        if self.enabled:
            self.stream.write("\r\033[K")
            self.stream.flush()


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


def log(step: int, metrics: dict[str, dict[str, float]], *, label: str = "",
        progress: ProgressBar | None = None) -> None:
    """One line per report: ``metrics[name][metric]`` for torch.nn and fused_rnn, after
    ``label``; erases ``progress`` first."""
    if progress is not None:
        progress.clear()
    parts = [f"{label}step {step:5d}"]
    for name in NAMES:
        values = ", ".join(f"{key} {value:.4g}" for key, value in metrics[name].items())
        parts.append(f"{name}: {values}")
    print(" | ".join(parts), flush=True)
