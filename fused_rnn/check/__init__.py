"""``python -m fused_rnn.check``: the self-test, in the spirit of ``python -m
torch.utils.collect_env``.

On every device present (the CPU, each CUDA GPU), every available backend (``"auto"`` too) runs
each cell (LSTM, GRU, RNN tanh and relu, the LSTM with a projection) in each dtype, one- and
two-layer, one- and two-way, with and without lengths, at one small shape. Every output (output,
h_n, c_n) and every gradient (input, h0, c0, every weight and bias) is compared with torch.nn's
from the same weights by the rule of :mod:`fused_rnn.testing`. It prints the versions, the build,
which backend runs where, a table of results and every failure, and exits 1 on any mismatch.

Modules: ``cases`` (what runs), ``compare`` (one case), ``environment`` (versions, build,
devices), ``report`` (the text and JSON) and ``cli``.
"""

from .cli import main

__all__ = ["main"]
