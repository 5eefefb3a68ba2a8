"""Options of the pytest-benchmark suite (``pytest bench/ --benchmark-only``).

The cases come from fused_rnn.bench.cases, the same grids as ``python -m fused_rnn.bench``:

    pytest bench/ --benchmark-only                                   # full grid, default device
    pytest bench/ --benchmark-only --bench-grid quick --bench-device cpu
    pytest bench/ --benchmark-only --bench-cells lstm --bench-dtype fp32 --benchmark-save=lstm
"""

from __future__ import annotations

import pytest
import torch

from fused_rnn.bench import candidates, cases
from fused_rnn.bench.precision import strict_fp32


def pytest_addoption(parser):
    group = parser.getgroup("fused_rnn benchmark")
    group.addoption("--bench-device", choices=("cpu", "cuda"), default=None,
                    help="device (default: cuda when available, else cpu)")
    group.addoption("--bench-grid", choices=cases.GRIDS, default="full", help="grid (default: full)")
    group.addoption("--bench-cells", default="lstm,gru,rnn", help="comma-separated cells")
    group.addoption("--bench-dtype", default=None,
                    help="comma-separated dtypes (default: bf16 on a GPU, fp32 on the CPU)")
    group.addoption("--bench-modes", default="fwd,fwd+bwd", help="comma-separated modes")
    group.addoption("--bench-backends", default=None,
                    help="comma-separated fused_rnn backends (default: every available one)")
    group.addoption("--bench-threads", type=int, default=2, help="CPU threads (default 2)")


def _list(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def _device(config) -> torch.device:
    name = config.getoption("--bench-device") or ("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def pytest_generate_tests(metafunc):
    if not {"case", "implementation"} <= set(metafunc.fixturenames):
        return
    config = metafunc.config
    device = _device(config)
    cells = [cases.CELL_ALIASES[c] for c in _list(config.getoption("--bench-cells"))]
    dtypes = _list(config.getoption("--bench-dtype") or cases.default_dtype(device.type))
    modes = _list(config.getoption("--bench-modes"))
    backends = config.getoption("--bench-backends")
    chosen = candidates.select(_list(backends) if backends else None, device, cells)
    params, ids = [], []
    for case in cases.make_cases(cases.grid_shapes(device.type, config.getoption("--bench-grid")),
                                 cells, dtypes, modes):
        for name in [candidates.TORCH_NN] + [c.name for c in chosen if c.supports(case, device)]:
            params.append((case, name))
            ids.append(f"{case.id}-{name}")
    metafunc.parametrize(("case", "implementation"), params, ids=ids)


@pytest.fixture(scope="session")
def device(request) -> torch.device:
    return _device(request.config)


@pytest.fixture(scope="session", autouse=True)
def bench_settings(request):
    """Fixed CPU thread count and strict fp32 (no TF32) for the whole session, as the CLI."""
    threads = torch.get_num_threads()
    torch.set_num_threads(request.config.getoption("--bench-threads"))
    with strict_fp32():
        yield
    torch.set_num_threads(threads)
