"""The implementations measured against torch.nn: fused_rnn's backends, found through
:func:`fused_rnn.backends.available`, for the layer-normalised cells the per-step loop under
torch.compile (:data:`COMPILED_LOOP`), and any extra one a caller passes in (the tests use a
deliberately wrong one to check that the correctness gate catches it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import copy

import torch
from torch import nn

from fused_rnn import backends, layernorm_functional

from .cases import LAYERNORM_CELLS, Case
from .layers import fused_layer

#: The name torch.nn's own layers go by where they are listed beside the candidates.
TORCH_NN = "torch.nn"

#: Backends measured unless named: every concrete one but the slow reference loops.
_NOT_BY_DEFAULT = ("auto", "reference")


def _always(case: Case, device: torch.device) -> bool:
    return True


@dataclass(frozen=True)
class Candidate:
    """An implementation of the layers: ``name`` fills the CSV's ``backend`` column, ``build``
    makes the layer of a case with the weights of the torch.nn layer given to it (same device,
    dtype and state_dict; called like torch.nn's layers), ``supports`` says whether it runs a
    case on a device (a case it does not support is skipped, not failed)."""

    name: str
    build: Callable[[Case, nn.Module], nn.Module]
    supports: Callable[[Case, torch.device], bool] = _always


def _available(name: str, cell: str, device: torch.device) -> bool:
    if cell in LAYERNORM_CELLS:
        return layernorm_functional.available(name, device)
    return backends.available(name, cell, device)


def fused_backend(name: str) -> Candidate:
    """fused_rnn's drop-in layers with ``backend=name``."""

    def build(case: Case, reference: nn.Module) -> nn.Module:
        return fused_layer(case, reference, name)

    def supports(case: Case, device: torch.device) -> bool:
        return _available(name, case.cell, device)

    return Candidate(name, build, supports)


def _compiled_loop(case: Case, reference: nn.Module) -> nn.Module:
    # the baseline's own per-step loop (a copy, so that the baseline itself stays eager)
    return torch.compile(copy.deepcopy(reference))


#: The per-step loop of the layer-normalised cells (the baseline) under torch.compile (Inductor):
#: what a user gets from the loop without fused kernels. Measured by default with those cells.
COMPILED_LOOP = Candidate("compiled-loop", _compiled_loop,
                          lambda case, device: case.cell in LAYERNORM_CELLS)


def default_backend_names(device: torch.device, cells: Sequence[str]) -> list[str]:
    """fused_rnn's backends that run at least one of ``cells`` on ``device``.

    Triton on the CPU is left out unless asked for: there it is the Triton interpreter, a
    debugging tool many thousand times slower than a kernel, not something to time.
    """
    names = []
    for name in backends.BACKENDS:
        if name in _NOT_BY_DEFAULT or (name == "triton" and device.type == "cpu"):
            continue
        if any(_available(name, cell, device) for cell in cells):
            names.append(name)
    return names


def select(
    names: Sequence[str] | None,
    device: torch.device,
    cells: Sequence[str],
    extra: Mapping[str, Candidate] | None = None,
) -> list[Candidate]:
    """The candidates to measure: the named ones (fused_rnn backends or keys of ``extra``), or by
    default every available fused_rnn backend plus every extra candidate."""
    extra = dict(extra or {})
    if any(cell in LAYERNORM_CELLS for cell in cells):
        extra = {COMPILED_LOOP.name: COMPILED_LOOP, **extra}
    if names is None:
        return [fused_backend(n) for n in default_backend_names(device, cells)] + list(extra.values())
    chosen = []
    for name in names:
        if name in extra:
            chosen.append(extra[name])
        elif name in backends.BACKENDS:
            chosen.append(fused_backend(name))
        else:
            known = [b for b in backends.BACKENDS if b != "auto"] + list(extra)
            raise ValueError(f"unknown backend {name!r}; choose from {', '.join(known)}")
    return chosen
