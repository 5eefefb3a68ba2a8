"""Compiles the kernels for an NVIDIA target on a machine without a GPU, and checks what the
interpreter cannot see.

The interpreter runs the kernels' Python, not the compiler: a kernel can pass every interpreter
test and still fail to compile (Triton 3.6 refuses an fp64 ``tl.dot`` that 3.8 takes), overflow
shared memory, spill registers, or lose a memory-ordering guarantee (Triton 3.6 deletes an
acquire whose result is unused; its pipeliner turns small loads into ``cp.async.ca``, which
reads through L1). This compiles each kernel, in the layouts the selection rule picks
(triton_kernels/_layout.py, with the SM count of an H100) and in the layouts the GPU tests
force, down to machine code with the ptxas the installed Triton ships, and checks:

* it compiles, and its shared memory fits a block (227 KiB on sm_90);
* no register spills in a layout the automatic rule picks (forced layouts are reported);
* every kernel with a grid barrier (the persistent layout) has the barrier's release add and
  its acquire in its PTX;
* no kernel that reads an exchange buffer (an operand other programs wrote) has a ``cp.async``
  copy, so that nothing reads that buffer through L1; its loads are ``ld.global.cg``;
* every kernel leaves the per-call integers (T, B, the step range) unspecialised.

The kernels of the layer-normalised cells (layernorm_lstm.py, layernorm_gru.py) have one layout
(one program per batch tile, all units, chunked; _layernorm.choose_blocks) and their own rows
(``LAYERNORM_*``): they must compile without spills, have the program's barrier (bar.sync) in
their PTX and no ``cp.async`` at all (every loop reads what other threads of the program wrote).

It needs no GPU and no CUDA driver, but must run without TRITON_INTERPRET.

    python -m fused_rnn.triton_kernels.compile_check                # the full table
    python -m fused_rnn.triton_kernels.compile_check --table layouts  # one row per layout
    python -m fused_rnn.triton_kernels.compile_check --table quick  # what the tests run
    python -m fused_rnn.triton_kernels.compile_check --cells layernorm_lstm layernorm_gru

Exit status 1 when any check fails.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import os
import re
import sys
import time

import torch

from . import _launch, _layernorm, _layout, gru, layernorm_gru, layernorm_lstm, lstm, rnn
from ._barrier import SYNC_GRID

#: Shared memory one block may have on sm_90 (H100/H200).
SHARED_MEMORY_LIMIT = 227 * 1024
H100_SMS = 132

_TRITON_TYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16",
                 torch.float64: "fp64"}
#: Pointer arguments whose element type is not the storage dtype.
_POINTER_TYPES = {"lengths_ptr": "i64", "counter_ptr": "i32", "mask_h_ptr": "u8",
                  "mask_c_ptr": "u8"}
#: ... and those in the gate-maths dtype (fp32, fp64 for fp64): the plain kernels' recurrent
#: states (h, c; dh, dc: _launch.state_buffer, never rounded to fp16/bf16 between steps) ...
_STATE_POINTERS = frozenset({"h_ptr", "c_ptr", "dh_ptr", "dc_ptr"})
#: ... and in the layer-normalised kernels the states, scratch rows, per-step gradient buffers.
_LAYERNORM_COMPUTE_POINTERS = _STATE_POINTERS | frozenset({
    "scalars_ptr", "p_ptr", "cell_ptr", "dgx_ptr", "dp_ptr", "dn_ptr", "dp_hat_ptr"})
_LAYOUT_VARIABLES = ("LAYOUT", "WEIGHTS", "BLOCK_H", "BLOCK_B", "BLOCK_K")


@dataclasses.dataclass(frozen=True)
class Kernels:
    """A cell's kernels and their constexpr flags, all on (``flags=True``) or all off."""

    gates: int
    forward: object
    backward: object
    forward_flags: tuple[str, ...]
    backward_flags: tuple[str, ...]
    fixed: dict = dataclasses.field(default_factory=dict)   # flags the cell decides (RELU)

    def constexprs(self, direction: str, on: bool) -> dict:
        names = self.forward_flags if direction == "forward" else self.backward_flags
        return dict({name: on for name in names}, **self.fixed)


KERNELS = {
    "lstm": Kernels(4, lstm.lstm_forward_kernel, lstm.lstm_backward_kernel,
                    ("REVERSE", "HAS_LENGTHS", "SAVE"), ("REVERSE", "HAS_LENGTHS", "HAS_DY")),
    "gru": Kernels(3, gru.gru_forward_kernel, gru.gru_backward_kernel,
                   ("REVERSE", "HAS_LENGTHS", "HAS_BIAS", "SAVE"),
                   ("REVERSE", "HAS_LENGTHS", "HAS_DY")),
    "rnn_tanh": Kernels(1, rnn.rnn_forward_kernel, rnn.rnn_backward_kernel,
                        ("REVERSE", "HAS_LENGTHS"), ("REVERSE", "HAS_LENGTHS", "HAS_DY"),
                        dict(RELU=False)),
    "rnn_relu": Kernels(1, rnn.rnn_forward_kernel, rnn.rnn_backward_kernel,
                        ("REVERSE", "HAS_LENGTHS"), ("REVERSE", "HAS_LENGTHS", "HAS_DY"),
                        dict(RELU=True)),
}


@dataclasses.dataclass(frozen=True)
class Config:
    """One row of the table: a call's sizes and dtype, TF32 for fp32 products, the kernels'
    flags (all on or all off), and the layout variables a GPU test forces (none: the
    automatic rule, whose layouts must not spill)."""

    B: int
    H: int
    dtype: torch.dtype
    tf32: bool = False
    flags: bool = True
    forced: tuple = ()                # (("LAYOUT", "single"), ...)
    note: str = ""

    @property
    def automatic(self) -> bool:
        return not self.forced


def _forced(**variables) -> tuple:
    return tuple((k.upper(), str(v)) for k, v in variables.items())


# The layouts tests/test_triton_ops.py forces on a GPU (GPU_LAYOUTS, test_gpu_tf32,
# test_gpu_torch_compile_fullgraph), at their sizes.
_TEST_LAYOUTS = {
    "single": (24, _forced(layout="single")),
    "single-streamed": (24, _forced(layout="single", weights="streamed", block_k=16)),
    "persistent": (96, _forced(layout="persistent", block_h=16)),
    "persistent-streamed": (96, _forced(layout="persistent", block_h=16, weights="streamed",
                                        block_k=64)),
    "stepwise": (96, _forced(layout="stepwise", block_h=16)),
}

bf16, fp16, fp32, fp64 = torch.bfloat16, torch.float16, torch.float32, torch.float64

#: Every dtype, TF32 on and off, each flag both ways, every layout the rule picks, every
#: layout the GPU tests force.
FULL = [
    Config(16, 64, bf16, note="single: h in registers"),
    Config(16, 64, fp32, flags=False, note="single, fp32"),
    Config(16, 768, bf16, note="persistent, resident weights, grid barrier"),
    Config(16, 768, bf16, flags=False),
    Config(64, 1024, bf16, flags=False, note="persistent, two batch tiles"),
    Config(16, 2048, bf16, note="persistent, weights streamed from L2"),
    Config(64, 2048, bf16, flags=False, note="the GPU tests' large automatic layouts"),
    Config(130, 300, bf16),
    Config(1000, 200, bf16, flags=False, note="stepwise, 64-row tiles (wgmma)"),
    Config(16, 768, fp16),
    Config(16, 768, fp32, tf32=True, note="fp32, TF32 products"),
    Config(16, 768, fp32, flags=False, note="fp32, full-precision products (the default)"),
    Config(20, 48, fp64, note="fp64"),
    Config(16, 768, fp64, flags=False),
    Config(24, 64, fp32, tf32=True, forced=_forced(layout="persistent", block_h=16),
           note="test_gpu_tf32"),
    Config(20, 64, bf16, forced=_forced(layout="persistent", block_h=16),
           note="test_gpu_torch_compile_fullgraph"),
] + [
    Config(40, H, dtype, flags=on, forced=forced, note=f"test_gpu_layouts {name}")
    for name, (H, forced) in _TEST_LAYOUTS.items()
    for dtype, on in ((fp32, True), (bf16, False), (fp16, True))
]

#: One row per layout kind, both flag settings, fp32 with and without TF32, fp64: the subset
#: for a second Triton version when time forbids the full table twice.
LAYOUTS = [FULL[i] for i in (0, 2, 3, 5, 8, 10, 11, 12)] + [
    Config(40, H, fp32, flags=False, forced=forced, note=f"test_gpu_layouts {name}")
    for name, (H, forced) in _TEST_LAYOUTS.items()
]

#: What the tests compile.
QUICK = [FULL[0], FULL[2]]



@dataclasses.dataclass(frozen=True)
class LayerNormKernels:
    """A layer-normalised cell's kernels, their flags (all on or all off) and their zoneout
    constexprs (KEEP_H, KEEP_C: one kind for all of them in a row)."""

    gates: int
    forward: object
    backward: object
    forward_flags: tuple[str, ...]
    backward_flags: tuple[str, ...]
    zoneout: tuple[str, ...]

    def constexprs(self, direction: str, on: bool, zoneout: int) -> dict:
        names = self.forward_flags if direction == "forward" else self.backward_flags
        return dict({name: on for name in names}, **{name: zoneout for name in self.zoneout})


LAYERNORM_KERNELS = {
    "layernorm_lstm": LayerNormKernels(
        4, layernorm_lstm.layernorm_lstm_forward_kernel,
        layernorm_lstm.layernorm_lstm_backward_kernel, ("REVERSE", "HAS_LENGTHS", "SAVE"),
        ("REVERSE", "HAS_LENGTHS", "HAS_DY"), ("KEEP_H", "KEEP_C")),
    "layernorm_gru": LayerNormKernels(
        3, layernorm_gru.layernorm_gru_forward_kernel, layernorm_gru.layernorm_gru_backward_kernel,
        ("REVERSE", "HAS_LENGTHS", "HAS_BIAS", "SAVE"),
        ("REVERSE", "HAS_LENGTHS", "HAS_BIAS", "HAS_DY"), ("KEEP_H",)),
}

MASK, CONSTANT, NO_ZONEOUT = (_layernorm.ZONEOUT_MASK.value, _layernorm.ZONEOUT_CONSTANT.value,
                              _layernorm.ZONEOUT_NONE.value)


@dataclasses.dataclass(frozen=True)
class LayerNormConfig:
    """A row for the layer-normalised kernels: sizes, dtype, TF32, the flags, the zoneout kind."""

    B: int
    H: int
    dtype: torch.dtype
    tf32: bool = False
    flags: bool = True
    zoneout: int = MASK
    note: str = ""


#: Every dtype, TF32 on and off, each flag and each zoneout kind both ways, one chunk and many
#: (the block sizes depend on H only: 16-column chunks and slices for H <= 16, 32-column
#: chunks from there, 64-column slices from H > 32).
LAYERNORM_FULL = [
    LayerNormConfig(16, 64, bf16, note="one chunk, zoneout masks"),
    LayerNormConfig(16, 64, bf16, flags=False, zoneout=NO_ZONEOUT),
    LayerNormConfig(64, 768, bf16, zoneout=CONSTANT, note="12 unit chunks, eval's zoneout"),
    LayerNormConfig(64, 768, bf16, flags=False),
    LayerNormConfig(16, 2048, fp16, note="32 unit chunks"),
    LayerNormConfig(16, 768, fp32, tf32=True, note="fp32, TF32 products"),
    LayerNormConfig(16, 768, fp32, flags=False, zoneout=NO_ZONEOUT, note="fp32, the default"),
    LayerNormConfig(3, 20, fp32, zoneout=CONSTANT, note="32-column slices"),
    LayerNormConfig(3, 7, fp64, note="fp64, 16-column chunks and slices"),
    LayerNormConfig(16, 100, fp64, flags=False, zoneout=CONSTANT),
]
LAYERNORM_LAYOUTS = [LAYERNORM_FULL[i] for i in (0, 3, 6, 9)]
LAYERNORM_QUICK = [LAYERNORM_FULL[2]]

TABLES = {"full": FULL, "layouts": LAYOUTS, "quick": QUICK}
LAYERNORM_TABLES = {"full": LAYERNORM_FULL, "layouts": LAYERNORM_LAYOUTS,
                    "quick": LAYERNORM_QUICK}


def _compute_pointers(kernel) -> frozenset:
    """The pointer arguments of ``kernel`` that its launcher passes in the gate-maths dtype."""
    layernorm = any(kernel in (k.forward, k.backward) for k in LAYERNORM_KERNELS.values())
    return _LAYERNORM_COMPUTE_POINTERS if layernorm else _STATE_POINTERS


def _signature(kernel, dtype: torch.dtype, constexprs: dict) -> tuple[dict, dict]:
    """Triton's signature of ``kernel`` as its launcher calls it with ``dtype`` storage."""
    types, attrs = {}, {}
    compute_pointers = _compute_pointers(kernel)
    for index, name in enumerate(kernel.arg_names):
        if name in constexprs:
            types[name] = "constexpr"
        elif name.endswith("_ptr"):
            element = _POINTER_TYPES.get(name, _TRITON_TYPES[dtype])
            if name in compute_pointers:
                element = _TRITON_TYPES[_launch.compute_dtype(dtype)]
            types[name] = "*" + element
            attrs[(index,)] = [["tt.divisibility", 16]]   # torch allocations are aligned
        else:
            types[name] = "i32"
    return types, attrs


def _ptxas_report(log: str) -> dict:
    registers = re.search(r"Used (\d+) registers", log)
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    return dict(registers=int(registers.group(1)) if registers else -1,
                spill_bytes=int(spills.group(1)) + int(spills.group(2)) if spills else 0)


def compile_kernel(kernel, layout: _layout.Layout, dtype: torch.dtype, constexprs: dict,
                   arch: int = 90, tf32: bool = False) -> dict:
    """Compiles one kernel; returns its ptx, registers, spill_bytes and shared_bytes. The
    register report is ptxas's own from Triton's compilation (its flags differ between Triton
    versions), so the kernel is always compiled afresh, never taken from Triton's cache."""
    constexprs = dict(constexprs, **_launch.layout_constexprs(layout, dtype))
    return _compile(kernel, dtype, constexprs, _launch.launch_options(layout), arch, tf32)


def _compile(kernel, dtype: torch.dtype, constexprs: dict, options: dict, arch: int,
             tf32: bool) -> dict:
    import triton
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    constexprs = dict(constexprs)
    constexprs["UPCAST"] = False        # a GPU multiplies bf16 itself
    if "ROUND_BF16" in constexprs:
        constexprs["ROUND_BF16"] = False    # and rounds to bf16 itself
    constexprs["TF32"] = tf32 and dtype == torch.float32
    types, attrs = _signature(kernel, dtype, constexprs)
    names = kernel.arg_names
    source = ASTSource(fn=kernel, signature=types, attrs=attrs,
                       constexprs={(names.index(k),): v for k, v in constexprs.items()})
    log = io.StringIO()
    with knobs.compilation.scope(), knobs.nvidia.scope():
        knobs.compilation.always_compile = True
        knobs.nvidia.dump_ptxas_log = True
        with contextlib.redirect_stdout(log):
            compiled = triton.compile(source, target=GPUTarget("cuda", arch, 32), options=options)
    report = _ptxas_report(log.getvalue())
    report["shared_bytes"] = compiled.metadata.shared
    report["ptx"] = compiled.asm["ptx"]
    return report


def memory_ordering_problems(ptx: str, layout: _layout.Layout) -> list[str]:
    """What the PTX of a kernel in ``layout`` lacks for its exchange to be correct."""
    problems = []
    if layout.sync == SYNC_GRID:
        if not re.search(r"\batom\.[\w.]*release[\w.]*\.add\b|\bred\.[\w.]*release", ptx):
            problems.append("no release add in the grid barrier")
        if not re.search(r"\b(ld|atom)\.[\w.]*acquire", ptx):
            problems.append("no acquire in the grid barrier")
    if not layout.operand_in_registers:
        if re.search(r"\bcp\.async\.", ptx):
            problems.append("cp.async copies in a kernel that reads an exchange buffer")
        if not re.search(r"\bld\.global\.cg\b", ptx):
            problems.append("no ld.global.cg: the exchange buffer is read some other way")
    return problems


def specialisation_problems() -> list[str]:
    """Kernels that would specialise on integers that change from call to call."""
    problems = []
    families = [(KERNELS, _launch.PER_CALL_INTEGERS),
                (LAYERNORM_KERNELS, _layernorm.PER_CALL_INTEGERS)]
    for table, expected in families:
        for kernels in table.values():
            for kernel in (kernels.forward, kernels.backward):
                unspecialised = [p.name for p in kernel.params if p.do_not_specialize]
                if unspecialised != expected:
                    problems.append(f"{kernel.fn.__name__}: do_not_specialize is "
                                    f"{unspecialised}, expected {expected}")
    return problems


def layernorm_ordering_problems(ptx: str) -> list[str]:
    """What the PTX of a layer-normalised kernel lacks for its passes to see each other's
    stores: the program's barrier, and no asynchronous copies (which could be issued before
    it)."""
    problems = []
    if not re.search(r"\b(bar|barrier)\.sync\b", ptx):
        problems.append("no bar.sync between the passes")
    if re.search(r"\bcp\.async\.", ptx):
        problems.append("cp.async copies in a kernel whose loops read what other threads wrote")
    return problems


def _label(cell: str, direction: str, config: Config, layout: _layout.Layout) -> str:
    dtype = _TRITON_TYPES[config.dtype] + ("+tf32" if config.tf32 else "")
    flags = "flags-on " if config.flags else "flags-off"
    return (f"{cell:8s} {direction:8s} B={config.B:<5d} H={config.H:<5d} {dtype:9s} {flags} "
            f"{layout.name:10s} block_b={layout.block_b:<3d} block_h={layout.block_h:<4d} "
            f"slices={layout.n_slices:<4d} "
            f"{'resident' if layout.weights_resident else 'streamed'} warps={layout.num_warps}"
            f"{'' if config.automatic else ' (forced)'}")


def _check(cell: str, direction: str, config: Config, arch: int, out) -> bool:
    kernels = KERNELS[cell]
    allow_tf32 = torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = config.tf32     # the rule reads it, as a call
        layout = _layout.choose_layout(kernels.gates, config.B, config.H, config.dtype,
                                       torch.device("cuda"), backward=direction == "backward")
    except (ValueError, RuntimeError) as error:
        print(f"{cell:8s} {direction:8s} B={config.B:<5d} H={config.H:<5d} {config.forced}: "
              f"FAILED to choose a layout: {error}", file=out, flush=True)
        return False
    finally:
        torch.backends.cuda.matmul.allow_tf32 = allow_tf32
    kernel = kernels.forward if direction == "forward" else kernels.backward
    label = _label(cell, direction, config, layout)
    start = time.time()
    try:
        r = compile_kernel(kernel, layout, config.dtype,
                           kernels.constexprs(direction, config.flags), arch, config.tf32)
    except Exception as error:  # noqa: BLE001 (reported, then failed)
        message = str(error).strip().splitlines()
        print(f"{label}: FAILED {type(error).__name__}: {message[-1] if message else ''}",
              file=out, flush=True)
        return False
    problems = memory_ordering_problems(r["ptx"], layout)
    if r["shared_bytes"] > SHARED_MEMORY_LIMIT:
        problems.append(f"{r['shared_bytes'] // 1024} KiB of shared memory > the limit")
    if r["spill_bytes"] and config.automatic:
        problems.append("register spills in a layout the automatic rule picks")
    print(f"{label}: {r['registers']} registers, {r['spill_bytes']} B spilled, "
          f"{r['shared_bytes'] // 1024} KiB shared ({time.time() - start:.0f} s)"
          + "".join(f"\n    FAILED: {p}" for p in problems), file=out, flush=True)
    return not problems


def _check_layernorm(cell: str, direction: str, config: LayerNormConfig, arch: int,
                     out) -> bool:
    kernels = LAYERNORM_KERNELS[cell]
    blocks = _layernorm.choose_blocks(config.H)
    kernel = kernels.forward if direction == "forward" else kernels.backward
    dtype = _TRITON_TYPES[config.dtype] + ("+tf32" if config.tf32 else "")
    zoneout = {MASK: "mask", CONSTANT: "constant", NO_ZONEOUT: "none"}[config.zoneout]
    label = (f"{cell:14s} {direction:8s} B={config.B:<5d} H={config.H:<5d} {dtype:9s} "
             f"{'flags-on ' if config.flags else 'flags-off'} zoneout={zoneout:8s} "
             f"block_b={blocks.block_b} block_n={blocks.block_n} block_k={blocks.block_k} "
             f"warps={blocks.num_warps}")
    constexprs = dict(kernels.constexprs(direction, config.flags, config.zoneout),
                      **_layernorm.block_constexprs(blocks, config.dtype))
    start = time.time()
    try:
        r = _compile(kernel, config.dtype, constexprs, _layernorm.launch_options(blocks), arch,
                     config.tf32)
    except Exception as error:  # noqa: BLE001 (reported, then failed)
        message = str(error).strip().splitlines()
        print(f"{label}: FAILED {type(error).__name__}: {message[-1] if message else ''}",
              file=out, flush=True)
        return False
    problems = layernorm_ordering_problems(r["ptx"])
    if r["shared_bytes"] > SHARED_MEMORY_LIMIT:
        problems.append(f"{r['shared_bytes'] // 1024} KiB of shared memory > the limit")
    if r["spill_bytes"]:
        problems.append("register spills")
    print(f"{label}: {r['registers']} registers, {r['spill_bytes']} B spilled, "
          f"{r['shared_bytes'] // 1024} KiB shared ({time.time() - start:.0f} s)"
          + "".join(f"\n    FAILED: {p}" for p in problems), file=out, flush=True)
    return not problems


def run(configs, cells=tuple(KERNELS) + tuple(LAYERNORM_KERNELS), arch: int = 90,
        out=sys.stdout, layernorm_configs=LAYERNORM_QUICK) -> bool:
    """Compiles every kernel of ``cells`` in each config; prints a table; True if all pass."""
    saved = {v: os.environ.pop(f"FUSED_RNN_TRITON_{v}", None) for v in _LAYOUT_VARIABLES}
    resident_programs, _layout._resident_programs = _layout._resident_programs, (
        lambda device: H100_SMS)
    ok = True
    for problem in specialisation_problems():
        print(f"FAILED: {problem}", file=out)
        ok = False
    failures = 0
    try:
        for config in configs:
            for variable in _LAYOUT_VARIABLES:
                os.environ.pop(f"FUSED_RNN_TRITON_{variable}", None)
            os.environ.update({f"FUSED_RNN_TRITON_{k}": v for k, v in config.forced})
            for cell in cells:
                if cell not in KERNELS:
                    continue
                for direction in ("forward", "backward"):
                    if not _check(cell, direction, config, arch, out):
                        failures += 1
        for config in layernorm_configs:
            for cell in cells:
                if cell not in LAYERNORM_KERNELS:
                    continue
                for direction in ("forward", "backward"):
                    if not _check_layernorm(cell, direction, config, arch, out):
                        failures += 1
    finally:
        _layout._resident_programs = resident_programs
        for variable, value in saved.items():
            os.environ.pop(f"FUSED_RNN_TRITON_{variable}", None)
            if value is not None:
                os.environ[f"FUSED_RNN_TRITON_{variable}"] = value
    import triton

    compiled = 2 * (len(configs) * sum(cell in KERNELS for cell in cells)
                    + len(layernorm_configs) * sum(cell in LAYERNORM_KERNELS for cell in cells))
    print(f"compile_check: Triton {triton.__version__}, sm_{arch}: "
          f"{compiled} kernels, {failures} failed", file=out)
    return ok and failures == 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--table", choices=sorted(TABLES), default="full",
                        help="which configurations (default: full)")
    parser.add_argument("--quick", action="store_true", help="same as --table quick")
    parser.add_argument("--arch", type=int, default=90, help="compute capability (90: H100)")
    cells = list(KERNELS) + list(LAYERNORM_KERNELS)
    parser.add_argument("--cells", nargs="+", choices=cells, default=cells)
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        print("compile_check: unset TRITON_INTERPRET (interpreted kernels cannot be compiled)")
        return 2
    name = "quick" if args.quick else args.table
    ok = run(TABLES[name], cells=tuple(args.cells), arch=args.arch,
             layernorm_configs=LAYERNORM_TABLES[name])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
