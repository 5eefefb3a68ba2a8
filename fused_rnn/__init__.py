"""fused_rnn: fused LSTM, GRU and Elman RNN layers for PyTorch (CUDA, Triton and CPU kernels).

    import fused_rnn
    lstm = fused_rnn.LSTM(input_size=256, hidden_size=512, num_layers=2, batch_first=True)

The layers and cells are drop-in replacements for their torch.nn namesakes (same arguments,
parameters, state_dict, inputs and outputs). :mod:`fused_rnn.functional` has the same layers
as functions of explicit weights; :mod:`fused_rnn.backends` picks the kernels;
:func:`fused_rnn.convert` swaps the torch.nn layers and cells of a model for these (or back).
"""

from . import _ops  # noqa: F401  (loads fused_rnn._C: registers the ops, fake kernels, autograd)
from . import backends, functional, reference
from .convert import convert
from .layernorm import LayerNormGRU, LayerNormGRUCell, LayerNormLSTM, LayerNormLSTMCell
from .modules import GRU, LSTM, RNN, GRUCell, LSTMCell, RNNCell

__version__ = "0.1.0"


def empty_cpu_cache() -> int:
    """Returns to the system the memory the CPU kernels keep for reuse (freed outputs of 1 MB
    and more, up to 256 MB, so that a training loop does not page-fault on fresh memory every
    step), like ``torch.cuda.empty_cache()``. Returns the number of bytes released."""
    return _ops._C.release_cpu_pool()


__all__ = [
    "LSTM",
    "GRU",
    "RNN",
    "LSTMCell",
    "GRUCell",
    "RNNCell",
    "LayerNormLSTM",
    "LayerNormGRU",
    "LayerNormLSTMCell",
    "LayerNormGRUCell",
    "convert",
    "empty_cpu_cache",
    "backends",
    "functional",
    "reference",
]
