"""fp32 means fp32: TF32 off for cuDNN and for matmuls while the benchmark runs.

torch lets cuDNN's RNNs use TF32 tensor cores by default (``torch.backends.cudnn.allow_tf32``)
while matmuls stay in full fp32 (``torch.backends.cuda.matmul.allow_tf32``). fused_rnn's input
projection is a matmul, so an fp32 row would compare full fp32 against TF32. With both off,
fp32 rows compare like with like, and the fp32 reference of the correctness gate is exact fp32.
"""

from __future__ import annotations

import contextlib

import torch


@contextlib.contextmanager
def strict_fp32():
    cudnn, matmul = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = cudnn
        torch.backends.cuda.matmul.allow_tf32 = matmul
