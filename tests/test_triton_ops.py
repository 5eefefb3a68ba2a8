"""Tests of the Triton ops fused_rnn::*_triton against fused_rnn.reference.

Without a GPU the kernels run in the Triton interpreter on CPU tensors: TRITON_INTERPRET=1 must
be set before triton is first imported (tests/conftest.py's job when no NVIDIA GPU is
present); with neither, this module is skipped. Shapes are small: the interpreter executes
every tl operation in numpy.

Layouts (triton_kernels/_layout.py) are forced with FUSED_RNN_TRITON_* variables. Paths only a
GPU can run (a persistent grid with several programs per batch tile and its barrier,
tensor-core dots in TF32/fp16/bf16, torch.compile) are the @pytest.mark.cuda tests at the end.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from helpers import triton_test_device

DEVICE = triton_test_device()
INTERPRET = DEVICE.type == "cpu"

import fused_rnn  # noqa: E402
import fused_rnn.triton_kernels as triton_kernels  # noqa: E402
from fused_rnn import reference  # noqa: E402
from fused_rnn.triton_kernels import _layout  # noqa: E402
from helpers import assert_compile_check_types_pointers_as_launched  # noqa: E402

OPS = torch.ops.fused_rnn
CELLS = ("lstm", "gru", "rnn_tanh", "rnn_relu")
GATES = {"lstm": 4, "gru": 3, "rnn_tanh": 1, "rnn_relu": 1}
LAYOUT_VARS = ("LAYOUT", "BLOCK_H", "BLOCK_B", "BLOCK_K", "WEIGHTS")

needs_gpu = pytest.mark.cuda


@pytest.fixture(autouse=True)
def _default_layout(monkeypatch):
    """Every test starts from the automatic layout, whatever the environment says."""
    for name in LAYOUT_VARS:
        monkeypatch.delenv(f"FUSED_RNN_TRITON_{name}", raising=False)
    monkeypatch.setenv("FUSED_RNN_FILL_UNINITIALIZED", "1")


def force_layout(monkeypatch, **variables):
    for name, value in variables.items():
        monkeypatch.setenv(f"FUSED_RNN_TRITON_{name.upper()}", str(value))


# ---------------------------------------------------------------------------------------------
# Inputs, the op under test and the reference, per cell.
# ---------------------------------------------------------------------------------------------


def make_inputs(cell, T, B, H, dtype=torch.float32, *, seed=0, bias=True):
    """Differentiable inputs of one call, as torch.nn would initialise them (fp32 draws, then
    cast, so every dtype sees the same numbers)."""
    gen = torch.Generator().manual_seed(seed)
    G = GATES[cell]
    bound = H ** -0.5

    def uniform(*shape):
        return (torch.rand(*shape, generator=gen) * 2 - 1) * bound

    inputs = {
        "gx": torch.randn(T, B, G * H, generator=gen),
        "w_hh": uniform(G * H, H),
        "h0": torch.randn(B, H, generator=gen) * 0.5,
    }
    if cell == "lstm":
        inputs["c0"] = torch.randn(B, H, generator=gen) * 0.5
    if cell == "gru" and bias:
        inputs["b_hh"] = uniform(G * H)
    return {k: v.to(DEVICE, dtype).requires_grad_() for k, v in inputs.items()}


def triton_call(cell, inputs, lengths, reverse):
    """Differentiable outputs of the triton forward op (through the registered autograd)."""
    x = inputs
    if cell == "lstm":
        y, h_n, c_n, _, _ = OPS.lstm_forward_triton(
            x["gx"], x["w_hh"], None, x["h0"], x["c0"], lengths, reverse, True)
        return y, h_n, c_n
    if cell == "gru":
        y, h_n, _ = OPS.gru_forward_triton(
            x["gx"], x["w_hh"], x.get("b_hh"), x["h0"], lengths, reverse, True)
        return y, h_n
    op = getattr(OPS, f"{cell}_forward_triton")
    return op(x["gx"], x["w_hh"], x["h0"], lengths, reverse)


def reference_call(cell, inputs, lengths, reverse):
    x = inputs
    if cell == "lstm":
        return reference.lstm(x["gx"], x["w_hh"], None, x["h0"], x["c0"], lengths, reverse)
    if cell == "gru":
        return reference.gru(x["gx"], x["w_hh"], x.get("b_hh"), x["h0"], lengths, reverse)
    return getattr(reference, cell)(x["gx"], x["w_hh"], x["h0"], lengths, reverse)


def as_fp64(inputs):
    return {k: v.detach().double().requires_grad_() for k, v in inputs.items()}


def outputs_and_grads(fn, inputs, cotangents):
    """Forward outputs and the gradients of every input for the given output cotangents."""
    outputs = fn(inputs)
    names = list(inputs)
    grads = torch.autograd.grad(outputs, [inputs[n] for n in names],
                                [c.to(o.dtype) for c, o in zip(cotangents, outputs)],
                                allow_unused=True)
    return [o.detach() for o in outputs], dict(zip(names, grads))


def output_shapes(cell, T, B, H):
    """Shapes of the differentiable outputs: y, h_n (and c_n)."""
    return [(T, B, H), (B, H)] + ([(B, H)] if cell == "lstm" else [])


def cotangents_for(shapes, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=gen).to(DEVICE) for shape in shapes]


def lengths_for(kind, T, B):
    """None, or int64 lengths on the CPU with a 0-length and a full-length sequence."""
    if kind is None:
        return None
    gen = torch.Generator().manual_seed(7)
    lengths = torch.randint(0, T + 1, (B,), generator=gen)
    lengths[0] = T
    if B > 1:
        lengths[1] = 0
    if kind == "device":
        lengths = lengths.to(DEVICE)
    return lengths


def check_cell(cell, T, B, H, *, reverse=False, lengths="cpu", dtype=torch.float32, bias=True,
               atol=2e-5, factor=None):
    """Forward outputs and all input gradients of the triton op against fp64 reference.

    fp32/fp64: absolute tolerance. fp16/bf16: at most ``factor`` times the error the reference
    itself makes in that dtype (its error on the same inputs, against the same fp64 result).
    """
    length_tensor = lengths_for(lengths, T, B)
    inputs = make_inputs(cell, T, B, H, dtype, bias=bias)
    exact_inputs = as_fp64(inputs)
    cotangents = cotangents_for(output_shapes(cell, T, B, H))
    exact_out, exact_grads = outputs_and_grads(
        lambda x: reference_call(cell, x, length_tensor, reverse), exact_inputs, cotangents)
    out, grads = outputs_and_grads(
        lambda x: triton_call(cell, x, length_tensor, reverse), inputs, cotangents)
    if factor is not None:
        ref_inputs = {k: v.detach().clone().requires_grad_() for k, v in inputs.items()}
        ref_out, ref_grads = outputs_and_grads(
            lambda x: reference_call(cell, x, length_tensor, reverse), ref_inputs, cotangents)

    pairs = [(f"output {i}", out[i], exact_out[i], ref_out[i] if factor else None)
             for i in range(len(out))]
    pairs += [(f"grad {n}", grads[n], exact_grads[n], ref_grads[n] if factor else None)
              for n in grads]
    for name, actual, expected, low_precision_ref in pairs:
        assert actual.dtype == dtype and actual.shape == expected.shape, name
        assert torch.isfinite(actual).all(), f"{name}: non-finite values"
        error = (actual.double() - expected).abs().max().item()
        if factor is None:
            bound = atol * max(1.0, expected.abs().max().item())
        else:
            ref_error = (low_precision_ref.double() - expected).abs().max().item()
            # The floor covers outputs the reference gets exactly (all-zero padding).
            bound = factor * ref_error + torch.finfo(dtype).eps * 1e-2
        assert error <= bound, f"{cell} {name}: error {error:.3g} > {bound:.3g}"


# ---------------------------------------------------------------------------------------------
# Correctness in the automatic layout.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("lengths", [None, "cpu"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("cell", CELLS)
def test_matches_reference(cell, reverse, lengths):
    check_cell(cell, T=5, B=4, H=12, reverse=reverse, lengths=lengths)


@pytest.mark.parametrize("cell", CELLS)
def test_odd_sizes(cell):
    check_cell(cell, T=1, B=1, H=3, lengths=None)
    check_cell(cell, T=3, B=2, H=3, reverse=True, lengths="cpu")


def test_gru_without_bias():
    check_cell("gru", T=4, B=3, H=5, bias=False, reverse=True)


@pytest.mark.parametrize("layout", ["auto", "persistent"])
@pytest.mark.parametrize("cell", CELLS)
def test_several_batch_tiles(cell, layout, monkeypatch):
    # 3 batch tiles; forced persistent: one barrier counter per tile.
    force_layout(monkeypatch, block_b=16, **({} if layout == "auto" else {"layout": layout}))
    assert _layout.choose_layout(GATES[cell], 37, 6, torch.float32, DEVICE).n_batch_tiles == 3
    check_cell(cell, T=3, B=37, H=6, reverse=cell != "gru", lengths="cpu")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("cell", CELLS)
def test_half_precision(cell, dtype):
    # The kernels round h (and the gate gradients) to the dtype at every step for the
    # tensor-core product, the reference only its outputs: a few times its error.
    check_cell(cell, T=4, B=3, H=10, dtype=dtype, reverse=True, factor=6)


@pytest.mark.parametrize("cell", CELLS)
def test_fp64_gradcheck(cell):
    inputs = make_inputs(cell, T=3, B=2, H=3, dtype=torch.float64)
    names = list(inputs)
    lengths = torch.tensor([3, 1])

    def fn(*tensors):
        return triton_call(cell, dict(zip(names, tensors)), lengths, True)

    assert torch.autograd.gradcheck(fn, tuple(inputs[n] for n in names), fast_mode=True)


# ---------------------------------------------------------------------------------------------
# Every layout the interpreter can run, forced.
# ---------------------------------------------------------------------------------------------

INTERPRETABLE_LAYOUTS = {
    # The operand in registers, whole w_hh on chip: the default for small sizes.
    "single": dict(layout="single"),
    # One program per tile, w_hh streamed in 16-wide slices: h goes through the exchange buffer.
    "single-streamed": dict(layout="single", weights="streamed", block_k=16),
    # Persistent launch with its grid barrier, here with one program per tile.
    "persistent": dict(layout="persistent"),
    "persistent-streamed": dict(layout="persistent", weights="streamed", block_k=16),
    # Hidden units split over 2 programs, one launch per step.
    "stepwise": dict(layout="stepwise", block_h=16),
    "stepwise-streamed": dict(layout="stepwise", block_h=16, weights="streamed", block_k=16),
}


@pytest.mark.parametrize("layout", list(INTERPRETABLE_LAYOUTS))
@pytest.mark.parametrize("cell", CELLS)
def test_layouts(cell, layout, monkeypatch):
    force_layout(monkeypatch, **INTERPRETABLE_LAYOUTS[layout])
    chosen = _layout.choose_layout(GATES[cell], 5, 20, torch.float32, DEVICE)
    assert chosen.name == INTERPRETABLE_LAYOUTS[layout]["layout"]
    check_cell(cell, T=4, B=5, H=20, reverse=layout.endswith("streamed"), lengths="cpu")


def test_layout_selection_rules(monkeypatch):
    """The rule of triton_kernels/README.md, evaluated as on an H100 (132 SMs)."""
    monkeypatch.setattr(_layout, "_resident_programs", lambda device: 132)
    gpu = torch.device("cuda")
    lstm, gru = 4, 3

    def layout(gates, B, H, dtype=torch.bfloat16, grid_barrier=True, backward=False):
        chosen = _layout.choose_layout(gates, B, H, dtype, gpu, grid_barrier=grid_barrier,
                                       backward=backward)
        return (chosen.name, chosen.block_b, chosen.block_h, chosen.n_slices,
                chosen.weights_resident)

    # The whole w_hh fits one program: h stays in registers, no barrier.
    assert layout(lstm, 16, 64) == ("single", 16, 64, 1, True)
    assert layout(lstm, 1, 3) == ("single", 16, 16, 1, True)      # tl.dot needs 16 rows
    assert layout(lstm, 64 * 200, 64) == ("single", 16, 64, 1, True)
    # Split hidden units, weights on chip, one persistent launch with a grid barrier ...
    assert layout(lstm, 16, 512) == ("persistent", 16, 16, 32, True)
    # ... but the backward loads every gate's gradients whole: its weights are streamed.
    assert layout(lstm, 16, 512, backward=True) == ("persistent", 16, 16, 32, False)
    # An operand too large to load whole, slices too large for the chip: streamed from L2.
    assert layout(lstm, 16, 768) == ("persistent", 16, 16, 48, False)
    assert layout(lstm, 16, 2048) == ("persistent", 16, 16, 128, False)
    assert layout(lstm, 16, 768, torch.float32) == ("persistent", 16, 16, 48, False)
    # More batch than resident programs can cover with tiles whose accumulators fit: one
    # launch per step.
    assert layout(gru, 64, 1024) == ("stepwise", 16, 16, 64, False)
    assert layout(lstm, 1024, 768) == ("stepwise", 16, 16, 48, False)

    # Without a cooperative launch here and now (the interpreter, which runs programs one after
    # another; graph capture): split units run stepwise, and a forced persistent split is
    # refused instead of risking a barrier that never opens.
    assert layout(lstm, 16, 768, grid_barrier=False)[0] == "stepwise"
    force_layout(monkeypatch, layout="persistent", block_h=16)
    assert layout(lstm, 16, 40)[0] == "persistent"
    with pytest.raises(RuntimeError, match="needs a cooperative launch"):
        layout(lstm, 16, 40, grid_barrier=False)
    monkeypatch.setenv("FUSED_RNN_TRITON_BLOCK_H", "24")
    with pytest.raises(ValueError, match="power of two"):
        layout(lstm, 16, 40)


def test_forced_blocks_keep_the_register_budget(monkeypatch):
    """Forced slices get the largest batch tile whose accumulators fit (the budget the
    automatic rule keeps), and a forced combination that fits none is refused, instead of
    compiling a program that spills."""
    monkeypatch.setattr(_layout, "_resident_programs", lambda device: 132)
    gpu = torch.device("cuda")
    force_layout(monkeypatch, layout="persistent", block_h=16)
    chosen = _layout.choose_layout(4, 40, 96, torch.float32, gpu)
    assert (chosen.block_b, chosen.block_h) == (16, 16)         # 32 rows would not fit
    assert 4 * chosen.block_b * chosen.block_h * 4 <= _layout.SPLIT_ACCUMULATOR_BYTES
    force_layout(monkeypatch, block_b=32)
    with pytest.raises(ValueError, match="accumulators"):
        _layout.choose_layout(4, 40, 96, torch.float32, gpu)
    force_layout(monkeypatch, layout="single", block_b=16)
    monkeypatch.delenv("FUSED_RNN_TRITON_BLOCK_H")
    with pytest.raises(ValueError, match="accumulators"):
        _layout.choose_layout(4, 40, 96, torch.float32, gpu)     # 4 x 16 x 128 fp32 > 16 KiB


def test_grid_barrier_only_where_a_cooperative_launch_is_sure(monkeypatch):
    """The interpreter and graph capture never get the spin barrier."""
    from fused_rnn.triton_kernels import _launch

    x = torch.zeros(2)
    assert _launch.grid_barrier_allowed(x) is (not INTERPRET)
    monkeypatch.setattr(_launch, "interpreting", lambda: False)
    assert _launch.grid_barrier_allowed(x)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert not _launch.grid_barrier_allowed(x)


# ---------------------------------------------------------------------------------------------
# What the GPU machines' stack (torch 2.11, Triton 3.6) and a real GPU would show, checked here.
# ---------------------------------------------------------------------------------------------


def test_launch_never_hands_interpreted_kernels_to_wrap_triton(monkeypatch):
    """torch 2.11's wrap_triton refuses the interpreter's kernel objects (2.14's passes them
    through): the launcher must not give them to it."""
    from triton.runtime.jit import JITFunction

    from fused_rnn.triton_kernels import _launch

    real_wrap = _launch.wrap_triton

    def wrap_triton_of_torch_2_11(kernel):
        if not isinstance(kernel, JITFunction):
            raise RuntimeError("wrap_triton only works on functions annotated with triton.jit")
        return real_wrap(kernel)

    monkeypatch.setattr(_launch, "wrap_triton", wrap_triton_of_torch_2_11)
    check_cell("gru", T=3, B=2, H=5, lengths=None)


@pytest.mark.parametrize("cell", CELLS)
def test_stepwise_keeps_state_in_fp32(cell, monkeypatch):
    """The stepwise layout carries h, c, dh and dc between its launches in fp32, as the other
    layouts carry them in registers: in bf16 it equals the one-program layout that exchanges
    the same operand within one launch, bit for bit (rounding the state to bf16 after every
    step, as it once did, moves the results by bf16's resolution)."""
    T, B, H = 7, 5, 12
    lengths = lengths_for("cpu", T, B)
    inputs = make_inputs(cell, T, B, H, torch.bfloat16)
    cotangents = cotangents_for(output_shapes(cell, T, B, H))

    def run(**layout):
        force_layout(monkeypatch, weights="streamed", block_k=16, **layout)
        return outputs_and_grads(lambda x: triton_call(cell, x, lengths, True), inputs, cotangents)

    one_launch = run(layout="single")
    stepwise = run(layout="stepwise", block_h=16)           # H_PAD = 16: one program per tile
    assert _layout.choose_layout(GATES[cell], B, H, torch.bfloat16, DEVICE).name == "stepwise"
    for a, b in zip(one_launch[0], stepwise[0]):
        assert torch.equal(a, b)
    for name in one_launch[1]:
        assert torch.equal(one_launch[1][name], stepwise[1][name]), name


@pytest.mark.parametrize("cell", CELLS)
def test_non_contiguous_lengths(cell):
    """Lengths that live on the kernels' device but with a stride are made contiguous (the
    kernels index them with stride 1)."""
    T, B, H = 5, 4, 12
    every_other = torch.tensor([5, 99, 0, 99, 3, 99, 4, 99])[::2]
    assert not every_other.is_contiguous()
    inputs = make_inputs(cell, T, B, H)
    expected = reference_call(cell, as_fp64(inputs), every_other, False)
    actual = triton_call(cell, inputs, every_other.to(DEVICE), False)
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a.double(), e, atol=2e-5, rtol=0)


def test_launches_on_the_tensors_device(monkeypatch):
    """Triton launches on the current CUDA device: the launcher makes it the tensors' device
    (a model on cuda:1 without torch.cuda.set_device). Checked with a stand-in kernel and a
    recording device guard."""
    from fused_rnn.triton_kernels import _launch

    current = []

    class RecordingGuard:
        def __init__(self, device):
            self.device = torch.device(device)

        def __enter__(self):
            current.append(self.device)

        def __exit__(self, *exc):
            current.pop()

    launched_on = []

    class StandInKernel:
        def __getitem__(self, grid):
            return lambda *args, **kwargs: launched_on.append(current[-1] if current else None)

    monkeypatch.setattr(torch.cuda, "device", RecordingGuard)
    monkeypatch.setattr(_launch, "wrap_triton", lambda kernel: kernel)
    monkeypatch.setattr(_launch, "interpreting", lambda: False)
    layout = _layout.Layout("single", 16, 16, 16, 16, True, 1, 1, 4)
    cuda1 = torch.device("cuda", 1)

    class OnCuda1(torch.Tensor):
        device = cuda1

    like = torch.zeros(2, 3).as_subclass(OnCuda1)
    monkeypatch.setattr(_launch, "is_fake", lambda t: False)
    _launch.launch_recurrence(StandInKernel(), layout, (torch.zeros(1),), 3, 2, 3, like, {})
    assert launched_on == [cuda1]


def test_stuck_grid_barrier_raises(monkeypatch):
    """A grid barrier that cannot complete (here: counters that can never reach their target)
    gives up after MAX_POLLS polls, sets the status word, and the op raises, never hangs."""
    import triton.language as tl

    from fused_rnn.triton_kernels import _barrier, _launch, rnn

    def unreachable_barrier_words(layout, like):
        words = _launch.barrier_words(layout, like)
        words[:-1] = -(1 << 30)
        return words

    monkeypatch.setattr(_barrier, "MAX_POLLS", tl.constexpr(8))
    monkeypatch.setattr(rnn, "barrier_words", unreachable_barrier_words)
    force_layout(monkeypatch, layout="persistent")       # one program per tile: runs here
    inputs = make_inputs("rnn_tanh", 3, 2, 8)
    with pytest.raises(RuntimeError, match="grid barrier of the persistent layout did not"):
        triton_call("rnn_tanh", inputs, None, False)


# ---------------------------------------------------------------------------------------------
# The op contract: workspaces, None gradients, edge sizes, errors, opcheck.
# ---------------------------------------------------------------------------------------------


def _forward_args(cell, inputs, lengths, reverse, save=True):
    x = {k: v.detach() for k, v in inputs.items()}
    if cell == "lstm":
        return (x["gx"], x["w_hh"], None, x["h0"], x["c0"], lengths, reverse, save)
    if cell == "gru":
        return (x["gx"], x["w_hh"], x.get("b_hh"), x["h0"], lengths, reverse, save)
    return (x["gx"], x["w_hh"], x["h0"], lengths, reverse)


def _backward_args(cell, forward_args, outputs, grads, lengths, reverse):
    """Backward op arguments; ``grads`` are the output gradients (None allowed)."""
    if cell == "lstm":
        gx, w_hh, w_hr, h0, c0 = forward_args[:5]
        y, _, _, gates, cs = outputs
        return (*grads, w_hh, w_hr, h0, c0, y, gates, cs, lengths, reverse)
    if cell == "gru":
        gx, w_hh, b_hh, h0 = forward_args[:4]
        y, _, gates = outputs
        return (*grads, w_hh, h0, y, gates, lengths, reverse)
    gx, w_hh, h0 = forward_args[:3]
    return (*grads, w_hh, h0, outputs[0], lengths, reverse)


@pytest.mark.parametrize("cell", CELLS)
def test_outputs_and_workspace_match_cpu_op(cell):
    """Same outputs and the same workspace layout (padded steps included) as the C++ op."""
    T, B, H = 4, 3, 5
    lengths = torch.tensor([4, 0, 2])
    args = _forward_args(cell, make_inputs(cell, T, B, H), lengths, True)
    ours = getattr(OPS, f"{cell}_forward_triton")(*args)
    cpu_args = tuple(a.cpu() if isinstance(a, torch.Tensor) else a for a in args)
    theirs = getattr(OPS, f"{cell}_forward")(*cpu_args)
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a.cpu(), b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_forward_without_workspace(cell):
    inputs = make_inputs(cell, 3, 2, 4)
    args = _forward_args(cell, inputs, None, False, save=True)
    with_ws = getattr(OPS, f"{cell}_forward_triton")(*args)
    without = getattr(OPS, f"{cell}_forward_triton")(*args[:-1], False)
    for a, b in zip(with_ws, without):
        if b.numel():
            torch.testing.assert_close(a, b, atol=0, rtol=0)
    assert all(w.shape == (0,) for w in without[len(without) - (2 if cell == "lstm" else 1):])
    y = without[0]
    grads = [None] * (3 if cell == "lstm" else 2)
    back_args = _backward_args(cell, args, without, grads, None, False)
    with pytest.raises(RuntimeError, match="save_for_backward=False"):
        getattr(OPS, f"{cell}_backward_triton")(*back_args)
    assert y.shape == (3, 2, 4)


@pytest.mark.parametrize("cell", CELLS)
def test_none_gradients_are_zero(cell):
    T, B, H = 3, 2, 4
    lengths = torch.tensor([3, 1])
    args = _forward_args(cell, make_inputs(cell, T, B, H), lengths, False)
    outputs = getattr(OPS, f"{cell}_forward_triton")(*args)
    n_grads = 3 if cell == "lstm" else 2
    backward = getattr(OPS, f"{cell}_backward_triton")
    gen = torch.Generator().manual_seed(3)
    grads = [torch.randn(o.shape, generator=gen).to(DEVICE) for o in outputs[:n_grads]]
    for missing in range(n_grads):
        with_none = list(grads)
        with_none[missing] = None
        with_zero = list(grads)
        with_zero[missing] = torch.zeros_like(grads[missing])
        a = backward(*_backward_args(cell, args, outputs, with_none, lengths, False))
        b = backward(*_backward_args(cell, args, outputs, with_zero, lengths, False))
        for x, z in zip(a, b):
            torch.testing.assert_close(x, z, atol=0, rtol=0)
    # All gradients None: everything is zero.
    zero = backward(*_backward_args(cell, args, outputs, [None] * n_grads, lengths, False))
    assert all(not t.any() for t in zero)


def second_derivatives(fn, inputs, cotangents, seed=2):
    """The gradients of every input of a random linear function of the first derivatives
    (taken with create_graph=True) of fn's outputs for the given cotangents."""
    names = list(inputs)
    outputs = fn(inputs)
    firsts = torch.autograd.grad(outputs, [inputs[n] for n in names], cotangents,
                                 create_graph=True)
    gen = torch.Generator().manual_seed(seed)
    penalty = sum((g * torch.randn(g.shape, generator=gen, dtype=g.dtype).to(g.device)).sum()
                  for g in firsts)
    return torch.autograd.grad(penalty, [inputs[n] for n in names])


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("reverse", [False, True])
def test_second_derivatives_match_reference(cell, reverse):
    """A backward with create_graph=True through the Triton ops' autograd (fused_rnn/_ops.py)
    runs fused_rnn/reference_backward.py; differentiated again, it gives the reference's
    second derivatives (test_ops.py gradgradchecks the same functions behind the C++ ops)."""
    T, B, H = 3, 3, 4
    inputs = {k: v.double() for k, v in make_inputs(cell, T, B, H).items()}
    lengths = torch.tensor([3, 0, 2], device=DEVICE)
    cotangents = [c.double() for c in cotangents_for(output_shapes(cell, T, B, H))]
    ours = second_derivatives(lambda x: triton_call(cell, x, lengths, reverse), inputs, cotangents)
    theirs = second_derivatives(lambda x: reference_call(cell, x, lengths, reverse), as_fp64(inputs),
                                [c.cpu() for c in cotangents])
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a.cpu(), b, atol=1e-10, rtol=1e-10)


def test_backward_op_is_not_differentiable():
    """Differentiating a backward op called directly is refused (torch would only warn and give
    wrong second derivatives)."""
    inputs = {k: v.double() for k, v in make_inputs("rnn_tanh", 3, 2, 4).items()}
    y, _ = triton_call("rnn_tanh", inputs, None, False)
    grads = OPS.rnn_tanh_backward_triton(y, None, inputs["w_hh"], inputs["h0"], y, None, False)
    with pytest.raises(RuntimeError, match="not differentiable"):
        grads[0].sum().backward()


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("T,B", [(0, 3), (3, 0)])
def test_empty_sizes(cell, T, B):
    inputs = make_inputs(cell, T, B, 4)
    args = _forward_args(cell, inputs, None, False)
    ours = getattr(OPS, f"{cell}_forward_triton")(*args)
    theirs = getattr(OPS, f"{cell}_forward")(*(a.cpu() if isinstance(a, torch.Tensor) else a
                                               for a in args))
    for a, b in zip(ours, theirs):
        assert a.shape == b.shape
        torch.testing.assert_close(a.cpu(), b)
    out = triton_call(cell, inputs, None, False)
    sum(o.sum() for o in out).backward()
    assert inputs["w_hh"].grad is not None and not inputs["w_hh"].grad.any()


def test_lstm_projection_is_not_implemented():
    inputs = make_inputs("lstm", 2, 2, 4)
    x = {k: v.detach() for k, v in inputs.items()}
    w_hh = torch.randn(16, 3, device=DEVICE)
    w_hr = torch.randn(3, 4, device=DEVICE)
    h0 = torch.zeros(2, 3, device=DEVICE)
    with pytest.raises(NotImplementedError, match="projection"):
        OPS.lstm_forward_triton(x["gx"], w_hh, w_hr, h0, x["c0"], None, False, True)
    assert not triton_kernels.supports("lstm", proj=True, device=DEVICE)
    assert triton_kernels.supports("gru", device=DEVICE)
    assert not triton_kernels.supports("gru", device=DEVICE, dtype=torch.int32)
    assert triton_kernels.is_available(DEVICE)
    with pytest.raises(ValueError, match="unknown cell"):
        triton_kernels.supports("elman")


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda a: {**a, "gx": a["gx"][0]}, "expected gx of shape"),
        (lambda a: {**a, "gx": a["gx"][..., :-1]}, "multiple of the number of gates"),
        (lambda a: {**a, "w_hh": a["w_hh"][:-1]}, "expected w_hh of shape"),
        (lambda a: {**a, "h0": a["h0"][:1]}, "expected h0 of shape"),
        (lambda a: {**a, "c0": a["c0"].double()}, "c0 has dtype"),
        (lambda a: {**a, "gx": a["gx"].int()}, "float32, float64, float16 or bfloat16"),
        (lambda a: {**a, "lengths": torch.tensor([1, 5])}, r"lengths must lie in \[0, 3\]"),
        (lambda a: {**a, "lengths": torch.tensor([1, 2], dtype=torch.int32)}, "int64"),
        (lambda a: {**a, "lengths": torch.tensor([1, 2, 3])}, "expected lengths of shape"),
    ],
)
def test_bad_input_errors(change, message):
    x = {k: v.detach() for k, v in make_inputs("lstm", 3, 2, 4).items()}
    x["lengths"] = None
    x = change(x)
    with pytest.raises(RuntimeError, match=message):
        OPS.lstm_forward_triton(x["gx"], x["w_hh"], None, x["h0"], x["c0"], x["lengths"], False,
                                True)


def test_bad_backward_input_errors():
    args = _forward_args("gru", make_inputs("gru", 3, 2, 4), None, False)
    y, h_n, gates = OPS.gru_forward_triton(*args)
    w_hh, h0 = args[1], args[3]
    with pytest.raises(RuntimeError, match="expected grad_y of shape"):
        OPS.gru_backward_triton(y[:2], None, w_hh, h0, y, gates, None, False)
    with pytest.raises(RuntimeError, match="expected gates of shape"):
        OPS.gru_backward_triton(None, h_n, w_hh, h0, y, gates[:, :, :-1], None, False)


# The interpreter's kernels are invisible to graph capture (wrap_triton leaves them
# unwrapped), so the AOT-dispatch check of opcheck runs on a GPU only; under the interpreter
# capturing the ops raises instead of producing a graph without its kernels.
def _opcheck(op, args):
    if INTERPRET:
        torch.library.opcheck(op, args, test_utils=(
            "test_schema", "test_autograd_registration", "test_faketensor"))
    else:
        torch.library.opcheck(op, args)


@pytest.mark.parametrize("cell", CELLS)
def test_opcheck(cell):
    T, B, H = 3, 2, 4
    lengths = torch.tensor([3, 1])
    args = _forward_args(cell, make_inputs(cell, T, B, H), lengths, True)
    args = tuple(a.requires_grad_() if isinstance(a, torch.Tensor) and a.is_floating_point()
                 else a for a in args)
    forward = getattr(OPS, f"{cell}_forward_triton")
    _opcheck(forward, args)
    outputs = forward(*args)
    n_grads = 3 if cell == "lstm" else 2
    grads = [torch.ones_like(o) for o in outputs[:n_grads]]
    grads[0] = None
    detached = tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args)
    outputs = tuple(o.detach() for o in outputs)
    backward_args = _backward_args(cell, detached, outputs, grads, lengths, False)
    _opcheck(getattr(OPS, f"{cell}_backward_triton"), backward_args)


@pytest.mark.skipif(not INTERPRET, reason="interpreter only")
def test_interpreter_refuses_graph_capture():
    args = _forward_args("rnn_tanh", make_inputs("rnn_tanh", 2, 2, 4), None, False)
    with pytest.raises(Exception, match="cannot be compiled under TRITON_INTERPRET=1"):
        torch.library.opcheck(OPS.rnn_tanh_forward_triton, args,
                              test_utils="test_aot_dispatch_dynamic")


# ---------------------------------------------------------------------------------------------
# GPU-only paths.
# ---------------------------------------------------------------------------------------------

GPU_LAYOUTS = {
    "single": dict(layout="single"),
    "single-streamed": dict(layout="single", weights="streamed", block_k=16),
    # Several programs per batch tile, resident weights, grid barrier every step.
    "persistent": dict(layout="persistent", block_h=16),
    "persistent-streamed": dict(layout="persistent", block_h=16, weights="streamed", block_k=64),
    "stepwise": dict(layout="stepwise", block_h=16),
}
GPU_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _require_gpu():
    if INTERPRET or not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU (without TRITON_INTERPRET)")


@needs_gpu
@pytest.mark.parametrize("dtype", list(GPU_DTYPES))
@pytest.mark.parametrize("layout", list(GPU_LAYOUTS))
@pytest.mark.parametrize("cell", CELLS)
def test_gpu_layouts(cell, layout, dtype, monkeypatch):
    _require_gpu()
    force_layout(monkeypatch, **GPU_LAYOUTS[layout])
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    kwargs = dict(atol=5e-5) if dtype == "fp32" else dict(factor=8)
    # H=24 keeps the whole w_hh within the single layout's budget in every dtype (h in
    # registers) and gives several batch tiles; H=96 splits into 6 slices. These are the
    # layouts compile_check compiles as "test_gpu_layouts".
    H = 24 if layout.startswith("single") else 96
    check_cell(cell, T=24, B=40, H=H, reverse=True, lengths="device", dtype=GPU_DTYPES[dtype],
               **kwargs)


@needs_gpu
@pytest.mark.parametrize("cell", CELLS)
def test_gpu_tf32(cell, monkeypatch):
    _require_gpu()
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", True)
    force_layout(monkeypatch, layout="persistent", block_h=16)
    # TF32 keeps 10 mantissa bits, like fp16: judged by the fp16 reference's error.
    inputs_dtype = torch.float32
    T, B, H = 16, 24, 64
    lengths = lengths_for("device", T, B)
    inputs = make_inputs(cell, T, B, H, inputs_dtype)
    out = triton_call(cell, inputs, lengths, False)
    exact = reference_call(cell, as_fp64(inputs), lengths, False)
    half = reference_call(cell, {k: v.detach().half() for k, v in inputs.items()}, lengths, False)
    for a, e, h in zip(out, exact, half):
        error = (a.double() - e).abs().max().item()
        assert error <= 8 * (h.double() - e).abs().max().item() + 1e-6


@needs_gpu
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("H,B", [(768, 16), (2048, 64), (300, 130)])
def test_gpu_automatic_layout_large(cell, H, B):
    _require_gpu()
    layout = _layout.choose_layout(GATES[cell], B, H, torch.bfloat16, DEVICE)
    assert layout.name in ("persistent", "single", "stepwise")
    check_cell(cell, T=6, B=B, H=H, reverse=False, lengths="device", dtype=torch.bfloat16,
               factor=8)


@needs_gpu
@pytest.mark.parametrize("layout", ["auto", "persistent"])
@pytest.mark.parametrize("cell", CELLS)
def test_gpu_torch_compile_fullgraph(cell, layout, monkeypatch):
    _require_gpu()
    if layout == "persistent":
        force_layout(monkeypatch, layout="persistent", block_h=16)
    T, B, H = 8, 20, 64
    lengths = lengths_for("device", T, B)
    inputs = make_inputs(cell, T, B, H, torch.bfloat16)
    names = list(inputs)

    def loss(*tensors):
        out = triton_call(cell, dict(zip(names, tensors)), lengths, True)
        return sum(o.float().square().sum() for o in out)

    def value_and_grads(fn):
        tensors = [inputs[n].detach().clone().requires_grad_() for n in names]
        value = fn(*tensors)
        value.backward()
        return value.detach(), [t.grad for t in tensors]

    eager_value, eager_grads = value_and_grads(loss)
    compiled_value, compiled_grads = value_and_grads(torch.compile(loss, fullgraph=True))
    # Same kernels; only the loss reduction may be ordered differently.
    torch.testing.assert_close(compiled_value, eager_value, rtol=1e-4, atol=1e-4)
    for a, b in zip(compiled_grads, eager_grads):
        torch.testing.assert_close(a, b)


# ---------------------------------------------------------------------------------------------
# Compilation for the GPU, without a GPU.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64], ids=["bf16", "fp64"])
@pytest.mark.parametrize("cell", CELLS)
def test_compile_check_types_pointers_as_launched(cell, dtype, monkeypatch):
    """The kernels compile_check compiles take the pointer types the launches pass (the states
    are in the gate-maths dtype, not the storage dtype), in every layout's launch."""
    T, B, H = 3, 2, 16

    def run():
        inputs = make_inputs(cell, T, B, H, dtype)
        outputs = triton_call(cell, inputs, lengths_for("cpu", T, B), False)
        torch.autograd.grad(outputs, list(inputs.values()), [torch.ones_like(o) for o in outputs])

    for layout in ("single", "stepwise"):
        force_layout(monkeypatch, layout=layout)
        assert_compile_check_types_pointers_as_launched(monkeypatch, run, dtype)


def test_kernels_compile_for_sm90():
    """Every kernel compiles for sm_90 in the single and persistent layouts and fits in shared
    memory (the interpreter never runs the compiler). A subprocess: compiling needs
    TRITON_INTERPRET unset before triton is imported."""
    pytest.importorskip("triton.backends.nvidia.compiler")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [
        os.path.dirname(os.path.dirname(fused_rnn.__file__)), env.get("PYTHONPATH")]))
    result = subprocess.run(
        [sys.executable, "-m", "fused_rnn.triton_kernels.compile_check", "--quick"],
        env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
