"""DICOM CT series -> :class:`~data_tools.volume.Volume` (``(z, y, x)`` float32 HU, LPS affine).

How a folder becomes a volume
-----------------------------
1. :func:`~data_tools.dicom_series.find_series` reads headers only and groups the DICOM files
   by SeriesInstanceUID (files that are not DICOM, and DICOMDIR, are skipped and counted).
2. :func:`~data_tools.dicom_series.select_ct_series` picks the CT series: modality CT, at
   least 3 files, ImageType ORIGINAL + AXIAL preferred, then the most files.
3. :func:`read_ct_files` drops localizer frames filed under the CT's series UID, checks that
   the in-plane geometry is shared and that every transfer syntax can be decoded, estimates
   the memory the volume needs (refused above a limit) -- all from the headers -- then sorts
   the slices along the slice normal (row cosine x column cosine) by ImagePositionPatient
   (never by file name or InstanceNumber), drops exact duplicate slices, takes the slice
   step from the positions (SliceThickness is only reported), checks that the steps are
   uniform, converts each slice to HU with its own RescaleSlope/RescaleIntercept, and
   resamples a gantry-tilted series onto an orthogonal grid (recorded in the metadata).

Privacy: error and log messages name a file by its base name only (``file_label``), never a
folder, a UID or a series description in an error; ``Volume.metadata`` holds scanner
facts only (no patient identifiers, UIDs, dates or paths).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pydicom
from pydicom.multival import MultiValue
from pydicom.uid import UID

from .dicom_pixels import decoder_available, decoder_hint, stored_pixels
from .dicom_series import (
    DEFER_BYTES,
    FIX_HINT,
    MIN_SLICES,
    READ_ERRORS,
    ReadBytes,
    SeriesInfo,
    find_series,
    is_dicom_file,
    raw_values,
    scan_folder,
    select_ct_series,
)
from .errors import (
    NoSeriesError,
    SeriesValidationError,
    UnreadableFileError,
    file_label,
)
from .memory import DEFAULT_MAX_BYTES
from .volume import Volume, spacing_from_affine

__all__ = [
    "SeriesInfo", "find_series", "select_ct_series", "load_dicom_series", "load_dicom_folder",
    "read_ct_files", "is_dicom_file", "DEFAULT_MAX_BYTES",
]

log = logging.getLogger(__name__)

IOP_TOLERANCE = 1e-3          # direction cosines, unitless
PIXEL_SPACING_TOLERANCE_MM = 1e-4
DUPLICATE_TOLERANCE_MM = 1e-3
TILT_TOLERANCE_DEG = 0.1      # slice step this far off the normal counts as gantry tilt
MAX_LOCALIZER_FILES = 3       # at most this many off-grid files are dropped as localizer frames


def load_dicom_series(folder: str | Path, *, series_uid: str | None = None,
                      max_bytes: int | None = DEFAULT_MAX_BYTES,
                      integer_hu: bool = False) -> Volume:
    """Load the CT series in *folder* (searched recursively) as a :class:`Volume`.

    See :func:`load_dicom_folder`, which also returns the series found.
    """
    return load_dicom_folder(folder, series_uid=series_uid, max_bytes=max_bytes,
                             integer_hu=integer_hu)[0]


def load_dicom_folder(folder: str | Path, *, series_uid: str | None = None,
                      max_bytes: int | None = DEFAULT_MAX_BYTES, read: ReadBytes | None = None,
                      integer_hu: bool = False
                      ) -> tuple[Volume, SeriesInfo, list[SeriesInfo]]:
    """Load the CT series in *folder* (searched recursively) as a :class:`Volume`.

    Parameters
    ----------
    folder : str or Path
        Folder holding the series' files (other series and non-DICOM files may be present).
    series_uid : str, optional
        SeriesInstanceUID to load when the folder holds several CT series.
    max_bytes : int or None
        Memory limit for the float32 volume, checked from the headers (see
        :func:`read_ct_files`).
    read : callable(path) -> bytes or None, optional
        Gives the bytes of a file (:data:`data_tools.dicom_series.ReadBytes`); each file is
        then read once, its headers and pixels parsed from those bytes.  Files it returns
        None for are read here (headers first, pixel data when needed).
    integer_hu : bool
        HU as int16 where that is exact (see :func:`read_ct_files`); an Enhanced CT file is
        read as float32.

    Returns
    -------
    volume : Volume
        See :func:`read_ct_files`.
    chosen : SeriesInfo
        The series read.
    series : list of SeriesInfo
        Every series found (RTSTRUCT and SEG objects among them).

    Raises
    ------
    NoSeriesError, SeriesValidationError, UnreadableFileError
    """
    headers: dict = {}
    series, n_not_dicom, n_unreadable = scan_folder(folder, recursive=True, keep=headers,
                                                    read=read)
    if not series:
        skipped = f" ({n_not_dicom} non-DICOM and {n_unreadable} unreadable file(s) skipped)"
        raise NoSeriesError(
            f"no DICOM series found in the folder{skipped if n_not_dicom + n_unreadable else ''}"
            f". {FIX_HINT}; subfolders are searched.", path=folder,
        )
    chosen = select_ct_series(series, series_uid=series_uid)
    # the series description is free text (PS3.15: remove), so it is never logged
    log.info("reading CT series: %d files, image type %s", chosen.n_files,
             "/".join(chosen.image_type) or "unknown")
    if chosen.frames >= 2:                          # one Enhanced CT file holds the series
        from .enhanced import read_enhanced_ct

        return read_enhanced_ct(chosen.files[0]), chosen, series
    try:
        volume = read_ct_files(chosen.files, max_bytes=max_bytes, _headers=headers,
                               integer_hu=integer_hu)
        return volume, chosen, series
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
    image_type: tuple[str, ...] = ()
    transfer_syntax: str = ""
    ds: object = field(default=None, repr=False)  # the dataset, pixel data deferred

    @property
    def metadata(self) -> dict[str, str]:
        return _safe_metadata(self.ds) if self.ds is not None else {"format": "dicom",
                                                                    "modality": "CT"}

    @property
    def who(self) -> str:
        if self.instance is None:
            return f"file {file_label(self.path)}"
        return f"InstanceNumber {self.instance}"


def _floats(ds, keyword: str, n: int, path: Path) -> np.ndarray:
    try:
        values = [float(v) for v in (raw_values(ds, keyword) or [])]
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


def _read_full(path: Path, *, defer: bool = False):
    try:
        # force only for a file without the Part 10 preamble (see _is_raw_dataset)
        return pydicom.dcmread(path, defer_size=DEFER_BYTES if defer else None,
                               force=not is_dicom_file(path))
    except READ_ERRORS as exc:
        raise UnreadableFileError(
            f"{file_label(path)} cannot be read as DICOM ({type(exc).__name__}); it is probably "
            "truncated, empty or not a DICOM file. Re-copy or re-export the series.", path=path,
        ) from None


def _read_header(path: Path, ds=None) -> _Slice:
    ds = _read_full(path, defer=True) if ds is None else ds
    try:
        return _parse_header(ds, path)
    except READ_ERRORS as exc:
        raise UnreadableFileError(
            f"{file_label(path)} has a corrupt DICOM header ({type(exc).__name__}). Re-copy or "
            "re-export the series.", path=path,
        ) from None


def _parse_header(ds, path: Path) -> _Slice:
    label = file_label(path)
    frames = raw_values(ds, "NumberOfFrames")
    if frames and frames[0].isdigit() and int(frames[0]) > 1:
        raise SeriesValidationError(
            f"{label} is a multi-frame image among single-frame slices; give an Enhanced CT "
            "file a folder of its own, or export the series as one file per slice.", path=path,
        )
    if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
        raise SeriesValidationError(
            f"{label} is a colour image (SamplesPerPixel != 1), not a CT slice.", path=path
        )
    modality = (raw_values(ds, "Modality") or [""])[0].upper()
    if modality and modality != "CT":
        raise SeriesValidationError(
            f"{label} has modality {modality}; only CT series can be read as HU. {FIX_HINT}.",
            path=path,
        )
    missing = [kw for kw in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing")
               if raw_values(ds, kw) is None]
    missing += [kw for kw in ("Rows", "Columns") if ds.get(kw) in (None, "")]
    if missing:
        if "PixelData" not in ds:  # pydicom stops silently at a cut header
            raise UnreadableFileError(
                f"{label} ends before its pixel data (no {missing[0]}); it is truncated. "
                "Re-copy or re-export the series.", path=path,
            )
        raise SeriesValidationError(
            f"{label} lacks {', '.join(missing)}; a CT slice needs its position, orientation "
            "and pixel spacing (the file may be truncated, or it is not an image slice).",
            path=path,
        )
    if raw_values(ds, "RescaleSlope") is None or raw_values(ds, "RescaleIntercept") is None:
        if "ModalityLUTSequence" in ds:
            raise SeriesValidationError(
                f"{label} maps stored values to HU with a ModalityLUTSequence, which is not "
                "supported yet; export the series with RescaleSlope/RescaleIntercept.", path=path,
            )
        absent = [kw for kw in ("RescaleSlope", "RescaleIntercept") if raw_values(ds, kw) is None]
        raise SeriesValidationError(
            f"{label} is missing {' and '.join(absent)}, so its stored values cannot be "
            "converted to HU; the reader never assumes -1024 or any other default. Re-export "
            "the series with its rescale tags.", path=path,
        )
    slope, intercept = (float(_floats(ds, kw, 1, path)[0])
                        for kw in ("RescaleSlope", "RescaleIntercept"))
    if slope == 0.0:
        raise SeriesValidationError(f"{label} has RescaleSlope 0.", path=path)
    instance = (raw_values(ds, "InstanceNumber") or [""])[0]
    try:
        instance = int(instance) if instance else None
    except ValueError:
        instance = None
    return _Slice(
        path=path, instance=instance,
        ipp=_floats(ds, "ImagePositionPatient", 3, path),
        iop=_floats(ds, "ImageOrientationPatient", 6, path),
        pixel_spacing=_floats(ds, "PixelSpacing", 2, path),
        rows=int(ds.Rows), cols=int(ds.Columns), slope=slope, intercept=intercept,
        series_uid=(raw_values(ds, "SeriesInstanceUID") or [""])[0],
        image_type=tuple(v.upper() for v in raw_values(ds, "ImageType") or ()),
        transfer_syntax=str(getattr(ds, "file_meta", {}).get("TransferSyntaxUID", "") or ""),
        ds=ds,
    )


def _drop_localizers(slices: list[_Slice]) -> list[_Slice]:
    """Drop scout frames that share the CT's SeriesInstanceUID, with a warning.

    Rule: a file whose ImageType holds LOCALIZER is dropped.  Then, when the remaining files
    do not share one orientation and matrix, and all but at most ``MAX_LOCALIZER_FILES`` of
    them do (and those are at most a tenth of the series), the odd ones are dropped as
    localizer frames.  Anything else is left to :func:`_check_shared`, which refuses it.
    """
    kept = [s for s in slices if "LOCALIZER" not in s.image_type]
    for s in slices:
        if "LOCALIZER" in s.image_type:
            log.warning("dropping %s: a localizer (scout) image inside the CT series", s.who)

    def grid(s):
        return (tuple(np.round(s.iop, 2)), s.rows, s.cols)

    groups: dict = {}
    for s in kept:
        groups.setdefault(grid(s), []).append(s)
    if len(groups) > 1:
        main = max(groups.values(), key=len)
        odd = [s for s in kept if grid(s) != grid(main[0])]
        if len(odd) <= MAX_LOCALIZER_FILES and len(odd) * 10 <= len(kept):
            for s in odd:
                log.warning("dropping %s: its orientation or matrix differs from the other %d "
                            "slices (a localizer frame under the CT's series UID)", s.who,
                            len(main))
            kept = main
    return kept


def _check_decoders(slices: list[_Slice]) -> None:
    """Refuse compressed pixel data that no installed plugin can decode, before any read."""
    for ts in sorted({s.transfer_syntax for s in slices if s.transfer_syntax}):
        tsyntax = UID(ts)
        if not (tsyntax.is_transfer_syntax and tsyntax.is_compressed):
            continue
        if not decoder_available(tsyntax):
            first = next(s for s in slices if s.transfer_syntax == ts)
            raise UnreadableFileError(
                f"{file_label(first.path)} stores its pixels with the compressed transfer "
                f"syntax '{tsyntax.name}', and no installed decoder can read it. Install "
                f"{decoder_hint(tsyntax)} (the project's requirements include pylibjpeg), "
                "or export the series uncompressed.", path=first.path,
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


def _sort(slices: list[_Slice]) -> tuple[list[_Slice], np.ndarray]:
    """Slices in increasing order along the slice normal, and their positions on it (mm)."""
    ref = slices[0]
    normal = np.cross(ref.iop[:3], ref.iop[3:])
    proj = np.array([s.ipp @ normal for s in slices])
    order = np.argsort(proj, kind="stable")
    return [slices[i] for i in order], proj[order]


def _drop_duplicates(slices: list[_Slice], proj: np.ndarray) -> list[_Slice]:
    """Drop exact duplicate slices (same position, same HU) with a warning; refuse others.

    Two files at one position (within ``DUPLICATE_TOLERANCE_MM``) are compared voxel by
    voxel after rescale: identical copies (a file exported twice) keep the first, sorted by
    path; different images at one position (two reconstructions mixed) are an error.
    """
    keep, last = [slices[0]], proj[0]  # last: position of the slice kept last
    for k in range(1, len(slices)):
        a, b = keep[-1], slices[k]
        if proj[k] - last >= DUPLICATE_TOLERANCE_MM:
            keep.append(b)
            last = proj[k]
            continue
        same = (_read_pixels(a).astype(np.float64) * a.slope + a.intercept
                == _read_pixels(b).astype(np.float64) * b.slope + b.intercept)
        if not bool(np.all(same)):
            raise SeriesValidationError(
                f"two different slices share a position: {a.who} and {b.who} both lie at "
                f"{proj[k]:.2f} mm along the slice normal but their pixels differ in "
                f"{int(np.size(same) - np.count_nonzero(same))} voxel(s). The folder mixes two "
                "reconstructions of one series; keep one of them.", path=b.path,
            )
        first, second = sorted((a, b), key=lambda s: str(s.path))
        log.warning("dropping %s: an exact duplicate of %s (same position, same pixels)",
                    second.who if second.who != first.who else f"file {file_label(second.path)}",
                    first.who)
        keep[-1] = first
    return keep


def _geometry(slices: list[_Slice], proj: np.ndarray) -> tuple[np.ndarray, float]:
    """Check the steps of sorted, de-duplicated slices; return the affine and the tilt.

    Returns
    -------
    affine : ndarray, shape (4, 4)
        ``[z, y, x, 1] -> LPS mm``; column 0 is the mean step between positions, so a
        gantry-tilted series gives a sheared affine (see :func:`_untilt`).
    tilt_deg : float
        Angle between the slice step and the slice normal, degrees.
    """
    ref = slices[0]
    row_cos, col_cos = ref.iop[:3], ref.iop[3:]
    normal = np.cross(row_cos, col_cos)
    steps = np.diff(proj)
    median = float(np.median(steps))
    tol = max(0.1, 0.05 * median)
    bad = np.flatnonzero(np.abs(steps - median) > tol)
    if bad.size and _missing_slice(steps, tol) is None:
        return _variable_geometry(slices, steps, tol)
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
    tilt = float(np.degrees(np.arccos(np.clip(abs(step @ normal) / np.linalg.norm(step), 0, 1))))
    affine = np.eye(4)
    affine[:3, 0] = step
    affine[:3, 1] = col_cos * ref.pixel_spacing[0]  # down the rows
    affine[:3, 2] = row_cos * ref.pixel_spacing[1]  # along a row
    affine[:3, 3] = positions[0]
    return affine, tilt


def _missing_slice(steps: np.ndarray, tol: float) -> int | None:
    """Index of a step that is a missing slice, or None when the uneven steps are a
    *variable spacing* instead.

    The rule: a missing slice is a step ``g`` whose neighbouring steps (one or both sides) are
    equal to each other within *tol* and ``g`` is ``k >= 2`` times them (within ``k * tol``):
    a regular run with a hole.  Anything else uneven -- the step changing from one regular run
    to another (a head CT at 4 mm, then 7 mm), or a step shorter than its neighbours -- is a
    variable spacing, which is resampled rather than refused.
    """
    for i, g in enumerate(steps):
        around = [float(steps[j]) for j in (i - 1, i + 1) if 0 <= j < len(steps)]
        if not around or max(around) - min(around) > tol:
            continue
        m = float(np.mean(around))
        k = round(g / m)
        if k >= 2 and abs(g - k * m) <= k * tol:
            return i
    return None


def _variable_geometry(slices: list[_Slice], steps: np.ndarray, tol: float):
    """The geometry of a series whose slice spacing varies (no missing slice): positions on
    one line, the distances along it, and the step to resample at (the smallest step that
    repeats, i.e. the finest regular run)."""
    ref = slices[0]
    positions = np.stack([s.ipp for s in slices])
    line = positions[-1] - positions[0]
    unit = line / np.linalg.norm(line)
    along = (positions - positions[0]) @ unit
    off_line = np.linalg.norm(positions - positions[0] - np.outer(along, unit), axis=1)
    if off_line.max() > max(0.5, 0.5 * float(np.median(steps))):
        k = int(np.argmax(off_line))
        raise SeriesValidationError(
            f"slice positions do not lie on one line: {slices[k].who} is {off_line[k]:.2f} mm "
            "off the line through the first and last slice. The series may mix "
            "reconstructions or have a varying gantry tilt.", path=slices[k].path)
    gaps = np.diff(along)                              # along the line (a tilt lengthens them)
    repeats = [float(a) for a, b in zip(gaps[:-1], gaps[1:]) if abs(a - b) <= tol]
    step = min(repeats) if repeats else float(np.median(gaps))
    normal = np.cross(ref.iop[:3], ref.iop[3:])
    tilt = float(np.degrees(np.arccos(np.clip(abs(unit @ normal), 0, 1))))
    affine = np.eye(4)
    affine[:3, 0] = unit * step
    affine[:3, 1] = ref.iop[3:] * ref.pixel_spacing[0]
    affine[:3, 2] = ref.iop[:3] * ref.pixel_spacing[1]
    affine[:3, 3] = positions[0]
    log.warning("variable slice spacing (%.2f to %.2f mm, no missing slice): resampling to "
                "equidistant slices (%.2f mm apart along the series)", float(steps.min()),
                float(steps.max()), step)
    return affine, tilt, along


def _resample_along(array: np.ndarray, along: np.ndarray, step: float) -> np.ndarray:
    """Slices at distances *along* (increasing, mm) interpolated linearly onto ``0, step,
    2 step, ...`` up to the last one."""
    targets = np.arange(0.0, float(along[-1]) + 1e-6, step)
    hi = np.clip(np.searchsorted(along, targets, side="right"), 1, len(along) - 1)
    lo = hi - 1
    w = ((targets - along[lo]) / (along[hi] - along[lo]))[:, None, None]
    return ((1.0 - w) * array[lo] + w * array[hi]).astype(array.dtype)


def _untilt(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Resample a gantry-tilted (sheared) volume onto an orthogonal grid, losing no pixel.

    Slice ``k`` of a tilted series is displaced in-plane by ``k`` times the step's in-plane
    part; each slice is shifted back by that amount (linear interpolation).  The in-plane grid
    grows as far as the shifted slices reach (the first slice's grid extended on the side the
    shift goes, the origin moved where it grows below 0), so no acquired pixel falls outside
    it; voxels no slice covers take the volume's minimum (air).  The new affine's column 0 is
    the slice normal times the step along it.
    """
    from scipy import ndimage

    step = affine[:3, 0]
    in_plane = affine[:3, 1:3]                      # (3, 2): y and x axes, mm per voxel
    normal = np.cross(in_plane[:, 1], in_plane[:, 0])
    normal /= np.linalg.norm(normal)
    along = float(step @ normal)
    shear_mm = step - along * normal                # in-plane displacement per slice
    shear_vox = np.linalg.lstsq(in_plane, shear_mm, rcond=None)[0]  # (dy, dx) per slice
    shifts = np.outer(np.arange(array.shape[0]), shear_vox)
    lo = np.floor(np.minimum(shifts.min(axis=0), 0.0) + 1e-6).astype(int)   # <= 0
    hi = np.ceil(np.maximum(shifts.max(axis=0), 0.0) - 1e-6).astype(int)   # >= 0
    rows, cols = array.shape[1:]
    fill = float(array.min())
    out = np.full((array.shape[0], rows + hi[0] - lo[0], cols + hi[1] - lo[1]), fill,
                  dtype=array.dtype)
    for k in range(array.shape[0]):
        canvas = np.full(out.shape[1:], fill, dtype=array.dtype)
        canvas[-lo[0]:-lo[0] + rows, -lo[1]:-lo[1] + cols] = array[k]
        # new voxel (k, y, x) lies where old voxel (k, y - k*dy, x - k*dx) did
        out[k] = ndimage.shift(canvas, shifts[k], order=1, mode="constant", cval=fill)
    new = affine.copy()
    new[:3, 0] = along * normal
    new[:3, 3] = affine[:3, 3] + lo[0] * affine[:3, 1] + lo[1] * affine[:3, 2]
    return out, new


def _read_pixels(s: _Slice) -> np.ndarray:
    """Stored values of one slice, shape (rows, cols)."""
    ds = s.ds if s.ds is not None else _read_full(s.path)
    return stored_pixels(ds, path=s.path, rows=s.rows, cols=s.cols,
                         transfer_syntax=s.transfer_syntax)


def read_ct_files(files: Sequence[Path], *, max_bytes: int | None = DEFAULT_MAX_BYTES,
                  integer_hu: bool = False, _headers: dict | None = None) -> Volume:
    """Read the files of one CT series into a :class:`Volume`.

    Parameters
    ----------
    files : sequence of Path
        One file per slice, in any order.  Localizer frames among them and exact duplicate
        slices are dropped with a warning.
    max_bytes : int or None
        Refuse, from the headers and before any pixel is read, a series whose float32
        volume would be larger (default 4 GiB); None for no limit.
    integer_hu : bool
        Keep HU as int16 (half the memory of float32) when that is exact: every slice's
        RescaleSlope and RescaleIntercept are integers and every value fits int16, as in
        almost every CT series.  Otherwise, and after a tilt or variable-spacing resampling
        (interpolated values), float32.  Default False: float32 always.

    Returns
    -------
    Volume
        ``array``: shape ``(z, y, x)`` = (slices, Rows, Columns), float32 HU (int16 with
        *integer_hu*, where exact), each slice ``stored * RescaleSlope +
        RescaleIntercept`` with that slice's own values; slices in increasing order along
        the slice normal.
        ``affine``: ``[z, y, x, 1]`` -> LPS mm; column 0 = (last - first position) / (n - 1),
        column 1 = column cosine * PixelSpacing[0], column 2 = row cosine * PixelSpacing[1],
        column 3 = ImagePositionPatient of the first sorted slice.  A gantry-tilted series
        (step more than 0.1 degree off the slice normal) is resampled onto the orthogonal
        grid of its first slice, and column 0 becomes the normal times the step along it.
        ``metadata``: ``format``, ``modality`` and, when present, ``manufacturer``, ``model``,
        ``kernel``, ``kvp``, ``slice_thickness_mm``; ``gantry_tilt_deg`` and ``resampled``
        after a tilt correction, ``variable_spacing_mm`` and ``resampled`` after a variable
        slice spacing was resampled to equidistant slices (``_missing_slice`` tells it from a
        missing slice) (strings).

    Raises
    ------
    SeriesValidationError
        Fewer than 3 slices, differing orientation/spacing/size, two different images at
        one position, uneven steps (a missing slice), missing rescale tags, a Modality LUT,
        non-CT files, a volume above *max_bytes*.
    UnreadableFileError
        A truncated or unreadable file, or compressed pixels without an installed decoder
        (found from the headers, before any pixel is read).
    """
    paths = [Path(f) for f in files]
    slices = _checked_slices(paths, _headers or {}, max_bytes)
    slices, proj = _sort(slices)
    slices = _drop_duplicates(slices, proj)
    if len(slices) < MIN_SLICES:
        raise SeriesValidationError(
            f"only {len(slices)} distinct slice position(s) remain after dropping duplicates; "
            f"a CT volume needs at least {MIN_SLICES}.", path=paths[0])
    slices, proj = _sort(slices)
    affine, tilt, *along = _geometry(slices, proj)
    return _assemble(slices, affine, tilt, along[0] if along else None, integer_hu=integer_hu)


def _checked_slices(paths: list[Path], headers: dict, max_bytes: int | None) -> list[_Slice]:
    """The slices of *paths* (localizers dropped), their shared geometry, decoders and memory
    need checked, all from the headers (*headers*: datasets already read, by path; those of
    *paths* are taken out of it, so that each is let go once its pixels are read)."""
    if len(paths) < MIN_SLICES:
        raise SeriesValidationError(
            f"the series has {len(paths)} slice(s); a CT volume needs at least {MIN_SLICES}. "
            f"{FIX_HINT}, not a single image or a localizer.",
            path=paths[0] if paths else None,
        )
    slices = _drop_localizers([_read_header(p, headers.pop(p, None)) for p in paths])
    if len(slices) < MIN_SLICES:
        raise SeriesValidationError(
            f"only {len(slices)} slice(s) remain after dropping localizer images; a CT volume "
            f"needs at least {MIN_SLICES}. {FIX_HINT}.", path=paths[0])
    _check_shared(slices)
    _check_decoders(slices)
    first = slices[0]
    need = len(slices) * first.rows * first.cols * 4
    if max_bytes is not None and need > max_bytes:
        raise SeriesValidationError(
            f"the series would need {need / 1024**3:.2f} GiB as a float32 volume "
            f"({len(slices)} slices of {first.rows} x {first.cols}), above the limit of "
            f"{max_bytes / 1024**3:.2f} GiB. Raise the limit (max_bytes=, or discovery score "
            "--max-volume-gb) if the machine has the memory, or crop the series.",
            path=first.path,
        )
    return slices


def _integral(value: float) -> bool:
    return math.isfinite(value) and float(value).is_integer() and abs(value) < 2**15


def _hu_slices(slices: list[_Slice], integer_hu: bool) -> np.ndarray:
    """``(z, y, x)`` HU of sorted slices: int16 with *integer_hu* while exact (integer
    rescale, values within int16; the slices read so far are converted to float32 at the
    first that is not), else float32."""
    first = slices[0]
    exact = integer_hu and all(_integral(s.slope) and _integral(s.intercept) for s in slices)
    out = np.empty((len(slices), first.rows, first.cols),
                   dtype=np.int16 if exact else np.float32)
    low, high = np.iinfo(np.int16).min, np.iinfo(np.int16).max
    for k, s in enumerate(slices):
        stored = _read_pixels(s)
        s.ds = None  # its pixels are read: the dataset (and the file's bytes it holds) can go
        if out.dtype == np.int16:
            slope, intercept = int(s.slope), int(s.intercept)
            ends = (int(stored.min()) * slope + intercept, int(stored.max()) * slope + intercept)
            if (low <= min(ends) and max(ends) <= high      # then exact, no int64 copy
                    and abs(intercept) < 2 ** 30):              # (int32 in between)
                np.add(np.multiply(stored, slope, dtype=np.int32) if slope != 1 else stored,
                       intercept, out=out[k], dtype=np.int32, casting="unsafe")
                continue
            log.info("HU of slice %d leave the int16 range; reading the series as float32",
                     k + 1)
            out = out.astype(np.float32)
        out[k] = stored.astype(np.float64) * s.slope + s.intercept
    return out


def _assemble(slices: list[_Slice], affine: np.ndarray, tilt: float,
              along: np.ndarray | None = None, *, integer_hu: bool = False) -> Volume:
    """The volume of sorted, checked slices: HU per slice, a gantry tilt resampled away, a
    variable slice spacing (*along*: each slice's distance from the first, mm) resampled to
    equidistant slices."""
    first = slices[0]
    metadata = dict(first.metadata)
    thickness = metadata.get("slice_thickness_mm", "")
    step_mm = spacing_from_affine(affine)[0]
    if thickness.replace(".", "", 1).isdigit() and abs(float(thickness) - step_mm) > 0.1 * step_mm:
        log.info("SliceThickness %s mm differs from the spacing between positions (%.3f mm); "
                 "using the positions", thickness, step_mm)
    out = _hu_slices(slices, integer_hu)
    if (along is not None or tilt > TILT_TOLERANCE_DEG) and out.dtype != np.float32:
        out = out.astype(np.float32)                # interpolated values follow
    if along is not None:
        step = float(np.linalg.norm(affine[:3, 0]))
        normal = np.cross(affine[:3, 2], affine[:3, 1])
        cos = abs(float(affine[:3, 0] @ normal)) / (step * float(np.linalg.norm(normal)))
        metadata["variable_spacing_mm"] = (f"{cos * float(np.diff(along).min()):.2f}-"
                                           f"{cos * float(np.diff(along).max()):.2f}")
        out = _resample_along(out, along, step)
        metadata["resampled"] = (f"variable slice spacing resampled to {cos * step:.2f} mm "
                                 "(linear)")
    if tilt > TILT_TOLERANCE_DEG:
        log.warning("gantry tilt of %.2f degrees: resampling the slices onto an orthogonal grid",
                    tilt)
        out, affine = _untilt(out, affine)
        metadata["gantry_tilt_deg"] = f"{tilt:.2f}"
        grown = (out.shape[1] - first.rows, out.shape[2] - first.cols)
        metadata["resampled"] = "; ".join(filter(None, [
            metadata.get("resampled"), "gantry tilt removed (linear, in-plane; grid grown by "
                                       f"{grown[0]} rows and {grown[1]} columns)"]))
    log.info("read CT volume: shape (z, y, x)=%s, spacing_mm=(%.3f, %.3f, %.3f)", out.shape,
             spacing_from_affine(affine)[0], *first.pixel_spacing)
    return Volume(out, affine, metadata)
