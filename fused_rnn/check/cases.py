"""What the self-test runs: one :class:`Case` per device, backend, cell, dtype and layer layout
(uni- or bidirectional, with or without lengths, one or two layers), at one small shape."""

from __future__ import annotations

import itertools
import zlib
from dataclasses import dataclass
from typing import Iterable, Sequence

import torch

from .. import backends

#: Cells as the self-test names them: fused_rnn's four, and the LSTM with a projection.
CELLS = (*backends.CELLS, "lstm+proj")

DTYPES = {"fp32": torch.float32, "fp64": torch.float64, "bf16": torch.bfloat16, "fp16": torch.float16}

#: Dtypes checked by default. On a GPU all four. On the CPU fp32, fp64 (what gradcheck runs in)
#: and bf16, the dtype of CPU autocast, which sends fused_rnn's layers to the CPU kernels'
#: bf16 path; fp16 is not the CPU's low-precision dtype (torch.nn runs it there, slowly, and
#: autocast never picks it), so it is checked on the CPU only when asked for.
DEFAULT_DTYPES = {"cpu": ("fp32", "fp64", "bf16"), "cuda": ("fp32", "bf16", "fp16", "fp64")}

#: The shape: time steps, batch, input size (!= hidden size), hidden size, projection size.
T, B, INPUT, HIDDEN, PROJ = 7, 4, 10, 12, 5
#: Lengths for the cases with lengths: unsorted, one full and one single step.
LENGTHS = (7, 2, 5, 1)


@dataclass(frozen=True)
class Layout:
    bidirectional: bool
    lengths: bool
    num_layers: int

    @property
    def label(self) -> str:
        return f"{'bi' if self.bidirectional else 'uni'} {'lengths' if self.lengths else 'full'} L{self.num_layers}"


LAYOUTS = tuple(Layout(bi, lengths, layers)
                for bi, lengths, layers in itertools.product((False, True), (False, True), (1, 2)))
#: --quick: the simplest and the fullest layout.
QUICK_LAYOUTS = (Layout(False, False, 1), Layout(True, True, 2))


@dataclass(frozen=True)
class Case:
    device: str  # "cpu", "cuda:0", ...
    backend: str
    cell: str  # one of CELLS
    dtype: str  # a key of DTYPES
    layout: Layout

    @property
    def id(self) -> str:
        return f"{self.device} {self.backend} {self.cell} {self.dtype} {self.layout.label}"

    @property
    def seed(self) -> int:
        """A fixed seed per cell, dtype and layout: every backend and device gets the same
        weights and input, and a failure reproduces when its case runs alone."""
        return zlib.crc32(f"{self.cell} {self.dtype} {self.layout.label}".encode())

    @property
    def torch_key(self) -> tuple:
        """What torch.nn's results depend on: the same for every backend."""
        return (self.device, self.cell, self.dtype, self.layout)

    @property
    def base_cell(self) -> str:
        return self.cell.split("+")[0]

    @property
    def proj(self) -> bool:
        return self.cell.endswith("+proj")


def present_devices() -> list[str]:
    """The CPU and every CUDA device."""
    return ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]


def unavailable_reason(backend: str, cell: str, device: str) -> str | None:
    """Why ``backend`` cannot run the self-test's ``cell`` on ``device`` (None when it can)."""
    try:  # choose() says why in its error
        backends.choose(backend, torch.device(device), cell=cell.split("+")[0], proj=cell.endswith("+proj"))
    except RuntimeError as error:
        return str(error).split(": ", 1)[-1]
    return None


def make_cases(
    devices: Iterable[str],
    backend_names: Sequence[str],
    cells: Sequence[str],
    dtypes: Sequence[str] | None,
    *,
    quick: bool = False,
) -> list[Case]:
    """Every case the backends available on each device can run. ``dtypes`` None: each
    device's defaults."""
    layouts = QUICK_LAYOUTS if quick else LAYOUTS
    cases = []
    for device in devices:
        device_dtypes = dtypes or DEFAULT_DTYPES[torch.device(device).type]
        for backend, cell in itertools.product(backend_names, cells):
            if unavailable_reason(backend, cell, device) is not None:
                continue
            cases += [Case(device, backend, cell, dtype, layout)
                      for dtype, layout in itertools.product(device_dtypes, layouts)]
    return cases
