"""Nodule masks derived from per-slice bounding boxes (PASCAL VOC XML, as Lung-PET-CT-Dx).

Some datasets annotate tumours as a box on each slice that shows them: one XML file per
annotated slice, named by that slice's SOPInstanceUID, with ``<object><name>`` (the class) and
``<bndbox>`` (``xmin``, ``ymin``, ``xmax``, ``ymax``: pixel column and row, inclusive).
A box is not a mask, so the mask is *derived*, by a fixed rule that every metric built on it
inherits (the case's ``mask_source`` says ``boxes``):

1. Each box is placed on its slice through the slice's own geometry (ImagePositionPatient,
   ImageOrientationPatient, PixelSpacing of the file named by the XML's SOPInstanceUID) and
   mapped to the volume's voxels, so flipped or reordered volumes get the box where the
   annotator drew it.
2. Inside the box, the voxels of that slice at or above :data:`SOFT_TISSUE_HU` are split into
   in-plane 8-connected components; the component holding the box's centre pixel is kept, or,
   when the centre is not soft tissue, the largest one.
3. The kept pieces of all annotated slices are grouped into nodules by 3-D connectivity (26
   neighbours; consecutive annotated slices of one tumour touch), labelled 1..N in the order
   of their first voxel.  Slices without a box stay empty: the derived mask covers only the
   annotated slices.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import MaskError, file_label
from .volume import Mask, Volume

__all__ = ["SliceBox", "SOFT_TISSUE_HU", "is_voc_xml", "read_voc_boxes", "box_mask"]

#: Voxels at or above this HU inside a box are the tumour's candidates (soft tissue, not lung).
SOFT_TISSUE_HU = -500.0


@dataclass(frozen=True)
class SliceBox:
    """One annotated box: the slice's SOPInstanceUID, the class name and the pixel bounds
    (``xmin``/``xmax`` columns, ``ymin``/``ymax`` rows, inclusive)."""

    sop_uid: str
    name: str
    xmin: int
    ymin: int
    xmax: int
    ymax: int


def is_voc_xml(path: Path) -> bool:
    """Whether *path* looks like a PASCAL VOC annotation (its head holds ``<annotation`` and
    ``<bndbox>``)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(4096)
    except OSError:
        return False
    return b"<annotation" in head and b"<bndbox>" in head


def read_voc_boxes(files) -> list[SliceBox]:
    """The boxes of PASCAL VOC files named ``<SOPInstanceUID>.xml``.

    Raises
    ------
    MaskError
        A file that cannot be parsed or a box without its four bounds (the file's base name in
        the message).
    """
    boxes = []
    for path in sorted(Path(p) for p in files):
        try:
            root = ET.parse(path).getroot()
        except (ET.ParseError, OSError) as exc:
            raise MaskError(f"box file {file_label(path)} cannot be read ({type(exc).__name__})",
                            path=path) from None
        for obj in root.iter("object"):
            bb = obj.find("bndbox")
            try:
                bounds = [int(round(float(bb.findtext(k)))) for k in ("xmin", "ymin", "xmax", "ymax")]
            except (AttributeError, TypeError, ValueError):
                raise MaskError(f"box file {file_label(path)} has an object without numeric "
                                "xmin, ymin, xmax, ymax", path=path) from None
            if bounds[2] < bounds[0] or bounds[3] < bounds[1]:
                raise MaskError(f"box file {file_label(path)} has a box with xmax < xmin or "
                                f"ymax < ymin ({bounds})", path=path)
            boxes.append(SliceBox(path.stem, (obj.findtext("name") or "").strip(), *bounds))
    return boxes


def _slice_geometry(dicom_files) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``SOPInstanceUID -> (position, row direction, column direction scaled)``: the world
    point of pixel (row r, column c) is ``ipp + c * dx * X + r * dy * Y``."""
    import pydicom

    out = {}
    for f in dicom_files:
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True)
            ipp = np.asarray(ds.ImagePositionPatient, float)
            iop = np.asarray(ds.ImageOrientationPatient, float)
            dy, dx = (float(v) for v in ds.PixelSpacing)
            out[str(ds.SOPInstanceUID)] = (ipp, iop[:3] * dx, iop[3:] * dy)
        except (AttributeError, ValueError, TypeError, OSError, pydicom.errors.InvalidDicomError):
            continue
    return out


def box_mask(volume: Volume, boxes: list[SliceBox], dicom_files) -> Mask:
    """The nodule mask derived from *boxes* on *volume* (module docstring's rule).

    Parameters
    ----------
    volume : Volume
        The CT in HU, as loaded from the series the boxes annotate.
    boxes : list of SliceBox
        From :func:`read_voc_boxes`.
    dicom_files : iterable of path
        The series' files (their headers give each annotated slice's geometry).

    Raises
    ------
    MaskError
        No box belongs to a slice of the series, or no box holds soft tissue.
    """
    geometry = _slice_geometry(dicom_files)
    inv = np.linalg.inv(volume.affine)
    pieces = np.zeros(volume.shape, dtype=bool)
    placed = 0
    for box in boxes:
        if box.sop_uid not in geometry:
            continue
        ipp, col_step, row_step = geometry[box.sop_uid]
        corners = np.array([ipp + c * col_step + r * row_step
                            for c in (box.xmin, box.xmax) for r in (box.ymin, box.ymax)])
        vox = (inv @ np.c_[corners, np.ones(4)].T)[:3].T            # (4, z y x)
        z = int(round(float(np.median(vox[:, 0]))))
        if not 0 <= z < volume.shape[0]:
            continue
        lo = np.clip(np.floor(vox[:, 1:].min(axis=0)).astype(int), 0, None)
        hi = np.minimum(np.ceil(vox[:, 1:].max(axis=0)).astype(int) + 1, volume.shape[1:])
        pieces[z, lo[0]:hi[0], lo[1]:hi[1]] |= _tumour_piece(volume.array[z, lo[0]:hi[0], lo[1]:hi[1]])
        placed += 1
    if placed == 0:
        raise MaskError(f"none of the {len(boxes)} boxes names a slice of the CT series (the box "
                        "files are named by the annotated slice's SOPInstanceUID)")
    from scipy import ndimage     # here: finding a folder's cases needs no SciPy

    labels, n = ndimage.label(pieces, structure=np.ones((3, 3, 3), bool))
    if n == 0:
        raise MaskError(f"no box of the {placed} placed holds soft tissue (>= "
                        f"{SOFT_TISSUE_HU:g} HU); the boxes may not match this series")
    return Mask(labels.astype(np.int16), volume.affine,
                {"format": "boxes", "mask_rule": f"soft tissue >= {SOFT_TISSUE_HU:g} HU inside "
                                                 f"the per-slice boxes, {placed} slices"})


def _tumour_piece(patch: np.ndarray) -> np.ndarray:
    """Step 2 of the rule on one box's pixels."""
    from scipy import ndimage

    soft = patch >= SOFT_TISSUE_HU
    labels, n = ndimage.label(soft, structure=np.ones((3, 3), bool))
    if n == 0:
        return soft
    centre = labels[patch.shape[0] // 2, patch.shape[1] // 2]
    if centre == 0:
        centre = int(np.argmax(np.bincount(labels.ravel())[1:])) + 1
    return labels == centre

