"""The summary table printed at the end of a run (rich)."""

from __future__ import annotations

import math
from typing import Sequence


def _number(value, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


def _significant(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.3g}"


def _percent(fraction) -> str:
    if fraction is None or (isinstance(fraction, float) and math.isnan(fraction)):
        return "-"
    return f"{100 * fraction:.0f}%"


def _shape(row: dict) -> str:
    text = f"B{row['batch']} T{row['seq_len']} I{row['input_size']} H{row['hidden_size']}"
    if row["num_layers"] > 1:
        text += f" L{row['num_layers']}"
    if row["bidirectional"]:
        text += " bi"
    return text


def _speedup(value) -> str:
    if value is None:
        return "-"
    colour = "green" if value >= 1.0 else "red"
    return f"[{colour}]{value:.2f}x[/{colour}]"


def build(rows: Sequence[dict], title: str):
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for name, justify in (
        ("cell", "left"),
        ("mode", "left"),
        ("dtype", "left"),
        ("shape", "left"),
        ("backend", "left"),
        ("status", "left"),
        ("fused ms", "right"),
        ("torch ms", "right"),
        ("speed-up", "right"),
        ("µs/step fused", "right"),
        ("µs/step torch", "right"),
        ("TFLOP/s", "right"),
        ("of GEMM", "right"),
        ("peak MiB fused", "right"),
        ("peak MiB torch", "right"),
        ("max abs err", "right"),
    ):
        table.add_column(name, justify=justify)
    for row in rows:
        ok = row["status"] == "OK"
        err = row.get("max_abs_err")
        table.add_row(
            row["cell"],
            row["mode"],
            row["dtype"],
            _shape(row),
            row["backend"],
            "[green]OK[/green]" if ok else "[bold red]FAILED[/bold red]",
            _number(row.get("fused_ms"), 3),
            _number(row.get("torch_ms"), 3),
            _speedup(row.get("speedup")),
            _number(row.get("us_per_step"), 1),
            _number(row.get("torch_us_per_step"), 1),
            _significant(row.get("tflops")),
            _percent(row.get("gemm_fraction")),
            _number(row.get("fused_peak_mb"), 1),
            _number(row.get("torch_peak_mb"), 1),
            "-" if err is None or math.isnan(err) else f"{err:.1e}",
        )
    return table


def show(rows: Sequence[dict], title: str, console=None) -> None:
    """Prints the table, then why each FAILED row failed."""
    from rich.console import Console
    from rich.text import Text

    if console is None:
        console = Console()
        if not console.is_terminal:
            # A log file (CI) has no width; the default of 80 columns would squash the table.
            console = Console(width=200)
    console.print(build(rows, title))
    for row in rows:
        if row["status"] != "OK":
            where = f" {row['cell']} {row['mode']} {row['dtype']} {_shape(row)} backend={row['backend']}: "
            # Text, not markup: a note may hold brackets.
            console.print(Text.assemble(("FAILED", "bold red"), where, row.get("note", "")))
