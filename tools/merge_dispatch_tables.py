#!/usr/bin/env python3
"""Merges the dispatch tables of several benchmark runs on one device into one table per device
class, as ``backend="auto"`` reads one table per class (fused_rnn/dispatch.py).

    python3 tools/merge_dispatch_tables.py OUT_DIR PART_DIR...

Each PART_DIR holds what one ``python -m fused_rnn.bench --dispatch-out PART_DIR`` run wrote (a
table named after its device class); the tables of the same name are merged into OUT_DIR/NAME.
tools/gpu_check.py runs the benchmark once per dtype and merges the three with this.
"""

from __future__ import annotations

import os
import sys
from collections import defaultdict

from fused_rnn import dispatch


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    out_dir, part_dirs = argv[0], argv[1:]
    by_name: dict[str, list[str]] = defaultdict(list)
    for part in part_dirs:
        if os.path.isdir(part):
            for name in sorted(os.listdir(part)):
                if name.endswith(".json"):
                    by_name[name].append(os.path.join(part, name))
    if not by_name:
        print(f"no dispatch table in {', '.join(part_dirs)}", file=sys.stderr)
        return 1
    for name, paths in sorted(by_name.items()):
        try:
            table = dispatch.merge_tables(paths)
        except ValueError as error:
            print(error, file=sys.stderr)
            return 1
        path = os.path.join(out_dir, name)
        dispatch.write_table(path, table)
        print(f"{path}: {len(table['records'])} records from {', '.join(paths)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
