"""Find the DICOM series in a folder and choose the CT series, from headers only.

:func:`find_series` groups a folder's DICOM files by SeriesInstanceUID: files that are not
DICOM and DICOMDIR indexes are skipped and counted; a dataset written without the Part 10
preamble is read when it starts like one and carries the tags of an image (see
:func:`_is_raw_dataset`).  :func:`select_ct_series` applies the stated rule (modality CT, at
least 3 files, ORIGINAL + AXIAL preferred, then the most files); the others are logged.

Privacy: messages name files by base name only; a series is described by modality and file
count, never by its UID or free-text description.
"""

from __future__ import annotations

import io
import logging
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import pydicom
from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.errors import BytesLengthException, InvalidDicomError
from pydicom.multival import MultiValue

from .errors import NoSeriesError, file_label
from .part10 import is_dicom_file, is_part10

__all__ = ["SeriesInfo", "find_series", "select_ct_series", "is_dicom_file",
           "is_dicom_dataset", "is_raw_dicom", "MIN_SLICES", "ReadBytes"]

log = logging.getLogger(__name__)

MIN_SLICES = 3
DEFER_BYTES = 4096  # values larger than this (the pixel data) are read only when used
_DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"
# what pydicom raises on truncated or corrupt files; element values are parsed lazily, so a
# corrupt header can fail on first access to a tag as well as in dcmread
READ_ERRORS = (InvalidDicomError, OSError, EOFError, ValueError, TypeError, NotImplementedError,
                BytesLengthException, struct.error)
#: A caller's way of reading a whole file (e.g. reading each input file once and hashing the
#: bytes it hands out): the file's bytes, or None to let the reader open the file itself.
ReadBytes = Callable[[Path], "bytes | None"]
FIX_HINT = "Point at a folder with a CT series (the folder holding one .dcm file per axial slice)"


@dataclass(frozen=True)
class SeriesInfo:
    """One DICOM series found in a folder (from headers only).

    Attributes
    ----------
    series_uid : str
        SeriesInstanceUID (kept out of messages and metadata).
    modality : str
        Modality tag, e.g. ``"CT"``; ``""`` when absent.
    n_files : int
        Number of files in the series.
    description : str
        SeriesDescription, may be ``""``; may hold free text, so never put in error messages.
    image_type : tuple of str
        ImageType values of the first file, upper case (e.g. ``("ORIGINAL", "PRIMARY", "AXIAL")``).
    files : tuple of Path
        The series' files, sorted by path (not the slice order).
    frames : int
        NumberOfFrames of an Enhanced CT file (one multi-frame file holds the series); 0
        otherwise.
    """

    series_uid: str = field(repr=False)
    modality: str
    n_files: int
    description: str
    image_type: tuple[str, ...]
    files: tuple[Path, ...] = field(repr=False)
    frames: int = 0

    @property
    def is_original_axial(self) -> bool:
        return "ORIGINAL" in self.image_type and "AXIAL" in self.image_type


def is_dicom_dataset(path: str | Path) -> bool:
    """True for a DICOM file, with the Part 10 preamble (:func:`is_dicom_file`) or without it
    (a raw dataset that parses with the tags a CT slice needs); False for anything else,
    unreadable files included."""
    return is_dicom_file(path) or is_raw_dicom(path)


def is_raw_dicom(path: str | Path) -> bool:
    """True for a DICOM dataset without the Part 10 preamble that parses with the tags a CT
    slice needs (for a file :func:`is_dicom_file` already said is not Part 10: its first
    bytes are not read twice)."""
    return _is_raw_dataset(Path(path))


def _is_raw_dataset(path: Path, data: bytes | None = None) -> bool:
    """True for a DICOM dataset written without the 128-byte preamble and 'DICM' prefix.

    Such files (pre-Part-10 exports, some PACS dumps) are accepted when they start with a
    group 0x0002 or 0x0008 element, in either VR encoding, and parse with the tags a CT
    slice needs; anything else is "not DICOM".  *data*: the file's bytes, already read.
    """
    if data is None:
        try:
            with open(path, "rb") as fh:
                head = fh.read(4)
        except OSError:
            return False
    else:
        head = data[:4]
    if len(head) < 4 or head[1] != 0 or head[0] not in (0x02, 0x08):
        return False
    try:
        ds = pydicom.dcmread(path if data is None else io.BytesIO(data),
                             stop_before_pixels=True, force=True)
        return bool(_text(ds, "SeriesInstanceUID")) and bool(_text(ds, "SOPClassUID"))
    except READ_ERRORS:
        return False


def raw_values(ds, keyword: str) -> list[str] | None:
    """The values of a text-VR element (DS, IS, CS, UI) as stripped strings, None if absent
    or empty.  Reads the raw bytes when pydicom has not converted them yet: converting DS
    values element by element is most of the time a header takes."""
    tag = tag_for_keyword(keyword)
    if tag is None or tag not in ds:
        return None
    elem = ds.get_item(tag)
    if isinstance(elem, RawDataElement):
        if not elem.value:
            return None
        values = [v.strip(" \x00") for v in elem.value.decode("ascii", "replace").split("\\")]
    else:
        value = elem.value
        if value is None or value == "":
            return None
        values = [str(v).strip() for v in (value if isinstance(value, (list, MultiValue))
                                           else [value])]
    return values if any(values) else None


def _text(ds, keyword: str) -> str:
    return str(ds.get(keyword, "") or "").strip()


def _iter_files(folder: Path, recursive: bool):
    if recursive:
        for root, dirs, names in os.walk(folder):
            dirs.sort()
            for name in sorted(names):
                yield Path(root) / name
    else:
        for path in sorted(folder.iterdir()):
            if path.is_file():
                yield path


def _open_dataset(path: Path, read: ReadBytes | None):
    """The dataset of the file *path*, or None when it is not DICOM.

    Parsed from the bytes *read* hands out when it does, else from the file; either way
    values above :data:`DEFER_BYTES` (the pixel data) are left to be read, from those bytes
    or that file, when used.  Raises one of :data:`READ_ERRORS` for an unreadable header.
    """
    data = read(path) if read is not None else None
    if data is None:
        part10 = is_dicom_file(path)
        if not part10 and not _is_raw_dataset(path):
            return None
        return pydicom.dcmread(path, defer_size=DEFER_BYTES, force=not part10)
    part10 = is_part10(data)
    if not part10 and not _is_raw_dataset(path, data):
        return None
    # the pixel data stays in the buffer (read from it when used), not copied beside it
    return pydicom.dcmread(io.BytesIO(data), defer_size=DEFER_BYTES, force=not part10)


def scan_folder(folder: str | Path, recursive: bool, keep: dict | None = None,
                read: ReadBytes | None = None) -> tuple[list[SeriesInfo], int, int]:
    """Group a folder's DICOM files by series: ``(series, n_not_dicom, n_unreadable)``.

    With *keep*, every dataset read is stored there by path (pixel data deferred, not
    read, or already in memory), so that the series reader need not parse the headers or
    read the files again.  *read*: gives the bytes of a file (each file is asked for once),
    or None to have it read here (:data:`ReadBytes`).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise NoSeriesError(f"the path given is not an existing folder. {FIX_HINT}.", path=folder)
    groups: dict[str, list] = {}
    n_not_dicom = n_unreadable = 0
    for path in _iter_files(folder, recursive):
        if path.name.upper() == "DICOMDIR":
            log.debug("skipping %s: a DICOMDIR index, not an image", file_label(path))
            continue
        try:
            ds = _open_dataset(path, read)
            if ds is None:
                n_not_dicom += 1
                log.debug("skipping %s: not a DICOM file", file_label(path))
                continue
            if keep is not None:
                keep[path] = ds
            sop_class = str(getattr(ds, "file_meta", {}).get("MediaStorageSOPClassUID", ""))
            uid = (raw_values(ds, "SeriesInstanceUID") or [""])[0] or _blanked_key(ds)
            if uid and uid not in groups and sop_class != _DICOMDIR_SOP_CLASS:
                groups[uid] = [(raw_values(ds, "Modality") or [""])[0].upper(),
                               _text(ds, "SeriesDescription"),
                               tuple(v.upper() for v in raw_values(ds, "ImageType") or ()), [],
                               _enhanced_frames(ds, sop_class)]
        except READ_ERRORS as exc:
            n_unreadable += 1
            log.warning("skipping %s: its DICOM header cannot be read (%s)",
                        file_label(path), type(exc).__name__)
            continue
        if sop_class == _DICOMDIR_SOP_CLASS:
            log.debug("skipping %s: a DICOMDIR index, not an image", file_label(path))
        elif not uid:
            n_unreadable += 1
            log.warning("skipping %s: no SeriesInstanceUID", file_label(path))
        else:
            groups[uid][3].append(path)
    for uid, (_, _, _, files, _) in groups.items():
        if uid.startswith(BLANKED_PREFIX):
            log.warning("%d file(s) have no SeriesInstanceUID (blanked by an anonymiser?); "
                        "grouped by study, series number, modality, orientation, matrix and "
                        "pixel spacing instead, as dcm2niix does", len(files))
    series = [
        SeriesInfo(uid, modality, len(files), desc, itype, tuple(sorted(files)),
                   frames if len(files) == 1 else 0)
        for uid, (modality, desc, itype, files, frames) in groups.items()
    ]
    series.sort(key=lambda s: s.files[0])
    log.info("found %d DICOM series (%d files); skipped %d non-DICOM and %d unreadable files",
             len(series), sum(s.n_files for s in series), n_not_dicom, n_unreadable)
    return series, n_not_dicom, n_unreadable


def _enhanced_frames(ds, sop_class: str) -> int:
    """NumberOfFrames of an Enhanced CT file, 0 for anything else."""
    if sop_class != "1.2.840.10008.5.1.4.1.1.2.1":
        return 0
    frames = raw_values(ds, "NumberOfFrames") or ["0"]
    return int(frames[0]) if frames[0].isdigit() else 0


#: Series key prefix of files grouped without a SeriesInstanceUID (:func:`_blanked_key`).
BLANKED_PREFIX = "blanked:"


def _blanked_key(ds) -> str:
    """A series key for a file whose SeriesInstanceUID is blank or missing: its study, series
    number, modality, orientation (rounded), matrix and pixel spacing; "" when it has no
    image geometry (then it stays unusable)."""
    text = [(raw_values(ds, k) or [""]) for k in ("StudyInstanceUID", "SeriesNumber",
                                                   "Modality", "PixelSpacing",
                                                   "ImageOrientationPatient")]
    rows, cols = ds.get("Rows"), ds.get("Columns")          # US: binary, not text
    if not rows or not cols or not text[4][0]:
        return ""
    try:
        iop = ",".join(f"{float(v):.3f}" for v in text[4])
        spacing = ",".join(f"{float(v):.4f}" for v in text[3])
    except (TypeError, ValueError):
        return ""
    return BLANKED_PREFIX + "|".join([text[0][0], text[1][0], text[2][0], str(int(rows)),
                                      str(int(cols)), spacing, iop])


def find_series(folder: str | Path, *, recursive: bool = True) -> list[SeriesInfo]:
    """List the DICOM series in *folder*, reading headers only.

    Parameters
    ----------
    folder : str or Path
        Folder to search.
    recursive : bool
        Also search subfolders.

    Returns
    -------
    list of SeriesInfo
        One entry per SeriesInstanceUID, ordered by their first file's path; empty when the
        folder holds no DICOM files.

    Raises
    ------
    NoSeriesError
        *folder* is not an existing folder.
    """
    return scan_folder(folder, recursive)[0]


def _describe_found(series: Sequence[SeriesInfo], limit: int = 8) -> str:
    parts = [
        f"{s.modality or 'no modality'} with {s.n_files} file{'s' if s.n_files != 1 else ''}"
        for s in series[:limit]
    ]
    if len(series) > limit:
        parts.append(f"and {len(series) - limit} more")
    return f"{len(series)} series ({'; '.join(parts)})"


def select_ct_series(series: list[SeriesInfo], *, series_uid: str | None = None) -> SeriesInfo:
    """Choose the CT series to load.

    Rule: modality CT and at least ``MIN_SLICES`` (3) files, or one Enhanced CT file of two
    or more frames; prefer ImageType with ORIGINAL and AXIAL; then the most files (or
    frames); ties go to the first in *series* order.  A warning says so when several CT
    series qualify; the series not chosen are logged at info (modality, file count, image
    type).

    Parameters
    ----------
    series : list of SeriesInfo
        As returned by :func:`find_series`.
    series_uid : str, optional
        Choose this SeriesInstanceUID instead (it must be a CT series).

    Raises
    ------
    NoSeriesError
        No candidate; the message lists the modalities and file counts found.
    """
    series = list(series)
    if not series:
        raise NoSeriesError(f"no DICOM series found. {FIX_HINT}.")
    if series_uid is not None:
        match = [s for s in series if s.series_uid == series_uid]
        if not match:
            raise NoSeriesError(
                f"no series has the requested SeriesInstanceUID; found {_describe_found(series)}. "
                "Check the UID, or leave it out to choose the CT series automatically."
            )
        if match[0].modality != "CT":
            raise NoSeriesError(
                f"the requested series has modality {match[0].modality or 'unknown'}, not CT. "
                f"{FIX_HINT}."
            )
        return match[0]
    candidates = [s for s in series if s.modality == "CT"
                  and (s.n_files >= MIN_SLICES or s.frames >= 2)]
    if not candidates:
        raise NoSeriesError(
            f"no CT series with at least {MIN_SLICES} slices found; the folder holds "
            f"{_describe_found(series)}. {FIX_HINT}."
        )
    chosen = max(candidates, key=lambda s: (s.is_original_axial, max(s.n_files, s.frames)))
    if len(candidates) > 1:
        log.warning("the folder holds %d CT series; reading the one with %d file(s) (original "
                    "axial first, then the most slices). To read another, list the case in a "
                    "manifest CSV with its series_uid", len(candidates), chosen.n_files)
    for s in series:
        if s is not chosen:
            log.info("not using series: %s, %d file(s), image type %s",  # never the free-text
                     s.modality or "no modality", s.n_files,           # description
                     "/".join(s.image_type) or "unknown")
    return chosen
