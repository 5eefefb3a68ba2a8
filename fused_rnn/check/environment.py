"""What the self-test reports before its results, in the spirit of
``python -m torch.utils.collect_env``: versions, the build of ``fused_rnn._C`` and the devices."""

from __future__ import annotations

import importlib.metadata
import os
import platform

import torch

from .. import __version__, _ops, dispatch
from ..bench import environment as bench_environment


def _distribution_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def versions() -> dict[str, str]:
    triton = _distribution_version("triton")
    if triton and os.environ.get("TRITON_INTERPRET") == "1":
        triton += " (interpreter: TRITON_INTERPRET=1)"
    return {
        "fused_rnn": f"{__version__} (commit {bench_environment.git_commit()})",
        "Python": platform.python_version(),
        "torch": torch.__version__,
        "CUDA": torch.version.cuda or "none (a CPU-only build of torch)",
        "cuDNN": bench_environment.cudnn_version() or "none",
        "Triton": triton or "not installed",
    }


def build() -> dict[str, str]:
    """How ``fused_rnn._C`` was built."""
    C = _ops._C
    arch_list = getattr(C, "cuda_arch_list", "") or "unknown"
    return {
        "extension": os.path.basename(C.__file__),
        "CPU kernels": f"yes, {C.cpu_isa()} instructions",
        "CUDA kernels": f"yes, for {arch_list}" if _ops.WITH_CUDA else
        "no (built with FUSED_RNN_CUDA=0, or without a CUDA toolkit or a CUDA build of torch)",
    }


def device_description(device: str) -> str:
    if device == "cpu":
        return f"{dispatch.cpu_model()}, {torch.get_num_threads()} threads"
    index = torch.device(device).index
    props = torch.cuda.get_device_properties(index)
    return (f"{props.name}, compute capability {props.major}.{props.minor}, "
            f"{props.multi_processor_count} SMs, {props.total_memory / 2**30:.0f} GiB")
