"""Comparison helpers shared by the tests."""

from __future__ import annotations

import os

import pytest
import torch

import fused_rnn
from fused_rnn import testing
from fused_rnn.testing import LAYERS, flatten_states, make_pair, max_abs_error, outputs_and_grads  # noqa: F401

def triton_test_device() -> torch.device:
    """Where the Triton test modules run the kernels: on CPU tensors in the interpreter
    (TRITON_INTERPRET=1, which conftest.py sets before triton is imported), else on the GPU.
    Called at a module's import: skips the whole module without Triton, or with neither."""
    pytest.importorskip("triton")
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        pytest.skip("Triton kernels need a GPU, or TRITON_INTERPRET=1 set before triton is imported",
                    allow_module_level=True)
    return torch.device("cuda")


#: fused_rnn cell class, torch.nn cell class, extra constructor kwargs
CELL_MODULES = {
    "lstm": (fused_rnn.LSTMCell, torch.nn.LSTMCell, {}),
    "gru": (fused_rnn.GRUCell, torch.nn.GRUCell, {}),
    "rnn_tanh": (fused_rnn.RNNCell, torch.nn.RNNCell, {"nonlinearity": "tanh"}),
    "rnn_relu": (fused_rnn.RNNCell, torch.nn.RNNCell, {"nonlinearity": "relu"}),
}


class Unrolled(torch.nn.Module):
    """A cell run over the steps of a sequence, the way cells are used: (output, final state)
    like a layer's."""

    def __init__(self, cell_module):
        super().__init__()
        self.cell = cell_module

    def forward(self, x, hx=None):
        h, outputs = hx, []
        for x_t in x:
            h = self.cell(x_t, h)
            outputs.append(h[0] if isinstance(h, tuple) else h)
        return torch.stack(outputs), h


def make_cell_pair(cell: str, *args, dtype=torch.float32, backend="auto", **kwargs):
    """A torch.nn cell and the fused_rnn cell with the same weights, each unrolled over time."""
    fused_cls, torch_cls, extra = CELL_MODULES[cell]
    reference = torch_cls(*args, dtype=dtype, **extra, **kwargs)
    fused = fused_cls(*args, dtype=dtype, backend=backend, **extra, **kwargs)
    fused.load_state_dict(reference.state_dict())
    return Unrolled(fused), Unrolled(reference)


def assert_all_close(actual, expected, *, atol, rtol=0.0, names=None):
    assert len(actual) == len(expected)
    for index, (a, e) in enumerate(zip(actual, expected)):
        name = names[index] if names else f"#{index}"
        assert a is not None and e is not None, f"{name}: missing gradient"
        assert a.shape == e.shape, f"{name}: shape {tuple(a.shape)} != {tuple(e.shape)}"
        torch.testing.assert_close(a.double(), e.double(), atol=atol, rtol=rtol, msg=lambda m: f"{name}: {m}")


def low_precision_bound(ours, reference_lowp, reference_fp64):
    """The flash-attention rule (fused_rnn.testing): our error against an fp64 reference must
    stay within a small multiple of the error the reference implementation makes in the same
    low precision, plus a floor."""
    for index, (o, lp, hp) in enumerate(zip(ours, reference_lowp, reference_fp64)):
        ours_err, ref_err = max_abs_error(o, hp), max_abs_error(lp, hp)
        bound = testing.low_precision_bound(ref_err, hp)
        assert ours_err <= bound, (
            f"#{index}: error {ours_err:.3e} exceeds the bound {bound:.3e} (the reference's "
            f"error in low precision is {ref_err:.3e})"
        )


def assert_same_nonfinite(ours, theirs, label, *, atol=1e-4, rtol=1e-3):
    """NaN, +inf and -inf in the same places in each pair of tensors, the finite values close."""
    for index, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        for kind, test in (("NaN", torch.isnan), ("+inf", torch.isposinf), ("-inf", torch.isneginf)):
            assert torch.equal(test(a), test(b)), (
                f"{label}, tensor #{index}: {kind} at {test(a).sum()} places, expected "
                f"{test(b).sum()}")
        finite = torch.isfinite(b)
        torch.testing.assert_close(a[finite], b[finite], atol=atol, rtol=rtol,
                                   msg=lambda m: f"{label}, tensor #{index}: {m}")


#: Triton's pointer element type of each torch dtype a launcher passes.
_TRITON_POINTER_TYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16",
                         torch.float64: "fp64", torch.int64: "i64", torch.int32: "i32",
                         torch.uint8: "u8"}


def assert_compile_check_types_pointers_as_launched(monkeypatch, run, dtype):
    """Runs ``run`` (Triton op calls with ``dtype`` storage) with every kernel launch recorded
    instead of made, and checks that compile_check compiles each launched kernel with the
    pointer types its launch passes: a kernel compiled with other types is not the one a GPU
    runs (its loads and stores, registers and spills differ)."""
    from fused_rnn.triton_kernels import _launch, compile_check

    launches = []

    def record(kernel, grid, args):
        launches.append((kernel, args))
        return lambda *rest, **options: None

    monkeypatch.setattr(_launch, "kernel_launcher", record)
    run()
    assert launches, "no kernel was launched"
    for kernel, args in launches:
        types, _ = compile_check._signature(kernel, dtype, {})
        for name, arg in zip(kernel.arg_names, args):
            if name.endswith("_ptr"):
                launched = "*" + _TRITON_POINTER_TYPES[arg.dtype]
                assert types[name] == launched, (
                    f"{kernel.__name__}: compile_check types {name} as {types[name]}, the "
                    f"launch passes {launched}")


def make_lengths(kind: str, T: int, B: int):
    """The ops' lengths: None ("none"), or ("varied") a full-length, a zero-length and varied
    sequences."""
    if kind == "none":
        return None
    values = [T, 0] + [(b * 7) % (T + 1) for b in range(2, B)]
    return torch.tensor(values[:B], dtype=torch.int64)


# ---------------------------------------------------------------------------------------------
# The layer-normalised ops (tests/test_layernorm.py, tests/test_triton_layernorm.py)
# ---------------------------------------------------------------------------------------------

LAYERNORM_GATES = {"lstm": 4, "gru": 3}


def layernorm_op_inputs(cell, T, B, H, dtype, *, zoneout, bias=True, device="cpu",
                        generator=None):
    """The op's differentiable tensors (fp64 draws from ``generator``, or torch's, cast to
    ``dtype`` on ``device``), its zoneout masks and probabilities. zoneout: "none"; "mask",
    training masks with p = 0.3 (0.2 for c); "expectation", eval's blend."""
    G = LAYERNORM_GATES[cell]

    def leaf(*shape, scale=0.5, shift=0.0):
        value = torch.randn(*shape, dtype=torch.float64, generator=generator) * scale + shift
        return value.to(device, dtype).requires_grad_()

    # the raw projection xw, off-centre: the op's input LN removes its mean
    t = {"xw": leaf(T, B, G * H, scale=1.0, shift=0.7), "gamma_ih": leaf(G * H, shift=1.0),
         "bias" if cell == "lstm" else "b_ih": leaf(G * H, scale=0.2) if bias else None}
    t.update(w_hh=leaf(G * H, H, scale=H**-0.5), gamma_hh=leaf(G * H, scale=0.3, shift=1.0))
    if cell == "lstm":
        t.update(gamma_c=leaf(H, scale=0.3, shift=1.0), beta_c=leaf(H, scale=0.2))
    else:
        t["b_hh"] = leaf(G * H) if bias else None
    t["h0"] = leaf(B, H)
    if cell == "lstm":
        t["c0"] = leaf(B, H)
    masks, probabilities = {"h": None, "c": None}, {"h": 0.0, "c": 0.0}
    if zoneout != "none":
        probabilities = {"h": 0.3, "c": 0.2}
        if zoneout == "mask":
            masks = {k: (torch.rand(T, B, H, generator=generator) < p).to(device)
                     for k, p in probabilities.items()}
    return t, masks, probabilities


def run_layernorm_op(suffix, cell, t, masks, probabilities, lengths, reverse, eps=1e-5,
                     save=True):
    """All outputs of the forward op ``fused_rnn::layernorm_{cell}_forward{suffix}``."""
    ops = torch.ops.fused_rnn
    if cell == "lstm":
        return getattr(ops, f"layernorm_lstm_forward{suffix}")(
            t["xw"], t["gamma_ih"], t["bias"], t["w_hh"], t["gamma_hh"], t["gamma_c"],
            t["beta_c"], t["h0"], t["c0"], masks["h"], masks["c"], probabilities["h"],
            probabilities["c"], lengths, reverse, eps, save)
    return getattr(ops, f"layernorm_gru_forward{suffix}")(
        t["xw"], t["gamma_ih"], t["b_ih"], t["w_hh"], t["gamma_hh"], t["b_hh"], t["h0"],
        masks["h"], probabilities["h"], lengths, reverse, eps, save)


def run_layernorm_reference(cell, t, masks, probabilities, lengths, reverse, eps=1e-5):
    """The op's input LN (F.layer_norm), then fused_rnn/reference.py's recurrence."""
    from fused_rnn import reference

    gx = torch.nn.functional.layer_norm(t["xw"], t["xw"].shape[-1:], t["gamma_ih"],
                                        t["bias"] if cell == "lstm" else t["b_ih"], eps)
    if cell == "lstm":
        return reference.layernorm_lstm(
            gx, t["w_hh"], t["gamma_hh"], t["gamma_c"], t["beta_c"], t["h0"], t["c0"],
            masks["h"], masks["c"], probabilities["h"], probabilities["c"], lengths, reverse, eps)
    return reference.layernorm_gru(gx, t["w_hh"], t["gamma_hh"], t["b_hh"], t["h0"],
                                   masks["h"], probabilities["h"], lengths, reverse, eps)


def outputs_and_leaf_grads(fn, t, seeds):
    """fn's outputs (y, h_n[, c_n]) and the gradients of every leaf of t (γ, β included) for
    the loss sum(output * seed)."""
    outputs = fn()
    leaves = [v for v in t.values() if v is not None]
    loss = sum((o.double() * s).sum() for o, s in zip(outputs, seeds))
    return [o.detach() for o in outputs] + list(torch.autograd.grad(loss, leaves))
