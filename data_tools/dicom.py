"""DICOM CT series -> :class:`~data_tools.volume.Volume` (``(z, y, x)`` float32 HU, LPS affine).

How a folder becomes a volume
-----------------------------
1. :func:`find_series` reads headers only and groups the DICOM files by SeriesInstanceUID
   (files that are not DICOM, and DICOMDIR, are skipped and counted).
2. :func:`select_ct_series` picks the CT series: modality CT, at least 3 files, ImageType
   ORIGINAL + AXIAL preferred, then the most files.
3. :func:`read_ct_files` sorts the slices along the slice normal (row cosine x column
   cosine) by ImagePositionPatient -- never by file name or InstanceNumber -- takes the
   slice step from the positions (SliceThickness is only reported), checks that the steps
   are uniform and the in-plane geometry is shared, and converts each slice to HU with its
   own RescaleSlope/RescaleIntercept.

Privacy: error and log messages name a file by its base name only (``file_label``), never a
folder, a UID or a series description in an error; ``Volume.metadata`` holds scanner
facts only (no patient identifiers, UIDs, dates or paths).
"""

from __future__ import annotations

import logging
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pydicom
from pydicom.errors import BytesLengthException, InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.pixels import get_decoder
from pydicom.uid import (
    UID, JPEG2000TransferSyntaxes, JPEGLSTransferSyntaxes, JPEGTransferSyntaxes,
)

from .errors import NoSeriesError, SeriesValidationError, UnreadableFileError, file_label
from .volume import Volume

__all__ = [
    "SeriesInfo", "find_series", "select_ct_series", "load_dicom_series", "read_ct_files",
    "is_dicom_file",
]

log = logging.getLogger(__name__)

MIN_SLICES = 3
IOP_TOLERANCE = 1e-3          # direction cosines, unitless
PIXEL_SPACING_TOLERANCE_MM = 1e-4
DUPLICATE_TOLERANCE_MM = 1e-3
_DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"
# what pydicom raises on truncated or corrupt files; element values are parsed lazily, so a
# corrupt header can fail on first access to a tag as well as in dcmread
_READ_ERRORS = (InvalidDicomError, OSError, EOFError, ValueError, TypeError, NotImplementedError,
                BytesLengthException, struct.error)
_FIX = "Point at a folder with a CT series (the folder holding one .dcm file per axial slice)"


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
    """

    series_uid: str = field(repr=False)
    modality: str
    n_files: int
    description: str
    image_type: tuple[str, ...]
    files: tuple[Path, ...] = field(repr=False)

    @property
    def is_original_axial(self) -> bool:
        return "ORIGINAL" in self.image_type and "AXIAL" in self.image_type


def is_dicom_file(path: str | Path) -> bool:
    """True when *path* is a readable file with ``b"DICM"`` at byte offset 128 (Part 10 file)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


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


def _scan(folder: str | Path, recursive: bool) -> tuple[list[SeriesInfo], int, int]:
    """Group a folder's DICOM files by series: ``(series, n_not_dicom, n_unreadable)``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise NoSeriesError(f"the path given is not an existing folder. {_FIX}.", path=folder)
    groups: dict[str, list] = {}
    n_not_dicom = n_unreadable = 0
    for path in _iter_files(folder, recursive):
        if path.name.upper() == "DICOMDIR":
            log.debug("skipping %s: a DICOMDIR index, not an image", file_label(path))
            continue
        if not is_dicom_file(path):
            n_not_dicom += 1
            log.debug("skipping %s: not a DICOM file", file_label(path))
            continue
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, force=False)
            sop_class = str(getattr(ds, "file_meta", {}).get("MediaStorageSOPClassUID", ""))
            uid = _text(ds, "SeriesInstanceUID")
            if uid and uid not in groups and sop_class != _DICOMDIR_SOP_CLASS:
                image_type = ds.get("ImageType") or ()
                image_type = image_type.split("\\") if isinstance(image_type, str) else image_type
                groups[uid] = [_text(ds, "Modality").upper(), _text(ds, "SeriesDescription"),
                               tuple(str(v).strip().upper() for v in image_type), []]
        except _READ_ERRORS as exc:
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
    series = [
        SeriesInfo(uid, modality, len(files), desc, itype, tuple(sorted(files)))
        for uid, (modality, desc, itype, files) in groups.items()
    ]
    series.sort(key=lambda s: s.files[0])
    log.info("found %d DICOM series (%d files); skipped %d non-DICOM and %d unreadable files",
             len(series), sum(s.n_files for s in series), n_not_dicom, n_unreadable)
    return series, n_not_dicom, n_unreadable


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
    return _scan(folder, recursive)[0]


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

    Rule: modality CT and at least ``MIN_SLICES`` (3) files; prefer ImageType with ORIGINAL
    and AXIAL; then the most files; ties go to the first in *series* order.  The series not
    chosen are logged at info (modality, file count, description).

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
        raise NoSeriesError(f"no DICOM series found. {_FIX}.")
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
                f"{_FIX}."
            )
        return match[0]
    candidates = [s for s in series if s.modality == "CT" and s.n_files >= MIN_SLICES]
    if not candidates:
        raise NoSeriesError(
            f"no CT series with at least {MIN_SLICES} slices found; the folder holds "
            f"{_describe_found(series)}. {_FIX}."
        )
    chosen = max(candidates, key=lambda s: (s.is_original_axial, s.n_files))
    for s in series:
        if s is not chosen:
            log.info("not using series: %s, %d file(s), description %r",
                     s.modality or "no modality", s.n_files, s.description)
    return chosen


def load_dicom_series(folder: str | Path, *, series_uid: str | None = None) -> Volume:
    """Load the CT series in *folder* (searched recursively) as a :class:`Volume`.

    Parameters
    ----------
    folder : str or Path
        Folder holding the series' files (other series and non-DICOM files may be present).
    series_uid : str, optional
        SeriesInstanceUID to load when the folder holds several CT series.

    Returns
    -------
    Volume
        See :func:`read_ct_files`.

    Raises
    ------
    NoSeriesError, SeriesValidationError, UnreadableFileError
    """
    series, n_not_dicom, n_unreadable = _scan(folder, recursive=True)
    if not series:
        skipped = f" ({n_not_dicom} non-DICOM and {n_unreadable} unreadable file(s) skipped)"
        raise NoSeriesError(
            f"no DICOM series found in the folder{skipped if n_not_dicom + n_unreadable else ''}"
            f". {_FIX}; subfolders are searched.", path=folder,
        )
    chosen = select_ct_series(series, series_uid=series_uid)
    log.info("reading CT series: %d files, description %r", chosen.n_files, chosen.description)
    try:
        return read_ct_files(chosen.files)
    except SeriesValidationError as exc:
        if not n_unreadable:
            raise
        raise SeriesValidationError(
            f"{exc} Note: {n_unreadable} file(s) in the folder have an unreadable header and "
            "were skipped; one of them may be the missing slice.", path=exc.path,
        ) from None


@dataclass
class _Slice:
    path: Path
    instance: int | None
    ipp: np.ndarray          # (3,) LPS mm
    iop: np.ndarray          # (6,) row cosine, column cosine
    pixel_spacing: np.ndarray  # (2,) mm: between rows, between columns
    rows: int
    cols: int
    slope: float
    intercept: float
    series_uid: str
    metadata: dict

    @property
    def who(self) -> str:
        if self.instance is None:
            return f"file {file_label(self.path)}"
        return f"InstanceNumber {self.instance}"


def _floats(ds, keyword: str, n: int, path: Path) -> np.ndarray:
    value = ds.get(keyword)
    try:
        values = [float(v) for v in (value if isinstance(value, (list, MultiValue)) else [value])]
    except (TypeError, ValueError):
        values = []
    if len(values) != n or not np.all(np.isfinite(values)):
        raise SeriesValidationError(
            f"{file_label(path)} has a malformed {keyword} (expected {n} numbers); re-export "
            "the series.", path=path,
        )
    return np.array(values, dtype=float)


def _safe_metadata(ds) -> dict[str, str]:
    meta = {"format": "dicom", "modality": "CT"}
    for key, keyword in (("manufacturer", "Manufacturer"), ("model", "ManufacturerModelName"),
                         ("kernel", "ConvolutionKernel"), ("kvp", "KVP"),
                         ("slice_thickness_mm", "SliceThickness")):
        value = ds.get(keyword)
        if isinstance(value, MultiValue):
            value = "\\".join(str(v) for v in value)
        if value is not None and str(value).strip():
            meta[key] = str(value).strip()
    return meta


def _read_full(path: Path, *, stop_before_pixels: bool = False):
    try:
        return pydicom.dcmread(path, stop_before_pixels=stop_before_pixels, force=False)
    except _READ_ERRORS as exc:
        raise UnreadableFileError(
            f"{file_label(path)} cannot be read as DICOM ({type(exc).__name__}); it is probably "
            "truncated, empty or not a DICOM file. Re-copy or re-export the series.", path=path,
        ) from None


def _read_header(path: Path) -> _Slice:
    ds = _read_full(path, stop_before_pixels=True)
    try:
        return _parse_header(ds, path)
    except _READ_ERRORS as exc:
        raise UnreadableFileError(
            f"{file_label(path)} has a corrupt DICOM header ({type(exc).__name__}). Re-copy or "
            "re-export the series.", path=path,
        ) from None


def _parse_header(ds, path: Path) -> _Slice:
    label = file_label(path)
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        raise SeriesValidationError(
            f"{label} is a multi-frame (enhanced) image, which is not supported yet; export the "
            "series as one file per slice, or convert it to NIfTI.", path=path,
        )
    if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
        raise SeriesValidationError(
            f"{label} is a colour image (SamplesPerPixel != 1), not a CT slice.", path=path
        )
    modality = _text(ds, "Modality").upper()
    if modality and modality != "CT":
        raise SeriesValidationError(
            f"{label} has modality {modality}; only CT series can be read as HU. {_FIX}.",
            path=path,
        )
    missing = [kw for kw in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing",
                             "Rows", "Columns") if ds.get(kw) is None or ds.get(kw) == ""]
    if missing:
        if "PixelData" not in _read_full(path):  # pydicom stops silently at a cut header
            raise UnreadableFileError(
                f"{label} ends before its pixel data (no {missing[0]}); it is truncated. "
                "Re-copy or re-export the series.", path=path,
            )
        raise SeriesValidationError(
            f"{label} lacks {', '.join(missing)}; a CT slice needs its position, orientation "
            "and pixel spacing (the file may be truncated, or it is not an image slice).",
            path=path,
        )
    if ds.get("RescaleSlope") is None or ds.get("RescaleIntercept") is None:
        if "ModalityLUTSequence" in ds:
            raise SeriesValidationError(
                f"{label} maps stored values to HU with a ModalityLUTSequence, which is not "
                "supported yet; export the series with RescaleSlope/RescaleIntercept.", path=path,
            )
        absent = [kw for kw in ("RescaleSlope", "RescaleIntercept") if ds.get(kw) is None]
        raise SeriesValidationError(
            f"{label} is missing {' and '.join(absent)}, so its stored values cannot be "
            "converted to HU; the reader never assumes -1024 or any other default. Re-export "
            "the series with its rescale tags.", path=path,
        )
    slope, intercept = (float(_floats(ds, kw, 1, path)[0])
                        for kw in ("RescaleSlope", "RescaleIntercept"))
    if slope == 0.0:
        raise SeriesValidationError(f"{label} has RescaleSlope 0.", path=path)
    instance = ds.get("InstanceNumber")
    try:
        instance = None if instance in (None, "") else int(instance)
    except (TypeError, ValueError):
        instance = None
    return _Slice(
        path=path, instance=instance,
        ipp=_floats(ds, "ImagePositionPatient", 3, path),
        iop=_floats(ds, "ImageOrientationPatient", 6, path),
        pixel_spacing=_floats(ds, "PixelSpacing", 2, path),
        rows=int(ds.Rows), cols=int(ds.Columns), slope=slope, intercept=intercept,
        series_uid=_text(ds, "SeriesInstanceUID"), metadata=_safe_metadata(ds),
    )


def _check_shared(slices: list[_Slice]) -> None:
    ref = slices[0]
    row_cos, col_cos = ref.iop[:3], ref.iop[3:]
    if (abs(np.linalg.norm(row_cos) - 1) > 1e-2 or abs(np.linalg.norm(col_cos) - 1) > 1e-2
            or abs(row_cos @ col_cos) > 1e-2):
        raise SeriesValidationError(
            f"{file_label(ref.path)} has an ImageOrientationPatient whose cosines are not "
            "orthonormal; the geometry cannot be trusted. Re-export the series.", path=ref.path,
        )
    for s in slices[1:]:
        differs = None
        if np.max(np.abs(s.iop - ref.iop)) > IOP_TOLERANCE:
            differs = "ImageOrientationPatient"
        elif not np.allclose(s.pixel_spacing, ref.pixel_spacing,
                             atol=PIXEL_SPACING_TOLERANCE_MM, rtol=0):
            differs = "PixelSpacing"
        elif s.rows != ref.rows:
            differs = f"Rows ({ref.rows} vs {s.rows})"
        elif s.cols != ref.cols:
            differs = f"Columns ({ref.cols} vs {s.cols})"
        elif s.series_uid and ref.series_uid and s.series_uid != ref.series_uid:
            differs = "SeriesInstanceUID"
        if differs:
            raise SeriesValidationError(
                f"the slices do not share one grid: {differs} differs between "
                f"{file_label(ref.path)} and {file_label(s.path)}. The files mix several "
                "series or reconstructions; load one series at a time.", path=s.path,
            )


def _geometry(slices: list[_Slice]) -> tuple[list[_Slice], np.ndarray]:
    """Sort *slices* along the slice normal and build the ``[z, y, x, 1] -> LPS`` affine."""
    ref = slices[0]
    row_cos, col_cos = ref.iop[:3], ref.iop[3:]
    normal = np.cross(row_cos, col_cos)
    proj = np.array([s.ipp @ normal for s in slices])
    order = np.argsort(proj, kind="stable")
    slices = [slices[i] for i in order]
    proj = proj[order]
    steps = np.diff(proj)
    dup = np.flatnonzero(steps < DUPLICATE_TOLERANCE_MM)
    if dup.size:
        a, b = slices[dup[0]], slices[dup[0] + 1]
        raise SeriesValidationError(
            f"two slices share a position: {a.who} and {b.who} both lie at "
            f"{proj[dup[0]]:.2f} mm along the slice normal. Duplicate slices are not supported "
            "yet; remove the duplicates or load one series at a time.",
            path=b.path,
        )
    median = float(np.median(steps))
    tol = max(0.1, 0.05 * median)
    bad = np.flatnonzero(np.abs(steps - median) > tol)
    if bad.size:
        i = int(bad[0])
        more = f" ({bad.size - 1} other uneven step(s) too)" if bad.size > 1 else ""
        raise SeriesValidationError(
            f"uneven slice spacing: a gap of {steps[i]:.2f} mm between {slices[i].who} and "
            f"{slices[i + 1].who}, where the usual step is {median:.2f} mm (tolerance "
            f"{tol:.2f} mm){more}. A slice is probably missing; re-export the complete series.",
            path=slices[i + 1].path,
        )
    n = len(slices)
    positions = np.stack([s.ipp for s in slices])
    step = (positions[-1] - positions[0]) / (n - 1)
    off_line = np.linalg.norm(positions - (positions[0] + np.arange(n)[:, None] * step), axis=1)
    limit = max(0.5, 0.5 * median)
    if off_line.max() > limit:
        k = int(np.argmax(off_line))
        raise SeriesValidationError(
            f"slice positions do not lie on one line: {slices[k].who} is {off_line[k]:.2f} mm "
            f"off the line through the first and last slice (limit {limit:.2f} mm). The series "
            "may mix reconstructions or have a varying gantry tilt.", path=slices[k].path,
        )
    tilt = np.degrees(np.arccos(np.clip(abs(step @ normal) / np.linalg.norm(step), 0, 1)))
    if tilt > 0.1:
        log.info("slice step is %.2f degrees off the slice normal (gantry tilt); the affine is "
                 "sheared to match the positions", tilt)
    affine = np.eye(4)
    affine[:3, 0] = step
    affine[:3, 1] = col_cos * ref.pixel_spacing[0]  # down the rows
    affine[:3, 2] = row_cos * ref.pixel_spacing[1]  # along a row
    affine[:3, 3] = positions[0]
    return slices, affine


def _decoder_hint(tsyntax) -> str:
    if tsyntax in JPEG2000TransferSyntaxes:
        return "pylibjpeg and pylibjpeg-openjpeg (or python-gdcm)"
    if tsyntax in JPEGTransferSyntaxes or tsyntax in JPEGLSTransferSyntaxes:
        return "pylibjpeg and pylibjpeg-libjpeg (or python-gdcm)"
    return "pylibjpeg with pylibjpeg-openjpeg / pylibjpeg-libjpeg, or python-gdcm"


def _decoder_state(tsyntax) -> str:
    try:
        available = get_decoder(tsyntax).is_available
    except NotImplementedError:
        available = False
    return ("the installed decoders failed on it" if available
            else "no installed decoder can read it")


def _read_pixels(s: _Slice) -> np.ndarray:
    """Stored values of one slice, shape (rows, cols)."""
    label = file_label(s.path)
    ds = _read_full(s.path)
    if "PixelData" not in ds:
        raise UnreadableFileError(
            f"{label} has no pixel data; it is probably truncated. Re-copy or re-export the "
            "series.", path=s.path,
        )
    tsyntax = None
    try:
        tsyntax = UID(str(ds.file_meta.TransferSyntaxUID))
        stored = ds.pixel_array
    except (RuntimeError, NotImplementedError, ImportError) as exc:
        if tsyntax is not None and tsyntax.is_transfer_syntax and tsyntax.is_compressed:
            raise UnreadableFileError(
                f"{label} stores its pixels with the compressed transfer syntax "
                f"'{tsyntax.name}', and {_decoder_state(tsyntax)}. Install "
                f"{_decoder_hint(tsyntax)}, or export the series uncompressed.", path=s.path,
            ) from None
        raise UnreadableFileError(
            f"{label}: the pixel data cannot be decoded ({type(exc).__name__}).", path=s.path
        ) from None
    except (ValueError, AttributeError, TypeError, EOFError, BytesLengthException) as exc:
        raise UnreadableFileError(
            f"{label}: the pixel data cannot be decoded ({type(exc).__name__}); the file is "
            "probably truncated or corrupt. Re-copy or re-export the series.", path=s.path,
        ) from None
    if stored.shape != (s.rows, s.cols):
        raise UnreadableFileError(
            f"{label}: pixel data has shape {stored.shape}, but Rows x Columns is "
            f"{s.rows} x {s.cols}.", path=s.path,
        )
    return stored


def read_ct_files(files: Sequence[Path]) -> Volume:
    """Read the files of one CT series into a :class:`Volume`.

    Parameters
    ----------
    files : sequence of Path
        One file per slice, in any order.

    Returns
    -------
    Volume
        ``array``: shape ``(z, y, x)`` = (slices, Rows, Columns), float32 HU, each slice
        ``stored * RescaleSlope + RescaleIntercept`` with that slice's own values; slices
        in increasing order along the slice normal.
        ``affine``: ``[z, y, x, 1]`` -> LPS mm; column 0 = (last - first position) / (n - 1),
        column 1 = column cosine * PixelSpacing[0], column 2 = row cosine * PixelSpacing[1],
        column 3 = ImagePositionPatient of the first sorted slice.
        ``metadata``: ``format``, ``modality`` and, when present, ``manufacturer``, ``model``,
        ``kernel``, ``kvp``, ``slice_thickness_mm`` (strings).

    Raises
    ------
    SeriesValidationError
        Fewer than 3 slices, differing orientation/spacing/size, duplicate positions,
        uneven steps (a missing slice), missing rescale tags, non-CT files.
    UnreadableFileError
        A truncated or unreadable file, or compressed pixels without an installed decoder.
    """
    paths = [Path(f) for f in files]
    if len(paths) < MIN_SLICES:
        raise SeriesValidationError(
            f"the series has {len(paths)} slice(s); a CT volume needs at least {MIN_SLICES}. "
            f"{_FIX}, not a single image or a localizer.",
            path=paths[0] if paths else None,
        )
    slices = [_read_header(p) for p in paths]
    _check_shared(slices)
    slices, affine = _geometry(slices)
    first = slices[0]
    thickness = first.metadata.get("slice_thickness_mm", "")
    step_mm = float(np.linalg.norm(affine[:3, 0]))
    if thickness.replace(".", "", 1).isdigit() and abs(float(thickness) - step_mm) > 0.1 * step_mm:
        log.info("SliceThickness %s mm differs from the spacing between positions (%.3f mm); "
                 "using the positions", thickness, step_mm)
    out = np.empty((len(slices), first.rows, first.cols), dtype=np.float32)
    for k, s in enumerate(slices):
        out[k] = _read_pixels(s).astype(np.float64) * s.slope + s.intercept
    log.info("read CT volume: shape (z, y, x)=%s, spacing_mm=(%.3f, %.3f, %.3f)", out.shape,
             step_mm, *first.pixel_spacing)
    return Volume(out, affine, first.metadata)
