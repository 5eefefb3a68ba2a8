"""Compiles the kernels for an NVIDIA target on a machine without a GPU.

The interpreter runs the kernels' Python, not the compiler: a kernel can pass every interpreter
test and still fail to compile, overflow shared memory or spill registers. This compiles each
kernel in the layouts the selection rule picks (triton_kernels/_layout.py, with the SM count of
an H100) down to machine code with the ptxas Triton ships, and reports registers, spills and
shared memory. It needs no GPU and no CUDA driver, but must run without TRITON_INTERPRET.

    python -m fused_rnn.triton_kernels.compile_check            # the full table
    python -m fused_rnn.triton_kernels.compile_check --quick    # what the tests run

Exit status 1 when a kernel fails to compile or needs more shared memory than a block has.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time

import torch

from . import _launch, _layout, gru, lstm, rnn

#: Shared memory one block may have on sm_90 (H100/H200).
SHARED_MEMORY_LIMIT = 227 * 1024
H100_SMS = 132

_TRITON_TYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16",
                 torch.float64: "fp64"}

#: cell -> (gates, forward kernel, backward kernel, forward constexprs, backward constexprs)
KERNELS = {
    "lstm": (4, lstm.lstm_forward_kernel, lstm.lstm_backward_kernel,
             dict(REVERSE=True, HAS_LENGTHS=True, SAVE=True),
             dict(REVERSE=True, HAS_LENGTHS=True, HAS_DY=True)),
    "gru": (3, gru.gru_forward_kernel, gru.gru_backward_kernel,
            dict(REVERSE=True, HAS_LENGTHS=True, HAS_BIAS=True, SAVE=True),
            dict(REVERSE=True, HAS_LENGTHS=True, HAS_DY=True)),
    "rnn_tanh": (1, rnn.rnn_forward_kernel, rnn.rnn_backward_kernel,
                 dict(RELU=False, REVERSE=True, HAS_LENGTHS=True),
                 dict(RELU=False, REVERSE=True, HAS_LENGTHS=True, HAS_DY=True)),
}

#: (B, H, dtype, forced layout variables) of the full table; QUICK is the tests' subset.
FULL = [
    (16, 64, torch.bfloat16, {}),            # single: h in registers
    (16, 768, torch.bfloat16, {}),           # persistent, resident weights, grid barrier
    (64, 1024, torch.bfloat16, {}),          # persistent, two batch tiles
    (16, 2048, torch.bfloat16, {}),          # persistent, weights streamed from L2
    (1000, 200, torch.bfloat16, {}),         # stepwise, 64-row tiles (wgmma)
    (16, 768, torch.float16, {}),
    (16, 768, torch.float32, {}),            # fp32: streamed, TF32 dots
    (20, 48, torch.float64, {}),
    (20, 56, torch.bfloat16, dict(LAYOUT="single", WEIGHTS="streamed", BLOCK_K="32")),  # bar.sync
]
QUICK = [FULL[0], FULL[1]]


def _signature(kernel, dtype: torch.dtype, constexprs: dict) -> tuple[dict, dict]:
    types, attrs = {}, {}
    for index, name in enumerate(kernel.arg_names):
        if name in constexprs:
            types[name] = "constexpr"
        elif name.endswith("_ptr"):
            element = {"lengths_ptr": "i64", "counter_ptr": "i32"}.get(name, _TRITON_TYPES[dtype])
            types[name] = "*" + element
            attrs[(index,)] = [["tt.divisibility", 16]]   # torch allocations are aligned
        else:
            types[name] = "i32"
    return types, attrs


def _ptxas_report(ptx: str, arch: int) -> dict:
    from triton.backends.nvidia.compiler import get_ptxas

    ptxas = get_ptxas(arch).path
    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
        f.write(ptx)
    try:
        result = subprocess.run([ptxas, "-v", f"--gpu-name=sm_{arch}a", f.name, "-o", os.devnull],
                                capture_output=True, text=True, check=True)
    finally:
        os.unlink(f.name)
    text = result.stdout + result.stderr
    registers = re.search(r"Used (\d+) registers", text)
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", text)
    return dict(registers=int(registers.group(1)) if registers else -1,
                spill_bytes=int(spills.group(1)) + int(spills.group(2)) if spills else 0)


def compile_kernel(kernel, layout: _layout.Layout, dtype: torch.dtype, constexprs: dict,
                   arch: int = 90) -> dict:
    """Compiles one kernel; returns registers, spill_bytes and shared_bytes."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    constexprs = dict(constexprs, **_launch.layout_constexprs(layout, dtype))
    constexprs["UPCAST"] = False        # a GPU multiplies bf16 itself
    types, attrs = _signature(kernel, dtype, constexprs)
    names = kernel.arg_names
    source = ASTSource(fn=kernel, signature=types, attrs=attrs,
                       constexprs={(names.index(k),): v for k, v in constexprs.items()})
    compiled = triton.compile(source, target=GPUTarget("cuda", arch, 32),
                              options=dict(num_warps=layout.num_warps))
    report = _ptxas_report(compiled.asm["ptx"], arch)
    report["shared_bytes"] = compiled.metadata.shared
    return report


def run(configs, cells=tuple(KERNELS), arch: int = 90, out=sys.stdout) -> bool:
    """Compiles every kernel of ``cells`` in each config; prints a table; True if all fit."""
    layout_vars = [f"FUSED_RNN_TRITON_{v}" for v in ("LAYOUT", "WEIGHTS", "BLOCK_H", "BLOCK_B",
                                                   "BLOCK_K")]
    saved = {v: os.environ.pop(v, None) for v in layout_vars}
    resident_programs, _layout._resident_programs = _layout._resident_programs, (
        lambda device: H100_SMS)
    allow_tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    ok = True
    try:
        for B, H, dtype, forced in configs:
            for variable in layout_vars:
                os.environ.pop(variable, None)
            os.environ.update({f"FUSED_RNN_TRITON_{k}": v for k, v in forced.items()})
            for cell in cells:
                gates, forward, backward, forward_consts, backward_consts = KERNELS[cell]
                layout = _layout.choose_layout(gates, B, H, dtype, torch.device("cuda"))
                for direction, kernel, consts in (("forward", forward, forward_consts),
                                                  ("backward", backward, backward_consts)):
                    start = time.time()
                    label = (f"{cell:8s} {direction:8s} B={B:<5d} H={H:<5d} "
                             f"{_TRITON_TYPES[dtype]} {layout.name:10s} block_b={layout.block_b:<3d}"
                             f" block_h={layout.block_h:<4d} slices={layout.n_slices:<4d} "
                             f"{'resident' if layout.weights_resident else 'streamed'} "
                             f"warps={layout.num_warps}")
                    try:
                        r = compile_kernel(kernel, layout, dtype, consts, arch)
                    except Exception as error:  # noqa: BLE001 (reported, then failed)
                        ok = False
                        print(f"{label}: FAILED {type(error).__name__}: {error}", file=out)
                        continue
                    fits = r["shared_bytes"] <= SHARED_MEMORY_LIMIT
                    ok &= fits
                    print(f"{label}: {r['registers']} registers, {r['spill_bytes']} B spilled, "
                          f"{r['shared_bytes'] // 1024} KiB shared"
                          f"{'' if fits else ' > LIMIT'} ({time.time() - start:.0f} s)",
                          file=out, flush=True)
    finally:
        _layout._resident_programs = resident_programs
        torch.backends.cuda.matmul.allow_tf32 = allow_tf32
        for variable, value in saved.items():
            os.environ.pop(variable, None)
            if value is not None:
                os.environ[variable] = value
    return ok


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the tests' subset")
    parser.add_argument("--arch", type=int, default=90, help="compute capability (90: H100)")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        print("compile_check: unset TRITON_INTERPRET (interpreted kernels cannot be compiled)")
        return 2
    return 0 if run(QUICK if args.quick else FULL, arch=args.arch) else 1


if __name__ == "__main__":
    sys.exit(main())
