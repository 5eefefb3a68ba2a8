"""The adding problem (Hochreiter & Schmidhuber, 1997) as an endless stream, trained with
truncated backpropagation through time: torch.nn.LSTM and fused_rnn.LSTM side by side.

Each of ``--batch`` independent streams gives, at every step, a value drawn from U[0, 1] and a
marker bit (set with probability 1 / ``--gap``). The target at every step is the sum of the
values at the two most recent markers, so the network must hold two numbers until the next
markers come, and carry them over the cuts between chunks of ``--chunk`` steps.

The stream is cut into chunks. Each chunk starts from the state the previous one ended in,
detached from its graph (``.detach()``): the forward pass carries memory across chunks,
gradients flow back only to the start of the chunk, and memory and compute stay bounded.
Gradients are clipped to ``--clip`` (norm): recurrent nets occasionally produce a huge one.

Predicting the mean (1.0) all the time scores an MSE of 1/6 = 0.167; a network that remembers
reaches a small fraction of that.

    python examples/adding_problem.py                 # CPU: a few minutes
    python examples/adding_problem.py --device cuda --gap 20 --steps 3000
"""

from __future__ import annotations

import torch
from side_by_side import NAMES, StepTimer, log, make_parser, twin_models
from torch import nn

BASELINE_MSE = 1 / 6  # variance of U[0,1] + U[0,1]: what predicting the mean scores


class AddingStream:
    """``batch`` streams of (value, marker) steps and their targets, one chunk at a time."""

    def __init__(self, batch: int, gap: int, generator: torch.Generator):
        self.batch, self.gap, self.generator = batch, gap, generator
        self.carried = torch.zeros(2, batch)  # values at the two latest markers (0 before any)

    def next_chunk(self, length: int):
        """Returns x ``[length, batch, 2]`` and targets ``[length, batch, 1]``."""
        values = torch.rand(length, self.batch, generator=self.generator)
        markers = torch.rand(length, self.batch, generator=self.generator) < 1 / self.gap
        # Prepend the carried values as two markers at steps -2 and -1; then, for every step,
        # find the latest marker at or before it (a running max of marker positions) and the
        # latest one before that.
        all_values = torch.cat([self.carried, values])
        all_markers = torch.cat([torch.ones(2, self.batch, dtype=torch.bool), markers])
        steps = torch.arange(length + 2).unsqueeze(1).expand_as(all_markers)
        latest = torch.where(all_markers, steps, 0).cummax(dim=0).values
        before = torch.where(all_markers, steps, 0)
        previous_marker = torch.cat([torch.zeros(1, self.batch, dtype=torch.long), before[:-1]]).cummax(dim=0).values
        second = previous_marker.gather(0, latest)
        target = all_values.gather(0, latest) + all_values.gather(0, second)
        self.carried = torch.stack([all_values.gather(0, second[-1:])[0], all_values.gather(0, latest[-1:])[0]])
        x = torch.stack([values, markers.float()], dim=-1)
        return x, target[2:].unsqueeze(-1)


class Regressor(nn.Module):
    def __init__(self, hidden: int):
        super().__init__()
        self.rnn = nn.LSTM(2, hidden)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x, state=None):
        output, state = self.rnn(x, state)
        return self.head(output), state


def detach(state):
    """The carried state, cut from the graph of the chunk that produced it."""
    return tuple(s.detach() for s in state)


def main(argv=None) -> dict:
    parser = make_parser(__doc__.split("\n\n")[0], steps=1500)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--chunk", type=int, default=50, help="steps per truncated-BPTT chunk")
    parser.add_argument("--gap", type=int, default=10, help="mean number of steps between markers")
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--clip", type=float, default=1.0, help="gradient norm clip")
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    models = twin_models(lambda: Regressor(args.hidden), args.device)
    optimizers = {name: torch.optim.Adam(m.parameters(), lr=args.lr) for name, m in models.items()}
    timers = {name: StepTimer(args.device) for name in NAMES}
    states = {name: None for name in NAMES}
    history = {name: [] for name in NAMES}
    stream = AddingStream(args.batch, args.gap, torch.Generator().manual_seed(args.seed))

    for step in range(1, args.steps + 1):
        x, target = (t.to(args.device) for t in stream.next_chunk(args.chunk))
        for name, model in models.items():
            with timers[name]:
                prediction, state = model(x, states[name])
                loss = nn.functional.mse_loss(prediction, target)
                optimizers[name].zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(model.parameters(), args.clip)
                optimizers[name].step()
            states[name] = detach(state)
            history[name].append(loss.item())
        if step % args.log_every == 0 or step == args.steps:
            recent = {name: sum(h[-args.log_every:]) / len(h[-args.log_every:]) for name, h in history.items()}
            log(step, {name: {"mse": recent[name], "ms/step": timers[name].median_ms()} for name in NAMES})

    print(f"baseline (always predict the mean): mse {BASELINE_MSE:.3f}")
    return {name: {"losses": history[name], "ms_per_step": timers[name].median_ms()} for name in NAMES}


if __name__ == "__main__":
    main()
