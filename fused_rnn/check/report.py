"""The self-test's report: plain text (no dependency beyond torch) and a JSON summary."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from typing import Sequence

from .cases import unavailable_reason
from .compare import CaseResult


def _columns(rows: Sequence[Sequence[str]], indent: str = "  ") -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [indent + "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]


def section(title: str, entries: dict[str, str]) -> list[str]:
    return [title, *_columns([(name, value) for name, value in entries.items()])]


def availability(devices: Sequence[str], backend_names: Sequence[str], cells: Sequence[str]) -> list[str]:
    """Which of ``cells`` each backend runs on each device, and why not."""
    rows = [("device", "backend", "runs")]
    for device in devices:
        for backend in backend_names:
            reasons = {cell: unavailable_reason(backend, cell, device) for cell in cells}
            runs = [cell for cell, reason in reasons.items() if reason is None]
            if len(runs) == len(cells):
                text = "every cell checked"
            elif runs:
                text = ", ".join(runs) + "; not " + "; not ".join(
                    f"{cell} ({reason})" for cell, reason in reasons.items() if reason is not None)
            else:
                text = "no: " + next(iter(reasons.values()))
            if backend == "auto":
                text += " (what it takes per call: auto(...) in the results)"
            rows.append((device, backend, text))
    return ["Backends", *_columns(rows)]


def _groups(results: Sequence[CaseResult]) -> dict[tuple, list[CaseResult]]:
    groups: dict[tuple, list[CaseResult]] = defaultdict(list)
    for result in results:
        case = result.case
        groups[(case.device, result.backend_label, case.cell, case.dtype)].append(result)
    return groups


def _ratio(value: float) -> str:
    return "nan" if math.isnan(value) else f"{value:.2g}"


def results_table(results: Sequence[CaseResult]) -> list[str]:
    """One line per device, backend, cell and dtype. ``worst``: the largest error of the group
    as a fraction of its bound (1 is the limit)."""
    rows = [("device", "backend", "cell", "dtype", "passed", "FAILED", "skipped", "worst", "seconds")]
    for (device, backend, cell, dtype), group in _groups(results).items():
        count = {status: sum(r.status == status for r in group) for status in ("passed", "FAILED", "skipped")}
        ratios = [r.worst_ratio for r in group if r.checks]
        worst = math.nan if any(map(math.isnan, ratios)) else max(ratios, default=0.0)
        rows.append((device, backend, cell, dtype, f"{count['passed']}/{len(group)}",
                     str(count["FAILED"]), str(count["skipped"]), _ratio(worst),
                     f"{sum(r.seconds for r in group):.1f}"))
    return ["Results (worst: the largest error as a fraction of its bound)", *_columns(rows)]


def failures(results: Sequence[CaseResult]) -> list[str]:
    lines = []
    for result in results:
        if result.status == "passed":
            continue
        details = result.failures()
        lines.append(f"  {result.status} {result.case.id}: {details[0]}")
        lines += [f"      {detail}" for detail in details[1:]]
    return (["Failures and skips"] + lines) if lines else []


def counts(results: Sequence[CaseResult]) -> dict[str, int]:
    return {
        "cases": len(results),
        "passed": sum(r.status == "passed" for r in results),
        "failed": sum(r.status == "FAILED" for r in results),
        "skipped": sum(r.status == "skipped" for r in results),
    }


def summary_line(results: Sequence[CaseResult], seconds: float) -> str:
    c = counts(results)
    verdict = "FAILED" if c["failed"] else "OK"
    return (f"{verdict}: {c['cases']} cases, {c['passed']} passed, {c['failed']} failed, "
            f"{c['skipped']} skipped, in {seconds:.1f} s")


def write_json(path: str, results: Sequence[CaseResult], seconds: float, header: dict) -> None:
    """The summary for tools (tools/gpu_check.py reads it): counts, every failure, the header."""
    data = {
        **counts(results),
        "seconds": round(seconds, 2),
        **header,
        "failures": [
            {"case": r.case.id, "status": r.status, "details": r.failures()}
            for r in results if r.status != "passed"
        ],
    }
    with open(path, "w") as f:
        json.dump(data, f, indent=1)
