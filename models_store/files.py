"""Durable file writes shared by the store, the companion cache and the runner."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one.

    Through a temporary ``.<name>.<random>.tmp`` in the same folder, flushed to disk, then
    renamed over ``path``; a crash at any point leaves the previous file intact (and at most a
    stale ``.tmp``, which the store removes when it opens)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
