"""What is measured: the layer configurations of every benchmark grid.

Shared by the CLI (``python -m fused_rnn.bench``) and the pytest-benchmark suite in ``bench/``,
so that both measure the same shapes. A :class:`Case` is one layer configuration (cell, mode,
dtype and shape); every fused_rnn backend is measured on it against torch.nn.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Iterable, Sequence

import torch

#: Names accepted on the command line -> fused_rnn's cell names (``rnn`` is the tanh Elman RNN).
CELL_ALIASES = {
    "lstm": "lstm",
    "gru": "gru",
    "rnn": "rnn_tanh",
    "rnn_tanh": "rnn_tanh",
    "rnn_relu": "rnn_relu",
    "ln_lstm": "ln_lstm",
    "ln_gru": "ln_gru",
}
DEFAULT_CELLS = ("lstm", "gru", "rnn_tanh")

#: The layer-normalised cells (fused_rnn.LayerNormLSTM / LayerNormGRU), measured when named:
#: against the per-step PyTorch loop users write for them (bench/layernorm_loop.py), as the
#: other cells are against torch.nn.
LAYERNORM_CELLS = ("ln_lstm", "ln_gru")

#: ``fwd``: inference (eval mode, under torch.no_grad). ``fwd+bwd``: one training step, the
#: forward and the backward of a scalar loss of the output w.r.t. the input and every parameter.
MODES = ("fwd", "fwd+bwd")

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

GRIDS = ("full", "quick")


@dataclass(frozen=True)
class Shape:
    batch: int
    seq_len: int
    input_size: int
    hidden_size: int
    num_layers: int = 1
    bidirectional: bool = False


@dataclass(frozen=True)
class Case:
    """One layer configuration. The input is time-major ``[seq_len, batch, input_size]``
    (``batch_first=False``, the torch.nn default); the initial state is zeros."""

    cell: str
    mode: str
    dtype: str
    batch: int
    seq_len: int
    input_size: int
    hidden_size: int
    num_layers: int = 1
    bidirectional: bool = False

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def id(self) -> str:
        """A short readable name, e.g. ``lstm-fwd+bwd-bf16-B64-T512-I512-H512-L3-bi``."""
        name = (
            f"{self.cell}-{self.mode}-{self.dtype}-B{self.batch}-T{self.seq_len}"
            f"-I{self.input_size}-H{self.hidden_size}"
        )
        if self.num_layers > 1:
            name += f"-L{self.num_layers}"
        if self.bidirectional:
            name += "-bi"
        return name


def _square(batches, hiddens, seq_lens, **extra) -> list[Shape]:
    """One-layer shapes with input_size = hidden_size, for every combination."""
    return [
        Shape(batch=b, seq_len=t, input_size=h, hidden_size=h, **extra)
        for h, t, b in itertools.product(hiddens, seq_lens, batches)
    ]


def grid_shapes(device_type: str, grid: str) -> list[Shape]:
    """The shapes of a named grid on a device type (``"cuda"`` or ``"cpu"``).

    GPU full: batch {1, 8, 16, 64, 256} x hidden {256, 512, 768, 1024} x seq_len {128, 1024},
    one layer, plus a 3-layer and a bidirectional row at B=64, H=512, T=512.
    CPU full: batch {1, 32} x hidden {128, 256}, T=100, one layer, plus a 2-layer
    bidirectional row, plus one step of one sequence (T=1, B=1: streaming inference, RL) at
    hidden {128, 256}, where the cost of a call is mostly what surrounds the kernels. The
    quick grids exercise the same code paths in seconds (the CPU one
    is the CI smoke test).
    """
    if grid not in GRIDS:
        raise ValueError(f"grid must be one of {GRIDS}, got {grid!r}")
    if device_type == "cuda":
        if grid == "quick":
            return _square([1, 64], [256, 1024], [128]) + [
                Shape(64, 128, 256, 256, num_layers=2, bidirectional=True)
            ]
        return _square([1, 8, 16, 64, 256], [256, 512, 768, 1024], [128, 1024]) + [
            Shape(64, 512, 512, 512, num_layers=3),
            Shape(64, 512, 512, 512, bidirectional=True),
        ]
    if grid == "quick":
        return _square([1, 16], [64], [32]) + [
            Shape(4, 16, 32, 32, num_layers=2, bidirectional=True)
        ]
    return (
        _square([1, 32], [128, 256], [100])
        + [Shape(32, 100, 128, 128, num_layers=2, bidirectional=True)]
        + _square([1], [128, 256], [1])
    )


def custom_shapes(
    batches: Sequence[int],
    hiddens: Sequence[int],
    seq_lens: Sequence[int],
    *,
    input_size: int | None = None,
    num_layers: int = 1,
    bidirectional: bool = False,
) -> list[Shape]:
    """Every combination of the given sizes (input_size = hidden_size unless given)."""
    return [
        Shape(b, t, input_size or h, h, num_layers=num_layers, bidirectional=bidirectional)
        for h, t, b in itertools.product(hiddens, seq_lens, batches)
    ]


def make_cases(
    shapes: Iterable[Shape], cells: Sequence[str], dtypes: Sequence[str], modes: Sequence[str]
) -> list[Case]:
    """Every (cell, mode, dtype, shape), grouped by cell, then mode, then dtype."""
    shapes = list(shapes)
    return [
        Case(cell, mode, dtype, **vars(shape))
        for cell, mode, dtype, shape in itertools.product(cells, modes, dtypes, shapes)
    ]


def default_dtype(device_type: str) -> str:
    """bf16 on a GPU (what RNNs are trained in there), fp32 on the CPU."""
    return "bf16" if device_type == "cuda" else "fp32"
