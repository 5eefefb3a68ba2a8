from . import _ops  # noqa: F401  (loads fused_rnn._C and registers the ops)
