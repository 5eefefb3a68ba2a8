"""Handwritten digits read row by row: scikit-learn's 8x8 digits as sequences of 8 rows of 8
pixels, classified by a bidirectional LSTM (or ``--cell gru``) from its final states;
torch.nn and fused_rnn side by side from the same initial weights.

Reports the test accuracy of both models and their time per training step, and draws both
loss curves into a PNG (``--plot``).

Needs scikit-learn (the data) and matplotlib (the plot, skipped without it):

    pip install scikit-learn matplotlib
    python examples/digits_classification.py                  # CPU: about a minute
    python examples/digits_classification.py --device cuda --cell gru
"""

from __future__ import annotations

import torch
from side_by_side import NAMES, StepTimer, log, make_parser, twin_models
from torch import nn


def load_digits(seed: int):
    """(x_train, y_train, x_test, y_test): x ``[N, 8 rows, 8 pixels]`` scaled to [0, 1]."""
    try:
        from sklearn.datasets import load_digits as sklearn_digits
        from sklearn.model_selection import train_test_split
    except ImportError as error:
        raise SystemExit(f"this example needs scikit-learn: pip install scikit-learn ({error})")
    digits = sklearn_digits()
    x = torch.tensor(digits.images, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target)
    train, test = train_test_split(torch.arange(len(y)), test_size=0.25, stratify=y, random_state=seed)
    return x[train], y[train], x[test], y[test]


class RowReader(nn.Module):
    def __init__(self, cell: str, hidden: int):
        super().__init__()
        self.rnn = {"lstm": nn.LSTM, "gru": nn.GRU}[cell](8, hidden, batch_first=True, bidirectional=True)
        self.head = nn.Linear(2 * hidden, 10)

    def forward(self, images):  # [B, 8, 8]: a batch of 8 steps of 8 features
        _, state = self.rnn(images)
        h_n = state[0] if isinstance(state, tuple) else state
        return self.head(torch.cat([h_n[0], h_n[1]], dim=1))  # both directions' final states


@torch.no_grad()
def accuracy(model, x, y) -> float:
    model.eval()
    correct = (model(x).argmax(1) == y).float().mean().item()
    model.train()
    return correct


def plot(history: dict[str, list[float]], path: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib)")
        return
    figure, axes = plt.subplots(figsize=(6, 4))
    for name, losses in history.items():
        axes.plot(range(1, len(losses) + 1), losses, label=name, alpha=0.8)
    axes.set(xlabel="step", ylabel="training loss", yscale="log", title="digits, row by row")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    print(f"loss curves: {path}")


def main(argv=None) -> dict:
    parser = make_parser(__doc__.split("\n\n")[0], steps=400)
    parser.add_argument("--cell", choices=["lstm", "gru"], default="lstm")
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--plot", default="digits_loss.png", help="PNG of the loss curves ('' for none)")
    args = parser.parse_args(argv)

    x_train, y_train, x_test, y_test = (t.to(args.device) for t in load_digits(args.seed))
    torch.manual_seed(args.seed)
    models = twin_models(lambda: RowReader(args.cell, args.hidden), args.device)
    optimizers = {name: torch.optim.Adam(m.parameters(), lr=args.lr) for name, m in models.items()}
    timers = {name: StepTimer(args.device) for name in NAMES}
    history = {name: [] for name in NAMES}
    order = torch.Generator().manual_seed(args.seed)

    for step in range(1, args.steps + 1):
        batch = torch.randint(len(y_train), (args.batch,), generator=order).to(args.device)
        for name, model in models.items():
            with timers[name]:
                loss = nn.functional.cross_entropy(model(x_train[batch]), y_train[batch])
                optimizers[name].zero_grad()
                loss.backward()
                optimizers[name].step()
            history[name].append(loss.item())
        if step % args.log_every == 0 or step == args.steps:
            log(step, {
                name: {"loss": history[name][-1], "test accuracy": accuracy(models[name], x_test, y_test),
                       "ms/step": timers[name].median_ms()}
                for name in NAMES
            })

    if args.plot:
        plot(history, args.plot)
    return {
        name: {"losses": history[name], "test_accuracy": accuracy(models[name], x_test, y_test),
               "ms_per_step": timers[name].median_ms()}
        for name in NAMES
    }


if __name__ == "__main__":
    main()
