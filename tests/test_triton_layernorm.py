"""The Triton ops of the layer-normalised LSTM and GRU with zoneout
(fused_rnn::layernorm_{lstm,gru}_{forward,backward}_triton) against the CPU ops and
fused_rnn/reference.py, and the modules with backend="triton" against backend="cpu".

Without a GPU the kernels run in the Triton interpreter on CPU tensors (tests/conftest.py sets
TRITON_INTERPRET=1 first); with neither, this module is skipped. Sizes are small and odd; H = 70
makes every pass run several chunks (32 columns, products in 64-column slices).
"""

from __future__ import annotations

import pytest
import torch

from helpers import triton_test_device

DEVICE = triton_test_device()
INTERPRET = DEVICE.type == "cpu"

import fused_rnn  # noqa: E402
import fused_rnn.triton_kernels  # noqa: E402,F401  (registers the ops)
from fused_rnn import testing  # noqa: E402
from fused_rnn.triton_kernels import _layernorm  # noqa: E402
from helpers import assert_compile_check_types_pointers_as_launched  # noqa: E402
from helpers import layernorm_op_inputs, make_lengths  # noqa: E402
from helpers import outputs_and_leaf_grads as outputs_and_grads  # noqa: E402
from helpers import run_layernorm_op as run_op  # noqa: E402
from helpers import run_layernorm_reference as run_reference  # noqa: E402

OPS = torch.ops.fused_rnn
F64 = torch.float64


def op_inputs(cell, T, B, H, dtype, *, zoneout, bias=True, seed=0):
    """The op's differentiable tensors (fp64 draws from a generator seeded with ``seed``, on
    DEVICE), its zoneout masks and probabilities."""
    return layernorm_op_inputs(cell, T, B, H, dtype, zoneout=zoneout, bias=bias, device=DEVICE,
                               generator=torch.Generator().manual_seed(seed))


def n_states(cell):
    return 3 if cell == "lstm" else 2


def as_fp64(t):
    return {k: None if v is None else v.detach().double().requires_grad_() for k, v in t.items()}


def on_cpu(t):
    return {k: None if v is None else v.detach().cpu().requires_grad_() for k, v in t.items()}


def op_outputs_and_grads(suffix, cell, t, masks, probabilities, lengths, reverse, seeds):
    """outputs_and_grads of the forward op ``suffix`` ("_triton", or "" for the CPU op, which
    runs on a CPU copy of the inputs)."""
    if suffix == "":
        t = on_cpu(t)
        masks = {k: None if m is None else m.cpu() for k, m in masks.items()}
        seeds = [s.cpu() for s in seeds]
    return outputs_and_grads(
        lambda: run_op(suffix, cell, t, masks, probabilities, lengths, reverse)[:n_states(cell)],
        t, seeds)


def output_seeds(T, B, H):
    gen = torch.Generator().manual_seed(1)
    return [torch.randn(T, B, H, dtype=F64, generator=gen).to(DEVICE)] + [
        torch.randn(B, H, dtype=F64, generator=gen).to(DEVICE) for _ in range(2)]


def names_of(cell, t):
    return ["y", "h_n", "c_n"][: n_states(cell)] + [k for k, v in t.items() if v is not None]


# ---------------------------------------------------------------------------------------------
# The ops against the CPU ops and the reference, fp64
# ---------------------------------------------------------------------------------------------

# (T, B, H, lengths, reverse, zoneout): every option both ways at small odd sizes, B = 20 (two
# programs, the second one's tile part padding), and H = 70 (several chunks in every pass) with
# lengths, zoneout masks and each direction.
FP64_CASES = [
    (5, 3, 7, "none", False, "none"),
    (3, 20, 5, "varied", True, "mask"),
    (5, 3, 7, "varied", False, "mask"),
    (5, 3, 7, "varied", True, "mask"),
    (5, 3, 7, "none", True, "expectation"),
    (4, 3, 7, "varied", True, "none"),
    (1, 1, 1, "none", False, "expectation"),
    (3, 3, 70, "varied", False, "mask"),
    (3, 3, 70, "varied", True, "expectation"),
]


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("case", FP64_CASES, ids=str)
def test_op_matches_cpu_op_and_reference_fp64(cell, case):
    T, B, H, lengths_kind, reverse, zoneout = case
    t, masks, probabilities = op_inputs(cell, T, B, H, F64, zoneout=zoneout)
    lengths = make_lengths(lengths_kind, T, B)
    seeds = output_seeds(T, B, H)
    ours = op_outputs_and_grads("_triton", cell, t, masks, probabilities, lengths, reverse, seeds)
    theirs = outputs_and_grads(
        lambda: run_reference(cell, t, masks, probabilities, lengths, reverse), t, seeds)
    cpu = op_outputs_and_grads("", cell, t, masks, probabilities, lengths, reverse, seeds)
    for name, a, b, c in zip(names_of(cell, t), ours, theirs, cpu, strict=True):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10, msg=f"{name} vs reference")
        torch.testing.assert_close(a.cpu(), c, atol=1e-10, rtol=1e-10, msg=f"{name} vs CPU op")


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("reverse", [False, True])
def test_workspace_matches_cpu_op(cell, reverse):
    """The saved workspace is the CPU op's (zeros on padded steps, but cs which keeps the
    state), so each backward may consume the other's."""
    T, B, H = 5, 3, 7
    t, masks, probabilities = op_inputs(cell, T, B, H, F64, zoneout="mask")
    lengths = make_lengths("varied", T, B)
    with torch.no_grad():
        ours = run_op("_triton", cell, t, masks, probabilities, lengths, reverse)
        theirs = run_op("", cell, on_cpu(t), {k: None if m is None else m.cpu()
                                              for k, m in masks.items()},
                        probabilities, lengths, reverse)
    for index, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        torch.testing.assert_close(a.cpu(), b, atol=1e-12, rtol=1e-12, msg=f"output {index}")


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_forward_without_workspace(cell):
    T, B, H = 3, 2, 5
    t, masks, probabilities = op_inputs(cell, T, B, H, F64, zoneout="expectation")
    with torch.no_grad():
        saved = run_op("_triton", cell, t, masks, probabilities, None, False)
        unsaved = run_op("_triton", cell, t, masks, probabilities, None, False, save=False)
    for a, b in zip(saved[:n_states(cell)], unsaved[:n_states(cell)], strict=True):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    assert all(w.numel() == 0 for w in unsaved[n_states(cell):])


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_gradients_of_final_states_only_and_no_bias(cell):
    """Without a gradient of y (the backward's HAS_DY off), the GRU without b_hh, eps large."""
    T, B, H = 4, 3, 6
    t, masks, probabilities = op_inputs(cell, T, B, H, F64, zoneout="mask", bias=False)
    lengths = make_lengths("varied", T, B)
    seeds = output_seeds(T, B, H)
    n = n_states(cell)

    def states_only(fn):
        return lambda: fn()[1:n]

    ours = outputs_and_grads(states_only(
        lambda: run_op("_triton", cell, t, masks, probabilities, lengths, True, eps=0.5)), t,
        seeds[1:])
    theirs = outputs_and_grads(states_only(
        lambda: run_reference(cell, t, masks, probabilities, lengths, True, eps=0.5)), t,
        seeds[1:])
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_empty_sequence(cell):
    """T = 0: no output, the initial states come out and their gradients go through."""
    T, B, H = 0, 2, 5
    t, masks, probabilities = op_inputs(cell, T, B, H, F64, zoneout="none")
    seeds = output_seeds(T, B, H)
    ours = op_outputs_and_grads("_triton", cell, t, masks, probabilities, None, False, seeds)
    theirs = op_outputs_and_grads("", cell, t, masks, probabilities, None, False, seeds)
    for name, a, b in zip(names_of(cell, t), ours, theirs, strict=True):
        torch.testing.assert_close(a.cpu(), b, atol=0, rtol=0, msg=name)


# ---------------------------------------------------------------------------------------------
# fp32, bf16 and fp16
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("shape", [(4, 3, 9), (3, 2, 70)], ids=str)
def test_op_fp32(cell, shape):
    T, B, H = shape
    t, masks, probabilities = op_inputs(cell, T, B, H, torch.float32, zoneout="mask")
    lengths = make_lengths("varied", T, B)
    seeds = output_seeds(T, B, H)
    ours = outputs_and_grads(
        lambda: run_op("_triton", cell, t, masks, probabilities, lengths, False)[:n_states(cell)],
        t, seeds)
    t64 = as_fp64(t)
    exact = outputs_and_grads(
        lambda: run_reference(cell, t64, masks, probabilities, lengths, False), t64, seeds)
    for name, a, b in zip(names_of(cell, t), ours, exact, strict=True):
        assert a.dtype == torch.float32, name
        torch.testing.assert_close(a.double(), b, atol=2e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_op_low_precision(cell, dtype):
    """bf16/fp16 storage, fp32 gate maths: against the fp64 reference, within the error bound
    of fused_rnn.testing (a few times the CPU op's own error in that dtype, plus a floor). The
    kernels round the recurrent products' operands to it every step (the CPU op does not)."""
    T, B, H = 4, 3, 12
    t, masks, probabilities = op_inputs(cell, T, B, H, dtype, zoneout="mask")
    lengths = make_lengths("varied", T, B)
    seeds = output_seeds(T, B, H)
    ours = op_outputs_and_grads("_triton", cell, t, masks, probabilities, lengths, True, seeds)
    cpu = op_outputs_and_grads("", cell, t, masks, probabilities, lengths, True, seeds)
    t64 = as_fp64(t)
    exact = outputs_and_grads(
        lambda: run_reference(cell, t64, masks, probabilities, lengths, True), t64, seeds)
    for name, a, c, e in zip(names_of(cell, t), ours, cpu, exact, strict=True):
        assert a.dtype == dtype, name
        # floor: one step of the dtype at the result's scale (the final rounding of a sum may
        # land a step away where the CPU op's lands next to the exact value)
        bound = testing.low_precision_bound(testing.max_abs_error(c, e.cpu()), e,
                                            floor=torch.finfo(dtype).eps)
        error = testing.max_abs_error(a, e)
        assert error <= bound, f"{name}: error {error:.3e} > bound {bound:.3e}"


# ---------------------------------------------------------------------------------------------
# The modules end to end
# ---------------------------------------------------------------------------------------------


def _perturbed(module):
    """γ and β away from 1 and 0, so that their gradients and roles are tested."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.startswith(("gamma", "beta")):
                p.add_(torch.randn_like(p) * 0.3)
    return module


@pytest.mark.parametrize("cell, options, training", [
    ("lstm", dict(num_layers=2, bidirectional=True, zoneout=0.25, zoneout_cell=0.15), True),
    ("lstm", dict(zoneout=0.25, zoneout_cell=0.15, eps=1e-3), False),
    ("gru", dict(num_layers=2, bidirectional=True, batch_first=True, zoneout=0.25), True),
    ("gru", dict(bias=False, zoneout=0.3), False),
])
def test_module_triton_backend_matches_cpu(cell, options, training):
    T, B, I, H = 4, 3, 5, 7
    torch.manual_seed(6)
    cls = fused_rnn.LayerNormLSTM if cell == "lstm" else fused_rnn.LayerNormGRU
    cpu_module = _perturbed(cls(I, H, dtype=F64, backend="cpu", **options)).train(training)
    module = cls(I, H, dtype=F64, device=DEVICE, backend="triton", **options).train(training)
    module.load_state_dict(cpu_module.state_dict())
    x = torch.randn(T, B, I, dtype=F64)
    if options.get("batch_first"):
        x = x.transpose(0, 1).contiguous()
    lengths = make_lengths("varied", T, B)
    results = []
    for layer, device in ((module, DEVICE), (cpu_module, torch.device("cpu"))):
        inputs = x.to(device).requires_grad_()
        torch.manual_seed(7)  # the same zoneout masks
        output, state = layer(inputs, lengths=lengths)
        outputs = [output] + (list(state) if cell == "lstm" else [state])
        gen = torch.Generator().manual_seed(8)
        loss = sum((o.cpu() * torch.randn(o.shape, generator=gen, dtype=F64)).sum()
                   for o in outputs)
        results.append([o.detach().cpu() for o in outputs] + [
            g.cpu() for g in torch.autograd.grad(loss, [inputs] + list(layer.parameters()))])
    names = ["output", "h_n", "c_n"][: n_states(cell)] + ["x"] + [
        n for n, _ in module.named_parameters()]
    for name, ours, theirs in zip(names, *results, strict=True):
        torch.testing.assert_close(ours, theirs, atol=1e-10, rtol=1e-9, msg=name)


def test_backend_cuda_maps_to_triton_and_auto_stays_on_the_reference():
    """On CUDA tensors backend="cuda" runs these Triton ops; "auto" keeps the reference loop
    there until a GPU run has confirmed them."""
    from fused_rnn import layernorm_functional

    assert layernorm_functional.auto_backend_name(torch.device("cuda")) == "reference"
    if DEVICE.type == "cpu":
        assert layernorm_functional.available("triton", "cpu")
        assert layernorm_functional.resolve("triton", "cpu").name == "triton"
    else:
        assert layernorm_functional.resolve("cuda", DEVICE).name == "triton"


# ---------------------------------------------------------------------------------------------
# GPU only (skipped without one): many programs and chunks, torch.compile
# ---------------------------------------------------------------------------------------------


@pytest.mark.cuda
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_gpu_many_programs_and_chunks_fp32(cell):
    """3 programs, H not a multiple of the chunks, 20 steps: the barriers between a program's
    passes are what keeps it right on a GPU (the interpreter runs a program's threads as one)."""
    if INTERPRET:
        pytest.skip("needs a GPU")
    T, B, H = 20, 40, 300
    t, masks, probabilities = op_inputs(cell, T, B, H, torch.float32, zoneout="mask")
    lengths = make_lengths("varied", T, B)
    seeds = output_seeds(T, B, H)
    ours = op_outputs_and_grads("_triton", cell, t, masks, probabilities, lengths, True, seeds)
    theirs = op_outputs_and_grads("", cell, t, masks, probabilities, lengths, True, seeds)
    for name, a, b in zip(names_of(cell, t), ours, theirs, strict=True):
        torch.testing.assert_close(a.cpu(), b, atol=1e-4, rtol=1e-3, msg=name)


@pytest.mark.cuda
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_gpu_torch_compile_fullgraph(cell):
    """The module with backend="triton" under torch.compile(fullgraph=True), forward and
    backward, against eager (eval: zoneout's expectation, no random masks)."""
    if INTERPRET:
        pytest.skip("needs a GPU")
    torch.manual_seed(11)
    cls = fused_rnn.LayerNormLSTM if cell == "lstm" else fused_rnn.LayerNormGRU
    module = cls(16, 64, num_layers=2, zoneout=0.2, device=DEVICE, dtype=torch.bfloat16,
                 backend="triton").eval()
    x = torch.randn(8, 20, 16, device=DEVICE, dtype=torch.bfloat16)

    def value_and_grads(fn):
        module.zero_grad()
        inputs = x.clone().requires_grad_()
        value = fn(inputs)[0].float().square().sum()
        value.backward()
        return value.detach(), [inputs.grad] + [p.grad for p in module.parameters()]

    eager_value, eager_grads = value_and_grads(module)
    compiled_value, compiled_grads = value_and_grads(torch.compile(module, fullgraph=True))
    torch.testing.assert_close(compiled_value, eager_value, rtol=1e-3, atol=1e-3)
    for a, b in zip(compiled_grads, eager_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-2, atol=1e-2)


# ---------------------------------------------------------------------------------------------
# The op contract: errors, opcheck, tile sizes
# ---------------------------------------------------------------------------------------------


def _error_of(fn):
    with pytest.raises(RuntimeError) as error:
        fn()
    return str(error.value)


@pytest.mark.parametrize("bad", ["mask dtype", "mask shape", "zoneout", "eps", "gamma_hh",
                                 "gamma_ih", "lengths"])
def test_argument_errors_as_cpu_op(bad):
    """The CPU op's conditions and messages (with the op's own name), before any kernel."""
    T, B, H = 2, 2, 3
    args = dict(xw=torch.randn(T, B, 3 * H), g_ih=torch.ones(3 * H), w=torch.randn(3 * H, H),
                g=torch.ones(3 * H), b=None, h0=torch.zeros(B, H), mask=None, p=0.0,
                lengths=None, eps=1e-5)
    args.update({
        "mask dtype": dict(mask=torch.zeros(T, B, H)),
        "mask shape": dict(mask=torch.zeros(T, B, H + 1, dtype=torch.bool)),
        "zoneout": dict(p=1.0),
        "eps": dict(eps=0.0),
        "gamma_hh": dict(g=torch.ones(H)),
        "gamma_ih": dict(g_ih=torch.ones(H)),
        "lengths": dict(lengths=torch.tensor([3, 1])),
    }[bad])

    def call(suffix):
        a = dict(args)
        if suffix:
            a = {k: v.to(DEVICE) if isinstance(v, torch.Tensor) and k != "lengths" else v
                 for k, v in a.items()}
        op = getattr(OPS, f"layernorm_gru_forward{suffix}")
        return lambda: op(a["xw"], a["g_ih"], None, a["w"], a["g"], a["b"], a["h0"], a["mask"],
                          a["p"], a["lengths"], False, a["eps"], False)

    ours, theirs = _error_of(call("_triton")), _error_of(call(""))
    ours = ours.replace("layernorm_gru_forward_triton", "layernorm_gru_forward")
    if bad == "mask dtype":  # dtypes by their Python names (torch.float32), as in _checks.py
        ours, theirs = ours.split(", got")[0], theirs.split(", got")[0]
    assert ours == theirs


def _opcheck(op, args):
    # Under the interpreter graph capture of the ops is refused (see test_triton_ops.py).
    if INTERPRET:
        torch.library.opcheck(op, args, test_utils=(
            "test_schema", "test_autograd_registration", "test_faketensor"))
    else:
        torch.library.opcheck(op, args)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_opcheck(cell):
    T, B, H = 3, 2, 4
    t, masks, probabilities = op_inputs(cell, T, B, H, torch.float32, zoneout="mask")
    lengths = torch.tensor([3, 1])
    if cell == "lstm":
        args = (t["xw"], t["gamma_ih"], t["bias"], t["w_hh"], t["gamma_hh"], t["gamma_c"],
                t["beta_c"], t["h0"], t["c0"], masks["h"], None, 0.0, 0.2, lengths, False, 1e-5,
                True)
    else:
        args = (t["xw"], t["gamma_ih"], t["b_ih"], t["w_hh"], t["gamma_hh"], t["b_hh"], t["h0"],
                masks["h"], 0.0, lengths, True, 1e-5, True)
    forward = getattr(OPS, f"layernorm_{cell}_forward_triton")
    _opcheck(forward, args)
    detached = [a.detach() if isinstance(a, torch.Tensor) else a for a in args]
    with torch.no_grad():
        out = forward(*detached)
    if cell == "lstm":
        y, h_n, c_n, *workspace = out
        backward_args = (torch.randn_like(y), None, torch.randn_like(c_n), *detached[:9],
                         masks["h"], None, 0.0, 0.2, y, *workspace, lengths, False)
    else:
        y, h_n, *workspace = out
        backward_args = (None, torch.randn_like(h_n), *detached[:7], masks["h"], 0.0, y,
                         *workspace, lengths, True)
    _opcheck(getattr(OPS, f"layernorm_{cell}_backward_triton"), backward_args)


def test_tile_sizes_do_not_grow_with_h():
    small, large = _layernorm.choose_blocks(7), _layernorm.choose_blocks(4096)
    assert (small.block_b, small.block_n, small.block_k) == (16, 16, 16)
    assert (large.block_b, large.block_n, large.block_k) == (16, 32, 64)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64], ids=["bf16", "fp64"])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_compile_check_types_pointers_as_launched(cell, dtype, monkeypatch):
    """The kernels compile_check compiles take the pointer types the launches pass (states,
    scratch rows and per-step gradients in the gate-maths dtype, zoneout masks as bytes)."""
    T, B, H = 3, 2, 16

    def run():
        t, masks, probabilities = op_inputs(cell, T, B, H, dtype, zoneout="mask")
        y, h_n, *rest = run_op("_triton", cell, t, masks, probabilities,
                               make_lengths("varied", T, B), False)
        leaves = [v for v in t.values() if v is not None]
        torch.autograd.grad([y, h_n], leaves, [torch.ones_like(y), torch.ones_like(h_n)])

    assert_compile_check_types_pointers_as_launched(monkeypatch, run, dtype)
