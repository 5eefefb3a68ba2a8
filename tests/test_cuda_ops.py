"""Tests of the CUDA backend (csrc/cuda).

Two parts:

* CPU tests (no GPU needed, run in CI when the extension is built with CUDA): the planner
  (``fused_rnn_cuda::plan``) and the host emulation of the CUDA backend
  (``fused_rnn_cuda::*_emulated``): the CUDA ops' host code and kernel bodies run on CPU tensors,
  with the persistent schedule executed by one host thread per block. They check the partition,
  tiling, chunking, split-K, lengths, reverse and workspace logic against ``fused_rnn.reference``.
  What they cannot check is device-only: the wmma/FFMA product code, the grid barrier, memory
  ordering and the launch configuration.
* GPU tests (``@pytest.mark.cuda``, skipped without a GPU): the registered CUDA ops against
  ``fused_rnn.reference`` in fp64 on the CPU, both algorithms (forced with FUSED_RNN_CUDA_ALGO),
  every cell and dtype, lengths, reverse, odd sizes, the LSTM projection, all gradients, CUDA-graph
  capture and the NaN fill of FUSED_RNN_FILL_UNINITIALIZED.

Tolerances: fp32 against fp64 at ~1e-5 (TF32 off); fp16/bf16 against fp64, bounded by a small
multiple of the error that the reference itself makes when computed in that dtype (every op in
fp16/bf16, as torch would) -- never a loose fixed atol.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import fused_rnn
from fused_rnn import _ops
from fused_rnn import reference
from helpers import assert_same_nonfinite

CELLS = ("lstm", "gru", "rnn_tanh", "rnn_relu")
GATES = {"lstm": 4, "gru": 3, "rnn_tanh": 1, "rnn_relu": 1}
# A pretend H100 for the emulation: 132 multiprocessors, 227 KB of shared memory per block.
H100 = dict(sm_count=132, smem_per_block=232448)
A100 = dict(sm_count=108, smem_per_block=166912)

needs_cuda_build = pytest.mark.skipif(
    not _ops.WITH_CUDA, reason="fused_rnn._C was built without the CUDA sources"
)
_no_gpu = pytest.mark.skipif(
    not (_ops.WITH_CUDA and torch.cuda.is_available()), reason="needs a CUDA GPU"
)


def gpu_test(fn):
    """A GPU test: marked `cuda`, skipped without a GPU (or without the CUDA build)."""
    return pytest.mark.cuda(_no_gpu(fn))


# ---------------------------------------------------------------------------------------------
# Inputs, reference, comparison
# ---------------------------------------------------------------------------------------------


def make_inputs(cell, T, B, H, *, proj=None, dtype=torch.float32, device="cpu", lengths=None,
                bias=True, seed=0):
    """Random op inputs as torch.nn would see them: weights ~ U(-1/sqrt(H), 1/sqrt(H))."""
    g = torch.Generator().manual_seed(seed)
    G = GATES[cell]
    P = proj or H
    k = H ** -0.5

    def uniform(*shape):
        return (torch.rand(*shape, generator=g, dtype=torch.float64) * 2 - 1) * k

    inp = {
        "gx": torch.randn(T, B, G * H, generator=g, dtype=torch.float64) * 0.6,
        "w_hh": uniform(G * H, P),
        "h0": torch.randn(B, P, generator=g, dtype=torch.float64) * 0.5,
    }
    if cell == "lstm":
        inp["c0"] = torch.randn(B, H, generator=g, dtype=torch.float64) * 0.5
        inp["w_hr"] = uniform(P, H) if proj else None
    if cell == "gru":
        inp["b_hh"] = uniform(3 * H) if bias else None
    inp = {n: (v.to(device=device, dtype=dtype) if v is not None else None) for n, v in inp.items()}
    if lengths == "random":
        lens = torch.randint(0, T + 1, (B,), generator=g)
        lens[0] = T  # a full sequence ...
        if B > 1:
            lens[1] = 0  # ... and an empty one
        inp["lengths"] = lens
    elif lengths is not None:
        inp["lengths"] = torch.as_tensor(lengths, dtype=torch.int64)
    else:
        inp["lengths"] = None
    return inp


def make_output_grads(cell, T, B, H, P, *, dtype, device, seed=1, with_grad_y=True,
                      with_grad_h_n=True, with_grad_c_n=True):
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)

    grads = {
        "y": rnd(T, B, P) if with_grad_y else None,
        "h_n": rnd(B, P) if with_grad_h_n else None,
    }
    if cell == "lstm":
        grads["c_n"] = rnd(B, H) if with_grad_c_n else None
    return grads


def differentiable_names(cell, inp):
    names = ["gx", "w_hh", "h0"]
    if cell == "lstm":
        names += ["c0"] + (["w_hr"] if inp["w_hr"] is not None else [])
    if cell == "gru" and inp["b_hh"] is not None:
        names.append("b_hh")
    return names


def reference_call(cell, inp, reverse):
    """fused_rnn.reference on inp (any dtype/device): (y, h_n[, c_n])."""
    lengths = inp["lengths"]
    if cell == "lstm":
        return reference.lstm(inp["gx"], inp["w_hh"], inp["w_hr"], inp["h0"], inp["c0"], lengths,
                              reverse)
    if cell == "gru":
        return reference.gru(inp["gx"], inp["w_hh"], inp["b_hh"], inp["h0"], lengths, reverse)
    fn = reference.rnn_tanh if cell == "rnn_tanh" else reference.rnn_relu
    return fn(inp["gx"], inp["w_hh"], inp["h0"], lengths, reverse)


def reference_with_grads(cell, inp, reverse, out_grads):
    """Outputs and input gradients of the reference, computed in inp's dtype on the CPU."""
    inp = {n: (v.detach().cpu() if isinstance(v, torch.Tensor) else v) for n, v in inp.items()}
    names = differentiable_names(cell, inp)
    for n in names:
        inp[n] = inp[n].clone().requires_grad_(True)
    outs = reference_call(cell, inp, reverse)
    keys = ["y", "h_n", "c_n"][: len(outs)]
    loss = sum(
        (o.double() * out_grads[k].detach().cpu().double()).sum()
        for o, k in zip(outs, keys)
        if out_grads.get(k) is not None
    )
    grads = torch.autograd.grad(loss, [inp[n] for n in names], allow_unused=True)
    return (
        {k: o.detach() for k, o in zip(keys, outs)},
        {n: (gr if gr is not None else torch.zeros_like(inp[n])) for n, gr in zip(names, grads)},
    )


@contextlib.contextmanager
def reference_in_storage_dtype():
    """Runs fused_rnn.reference entirely in the storage dtype (every op rounded to fp16/bf16),
    as a plain torch implementation in that dtype would: the yardstick for half precision."""
    saved = reference._compute_dtype
    reference._compute_dtype = lambda dtype: dtype
    try:
        yield
    finally:
        reference._compute_dtype = saved


def max_err(actual, expected):
    return (actual.detach().cpu().double() - expected.detach().cpu().double()).abs().max().item()


def check_fp32(name, actual, expected, tol=2e-5):
    """fp32 result against the fp64 reference: max error relative to the reference's scale."""
    assert actual.shape == expected.shape, (name, actual.shape, expected.shape)
    assert torch.isfinite(actual.detach().cpu()).all(), f"{name}: non-finite values"
    scale = max(1.0, expected.detach().abs().max().item())
    err = max_err(actual, expected)
    assert err <= tol * scale, f"{name}: max error {err:.3g} > {tol * scale:.3g}"


def check_lowp(name, actual, expected64, torch_lowp, factor=3.0):
    """fp16/bf16 result against the fp64 reference, bounded by `factor` times the error of the
    reference computed in that dtype (plus a hair for outputs it gets exactly right)."""
    assert actual.shape == expected64.shape, (name, actual.shape, expected64.shape)
    assert torch.isfinite(actual.detach().cpu()).all(), f"{name}: non-finite values"
    scale = max(1.0, expected64.abs().max().item())
    err = max_err(actual, expected64)
    bound = factor * max_err(torch_lowp, expected64) + 1e-6 * scale
    assert err <= bound, f"{name}: max error {err:.3g} > {bound:.3g} ({factor}x torch's own)"


# ---------------------------------------------------------------------------------------------
# Calling the ops: the registered ops (GPU) and their host emulation (CPU)
# ---------------------------------------------------------------------------------------------


def forward_args(cell, inp, reverse, save):
    if cell == "lstm":
        return (inp["gx"], inp["w_hh"], inp["w_hr"], inp["h0"], inp["c0"], inp["lengths"],
                reverse, save)
    if cell == "gru":
        return (inp["gx"], inp["w_hh"], inp["b_hh"], inp["h0"], inp["lengths"], reverse, save)
    return (inp["gx"], inp["w_hh"], inp["h0"], inp["lengths"], reverse)


def forward_dict(cell, outs):
    if cell == "lstm":
        return dict(zip(("y", "h_n", "c_n", "gates", "cs"), outs))
    if cell == "gru":
        return dict(zip(("y", "h_n", "gates"), outs))
    return dict(zip(("y", "h_n"), outs))


def backward_args(cell, inp, fwd, grads, reverse):
    if cell == "lstm":
        return (grads["y"], grads["h_n"], grads["c_n"], inp["w_hh"], inp["w_hr"], inp["h0"],
                inp["c0"], fwd["y"], fwd["gates"], fwd["cs"], inp["lengths"], reverse)
    if cell == "gru":
        return (grads["y"], grads["h_n"], inp["w_hh"], inp["h0"], fwd["y"], fwd["gates"],
                inp["lengths"], reverse)
    return (grads["y"], grads["h_n"], inp["w_hh"], inp["h0"], fwd["y"], inp["lengths"], reverse)


def backward_dict(cell, inp, outs):
    if cell == "lstm":
        d = dict(zip(("gx", "w_hh", "w_hr", "h0", "c0"), outs))
        if inp["w_hr"] is None:
            assert d.pop("w_hr").numel() == 0
        return d
    if cell == "gru":
        d = dict(zip(("gx", "w_hh", "b_hh", "h0"), outs))
        if inp["b_hh"] is None:
            d.pop("b_hh")
        return d
    return dict(zip(("gx", "w_hh", "h0"), outs))


def op_forward(cell, inp, reverse, save=True):
    return forward_dict(cell, getattr(torch.ops.fused_rnn, f"{cell}_forward")(
        *forward_args(cell, inp, reverse, save)))


def op_backward(cell, inp, fwd, grads, reverse):
    return backward_dict(cell, inp, getattr(torch.ops.fused_rnn, f"{cell}_backward")(
        *backward_args(cell, inp, fwd, grads, reverse)))


def emulated_forward(cell, inp, reverse, device, save=True):
    """device: dict(algo=, sm_count=, smem_per_block=, allow_tf32=)."""
    dev = (device["algo"], device["sm_count"], device["smem_per_block"], device["allow_tf32"])
    ops = torch.ops.fused_rnn_cuda
    if cell.startswith("rnn"):
        outs = ops.rnn_forward_emulated(cell[4:], *forward_args(cell, inp, reverse, save), *dev)
    else:
        outs = getattr(ops, f"{cell}_forward_emulated")(*forward_args(cell, inp, reverse, save),
                                                        *dev)
    return forward_dict(cell, outs)


def emulated_backward(cell, inp, fwd, grads, reverse, device):
    dev = (device["algo"], device["sm_count"], device["smem_per_block"], device["allow_tf32"])
    ops = torch.ops.fused_rnn_cuda
    args = backward_args(cell, inp, fwd, grads, reverse)
    if cell.startswith("rnn"):
        outs = ops.rnn_backward_emulated(cell[4:], *args, *dev)
    else:
        outs = getattr(ops, f"{cell}_backward_emulated")(*args, *dev)
    return backward_dict(cell, inp, outs)


PLAN_FIELDS = ("algo", "engine", "units_per_block", "num_blocks", "rows_pad", "k_valid", "k_pad",
               "k_chunk", "batch_tile", "k_splits", "ld_w", "ld_a", "ld_acc", "off_a", "off_acc",
               "smem_bytes")
PERSISTENT, FALLBACK = 0, 1
WMMA_BF16, WMMA_F16, WMMA_TF32, FFMA = 0, 1, 2, 3


def plan(cell, backward, B, H, *, P=None, projection=False, dtype=torch.float32, allow_tf32=False,
         sm_count=132, cc_major=9, smem_per_block=232448, algo="auto"):
    values = torch.ops.fused_rnn_cuda.plan(cell, backward, B, H, P or H, projection, dtype,
                                           allow_tf32, sm_count, cc_major, smem_per_block, algo)
    return dict(zip(PLAN_FIELDS, values))


def check_against_reference(cell, inp, reverse, fwd, bwd, grads, *, tol=2e-5):
    """fp32 outputs and gradients against the fp64 reference of the same inputs."""
    inp64 = {n: (v.detach().cpu().double() if isinstance(v, torch.Tensor) and v.is_floating_point()
                 else v) for n, v in inp.items()}
    if isinstance(inp64["lengths"], torch.Tensor):
        inp64["lengths"] = inp64["lengths"].cpu()
    ref_out, ref_grads = reference_with_grads(cell, inp64, reverse, grads)
    for k, v in ref_out.items():
        check_fp32(k, fwd[k], v, tol)
    if bwd is not None:
        for k, v in ref_grads.items():
            check_fp32(f"grad_{k}", bwd[k], v, tol)


def check_lowp_against_reference(cell, inp, reverse, fwd, bwd, grads, factor=3.0):
    """fp16/bf16 outputs and gradients against the fp64 reference of the same (rounded) inputs,
    bounded by the error of the reference run in that dtype."""
    inp_cpu = {n: (v.detach().cpu() if isinstance(v, torch.Tensor) else v) for n, v in inp.items()}
    inp64 = {n: (v.double() if isinstance(v, torch.Tensor) and v.is_floating_point() else v)
             for n, v in inp_cpu.items()}
    grads_cpu = {k: (v.detach().cpu() if v is not None else None) for k, v in grads.items()}
    ref_out, ref_grads = reference_with_grads(cell, inp64, reverse, grads_cpu)
    with reference_in_storage_dtype():
        low_out, low_grads = reference_with_grads(cell, inp_cpu, reverse, grads_cpu)
    for k, v in ref_out.items():
        check_lowp(k, fwd[k], v, low_out[k], factor)
    if bwd is not None:
        for k, v in ref_grads.items():
            check_lowp(f"grad_{k}", bwd[k], v, low_grads[k], factor)


# =============================================================================================
# CPU tests: the planner
# =============================================================================================


@needs_cuda_build
@pytest.mark.parametrize("threads", [1, 8])
def test_shared_memory_limit_only_grows(threads):
    """A persistent kernel's dynamic shared-memory limit is a property of the function, shared
    by every thread: it is raised only when a call needs more than any before (under a lock),
    never set back to a smaller call's size under a larger call in flight. Checked on the
    high-water mark that cuda/device_state.h keeps per (device, kernel)."""
    requests = [100, 50, 200, 150, 200, 40, 300, 10] * 25
    sets = torch.ops.fused_rnn_cuda.high_water_sets(requests, threads)
    assert sets == sorted(set(sets))                  # strictly increasing
    assert sets[-1] == max(requests)
    if threads == 1:
        assert sets == [100, 200, 300]


@needs_cuda_build
@pytest.mark.parametrize("device", [H100, A100, dict(sm_count=7, smem_per_block=49152)],
                         ids=["h100", "a100", "small"])
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("backward", [False, True], ids=["fwd", "bwd"])
@pytest.mark.parametrize("dtype,tf32", [(torch.float32, False), (torch.float32, True),
                                        (torch.bfloat16, False), (torch.float16, False)],
                         ids=["ffma", "tf32", "bf16", "fp16"])
def test_plan_invariants(device, cell, backward, dtype, tf32):
    G = GATES[cell]
    for B in (1, 5, 16, 64, 200):
        for H in (1, 3, 17, 64, 100, 256, 512, 1024, 2048):
            p = plan(cell, backward, B, H, dtype=dtype, allow_tf32=tf32, **device)
            if p["algo"] == FALLBACK:
                # Only because the weight slice does not fit: a small slice always does.
                assert H >= 256, (B, H, p)
                continue
            engine = {torch.bfloat16: WMMA_BF16, torch.float16: WMMA_F16}.get(
                dtype, WMMA_TF32 if tf32 else FFMA)
            # TF32 falls back to FFMA when its 16-row tiles do not fit.
            assert p["engine"] == engine or (engine == WMMA_TF32 and p["engine"] == FFMA)
            engine = p["engine"]
            U, nb = p["units_per_block"], p["num_blocks"]
            # The blocks cover the hidden units exactly, at most one block per multiprocessor.
            assert 1 <= nb <= device["sm_count"]
            assert (nb - 1) * U < H <= nb * U
            rows = U if backward else G * U
            granule = 4 if engine == FFMA else 16
            assert p["rows_pad"] % granule == 0 and rows <= p["rows_pad"] < rows + granule
            K = G * H if backward else H
            assert p["k_valid"] == K and p["k_pad"] % 16 == 0 and K <= p["k_pad"] < K + 16
            assert p["k_chunk"] % 16 == 0 and 16 <= p["k_chunk"] <= p["k_pad"]
            assert p["batch_tile"] % 16 == 0 and 16 <= p["batch_tile"] <= 64
            assert p["batch_tile"] <= max(16, -(-B // 16) * 16)
            k_step = {WMMA_BF16: 16, WMMA_F16: 16, WMMA_TF32: 8, FFMA: 128}[engine]
            assert 1 <= p["k_splits"] <= min(4, -(-p["k_chunk"] // k_step))
            tiles = (p["batch_tile"] // 16) * (p["rows_pad"] // granule)
            assert p["k_splits"] == 1 or tiles * (p["k_splits"] - 1) < 8  # no more than needed
            # Shared-memory layout: 128-byte aligned regions, 16-byte row strides, within limits.
            esize = 2 if dtype in (torch.bfloat16, torch.float16) else 4
            assert p["ld_w"] * esize % 16 == 0 and p["ld_w"] >= p["k_pad"]
            assert p["ld_a"] * esize % 16 == 0 and p["ld_a"] >= p["k_chunk"]
            assert p["ld_acc"] % 4 == 0 and p["ld_acc"] >= p["rows_pad"]
            assert p["off_a"] % 128 == 0 and p["off_acc"] % 128 == 0
            assert p["off_a"] >= p["rows_pad"] * p["ld_w"] * esize
            assert p["off_acc"] - p["off_a"] >= p["batch_tile"] * p["ld_a"] * esize
            acc_bytes = p["k_splits"] * p["batch_tile"] * p["ld_acc"] * 4
            assert p["off_acc"] + acc_bytes <= p["smem_bytes"] <= device["smem_per_block"]


@needs_cuda_build
def test_plan_typical_shapes_are_persistent():
    # The shapes the benchmark cares about run persistent on an H100 and an A100.
    for device in (H100, A100):
        for cell in CELLS:
            for backward in (False, True):
                for dtype in (torch.bfloat16, torch.float16, torch.float32):
                    p = plan(cell, backward, 64, 512, dtype=dtype, **device)
                    assert p["algo"] == PERSISTENT, (device, cell, backward, dtype)
    p = plan("lstm", False, 64, 1024, dtype=torch.bfloat16, **H100)
    assert p["algo"] == PERSISTENT and p["num_blocks"] == 128 and p["k_chunk"] == p["k_pad"]


@needs_cuda_build
def test_plan_fallback_rules():
    assert plan("lstm", False, 8, 64, P=32, projection=True)["algo"] == FALLBACK
    assert plan("gru", False, 8, 64, dtype=torch.float64)["algo"] == FALLBACK
    assert plan("gru", False, 8, 64, cc_major=7)["algo"] == FALLBACK
    assert plan("rnn_tanh", True, 8, 64, algo="fallback")["algo"] == FALLBACK
    assert plan("rnn_tanh", True, 8, 64, algo="persistent")["algo"] == PERSISTENT
    # Too large for shared memory: the fallback, or an error when persistent is forced.
    assert plan("lstm", False, 64, 8192, dtype=torch.float32)["algo"] == FALLBACK
    with pytest.raises(RuntimeError, match="FUSED_RNN_CUDA_ALGO=persistent"):
        plan("lstm", False, 64, 8192, algo="persistent")
    with pytest.raises(RuntimeError, match="FUSED_RNN_CUDA_ALGO=persistent"):
        plan("lstm", False, 8, 64, P=32, projection=True, algo="persistent")
    with pytest.raises(RuntimeError, match="auto, persistent or fallback"):
        plan("lstm", False, 8, 64, algo="fast")


@needs_cuda_build
def test_plan_prefers_full_tiles_then_fewest_units():
    # LSTM forward, H=1024 on 132 SMs: 8 units -> 32 rows, already whole tiles.
    p = plan("lstm", False, 64, 1024, dtype=torch.bfloat16, **H100)
    assert p["units_per_block"] == 8 and p["rows_pad"] == 32
    # Backward, H=1024 bf16: 16 units fill the 16-row tile and fit.
    p = plan("lstm", True, 64, 1024, dtype=torch.bfloat16, **H100)
    assert p["units_per_block"] == 16 and p["rows_pad"] == 16 and p["num_blocks"] == 64
    # Backward, H=1024 TF32: 16 rows of 4096 fp32 columns do not fit, even padded from 8
    # units; FFMA's 4-row tiles take 8 units in 8 rows.
    p = plan("lstm", True, 64, 1024, dtype=torch.float32, allow_tf32=True, **H100)
    assert p["algo"] == PERSISTENT and p["engine"] == FFMA
    assert p["units_per_block"] == 8 and p["rows_pad"] == 8
    # Forward, H=2048 bf16 on an A100: 19 units -> 80 padded rows of 2048 columns, 329 KB.
    assert plan("lstm", False, 64, 2048, dtype=torch.bfloat16, **A100)["algo"] == FALLBACK


# =============================================================================================
# CPU tests: host emulation of the CUDA backend
# =============================================================================================

# Pretend devices: few multiprocessors so that several blocks share the hidden units.
EMU_PERSISTENT = dict(algo="persistent", sm_count=3, smem_per_block=232448, allow_tf32=False)
EMU_FALLBACK = dict(algo="fallback", sm_count=3, smem_per_block=232448, allow_tf32=False)


def run_emulated_fp32_case(cell, T, B, H, device, *, lengths=None, reverse=False, proj=None,
                           bias=True, grads_kw=None, seed=0, tol=2e-5):
    inp = make_inputs(cell, T, B, H, proj=proj, lengths=lengths, bias=bias, seed=seed)
    P = proj or H
    grads = make_output_grads(cell, T, B, H, P, dtype=torch.float32, device="cpu", seed=seed + 1,
                              **(grads_kw or {}))
    fwd = emulated_forward(cell, inp, reverse, device)
    bwd = emulated_backward(cell, inp, fwd, grads, reverse, device)
    check_against_reference(cell, inp, reverse, fwd, bwd, grads, tol=tol)
    # The workspace is the CPU backend's (the backward ops of every backend read it).
    cpu = op_forward(cell, inp, reverse)
    for k in ("gates", "cs"):
        if k in fwd:
            check_fp32(k, fwd[k], cpu[k], tol)
    return fwd, bwd


@needs_cuda_build
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("device", [EMU_PERSISTENT, EMU_FALLBACK], ids=["persistent", "fallback"])
@pytest.mark.parametrize("lengths", [None, "random"], ids=["full", "lengths"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd_dir", "rev_dir"])
def test_emulated_matches_reference(cell, device, lengths, reverse):
    run_emulated_fp32_case(cell, 6, 5, 7, device, lengths=lengths, reverse=reverse)


@needs_cuda_build
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("T,B,H", [(1, 1, 3), (2, 1, 1), (3, 17, 5), (4, 2, 33)])
@pytest.mark.parametrize("algo", ["persistent", "fallback"])
def test_emulated_odd_sizes(cell, T, B, H, algo):
    run_emulated_fp32_case(cell, T, B, H, dict(EMU_PERSISTENT, algo=algo), lengths="random",
                           reverse=True)


def tightest_smem(cell, backward, B, H, tf32, sm_count):
    """The least shared memory per block (in 1 KB steps) that still runs persistent: the
    layout then has the smallest batch tiles and K chunks the planner makes."""
    for smem in range(4096, 262144, 1024):
        p = plan(cell, backward, B, H, allow_tf32=tf32, sm_count=sm_count, cc_major=8,
                 smem_per_block=smem)
        if p["algo"] == PERSISTENT:
            return smem, p
    raise AssertionError("no persistent plan")


@needs_cuda_build
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("tf32", [False, True], ids=["ffma", "tf32_layout"])
def test_emulated_tiles_chunks_and_splits(cell, tf32):
    # Little shared memory: several batch tiles and K chunks per step, and (with the TF32
    # engine's layout) split-K partial sums. The host product is exact fp32 either way.
    T, B, H = 4, 70, 40
    devices = {}
    for backward in (False, True):
        smem, p = tightest_smem(cell, backward, B, H, tf32, sm_count=2)
        assert p["batch_tile"] < B and p["num_blocks"] == 2, p
        assert p["k_chunk"] < p["k_pad"], p
        devices[backward] = dict(algo="persistent", sm_count=2, smem_per_block=smem,
                                 allow_tf32=tf32)
    inp = make_inputs(cell, T, B, H, lengths="random")
    grads = make_output_grads(cell, T, B, H, H, dtype=torch.float32, device="cpu")
    fwd = emulated_forward(cell, inp, False, devices[False])
    bwd = emulated_backward(cell, inp, fwd, grads, False, devices[True])
    check_against_reference(cell, inp, False, fwd, bwd, grads)


@needs_cuda_build
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh"])
@pytest.mark.parametrize("tf32,H", [(True, 40), (False, 300)], ids=["tf32_layout", "ffma"])
def test_emulated_split_k(cell, tf32, H):
    # One batch tile and few weight rows per block: K is split (TF32 steps of 8 columns, FFMA
    # steps of 128, the last one partial).
    T, B = 3, 4
    device = dict(algo="persistent", sm_count=H, smem_per_block=232448, allow_tf32=tf32)
    assert plan(cell, True, B, H, allow_tf32=tf32, sm_count=H)["k_splits"] > 1
    run_emulated_fp32_case(cell, T, B, H, device, lengths="random", reverse=True)


@needs_cuda_build
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("grads_kw", [dict(with_grad_y=False), dict(with_grad_h_n=False),
                                      dict(with_grad_c_n=False)], ids=["no_dy", "no_dhn", "no_dcn"])
def test_emulated_missing_output_grads(cell, grads_kw):
    run_emulated_fp32_case(cell, 5, 3, 9, EMU_PERSISTENT, grads_kw=grads_kw, lengths="random")


@needs_cuda_build
def test_emulated_gru_without_bias():
    for algo in ("persistent", "fallback"):
        run_emulated_fp32_case("gru", 5, 3, 9, dict(EMU_PERSISTENT, algo=algo), bias=False)


@needs_cuda_build
@pytest.mark.parametrize("lengths", [None, "random"])
@pytest.mark.parametrize("reverse", [False, True])
def test_emulated_lstm_projection(lengths, reverse):
    # Auto picks the per-step path for an LSTM with a projection; forcing persistent is an error.
    run_emulated_fp32_case("lstm", 5, 4, 12, dict(EMU_PERSISTENT, algo="auto"), proj=5,
                           lengths=lengths, reverse=reverse)
    inp = make_inputs("lstm", 2, 2, 6, proj=3)
    with pytest.raises(RuntimeError, match="projection"):
        emulated_forward("lstm", inp, False, EMU_PERSISTENT)


@needs_cuda_build
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("algo", ["persistent", "fallback"])
def test_emulated_half_precision(cell, dtype, algo):
    T, B, H = 6, 5, 24
    inp = make_inputs(cell, T, B, H, dtype=dtype, lengths="random")
    grads = make_output_grads(cell, T, B, H, H, dtype=dtype, device="cpu")
    device = dict(EMU_PERSISTENT, algo=algo)
    fwd = emulated_forward(cell, inp, True, device)
    bwd = emulated_backward(cell, inp, fwd, grads, True, device)
    for v in list(fwd.values()) + list(bwd.values()):
        assert v.dtype == dtype
    check_lowp_against_reference(cell, inp, True, fwd, bwd, grads)


@needs_cuda_build
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("device", [EMU_PERSISTENT, EMU_FALLBACK], ids=["persistent", "fallback"])
def test_emulated_nonfinite_like_reference(cell, device):
    """NaN and ±inf in gx, w_hh, h0 (c0, b_hh) go through the kernels' maths (cells.h: relu
    keeps NaN, e^x overflows to inf so that σ(-inf) is 0) as through torch's ops: every output
    and gradient has NaN and inf where fused_rnn.reference's have them. The host emulation runs
    the kernel bodies with the host's exp, not the device's expf."""
    T, B, H = 3, 2, 5
    places = [("gx", (1, 0, 2)), ("w_hh", (GATES[cell] * H - 1, 1)), ("h0", (1, 3))]
    places += {"lstm": [("c0", (0, 4))], "gru": [("b_hh", (2 * H + 1,))]}.get(cell, [])
    for (name, index), value, reverse in itertools.product(
            places, (float("nan"), float("inf"), float("-inf")), (False, True)):
        inp = make_inputs(cell, T, B, H, lengths=[3, 2])
        inp[name] = inp[name].clone()
        inp[name][index] = value
        grads = make_output_grads(cell, T, B, H, H, dtype=torch.float32, device="cpu")
        fwd = emulated_forward(cell, inp, reverse, device)
        bwd = emulated_backward(cell, inp, fwd, grads, reverse, device)
        ref_out, ref_grads = reference_with_grads(cell, inp, reverse, grads)
        assert_same_nonfinite([fwd[k] for k in ref_out] + [bwd[k] for k in ref_grads],
                              list(ref_out.values()) + list(ref_grads.values()),
                              f"{name}{list(index)} = {value}, reverse={reverse}")


@needs_cuda_build
def test_emulated_float64_fallback():
    inp = make_inputs("lstm", 4, 3, 5, dtype=torch.float64, lengths="random")
    grads = make_output_grads("lstm", 4, 3, 5, 5, dtype=torch.float64, device="cpu")
    device = dict(EMU_PERSISTENT, algo="auto")
    fwd = emulated_forward("lstm", inp, True, device)
    bwd = emulated_backward("lstm", inp, fwd, grads, True, device)
    check_against_reference("lstm", inp, True, fwd, bwd, grads, tol=1e-12)


@needs_cuda_build
def test_emulated_empty_and_zero_length():
    for cell in CELLS:
        for T, B in ((0, 3), (3, 0)):
            inp = make_inputs(cell, T, B, 4)
            fwd = emulated_forward(cell, inp, False, EMU_PERSISTENT)
            assert fwd["y"].shape == (T, B, 4)
            assert torch.equal(fwd["h_n"], inp["h0"])
        # All sequences empty: the state passes through, the outputs are zero.
        inp = make_inputs(cell, 3, 2, 4, lengths=[0, 0])
        fwd = emulated_forward(cell, inp, False, EMU_PERSISTENT)
        assert torch.equal(fwd["h_n"], inp["h0"]) and not fwd["y"].any()


@needs_cuda_build
def test_emulated_zero_hidden_size():
    ops = torch.ops.fused_rnn_cuda
    T, B = 3, 2
    gx, w, h0 = torch.randn(T, B, 0), torch.randn(0, 0), torch.randn(B, 0)
    for algo in ("persistent", "auto"):
        if algo == "persistent":
            with pytest.raises(RuntimeError, match="empty batch or hidden size"):
                ops.gru_forward_emulated(gx, w, None, h0, None, False, True, algo, 4, 232448,
                                         False)
            continue
        y, h_n, c_n, gates, cs = ops.lstm_forward_emulated(gx, w, None, h0, h0, None, False, True,
                                                           algo, 4, 232448, False)
        assert y.shape == (T, B, 0) and gates.shape == (T, B, 0)
        grads = ops.lstm_backward_emulated(torch.randn_like(y), None, None, w, None, h0, h0, y,
                                           gates, cs, None, True, algo, 4, 232448, False)
        assert [g.shape for g in grads] == [(T, B, 0), (0, 0), (0,), (B, 0), (B, 0)]


@needs_cuda_build
def test_emulated_nan_fill_writes_every_output():
    # FUSED_RNN_FILL_UNINITIALIZED is read once per process: run in a fresh interpreter.
    script = textwrap.dedent(
        """
        import torch, fused_rnn, sys
        sys.path.insert(0, %r)
        import test_cuda_ops as t
        for cell in t.CELLS:
            for algo in ("persistent", "fallback"):
                for dtype in (torch.float32, torch.bfloat16):
                    dev = dict(t.EMU_PERSISTENT, algo=algo)
                    inp = t.make_inputs(cell, 5, 4, 6, dtype=dtype, lengths="random")
                    grads = t.make_output_grads(cell, 5, 4, 6, 6, dtype=dtype, device="cpu")
                    fwd = t.emulated_forward(cell, inp, True, dev)
                    bwd = t.emulated_backward(cell, inp, fwd, grads, True, dev)
                    for k, v in list(fwd.items()) + list(bwd.items()):
                        assert torch.isfinite(v).all(), (cell, algo, dtype, k)
        print("ok")
        """
        % os.path.dirname(os.path.abspath(__file__))
    )
    env = dict(os.environ, FUSED_RNN_FILL_UNINITIALIZED="1")
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-3000:]


@needs_cuda_build
def test_emulated_bad_input_is_rejected_before_any_kernel():
    inp = make_inputs("gru", 3, 2, 4)
    inp["h0"] = inp["h0"][:, :3]
    with pytest.raises(RuntimeError, match="expected h0 of shape"):
        emulated_forward("gru", inp, False, EMU_PERSISTENT)
    inp = make_inputs("lstm", 3, 2, 4, lengths=[4, 1])
    with pytest.raises(RuntimeError, match="lengths must lie in"):
        emulated_forward("lstm", inp, False, EMU_PERSISTENT)


# =============================================================================================
# GPU tests
# =============================================================================================


# The device of the GPU tests. Their helpers take it from here, so the harness itself (inputs,
# reference, tolerances) can be exercised against the CPU backend by setting it to "cpu".
GPU = "cuda"


@pytest.fixture
def algo(request, monkeypatch):
    monkeypatch.setenv("FUSED_RNN_CUDA_ALGO", request.param)
    return request.param


@pytest.fixture
def no_tf32():
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = saved


def to_device(inp, device=None, lengths_device=None):
    device = device or GPU
    out = {n: (v.to(device) if isinstance(v, torch.Tensor) and n != "lengths" else v)
           for n, v in inp.items()}
    if isinstance(inp["lengths"], torch.Tensor) and lengths_device is not None:
        out["lengths"] = inp["lengths"].to(lengths_device)
    return out


def run_gpu_case(cell, T, B, H, dtype, *, lengths=None, reverse=False, proj=None,
                 lengths_device=None, seed=0):
    inp = to_device(make_inputs(cell, T, B, H, proj=proj, dtype=dtype, lengths=lengths, seed=seed),
                    lengths_device=lengths_device)
    P = proj or H
    grads = make_output_grads(cell, T, B, H, P, dtype=dtype, device=GPU, seed=seed + 1)
    fwd = op_forward(cell, inp, reverse)
    bwd = op_backward(cell, inp, fwd, grads, reverse)
    for v in list(fwd.values()) + list(bwd.values()):
        assert v.device.type == GPU and v.dtype == dtype
    if dtype in (torch.float32, torch.float64):
        check_against_reference(cell, inp, reverse, fwd, bwd, grads,
                                tol=2e-5 if dtype == torch.float32 else 1e-12)
        cpu = op_forward(cell, {n: (v.cpu() if isinstance(v, torch.Tensor) else v)
                                for n, v in inp.items()}, reverse)
        for k in ("gates", "cs"):
            if k in fwd:
                check_fp32(k, fwd[k], cpu[k])
    else:
        check_lowp_against_reference(cell, inp, reverse, fwd, bwd, grads)
    return fwd, bwd


@gpu_test
@pytest.mark.parametrize("algo", ["persistent", "fallback"], indirect=True)
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16],
                         ids=["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("lengths", [None, "random"], ids=["full", "lengths"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd_dir", "rev_dir"])
@pytest.mark.usefixtures("no_tf32")
def test_gpu_matches_reference(algo, cell, dtype, lengths, reverse):
    run_gpu_case(cell, 7, 5, 24, dtype, lengths=lengths, reverse=reverse)


@gpu_test
@pytest.mark.parametrize("algo", ["persistent", "fallback"], indirect=True)
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("T,B,H", [(1, 1, 3), (3, 17, 19), (5, 2, 33), (4, 70, 40)])
@pytest.mark.usefixtures("no_tf32")
def test_gpu_odd_sizes(algo, cell, T, B, H):
    run_gpu_case(cell, T, B, H, torch.float32, lengths="random", reverse=True)
    run_gpu_case(cell, T, B, H, torch.bfloat16, lengths="random", reverse=False)


def device_plan(cell, backward, B, H, dtype):
    """The plan the ops make on this GPU."""
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    return plan(cell, backward, B, H, dtype=dtype,
                allow_tf32=torch.backends.cuda.matmul.allow_tf32,
                sm_count=props.multi_processor_count, cc_major=props.major,
                smem_per_block=props.shared_memory_per_block_optin)


@gpu_test
@pytest.mark.parametrize("algo", ["persistent", "auto"], indirect=True)
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.usefixtures("no_tf32")
def test_gpu_large_persistent(algo, cell, dtype):
    # Shapes with several blocks, batch tiles and (backward) K chunks on a real device.
    T, B, H = 12, 80, 512
    if algo == "persistent" and any(device_plan(cell, bwd, B, H, dtype)["algo"] != PERSISTENT
                                    for bwd in (False, True)):
        pytest.skip("the persistent kernels do not fit this GPU at this size")
    run_gpu_case(cell, T, B, H, dtype, lengths="random", reverse=True)


@gpu_test
@pytest.mark.parametrize("algo", ["persistent", "fallback"], indirect=True)
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_gpu_tf32(algo, cell):
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        run_gpu_case_tf32(cell)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved


def run_gpu_case_tf32(cell):
    # TF32 products (10-bit mantissa): judged against fp64 at the TF32 level.
    T, B, H = 6, 9, 64
    inp = to_device(make_inputs(cell, T, B, H, lengths="random"))
    grads = make_output_grads(cell, T, B, H, H, dtype=torch.float32, device=GPU)
    fwd = op_forward(cell, inp, False)
    bwd = op_backward(cell, inp, fwd, grads, False)
    check_against_reference(cell, inp, False, fwd, bwd, grads, tol=5e-3)


@gpu_test
@pytest.mark.parametrize("algo", ["auto", "fallback"], indirect=True)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("lengths", [None, "random"], ids=["full", "lengths"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd_dir", "rev_dir"])
@pytest.mark.usefixtures("no_tf32")
def test_gpu_lstm_projection(algo, dtype, lengths, reverse):
    run_gpu_case("lstm", 6, 5, 24, dtype, proj=9, lengths=lengths, reverse=reverse)


@gpu_test
@pytest.mark.usefixtures("no_tf32")
def test_gpu_float64_and_lengths_on_device():
    for cell in CELLS:
        run_gpu_case(cell, 5, 4, 7, torch.float64, lengths="random", reverse=True)
        run_gpu_case(cell, 5, 4, 7, torch.float32, lengths="random", reverse=True,
                     lengths_device=GPU)


@gpu_test
@pytest.mark.parametrize("algo", ["persistent", "fallback"], indirect=True)
@pytest.mark.usefixtures("no_tf32")
def test_gpu_device_lengths_out_of_range_are_clamped(algo):
    # Device lengths are not checked on the host (that would synchronise); kernels clamp them.
    T, B, H = 4, 3, 16
    inp = to_device(make_inputs("gru", T, B, H))
    inp["lengths"] = torch.tensor([-3, 2, 99], device="cuda")
    fwd = op_forward("gru", inp, True)
    ref = dict(inp, lengths=torch.tensor([0, 2, T]))
    y, h_n = reference_call("gru", {n: (v.double().cpu() if isinstance(v, torch.Tensor) and
                                        v.is_floating_point() else v) for n, v in ref.items()},
                            True)
    check_fp32("y", fwd["y"], y)
    check_fp32("h_n", fwd["h_n"], h_n)


@gpu_test
@pytest.mark.parametrize("algo", ["persistent", "fallback"], indirect=True)
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.usefixtures("no_tf32")
def test_gpu_cuda_graph_capture(algo, cell):
    """Forward + backward through autograd captured in a CUDA graph and replayed."""
    T, B, H = 6, 4, 32
    inp = to_device(make_inputs(cell, T, B, H, lengths="random"), lengths_device="cuda")
    names = differentiable_names(cell, inp)
    static = {n: (v.clone().requires_grad_(n in names) if isinstance(v, torch.Tensor) else v)
              for n, v in inp.items()}
    grad_y = torch.randn(T, B, H, device="cuda")

    def step():
        outs = getattr(torch.ops.fused_rnn, f"{cell}_forward")(
            *forward_args(cell, static, False, True))
        y, h_n = outs[0], outs[1]
        loss = (y * grad_y).sum() + h_n.square().sum()
        return torch.autograd.grad(loss, [static[n] for n in names])

    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(2):
            eager = step()
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = step()
    # New inputs in the same buffers; the replay must follow them.
    with torch.no_grad():
        for n in names:
            static[n].copy_(static[n] * 0.5)
    graph.replay()
    torch.cuda.synchronize()
    fresh = step()
    for a, b in zip(captured, fresh):
        check_fp32("graph", a, b, tol=1e-6)
    assert any(max_err(a, b) > 0 for a, b in zip(eager, fresh))


@gpu_test
def test_gpu_cpu_lengths_refused_under_graph_capture():
    """A captured copy of CPU lengths would replay whatever the host buffer holds at each
    replay: refused, with the fix in the message."""
    inp = to_device(make_inputs("rnn_tanh", 4, 3, 16, lengths=[4, 1, 2]))
    assert inp["lengths"].device.type == "cpu"
    graph = torch.cuda.CUDAGraph()
    with pytest.raises(RuntimeError, match="pass lengths on cuda"):
        with torch.cuda.graph(graph):
            torch.ops.fused_rnn.rnn_tanh_forward(*forward_args("rnn_tanh", inp, False, False))


@gpu_test
@pytest.mark.parametrize("algo", ["persistent", "fallback"], indirect=True)
def test_gpu_pinned_lengths_may_change_after_the_call(algo):
    """The op copies CPU lengths to the device after it returns; a caller's own pinned tensor
    is copied privately first, so changing it right after the call changes nothing."""
    T, B, H = 6, 4, 32
    inp = to_device(make_inputs("gru", T, B, H, lengths=[6, 3, 0, 5]))
    expected = torch.ops.fused_rnn.gru_forward(*forward_args("gru", inp, False, False))
    torch.cuda.synchronize()
    pinned = inp["lengths"].pin_memory()
    inp["lengths"] = pinned
    torch.cuda._sleep(50_000_000)          # keep the stream busy: the copy is still queued
    outs = torch.ops.fused_rnn.gru_forward(*forward_args("gru", inp, False, False))
    pinned.fill_(1)
    torch.cuda.synchronize()
    for a, b in zip(outs[:2], expected[:2]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@gpu_test
@pytest.mark.parametrize("algo", ["persistent", "fallback"], indirect=True)
def test_gpu_nan_fill_writes_every_output(algo):
    script = textwrap.dedent(
        """
        import torch, fused_rnn, sys
        sys.path.insert(0, %r)
        import test_cuda_ops as t
        for cell in t.CELLS:
            for dtype in (torch.float32, torch.bfloat16, torch.float16):
                inp = t.to_device(t.make_inputs(cell, 5, 19, 24, dtype=dtype, lengths="random"))
                grads = t.make_output_grads(cell, 5, 19, 24, 24, dtype=dtype, device="cuda")
                fwd = t.op_forward(cell, inp, True)
                bwd = t.op_backward(cell, inp, fwd, grads, True)
                for k, v in list(fwd.items()) + list(bwd.items()):
                    assert torch.isfinite(v).all(), (cell, dtype, k)
        print("ok")
        """
        % os.path.dirname(os.path.abspath(__file__))
    )
    env = dict(os.environ, FUSED_RNN_FILL_UNINITIALIZED="1", FUSED_RNN_CUDA_ALGO=algo)
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-3000:]


@gpu_test
def test_gpu_bad_input_is_rejected_before_any_kernel():
    inp = to_device(make_inputs("lstm", 3, 2, 4))
    inp["c0"] = inp["c0"].double()
    with pytest.raises(RuntimeError, match="c0 has dtype"):
        op_forward("lstm", inp, False)
    inp = to_device(make_inputs("rnn_tanh", 3, 2, 4))
    inp["w_hh"] = inp["w_hh"].cpu()
    with pytest.raises(RuntimeError, match="w_hh is on"):
        op_forward("rnn_tanh", inp, False)


@gpu_test
@pytest.mark.usefixtures("no_tf32")
def test_gpu_forced_persistent_refuses_what_it_cannot_run(monkeypatch):
    monkeypatch.setenv("FUSED_RNN_CUDA_ALGO", "persistent")
    inp = to_device(make_inputs("lstm", 3, 2, 8, proj=4))
    with pytest.raises(RuntimeError, match="projection"):
        op_forward("lstm", inp, False)
