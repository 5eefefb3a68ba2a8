"""Test setup shared by every test file.

* Without an NVIDIA GPU, Triton kernels run in the interpreter on CPU tensors
  (TRITON_INTERPRET=1 must be set before triton is imported, so before torch).
* Every output the C++ kernels allocate is filled with NaN first, and so is every torch.empty /
  torch.empty_like made from Python (the Triton ops): an element a kernel forgets to write shows
  up as NaN instead of passing by luck.
* Tests marked ``cuda`` skip without a GPU.
* backend="auto" sees no shipped dispatch table (below).
"""

import glob
import os

os.environ.setdefault("FUSED_RNN_FILL_UNINITIALIZED", "1")
if not glob.glob("/dev/nvidia[0-9]*"):
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from fused_rnn import dispatch  # noqa: E402

# backend="auto"'s rules are tested with tables the tests write. The tables shipped for real
# machines (one of which may be the machine running the tests) are tested on their own
# (test_dispatch.py), so that no other test's outcome depends on the machine it runs on.
dispatch.SHIPPED_TABLES = os.devnull

_real_empty = torch.empty
_real_empty_like = torch.empty_like


def _nan_filled(tensor):
    if tensor.is_floating_point() and tensor.device.type != "meta":
        with torch.no_grad():
            tensor.fill_(float("nan"))
    return tensor


def _nan_empty(*args, **kwargs):
    if "out" in kwargs:
        return _real_empty(*args, **kwargs)
    return _nan_filled(_real_empty(*args, **kwargs))


def _nan_empty_like(*args, **kwargs):
    return _nan_filled(_real_empty_like(*args, **kwargs))


@pytest.fixture(autouse=True)
def nan_filled_empty(monkeypatch):
    monkeypatch.setattr(torch, "empty", _nan_empty)
    monkeypatch.setattr(torch, "empty_like", _nan_empty_like)


@pytest.fixture(autouse=True)
def seeded():
    torch.manual_seed(0)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
