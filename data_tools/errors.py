"""The data error taxonomy.

Every error raised while reading inputs derives from :class:`DataError`.  Messages say what
was received and how to fix it.  They never contain a source *path*: a file is named by its
base name only (``file_label``), and a case by its pseudonymous id, because folder names in
hospital exports often carry patient names.  The full path is kept on the exception object
(``err.path``) for interactive debugging and is never put into ``str(err)``.
"""

from __future__ import annotations

import re
from pathlib import Path

__all__ = [
    "DataError",
    "NoSeriesError",
    "SeriesValidationError",
    "UnreadableFileError",
    "GeometryMismatchError",
    "MaskError",
    "ModelError",
    "file_label",
    "scrub_uids",
    "safe_error",
]


#: A DICOM UID inside a file name (PS3.15 treats original UIDs as identifying).
_UID_RUN = re.compile(r"(?<![\d.])\d+(?:\.\d+){4,}(?!\d)")


def file_label(path: str | Path | None) -> str:
    """Return the part of *path* that may appear in messages: its base name, quoted.

    Parameters
    ----------
    path : str or Path or None
        A file or folder path.

    Returns
    -------
    str
        ``"'name.dcm'"`` for a path, ``"<unnamed>"`` for None.  A name made of a DICOM UID
        (five or more dot-separated numbers, as LUNA16 volumes and many PACS exports name
        their files) shows ``<uid>`` in its place: ``"'<uid>.mhd'"``.
    """
    if path is None:
        return "<unnamed>"
    return repr(scrub_uids(Path(path).name))


def scrub_uids(text: str) -> str:
    """*text* with every run shaped like a DICOM UID (five or more dot-separated numbers)
    replaced by ``<uid>``."""
    return _UID_RUN.sub("<uid>", text)


class DataError(Exception):
    """Base class for input problems: the message is safe to show and to store.

    Parameters
    ----------
    message : str
        What was received and how to fix it; no source path.
    path : str or Path, optional
        The offending file, kept for debugging only (never formatted into the message).
    """

    def __init__(self, message: str, *, path: str | Path | None = None):
        super().__init__(message)
        self.path = None if path is None else Path(path)


class NoSeriesError(DataError):
    """A folder holds no usable CT series (no DICOM files, or none of modality CT)."""


class SeriesValidationError(DataError):
    """A CT series was found but fails a geometry or content check."""


class UnreadableFileError(DataError):
    """A file cannot be parsed (truncated, zero bytes, not the expected format)."""


class GeometryMismatchError(DataError):
    """Two arrays that must share a voxel grid do not (for example an image and its mask)."""


class MaskError(DataError):
    """A mask is malformed (wrong dimensionality, non-integer labels, ...)."""


class ModelError(DataError):
    """A model folder is incomplete or its weights do not match the model card."""


def safe_error(exc: BaseException, *paths: Path | str | None) -> str:
    """A message for *exc* that is safe to store and print.

    Input errors (:class:`DataError`) are written to name files by base name only; anything
    else is reported as its type and message.  In both, every given path is replaced by
    ``<input>``, any remaining absolute path is cut to its base name, and anything shaped
    like a DICOM UID (five or more dot-separated numbers, e.g. a LUNA16 file named after its
    series UID) becomes ``<uid>`` (defence in depth: a third-party message may quote either).
    """
    text = str(exc) if isinstance(exc, DataError) else f"{type(exc).__name__}: {exc}"
    for p in paths:
        if p is None:
            continue
        for variant in sorted({str(p), str(Path(p).resolve())}, key=len, reverse=True):
            text = text.replace(variant, "<input>")
    text = re.sub(r"(?:/[^/\s'\"]+)+/([^/\s'\"]+)", r"\1", text)
    text = scrub_uids(text)
    if isinstance(exc, DataError):
        return text
    return f"unexpected error while scoring ({text}); please report it"
