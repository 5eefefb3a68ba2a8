"""The key numbers of each stage of tools/gpu_check.py, read from what the stage left in the
output folder (its log, pytest's JUnit XML, the self-test's JSON, the benchmark's CSV).
Standard library only: it runs under whatever Python the GPU machine has."""

from __future__ import annotations

import csv
import json
import math
import os
import re
import xml.etree.ElementTree as ElementTree
from collections import defaultdict


def _read(path: str) -> str:
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def environment(log_path: str) -> dict[str, str]:
    """The ``key: value`` lines the environment stage prints."""
    found = {}
    for line in _read(log_path).splitlines():
        match = re.match(r"^(gpu|compute_cap|driver|python|torch|cuda|cudnn|triton|nvcc): (.*)$", line)
        if match:
            found[match.group(1)] = match.group(2).strip()
    return found


def build(log_path: str) -> str:
    """The first compiler or pip error of a failed build ('' when there is none)."""
    for line in _read(log_path).splitlines():
        if re.search(r"\berror\b", line, re.IGNORECASE) and "warning" not in line.lower():
            return line.strip()[:160]
    return ""


def pytest_result(junit_path: str, log_path: str) -> tuple[str, list[str]]:
    """'N passed, N failed, N errors, N skipped' and the failing tests' ids, from the JUnit XML;
    from pytest's last summary line when there is no XML (the run was killed)."""
    try:
        root = ElementTree.parse(junit_path).getroot()
    except (OSError, ElementTree.ParseError):
        lines = [line for line in _read(log_path).splitlines() if re.search(r" in [\d.]+s", line)]
        return (lines[-1].strip("= ") if lines else "no result (no JUnit XML, no summary line)"), []
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    total = {key: sum(int(s.get(key, 0)) for s in suites) for key in ("tests", "failures", "errors", "skipped")}
    passed = total["tests"] - total["failures"] - total["errors"] - total["skipped"]
    failing = [
        f"{case.get('classname', '')}::{case.get('name', '')}"
        for case in root.iter("testcase")
        if case.find("failure") is not None or case.find("error") is not None
    ]
    text = (f"{passed} passed, {total['failures']} failed, {total['errors']} errors, "
            f"{total['skipped']} skipped")
    return text, failing


def sanitizer_result(log_path: str) -> tuple[str, int | None]:
    """compute-sanitizer's error count (None when it printed no ERROR SUMMARY) and the
    sanitizer script's own line on non-finite outputs."""
    text = _read(log_path)
    summary = re.findall(r"ERROR SUMMARY: (\d+) error", text)
    errors = int(summary[-1]) if summary else None
    runs = re.findall(r"^(\d+ runs, \d+ with non-finite outputs)", text, re.MULTILINE)
    first = re.search(r"^=+ (Invalid|Race|Barrier|Uninitialized|Error|.*hazard).*$", text, re.MULTILINE)
    parts = [f"{errors} errors" if errors is not None else "no ERROR SUMMARY"]
    if runs:
        parts.append(runs[-1])
    if errors and first:
        parts.append("first: " + first.group(0).lstrip("= ")[:100])
    return "; ".join(parts), errors


def selftest_result(json_path: str) -> tuple[str, list[str]]:
    """Counts of the self-test and its failures, from its --json file."""
    try:
        with open(json_path) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return "no result (no JSON summary)", []
    text = (f"{data['cases']} cases: {data['passed']} passed, {data['failed']} failed, "
            f"{data['skipped']} skipped")
    failing = [f"{f['case']}: {f['details'][0] if f['details'] else ''}"
               for f in data.get("failures", []) if f.get("status") == "FAILED"]
    return text, failing


def _float(text: str) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) and value > 0 else None


def _geometric_mean(values: list[float]) -> float:
    return math.exp(sum(map(math.log, values)) / len(values))


def bench_result(csv_path: str, dtype: str | None = None) -> tuple[str, list[str], list[str]]:
    """The benchmark's rows (of ``dtype`` only, if given): counts, a table of speed-ups against
    torch.nn (cuDNN on a GPU; the CSV's ``speedup`` = torch_ms / fused_ms) per backend, dtype and
    mode (geometric mean, min-max, rows), and the FAILED rows."""
    try:
        with open(csv_path, newline="") as f:
            rows = [row for row in csv.DictReader(f) if dtype is None or row.get("dtype") == dtype]
    except OSError:
        return "no result (no CSV)", [], []
    if not rows:
        return "no rows" + (f" of {dtype}" if dtype else ""), [], []
    failed = [row for row in rows if row.get("status") != "OK"]
    speedups: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    for row in rows:
        value = _float(row.get("speedup", ""))
        if row.get("status") == "OK" and value:
            speedups[(row["backend"], row["dtype"], row["mode"])].append(value)
    counts = f"{len(rows)} rows: {len(rows) - len(failed)} OK, {len(failed)} FAILED"
    modes = sorted({mode for _, _, mode in speedups}, key=lambda m: (len(m), m))
    table = []
    if speedups:
        table.append(f"  {'backend':9} {'dtype':6}" + "".join(f"{m:>26}" for m in modes))
        for backend, dtype in sorted({(b, d) for b, d, _ in speedups}):
            cells = []
            for mode in modes:
                values = speedups.get((backend, dtype, mode))
                cells.append(f"{_geometric_mean(values):.2f}x ({min(values):.2f}-{max(values):.2f}) "
                             f"n={len(values)}" if values else "-")
            table.append(f"  {backend:9} {dtype:6}" + "".join(f"{c:>26}" for c in cells))
    failing = [
        f"{row['cell']} {row['backend']} {row['mode']} {row['dtype']} B{row['batch']} "
        f"T{row['seq_len']} H{row['hidden_size']}: {row.get('note', '')[:100]}"
        for row in failed
    ]
    return counts, table, failing


def dispatch_result(dispatch_dir: str) -> str:
    """The merged dispatch tables in ``dispatch_dir`` (not the per-run ones below it): each
    file's name and its records by dtype."""
    try:
        names = sorted(n for n in os.listdir(dispatch_dir) if n.endswith(".json"))
    except OSError:
        names = []
    described = []
    for name in names:
        try:
            with open(os.path.join(dispatch_dir, name)) as f:
                records = json.load(f)["records"]
            dtypes = defaultdict(int)
            for record in records:
                dtypes[record["dtype"]] += 1
            counts = ", ".join(f"{d} {n}" for d, n in sorted(dtypes.items()))
            described.append(f"dispatch/{name}: {len(records)} records ({counts or 'none'})")
        except (OSError, ValueError, KeyError, TypeError) as error:
            described.append(f"dispatch/{name}: unreadable ({type(error).__name__})")
    return "; ".join(described) or "none written"
