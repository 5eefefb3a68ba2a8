"""The CPU kernels' float code is compiled for AVX-512, AVX2 and baseline x86-64 and picked at run
time (csrc/cpu/cpu_isa.h); a machine runs only its best variant unless FUSED_RNN_CPU_ISA caps it.
Here every variant the machine can run passes the op tests of the float paths, each in a fresh
process (the choice is made once per process)."""

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_with_isa(isa, *args, timeout=600):
    env = dict(os.environ, FUSED_RNN_CPU_ISA=isa)
    return subprocess.run(
        [sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )


def effective_isa(isa):
    result = run_with_isa(isa, "-c", "import fused_rnn; print(fused_rnn._ops._C.cpu_isa())")
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


@pytest.mark.parametrize("isa", ["avx512", "avx2", "baseline"])
def test_float_kernels_in_every_isa(isa):
    if effective_isa(isa) != isa:
        pytest.skip(f"this CPU cannot run the {isa} variant")
    # fp32 against fp64 (packed GEMM and BLAS, partial panels, chunks of k, every thread count),
    # the projection, and bf16/fp16 (computed in fp32); the input projection's blocked GEMM
    result = run_with_isa(
        isa, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_ops.py", "tests/test_linear.py",
        "-k", "fp32 or thread_counts or projection or low_precision or pooled",
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


def test_bad_isa_name_is_a_clear_error():
    result = run_with_isa("sse9", "-c", "import fused_rnn; fused_rnn._ops._C.cpu_isa()")
    assert result.returncode != 0
    assert "FUSED_RNN_CPU_ISA must be avx512, avx2 or baseline, got 'sse9'" in result.stderr
