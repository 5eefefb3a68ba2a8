"""The calls that are timed and measured, one per mode; the same for fused_rnn and torch.nn.

``fwd``: the layer in eval mode under ``torch.no_grad()`` (eval mode matters: cuDNN keeps a
reserve space for the backward whenever a torch.nn RNN is in training mode, even without grad).

``fwd+bwd``: one training step of the layer: forward in training mode, then
``torch.autograd.grad`` of ``output.sum()`` w.r.t. the input and every parameter. The input
requires grad, as for a layer inside a network; ``autograd.grad`` returns the gradients instead
of accumulating into ``.grad``, so no extra additions are timed.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn


def forward_step(layer: nn.Module, x: torch.Tensor) -> Callable[[], object]:
    layer.eval()
    x = x.detach()

    def step():
        with torch.no_grad():
            return layer(x)

    return step


def training_step(layer: nn.Module, x: torch.Tensor) -> Callable[[], object]:
    layer.train()
    x = x.detach().requires_grad_(True)
    wrt = [x, *layer.parameters()]

    def step():
        output, _ = layer(x)
        return torch.autograd.grad(output.sum(), wrt)

    return step


def make_step(mode: str, layer: nn.Module, x: torch.Tensor) -> Callable[[], object]:
    if mode == "fwd":
        return forward_step(layer, x)
    if mode == "fwd+bwd":
        return training_step(layer, x)
    raise ValueError(f"unknown mode {mode!r}")
