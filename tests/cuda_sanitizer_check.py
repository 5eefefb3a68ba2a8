"""Runs every CUDA kernel of fused_rnn once on small shapes, for compute-sanitizer.

Run on a GPU machine from the repository root (after building the extension in place):

    compute-sanitizer --tool memcheck  python tests/cuda_sanitizer_check.py
    compute-sanitizer --tool racecheck python tests/cuda_sanitizer_check.py --quick
    compute-sanitizer --tool synccheck python tests/cuda_sanitizer_check.py --quick
    compute-sanitizer --tool initcheck python tests/cuda_sanitizer_check.py --quick

Every cell, dtype, direction and algorithm (persistent and fallback, forced with
FUSED_RNN_CUDA_ALGO), with lengths (including an empty and a full sequence), odd sizes, several
persistent blocks, batch tiles and K chunks, forward and backward. The script itself checks that
every output is finite and exits non-zero otherwise; the sanitizer reports the rest (exit code
and "ERROR SUMMARY"). --quick runs fewer shapes (racecheck is slow).
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import test_cuda_ops as t  # noqa: E402  (the tests' input and op helpers)


def run_case(cell, dtype, algo, reverse, T, B, H, lengths, proj=None):
    os.environ["FUSED_RNN_CUDA_ALGO"] = algo
    inp = t.to_device(t.make_inputs(cell, T, B, H, dtype=dtype, lengths=lengths, proj=proj))
    grads = t.make_output_grads(cell, T, B, H, proj or H, dtype=dtype, device="cuda")
    fwd = t.op_forward(cell, inp, reverse)
    bwd = t.op_backward(cell, inp, fwd, grads, reverse)
    torch.cuda.synchronize()
    bad = [k for k, v in list(fwd.items()) + list(bwd.items()) if not torch.isfinite(v).all()]
    return bad


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer shapes (for racecheck)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("needs a CUDA GPU")

    shapes = [(3, 5, 24), (2, 1, 3)] if args.quick else [(3, 5, 24), (2, 1, 3), (4, 70, 40),
                                                         (3, 9, 300)]
    dtypes = [torch.float32, torch.bfloat16] if args.quick else [torch.float32, torch.bfloat16,
                                                                 torch.float16]
    failures = []
    runs = 0
    for cell, dtype, algo, reverse, (T, B, H) in itertools.product(
        t.CELLS, dtypes, ["persistent", "fallback"], [False, True], shapes
    ):
        bad = run_case(cell, dtype, algo, reverse, T, B, H, lengths="random")
        runs += 1
        if bad:
            failures.append((cell, dtype, algo, reverse, (T, B, H), bad))
    # The per-step path's own kernels: the LSTM projection and float64.
    for reverse in (False, True):
        for dtype in (torch.float32, torch.bfloat16):
            bad = run_case("lstm", dtype, "auto", reverse, 3, 5, 12, "random", proj=5)
            runs += 1
            if bad:
                failures.append(("lstm+proj", dtype, "auto", reverse, (3, 5, 12), bad))
        bad = run_case("gru", torch.float64, "auto", reverse, 3, 5, 12, "random")
        runs += 1
        if bad:
            failures.append(("gru", torch.float64, "auto", reverse, (3, 5, 12), bad))

    for failure in failures:
        print("NON-FINITE OUTPUT:", failure)
    print(f"{runs} runs, {len(failures)} with non-finite outputs")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
