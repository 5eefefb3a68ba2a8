"""fused_rnn.convert: torch.nn layers and cells to fused_rnn's and back, in models of any shape."""

from __future__ import annotations

import io
import warnings

import pytest
import torch
from torch import nn

import fused_rnn

T, B, I, H = 5, 3, 4, 6

# (torch.nn module, input): every class convert handles, in configurations that matter
# (projection, no bias, batch_first, relu, bidirectional, several layers).
CASES = {
    "lstm": lambda: nn.LSTM(I, H, num_layers=2, bidirectional=True, proj_size=3),
    "lstm_no_bias": lambda: nn.LSTM(I, H, bias=False, batch_first=True),
    "gru": lambda: nn.GRU(I, H, num_layers=2, batch_first=True, dropout=0.25),
    "rnn_relu": lambda: nn.RNN(I, H, nonlinearity="relu", bidirectional=True),
    "lstm_cell": lambda: nn.LSTMCell(I, H),
    "gru_cell": lambda: nn.GRUCell(I, H, bias=False),
    "rnn_cell": lambda: nn.RNNCell(I, H, nonlinearity="relu"),
}
FUSED_CLASS = {
    nn.LSTM: fused_rnn.LSTM,
    nn.GRU: fused_rnn.GRU,
    nn.RNN: fused_rnn.RNN,
    nn.LSTMCell: fused_rnn.LSTMCell,
    nn.GRUCell: fused_rnn.GRUCell,
    nn.RNNCell: fused_rnn.RNNCell,
}


def sample_input(module):
    if isinstance(module, nn.RNNCellBase):
        return torch.randn(B, I)
    return torch.randn(B, T, I) if module.batch_first else torch.randn(T, B, I)


def flat_outputs(output):
    """Every tensor of a layer's or cell's output, in order."""
    if isinstance(output, torch.Tensor):
        return [output]
    return [t for item in output for t in flat_outputs(item)]


def assert_same_outputs(a, b, x, atol=1e-5):
    for got, want in zip(flat_outputs(a(x)), flat_outputs(b(x)), strict=True):
        torch.testing.assert_close(got, want, atol=atol, rtol=1e-5)


@pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")
@pytest.mark.parametrize("case", CASES)
def test_converted_module_has_the_same_config_weights_and_outputs(case):
    original = CASES[case]().eval()
    converted = fused_rnn.convert(original)
    assert type(converted) is FUSED_CLASS[type(original)]
    assert converted.backend == "auto"
    for attribute in ("input_size", "hidden_size", "bias", "num_layers", "batch_first", "dropout",
                      "bidirectional", "proj_size", "nonlinearity", "training"):
        assert getattr(converted, attribute, None) == getattr(original, attribute, None), attribute
    assert converted.state_dict().keys() == original.state_dict().keys()
    assert_same_outputs(converted, original, sample_input(original))

    back = fused_rnn.convert(converted, to="torch")
    assert type(back) is type(original)
    for name, tensor in original.state_dict().items():
        assert torch.equal(back.state_dict()[name], tensor), name
    assert_same_outputs(back, original, sample_input(original))


class Encoder(nn.Module):
    """Recurrent layers at several depths and in every container kind."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(I, I)
        self.stack = nn.Sequential(nn.Identity(), nn.LSTM(I, H, batch_first=True))
        self.heads = nn.ModuleList([nn.Linear(H, 2), nn.ModuleDict({"gru": nn.GRU(H, H, batch_first=True)})])
        self.cells = nn.ModuleDict({"rnn": nn.RNNCell(I, H), "lstm": nn.LSTMCell(I, H)})

    def forward(self, x):
        y, _ = self.stack[1](self.embed(x))
        y, h = self.heads[1]["gru"](y)
        h_cell = self.cells["rnn"](x[:, 0])
        h_lstm, c_lstm = self.cells["lstm"](x[:, 1])
        return self.heads[0](y), h, h_cell, h_lstm, c_lstm


def recurrent_modules(model):
    return {name: type(m) for name, m in model.named_modules() if isinstance(m, (nn.RNNBase, nn.RNNCellBase))}


def test_nested_modules_are_all_converted():
    model = Encoder()
    converted = fused_rnn.convert(model)
    assert recurrent_modules(converted) == {
        "stack.1": fused_rnn.LSTM,
        "heads.1.gru": fused_rnn.GRU,
        "cells.rnn": fused_rnn.RNNCell,
        "cells.lstm": fused_rnn.LSTMCell,
    }
    assert type(converted.embed) is nn.Linear and type(converted.stack[0]) is nn.Identity
    x = torch.randn(B, T, I)
    assert_same_outputs(converted, model, x)
    assert recurrent_modules(fused_rnn.convert(converted, to="torch")) == recurrent_modules(model)


def test_copy_leaves_the_original_alone():
    model = Encoder()
    converted = fused_rnn.convert(model)
    assert type(model.stack[1]) is nn.LSTM
    original_params = {id(p) for p in model.parameters()}
    assert not original_params & {id(p) for p in converted.parameters()}
    with torch.no_grad():
        converted.stack[1].weight_hh_l0.add_(1.0)
    assert not torch.equal(converted.stack[1].weight_hh_l0, model.stack[1].weight_hh_l0)


def test_inplace_keeps_parameters_so_an_existing_optimizer_keeps_working():
    model = Encoder()
    params_before = list(model.parameters())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    returned = fused_rnn.convert(model, inplace=True)
    assert returned is model and type(model.stack[1]) is fused_rnn.LSTM
    assert [id(p) for p in model.parameters()] == [id(p) for p in params_before]

    lstm = model.stack[1]
    before = lstm.weight_hh_l0.detach().clone()
    x = torch.randn(B, T, I)
    sum(o.sum() for o in model(x)).backward()
    optimizer.step()
    assert not torch.equal(lstm.weight_hh_l0, before), "the optimizer did not update the fused layer"


def test_mode_dtype_device_and_requires_grad_are_kept():
    model = nn.Sequential(nn.GRU(I, H), nn.LSTMCell(I, H)).double()
    model[0].eval()
    model[1].weight_ih.requires_grad_(False)
    converted = fused_rnn.convert(model)
    assert converted.training and not converted[0].training and converted[1].training
    assert all(p.dtype == torch.float64 and p.device.type == "cpu" for p in converted.parameters())
    assert not converted[1].weight_ih.requires_grad and converted[1].weight_hh.requires_grad


def test_backend_is_passed_to_the_fused_modules():
    converted = fused_rnn.convert(Encoder(), backend="reference")
    fused = [m for m in converted.modules() if isinstance(m, (fused_rnn.LSTM, fused_rnn.GRU, fused_rnn.GRUCell, fused_rnn.RNNCell, fused_rnn.LSTMCell))]
    assert len(fused) == 4 and all(m.backend == "reference" for m in fused)


def test_checkpoints_load_both_ways():
    model = Encoder()
    converted = fused_rnn.convert(model)
    fresh_torch, fresh_fused = Encoder(), fused_rnn.convert(Encoder())
    buffer = io.BytesIO()
    torch.save(converted.state_dict(), buffer)
    buffer.seek(0)
    fresh_torch.load_state_dict(torch.load(buffer))  # strict: every key matches
    fresh_fused.load_state_dict(model.state_dict())
    x = torch.randn(B, T, I)
    assert_same_outputs(fresh_torch, model, x)
    assert_same_outputs(fresh_fused, model, x)


def test_a_module_reachable_twice_becomes_one_module():
    shared = nn.GRU(I, H)
    model = nn.ModuleDict({"a": shared, "b": nn.Sequential(shared)})
    converted = fused_rnn.convert(model)
    assert type(converted["a"]) is fused_rnn.GRU and converted["a"] is converted["b"][0]
    assert len(list(converted.parameters())) == len(list(shared.parameters()))


def test_hooks_follow_the_layer():
    model = nn.Sequential(nn.LSTM(I, H))
    calls = []
    handle = model[0].register_forward_hook(lambda module, args, output: calls.append(type(module)))
    fused_rnn.convert(model, inplace=True)
    model(torch.randn(T, B, I))
    assert calls == [fused_rnn.LSTM]
    handle.remove()
    model(torch.randn(T, B, I))
    assert calls == [fused_rnn.LSTM]


def test_root_layer_is_returned_converted():
    lstm = nn.LSTM(I, H)
    converted = fused_rnn.convert(lstm, inplace=True)
    assert type(converted) is fused_rnn.LSTM and converted.weight_ih_l0 is lstm.weight_ih_l0


class TimeReversedLSTM(nn.LSTM):
    """A subclass with its own forward: converting it would drop that forward."""

    def forward(self, x, hx=None):
        output, state = super().forward(x.flip(0), hx)
        return output.flip(0), state


def test_subclasses_are_left_alone_with_a_warning():
    model = nn.Sequential(TimeReversedLSTM(I, H), nn.GRU(H, H))
    with pytest.warns(UserWarning, match=r"left TimeReversedLSTM at '0'.*subclasses torch\.nn\.modules\.rnn\.LSTM"):
        converted = fused_rnn.convert(model)
    assert type(converted[0]) is TimeReversedLSTM and type(converted[1]) is fused_rnn.GRU


def test_weight_normed_layer_is_left_alone_with_a_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # weight_norm is deprecated for parametrize
        gru = torch.nn.utils.weight_norm(nn.GRU(I, H), name="weight_hh_l0")
    model = nn.Sequential(gru)
    with pytest.warns(UserWarning, match="weight_hh_l0_g"):
        # in place: torch cannot deep-copy a weight-normed module
        converted = fused_rnn.convert(model, inplace=True)
    assert converted[0] is gru


def test_parametrized_layer_is_left_alone_with_a_warning():
    gru = nn.GRU(I, H)
    torch.nn.utils.parametrizations.weight_norm(gru, name="weight_hh_l0")  # makes a subclass
    with pytest.warns(UserWarning, match="left ParametrizedGRU at '0'"):
        converted = fused_rnn.convert(nn.Sequential(gru))
    assert isinstance(converted[0], nn.GRU) and not isinstance(converted[0], fused_rnn.GRU)


def test_no_warning_when_everything_converts():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fused_rnn.convert(Encoder())


def test_bad_arguments():
    with pytest.raises(ValueError, match="to must be"):
        fused_rnn.convert(nn.LSTM(I, H), to="cudnn")
    with pytest.raises(ValueError, match="backend must be"):
        fused_rnn.convert(nn.LSTM(I, H), backend="fast")


@pytest.mark.cuda
def test_cuda_layers_stay_on_the_gpu_and_match():
    model = Encoder().cuda()
    converted = fused_rnn.convert(model)
    assert all(p.is_cuda for p in converted.parameters())
    assert_same_outputs(converted, model, torch.randn(B, T, I, device="cuda"), atol=1e-4)
    back = fused_rnn.convert(converted, to="torch", inplace=True)
    assert_same_outputs(back, model, torch.randn(B, T, I, device="cuda"), atol=1e-4)
