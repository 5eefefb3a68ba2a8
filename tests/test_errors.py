"""Bad arguments and bad input get torch.nn's errors (or, where torch.nn has none or an obscure
one, a clear error of the same kind), raised before any kernel runs."""

import re

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import fused_rnn
from helpers import LAYERS

ops = torch.ops.fused_rnn


def raised(fn):
    try:
        fn()
    except Exception as error:  # noqa: BLE001 - the point is to capture whatever is raised
        return error
    return None


def same_error(make_call):
    """make_call(layer_factory) raises the same exception type and message for both."""
    ours, theirs = raised(lambda: make_call("fused")), raised(lambda: make_call("torch"))
    assert theirs is not None, "torch.nn accepted it"
    assert ours is not None, f"fused_rnn accepted what torch.nn rejects with: {theirs}"
    assert type(ours) is type(theirs) and str(ours) == str(theirs), (repr(ours), repr(theirs))


def layer(kind, cell, *args, **kwargs):
    fused_cls, torch_cls, extra = LAYERS[cell]
    return (fused_cls if kind == "fused" else torch_cls)(*args, **{**extra, **kwargs})


BAD_CONSTRUCTORS = {
    "dropout > 1": (lambda c, k: layer(k, c, 3, 4, dropout=1.5)),
    "dropout bool": (lambda c, k: layer(k, c, 3, 4, dropout=True)),
    "hidden 0": (lambda c, k: layer(k, c, 3, 0)),
    "input 0": (lambda c, k: layer(k, c, 0, 4)),
    "layers 0": (lambda c, k: layer(k, c, 3, 4, num_layers=0)),
    "float hidden": (lambda c, k: layer(k, c, 3, 4.0)),
    "bias not bool": (lambda c, k: layer(k, c, 3, 4, bias=1)),
    "batch_first not bool": (lambda c, k: layer(k, c, 3, 4, batch_first=1)),
}


@pytest.mark.parametrize("cell", list(LAYERS))
@pytest.mark.parametrize("case", list(BAD_CONSTRUCTORS))
def test_bad_constructor_arguments(cell, case):
    same_error(lambda kind: BAD_CONSTRUCTORS[case](cell, kind))


@pytest.mark.parametrize("make", [
    lambda k: layer(k, "lstm", 3, 4, proj_size=4),
    lambda k: layer(k, "lstm", 3, 4, proj_size=-1),
    lambda k: layer(k, "gru", 3, 4, proj_size=2),
    lambda k: layer(k, "rnn_tanh", 3, 4, proj_size=2),
    lambda k: (fused_rnn.RNN if k == "fused" else torch.nn.RNN)(3, 4, nonlinearity="sigmoid"),
])
def test_bad_cell_specific_arguments(make):
    same_error(make)


def test_unknown_backend():
    with pytest.raises(ValueError, match="backend must be one of"):
        fused_rnn.LSTM(3, 4, backend="cudnn")
    with pytest.raises(ValueError, match="backend must be one of"):
        fused_rnn.GRUCell(3, 4, backend="gpu")


def test_unavailable_backend_is_a_clear_error():
    layer_ = fused_rnn.LSTM(3, 4, backend="cuda")
    with pytest.raises(RuntimeError, match="backend 'cuda' is not available: it runs on CUDA tensors"):
        layer_(torch.randn(2, 1, 3))


BAD_INPUTS = {
    "4-D input": lambda c: (torch.randn(2, 3, 4, 3), None),
    "1-D input": lambda c: (torch.randn(3), None),
    "wrong input size": lambda c: (torch.randn(5, 2, 7), None),
    "wrong input size unbatched": lambda c: (torch.randn(5, 7), None),
    "hx 2-D for batched": lambda c: (torch.randn(5, 2, 3), state(c, 1, 4)),
    "hx 3-D for unbatched": lambda c: (torch.randn(5, 3), state(c, 1, 1, 4)),
    "hx wrong batch": lambda c: (torch.randn(5, 2, 3), state(c, 1, 3, 4)),
    "hx wrong layers": lambda c: (torch.randn(5, 2, 3), state(c, 2, 2, 4)),
    "hx wrong hidden": lambda c: (torch.randn(5, 2, 3), state(c, 1, 2, 5)),
    "input dtype": lambda c: (torch.randn(5, 2, 3, dtype=torch.float64), None),
}


def state(cell, *shape):
    h = torch.randn(*shape)
    return (h, torch.randn(*shape)) if cell == "lstm" else h


@pytest.mark.parametrize("cell", list(LAYERS))
@pytest.mark.parametrize("name", ["weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0",
                                  "weight_hh_l1"])
def test_replaced_parameter_of_another_shape_is_refused(cell, name):
    """The layers do not re-check their own weights on every call; a parameter replaced by one
    of another shape is still refused, by the ops' argument checks or (a bias) by the addition
    that folds it in, as torch.nn refuses it."""
    fused = layer("fused", cell, 3, 4, num_layers=2)
    bad = getattr(fused, name)
    setattr(fused, name, torch.nn.Parameter(torch.randn(bad.shape[0] + 1, *bad.shape[1:])))
    with pytest.raises(RuntimeError, match="shape|size"):
        fused(torch.randn(5, 2, 3))


@pytest.mark.parametrize("cell", list(LAYERS))
@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_same_error_as_torch(cell, case):
    x, hx = BAD_INPUTS[case](cell)
    modules = {kind: layer(kind, cell, 3, 4) for kind in ("fused", "torch")}
    same_error(lambda kind: modules[kind](x, hx))


@pytest.mark.parametrize("cell", list(LAYERS))
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("shape", [(0, 2, 3), (0, 3), (0, 0, 3)], ids=["batched", "unbatched", "empty batch"])
def test_zero_length_input_same_error_as_torch(cell, batch_first, shape):
    """T = 0 is refused as torch.nn refuses it, whatever the batch (a zero batch with T > 0 runs:
    test_zero_batch_like_torch)."""
    if batch_first and len(shape) == 3:
        shape = (shape[1], shape[0], shape[2])
    modules = {kind: layer(kind, cell, 3, 4, batch_first=batch_first, num_layers=2,
                           bidirectional=True) for kind in ("fused", "torch")}
    same_error(lambda kind: modules[kind](torch.randn(*shape)))


@pytest.mark.parametrize("cell", list(LAYERS))
@pytest.mark.parametrize("backend", ["cpu", "triton", "reference"])
def test_zero_batch_like_torch(cell, backend):
    """B = 0 with T > 0 runs, as in torch.nn: empty outputs and zero weight gradients (cells too)."""
    fused, reference = layer("fused", cell, 3, 4, backend=backend), layer("torch", cell, 3, 4)
    for module in (fused, reference):
        output, final = module(torch.randn(5, 0, 3, requires_grad=True))
        h_n = final[0] if isinstance(final, tuple) else final
        assert output.shape == (5, 0, 4) and h_n.shape == (1, 0, 4)
        (output.sum() + h_n.sum()).backward()
        assert all(not p.grad.any() for p in module.parameters())
    fused_cell = {"lstm": fused_rnn.LSTMCell, "gru": fused_rnn.GRUCell}.get(cell, fused_rnn.RNNCell)
    out = fused_cell(3, 4, backend=backend)(torch.randn(0, 3))
    assert (out[0] if isinstance(out, tuple) else out).shape == (0, 4)


@pytest.mark.parametrize("cell", list(LAYERS))
def test_hidden_dtype_mismatch(cell):
    x = torch.randn(5, 2, 3)
    hx = state(cell, 1, 2, 4)
    hx = tuple(h.double() for h in hx) if isinstance(hx, tuple) else hx.double()
    with pytest.raises(RuntimeError, match="Input and hidden.* tensors are not the same dtype"):
        layer("fused", cell, 3, 4)(x, hx)


@pytest.mark.parametrize("cell", list(LAYERS))
def test_hidden_device_mismatch(cell):
    x = torch.randn(5, 2, 3)
    h = torch.empty(1, 2, 4, device="meta")
    hx = (h, h) if cell == "lstm" else h
    with pytest.raises(RuntimeError, match="Input and hidden.* tensors are not at the same device"):
        layer("fused", cell, 3, 4)(x, hx)


def test_lstm_hx_must_be_a_pair():
    with pytest.raises(TypeError, match=r"hx must be a tuple \(h_0, c_0\)"):
        fused_rnn.LSTM(3, 4)(torch.randn(5, 2, 3), torch.randn(1, 2, 4))


@pytest.mark.parametrize("lengths, error, message", [
    ([5, 6], ValueError, r"lengths must lie in \[0, 5\]"),
    ([5, -1], ValueError, r"lengths must lie in \[0, 5\]"),
    ([5], ValueError, r"lengths must have shape \[2\]"),
    (torch.tensor([1.0, 2.0]), TypeError, "lengths must be an integer tensor"),
    (torch.tensor([[1, 2]]), ValueError, r"lengths must have shape \[2\]"),
])
def test_bad_lengths(lengths, error, message):
    with pytest.raises(error, match=message):
        fused_rnn.GRU(3, 4)(torch.randn(5, 2, 3), lengths=lengths)


def test_lengths_with_packed_or_unbatched_input():
    packed = pack_padded_sequence(torch.randn(5, 2, 3), [5, 3])
    with pytest.raises(ValueError, match="lengths cannot be given with a PackedSequence"):
        fused_rnn.LSTM(3, 4)(packed, lengths=[5, 3])
    with pytest.raises(ValueError, match="lengths applies to batched"):
        fused_rnn.LSTM(3, 4)(torch.randn(5, 3), lengths=[5])


CELL_PAIRS = [(fused_rnn.LSTMCell, torch.nn.LSTMCell), (fused_rnn.GRUCell, torch.nn.GRUCell), (fused_rnn.RNNCell, torch.nn.RNNCell)]


@pytest.mark.parametrize("pair", CELL_PAIRS, ids=lambda p: p[0].__name__)
@pytest.mark.parametrize("case", ["input size", "batch", "hidden size", "3-D input", "3-D hidden"])
def test_cell_bad_input_same_error_as_torch(pair, case):
    cells = {"fused": pair[0](3, 4), "torch": pair[1](3, 4)}
    is_lstm = pair[0] is fused_rnn.LSTMCell

    def hx(*shape):
        return (torch.randn(*shape), torch.randn(*shape)) if is_lstm else torch.randn(*shape)

    x, h = {
        "input size": (torch.randn(2, 5), None),
        "batch": (torch.randn(2, 3), hx(3, 4)),
        "hidden size": (torch.randn(2, 3), hx(2, 6)),
        "3-D input": (torch.randn(1, 2, 3), None),
        "3-D hidden": (torch.randn(2, 3), hx(1, 2, 4)),
    }[case]
    same_error(lambda kind: cells[kind](x, h))


# ---------------------------------------------------------------------------------------------
# The ops check their arguments too (for direct callers), before any kernel runs.
# ---------------------------------------------------------------------------------------------

OP_CASES = {
    "gx not 3-D": (lambda: ops.rnn_tanh_forward(torch.randn(2, 4), torch.randn(4, 4), torch.randn(2, 4), None, False), "expected gx of shape"),
    "gates not divisible": (lambda: ops.lstm_forward(torch.randn(2, 1, 6), torch.randn(6, 1), None, torch.randn(1, 1), torch.randn(1, 1), None, False, False), "multiple of the number of gates"),
    "w_hh rows": (lambda: ops.gru_forward(torch.randn(2, 1, 6), torch.randn(5, 2), None, torch.randn(1, 2), None, False, False), "expected w_hh of shape"),
    "h0 shape": (lambda: ops.rnn_relu_forward(torch.randn(2, 3, 4), torch.randn(4, 4), torch.randn(2, 4), None, False), "expected h0 of shape"),
    "h0 dtype": (lambda: ops.rnn_relu_forward(torch.randn(2, 3, 4), torch.randn(4, 4), torch.randn(3, 4, dtype=torch.float64), None, False), "h0 has dtype"),
    "integer gx": (lambda: ops.rnn_relu_forward(torch.ones(2, 3, 4, dtype=torch.int32), torch.ones(4, 4, dtype=torch.int32), torch.ones(3, 4, dtype=torch.int32), None, False), "expected a float32"),
    "lengths range": (lambda: ops.rnn_tanh_forward(torch.randn(2, 2, 4), torch.randn(4, 4), torch.randn(2, 4), torch.tensor([3, 1]), False), r"lengths must lie in \[0, 2\]"),
    "lengths dtype": (lambda: ops.rnn_tanh_forward(torch.randn(2, 2, 4), torch.randn(4, 4), torch.randn(2, 4), torch.tensor([2, 1], dtype=torch.int32), False), "lengths must be an int64"),
    "lengths shape": (lambda: ops.rnn_tanh_forward(torch.randn(2, 2, 4), torch.randn(4, 4), torch.randn(2, 4), torch.tensor([2]), False), "expected lengths of shape"),
    "w_hr shape": (lambda: ops.lstm_forward(torch.randn(2, 1, 8), torch.randn(8, 1), torch.randn(2, 2), torch.randn(1, 1), torch.randn(1, 2), None, False, False), "expected w_hr of shape"),
    "c0 shape": (lambda: ops.lstm_forward(torch.randn(2, 1, 8), torch.randn(8, 2), None, torch.randn(1, 2), torch.randn(1, 3), None, False, False), "expected c0 of shape"),
    "workspace shape": (lambda: ops.gru_backward(None, torch.randn(1, 2), torch.randn(6, 2), torch.randn(1, 2), torch.randn(3, 1, 2), torch.randn(3, 1, 7), None, False), "expected gates of shape"),
    "grad_y shape": (lambda: ops.rnn_tanh_backward(torch.randn(3, 1, 3), None, torch.randn(2, 2), torch.randn(1, 2), torch.randn(3, 1, 2), None, False), "expected grad_y of shape"),
}


@pytest.mark.parametrize("case", list(OP_CASES))
def test_op_argument_checks(case):
    call, message = OP_CASES[case]
    with pytest.raises(RuntimeError, match=message):
        call()


def test_op_errors_name_the_op():
    call, _ = OP_CASES["h0 shape"]
    with pytest.raises(RuntimeError, match=re.escape("fused_rnn::rnn_relu_forward")):
        call()
