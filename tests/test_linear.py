"""fused_rnn::linear, the CPU backend's input projection, and its backward: the blocked GEMM
(csrc/cpu/blocked_gemm.h: fp32, from 256 rows) and the BLAS fallback against fp64, every gradient
and output mask, autograd, gradcheck, opcheck and the argument checks."""

import math

import pytest
import torch
import torch.nn.functional as F

import fused_rnn

ops = torch.ops.fused_rnn

# (rows, in_features, out_features). Blocked GEMM: a partial sliver of 4 rows (257); last panels
# of 24 columns (72), 16 (88 = 3 * 24 + 16), 10 and 20 (edge tiles: 130, 260); k not a multiple
# of 8 (70) and beyond one block of 256 with a partial block (600); so many k that b is packed
# in two column blocks (5000 x 260), or in blocks of k (44000: more than 2^20 / 24); several
# blocks of 128 rows per thread (1000). grad_w has a transposed a, on the blocked GEMM from 1024
# out_features (1030, with a partial sliver), whose rows of k are packed four at a time (303
# rows leave 3 in the last block); grad_b is summed from its packed blocks: once per block of
# k, and only for the first of several column blocks of x (2100 > 2048 in_features). From 8 to
# 255 rows the 2 threads split the columns instead of the rows: 100 and 101 rows (a partial
# sliver) by 512 and 130 columns (partial panels of 8 and 10 at the second thread's end), 9 rows
# by 100. A last panel of at most 8 columns (512, 100, 104) runs two slivers per tile: 9 rows
# leave one sliver of 1 row after a pair, 133 rows (128 + 5) a pair whose second sliver has 1
# row. BLAS: below 8 rows (5), or a dimension below 64 (300 x 5).
SHAPES = [
    (300, 70, 1030),
    (303, 70, 1030),
    (260, 2100, 1024),
    (257, 70, 130),
    (300, 600, 72),
    (1000, 256, 88),
    (256, 5000, 260),
    (256, 44000, 64),
    (100, 128, 512),
    (101, 70, 130),
    (9, 256, 100),
    (133, 70, 104),
    (5, 128, 512),
    (300, 5, 70),
    (300, 70, 5),
]


def make(rows, i, o, dtype=torch.float32, bias=True):
    torch.manual_seed(rows + 7 * i + 13 * o)
    x = torch.randn(rows, i, dtype=dtype)
    w = torch.randn(o, i, dtype=dtype) / math.sqrt(i)
    b = torch.randn(o, dtype=dtype) if bias else None
    return x, w, b


def close(actual, expected, k):
    # fp32 sums of k products of unit-size terms
    torch.testing.assert_close(actual.double(), expected, rtol=1e-5, atol=2e-6 * math.sqrt(k) + 1e-6)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("bias", [True, False])
def test_linear_fp32_against_fp64(shape, bias):
    torch.set_num_threads(2)
    rows, i, o = shape
    x, w, b = make(rows, i, o, bias=bias)
    y = ops.linear(x, w, b)
    expected = F.linear(x.double(), w.double(), b.double() if bias else None)
    close(y, expected, i)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_linear_backward_fp32_against_fp64(shape):
    torch.set_num_threads(2)
    rows, i, o = shape
    x, w, _ = make(rows, i, o)
    g = torch.randn(rows, o)
    grad_x, grad_w, grad_b = ops.linear_backward(g, x, w, [True, True, True])
    g64, x64, w64 = g.double(), x.double(), w.double()
    close(grad_x, g64 @ w64, o)
    close(grad_w, g64.t() @ x64, rows)
    close(grad_b, g64.sum(0), rows)


@pytest.mark.parametrize("threads", [1, 3])
def test_linear_thread_counts(threads):
    """Threads take whole slivers of rows (or whole panels of columns, with few rows); a thread
    count that does not divide them (grad_w and grad_b: 1030 out_features on the transposed
    path, each thread summing its own rows)."""
    torch.set_num_threads(threads)
    try:
        x, w, b = make(1001, 96, 100)
        close(ops.linear(x, w, b), F.linear(x.double(), w.double(), b.double()), 96)
        g = torch.randn(1001, 100)
        _, grad_w, _ = ops.linear_backward(g, x, w, [False, True, False])
        close(grad_w, g.double().t() @ x.double(), 1001)
        x, w, b = make(101, 70, 150)  # columns split across the threads
        close(ops.linear(x, w, b), F.linear(x.double(), w.double(), b.double()), 70)
        g = torch.randn(101, 150)
        grad_x, _, _ = ops.linear_backward(g, x, w, [True, False, False])
        close(grad_x, g.double() @ w.double(), 150)
        x, w, _ = make(1001, 96, 1030)
        g = torch.randn(1001, 1030)
        _, grad_w, grad_b = ops.linear_backward(g, x, w, [False, True, True])
        close(grad_w, g.double().t() @ x.double(), 1001)
        close(grad_b, g.double().sum(0), 1001)
    finally:
        torch.set_num_threads(2)


@pytest.mark.parametrize("mask", [[True, False, False], [False, True, False], [False, False, True]])
@pytest.mark.parametrize("out_features", [80, 1030], ids=["blas", "blocked"])
def test_linear_backward_output_mask(mask, out_features):
    """grad_b alone, and grad_w without grad_b, on both paths of grad_w."""
    x, w, _ = make(300, 70, out_features)
    g = torch.randn(300, out_features)
    grads = ops.linear_backward(g, x, w, mask)
    expected = (g @ w, g.t() @ x, g.sum(0))
    for grad, wanted, reference in zip(grads, mask, expected):
        if wanted:
            torch.testing.assert_close(grad, reference, rtol=1e-5, atol=1e-4)
        else:
            assert grad.numel() == 0


def test_linear_autograd_on_strided_3d_input():
    """[T, B, I] input from a batch-first transpose (not contiguous), as the layers pass it."""
    x_bf = torch.randn(20, 15, 70, requires_grad=True)  # [B, T, I]
    x = x_bf.transpose(0, 1)
    w = torch.randn(96, 70, requires_grad=True)
    b = torch.randn(96, requires_grad=True)
    y = ops.linear(x, w, b)
    assert y.shape == (15, 20, 96)
    grad = torch.randn_like(y)
    y.backward(grad)
    got = (x_bf.grad, w.grad, b.grad)
    x_bf.grad = w.grad = b.grad = None
    F.linear(x, w, b).backward(grad)
    for actual, expected in zip(got, (x_bf.grad, w.grad, b.grad)):
        torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("wanted", [(True, False, False), (False, True, True), (False, False, True),
                                    (True, True, False)], ids=str)
def test_linear_autograd_computes_only_wanted_gradients(wanted):
    """Autograd (csrc/autograd.cpp) asks linear_backward only for the gradients of inputs that
    require grad; the others stay None."""
    x, w, b = make(300, 70, 1030)
    leaves = [t.requires_grad_(want) for t, want in zip((x, w, b), wanted)]
    grad = torch.randn(300, 1030)
    ops.linear(x, w, b).backward(grad)
    expected = (grad @ w, grad.t() @ x, grad.sum(0))
    for leaf, want, reference in zip(leaves, wanted, expected):
        if want:
            torch.testing.assert_close(leaf.grad, reference.detach(), rtol=1e-5, atol=1e-3)
        else:
            assert leaf.grad is None


def test_ops_record_no_graph_without_grad():
    x, w, b = (t.requires_grad_() for t in make(5, 4, 3))
    with torch.no_grad():
        assert ops.linear(x, w, b).grad_fn is None
    assert ops.linear(x, w, b).grad_fn is not None
    assert ops.linear(x.detach(), w.detach(), None).grad_fn is None


def test_linear_bfloat16_and_float64_use_blas():
    x, w, b = make(300, 70, 80, dtype=torch.bfloat16)
    torch.testing.assert_close(ops.linear(x, w, b), F.linear(x, w, b))
    x, w, b = make(300, 70, 80, dtype=torch.float64)
    torch.testing.assert_close(ops.linear(x, w, b), F.linear(x, w, b))


def test_linear_gradcheck():
    x, w, b = (t.requires_grad_() for t in make(5, 4, 3, dtype=torch.float64))
    torch.autograd.gradcheck(ops.linear, (x, w, b))
    torch.autograd.gradcheck(lambda x, w: ops.linear(x, w, None), (x, w))


@pytest.mark.parametrize("rows", [5, 300])
def test_linear_opcheck(rows):
    x, w, b = (t.requires_grad_() for t in make(rows, 70, 80))
    torch.library.opcheck(ops.linear.default, (x, w, b))
    torch.library.opcheck(ops.linear.default, (x.detach(), w.detach(), None))
    g = torch.randn(rows, 80)
    torch.library.opcheck(ops.linear_backward.default, (g, x.detach(), w.detach(), [True, True, False]))


def test_linear_errors():
    x, w, b = make(300, 70, 80)
    with pytest.raises(RuntimeError, match="input has 69 features"):
        ops.linear(x[:, :69], w, b)
    with pytest.raises(RuntimeError, match="expected weight of shape"):
        ops.linear(x, w[0], b)
    with pytest.raises(RuntimeError, match="weight has dtype"):
        ops.linear(x, w.double(), b)
    with pytest.raises(RuntimeError, match="expected bias of shape"):
        ops.linear(x, w, b[:5])
    with pytest.raises(RuntimeError, match="expected grad_y of shape"):
        ops.linear_backward(torch.randn(300, 81), x, w, [True, True, True])


def test_lstm_layer_projection_runs_on_the_linear_op():
    """A layer big enough for the blocked GEMM trains like torch.nn.LSTM."""
    torch.manual_seed(0)
    ref = torch.nn.LSTM(70, 70)
    ours = fused_rnn.LSTM(70, 70, backend="cpu")
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(10, 30, 70)
    y_ref, _ = ref(x)
    y, _ = ours(x)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    y_ref.square().sum().backward()
    y.square().sum().backward()
    for (name, p_ref), p in zip(ref.named_parameters(), ours.parameters()):
        torch.testing.assert_close(p.grad, p_ref.grad, rtol=1e-4, atol=1e-4, msg=name)
