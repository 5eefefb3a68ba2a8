"""A model for the deployment tests (TorchScript, torch.export, AOTInductor): every fused_rnn layer
and cell (an LSTM with projections among them), the way speech toolkits deploy recurrent models,
with the encoder's states as explicit inputs and outputs and a padded batch with lengths."""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor, nn

import fused_rnn

I, H, P = 5, 4, 3


class Transducer(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = fused_rnn.LSTM(I, H, num_layers=2, bidirectional=True, proj_size=P)
        self.decoder = fused_rnn.GRU(2 * P, H, batch_first=True, bias=False)
        self.joiner = fused_rnn.RNN(H, H, nonlinearity="relu")
        self.lstm_cell = fused_rnn.LSTMCell(H, H)
        self.gru_cell = fused_rnn.GRUCell(H, H, bias=False)
        self.rnn_cell = fused_rnn.RNNCell(H, H)

    def forward(
        self,
        x: Tensor,  # [T, B, I]
        h0: Optional[Tensor] = None,  # [4, B, P]
        c0: Optional[Tensor] = None,  # [4, B, H]
        lengths: Optional[Tensor] = None,  # [B]
    ):
        hx: Optional[Tuple[Tensor, Tensor]] = None
        if h0 is not None and c0 is not None:
            hx = (h0, c0)
        encoded, (h_n, c_n) = self.encoder(x, hx, lengths)  # [T, B, 2P]
        decoded, g_n = self.decoder(encoded.transpose(0, 1))  # [B, T, H], no initial state
        joined, r_n = self.joiner(decoded.transpose(0, 1), g_n)  # [T, B, H]
        first, _ = self.joiner(decoded[0])  # one sequence, unbatched: [T, H]
        h, c = self.lstm_cell(joined[-1])  # [B, H], no initial state
        h, c = self.lstm_cell(joined[-1], (h, c))
        g = self.gru_cell(h, g_n[0])
        r = self.rnn_cell(g[0])  # unbatched: [H]
        return joined, h_n, c_n, r_n, first, c, g, r


def inputs(steps: int, batch: int, *, seed: int = 0):
    """(x, h0, c0, lengths) for a Transducer; the first sequence is the longest."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(steps, batch, I, generator=generator)
    h0 = torch.randn(4, batch, P, generator=generator)
    c0 = torch.randn(4, batch, H, generator=generator)
    lengths = torch.randint(1, steps + 1, (batch,), generator=generator)
    lengths[0] = steps
    return x, h0, c0, lengths


def assert_same_outputs(got, want, atol=1e-6):
    assert len(got) == len(want)
    for index, (a, b) in enumerate(zip(got, want)):
        torch.testing.assert_close(a, b, atol=atol, rtol=atol, msg=lambda m: f"output {index}: {m}")
