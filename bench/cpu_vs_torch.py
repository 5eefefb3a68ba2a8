"""fused_rnn's CPU kernels against torch.nn on the CPU, side by side in one process.

Same weights, a fixed thread count, medians of interleaved runs (fused, torch, fused, torch,
...), so that a busy or throttled machine slows both alike. Prints the times and the ratios
torch / fused (above 1: fused_rnn is faster) for inference (no_grad forward) and a training
step (forward + backward), and the peak memory of a training step.

    python bench/cpu_vs_torch.py [--threads 2] [--repeats 15]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import statistics
import time

import torch

import fused_rnn

# (cell, batch, hidden, seq_len); input_size = hidden
CASES = [
    (cell, batch, hidden, 100)
    for cell in ("lstm", "gru", "rnn")
    for batch in (1, 32)
    for hidden in (128, 256)
]

LAYERS = {
    "lstm": (fused_rnn.LSTM, torch.nn.LSTM),
    "gru": (fused_rnn.GRU, torch.nn.GRU),
    "rnn": (fused_rnn.RNN, torch.nn.RNN),
}


def interleaved_medians(fns, repeats: int, warmup: int = 2) -> list[float]:
    """Median milliseconds of each function, timed round-robin."""
    for fn in fns:
        for _ in range(warmup):
            fn()
    times = [[] for _ in fns]
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            fn()
            times[i].append((time.perf_counter() - start) * 1e3)
    return [statistics.median(t) for t in times]


@contextlib.contextmanager
def stderr_silenced():
    """The profiler's C++ side prints start/stop lines straight to file descriptor 2."""
    saved = os.dup(2)
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def peak_training_memory_mb(layer, x) -> float:
    """Peak bytes held by CPU tensors during one forward+backward, from the profiler's memory
    events (allocations minus frees, running maximum)."""
    gc.collect()
    with stderr_silenced(), torch.profiler.profile(
        activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True
    ) as prof:
        layer(x)[0].sum().backward()
    current = peak = 0
    for event in sorted(prof.events(), key=lambda e: e.time_range.start):
        current += event.cpu_memory_usage
        peak = max(peak, current)
    return peak / 2**20


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    header = f"{'cell':5} {'B':>3} {'H':>4} | {'fwd torch':>9} {'fwd fused':>9} {'ratio':>6} | {'train torch':>11} {'train fused':>11} {'ratio':>6} | {'peak MB t/f':>12}"
    print(f"threads={args.threads}, T=100, input=hidden, times in ms (medians of {args.repeats} interleaved runs)")
    print(header)
    print("-" * len(header))
    for cell, batch, hidden, seq_len in CASES:
        fused_cls, torch_cls = LAYERS[cell]
        reference = torch_cls(hidden, hidden)
        fused = fused_cls(hidden, hidden, backend="cpu")
        fused.load_state_dict(reference.state_dict())
        x = torch.randn(seq_len, batch, hidden)
        x_train = x.clone().requires_grad_()

        def infer(layer):
            with torch.no_grad():
                layer(x)

        def train(layer):
            layer(x_train)[0].sum().backward()

        fwd_fused, fwd_torch = interleaved_medians([lambda: infer(fused), lambda: infer(reference)], args.repeats)
        train_fused, train_torch = interleaved_medians(
            [lambda: train(fused), lambda: train(reference)], max(5, args.repeats // 2)
        )
        mem_torch = peak_training_memory_mb(reference, x_train)
        mem_fused = peak_training_memory_mb(fused, x_train)
        print(
            f"{cell:5} {batch:>3} {hidden:>4} | {fwd_torch:9.2f} {fwd_fused:9.2f} {fwd_torch / fwd_fused:6.2f} | "
            f"{train_torch:11.2f} {train_fused:11.2f} {train_torch / train_fused:6.2f} | "
            f"{mem_torch:5.1f}/{mem_fused:<5.1f}"
        )


if __name__ == "__main__":
    main()
