"""Mirrors the source tree (the files git lists: tracked, and untracked but not ignored, as they
are in the working tree) into another directory, for a second environment to build and test in.

    python3 .ci/mirror_tree.py DEST

An editable build puts fused_rnn/_C*.so into the tree it builds, so two environments (two torch
versions) cannot share one tree: each gets its own, with its own extension and build outputs.
A file is copied only when its content differs, and gets the time of the copy, so the second
tree's incremental build recompiles exactly what changed: keeping the source's modification
time could leave a changed header older than objects built from its previous content (a build
of the mirror that ran while the source changed), and nothing would recompile. Files removed from the source since the last
mirror are removed from DEST too (a manifest of what was mirrored is kept in DEST). Nothing
else in DEST (its virtual environment, build outputs) is touched.
"""

from __future__ import annotations

import filecmp
import os
import shutil
import subprocess
import sys

MANIFEST = ".mirrored-files"


def listed_files(root: str) -> list[str]:
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=root, check=True, capture_output=True,
    ).stdout.decode()
    return sorted(p for p in out.split("\0") if p and os.path.isfile(os.path.join(root, p)))


def unchanged(src: str, dst: str) -> bool:
    try:
        if os.path.getsize(src) != os.path.getsize(dst):
            return False
    except FileNotFoundError:
        return False
    return filecmp.cmp(src, dst, shallow=False)


def mirror(root: str, dest: str) -> tuple[int, int]:
    """Returns (files copied, files removed)."""
    files = listed_files(root)
    manifest = os.path.join(dest, MANIFEST)
    previous = set()
    if os.path.exists(manifest):
        with open(manifest) as f:
            previous = set(f.read().split("\0")) - {""}
    copied = 0
    for path in files:
        src, dst = os.path.join(root, path), os.path.join(dest, path)
        if unchanged(src, dst):
            continue
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        shutil.copyfile(src, dst)
        shutil.copymode(src, dst)
        copied += 1
    removed = 0
    for path in previous - set(files):
        if os.path.isfile(os.path.join(dest, path)):
            os.remove(os.path.join(dest, path))
            removed += 1
    with open(manifest, "w") as f:
        f.write("\0".join(files))
    return copied, removed


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__.strip().split("\n\n")[1], file=sys.stderr)
        return 2
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    dest = os.path.abspath(argv[0])
    if dest == root or not os.path.relpath(root, dest).startswith(".."):
        print(f"mirror_tree: {dest} must not be the source tree or contain it", file=sys.stderr)
        return 2
    copied, removed = mirror(root, dest)
    print(f"mirror_tree: {dest}: {copied} file(s) copied, {removed} removed")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
