"""DICOM masks -> :class:`~data_tools.volume.Mask` on a CT grid: RTSTRUCT contours and DICOM SEG.

Both readers take the :class:`~data_tools.volume.Volume` of the CT the mask was drawn on (from
:func:`data_tools.dicom.load_dicom_series`) and return ``(mask, info)``: an int16 label map of
the volume's shape and affine (0 = background, labels 1..N) and one dict per label.

RTSTRUCT (:func:`rtstruct_mask`), as NSCLC-Radiomics ships its GTVs
-----------------------------------------------------------------------
* ROI selection: every ROI whose ``ROIName`` matches ``roi_pattern`` (``re.search``, case
  insensitive; default ``gtv|tumou?r|nodule|lesion``), or exactly the names in ``roi_names``.
  The selected ROIs get labels 1..N in increasing ``ROINumber`` order.
* Only ``CLOSED_PLANAR`` contours are drawn; ``POINT`` / ``OPEN_PLANAR`` / ``OPEN_NONPLANAR``
  contours are skipped (debug log).
* A contour's points (``ContourData``, LPS mm) are mapped to fractional ``(z, y, x)`` indices
  with ``volume.world_to_voxel``.  Every point must lie within ``SLICE_TOLERANCE`` (0.25) of
  the same integer slice index, else :class:`MaskError` (the contour is between slices: the
  RTSTRUCT was drawn on another series).
* Fill rule: a voxel belongs to the contour when its **pixel centre** lies inside the polygon
  or on its outline (within ``EDGE_TOLERANCE`` = 1e-3 voxel) -- the usual rule for RT
  contours.  Several contours of one ROI on one slice combine by even-odd (XOR), so that an
  inner contour cuts a hole (pixel centres on the hole's outline belong to the hole).
* Parts of a contour outside the grid (in-plane, or on slices the CT does not have) are
  clipped, with a warning.  When none of the selected ROIs has a single voxel on the grid,
  :class:`GeometryMismatchError` is raised (the RTSTRUCT belongs to another scan).
* ``frame_of_reference_uid``: when given, the ROIs' referenced frame of reference must equal
  it (:class:`GeometryMismatchError` otherwise).

DICOM SEG (:func:`seg_mask`)
----------------------------
* Read with highdicom; every frame is placed on the CT grid from its own
  ``PlanePositionSequence`` and the ``PlaneOrientationSequence`` / ``PixelMeasuresSequence``
  (per frame or shared).  The frame's row/column directions, ``Rows``/``Columns`` and
  ``PixelSpacing`` must equal the CT's, its position must fall within 0.01 voxel of the CT
  grid in-plane and within 0.25 voxel of an integer slice index -- otherwise
  :class:`GeometryMismatchError` (resample the SEG onto the CT).  Frames on slices the CT
  does not have are skipped with a warning.
* BINARY: stored value 1 = inside.  FRACTIONAL: inside when the stored value is
  ``>= 0.5 * MaximumFractionalValue`` (probability or occupancy at least one half).
  LABELMAP: inside where the stored value equals the segment number (segment 0, the
  background a label-map SEG may describe, is never a label).
* Segments (all, or ``segment_numbers``) get labels 1..N in increasing segment-number order.

Both readers: where labels overlap the later label wins and a warning gives the number of
overlapping voxels; ``volume_mm3`` in the info dicts counts the voxels of the final mask.

Privacy: messages name a file only by ``file_label`` (its base name); ROI names / segment
labels and numbers are shown, never patient names or IDs, UIDs, dates or folders.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue

from .dicom_series import READ_ERRORS
from .errors import (
    DataError,
    GeometryMismatchError,
    MaskError,
    UnreadableFileError,
    file_label,
)
from .volume import Mask, Volume

__all__ = [
    "RTSTRUCT_SOP_CLASS",
    "SEG_SOP_CLASS",
    "is_rtstruct",
    "is_seg",
    "rtstruct_mask",
    "seg_mask",
]

log = logging.getLogger(__name__)

RTSTRUCT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"
SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
_LABELMAP_SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.7"
SLICE_TOLERANCE = 0.25      # voxels: a contour / frame must be this close to a slice centre
IN_PLANE_TOLERANCE = 0.01   # voxels: a SEG frame's in-plane offset from the CT grid
EDGE_TOLERANCE = 1e-3       # voxels: a pixel centre this close to a contour is on it
IOP_TOLERANCE = 1e-3        # direction cosines
SPACING_TOLERANCE_MM = 1e-3
DEFAULT_ROI_PATTERN = r"gtv|tumou?r|nodule|lesion"
# READ_ERRORS: what pydicom raises on truncated or corrupt files (shared with dicom_series)
_PARSE_ERRORS = READ_ERRORS + (AttributeError, KeyError, IndexError)
_ARTICLE = {"RTSTRUCT": "an", "SEG": "a"}


# -- reading --------------------------------------------------------------------------------

def _dcmread(path: Path, **kwargs):
    """``dcmread``, falling back to ``force=True`` for a dataset written without preamble
    (it starts with a group 0x0008 or 0x0002 tag; pydicom's ``rtstruct.dcm`` is one)."""
    try:
        return pydicom.dcmread(path, force=False, **kwargs)
    except InvalidDicomError:
        with open(path, "rb") as fh:
            if fh.read(2) not in (b"\x08\x00", b"\x02\x00"):
                raise
        ds = pydicom.dcmread(path, force=True, **kwargs)
        if "SOPClassUID" not in ds and "Modality" not in ds:
            raise InvalidDicomError("no SOPClassUID or Modality") from None
        return ds


def _kind(ds) -> str:
    """``"RTSTRUCT"``, ``"SEG"`` or the (upper-case) modality, ``""`` if absent."""
    modality = str(ds.get("Modality", "") or "").strip().upper()
    sop = str(ds.get("SOPClassUID", "") or "").strip()
    if not sop and getattr(ds, "file_meta", None) is not None:
        sop = str(ds.file_meta.get("MediaStorageSOPClassUID", "") or "").strip()
    if modality == "RTSTRUCT" or sop == RTSTRUCT_SOP_CLASS:
        return "RTSTRUCT"
    if modality == "SEG" or sop in (SEG_SOP_CLASS, _LABELMAP_SEG_SOP_CLASS):
        return "SEG"
    return modality


def _header_kind(path) -> str:
    try:
        ds = _dcmread(Path(path), stop_before_pixels=True,
                      specific_tags=["Modality", "SOPClassUID"])
        return _kind(ds)
    except _PARSE_ERRORS:
        return ""


def is_rtstruct(path: str | Path) -> bool:
    """True when *path* is a readable DICOM RT Structure Set (header only).

    Recognised by ``Modality == "RTSTRUCT"`` or the RT Structure Set Storage SOP class;
    False for non-DICOM, unreadable or other files.
    """
    return _header_kind(path) == "RTSTRUCT"


def is_seg(path: str | Path) -> bool:
    """True when *path* is a readable DICOM Segmentation (header only).

    Recognised by ``Modality == "SEG"`` or the Segmentation Storage SOP class; False for
    non-DICOM, unreadable or other files.
    """
    return _header_kind(path) == "SEG"


def _read(path: Path, expected: str):
    label = file_label(path)
    try:
        ds = _dcmread(path)
        kind = _kind(ds)
    except _PARSE_ERRORS as exc:
        raise UnreadableFileError(
            f"{label} cannot be read as DICOM ({type(exc).__name__}); it is probably truncated, "
            f"empty or not a DICOM file. Re-copy or re-export the {expected}.", path=path,
        ) from None
    if kind != expected:
        what = f"modality {kind[:16]!r}" if kind else "no modality"
        raise DataError(
            f"{label} is a DICOM file with {what}, not {_ARTICLE[expected]} {expected}. Pass "
            f"the {expected} file of the case (is_rtstruct / is_seg find it).", path=path,
        )
    return ds


# -- shared helpers -------------------------------------------------------------------------

def _voxel_mm3(volume: Volume) -> float:
    return float(abs(np.linalg.det(volume.affine[:3, :3])))


def _compose(layers: Sequence[np.ndarray], shape, path: Path) -> np.ndarray:
    """Stack boolean layers into labels 1..N; later labels win, overlaps are logged."""
    out = np.zeros(shape, dtype=np.int16)
    n_overlap = 0
    for k, layer in enumerate(layers, start=1):
        n_overlap += int(np.count_nonzero(layer & (out > 0)))
        out[layer] = k
    if n_overlap:
        log.warning("%s: %d voxel(s) belong to more than one selected label; the later label "
                    "wins there", file_label(path), n_overlap)
    return out


def _check_frame_of_reference(found: set[str], expected: str | None, what: str,
                              path: Path) -> None:
    if expected is None:
        return
    if not found:
        log.warning("%s names no frame of reference; it cannot be checked against the CT",
                    file_label(path))
        return
    if found != {str(expected).strip()}:
        raise GeometryMismatchError(
            f"the {what} {file_label(path)} refers to a different frame of reference than the "
            "CT it was paired with: it was drawn on another scan. Pair it with the CT series "
            "it was drawn on.", path=path,
        )


# -- RTSTRUCT ---------------------------------------------------------------------------------

def _fill_polygon(rows: np.ndarray, cols: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Pixel centres of a ``(rows, cols)`` grid inside or on a closed polygon.

    Parameters
    ----------
    rows, cols : ndarray, shape (n,)
        Fractional row and column indices of the polygon's vertices (pixel centres are at
        integers).
    shape : (int, int)
        ``(n_rows, n_cols)`` of the slice.

    Returns
    -------
    ndarray of bool, shape ``shape``
    """
    n_rows, n_cols = shape
    out = np.zeros(shape, dtype=bool)
    eps = EDGE_TOLERANCE
    lo = max(0, math.ceil(float(rows.min()) - eps))
    hi = min(n_rows - 1, math.floor(float(rows.max()) + eps))
    if lo > hi:
        return out
    r0, c0 = rows, cols
    r1, c1 = np.roll(rows, -1), np.roll(cols, -1)
    dr = r1 - r0
    y = np.arange(lo, hi + 1, dtype=float)[:, None]                   # (ny, 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (y - r0) / np.where(dr == 0, 1.0, dr)                      # (ny, n_edges)
    xc = c0 + t * (c1 - c0)
    # interior: even-odd with the half-open crossing rule (vertices counted once)
    cross = (r0 <= y) != (r1 <= y)
    for i in range(hi - lo + 1):
        xs = np.sort(xc[i, cross[i]])
        for a, b in zip(xs[0::2], xs[1::2]):
            c_lo = max(0, math.ceil(a - eps))
            c_hi = min(n_cols - 1, math.floor(b + eps))
            if c_lo <= c_hi:
                out[lo + i, c_lo:c_hi + 1] = True
    # outline: centres on a sloped edge ...
    flat = np.abs(dr) < eps
    on = (~flat) & (y >= np.minimum(r0, r1) - eps) & (y <= np.maximum(r0, r1) + eps)
    xr = np.round(xc)
    hit = on & (np.abs(xc - xr) < eps) & (xr >= 0) & (xr <= n_cols - 1)
    iy, ie = np.nonzero(hit)
    out[lo + iy, xr[iy, ie].astype(int)] = True
    # ... and on a (near-)horizontal edge lying on a row of centres
    for e in np.flatnonzero(flat):
        row = round(float(r0[e]))
        if abs(r0[e] - row) < eps and abs(r1[e] - row) < eps and 0 <= row < n_rows:
            c_lo = max(0, math.ceil(min(c0[e], c1[e]) - eps))
            c_hi = min(n_cols - 1, math.floor(max(c0[e], c1[e]) + eps))
            if c_lo <= c_hi:
                out[row, c_lo:c_hi + 1] = True
    return out


def _parse_rtstruct(ds):
    """``({roi_number: (name, for_uid)}, {roi_number: [(type, points (n, 3))]}, default_for)``."""
    rois: dict[int, tuple[str, str]] = {}
    default_for = ""
    for item in ds.get("ReferencedFrameOfReferenceSequence", None) or []:
        default_for = str(item.get("FrameOfReferenceUID", "") or "").strip()
        if default_for:
            break
    for item in ds.get("StructureSetROISequence", None) or []:
        number = int(item.ROINumber)
        rois[number] = (str(item.get("ROIName", "") or "").strip(),
                        str(item.get("ReferencedFrameOfReferenceUID", "") or "").strip())
    contours: dict[int, list[tuple[str, np.ndarray]]] = {}
    for item in ds.get("ROIContourSequence", None) or []:
        number = int(item.ReferencedROINumber)
        for contour in item.get("ContourSequence", None) or []:
            kind = str(contour.get("ContourGeometricType", "") or "").strip().upper()
            data = contour.get("ContourData", None)
            data = [] if data is None else data
            data = data if isinstance(data, (list, tuple, MultiValue)) else [data]
            pts = np.asarray([float(v) for v in data], dtype=float)
            contours.setdefault(number, []).append((kind, pts))
    return rois, contours, default_for


def _check_image_references(ds, selected: list[int], image_uids, path: Path) -> None:
    """The structure set's series reference and the images its *selected* ROIs' contours
    reference, against the CT's slices *image_uids* (MaskError naming the problem; nothing
    checked when None)."""
    if image_uids is None:
        return
    image_uids = set(image_uids)
    series = [se for fr in ds.get("ReferencedFrameOfReferenceSequence", None) or []
              for st in fr.get("RTReferencedStudySequence", None) or []
              for se in st.get("RTReferencedSeriesSequence", None) or []]
    unnamed = ("" if series else " It also names no referenced series (no "
               "RTReferencedSeriesSequence), so nothing else says which CT it was drawn on.")
    refs = set()
    for item in ds.get("ROIContourSequence", None) or []:
        if int(item.ReferencedROINumber) not in selected:
            continue
        for contour in item.get("ContourSequence", None) or []:
            refs |= {str(ci.get("ReferencedSOPInstanceUID", "") or "").strip()
                     for ci in contour.get("ContourImageSequence", None) or []} - {""}
    missing = refs - image_uids
    if missing:
        raise MaskError(
            f"{file_label(path)}: its contours reference {len(refs)} image(s), {len(missing)} of "
            f"them {'none ' if missing == refs else ''}not a slice of the CT series "
            f"({len(image_uids)} slices): the CT series is missing slices, or the structure "
            "set was drawn on another series, or its references are broken. Pair it with the "
            f"complete series it was drawn on.{unnamed}", path=path)
    if not series:        # optional (Type 3) in the standard: the contours' own references did
        log.warning("%s names no referenced series (no RTReferencedSeriesSequence)",
                    file_label(path))


def _select_rois(rois, roi_pattern, roi_names, path: Path) -> list[int]:
    found = [f"{n}: {name!r}" for n, (name, _) in sorted(rois.items())]
    shown = ", ".join(found[:30]) + (f" and {len(found) - 30} more" if len(found) > 30 else "")
    shown = shown or "none"
    if roi_names is not None:
        wanted = [roi_names] if isinstance(roi_names, str) else list(roi_names)
        names = {name for name, _ in rois.values()}
        missing = [w for w in wanted if w not in names]
        if missing or not wanted:
            raise MaskError(
                f"{file_label(path)} has no ROI named {', '.join(repr(m) for m in missing)}"
                f"{'' if wanted else ' (roi_names is empty)'}. ROIs found (number: name): "
                f"{shown}. Pass roi_names=[...] with exact names from this list.", path=path,
            )
        selected = [n for n, (name, _) in rois.items() if name in set(wanted)]
    else:
        try:
            rx = re.compile(roi_pattern, re.IGNORECASE)
        except re.error as exc:
            raise MaskError(f"roi_pattern is not a valid regular expression ({exc}); pass a "
                            "valid pattern or roi_names=[...].") from None
        selected = [n for n, (name, _) in rois.items() if rx.search(name)]
        if not selected:
            raise MaskError(
                f"no ROI of {file_label(path)} matches roi_pattern {roi_pattern!r}. ROIs found "
                f"(number: name): {shown}. Choose them with roi_names=[...] (exact names) or "
                "another roi_pattern.", path=path,
            )
    return sorted(selected)


def _rasterise_roi(number: int, contours, volume: Volume,
                   path: Path) -> tuple[np.ndarray, int, int]:
    """Boolean layer of one ROI: ``(layer, n_closed_contours, n_contours_partly_outside)``."""
    nz, ny, nx = volume.shape
    layer = np.zeros(volume.shape, dtype=bool)
    n_closed = n_outside = 0
    for kind, pts in contours:
        if kind != "CLOSED_PLANAR":
            log.debug("%s: ROI %d: skipping a %s contour (only CLOSED_PLANAR is drawn)",
                      file_label(path), number, kind or "untyped")
            continue
        if pts.size < 9 or pts.size % 3:
            raise MaskError(
                f"{file_label(path)}: ROI {number} has a CLOSED_PLANAR contour with "
                f"{pts.size} ContourData values (need 3 per point, at least 3 points). "
                "Re-export the RTSTRUCT.", path=path,
            )
        n_closed += 1
        zyx = volume.world_to_voxel(pts.reshape(-1, 3))
        z = zyx[:, 0]
        k = int(np.round(np.median(z)))
        if np.all(z < -0.5 - SLICE_TOLERANCE) or np.all(z > nz - 0.5 + SLICE_TOLERANCE):
            n_outside += 1
            continue
        offset = float(np.max(np.abs(z - k)))
        if offset > SLICE_TOLERANCE:
            raise MaskError(
                f"{file_label(path)}: a contour of ROI {number} does not lie on a CT slice: its "
                f"points are up to {offset:.2f} slice(s) from slice {k} (tolerance "
                f"{SLICE_TOLERANCE}). The RTSTRUCT was probably drawn on another series or "
                "reconstruction; pair it with the CT it was drawn on.", path=path,
            )
        rows, cols = zyx[:, 1], zyx[:, 2]
        partly_out = (not 0 <= k < nz or rows.min() < -0.5 or cols.min() < -0.5
                      or rows.max() > ny - 0.5 or cols.max() > nx - 0.5)
        n_outside += int(partly_out)
        if 0 <= k < nz:
            layer[k] ^= _fill_polygon(rows, cols, (ny, nx))
    return layer, n_closed, n_outside


def rtstruct_mask(path: str | Path, volume: Volume, *, roi_pattern: str = DEFAULT_ROI_PATTERN,
                  roi_names: Sequence[str] | None = None,
                  frame_of_reference_uid: str | None = None,
                  image_uids=None) -> tuple[Mask, list[dict]]:
    """Rasterise the contours of an RT Structure Set onto *volume*'s grid.

    Parameters
    ----------
    path : str or Path
        The RTSTRUCT file.
    volume : Volume
        The CT the contours were drawn on, shape ``(z, y, x)``.
    roi_pattern : str, keyword-only
        Regular expression (case insensitive, ``re.search``) selecting ROIs by ``ROIName``;
        ignored when *roi_names* is given.
    roi_names : sequence of str, optional
        Exact ROI names to use instead of *roi_pattern*.
    frame_of_reference_uid : str, optional
        The CT's FrameOfReferenceUID; when given, the ROIs must refer to it.
    image_uids : collection of str, optional
        The SOPInstanceUIDs of the CT's slices: the images the selected contours reference
        must all be among them (MaskError otherwise; no referenced series alone: a warning).

    Returns
    -------
    mask : Mask
        int16 labels, shape ``volume.shape``, ``volume``'s affine; label ``i`` = the i-th
        selected ROI by increasing ROINumber.
    info : list of dict
        Per label: ``label``, ``roi_number``, ``roi_name``, ``n_contours`` (closed planar
        contours), ``volume_mm3``.

    Raises
    ------
    UnreadableFileError (not readable DICOM), DataError (not an RTSTRUCT), MaskError (no ROI
    selected, malformed contour, contour between slices, images not in the series),
    GeometryMismatchError (frame of reference differs, or no contour touches the grid).
    """
    ds = _read(path := Path(path), "RTSTRUCT")
    missing = [k for k in ("StructureSetROISequence", "ROIContourSequence") if k not in ds]
    if missing:
        raise UnreadableFileError(
            f"{file_label(path)} lacks {' and '.join(missing)}: the RTSTRUCT is truncated or "
            "incomplete. Re-copy or re-export it.", path=path)
    try:
        rois, contours, default_for = _parse_rtstruct(ds)
    except _PARSE_ERRORS as exc:
        raise UnreadableFileError(
            f"{file_label(path)} has a malformed structure set ({type(exc).__name__}); "
            "re-export the RTSTRUCT.", path=path,
        ) from None
    selected = _select_rois(rois, roi_pattern, roi_names, path)
    _check_frame_of_reference({rois[n][1] or default_for for n in selected} - {""},
                              frame_of_reference_uid, "RTSTRUCT", path)
    _check_image_references(ds, selected, image_uids, path)
    layers, n_contours, n_outside = [], [], 0
    for number in selected:
        layer, n_closed, outside = _rasterise_roi(number, contours.get(number, []), volume, path)
        if n_closed == 0:
            log.warning("%s: ROI %d (%r) has no closed contour; its label stays empty",
                        file_label(path), number, rois[number][0])
        layers.append(layer)
        n_contours.append(n_closed)
        n_outside += outside
    if sum(n_contours) and not any(layer.any() for layer in layers):
        raise GeometryMismatchError(
            f"none of the selected contours of {file_label(path)} covers a voxel of the CT "
            f"grid ({volume.describe()}): the RTSTRUCT was drawn on another scan. Pair it with "
            "the CT series it was drawn on.", path=path,
        )
    if n_outside:
        log.warning("%s: %d contour(s) lie partly or wholly outside the CT grid and were "
                    "clipped", file_label(path), n_outside)
    labels = _compose(layers, volume.shape, path)
    vox = _voxel_mm3(volume)
    info = [{"label": i, "roi_number": number, "roi_name": rois[number][0],
             "n_contours": n_contours[i - 1],
             "volume_mm3": float(np.count_nonzero(labels == i)) * vox}
            for i, number in enumerate(selected, start=1)]
    return Mask(labels, volume.affine, {"format": "rtstruct"}), info


# -- SEG --------------------------------------------------------------------------------------

def _functional(item, shared, sequence: str, keyword: str):
    for group in (item, shared):
        if group is not None and sequence in group and keyword in group[sequence].value[0]:
            return [float(v) for v in group[sequence].value[0][keyword].value]
    raise KeyError(f"{sequence}/{keyword}")


def _parse_seg(ds):
    """``(type, max_fractional, {number: label}, frames, for_uid)`` from a SEG dataset.

    ``frames`` is a list of ``(segment_number or None, ipp (3,), iop (6,), spacing (2,),
    stored pixels (rows, cols))``.
    """
    from highdicom.seg import Segmentation, SegmentationTypeValues

    seg = Segmentation.from_dataset(ds, copy=False)
    seg_type = SegmentationTypeValues(str(ds.SegmentationType).strip().upper()).value
    max_frac = float(ds.get("MaximumFractionalValue", 255) or 255)
    labels = {int(item.SegmentNumber): str(item.get("SegmentLabel", "") or "").strip()
              for item in ds.SegmentSequence if int(item.SegmentNumber) > 0}  # 0: background
    shared = ds.SharedFunctionalGroupsSequence[0] if "SharedFunctionalGroupsSequence" in ds \
        else None
    frames = []
    for i, item in enumerate(ds.PerFrameFunctionalGroupsSequence):
        number = None
        if seg_type != "LABELMAP":
            ident = item.get("SegmentIdentificationSequence", None) or (
                shared.get("SegmentIdentificationSequence", None) if shared else None)
            number = int(ident[0].ReferencedSegmentNumber)
        frames.append((number,
                       np.asarray(_functional(item, shared, "PlanePositionSequence",
                                              "ImagePositionPatient")),
                       np.asarray(_functional(item, shared, "PlaneOrientationSequence",
                                              "ImageOrientationPatient")),
                       np.asarray(_functional(item, shared, "PixelMeasuresSequence",
                                              "PixelSpacing")),
                       np.asarray(seg.get_stored_frame(i + 1))))
    for_uid = str(ds.get("FrameOfReferenceUID", "") or "").strip()
    return seg_type, max_frac, labels, frames, for_uid


def _frame_slice(ipp, iop, spacing, shape2d, frame: int, volume: Volume, path: Path) -> int:
    """Slice index of one SEG frame on *volume*'s grid (may be outside ``0..nz-1``)."""
    label = file_label(path)
    aff = volume.affine[:3, :3]
    v_row = aff[:, 2] / np.linalg.norm(aff[:, 2])       # along a row (DICOM row cosine)
    v_col = aff[:, 1] / np.linalg.norm(aff[:, 1])       # down the rows
    v_spacing = (float(np.linalg.norm(aff[:, 1])), float(np.linalg.norm(aff[:, 2])))
    fix = ("Resample the segmentation onto the CT grid (nearest neighbour), or pair it with "
           "the series it was drawn on.")
    if iop.size != 6 or not (np.allclose(iop[:3], v_row, atol=IOP_TOLERANCE)
                             and np.allclose(iop[3:], v_col, atol=IOP_TOLERANCE)):
        raise GeometryMismatchError(
            f"{label}: frame {frame} is oriented differently from the CT slices (row/column "
            f"directions {np.round(iop, 3).tolist()} vs "
            f"{np.round(np.r_[v_row, v_col], 3).tolist()}). {fix}", path=path)
    if tuple(shape2d) != tuple(volume.shape[1:]) or not np.allclose(
            spacing, v_spacing, atol=SPACING_TOLERANCE_MM, rtol=0):
        raise GeometryMismatchError(
            f"{label}: frame {frame} has {shape2d[0]}x{shape2d[1]} pixels of "
            f"{spacing[0]:.4f} x {spacing[1]:.4f} mm but the CT slices have "
            f"{volume.shape[1]}x{volume.shape[2]} pixels of {v_spacing[0]:.4f} x "
            f"{v_spacing[1]:.4f} mm. {fix}", path=path)
    zyx = volume.world_to_voxel(ipp)
    k = int(np.round(zyx[0]))
    if abs(zyx[0] - k) > SLICE_TOLERANCE or np.max(np.abs(zyx[1:])) > IN_PLANE_TOLERANCE:
        raise GeometryMismatchError(
            f"{label}: frame {frame} does not lie on the CT grid: it sits at voxel offset "
            f"({zyx[0] - k:+.2f}, {zyx[1]:+.2f}, {zyx[2]:+.2f}) (z, y, x) from slice {k} "
            f"(tolerance {SLICE_TOLERANCE} slice, {IN_PLANE_TOLERANCE} pixel). {fix}",
            path=path)
    return k


def _select_segments(seg_labels: dict, segment_numbers, path: Path) -> list[int]:
    """The segment numbers to label, in increasing order (all when *segment_numbers* is None);
    :class:`MaskError` naming the segments found when one asked for is absent."""
    label = file_label(path)
    available = sorted(seg_labels)
    if segment_numbers is None:
        return available
    selected = sorted({int(n) for n in segment_numbers})
    missing = [n for n in selected if n not in seg_labels]
    if missing or not selected:
        shown = ", ".join(f"{n}: {seg_labels[n]!r}" for n in available) or "none"
        raise MaskError(
            f"{label} has no segment number {missing or '(segment_numbers is empty)'}. "
            f"Segments found (number: label): {shown}. Pass segment_numbers=[...] from "
            "this list.", path=path)
    return selected


def _seg_layers(frames, selected: list[int], seg_type: str, max_frac, volume: Volume,
                path: Path) -> list[np.ndarray]:
    """One bool ``volume.shape`` layer per selected segment, from the SEG's frames placed on
    the CT grid (frames off the CT's slices skipped with a warning, all of them: an error)."""
    label = file_label(path)
    index = {n: i for i, n in enumerate(selected)}
    layers = [np.zeros(volume.shape, dtype=bool) for _ in selected]
    n_outside = n_hit = 0
    for f, (number, ipp, iop, spacing, pixels) in enumerate(frames, start=1):
        if number is not None and number not in index:
            continue
        k = _frame_slice(ipp, iop, spacing, pixels.shape, f, volume, path)
        if seg_type == "FRACTIONAL":
            planes = [(number, pixels >= 0.5 * max_frac)]
        elif seg_type == "LABELMAP":
            planes = [(n, pixels == n) for n in selected]
        else:
            planes = [(number, pixels > 0)]
        for n, plane in planes:
            if not plane.any():
                continue
            if not 0 <= k < volume.shape[0]:
                n_outside += 1
                continue
            n_hit += 1
            layers[index[n]][k] |= plane
    if n_outside and not n_hit:
        raise GeometryMismatchError(
            f"no segmented frame of {label} lands on a slice of the CT grid "
            f"({volume.describe()}): the SEG was made on another scan. Pair it with the CT "
            "series it was made on.", path=path)
    if n_outside:
        log.warning("%s: %d segmented frame(s) lie outside the CT's slices and were skipped",
                    label, n_outside)
    return layers


def seg_mask(path: str | Path, volume: Volume, *, segment_numbers: Sequence[int] | None = None,
             frame_of_reference_uid: str | None = None) -> tuple[Mask, list[dict]]:
    """Place the segments of a DICOM SEG on *volume*'s grid.

    Parameters
    ----------
    path : str or Path
        The DICOM Segmentation file (BINARY, FRACTIONAL or LABELMAP).
    volume : Volume
        The CT the segmentation was made on, shape ``(z, y, x)``.
    segment_numbers : sequence of int, optional
        Segments to use; default all.
    frame_of_reference_uid : str, optional
        The CT's FrameOfReferenceUID; when given, the SEG must share it.

    Returns
    -------
    mask : Mask
        int16 labels, shape ``volume.shape``, ``volume``'s affine; label ``i`` = the i-th
        selected segment by increasing segment number.
    info : list of dict
        Per label: ``label``, ``segment_number``, ``segment_label``, ``volume_mm3``.

    Raises
    ------
    UnreadableFileError (not readable DICOM, malformed SEG), DataError (not a SEG), MaskError
    (unknown segment number), GeometryMismatchError (a frame off the CT grid: orientation,
    size, spacing or position; frame of reference differs; nothing lands on the CT's slices).
    """
    path = Path(path)
    label = file_label(path)
    ds = _read(path, "SEG")
    try:
        seg_type, max_frac, seg_labels, frames, for_uid = _parse_seg(ds)
    except _PARSE_ERRORS as exc:
        raise UnreadableFileError(
            f"{label} is not a valid DICOM Segmentation ({type(exc).__name__}); re-export it.",
            path=path,
        ) from None
    _check_frame_of_reference({for_uid} - {""}, frame_of_reference_uid, "SEG", path)
    selected = _select_segments(seg_labels, segment_numbers, path)
    layers = _seg_layers(frames, selected, seg_type, max_frac, volume, path)
    labels = _compose(layers, volume.shape, path)
    vox = _voxel_mm3(volume)
    info = [{"label": i, "segment_number": n, "segment_label": seg_labels[n],
             "volume_mm3": float(np.count_nonzero(labels == i)) * vox}
            for i, n in enumerate(selected, start=1)]
    return Mask(labels, volume.affine, {"format": "dicom-seg"}), info
