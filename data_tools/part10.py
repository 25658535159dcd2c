"""Is this file a DICOM Part 10 file?  Answered from its first 132 bytes, without pydicom.

Finding the cases of a folder asks this of one file per folder; keeping it free of pydicom's
import (0.2-0.3 s) lets ``discovery score`` fork its read-ahead child before any heavy
import, and lets a process whose first case another process reads never import pydicom.
:mod:`data_tools.dicom_series` re-exports it.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["is_dicom_file", "is_part10"]


def is_part10(data: bytes) -> bool:
    """True when *data* (a file's first bytes, or all of them) holds ``b"DICM"`` at byte
    offset 128, after the 128-byte preamble: a Part 10 file."""
    return len(data) >= 132 and data[128:132] == b"DICM"


def is_dicom_file(path: str | Path) -> bool:
    """True when *path* is a readable file with ``b"DICM"`` at byte offset 128 (Part 10 file)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return is_part10(head)
