"""Writing files so that a reader never sees half of one (the one atomic-write helper), and
hashing them."""

from __future__ import annotations

import hashlib
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

__all__ = ["atomic_path", "sha256_file", "temp_name"]


def temp_name(path: str | Path) -> Path:
    """The temporary name :func:`atomic_path` writes *path* under: ``.NAME.PID.tmp`` beside it
    (hidden, and the writer's process id says whether a left-over file is stale)."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


@contextmanager
def atomic_path(path: str | Path, *, fsync: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside *path*; on success move it over *path* in one step.

    Write the whole file to the yielded path inside the ``with`` block.  On leaving it the
    file is flushed to disk (``fsync``, unless ``fsync=False``) and renamed over *path*
    (:func:`os.replace`, atomic on one file system).  If the block raises, the temporary
    file is removed and *path* keeps its old content (or stays absent).

    Examples
    --------
    >>> with atomic_path(out / "findings.csv") as tmp:  # doctest: +SKIP
    ...     df.to_csv(tmp, index=False)
    """
    path = Path(path)
    tmp = temp_name(path)
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB pieces."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
