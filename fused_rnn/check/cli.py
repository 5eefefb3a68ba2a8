"""``python -m fused_rnn.check``: the command line of the self-test."""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Sequence

import torch

from .. import backends
from ..bench.precision import strict_fp32
from . import environment, report
from .cases import CELLS, DTYPES, make_cases, present_devices
from .compare import run_case

EXIT_OK, EXIT_MISMATCH, EXIT_USAGE = 0, 1, 2


def _list_of(allowed: Sequence[str]):
    def parse(text: str) -> list[str]:
        values = [v.strip() for v in text.split(",") if v.strip()]
        bad = [v for v in values if v not in allowed]
        if bad or not values:
            raise argparse.ArgumentTypeError(f"{', '.join(bad) or 'nothing'} not among {', '.join(allowed)}")
        return list(dict.fromkeys(values))

    return parse


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m fused_rnn.check",
        description="Self-test: every available fused_rnn backend against torch.nn on every device "
                    "present, every output and gradient. Exits 1 on any mismatch, 2 on a usage error.",
    )
    p.add_argument("--devices", type=lambda s: [v.strip() for v in s.split(",") if v.strip()],
                   help="comma-separated: cpu, cuda (every GPU) or cuda:N (default: every device present)")
    p.add_argument("--backends", type=_list_of(backends.BACKENDS),
                   help=f"comma-separated, of {', '.join(backends.BACKENDS)} (default: all; each where available)")
    p.add_argument("--cells", type=_list_of(CELLS), default=list(CELLS),
                   help=f"comma-separated, of {', '.join(CELLS)} (default: all)")
    p.add_argument("--dtypes", type=_list_of(tuple(DTYPES)),
                   help="comma-separated, of fp32, fp64, bf16, fp16 (default: fp32, fp64, bf16 on the "
                        "CPU; all four on a GPU)")
    p.add_argument("--quick", action="store_true",
                   help="two layouts (one layer one way, full length; two layers both ways with "
                        "lengths) instead of all eight")
    p.add_argument("--json", metavar="PATH", help="also write the counts and every failure to PATH")
    p.add_argument("-v", "--verbose", action="store_true", help="print every case as it finishes")
    return p


def _devices(requested: Sequence[str] | None, p: argparse.ArgumentParser) -> list[str]:
    present = present_devices()
    if not requested:
        return present
    devices = []
    for name in requested:
        if name == "cuda":
            gpus = [d for d in present if d.startswith("cuda")]
            if not gpus:
                p.error("--devices cuda: no CUDA GPU is present")
            devices += gpus
            continue
        try:
            device = torch.device(name)
        except RuntimeError:
            p.error(f"--devices: {name!r} is not a device")
        name = "cpu" if device.type == "cpu" else f"{device.type}:{device.index or 0}"
        if name not in present:
            p.error(f"--devices: {name} is not present (present: {', '.join(present)})")
        devices.append(name)
    return list(dict.fromkeys(devices))


def main(argv: Sequence[str] | None = None) -> int:
    p = parser()
    try:
        args = p.parse_args(argv)
        devices = _devices(args.devices, p)
    except SystemExit as exit:  # argparse's usage errors (2) and --help (0)
        return exit.code if isinstance(exit.code, int) else EXIT_USAGE
    # NaN in every output the kernels allocate until they write it (read once per process by
    # the compiled ops): an element a kernel forgets shows up as a mismatch.
    os.environ.setdefault("FUSED_RNN_FILL_UNINITIALIZED", "1")
    backend_names = args.backends or list(backends.BACKENDS)
    start = time.perf_counter()
    header = {"versions": environment.versions(), "build": environment.build(),
              "devices": {d: environment.device_description(d) for d in devices}}
    out = ["fused_rnn self-test", "", *report.section("Versions", header["versions"]), "",
           *report.section("Build", header["build"]), "", *report.section("Devices", header["devices"]),
           "", *report.availability(devices, backend_names, args.cells), ""]
    print("\n".join(out), flush=True)

    cases = make_cases(devices, backend_names, args.cells, args.dtypes, quick=args.quick)
    idle = [name for name in args.backends or [] if not any(case.backend == name for case in cases)]
    if idle:  # asked for by name, so not silently left out
        print(f"{p.prog}: error: --backends {','.join(idle)}: runs none of the cells asked for on "
              f"{', '.join(devices)} (see Backends above)", file=sys.stderr)
        return EXIT_USAGE
    results, torch_cache = [], {}
    with strict_fp32():  # fp32 compared with fp32, not with TF32 (cuDNN's default)
        for case in cases:
            results.append(run_case(case, torch_cache))
            if args.verbose:
                print(f"  {results[-1].status:7} {case.id}", flush=True)
    seconds = time.perf_counter() - start

    lines = ["", *report.results_table(results)] if results else ["", "No case to run."]
    failed = report.failures(results)
    lines += ["", *failed] if failed else []
    lines += ["", report.summary_line(results, seconds)]
    print("\n".join(lines), flush=True)
    if args.json:
        report.write_json(args.json, results, seconds, header)
    return EXIT_MISMATCH if report.counts(results)["failed"] else EXIT_OK
