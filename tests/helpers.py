"""Comparison helpers shared by the tests."""

from __future__ import annotations

import torch

import fused_rnn
from fused_rnn import testing
from fused_rnn.testing import LAYERS, flatten_states, make_pair, max_abs_error, outputs_and_grads  # noqa: F401

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
