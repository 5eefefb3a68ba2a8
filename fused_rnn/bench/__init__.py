"""The benchmark suite: ``python -m fused_rnn.bench`` (see ``--help`` and bench/README.md).

Modules, one job each: ``cases`` (the grids), ``layers`` (building the torch.nn and fused
layers), ``candidates`` (which implementations are measured), ``steps`` (the timed calls),
``correctness`` (the gate), ``timing``, ``memory``, ``flops``, ``environment`` (device and
versions), ``runner`` (all of it per configuration), ``results_csv``, ``table``, ``plots``
and ``cli``. Nothing is imported here, so ``python -m fused_rnn.bench.plots`` stays light.
"""
