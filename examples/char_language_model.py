"""A character-level language model on real text, trained with truncated backpropagation
through time: torch.nn.LSTM and fused_rnn.LSTM side by side (``--cell gru`` for GRUs).

Text: any UTF-8 file given with ``--text``, or by default a fixed list of the Python standard
library's own source files (STDLIB_FILES, about 1.2 MB), read from the running interpreter, so
every machine has it without a download. The files change between Python versions: compare runs
made with the same one. The first 95% of the text is the training split, the rest the
validation split (contiguous, so the model is judged on text it has never seen). The vocabulary
is the training split's characters plus one token for any other character.

Training: the training split is cut into ``--batch`` contiguous streams, read side by side in
chunks of ``--bptt`` characters. Each chunk starts from the state the previous one ended in,
detached from its graph: memory flows across chunks, gradients only within one. When the
streams run out (the end of an epoch) they start over from a zero state. Gradients are clipped
to ``--clip`` (norm); AdamW, with the learning rate warmed up linearly and decayed along a
cosine.

Reported: training loss and time per step of both models; validation perplexity (exp of the
mean cross-entropy per character) at the start, at the end of every epoch and of the run (and
every ``--eval-every`` steps), next to that of a unigram model (character frequencies only); then a sample from
each model at temperature ``--temperature``, and each model's checkpoint loaded into a model of
the other kind, with its validation perplexity (the same, to rounding).

``--dtype bf16`` runs the forward passes under bfloat16 autocast. ``--compile`` compiles both
training models: the fused_rnn one into a single graph, the torch.nn one in pieces around its
LSTM, which Dynamo refuses to trace and which runs eagerly.

At the default settings a run (both models) took 6.5 minutes on a CPU, a 2-core VM shared with
other jobs, and 11 to 24 minutes while those kept both cores busy; the GPU time is not yet
measured. It reaches a validation perplexity of about 4.8 (a unigram model: 23.9) with Python
3.11's files.

    python examples/char_language_model.py
    python examples/char_language_model.py --text book.txt --device cuda --hidden 512 --steps 5000
"""

from __future__ import annotations

import math
import sysconfig
from collections import Counter
from pathlib import Path

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

# Fixed so that runs are comparable; all of them are in every CPython from 3.10 on.
STDLIB_FILES = (
    "argparse.py", "calendar.py", "configparser.py", "contextlib.py", "dataclasses.py", "difflib.py",
    "enum.py", "fractions.py", "functools.py", "heapq.py", "inspect.py", "ipaddress.py", "pprint.py",
    "random.py", "shutil.py", "statistics.py", "subprocess.py", "textwrap.py", "threading.py",
    "tokenize.py", "typing.py",
)
VALIDATION_FRACTION = 0.05


def read_text(path: str | None) -> str:
    """The file at ``path``, or the standard-library files of STDLIB_FILES joined."""
    if path is not None:
        return Path(path).read_text(encoding="utf-8")
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    missing = [name for name in STDLIB_FILES if not (stdlib / name).is_file()]
    if missing:
        raise SystemExit(f"{stdlib} lacks {', '.join(missing)}: give a text file with --text")
    return "".join((stdlib / name).read_text(encoding="utf-8") for name in STDLIB_FILES)


class Vocabulary:
    """The characters of a text, by frequency; index 0 stands for any other character (and
    prints as U+FFFD, the replacement character)."""

    def __init__(self, text: str):
        counts = Counter(text)
        self.chars = ["\ufffd"] + sorted(counts, key=lambda c: (-counts[c], c))
        self.index = {c: i for i, c in enumerate(self.chars)}
        # add-one smoothed character frequencies: the unigram model's probabilities
        self.unigram = torch.tensor([1.0] + [counts[c] + 1.0 for c in self.chars[1:]])
        self.unigram /= self.unigram.sum()

    def __len__(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> torch.Tensor:
        return torch.tensor([self.index.get(c, 0) for c in text], dtype=torch.long)

    def decode(self, tokens) -> str:
        return "".join(self.chars[t] for t in tokens)


def as_streams(tokens: torch.Tensor, streams: int) -> torch.Tensor:
    """``tokens`` cut into ``streams`` contiguous pieces side by side: ``[length, streams]``
    (the remainder is dropped)."""
    length = len(tokens) // streams
    return tokens[: length * streams].view(streams, length).t()


def chunks(streams: torch.Tensor, bptt: int):
    """(inputs, targets) of consecutive chunks of at most ``bptt`` steps, each ``[steps,
    streams]``: targets are the inputs one character later."""
    for start in range(0, len(streams) - 1, bptt):
        stop = min(start + bptt, len(streams) - 1)
        yield streams[start:stop], streams[start + 1 : stop + 1]


class CharLM(nn.Module):
    def __init__(self, cell: str, vocabulary: int, embedding: int, hidden: int, layers: int):
        super().__init__()
        self.cell = cell
        self.embed = nn.Embedding(vocabulary, embedding)
        self.rnn = {"lstm": nn.LSTM, "gru": nn.GRU}[cell](embedding, hidden, layers)
        self.head = nn.Linear(hidden, vocabulary)

    def zero_state(self, batch: int):
        h = self.embed.weight.new_zeros(self.rnn.num_layers, batch, self.rnn.hidden_size)
        return (h, h.clone()) if self.cell == "lstm" else h

    def forward(self, tokens, state):  # tokens [T, B] -> logits [T, B, vocabulary]
        output, state = self.rnn(self.embed(tokens), state)
        return self.head(output), state


def detach(state):
    """The carried state, cut from the graph of the chunk that produced it."""
    return tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()


def cross_entropy(logits, targets):
    return nn.functional.cross_entropy(logits.float().flatten(0, 1), targets.flatten())


@torch.no_grad()
def perplexity(model, streams, bptt, args) -> float:
    """exp(mean cross-entropy per character) over ``streams`` (``[length, batch]``)."""
    model.eval()
    state, total, count = model.zero_state(streams.shape[1]), 0.0, 0
    for inputs, targets in chunks(streams, bptt):
        with autocast(args):
            logits, state = model(inputs, state)
        total += cross_entropy(logits, targets).item() * targets.numel()
        count += targets.numel()
    model.train()
    return math.exp(total / count)


def unigram_perplexity(vocabulary: Vocabulary, tokens: torch.Tensor) -> float:
    return math.exp(-vocabulary.unigram.log()[tokens].mean().item())


@torch.no_grad()
def sample(model, vocabulary: Vocabulary, prompt: str, length: int, temperature: float, seed: int, device) -> str:
    """``length`` characters drawn one at a time after ``prompt``, from the softmax of the
    logits divided by ``temperature`` (below 1: safer, more repetitive; above 1: more varied)."""
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    logits, state = model(vocabulary.encode(prompt).to(device).unsqueeze(1), model.zero_state(1))
    drawn = []
    for _ in range(length):
        probabilities = torch.softmax(logits[-1, 0].float().cpu() / temperature, dim=0)
        token = torch.multinomial(probabilities, 1, generator=generator)
        drawn.append(token.item())
        logits, state = model(token.to(device).view(1, 1), state)
    model.train()
    return prompt + vocabulary.decode(drawn)


def main(argv=None) -> dict:
    parser = make_parser(__doc__.split("\n\n")[0], steps=1000)
    parser.add_argument("--text", help="a UTF-8 text file (default: Python standard-library sources)")
    parser.add_argument("--cell", choices=["lstm", "gru"], default="lstm")
    parser.add_argument("--embedding", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32, help="parallel streams")
    parser.add_argument("--bptt", type=int, default=64, help="characters per truncated-BPTT chunk")
    parser.add_argument("--eval-every", type=int, default=0,
                        help="validate every this many steps too (0: only after each epoch and at the end)")
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--sample-length", type=int, default=300)
    parser.add_argument("--prompt", default="\ndef ", help="the sample's first characters")
    add_training_options(parser, lr=3e-3)
    args = parser.parse_args(argv)
    if not args.prompt:
        parser.error("--prompt needs at least one character")

    text = read_text(args.text)
    split = int(len(text) * (1 - VALIDATION_FRACTION))
    vocabulary = Vocabulary(text[:split])
    train = as_streams(vocabulary.encode(text[:split]), args.batch).to(args.device)
    validation = as_streams(vocabulary.encode(text[split:]), args.batch).to(args.device)
    steps_per_epoch = math.ceil((len(train) - 1) / args.bptt)
    unigram = unigram_perplexity(vocabulary, vocabulary.encode(text[split:]))
    print(f"text: {len(text):,} characters ({args.text or 'Python standard library'}), vocabulary "
          f"{len(vocabulary)}, {steps_per_epoch} steps per epoch; validation perplexity of a unigram model "
          f"{unigram:.2f}, of a uniform guess {len(vocabulary)}")

    torch.manual_seed(args.seed)

    def build() -> CharLM:
        return CharLM(args.cell, len(vocabulary), args.embedding, args.hidden, args.layers)

    models = twin_models(build, args.device)
    training = compiled(models, args)
    optimizers, schedules = optimizers_and_schedules(models, args)
    timers = {name: StepTimer(args.device) for name in NAMES}
    losses = {name: [] for name in NAMES}
    validations = []  # (step, {name: validation perplexity})

    def validate(step: int) -> None:
        validations.append((step, {name: perplexity(m, validation, args.bptt, args) for name, m in models.items()}))

    validate(0)
    log(0, {name: {"validation perplexity": validations[0][1][name]} for name in NAMES}, label="epoch 0.00 ")
    progress = ProgressBar(args.steps)
    step = 0
    while step < args.steps:  # an epoch: the streams from their start, from a zero state
        states = {name: m.zero_state(args.batch) for name, m in models.items()}
        for inputs, targets in chunks(train, args.bptt):
            step += 1
            for name, model in training.items():
                with timers[name]:
                    with autocast(args):
                        logits, state = model(inputs, states[name])
                        loss = cross_entropy(logits, targets)
                    clipped_step(loss, models[name], optimizers[name], schedules[name], args)
                states[name] = detach(state)
                losses[name].append(loss.item())
            progress.update(step)
            validating = step % steps_per_epoch == 0 or step == args.steps
            validating |= args.eval_every > 0 and step % args.eval_every == 0
            if validating:
                validate(step)
            if validating or step % args.log_every == 0:
                report = {}
                for name in NAMES:
                    recent = losses[name][-args.log_every:]
                    report[name] = {"loss": sum(recent) / len(recent), "ms/step": timers[name].median_ms()}
                    if validating:
                        report[name]["validation perplexity"] = validations[-1][1][name]
                log(step, report, label=f"epoch {step / steps_per_epoch:.2f} ", progress=progress)
            if step == args.steps:
                break

    print(f"unigram model: validation perplexity {unigram:.2f}")
    for name, model in models.items():
        drawn = sample(model, vocabulary, args.prompt, args.sample_length, args.temperature, args.seed, args.device)
        print(f"--- {name}, temperature {args.temperature}:\n{drawn}\n---")

    final = validations[-1][1]
    cross = swap_checkpoints(models, build, args, lambda model: perplexity(model, validation, args.bptt, args), final,
                             "validation perplexity", vocabulary=vocabulary.chars)

    results = {
        name: {"losses": losses[name], "ms_per_step": timers[name].median_ms(),
               "validation_perplexity": [(s, ppl[name]) for s, ppl in validations],
               "cross_loaded_perplexity": cross[name]}
        for name in NAMES
    }
    return results | {"unigram_perplexity": unigram}


if __name__ == "__main__":
    main()
