"""The baseline of the layer-normalised cells: what users write without fused_rnn, a per-step
Python loop over torch ops (the layer-normalised cells of PyTorch's
``benchmarks/fastrnns/custom_lstms.py``, with torch.nn.functional.layer_norm), here with zoneout
and variable lengths as well.

:class:`PerStepLayerNormLSTM` and :class:`PerStepLayerNormGRU` are fused_rnn's
:class:`~fused_rnn.LayerNormLSTM` / :class:`~fused_rnn.LayerNormGRU` (same constructor,
parameters, ``state_dict`` and input forms) with the computation replaced by that loop, written
independently of the fused kernels and of ``fused_rnn/reference.py``: the benchmark's baseline
(eager, and under ``torch.compile``) and the tests' second opinion. The zoneout masks and the
dropout between layers are drawn from torch's generator in the fused layers' order, so that a
seeded call of both gives the same result.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

import fused_rnn

_BASE_NAMES = ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "gamma_ih", "gamma_hh", "gamma_c",
               "beta_c")


def _zoneout(mask: Optional[Tensor], p: float, previous: Tensor, new: Tensor) -> Tensor:
    """Training: the masked units keep their previous value. Eval: the expectation."""
    if mask is not None:
        return torch.where(mask, previous, new)
    return p * previous + (1 - p) * new if p > 0 else new


def lstm_step(x: Tensor, h: Tensor, c: Tensor, p: dict, eps: float, keep_h, keep_c, zoneout: float,
              zoneout_cell: float) -> tuple[Tensor, Tensor]:
    """One step of the layer-normalised LSTM: x [B, I], h and c [B, H]; (h_t, c_t)."""
    G = p["weight_hh"].shape[0]
    H = h.shape[1]
    gates = F.layer_norm(x @ p["weight_ih"].t(), (G,), p["gamma_ih"], p["bias_ih"], eps)
    gates = gates + F.layer_norm(h @ p["weight_hh"].t(), (G,), p["gamma_hh"], None, eps)
    i, f, g, o = gates.chunk(4, 1)
    c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    h_new = torch.sigmoid(o) * torch.tanh(F.layer_norm(c_new, (H,), p["gamma_c"], p["beta_c"], eps))
    return _zoneout(keep_h, zoneout, h, h_new), _zoneout(keep_c, zoneout_cell, c, c_new)


def gru_step(x: Tensor, h: Tensor, p: dict, eps: float, keep_h, zoneout: float) -> Tensor:
    """One step of the layer-normalised GRU: x [B, I], h [B, H]; h_t."""
    G = p["weight_hh"].shape[0]
    gx = F.layer_norm(x @ p["weight_ih"].t(), (G,), p["gamma_ih"], p["bias_ih"], eps)
    gh = F.layer_norm(h @ p["weight_hh"].t(), (G,), p["gamma_hh"], p["bias_hh"], eps)
    x_r, x_z, x_n = gx.chunk(3, 1)
    h_r, h_z, h_n = gh.chunk(3, 1)
    r, z = torch.sigmoid(x_r + h_r), torch.sigmoid(x_z + h_z)
    n = torch.tanh(x_n + r * h_n)
    return _zoneout(keep_h, zoneout, h, (1 - z) * n + z * h)


class _PerStepMixin:
    """Replaces the fused layers' ``_run`` (batched padded input, optional states and lengths
    -> output, h_n, c_n or None) by the loop."""

    def _direction_parameters(self, layer: int, direction: int) -> dict:
        suffix = f"_l{layer}" + ("_reverse" if direction else "")
        return {n: getattr(self, n + suffix, None) for n in _BASE_NAMES}

    def _run(self, x: Tensor, h0: Optional[Tensor], c0: Optional[Tensor],
             lengths: Optional[Tensor]):
        lstm = self.mode == "LSTM"
        x = x.transpose(0, 1) if self.batch_first else x  # [T, B, I]
        T, B = x.shape[:2]
        directions = 2 if self.bidirectional else 1
        shape = (self.num_layers * directions, B, self.hidden_size)
        h0 = x.new_zeros(shape) if h0 is None else h0
        c0 = x.new_zeros(shape) if c0 is None and lstm else c0
        drawing = self.training
        h_n, c_n = [], []
        for layer in range(self.num_layers):
            outputs = []
            for direction in range(directions):
                index = layer * directions + direction
                p = self._direction_parameters(layer, direction)
                mask_shape = (T, B, self.hidden_size)
                keep_h = (torch.rand(mask_shape, device=x.device) < self.zoneout
                          if drawing and self.zoneout > 0 else None)
                keep_c = (torch.rand(mask_shape, device=x.device) < self.zoneout_cell
                          if drawing and lstm and self.zoneout_cell > 0 else None)
                h = h0[index]
                c = c0[index] if lstm else None
                steps = [None] * T
                for t in (range(T - 1, -1, -1) if direction else range(T)):
                    kh = None if keep_h is None else keep_h[t]
                    if lstm:
                        kc = None if keep_c is None else keep_c[t]
                        h_t, c_t = lstm_step(x[t], h, c, p, self.eps, kh, kc, self.zoneout,
                                             self.zoneout_cell)
                    else:
                        h_t = gru_step(x[t], h, p, self.eps, kh, self.zoneout)
                    if lengths is None:
                        h, c, steps[t] = h_t, (c_t if lstm else None), h_t
                        continue
                    # a finished sequence keeps its state and emits zeros
                    running = (t < lengths).unsqueeze(1)
                    steps[t] = torch.where(running, h_t, torch.zeros_like(h_t))
                    h = torch.where(running, h_t, h)
                    c = torch.where(running, c_t, c) if lstm else None
                outputs.append(torch.stack(steps))
                h_n.append(h)
                c_n.append(c)
            x = torch.cat(outputs, 2)
            if self.training and self.dropout > 0 and layer < self.num_layers - 1:
                x = F.dropout(x, self.dropout)
        output = x.transpose(0, 1) if self.batch_first else x
        return output, torch.stack(h_n), torch.stack(c_n) if lstm else None


class PerStepLayerNormLSTM(_PerStepMixin, fused_rnn.LayerNormLSTM):
    """:class:`fused_rnn.LayerNormLSTM` computed by a per-step loop of torch ops."""


class PerStepLayerNormGRU(_PerStepMixin, fused_rnn.LayerNormGRU):
    """:class:`fused_rnn.LayerNormGRU` computed by a per-step loop of torch ops."""
