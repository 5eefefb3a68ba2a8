"""One case of the self-test: a fused_rnn layer against torch.nn with the same weights, input,
initial states and output gradients; every output and every gradient judged by the rule of
:mod:`fused_rnn.testing`.

With lengths, fused_rnn gets the padded batch and ``lengths=``; torch.nn gets the same batch as
a PackedSequence and its output is padded back (both leave zeros in the padding), so the two
are compared element for element, the gradient of the padded input included.
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from .. import backends, testing
from .cases import B, DTYPES, HIDDEN, INPUT, LENGTHS, PROJ, T, Case

#: rtol against torch.nn in the same dtype (testing.same_dtype_bound).
SAME_DTYPE_RTOL = {"fp32": 1e-5, "fp64": 1e-10}


@dataclass(frozen=True)
class TensorCheck:
    name: str  # "output", "h_n", "grad input", "grad weight_hh_l0", ...
    error: float
    bound: float
    #: torch.nn's own error in fp16/bf16 against the high-precision reference (else None)
    torch_error: float | None = None

    @property
    def ok(self) -> bool:
        return self.error <= self.bound  # False for a NaN error

    def describe(self) -> str:
        text = f"{self.name}: error {self.error:.3g} > bound {self.bound:.3g}"
        if self.torch_error is not None:
            text += f" (torch.nn's own error in this dtype: {self.torch_error:.3g})"
        return text


@dataclass
class CaseResult:
    case: Case
    status: str  # "passed", "FAILED" or "skipped" (torch.nn itself does not run the case)
    checks: list[TensorCheck] = field(default_factory=list)
    note: str = ""
    seconds: float = 0.0
    #: for backend "auto": the backend it took (backends.explain)
    ran_on: str = ""

    @property
    def backend_label(self) -> str:
        """The case's backend, and for "auto" what it took: ``auto(torch)``."""
        return f"{self.case.backend}({self.ran_on})" if self.ran_on else self.case.backend

    @property
    def worst_ratio(self) -> float:
        """The largest error / bound of the case (NaN if an error is NaN; every bound is > 0)."""
        ratios = [c.error / c.bound for c in self.checks]
        return math.nan if any(map(math.isnan, ratios)) else max(ratios, default=0.0)

    def failures(self) -> list[str]:
        return [self.note] if self.note else [c.describe() for c in self.checks if not c.ok]


class PackedTorchLayer(nn.Module):
    """torch.nn's layer as fused_rnn's is called with lengths: padded input in, padded output
    out, a PackedSequence in between."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer

    def forward(self, x, hx=None, lengths=None):
        packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
        output, states = self.layer(packed, hx)
        return pad_packed_sequence(output, total_length=x.shape[0])[0], states


def _inputs(case: Case, dtype: torch.dtype, device: torch.device):
    """x [T, B, INPUT] and the initial states (h0, or (h0, c0)), rounded to ``dtype``."""
    directions = 2 if case.layout.bidirectional else 1
    states = case.layout.num_layers * directions
    x = torch.randn(T, B, INPUT, dtype=torch.float64).to(device, dtype)
    h0 = torch.randn(states, B, PROJ if case.proj else HIDDEN, dtype=torch.float64).to(device, dtype)
    if case.base_cell != "lstm":
        return x, h0
    return x, (h0, torch.randn(states, B, HIDDEN, dtype=torch.float64).to(device, dtype))


def _leaves(x: Tensor, hx, device=None, dtype=None):
    """Fresh leaf copies of x and hx (on ``device`` in ``dtype`` if given) that require grad."""

    def leaf(t):
        return t.detach().to(device or t.device, dtype or t.dtype).clone().requires_grad_()

    return leaf(x), (tuple(leaf(h) for h in hx) if isinstance(hx, tuple) else leaf(hx))


def _run(module, x, hx, lengths, seeds=None):
    """Outputs then gradients (testing.outputs_and_grads) of ``module`` on fresh leaf copies
    of x and hx, and the output weights used."""
    x, hx = _leaves(x, hx)
    kwargs = {} if lengths is None else {"lengths": lengths}
    outs, grads, seeds = testing.outputs_and_grads(module, x, hx, seed_grads=seeds, **kwargs)
    return outs + grads, seeds


def _as_called_with_lengths(torch_layer: nn.Module, lengths) -> nn.Module:
    return torch_layer if lengths is None else PackedTorchLayer(torch_layer)


def _names(case: Case, fused: nn.Module) -> list[str]:
    states = ["h_n", "c_n"] if case.base_cell == "lstm" else ["h_n"]
    initial = ["h0", "c0"] if case.base_cell == "lstm" else ["h0"]
    return (["output", *states, "grad input"] + [f"grad {n}" for n in initial]
            + [f"grad {name}" for name, _ in fused.named_parameters()])


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}".splitlines()[0][:300]


@dataclass
class TorchResults:
    """What torch.nn computes for a case, the same for every backend compared with it."""

    #: outputs then gradients in the case's dtype (None: torch.nn does not run the case)
    expected: list[Tensor | None] | None
    #: the same in fp64 on the CPU from the same rounded values (fp16/bf16 cases only)
    exact: list[Tensor | None] | None
    #: the output weights of the differentiated function, rounded to the case's dtype
    seeds: list[Tensor] | None
    #: why torch.nn does not run the case
    error: str = ""


def _torch_results(case: Case, torch_layer: nn.Module, x, hx, lengths) -> TorchResults:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.nn's notes on its own kernel choice (oneDNN)
        try:
            expected, seeds = _run(_as_called_with_lengths(torch_layer, lengths), x, hx, lengths)
        except Exception as error:  # noqa: BLE001 - reported as the case's outcome
            return TorchResults(None, None, None, _describe(error))
        # Every run differentiates along the same output weights, rounded to the case's dtype
        # (torch.nn's run above rounded them so too).
        seeds = [s.to(DTYPES[case.dtype]).double() for s in seeds]
        if case.dtype in SAME_DTYPE_RTOL:
            return TorchResults(expected, None, seeds)
        exact_layer = copy.deepcopy(torch_layer).to("cpu", torch.float64)
        exact_x, exact_hx = _leaves(x, hx, "cpu", torch.float64)
        exact, _ = _run(_as_called_with_lengths(exact_layer, lengths), exact_x, exact_hx, lengths, seeds)
    return TorchResults(expected, exact, seeds)


def run_case(case: Case, torch_cache: dict | None = None) -> CaseResult:
    """Runs ``case`` and judges every output and gradient (the caller's random state is left
    as it was). ``torch_cache``: torch.nn's results by the cases' :attr:`Case.torch_key`, kept
    for the next backend (torch.nn's fp16/bf16 kernels are slow on CPUs without native bf16)."""
    start = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(case.seed)
        result = _run_case(case, {} if torch_cache is None else torch_cache)
    result.seconds = time.perf_counter() - start
    return result


def _run_case(case: Case, torch_cache: dict) -> CaseResult:
    dtype, device = DTYPES[case.dtype], torch.device(case.device)
    options = dict(num_layers=case.layout.num_layers, bidirectional=case.layout.bidirectional)
    if case.proj:
        options["proj_size"] = PROJ
    fused, torch_layer = testing.make_pair(case.base_cell, INPUT, HIDDEN, dtype=dtype, device=device,
                                           backend=case.backend, **options)
    x, hx = _inputs(case, dtype, device)
    lengths = torch.tensor(LENGTHS) if case.layout.lengths else None
    names = _names(case, fused)
    ran_on = backends.explain(fused, x, hx, lengths).backend if case.backend == "auto" else ""
    result = _compare(case, fused, torch_layer, x, hx, lengths, names, torch_cache)
    result.ran_on = ran_on
    return result


def _compare(case: Case, fused, torch_layer, x, hx, lengths, names, torch_cache: dict) -> CaseResult:
    if case.torch_key not in torch_cache:
        torch_cache[case.torch_key] = _torch_results(case, torch_layer, x, hx, lengths)
    reference = torch_cache[case.torch_key]
    if reference.expected is None:
        return CaseResult(case, "skipped", note=f"torch.nn does not run it: {reference.error}")
    try:
        actual, _ = _run(fused, x, hx, lengths, reference.seeds)
    except Exception as error:  # noqa: BLE001 - reported as the case's outcome
        return CaseResult(case, "FAILED", note=f"fused_rnn raised {_describe(error)}")
    for name, a, e in zip(names, actual, reference.expected, strict=True):
        if a is None:
            return CaseResult(case, "FAILED", note=f"{name}: no gradient")
        if a.shape != e.shape:
            return CaseResult(case, "FAILED",
                              note=f"{name}: shape {tuple(a.shape)}, torch.nn's {tuple(e.shape)}")

    if reference.exact is None:
        rtol = SAME_DTYPE_RTOL[case.dtype]
        checks = [TensorCheck(n, testing.max_abs_error(a, e), testing.same_dtype_bound(e, rtol))
                  for n, a, e in zip(names, actual, reference.expected)]
    else:
        checks = []
        for n, a, e, exact in zip(names, actual, reference.expected, reference.exact):
            torch_error = testing.max_abs_error(e, exact)
            checks.append(TensorCheck(n, testing.max_abs_error(a, exact),
                                      testing.low_precision_bound(torch_error, exact), torch_error))
    status = "passed" if all(c.ok for c in checks) else "FAILED"
    return CaseResult(case, status, checks)
