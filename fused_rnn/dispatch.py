"""How ``backend="auto"`` decides: the backend that a benchmark run on this kind of device
recorded as correct and fastest for the nearest configuration, else the backend known to be
correct there.

Tables. ``python -m fused_rnn.bench --dispatch-out PATH`` writes one from the run's rows (every
backend that passed the correctness gate, its speed-up over torch.nn measured side by side), and
the package ships the recorded ones in ``fused_rnn/dispatch_tables/``. A table belongs to a
device class (:class:`DeviceClass`: CPU model, vector ISA and thread count, or GPU name and
compute capability; and the torch version, major.minor) and holds records keyed by what decides
speed (:class:`Call`: cell, dtype, inference or training, batch, hidden size, layers and
directions, lengths present, steps).

Decision, per call (cached per configuration, so a few microseconds):

1. ``FUSED_RNN_AUTO_POLICY`` forces a policy for experiments: ``recorded`` (the default, what
   follows), ``fused`` (the device's fused kernels: cpu, else cuda, else triton) or ``torch``.
2. With a table for the device: the nearest record with the same cell, dtype and mode (batch,
   hidden size and steps compared on a log scale; layers, directions and lengths must agree
   or cost distance), and in it the fastest backend that passed the gate and can run the call.
   A fused backend has to beat torch.nn's kernels by the margin ``TORCH_TIE`` to be taken over
   them: within the noise, torch.nn's are the reference.
3. Without a table (or a record): the CPU backend on CPUs; ``torch`` (cuDNN) on CUDA, where
   no fused kernel has been recorded correct and faster yet.

Under torch.compile the ``torch`` backend runs outside the graph (a graph break), so auto takes
the fastest recorded backend that compiles, deciding per (cell, dtype, mode, hidden size,
layers, directions, lengths) so that a graph holds for every batch size and length. With no
such backend recorded for a GPU, it stays with ``torch``, and the graph breaks there, as at a
torch.nn layer.

:func:`explain` and :func:`choose` answer without running a kernel and without the device
being present (a :class:`DeviceClass` can be given), so a test on a CPU can ask what auto takes
on an H100 with and without a record. A table that cannot be read, or is of another format,
is skipped with a warning that names the file.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import platform
import warnings
from typing import Callable, Iterable, NamedTuple, Optional

import torch

FORMAT = 1
POLICY_VARIABLE = "FUSED_RNN_AUTO_POLICY"
POLICIES = ("recorded", "fused", "torch")
#: Directories (os.pathsep-separated) searched for tables before the shipped ones.
TABLES_VARIABLE = "FUSED_RNN_DISPATCH_TABLES"
SHIPPED_TABLES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "dispatch_tables")
#: A fused backend is taken over torch.nn's kernels only when at least this much faster.
TORCH_TIE = 1.03

DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16",
               torch.float64: "fp64"}


def dtype_name(dtype: torch.dtype) -> str:
    """The records' name of a dtype ("fp32", ...; torch's own for any other)."""
    return DTYPE_NAMES.get(dtype) or str(dtype)


# ---------------------------------------------------------------------------------------------
# What a decision depends on
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DeviceClass:
    """A kind of device, as far as speed goes. ``detail``: ``"<isa>, <n> threads"`` for a CPU
    (the vector ISA of fused_rnn's CPU kernels and torch's thread count), ``"sm_<cc>"`` for a
    GPU. ``torch``: torch's version, major.minor."""

    kind: str
    name: str
    detail: str
    torch: str

    def describe(self) -> str:
        return f"{self.name} ({self.kind}, {self.detail}, torch {self.torch})"


def _torch_minor(version: str) -> str:
    return ".".join(version.split("+")[0].split(".")[:2])


@functools.cache
def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo's, else what platform knows)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


@functools.cache
def _cpu_name_and_isa() -> tuple[str, str]:
    from . import _ops

    return cpu_model(), _ops._C.cpu_isa()


@functools.cache
def _gpu_name_and_capability(index: int) -> tuple[str, str]:
    major, minor = torch.cuda.get_device_capability(index)
    return torch.cuda.get_device_name(index), f"sm_{major}{minor}"


@functools.cache
def _device_class(device: torch.device, threads: int) -> DeviceClass:
    version = _torch_minor(torch.__version__)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        name, capability = _gpu_name_and_capability(index)
        return DeviceClass("cuda", name, capability, version)
    if device.type == "cpu":
        name, isa = _cpu_name_and_isa()
        return DeviceClass("cpu", name, f"{isa}, {threads} threads", version)
    return DeviceClass(device.type, device.type, "", version)


def device_class(device: torch.device) -> DeviceClass:
    """The class of ``device`` as this process runs it (for a CPU: at the current thread
    count)."""
    return _device_class(device, torch.get_num_threads() if device.type == "cpu" else 0)


class Call(NamedTuple):
    """What decides the speed of a layer call: the key of the records (a tuple: it is built and
    hashed on every call). ``batch`` and ``seq_len`` None: not known (under torch.compile, a
    graph serves them all)."""

    cell: str
    dtype: str
    training: bool
    batch: Optional[int]
    hidden: int
    layers: int = 1
    directions: int = 1
    lengths: bool = False
    seq_len: Optional[int] = None
    proj: bool = False

    @property
    def mode(self) -> str:
        return "fwd+bwd" if self.training else "fwd"


@dataclasses.dataclass(frozen=True)
class Choice:
    """What auto takes for a call, and why: ``record`` is the nearest record used (None: no
    record), ``table`` the file it came from."""

    backend: str
    reason: str
    record: Optional[dict] = None
    table: Optional[str] = None


# ---------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------


def _table_paths() -> list[str]:
    directories = [d for d in os.environ.get(TABLES_VARIABLE, "").split(os.pathsep) if d]
    directories.append(SHIPPED_TABLES)
    paths = []
    for directory in directories:
        if os.path.isdir(directory):
            paths += sorted(os.path.join(directory, f) for f in os.listdir(directory)
                            if f.endswith(".json"))
    return paths


def _validate(table) -> None:
    if not isinstance(table, dict) or table.get("format") != FORMAT:
        found = table.get("format") if isinstance(table, dict) else type(table).__name__
        raise ValueError(f"format {found!r}, this fused_rnn reads format {FORMAT}")
    device = table.get("device")
    if not isinstance(device, dict) or not all(
            isinstance(device.get(k), str) for k in ("kind", "name", "detail", "torch")):
        raise ValueError("no device class (kind, name, detail, torch)")
    records = table.get("records")
    if not isinstance(records, list):
        raise ValueError("no list of records")
    for record in records:
        keys = ("cell", "dtype", "mode", "batch", "hidden", "layers", "directions", "lengths",
                "seq_len", "speedup")
        if not isinstance(record, dict) or any(k not in record for k in keys):
            raise ValueError(f"a record lacks one of {', '.join(keys)}: {record!r}"[:200])
        if not isinstance(record["speedup"], dict) or not record["speedup"]:
            raise ValueError(f"a record has no speed-ups: {record!r}"[:200])


def _read(path: str) -> dict:
    """The table at ``path``; OSError or ValueError when it cannot be read or is malformed."""
    with open(path) as f:
        table = json.load(f)
    _validate(table)
    return table


@functools.cache
def _load(paths: tuple[str, ...]) -> tuple[tuple[str, dict], ...]:
    tables = []
    for path in paths:
        try:
            table = _read(path)
        except (OSError, ValueError) as error:
            warnings.warn(f"fused_rnn: ignoring the dispatch table {path}: {error}; backend='auto' "
                          f"uses the rule for devices without a table", stacklevel=2)
            continue
        tables.append((path, table))
    return tuple(tables)


def tables() -> tuple[tuple[str, dict], ...]:
    """(path, table) of every readable table, in search order."""
    return _load(tuple(_table_paths()))


def table_for(device: DeviceClass) -> Optional[tuple[str, dict]]:
    """The first table recorded on ``device``'s class, or None."""
    wanted = dataclasses.asdict(device)
    for path, table in tables():
        if table["device"] == wanted:
            return path, table
    return None


# ---------------------------------------------------------------------------------------------
# The decision
# ---------------------------------------------------------------------------------------------


def policy() -> str:
    value = os.environ.get(POLICY_VARIABLE, "recorded").strip().lower() or "recorded"
    if value not in POLICIES:
        raise ValueError(f"{POLICY_VARIABLE}={value!r}: expected one of {', '.join(POLICIES)}")
    return value


def _log_distance(a: Optional[int], b: int) -> float:
    return 0.0 if a is None else abs(math.log2(max(a, 1)) - math.log2(max(b, 1)))


def _distance(call: Call, record: dict) -> float:
    return (_log_distance(call.batch, record["batch"]) + _log_distance(call.hidden, record["hidden"])
            + 0.5 * _log_distance(call.seq_len, record["seq_len"])
            + (call.layers != record["layers"]) + (call.directions != record["directions"])
            + 0.5 * (call.lengths != bool(record["lengths"])))


def nearest_record(call: Call, records: Iterable[dict]) -> Optional[dict]:
    """The record closest to ``call`` among those of its cell (the Elman RNN's two
    nonlinearities cost the same: one stands for the other), dtype and mode."""
    cells = (call.cell, "rnn_tanh" if call.cell == "rnn_relu" else "rnn_relu")
    for cell in cells if call.cell.startswith("rnn_") else cells[:1]:
        same = [r for r in records
                if r["cell"] == cell and r["dtype"] == call.dtype and r["mode"] == call.mode]
        if same:
            return min(same, key=lambda r: _distance(call, r))
    return None


def _fastest(record: dict, runnable: Callable[[str], bool]) -> Optional[str]:
    """The recorded backend to take: the fastest that runs the call, torch.nn's kernels unless
    a fused one beats them by TORCH_TIE."""
    speedups = sorted(((s, b) for b, s in record["speedup"].items() if runnable(b)), reverse=True)
    if not speedups:
        return None
    best_speedup, best = speedups[0]
    torch_speedup = record["speedup"].get("torch", 1.0)
    if best != "torch" and runnable("torch") and best_speedup < TORCH_TIE * torch_speedup:
        return "torch"
    return best


def _fused_rule(runnable: Callable[[str], bool]) -> str:
    return next((n for n in ("cpu", "cuda", "triton") if runnable(n)), "reference")


def decide(call: Call, device: DeviceClass, runnable: Callable[[str], bool], *,
           compiling: bool = False) -> Choice:
    """What auto takes for ``call`` on a device of class ``device``; ``runnable(name)`` says
    whether a backend can run the call there, ``compiling`` whether torch.compile is tracing."""
    can_run = (lambda name: name != "torch" and runnable(name)) if compiling else runnable
    chosen = policy()
    if chosen != "recorded":
        return Choice("torch" if chosen == "torch" else _fused_rule(can_run),
                      f"{POLICY_VARIABLE}={chosen}")
    found = table_for(device)
    if found is not None:
        path, table = found
        record = nearest_record(call, table["records"])
        if record is not None:
            name = _fastest(record, can_run)
            if name is not None:
                return Choice(name, f"fastest correct backend of the nearest record in {path}"
                                    + (" (compiling: backends that compile)" if compiling else ""),
                              record, path)
    why = "no table for " + device.describe() if found is None else f"no record in {found[0]}"
    if device.kind == "cuda" and not compiling:
        return Choice("torch", f"{why}: torch.nn's kernels (cuDNN), until a GPU run has "
                               f"recorded fused kernels correct and faster here")
    if device.kind == "cuda":
        return Choice("torch", f"{why}: torch.nn's kernels, run outside the compiled graph, until "
                               f"a GPU run has recorded fused kernels correct here")
    name = _fused_rule(can_run)
    return Choice(name, f"{why}: the {name} backend" if device.kind == "cpu" else why)


# ---------------------------------------------------------------------------------------------
# Writing a table from benchmark rows
# ---------------------------------------------------------------------------------------------


def _float(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def records_from_rows(rows: Iterable[dict]) -> list[dict]:
    """One record per benchmarked configuration: the speed-up over torch.nn (measured side by
    side with it) of every backend that passed the correctness gate; "auto" rows are left out
    (auto's choice is what the table decides). torch.nn itself counts as the ``torch`` backend
    at 1.0 where that backend was not measured."""
    grouped: dict[tuple, dict] = {}
    for row in rows:
        if row.get("backend") == "auto":
            continue
        key = (row["cell"], row["dtype"], row["mode"], int(row["batch"]), int(row["hidden_size"]),
               int(row["num_layers"]), 2 if str(row["bidirectional"]) in ("True", "true", "1")
               else 1, int(row["seq_len"]))
        record = grouped.setdefault(key, dict(
            cell=key[0], dtype=key[1], mode=key[2], batch=key[3], hidden=key[4], layers=key[5],
            directions=key[6], lengths=False, seq_len=key[7], speedup={}, failed=[]))
        speedup = _float(row.get("speedup"))
        if row.get("status") == "OK" and math.isfinite(speedup):
            record["speedup"][row["backend"]] = round(speedup, 4)
        else:
            record["failed"].append(row["backend"])
    for record in grouped.values():
        record["speedup"].setdefault("torch", 1.0)
    return list(grouped.values())


def table_from_rows(rows: list[dict], device: DeviceClass, *, command: str = "") -> dict:
    commits = sorted({row.get("git_commit", "") for row in rows})
    return {
        "format": FORMAT,
        "device": dataclasses.asdict(device),
        "recorded": {"run_id": rows[0].get("run_id", "") if rows else "", "commits": commits,
                     "torch_version": torch.__version__, "command": command},
        "records": records_from_rows(rows),
    }


def merge_tables(paths: list[str]) -> dict:
    """One table from the tables at ``paths``, written by benchmark runs on one device class
    (one run per dtype, say): every record, the later table's where two have the same
    configuration, and the runs, commits and commands of all. A ValueError names a table that
    cannot be read or is of another device class."""
    merged, records = None, {}
    for path in paths:
        try:
            table = _read(path)
        except (OSError, ValueError) as error:
            raise ValueError(f"dispatch table {path}: {error}") from None
        if merged is None:
            merged = dict(table, recorded={k: [] for k in ("run_ids", "commits", "commands")})
        elif table["device"] != merged["device"]:
            raise ValueError(f"dispatch table {path} is of {table['device']}, not {merged['device']}")
        recorded = table.get("recorded", {})
        merged["recorded"]["run_ids"].append(recorded.get("run_id", ""))
        merged["recorded"]["commits"] += [c for c in recorded.get("commits", [])
                                          if c not in merged["recorded"]["commits"]]
        merged["recorded"]["commands"].append(recorded.get("command", ""))
        merged["recorded"]["torch_version"] = recorded.get("torch_version", "")
        for record in table["records"]:
            key = tuple(record[k] for k in ("cell", "dtype", "mode", "batch", "hidden", "layers",
                                            "directions", "lengths", "seq_len"))
            records[key] = record
    if merged is None:
        raise ValueError("no dispatch table to merge")
    merged["records"] = list(records.values())
    return merged


#: Bumped whenever a table is written, so that decisions taken before are not reused.
generation = 0


def write_table(path: str, table: dict) -> None:
    global generation
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(table, f, indent=1)
        f.write("\n")
    _load.cache_clear()
    generation += 1


def table_file_name(device: DeviceClass) -> str:
    """A file name for a table of ``device``'s class, e.g.
    ``cpu-intel-r-xeon-r-processor-avx512-2-threads-torch-2.14.json``."""
    text = f"{device.kind} {device.name} {device.detail} torch {device.torch}".lower()
    slug = "".join(c if c.isalnum() or c == "." else "-" for c in text)
    while "--" in slug:
        slug = slug.replace("--", "-")
    return slug.strip("-") + ".json"
