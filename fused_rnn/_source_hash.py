"""Hash of the C++/CUDA sources, baked into ``fused_rnn._C`` at build time.

``setup.py`` runs this file to compute the hash it compiles into the extension; ``_ops.py``
recomputes it in a source checkout and refuses to load an extension built from other sources
(a stale ``_C`` after ``git pull`` otherwise fails later with a confusing schema mismatch).
Kept free of imports from the package so that setup.py can load it before anything is built.
"""

import hashlib
import os

SOURCE_SUFFIXES = (".cpp", ".h", ".cu", ".cuh")


def source_files(csrc_dir: str) -> list[str]:
    files = []
    for root, _, names in os.walk(csrc_dir):
        files += [os.path.join(root, n) for n in names if n.endswith(SOURCE_SUFFIXES)]
    return sorted(files)


def source_hash(csrc_dir: str) -> str:
    digest = hashlib.sha256()
    for path in source_files(csrc_dir):
        digest.update(os.path.relpath(path, csrc_dir).replace(os.sep, "/").encode())
        with open(path, "rb") as f:
            digest.update(f.read())
    return digest.hexdigest()[:16]
