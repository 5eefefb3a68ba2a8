"""Forecasting irregularly sampled time series with missing values: a GRU fed the time since the
previous observation (Δt) next to the values and their mask, against the same GRU without Δt;
torch.nn.GRU and fused_rnn.GRU side by side for both.

The data (``oscillators``, with known ground truth): each series is one oscillation of frequency
f ~ U[0.1, 0.5] cycles per unit of time, seen through ``--channels`` sensors, channel c reading
a_c sin(2π f t + φ_c) with a_c ~ U[0.5, 1.5] and φ_c ~ U[0, 2π), plus N(0, 0.1²) noise. Each
series is observed for a time drawn from U[0.5, 1.5] * ``--window``, at random times: a Poisson
process whose rate is drawn per series from U[2, 8] per unit of time, so the series have
different lengths (neither of which gives away the rate) and the gaps between observations
vary within and between series. At each observation every channel is read with probability
``--observed``, and at least one is. The target: at every observation, the noise-free reading
of every channel ``--horizon`` time units later.

Each observation is one step of ``[values, mask, Δt]`` (2 * channels + 1 inputs: the readings,
0 where missing; which ones were read; the time since the previous observation, or since the
start, times the mean rate so that it is about 1), the RNN_Δt recipe. The baseline sees
``[values, mask]`` only: it cannot tell a fast oscillation sampled often from a slow one sampled
rarely, nor how long ago a channel was last read, nor how many steps ahead the horizon lies. A
batch is padded to its longest series; the fused_rnn layers take it with ``lengths=`` (and return
zeros past each length), torch.nn's take it as it is (a GRU runs forward in time, so its outputs
up to each length are those a PackedSequence would give). The loss is the mean squared error of
the forecasts at all observations, none past a series' length.

Reported: training loss and time per step of the four models; the mean squared error of the
forecast made at each test series' last observation, next to two references (always 0, and each
channel's last reading); at the end, each Δt model's checkpoint loaded into a model of the other
kind, with its test error (the same, to rounding). ``--dtype bf16`` and ``--compile`` as in
char_language_model.py (under CPU autocast, torch.nn's GRU runs in fp32).

A run at the default settings (all four models) took 6.5 minutes on a CPU, a 2-core VM shared
with other jobs, and several times longer while those kept both cores busy; the GPU time is not
yet measured. It reaches a test mse of 0.068 with Δt and 0.17 without (predicting 0: 0.55).

    python examples/irregular_time_series.py
    python examples/irregular_time_series.py --device cuda --hidden 128 --steps 4000
"""

from __future__ import annotations

import math

import torch
from side_by_side import (
    NAMES,
    ProgressBar,
    StepTimer,
    add_training_options,
    autocast,
    clipped_step,
    compiled,
    log,
    make_parser,
    optimizers_and_schedules,
    swap_checkpoints,
    twin_models,
)
from torch import nn

FREQUENCY = (0.1, 0.5)  # cycles per unit of time
AMPLITUDE = (0.5, 1.5)
RATE = (2.0, 8.0)  # observations per unit of time
WINDOW = (0.5, 1.5)  # times --window: the time each series is observed
DT_SCALE = sum(RATE) / 2  # Δt is fed times the mean rate: about 1, like the readings
NOISE = 0.1
VARIANTS = {"with Δt": "[values, mask, Δt]", "without Δt": "[values, mask]"}


def uniform(low: float, high: float, shape, generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(shape, generator=generator)


def oscillators(count: int, *, channels: int, window: float, horizon: float, observed: float,
                generator: torch.Generator) -> dict[str, torch.Tensor]:
    """``count`` series of the process in the module's docstring, padded to the longest:
    ``inputs`` ``[count, steps, 2 * channels + 1]`` (values, mask, Δt; zeros past a series'
    length), ``lengths`` ``[count]``, ``times`` ``[count, steps]`` and ``targets`` ``[count,
    steps, channels]`` (the noise-free readings ``horizon`` after each observation, zeros past a
    series' length); ``frequency``, ``amplitude`` and ``phase`` are the ground truth."""
    frequency = uniform(*FREQUENCY, (count, 1, 1), generator)
    amplitude = uniform(*AMPLITUDE, (count, 1, channels), generator)
    phase = uniform(0, 2 * math.pi, (count, 1, channels), generator)
    rate = uniform(*RATE, (count, 1), generator)
    windows = window * uniform(*WINDOW, (count, 1), generator)

    # Poisson process: exponential gaps, cumulated; enough of them that the window fills
    # (falling short of it has a probability below 1e-9)
    expected = RATE[1] * WINDOW[1] * window
    most = math.ceil(expected + 6 * math.sqrt(expected) + 10)
    gaps = -torch.log1p(-torch.rand(count, most, generator=generator)) / rate
    times = gaps.cumsum(1)
    lengths = (times <= windows).sum(1).clamp(min=1)  # a series has at least one observation
    steps = int(lengths.max())
    times, gaps = times[:, :steps], gaps[:, :steps]
    inside = torch.arange(steps) < lengths.unsqueeze(1)  # [count, steps]

    def reading(t):  # t [count, steps] -> [count, steps, channels], noise-free
        return amplitude * torch.sin(2 * math.pi * frequency * t.unsqueeze(-1) + phase)

    draws = torch.rand(count, steps, channels, generator=generator)
    mask = (draws < observed) | (draws == draws.min(-1, keepdim=True).values)  # at least one channel
    mask &= inside.unsqueeze(-1)
    noise = NOISE * torch.randn(count, steps, channels, generator=generator)
    values = torch.where(mask, reading(times) + noise, 0.0)
    delta_t = torch.where(inside, gaps * DT_SCALE, 0.0).unsqueeze(-1)
    return {
        "inputs": torch.cat([values, mask.float(), delta_t], dim=-1),
        "lengths": lengths,
        "times": torch.where(inside, times, 0.0),
        "targets": torch.where(inside.unsqueeze(-1), reading(times + horizon), 0.0),
        "frequency": frequency.view(count),
        "amplitude": amplitude.view(count, channels),
        "phase": phase.view(count, channels),
    }


def last_readings(data: dict[str, torch.Tensor], channels: int) -> torch.Tensor:
    """Each channel's last observed value (0 if it was never read): the naive forecast."""
    values, mask = data["inputs"][..., :channels], data["inputs"][..., channels : 2 * channels].bool()
    steps = torch.arange(values.shape[1]).view(1, -1, 1)
    last = torch.where(mask, steps, -1).amax(1, keepdim=True)  # [count, 1, channels]
    return torch.where(last >= 0, values.gather(1, last.clamp(min=0)), 0.0)[:, 0]


def outputs(rnn: nn.Module, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """The last layer's output at every step of a padded batch, ``[batch, steps, hidden]``.
    fused_rnn's layers take ``lengths=`` and return zeros past each length. torch.nn's run over
    the padding too: a GRU runs forward in time, so its outputs up to each length are those a
    PackedSequence would give, and the ones past it are never read."""
    if isinstance(rnn, (nn.GRU, nn.LSTM, nn.RNN)):  # torch.nn; fused_rnn's are not subclasses
        return rnn(x)[0]
    return rnn(x, lengths=lengths)[0]


class Forecaster(nn.Module):
    def __init__(self, inputs: int, hidden: int, layers: int, channels: int):
        super().__init__()
        self.inputs = inputs
        self.rnn = nn.GRU(inputs, hidden, layers, batch_first=True)
        self.head = nn.Linear(hidden, channels)

    def forward(self, x, lengths):  # x [batch, steps, all features] -> forecasts [batch, steps, channels]
        return self.head(outputs(self.rnn, x[..., : self.inputs], lengths))


def forecast_loss(forecasts, targets, lengths) -> torch.Tensor:
    """Mean squared error of the forecasts made at every observation (none past a length)."""
    steps = torch.arange(targets.shape[1], device=targets.device)
    inside = (steps < lengths.to(targets.device).unsqueeze(1)).unsqueeze(-1)
    squared = torch.where(inside, (forecasts.float() - targets).square(), 0.0)
    return squared.sum() / (inside.sum() * targets.shape[-1])


def at_last_observation(per_step: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """``per_step[b, lengths[b] - 1]`` for each series b: ``[batch, channels]``."""
    index = (lengths.to(per_step.device) - 1).view(-1, 1, 1).expand(-1, 1, per_step.shape[-1])
    return per_step.gather(1, index)[:, 0]


def batch_of(data: dict[str, torch.Tensor], index: torch.Tensor, device):
    """Inputs and targets cut to the batch's longest series, and lengths (on the CPU)."""
    lengths = data["lengths"][index]
    steps = int(lengths.max())
    return data["inputs"][index, :steps].to(device), lengths, data["targets"][index, :steps].to(device)


@torch.no_grad()
def test_error(model, data, args) -> float:
    """Mean squared error of the forecasts made at each series' last observation."""
    model.eval()
    total, count = 0.0, len(data["lengths"])
    for start in range(0, count, 1000):
        x, lengths, targets = batch_of(data, torch.arange(start, min(start + 1000, count)), args.device)
        with autocast(args):
            forecasts = model(x, lengths)
        errors = at_last_observation(forecasts.float(), lengths) - at_last_observation(targets, lengths)
        total += errors.square().sum().item()
    model.train()
    return total / (count * data["targets"].shape[-1])


def main(argv=None) -> dict:
    parser = make_parser(__doc__.split("\n\n")[0], steps=800)
    parser.add_argument("--channels", type=int, default=3)
    parser.add_argument("--window", type=float, default=10.0, help="mean time units observed per series")
    parser.add_argument("--horizon", type=float, default=0.5, help="time units ahead of the last observation")
    parser.add_argument("--observed", type=float, default=0.5, help="probability that a channel is read")
    parser.add_argument("--train", type=int, default=10000, help="training series")
    parser.add_argument("--test", type=int, default=1000, help="test series")
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--batch", type=int, default=64)
    add_training_options(parser, lr=1e-2)
    parser.set_defaults(log_every=100)  # each report evaluates all four models on the test set
    args = parser.parse_args(argv)

    generator = torch.Generator().manual_seed(args.seed)
    process = dict(channels=args.channels, window=args.window, horizon=args.horizon, observed=args.observed)
    train = oscillators(args.train, generator=generator, **process)
    test = oscillators(args.test, generator=generator, **process)
    final_targets = at_last_observation(test["targets"], test["lengths"])
    references = {
        "predict 0": final_targets.square().mean().item(),
        "last reading": (last_readings(test, args.channels) - final_targets).square().mean().item(),
    }
    print(f"{args.train} training and {args.test} test series, {test['lengths'].float().mean():.1f} observations "
          f"on average ({int(test['lengths'].min())} to {int(test['lengths'].max())}); test mse of "
          + ", ".join(f"{name}: {mse:.4f}" for name, mse in references.items()))

    torch.manual_seed(args.seed)
    builds = {
        "with Δt": lambda: Forecaster(2 * args.channels + 1, args.hidden, args.layers, args.channels),
        "without Δt": lambda: Forecaster(2 * args.channels, args.hidden, args.layers, args.channels),
    }
    models = {variant: twin_models(build, args.device) for variant, build in builds.items()}
    training = {variant: compiled(pair, args) for variant, pair in models.items()}
    optimizers, schedules = {}, {}
    for variant, pair in models.items():
        optimizers[variant], schedules[variant] = optimizers_and_schedules(pair, args)
    timers = {variant: {name: StepTimer(args.device) for name in NAMES} for variant in VARIANTS}
    losses = {variant: {name: [] for name in NAMES} for variant in VARIANTS}
    errors = {variant: [] for variant in VARIANTS}  # (step, {name: test mse})
    order = torch.Generator().manual_seed(args.seed + 1)
    progress = ProgressBar(args.steps)

    def report(step: int) -> None:
        for variant, pair in models.items():
            errors[variant].append((step, {name: test_error(m, test, args) for name, m in pair.items()}))
            metrics = {}
            for name in NAMES:
                recent = losses[variant][name][-args.log_every:]
                metrics[name] = {"test mse": errors[variant][-1][1][name]}
                if recent:
                    metrics[name] |= {"loss": sum(recent) / len(recent), "ms/step": timers[variant][name].median_ms()}
            log(step, metrics, label=f"{VARIANTS[variant]:>18} ", progress=progress)

    report(0)
    for step in range(1, args.steps + 1):
        x, lengths, targets = batch_of(train, torch.randint(args.train, (args.batch,), generator=order), args.device)
        for variant, pair in training.items():
            for name, model in pair.items():
                with timers[variant][name]:
                    with autocast(args):
                        loss = forecast_loss(model(x, lengths), targets, lengths)
                    clipped_step(loss, models[variant][name], optimizers[variant][name], schedules[variant][name],
                                 args)
                losses[variant][name].append(loss.item())
        progress.update(step)
        if step % args.log_every == 0 or step == args.steps:
            report(step)

    final = {variant: errors[variant][-1][1] for variant in VARIANTS}
    print(f"test mse, {' / '.join(NAMES)}: " + "; ".join(
        f"{VARIANTS[v]} {final[v]['torch.nn']:.4f} / {final[v]['fused_rnn']:.4f}" for v in VARIANTS)
        + "; " + ", ".join(f"{name} {mse:.4f}" for name, mse in references.items()))

    print(f"checkpoints of the {VARIANTS['with Δt']} models:")
    cross = swap_checkpoints(models["with Δt"], builds["with Δt"], args,
                             lambda model: test_error(model, test, args), final["with Δt"], "test mse")

    results = {
        variant: {
            name: {"losses": losses[variant][name], "ms_per_step": timers[variant][name].median_ms(),
                   "test_mse": [(s, e[name]) for s, e in errors[variant]]}
            for name in NAMES
        }
        for variant in VARIANTS
    }
    for name in NAMES:
        results["with Δt"][name]["cross_loaded_test_mse"] = cross[name]
    return results | {"references": references}


if __name__ == "__main__":
    main()
