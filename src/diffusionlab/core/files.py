"""Writing files so that a reader (or a crash) never sees half of one: the one atomic-write helper.

``atomic_path(path)`` yields a temporary name in the destination folder; on success the file is
flushed to disk and renamed onto ``path`` (``os.replace``), on failure removed. Checkpoints,
run.json, metrics plots, grids, GIFs, the cached digit classifier and ``--npy`` outputs all go
through it.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Iterator

from . import faults


def _fsync(path: str) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(path, suffix: str = "") -> Iterator[str]:
    """A temporary file name next to ``path`` (ending in ``suffix``, for writers that pick the
    format from the name); moved onto ``path`` when the block succeeds."""
    path = Path(path)
    faults.hit(f"write:{path.name}", path)  # test-only: does nothing unless DIFFUSIONLAB_FAULT names it
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp" + suffix)
    os.close(fd)
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write(path, data: bytes | str) -> None:
    """Write ``data`` (bytes, or text as UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)


def write_json_atomic(path, obj) -> None:
    atomic_write(path, json.dumps(obj, indent=2, default=str))
