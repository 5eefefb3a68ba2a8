"""Where a result was measured: device name, library versions, source commit. Recorded in
every CSV row, so results from different machines and commits can share one file."""

from __future__ import annotations

import functools
import os
import subprocess

import torch

from .. import dispatch

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{dispatch.cpu_model()} (CPU)"


def cudnn_version() -> str:
    try:
        version = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    except RuntimeError:
        version = None
    return str(version) if version else ""


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", "-C", _REPO, *args], capture_output=True, text=True, timeout=10, check=True
    ).stdout.strip()


@functools.cache
def git_commit() -> str:
    """The checkout's commit, ``+dirty`` when tracked files differ from it; ``unknown`` when
    fused_rnn is not running from a git checkout (an installed wheel). The benchmark's own
    outputs (bench/results: the CSV and plots a previous run appended to) do not count: they
    leave the measured code as it was."""
    if not os.path.isfile(os.path.join(_REPO, "csrc", "ops.cpp")):
        return "unknown"
    try:
        commit = _git("rev-parse", "--short=12", "HEAD")
        dirty = _git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!bench/results")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{commit}+dirty" if dirty else commit


def describe(device: torch.device) -> dict[str, str]:
    """The environment columns of a CSV row."""
    return {
        "device": device.type,
        "device_name": device_name(device),
        "torch_version": torch.__version__,
        "cuda_version": torch.version.cuda or "",
        "cudnn_version": cudnn_version(),
        "git_commit": git_commit(),
    }
