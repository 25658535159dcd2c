"""Regions of interest: resample a cube around each nodule, and map results back.

The ROI grid is aligned with the scan's own voxel axes (so oblique acquisitions need no
rotation), with the isotropic spacing of the model card.  ROI voxel ``u`` (per axis) sits at
scan voxel coordinate ``offset + u * scale`` where ``scale = roi_spacing / scan_spacing``;
:func:`roi_to_scan` is the exact inverse used to place attribution maps back on the scan.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from data_tools.volume import Mask, Volume

from .windows import DEFAULT_INPUT_WINDOWS, HU_WINDOWS, parse_windows  # noqa: F401 (given here too)

__all__ = ["Roi", "NoduleSite", "label_voxels", "label_boxes", "nodule_sites", "nodule_label",
           "extract_roi", "normalize_hu", "window_channels", "network_input", "parse_windows",
           "HU_WINDOWS", "DEFAULT_INPUT_WINDOWS", "roi_input", "roi_to_scan"]

#: HU used for ROI voxels that fall outside the scan (air).
OUTSIDE_HU = -1000.0


@dataclass(frozen=True, eq=False)
class NoduleSite:
    """One annotated nodule: its label in the mask and where it is.

    Attributes
    ----------
    label : int
        Value of the nodule in the label mask.
    center_zyx : tuple of 3 float
        Centre of mass in scan voxel coordinates.
    n_voxels : int
    volume_mm3 : float
    box : tuple of 3 slice or None
        The label's bounding box on the scan grid (``scipy.ndimage.find_objects``); None
        when it has no voxel.
    """

    label: int
    center_zyx: tuple[float, float, float]
    n_voxels: int
    volume_mm3: float
    box: tuple[slice, slice, slice] | None = None

    @property
    def nodule_id(self) -> str:
        return f"n{self.label}"


def nodule_label(nodule_id) -> int | None:
    """Mask label of a nodule id (:attr:`NoduleSite.nodule_id`, e.g. ``"n3"`` -> 3); None when
    the id ends in no number."""
    m = re.search(r"(\d+)$", str(nodule_id))
    return int(m.group(1)) if m else None


@dataclass(frozen=True, eq=False)
class Roi:
    """A resampled cube around a nodule.

    Attributes
    ----------
    hu : ndarray, shape (S, S, S), float32
        HU values on the ROI grid (air outside the scan).
    offset_zyx : ndarray, shape (3,)
        Scan voxel coordinate of ROI voxel (0, 0, 0).
    scale_zyx : ndarray, shape (3,)
        Scan voxels per ROI voxel along each axis.
    affine : ndarray, shape (4, 4)
        ROI ``[z, y, x, 1]`` -> patient LPS mm.
    """

    hu: np.ndarray
    offset_zyx: np.ndarray
    scale_zyx: np.ndarray
    affine: np.ndarray

    def scan_box(self, scan_shape) -> tuple[slice, slice, slice]:
        """The scan-grid bounding box covered by the ROI, clipped to the scan."""
        size = np.asarray(self.hu.shape)
        lo = np.floor(self.offset_zyx).astype(int)
        hi = np.ceil(self.offset_zyx + (size - 1) * self.scale_zyx).astype(int) + 1
        lo = np.clip(lo, 0, scan_shape)
        hi = np.clip(hi, 0, scan_shape)
        return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))  # type: ignore[return-value]


def label_voxels(labels: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """``(label, coordinates)`` of each label ``> 0`` present in a label map, by label; the
    coordinates ``(n, ndim)`` int in C order.

    One pass over the slices (first axis) that hold a label instead of over the whole
    array: on a sparse map (a scan's nodule mask or off-mask regions) a tenth of the time
    of ``scipy.ndimage.find_objects``.  Negative labels raise ``ValueError``.
    """
    arr = np.asarray(labels)
    if arr.ndim == 0 or arr.size == 0:
        return []
    zs = np.flatnonzero(arr.reshape(arr.shape[0], -1).any(axis=1))
    if zs.size == 0:
        return []
    slab = arr[zs[0]:zs[-1] + 1]
    where = np.flatnonzero(slab)
    values = slab.reshape(-1)[where]
    if values.min() < 0:
        raise ValueError(f"labels must be >= 0; received a minimum of {values.min()}")
    order = np.argsort(values, kind="stable")              # C order within each label
    found, starts = np.unique(values[order], return_index=True)
    coords = np.stack(np.unravel_index(where[order], slab.shape), axis=1)
    coords[:, 0] += zs[0]
    return [(int(k), part) for k, part in zip(found, np.split(coords, starts[1:]))]


def label_boxes(labels: np.ndarray) -> list:
    """``scipy.ndimage.find_objects(labels)`` of a label map with labels ``>= 0``: the
    bounding box of each label ``1..max``, None for a label without voxels
    (:func:`label_voxels`' one pass)."""
    voxels = label_voxels(labels)
    out: list = [None] * (voxels[-1][0] if voxels else 0)
    for label, part in voxels:
        out[label - 1] = tuple(slice(int(a), int(b))
                               for a, b in zip(part.min(axis=0), part.max(axis=0) + 1))
    return out


def nodule_sites(mask: Mask) -> list[NoduleSite]:
    """One :class:`NoduleSite` per label of *mask*, sorted by label. Empty mask: ``[]``."""
    voxel_mm3 = float(np.prod(mask.spacing_mm))
    sites = []
    for label, part in label_voxels(mask.array):
        lo, hi = part.min(axis=0), part.max(axis=0) + 1
        box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
        center = (part - lo).mean(axis=0) + lo.astype(float)
        sites.append(NoduleSite(label=label, center_zyx=tuple(float(c) for c in center),  # type: ignore[arg-type]
                                n_voxels=len(part), volume_mm3=len(part) * voxel_mm3,
                                box=box))  # type: ignore[arg-type]
    return sites


def extract_roi(volume: Volume, center_zyx, *, size_vox, spacing_mm) -> Roi:
    """Resample a cube of ``size_vox`` voxels at ``spacing_mm`` centred on ``center_zyx``.

    Parameters
    ----------
    volume : Volume
        Scan in HU, shape (z, y, x).
    center_zyx : sequence of 3 float
        Cube centre in scan voxel coordinates.
    size_vox : sequence of 3 int
        ROI shape.
    spacing_mm : sequence of 3 float
        ROI voxel spacing in mm.

    Returns
    -------
    Roi
        Trilinear resampling; voxels outside the scan are air (-1000 HU).
    """
    size = np.asarray(size_vox, dtype=int)
    scale = np.asarray(spacing_mm, dtype=float) / np.asarray(volume.spacing_mm, dtype=float)
    offset = np.asarray(center_zyx, dtype=float) - (size - 1) / 2.0 * scale
    hu = ndimage.affine_transform(
        volume.array,        # as stored (float32 or int16 HU): no whole-scan float copy
        scale,
        offset=offset,
        output_shape=tuple(int(s) for s in size),
        output=np.float32,
        order=1,
        mode="constant",
        cval=OUTSIDE_HU,
    )
    to_scan = np.eye(4)
    to_scan[:3, :3] = np.diag(scale)
    to_scan[:3, 3] = offset
    return Roi(hu=hu, offset_zyx=offset, scale_zyx=scale, affine=volume.affine @ to_scan)


def normalize_hu(hu: np.ndarray, window) -> np.ndarray:
    """Map HU to [0, 1] over ``window = (low, high)``, clipping outside. float32 out."""
    lo, hi = float(window[0]), float(window[1])
    if not hi > lo:
        raise ValueError(f"HU window must have high > low; received {window}")
    return np.clip((np.asarray(hu, dtype=np.float32) - lo) / (hi - lo), 0.0, 1.0)


def window_channels(hu: np.ndarray, windows) -> np.ndarray:
    """One channel per HU window: ``normalize_hu(hu, w)`` for each ``w`` in *windows*.

    Parameters
    ----------
    hu : ndarray, any shape ``D``
        Hounsfield units.
    windows : sequence of (low, high)
        HU windows, each mapped to [0, 1] and clipped.

    Returns
    -------
    ndarray, shape (len(windows), *D), float32 in [0, 1]
    """
    windows = list(windows)
    if not windows:
        raise ValueError("windows must name at least one (low, high) HU window; received none")
    return np.stack([normalize_hu(hu, w) for w in windows])


def network_input(hu: np.ndarray, card) -> np.ndarray:
    """The network's input for ROI(s) in HU: one channel per window of the model card.

    Every caller (pipeline, training, sanity checks, causal check) turns HU into the input
    here, so a model always sees the representation it was trained on.

    Parameters
    ----------
    hu : ndarray, shape (S, S, S)
        One ROI in HU (any shape works: the channels are stacked in front of it).
    card : discovery.model.card.ModelCard
        Its ``windows``: ``input_windows`` when set, else the one ``hu_window`` (cards written
        before there were several windows, such as the demo model's).

    Returns
    -------
    ndarray, shape (C, S, S, S), float32 in [0, 1]
        ``C = len(card.windows)``; with one window exactly ``normalize_hu(hu, card.hu_window)``
        with a leading channel axis.
    """
    return window_channels(hu, card.windows)


def roi_input(volume: Volume, center_zyx, card) -> np.ndarray:
    """The network input for one nodule: the card's ROI around *center_zyx*, HU windowed.

    Parameters
    ----------
    volume : Volume
    center_zyx : sequence of 3 floats
        ROI centre, scan voxel coordinates.
    card : discovery.model.card.ModelCard
        ``roi_size_vox``, ``roi_spacing_mm`` and its HU windows (:func:`network_input`).

    Returns
    -------
    ndarray, shape (C, S, S, S), float32 in [0, 1]
        One channel per window, ready to stack into a batch.
    """
    roi = extract_roi(volume, center_zyx, size_vox=card.roi_size_vox,
                      spacing_mm=card.roi_spacing_mm)
    return network_input(roi.hu, card)


def roi_to_scan(roi_map: np.ndarray, roi: Roi, scan_shape) -> tuple[tuple[slice, slice, slice], np.ndarray]:
    """Place a map defined on the ROI grid onto the scan grid (trilinear).

    Parameters
    ----------
    roi_map : ndarray, shape (S, S, S)
        Values on the ROI grid (e.g. a Grad-CAM map).
    roi : Roi
        The ROI the map belongs to.
    scan_shape : tuple of 3 int

    Returns
    -------
    box : tuple of 3 slices
        Where the result lies in the scan (:meth:`Roi.scan_box`).
    values : ndarray, float32, shape of the box
        The map on those scan voxels; 0 outside the ROI's extent.
    """
    roi_map = np.asarray(roi_map, dtype=np.float32)
    if roi_map.shape != roi.hu.shape:
        raise ValueError(f"roi_map has shape {roi_map.shape}; the ROI has {roi.hu.shape}")
    box = roi.scan_box(scan_shape)
    lo = np.array([s.start for s in box], dtype=float)
    out_shape = tuple(s.stop - s.start for s in box)
    inv = 1.0 / roi.scale_zyx
    values = ndimage.affine_transform(
        roi_map, inv, offset=(lo - roi.offset_zyx) * inv, output_shape=out_shape,
        order=1, mode="constant", cval=0.0,
    )
    return box, np.maximum(values, 0.0).astype(np.float32) if roi_map.min() >= 0 else values.astype(np.float32)
