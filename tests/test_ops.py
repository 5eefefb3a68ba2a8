"""The C++ recurrence ops on the CPU against fused_rnn/reference.py: outputs and every gradient,
both directions, lengths, projection, fp64/fp32/bf16/fp16, gradcheck and opcheck."""

import pytest
import torch

from fused_rnn import reference
from helpers import make_lengths

ops = torch.ops.fused_rnn
F64 = torch.float64

# (T, B, H, P): odd sizes, T=1, B=1, H=1; the last two are large enough (with 2 threads) for the
# steps to split the hidden units across threads.
SHAPES = [(5, 3, 4, 4), (1, 1, 1, 1), (4, 2, 3, 3), (3, 6, 17, 17), (3, 4, 64, 64), (4, 6, 96, 96)]
# fp32 runs a step's products on the packed GEMM (cpu_common.h: forward up to 256 batch rows,
# backward up to 64) or on BLAS: hidden sizes that leave partial panels, partial 8-column blocks
# and K % 8 != 0 in the packing, on one thread's slice and on two; a partial block of rows;
# K beyond one chunk of 256 panel rows with a partial last chunk (backward of H = 70, both
# directions of H = 260); BLAS in the backward only (B = 66) and in both (B = 258). The last
# runs grad_w_hh (a transposed product) on the blocked GEMM for the LSTM (G * H >= 1024), with
# the h0 product on BLAS and the other steps' added to it; the two before it on BLAS.
FP32_SHAPES = [
    (3, 3, 21, 21),
    (2, 1, 45, 45),
    (3, 2, 70, 70),
    (3, 12, 20, 20),
    (2, 66, 9, 9),
    (2, 3, 260, 260),
    (2, 258, 5, 5),
    (5, 20, 70, 70),
    (3, 40, 90, 90),
    (3, 40, 260, 260),
]
LENGTHS = ["none", "varied"]


def random_inputs(cell, T, B, H, P, dtype, *, proj=False, bias=True, scale=0.5):
    """Op inputs (requiring grad) as a dict, and the reference function's positional args."""
    G = {"lstm": 4, "gru": 3}.get(cell, 1)
    P = P if proj else H

    def leaf(*shape, scale=scale):
        return (torch.randn(*shape, dtype=F64) * scale).to(dtype).requires_grad_()

    # recurrent weights scaled as torch.nn initialises them, so activations stay in range
    t = {"gx": leaf(T, B, G * H), "w_hh": leaf(G * H, P, scale=P**-0.5), "h0": leaf(B, P)}
    if cell == "lstm":
        t["w_hr"] = leaf(P, H) if proj else None
        t["c0"] = leaf(B, H)
    if cell == "gru":
        t["b_hh"] = leaf(G * H) if bias else None
    return t


def run_op(cell, t, lengths, reverse, save=True):
    """(y, h_n[, c_n]) of the op."""
    if cell == "lstm":
        return ops.lstm_forward(t["gx"], t["w_hh"], t["w_hr"], t["h0"], t["c0"], lengths, reverse, save)[:3]
    if cell == "gru":
        return ops.gru_forward(t["gx"], t["w_hh"], t["b_hh"], t["h0"], lengths, reverse, save)[:2]
    return getattr(ops, f"{cell}_forward")(t["gx"], t["w_hh"], t["h0"], lengths, reverse)


def run_reference(cell, t, lengths, reverse):
    if cell == "lstm":
        return reference.lstm(t["gx"], t["w_hh"], t["w_hr"], t["h0"], t["c0"], lengths, reverse)
    if cell == "gru":
        return reference.gru(t["gx"], t["w_hh"], t["b_hh"], t["h0"], lengths, reverse)
    return getattr(reference, cell)(t["gx"], t["w_hh"], t["h0"], lengths, reverse)


def outputs_and_grads(fn, t, seeds=None):
    outs = fn()
    if seeds is None:
        seeds = [torch.randn(o.shape, dtype=F64) for o in outs]
    leaves = [v for v in t.values() if v is not None]
    loss = sum((o.double() * s).sum() for o, s in zip(outs, seeds))
    grads = torch.autograd.grad(loss, leaves)
    return list(outs), list(grads), seeds


def compare(cell, shape, lengths_kind, reverse, dtype, *, proj=False, bias=True, atol=1e-10):
    T, B, H, P = shape
    lengths = make_lengths(lengths_kind, T, B)
    t = random_inputs(cell, T, B, H, max(1, P // 2), dtype, proj=proj, bias=bias)
    outs, grads, seeds = outputs_and_grads(lambda: run_op(cell, t, lengths, reverse), t)
    t64 = {k: (v.detach().double().requires_grad_() if v is not None else None) for k, v in t.items()}
    ref_outs, ref_grads, _ = outputs_and_grads(lambda: run_reference(cell, t64, lengths, reverse), t64, seeds)
    for got, want in zip(outs + grads, ref_outs + ref_grads):
        assert got.dtype == dtype and got.shape == want.shape
        torch.testing.assert_close(got.double(), want, atol=atol, rtol=10 * atol)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh", "rnn_relu"])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("lengths_kind", LENGTHS)
@pytest.mark.parametrize("reverse", [False, True])
def test_op_matches_reference_fp64(cell, shape, lengths_kind, reverse):
    torch.set_num_threads(2)
    compare(cell, shape, lengths_kind, reverse, F64)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh", "rnn_relu"])
@pytest.mark.parametrize("shape", SHAPES + FP32_SHAPES)
@pytest.mark.parametrize("reverse", [False, True])
def test_op_matches_reference_fp32(cell, shape, reverse):
    """fp32 (the vectorised exp and the packed GEMM run here) within 1e-5 of fp64."""
    torch.set_num_threads(2)
    compare(cell, shape, "varied", reverse, torch.float32, atol=2e-5)


# (T, B, H, H) for the thread counts below: the threads split the hidden units (B = 3); groups of
# rows (cpu/partition.h: at least 8 rows each, a number of groups that divides the threads):
# B = 20 with 2 threads two groups of 10 rows, with 4 and 6 threads two groups of 2 and 3
# slices of units each (a barrier per group), with 3 threads three slices of units; B = 33 with
# 2, 3 and 4 threads 2, 3 and 4 groups of unequal rows.
THREAD_SHAPES = [(7, 3, 96, 96), (7, 20, 96, 96), (5, 33, 64, 64)]


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh"])
@pytest.mark.parametrize("threads", [1, 2, 3, 4, 6])
@pytest.mark.parametrize("shape", THREAD_SHAPES, ids=str)
@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_op_thread_counts(cell, threads, shape, dtype):
    """The steps' workers run in one parallel region with a barrier between steps: any thread
    count (more threads than cores included, where the waits must yield) and any split of rows
    and units gives the reference's results, forward and backward, with varied lengths (a
    zero-length and a full-length sequence among them) and both directions."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for reverse in (False, True):
            compare(cell, shape, "varied", reverse, dtype, atol=1e-10 if dtype == F64 else 2e-5)
    finally:
        torch.set_num_threads(previous)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh"])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("batch", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("hidden", [13, 187])
def test_single_step_products(cell, threads, batch, hidden):
    """T = 1 with up to 4 rows: the forward's product reads the weight rows in place (rows_gemm,
    packed_gemm.h) instead of packing them; K % 8 != 0, column counts not a multiple of 4, one
    thread, and two slices of units (the LSTM at H = 187: a single step that large is split);
    5 rows go back to the packed product."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for reverse in (False, True):
            compare(cell, (1, batch, hidden, hidden), "varied", reverse, torch.float32, atol=2e-5)
    finally:
        torch.set_num_threads(previous)


@pytest.mark.parametrize("threads", [2, 4])
def test_lstm_projection_keeps_rows_together(threads):
    """With a projection every step has a product over all rows: the threads split only units,
    whatever the batch."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        compare("lstm", (5, 20, 48, 48), "varied", True, torch.float32, proj=True, atol=2e-5)
    finally:
        torch.set_num_threads(previous)


def test_pooled_outputs_are_ordinary_tensors():
    """Outputs of 1 MB and more come from a pool of reused blocks (csrc/cpu/output_pool.h): a
    block freed by one call and reused by the next must not carry the old results over, and a
    pooled tensor resizes like any other."""
    T, B, H = 64, 16, 128  # gates: 2 MB
    gx, w_hh = torch.randn(T, B, 4 * H), torch.randn(4 * H, H) * H**-0.5
    h0, c0 = torch.randn(B, H), torch.randn(B, H)
    first = ops.lstm_forward(gx, w_hh, None, h0, c0, None, False, True)
    expected = [t.clone() for t in first]
    del first  # its blocks go back to the pool
    gx2 = torch.randn(T, B, 4 * H)
    other = ops.lstm_forward(gx2, w_hh, None, h0, c0, None, False, True)  # reuses them
    again = ops.lstm_forward(gx, w_hh, None, h0, c0, None, False, True)
    for got, want in zip(again, expected):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    gates = other[3]
    values = gates.clone()
    gates.resize_(2 * gates.numel())  # moves to the CPU allocator's memory
    torch.testing.assert_close(gates[: values.numel()], values.flatten(), rtol=0, atol=0)
    gates.resize_(10)
    torch.testing.assert_close(gates, values.flatten()[:10], rtol=0, atol=0)


def test_empty_cpu_cache_releases_the_pool():
    import fused_rnn

    T, B, H = 64, 16, 128
    out = ops.lstm_forward(torch.randn(T, B, 4 * H), torch.randn(4 * H, H), None,
                           torch.randn(B, H), torch.randn(B, H), None, False, True)
    del out  # 2.5 MB of pooled blocks come back
    assert fused_rnn._ops._C.cpu_pool_bytes() >= T * B * 4 * H * 4
    assert fused_rnn.empty_cpu_cache() >= T * B * 4 * H * 4
    assert fused_rnn._ops._C.cpu_pool_bytes() == 0
    assert fused_rnn.empty_cpu_cache() == 0


@pytest.mark.parametrize("shape", [(5, 3, 4, 6), (4, 2, 24, 40)])
@pytest.mark.parametrize("lengths_kind", LENGTHS)
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_lstm_projection(shape, lengths_kind, reverse, dtype):
    compare("lstm", shape, lengths_kind, reverse, dtype, proj=True, atol=1e-10 if dtype == F64 else 2e-5)


@pytest.mark.parametrize("lengths_kind", LENGTHS)
def test_gru_without_bias(lengths_kind):
    compare("gru", (4, 3, 5, 5), lengths_kind, False, F64, bias=False)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh", "rnn_relu"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_op_low_precision(cell, dtype):
    """bf16/fp16 storage with fp32 gate maths: within a small multiple of the error the
    reference makes when its inputs and outputs are rounded to that dtype the same way."""
    T, B, H = 6, 3, 16
    lengths = make_lengths("varied", T, B)
    t = random_inputs(cell, T, B, H, H, dtype)
    outs, grads, seeds = outputs_and_grads(lambda: run_op(cell, t, lengths, False), t)
    t64 = {k: (v.detach().double().requires_grad_() if v is not None else None) for k, v in t.items()}
    exact = outputs_and_grads(lambda: run_reference(cell, t64, lengths, False), t64, seeds)
    # The same maths with every tensor rounded to the dtype in between: what torch.nn does in
    # that dtype, at its best.
    t_low = {k: (v.detach().requires_grad_() if v is not None else None) for k, v in t.items()}
    low = outputs_and_grads(lambda: run_reference(cell, t_low, lengths, False), t_low, seeds)
    for got, want, lowp in zip(outs + grads, exact[0] + exact[1], low[0] + low[1]):
        assert got.dtype == dtype
        ours_err = (got.double() - want).abs().max().item()
        ref_err = (lowp.double() - want).abs().max().item()
        scale = want.abs().max().item()
        assert ours_err <= 4 * ref_err + 1e-2 * scale + 1e-3, (ours_err, ref_err)


def test_forward_without_workspace_matches():
    t = random_inputs("lstm", 4, 2, 5, 5, F64)
    with_ws = ops.lstm_forward(t["gx"], t["w_hh"], None, t["h0"], t["c0"], None, False, True)
    without = ops.lstm_forward(t["gx"], t["w_hh"], None, t["h0"], t["c0"], None, False, False)
    for a, b in zip(with_ws[:3], without[:3]):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    assert without[3].numel() == 0 and without[4].numel() == 0
    assert with_ws[3].shape == (4, 2, 20) and with_ws[4].shape == (4, 2, 5)


def test_backward_without_workspace_raises():
    t = random_inputs("gru", 3, 2, 4, 4, F64)
    y, h_n, _ = ops.gru_forward(t["gx"], t["w_hh"], t["b_hh"], t["h0"], None, False, False)
    with pytest.raises(RuntimeError, match="save_for_backward=False"):
        y.sum().backward()


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh", "rnn_relu"])
def test_cell_ops_match_reference(cell):
    """fused_rnn::{cell}_cell: one step from the input, as the cell modules of the CPU backend
    run it, against the reference's T = 1 step on the projection; every gradient, with and
    without biases."""
    G = {"lstm": 4, "gru": 3}.get(cell, 1)
    B, I, H = 3, 5, 4
    for bias in (True, False):
        torch.manual_seed(bias)
        leaves = {"input": torch.randn(B, I, dtype=F64), "h": torch.randn(B, H, dtype=F64)}
        if cell == "lstm":
            leaves["c"] = torch.randn(B, H, dtype=F64)
        leaves["w_ih"] = torch.randn(G * H, I, dtype=F64) * 0.5
        leaves["w_hh"] = torch.randn(G * H, H, dtype=F64) * 0.5
        if bias:
            leaves["b_ih"], leaves["b_hh"] = torch.randn(G * H, dtype=F64), torch.randn(G * H, dtype=F64)
        for leaf in leaves.values():
            leaf.requires_grad_()
        b_ih, b_hh = leaves.get("b_ih"), leaves.get("b_hh")
        states = (leaves["h"], leaves["c"]) if cell == "lstm" else (leaves["h"],)
        ours = getattr(ops, f"{cell}_cell")(leaves["input"], *states, leaves["w_ih"], leaves["w_hh"], b_ih, b_hh)
        ours = ours if isinstance(ours, tuple) else (ours,)
        bias_in = None if b_ih is None else (b_ih if cell == "gru" else b_ih + b_hh)
        gx = torch.nn.functional.linear(leaves["input"], leaves["w_ih"], bias_in).unsqueeze(0)
        t = {"gx": gx, "w_hh": leaves["w_hh"], "h0": leaves["h"], "w_hr": None,
             "c0": leaves.get("c"), "b_hh": b_hh}
        theirs = run_reference(cell, t, None, False)[1:]
        theirs = tuple(x for x in theirs if x is not None)
        seeds = [torch.randn_like(x) for x in ours]
        grads = torch.autograd.grad(sum((o * s).sum() for o, s in zip(ours, seeds)), list(leaves.values()))
        ref_grads = torch.autograd.grad(sum((o * s).sum() for o, s in zip(theirs, seeds)), list(leaves.values()))
        for a, b in zip(list(ours) + list(grads), list(theirs) + list(ref_grads)):
            torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)
    with pytest.raises(RuntimeError, match="give both b_ih and b_hh"):
        getattr(ops, f"{cell}_cell")(leaves["input"], *states, leaves["w_ih"], leaves["w_hh"],
                                     torch.zeros(G * H, dtype=F64), None)


def test_backward_ops_are_not_differentiable():
    """A backward op called directly where it would record a graph is refused (its kernels are
    not differentiable; torch's fallback would only warn and give wrong second derivatives);
    the forward ops' autograd never records one through it (see test_gradgradcheck)."""
    t = random_inputs("rnn_tanh", 3, 2, 4, 4, F64)
    y, _ = run_op("rnn_tanh", t, None, False)
    with pytest.raises(RuntimeError, match="rnn_tanh_backward is not differentiable"):
        ops.rnn_tanh_backward(torch.ones_like(y), None, t["w_hh"], t["h0"], y, None, False)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh", "rnn_relu"])
@pytest.mark.parametrize("reverse", [False, True])
def test_unused_outputs_get_no_gradient(cell, reverse):
    """Only h_n used (grad_y is None): the ops take None for the gradients of unused outputs."""
    t = random_inputs(cell, 4, 3, 5, 5, F64)
    t64 = {k: (v.detach().clone().requires_grad_() if v is not None else None) for k, v in t.items()}
    lengths = make_lengths("varied", 4, 3)
    h_n = run_op(cell, t, lengths, reverse)[1]
    h_ref = run_reference(cell, t64, lengths, reverse)[1]
    leaves = [v for v in t.values() if v is not None]
    leaves64 = [v for v in t64.values() if v is not None]
    for a, b in zip(torch.autograd.grad(h_n.sum(), leaves), torch.autograd.grad(h_ref.sum(), leaves64)):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)


# ---------------------------------------------------------------------------------------------
# gradcheck (fp64) and opcheck
# ---------------------------------------------------------------------------------------------


#: first derivatives, and second ones: a backward with create_graph=True runs the
#: differentiable backward (fused_rnn/reference_backward.py), whose gradients of y and the
#: workspace come back to the forward op's autograd
CHECKS = {"gradcheck": torch.autograd.gradcheck, "gradgradcheck": torch.autograd.gradgradcheck}


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh", "rnn_relu"])
@pytest.mark.parametrize("lengths_kind", LENGTHS)
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("check", list(CHECKS))
def test_gradcheck(cell, lengths_kind, reverse, check):
    T, B, H = 3, 3, 2
    lengths = make_lengths(lengths_kind, T, B)
    t = random_inputs(cell, T, B, H, H, F64)
    names = [k for k, v in t.items() if v is not None]

    def fn(*leaves):
        values = dict(t, **dict(zip(names, leaves)))
        return tuple(run_op(cell, values, lengths, reverse))

    CHECKS[check](fn, [t[k] for k in names])


@pytest.mark.parametrize("check", list(CHECKS))
def test_gradcheck_lstm_projection(check):
    lengths = torch.tensor([3, 1])
    t = random_inputs("lstm", 3, 2, 3, 2, F64, proj=True)
    names = [k for k, v in t.items() if v is not None]

    def fn(*leaves):
        values = dict(t, **dict(zip(names, leaves)))
        return tuple(run_op("lstm", values, lengths, True))

    CHECKS[check](fn, [t[k] for k in names])


def test_gradgradcheck_linear():
    x = torch.randn(2, 3, 4, dtype=F64, requires_grad=True)
    w = torch.randn(5, 4, dtype=F64, requires_grad=True)
    b = torch.randn(5, dtype=F64, requires_grad=True)
    torch.autograd.gradgradcheck(ops.linear, (x, w, b))
    torch.autograd.gradgradcheck(lambda x, w: ops.linear(x, w, None), (x, w))


def _opcheck_samples():
    T, B, H = 3, 2, 4
    lengths = torch.tensor([3, 1])
    samples = []
    for requires_grad in (False, True):
        for lens in (None, lengths):
            def leaf(*shape):
                return torch.randn(*shape, dtype=torch.float32, requires_grad=requires_grad)

            samples.append(("lstm_forward", (leaf(T, B, 4 * H), leaf(4 * H, H), None, leaf(B, H), leaf(B, H), lens, False, requires_grad)))
            samples.append(("lstm_forward", (leaf(T, B, 4 * H), leaf(4 * H, 3), leaf(3, H), leaf(B, 3), leaf(B, H), lens, True, requires_grad)))
            samples.append(("gru_forward", (leaf(T, B, 3 * H), leaf(3 * H, H), leaf(3 * H), leaf(B, H), lens, True, requires_grad)))
            samples.append(("rnn_tanh_forward", (leaf(T, B, H), leaf(H, H), leaf(B, H), lens, False)))
            samples.append(("rnn_relu_forward", (leaf(T, B, H), leaf(H, H), leaf(B, H), lens, True)))
    # backward ops, from a real forward
    gx, w, h0, c0 = torch.randn(T, B, 4 * H), torch.randn(4 * H, H), torch.randn(B, H), torch.randn(B, H)
    y, h_n, c_n, gates, cs = ops.lstm_forward(gx, w, None, h0, c0, lengths, False, True)
    samples.append(("lstm_backward", (torch.randn_like(y), None, torch.randn_like(c_n), w, None, h0, c0, y, gates, cs, lengths, False)))
    gx3 = torch.randn(T, B, 3 * H)
    w3 = torch.randn(3 * H, H)
    y, h_n, gates = ops.gru_forward(gx3, w3, None, h0, None, True, True)
    samples.append(("gru_backward", (torch.randn_like(y), torch.randn_like(h_n), w3, h0, y, gates, None, True)))
    for act in ("tanh", "relu"):
        gx1, w1 = torch.randn(T, B, H), torch.randn(H, H)
        y, h_n = getattr(ops, f"rnn_{act}_forward")(gx1, w1, h0, lengths, False)
        samples.append((f"rnn_{act}_backward", (None, torch.randn_like(h_n), w1, h0, y, lengths, False)))
    # a differentiable backward op (the forward ops' samples that require grad run those of
    # the LSTM and GRU: opcheck gives their workspace outputs gradients too)
    y, h_n = ops.rnn_relu_forward(gx1, w1, h0, None, True)
    samples.append(("rnn_relu_backward_differentiable", (torch.randn_like(y), torch.randn_like(h_n), w1, h0, y, None, True)))
    # the cells' one-step ops (linear + the recurrence, composed in C++), with and without biases
    I = 5
    for requires_grad in (False, True):
        def leaf(*shape):
            return torch.randn(*shape, dtype=torch.float32, requires_grad=requires_grad)

        for bias in (True, False):
            for cell, G in (("lstm", 4), ("gru", 3), ("rnn_tanh", 1), ("rnn_relu", 1)):
                states = (leaf(B, H), leaf(B, H)) if cell == "lstm" else (leaf(B, H),)
                biases = (leaf(G * H), leaf(G * H)) if bias else (None, None)
                samples.append((f"{cell}_cell", (leaf(B, I), *states, leaf(G * H, I), leaf(G * H, H), *biases)))
    return samples


@pytest.mark.parametrize("name, args", _opcheck_samples(), ids=lambda v: v if isinstance(v, str) else "")
def test_opcheck(name, args):
    torch.library.opcheck(getattr(ops, name).default, args)
