"""The copy-memory task as an endless stream, trained with truncated backpropagation through
time: torch.nn.GRU and fused_rnn.GRU side by side (``--cell lstm`` for LSTMs).

Episodes follow each other without a break: ``--symbols`` random symbols, ``--delay`` blanks,
a delimiter, then as many blanks during which the network must replay the symbols in order.
Each of ``--batch`` streams starts at a random point of an episode, so the chunks of
``--chunk`` steps cut episodes anywhere: what is seen before a cut must be recalled after it.

Each chunk starts from the state the previous chunk ended in, detached from its graph
(``.detach()``): memory flows forward across chunks, gradients only within one, so memory and
compute per step stay bounded however long the stream runs. Gradients are clipped to
``--clip`` (norm).

Reported: accuracy on the replayed symbols. Guessing scores 1 / ``--alphabet`` (12.5% by
default); a network that remembers approaches 100%.

    python examples/copy_memory.py                 # CPU: a few minutes
    python examples/copy_memory.py --device cuda
"""

from __future__ import annotations

import torch
from side_by_side import NAMES, StepTimer, log, make_parser, twin_models
from torch import nn

BLANK = 0  # input and target token; symbols are 1..alphabet, the delimiter alphabet + 1


class CopyStream:
    """``batch`` streams of copy-memory episodes, one chunk at a time."""

    def __init__(self, batch: int, symbols: int, delay: int, alphabet: int, generator: torch.Generator):
        self.batch, self.symbols, self.delay, self.alphabet = batch, symbols, delay, alphabet
        self.generator = generator
        self.episode_length = 2 * symbols + delay + 1
        self.phase = torch.randint(self.episode_length, (batch,), generator=generator)
        self.current = self._new_episodes(1)[0]  # [batch, symbols]

    def _new_episodes(self, count: int) -> torch.Tensor:
        return torch.randint(1, self.alphabet + 1, (count, self.batch, self.symbols), generator=self.generator)

    def next_chunk(self, length: int):
        """Returns input tokens, target tokens (both ``[length, batch]``) and a mask of the
        replay steps."""
        S, D, L = self.symbols, self.delay, self.episode_length
        position = self.phase.unsqueeze(0) + torch.arange(length).unsqueeze(1)  # [length, batch]
        episode, phase = position // L, position % L  # episode 0 is the current one
        last_episode = (self.phase + length) // L
        episodes = torch.cat([self.current.unsqueeze(0), self._new_episodes(int(last_episode.max()))])
        batch_index = torch.arange(self.batch).expand(length, -1)
        shown = episodes[episode, batch_index, phase.clamp(max=S - 1)]  # symbol shown at phase < S
        replayed = episodes[episode, batch_index, (phase - S - D - 1).clamp(min=0)]
        replay = phase > S + D
        inputs = torch.where(phase < S, shown, BLANK)
        inputs = torch.where(phase == S + D, self.alphabet + 1, inputs)
        targets = torch.where(replay, replayed, BLANK)
        self.current = episodes[last_episode, torch.arange(self.batch)]
        self.phase = (self.phase + length) % L
        return inputs, targets, replay


class Copier(nn.Module):
    def __init__(self, cell: str, alphabet: int, hidden: int):
        super().__init__()
        self.tokens = alphabet + 2  # blank, symbols, delimiter
        self.rnn = {"gru": nn.GRU, "lstm": nn.LSTM}[cell](self.tokens, hidden)
        self.head = nn.Linear(hidden, alphabet + 1)  # blank or a symbol

    def forward(self, tokens, state=None):
        x = nn.functional.one_hot(tokens, self.tokens).float()
        output, state = self.rnn(x, state)
        return self.head(output), state


def detach(state):
    """The carried state, cut from the graph of the chunk that produced it."""
    return tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()


def main(argv=None) -> dict:
    parser = make_parser(__doc__.split("\n\n")[0], steps=1500)
    parser.add_argument("--cell", choices=["gru", "lstm"], default="gru")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--symbols", type=int, default=5, help="symbols to remember per episode")
    parser.add_argument("--delay", type=int, default=10, help="blanks between the symbols and their replay")
    parser.add_argument("--alphabet", type=int, default=8)
    parser.add_argument("--chunk", type=int, default=50, help="steps per truncated-BPTT chunk")
    parser.add_argument("--lr", type=float, default=5e-3)
    parser.add_argument("--clip", type=float, default=1.0, help="gradient norm clip")
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    models = twin_models(lambda: Copier(args.cell, args.alphabet, args.hidden), args.device)
    optimizers = {name: torch.optim.Adam(m.parameters(), lr=args.lr) for name, m in models.items()}
    timers = {name: StepTimer(args.device) for name in NAMES}
    states = {name: None for name in NAMES}
    losses = {name: [] for name in NAMES}
    hits = {name: [] for name in NAMES}  # (correct replayed symbols, replayed symbols) per step
    generator = torch.Generator().manual_seed(args.seed)
    stream = CopyStream(args.batch, args.symbols, args.delay, args.alphabet, generator)

    for step in range(1, args.steps + 1):
        inputs, targets, replay = (t.to(args.device) for t in stream.next_chunk(args.chunk))
        for name, model in models.items():
            with timers[name]:
                logits, state = model(inputs, states[name])
                loss = nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())
                optimizers[name].zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(model.parameters(), args.clip)
                optimizers[name].step()
            states[name] = detach(state)
            losses[name].append(loss.item())
            correct = (logits.argmax(-1) == targets)[replay]
            hits[name].append((correct.sum().item(), correct.numel()))
        if step % args.log_every == 0 or step == args.steps:
            report = {}
            for name in NAMES:
                recent = hits[name][-args.log_every:]
                accuracy = sum(c for c, _ in recent) / max(1, sum(n for _, n in recent))
                loss = sum(losses[name][-args.log_every:]) / len(losses[name][-args.log_every:])
                report[name] = {"loss": loss, "replay accuracy": accuracy, "ms/step": timers[name].median_ms()}
            log(step, report)

    print(f"guessing: replay accuracy {1 / args.alphabet:.3f}")
    return {
        name: {"losses": losses[name], "replay_accuracy": report[name]["replay accuracy"],
               "ms_per_step": timers[name].median_ms()}
        for name in NAMES
    }


if __name__ == "__main__":
    main()
