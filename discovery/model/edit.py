"""Edit a scan and re-score it: the shared tools of every "remove it and re-score" check.

:func:`inpaint_parenchyma` replaces voxels with lung parenchyma drawn from around them (the
cluster causal check of :mod:`discovery.patterns.causal` removes off-mask regions with it,
:mod:`discovery.model.reliance` removes the nodule itself and volume-matched controls);
:func:`score_inputs` scores edited ROIs in forward passes whose composition does not change
a ROI's probability; :func:`bounding_box` is the box the edits work in, and :func:`grow_mm` grows a mask by a
physical reach inside such a box.

Only the scan is edited, never the model.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch
from scipy import ndimage

from data_tools.checks import check_spacing

__all__ = [
    "PARENCHYMA_BAND_HU",
    "FALLBACK_PARENCHYMA_HU",
    "ROI_BATCH",
    "SHELL_MM",
    "bounding_box",
    "grow_mm",
    "reach_voxels",
    "inpaint_parenchyma",
    "score_inputs",
]

#: HU band of aerated lung parenchyma sampled to fill removed voxels.
PARENCHYMA_BAND_HU = (-950.0, -600.0)
#: Default donor shell (mm) of :func:`inpaint_parenchyma`.
SHELL_MM = 6.0
#: Used when no parenchyma voxel is found anywhere near the removed voxels.
FALLBACK_PARENCHYMA_HU = -850.0
#: Most ROIs :func:`score_inputs` scores in one forward pass.
ROI_BATCH = 16

_SLACK_MM = 1e-6  # distance ties with the ball's <= r² test, kept inside


def bounding_box(mask: np.ndarray, pad=0) -> tuple[slice, ...] | None:
    """The slices of *mask*'s True voxels grown by *pad* voxels per axis (an int or one per
    axis), clipped to the array; None when *mask* is empty.  Uses axis projections, not
    ``argwhere``: a few passes over the array instead of materialising every index."""
    mask = np.asarray(mask, dtype=bool)
    pads = np.broadcast_to(np.asarray(pad, dtype=int), (mask.ndim,))
    out = []
    for axis in range(mask.ndim):
        nz = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        if nz.size == 0:
            return None
        out.append(slice(max(int(nz[0]) - int(pads[axis]), 0),
                         min(int(nz[-1]) + int(pads[axis]) + 1, mask.shape[axis])))
    return tuple(out)


def reach_voxels(reach_mm: float, spacing_mm) -> np.ndarray:
    """Voxels per axis ``(z, y, x)`` that *reach_mm* spans on a grid of *spacing_mm*, plus
    one: the margin by which :func:`grow_mm` and :func:`inpaint_parenchyma` pad the boxes
    they work in (a negative reach counts as 0)."""
    spacing = np.asarray(check_spacing(spacing_mm), dtype=float)
    return np.ceil(max(float(reach_mm), 0.0) / spacing).astype(int) + 1


def grow_mm(mask: np.ndarray, reach_mm: float, spacing_mm) -> np.ndarray:
    """``mask`` plus every voxel within ``reach_mm`` (voxel centre to voxel centre) of it.

    Computed on the mask's bounding box grown by the reach, so the cost does not depend on
    the size of the scan.  (Re-exported as :func:`discovery.align.metrics.grow_mm`.)
    """
    mask = np.asarray(mask, dtype=bool)
    spacing = np.asarray(check_spacing(spacing_mm), dtype=float)
    if not mask.any() or reach_mm <= 0:
        return mask.copy()
    box = bounding_box(mask, reach_voxels(reach_mm, spacing))
    out = np.zeros_like(mask)
    out[box] = ndimage.distance_transform_edt(~mask[box], sampling=spacing) <= reach_mm + _SLACK_MM
    return out


def inpaint_parenchyma(
    hu,
    remove,
    *,
    spacing_mm,
    protect=None,
    shell_mm: float = SHELL_MM,
    band_hu: tuple[float, float] = PARENCHYMA_BAND_HU,
    seed: int = 0,
    fallback: bool = True,
) -> np.ndarray | None:
    """Replace voxels with values drawn from the lung parenchyma around them.

    Parameters
    ----------
    hu : ndarray, shape (z, y, x)
        CT in HU (not modified).
    remove : ndarray of bool, shape (z, y, x)
        Voxels to replace.
    spacing_mm : sequence of 3 floats
        Voxel size ``(dz, dy, dx)`` in mm.
    protect : ndarray of bool, shape (z, y, x), optional
        Voxels never edited and never sampled (e.g. the nodule mask); they are removed from
        ``remove`` first.
    shell_mm : float
        Donor voxels are those within ``shell_mm`` of ``remove`` (outside it and outside
        ``protect``) whose HU lies in ``band_hu``.
    band_hu : (float, float)
        HU band counted as aerated parenchyma, inclusive.
    seed : int
        Donor values are drawn with replacement by ``numpy.random.default_rng(seed)``.
    fallback : bool
        What to do when the shell holds no parenchyma: draw from the whole array (True,
        below), or return None (False: a caller that passes a crop of a scan, with the shell
        inside it, then calls again with the whole scan).

    Returns
    -------
    ndarray, float32, shape (z, y, x)
        A copy of ``hu`` with ``remove & ~protect`` filled (None: see *fallback*).  Drawing donors (rather than
        using their mean) keeps the local noise texture, so the edit does not leave a
        conspicuously smooth hole.

    Notes
    -----
    Without donors in the shell, parenchyma voxels of the whole array are used; without
    any, the constant :data:`FALLBACK_PARENCHYMA_HU`.  An empty ``remove`` returns an
    unchanged copy.
    """
    hu, remove, protect, spacing, band = _check_inpaint(hu, remove, protect, spacing_mm,
                                                        shell_mm, band_hu)
    out = np.array(hu, dtype=np.float32, copy=True)
    if protect is not None:
        remove = remove & ~protect
    if not remove.any():
        return out
    # Work in the bounding box of the removed voxels grown by the shell.
    box = bounding_box(remove, reach_voxels(shell_mm, spacing))
    rem = remove[box]
    values = out[box]
    donors = _donors(out, values, box, remove, protect, spacing, shell_mm, band, fallback)
    if donors is None:
        return None
    rng = np.random.default_rng(seed)
    n = int(rem.sum())
    fill = rng.choice(donors, size=n) if donors.size else np.full(n, FALLBACK_PARENCHYMA_HU)
    values[rem] = fill.astype(np.float32)
    return out


def _check_inpaint(hu, remove, protect, spacing_mm, shell_mm, band_hu):
    """:func:`inpaint_parenchyma`'s arguments checked: ``(hu, remove, protect or None,
    spacing array, (low, high))``."""
    hu = np.asarray(hu)
    remove = np.asarray(remove)
    if hu.ndim != 3 or remove.shape != hu.shape:
        raise ValueError(
            f"hu must be 3-D and remove the same shape; received {hu.shape} and {remove.shape}"
        )
    if remove.dtype != bool:
        raise ValueError(f"remove must be a boolean mask; received dtype {remove.dtype}")
    spacing = np.asarray(check_spacing(spacing_mm))
    if not (np.isfinite(shell_mm) and shell_mm > 0):
        raise ValueError(f"shell_mm must be positive; received {shell_mm!r}")
    lo_hu, hi_hu = float(band_hu[0]), float(band_hu[1])
    if not hi_hu > lo_hu:
        raise ValueError(f"band_hu must be (low, high) with high > low; received {band_hu!r}")
    if protect is not None:
        protect = np.asarray(protect, dtype=bool)
        if protect.shape != hu.shape:
            raise ValueError(f"protect must have shape {hu.shape}; received {protect.shape}")
    return hu, remove, protect, spacing, (lo_hu, hi_hu)


def _donors(out, values, box, remove, protect, spacing, shell_mm, band,
            fallback: bool = True) -> np.ndarray | None:
    """The parenchyma values to draw from: those of the shell around ``remove[box]`` (the
    dilation by the physical ball, one distance transform of the box), else of the whole
    array (outside ``remove`` and ``protect``), or None without *fallback*."""
    lo_hu, hi_hu = band
    rem = remove[box]
    near = ndimage.distance_transform_edt(~rem, sampling=spacing) <= shell_mm + _SLACK_MM
    shell = near & ~rem
    if protect is not None:
        shell &= ~protect[box]
    in_band = (values >= lo_hu) & (values <= hi_hu)
    donors = values[shell & in_band]
    if donors.size == 0 and not fallback:
        return None
    if donors.size == 0:
        whole = (out >= lo_hu) & (out <= hi_hu) & ~remove
        if protect is not None:
            whole &= ~protect
        donors = out[whole]
    return donors


def score_inputs(model: torch.nn.Module, rois) -> np.ndarray:
    """P(class 1) of each ROI, float32, in forward passes of at most :data:`ROI_BATCH` and
    at least two ROIs, without gradients.

    Parameters
    ----------
    model : torch.nn.Module
        Classifier returning logits ``(N, C)``, used as it is (put it in ``eval()``).
    rois : sequence of ndarray, each shape (C, S, S, S), float32
        Network inputs (:func:`discovery.model.rois.roi_input`).

    Returns
    -------
    ndarray, shape (len(rois),), float32

    Notes
    -----
    Alone, the model takes another convolution kernel, whose result can differ in the last
    bits; so a lone ROI is scored beside a copy of itself and the last pass never holds one
    ROI.  In batches of two or more a ROI's probability is the same on most CPUs; on some
    (AVX-512 and AMX kernels, measured on a Sapphire Rapids Xeon) it still moves by about
    1e-7 with the batch's size, far below any effect the checks read (0.05).  The passes
    depend only on ``len(rois)``, so the same list always gives the same probabilities.
    """
    n = len(rois)
    if n == 0:
        return np.zeros(0, dtype=np.float32)
    bounds = list(range(0, n, ROI_BATCH)) + [n]
    if len(bounds) > 2 and bounds[-1] - bounds[-2] == 1:
        bounds[-2] -= 1
    out = []
    with torch.no_grad():
        for lo, hi in itertools.pairwise(bounds):
            chunk = list(rois[lo:hi]) * (2 if hi - lo == 1 else 1)
            p = torch.softmax(model(torch.from_numpy(np.stack(chunk))), dim=1)[:, 1].numpy()
            out.append(p[:hi - lo])
    return np.concatenate(out)
