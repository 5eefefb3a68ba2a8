"""Triton implementations of the fused_rnn recurrence ops (installed as fused_rnn.triton_kernels).

Importing this package registers ``fused_rnn::{lstm,gru,rnn_tanh,rnn_relu}_{forward,backward}_triton``
(same schemas, workspaces and autograd as the C++ ops of csrc/ops.cpp) and the layer-normalised
cells' ``fused_rnn::layernorm_{lstm,gru}_{forward,backward}_triton`` (csrc/layernorm_ops.cpp;
any H, fp32/fp16/bf16/fp64, lengths, both directions, zoneout). What the plain ones support:

* cells: LSTM (without projection: ``w_hr`` raises NotImplementedError), GRU, RNN tanh/relu;
* dtypes: float32 (TF32 in the recurrent product only when
  ``torch.backends.cuda.matmul.allow_tf32``), float16, bfloat16 (fp32 gate maths and
  accumulation), float64;
* any T, B and H (H up to 2048 and beyond: weight slices that do not fit on chip are streamed
  from L2), variable lengths, both directions;
* devices: CUDA GPUs; CPU tensors only under the Triton interpreter (``TRITON_INTERPRET=1``,
  set before triton is imported), which is how CPU-only CI runs the same kernels.

See README.md beside this file for the kernel design.
"""

from __future__ import annotations

import importlib.util
import os

import torch

__all__ = ["is_available", "supports", "CELLS"]

CELLS = ("lstm", "gru", "rnn_tanh", "rnn_relu")

_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)

_TRITON_FOUND = importlib.util.find_spec("triton") is not None

if _TRITON_FOUND:
    from . import layernorm_ops, ops  # noqa: F401  (register the ops)


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def is_available(device: torch.device | str | None = None) -> bool:
    """Whether the Triton ops are registered and can run on ``device`` (default: the current
    CUDA device, or the CPU under the interpreter)."""
    if not _TRITON_FOUND:
        return False
    if device is None:
        return _interpreting() or torch.cuda.is_available()
    device = torch.device(device)
    if device.type == "cpu":
        return _interpreting()
    return device.type == "cuda" and torch.cuda.is_available() and not _interpreting()


def supports(
    cell: str,
    *,
    proj: bool = False,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> bool:
    """Whether the ``*_triton`` op of ``cell`` (one of CELLS) runs this configuration:
    ``proj`` an LSTM with a projection (never), ``device`` and ``dtype`` of the call."""
    if cell not in CELLS:
        raise ValueError(f"unknown cell {cell!r}, expected one of {CELLS}")
    if proj:
        return False
    if dtype is not None and dtype not in _DTYPES:
        return False
    return is_available(device)
