"""Builds the layers and inputs of a case: the torch.nn layer (for the layer-normalised cells, the
per-step PyTorch loop), fused_rnn's drop-in with the same weights, and the input tensor."""

from __future__ import annotations

import torch
from torch import nn

import fused_rnn

from .cases import Case
from .layernorm_loop import PerStepLayerNormGRU, PerStepLayerNormLSTM

#: fused_rnn cell -> (baseline class: torch.nn's, or the per-step loop of the layer-normalised
#: cells; fused_rnn class; extra constructor arguments)
LAYER_CLASSES = {
    "lstm": (nn.LSTM, fused_rnn.LSTM, {}),
    "gru": (nn.GRU, fused_rnn.GRU, {}),
    "rnn_tanh": (nn.RNN, fused_rnn.RNN, {"nonlinearity": "tanh"}),
    "rnn_relu": (nn.RNN, fused_rnn.RNN, {"nonlinearity": "relu"}),
    "ln_lstm": (PerStepLayerNormLSTM, fused_rnn.LayerNormLSTM, {}),
    "ln_gru": (PerStepLayerNormGRU, fused_rnn.LayerNormGRU, {}),
}

#: Seeds: weights and inputs are the same on every run, for every backend.
WEIGHT_SEED = 0
INPUT_SEED = 1


def _constructor_args(case: Case) -> tuple[tuple, dict]:
    _, _, extra = LAYER_CLASSES[case.cell]
    args = (case.input_size, case.hidden_size, case.num_layers)
    return args, {"bidirectional": case.bidirectional, **extra}


def torch_layer(case: Case, device: torch.device) -> nn.Module:
    """The torch.nn layer of the case (torch.nn's own initialisation, fixed seed)."""
    torch_cls, _, _ = LAYER_CLASSES[case.cell]
    args, kwargs = _constructor_args(case)
    torch.manual_seed(WEIGHT_SEED)
    return torch_cls(*args, **kwargs).to(device=device, dtype=case.torch_dtype)


def fused_layer(case: Case, reference: nn.Module, backend: str) -> nn.Module:
    """fused_rnn's drop-in for the case on ``backend``, with the weights of ``reference``."""
    _, fused_cls, _ = LAYER_CLASSES[case.cell]
    args, kwargs = _constructor_args(case)
    parameter = next(reference.parameters())
    layer = fused_cls(*args, backend=backend, device=parameter.device, dtype=parameter.dtype, **kwargs)
    layer.load_state_dict(reference.state_dict())
    return layer


def make_input(case: Case, device: torch.device) -> torch.Tensor:
    """The input ``[seq_len, batch, input_size]``: standard normal from a fixed seed, drawn in
    fp32 on the device (fast for the large GPU shapes), then rounded to the case's dtype."""
    generator = torch.Generator(device=device).manual_seed(INPUT_SEED)
    shape = (case.seq_len, case.batch, case.input_size)
    x = torch.randn(shape, generator=generator, device=device, dtype=torch.float32)
    return x.to(case.torch_dtype)
