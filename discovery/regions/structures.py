"""The structure an off-mask region points at, described on its own.

A Grad-CAM region is a blob of a few cm³ on the network's coarse grid, mostly aerated lung;
the structure that carries its attribution (a strand running to the pleura, a vessel, a
calcification, a metal marker, an air space) is a small part of it and of the region's
averages.  :func:`attended_structure` finds that structure and describes it: inside the
region grown by ``grow_by_mm``, the connected voxels of the lung field, the nodules excluded,
that are dense (``hu >= dense_hu``), faint (``hu >= faint_hu`` once smoothed, and not the
blurred edge of a dense structure: ground glass) or lucent (``hu <= lucent_hu`` once
smoothed: air spaces darker than the lung, such as bullae, cysts, cavities and emphysema)
are labelled, each kind apart, and the component holding the largest attribution mass is
*the attended structure*.  It is then described whole as far as ``reach_mm`` from the
region: the attention of a map with 3 mm cells often grazes an object (a marker's rim, the
end of a strand where it meets the pleura), and the grazed fragment's size, density and
orientation are not the object's. Described whole, it is bounded at its *half maximum*: the
voxels at least halfway from the aerated lung around the region (the median HU of the grown
region's lung voxels neither dense nor lucent, nor faint when a faint structure is looked
for: an excluded nodule and its dense rim, left out of the dense field, are not aerated
lung) to the densest voxel of the part found, connected to that voxel. A soft-tissue
strand is then bounded at about ``dense_hu``, as by the dense threshold alone; a metal
marker touching a vessel is the marker, not the marker and the vessel
(docs/benchmarks/discovery.md#half-maximum). A faint structure is bounded the same way on
the smoothed HU, and a lucent one from below: the smoothed voxels at least halfway
from the aerated lung to its darkest one.

Its volume, density (median and densest voxel), distance from the nodule and whether it
runs radially from the nodule (the direction of spiculation, pleural tags and vessel
convergence) are what a radiologist would say about it.

Conventions as in :mod:`discovery.regions.descriptors`: ``(z, y, x)`` arrays, ``spacing_mm`` is
``(dz, dy, dx)``, distances between voxel centres in mm.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from data_tools.checks import check_nonneg, check_spacing
from discovery.align.metrics import check_distance, distance_to_mask_mm, grow_mm
from discovery.regions.descriptors import FULL_26, solid_moments

__all__ = ["AttendedStructure", "NO_STRUCTURE", "DENSE_HU", "FAINT_HU", "LUCENT_HU",
           "attended_structure"]

#: Fewer voxels than this have no meaningful main axis: ``radial`` is NaN.
_MIN_AXIS_VOXELS = 3

#: Lung voxels at or above this HU are dense (soft tissue or denser).
DENSE_HU = -400.0
#: Lung voxels at or below this HU are lucent: the standard emphysema threshold (low
#: attenuation areas below -950 HU; Gevenois et al., Am J Respir Crit Care Med 1996;
#: 154:187-192), not fitted here.
LUCENT_HU = -950.0
#: Lung voxels at or above this HU (smoothed), below the dense threshold and away from any
#: dense structure's blurred edge, are faint: ground glass, whose usual quantitative range
#: starts about here (-700 to -300 HU); a round figure, not fitted here.
FAINT_HU = -700.0
#: A dense structure's edge, blurred by the scanner and by the smoothing, reaches about this
#: far (mm) above ``FAINT_HU``: faint voxels this close to a dense voxel are its edge.
_RIM_MM = 2.0


@dataclass(frozen=True)
class AttendedStructure:
    """The dense structure carrying most of a region's attribution.

    Attributes
    ----------
    volume_mm3 : float
        Volume of the structure (voxel count times voxel volume); 0 when the region covers
        no dense, faint or lucent lung voxel (attention on aerated parenchyma only).
    median_hu : float
        Median HU of the structure's voxels; NaN without a structure.  Below the aerated
        lung for a lucent structure (an air space), above it for a faint or dense one.
    max_hu : float
        HU of the structure's densest voxel; NaN without a structure.  Unlike the largest
        HU near the region, it is the structure's own: attention that grazes a dense
        object's partial-volume rim still reports the object's core.  For a lucent
        structure it is its rim, at about the aerated lung's HU or below.
    gap_mm : float
        Smallest distance (mm) from a structure voxel to the nodule's mask; NaN without a
        structure or nodule.
    radial : float
        ``|cos|`` of the angle between the structure's main axis (largest eigenvector of
        :func:`discovery.regions.descriptors.solid_moments`, as for its elongation) and the direction from the nodule's
        centroid to the structure's centroid, in [0, 1]: 1 for a strand pointing away from
        the nodule, 0 for one running around it.  NaN without a structure or nodule, or
        for a structure of fewer than 3 voxels (no main axis).
    elongation : float
        :func:`discovery.regions.descriptors.elongation` of the structure (>= 1; 1 for one voxel);
        NaN without one.
    attribution_share : float
        The structure's share of the attribution in the grown region, in [0, 1]; 0 without
        a structure.
    """

    volume_mm3: float
    median_hu: float
    max_hu: float
    gap_mm: float
    radial: float
    elongation: float
    attribution_share: float


#: What :func:`attended_structure` returns for a region over aerated parenchyma only.
NO_STRUCTURE = AttendedStructure(0.0, math.nan, math.nan, math.nan, math.nan, math.nan, 0.0)


def _check_same_shape(arrays: dict) -> tuple:
    shapes = {name: np.shape(a) for name, a in arrays.items()}
    first = next(iter(shapes.values()))
    if len(first) != 3 or any(s != first for s in shapes.values()):
        raise ValueError(f"arrays must be 3-D and of one shape; received shapes {shapes}")
    return first


def attended_structure(
    region, hu, lung, attribution, nodule, *, spacing_mm, exclude=None, distance_mm=None,
    grow_by_mm: float = 3.0, reach_mm: float = 9.0, dense_hu: float = DENSE_HU,
    faint_hu: float | None = FAINT_HU, lucent_hu: float | None = LUCENT_HU,
    smooth_mm: float = 1.0, nodule_margin_mm: float = 1.5,
) -> AttendedStructure:
    """Find and describe the dense, faint or lucent structure carrying a region's attribution.

    Parameters
    ----------
    region : ndarray of bool, shape (z, y, x)
        The off-mask region (non-empty).
    hu : ndarray, shape (z, y, x)
        CT in Hounsfield units on the same grid.
    lung : ndarray of bool, shape (z, y, x)
        Lung field (:func:`discovery.regions.descriptors.lung_mask`); it contains the vessels and
        strands inside the lungs.
    attribution : ndarray of float, shape (z, y, x)
        The nodule's attribution map (non-negative), same grid.
    nodule : ndarray of bool, shape (z, y, x)
        The nodule's own mask: the reference for ``gap_mm`` and ``radial``.
    spacing_mm : sequence of 3 floats
        Voxel size ``(dz, dy, dx)`` in mm.
    exclude : ndarray of bool, shape (z, y, x), optional
        Voxels never part of a structure (all annotated nodules; ``nodule`` when omitted),
        grown by ``nodule_margin_mm``: a nodule's partial-volume rim is no structure.
    distance_mm : ndarray of float, shape (z, y, x), optional
        :func:`discovery.align.metrics.distance_to_mask_mm` of ``nodule``, when the caller
        has it (the pipeline computes it once per nodule).
    grow_by_mm : float
        The region is grown by this much (mm) before looking for the structure.
    reach_mm : float
        The structure is described whole, bounded at its half maximum, as far as this (mm)
        from the region (>= ``grow_by_mm``, which describes the part in the grown region):
        a vessel tree is not followed to the hilum.  9 mm, three cells of the default map,
        was chosen over 3 mm and the whole ROI (docs/benchmarks/discovery.md#structure-reach).
    dense_hu : float
        Lung voxels at or above this HU are dense (soft tissue or denser).
    faint_hu : float or None
        Lung voxels at or above this HU once smoothed, below ``dense_hu`` and more than
        2 mm from a dense voxel, are faint (ground glass), looked for only where the grown
        region holds no dense or lucent voxel; :data:`FAINT_HU`.  ``None``: none.
    lucent_hu : float or None
        Lung voxels at or below this HU, once smoothed, are lucent (air spaces: bullae,
        cysts, cavities, emphysema); :data:`LUCENT_HU`.  ``None``: none (with ``faint_hu``
        None too, dense structures only: the behaviour before 2026-12-07).
    smooth_mm : float
        Sigma (mm) of the Gaussian smoothing ``hu`` for the faint and lucent tests and
        bounds (not the descriptors): the lung's noise makes no single voxel a structure.
    nodule_margin_mm : float
        Margin (mm) around ``exclude``.

    Returns
    -------
    AttendedStructure
        :data:`NO_STRUCTURE` when the grown region holds no dense, faint or lucent lung
        voxel.  Ties in mass go to the lowest label (scan order, dense before lucent).  The
        attribution share is that of the part inside the grown region.
    """
    region, hu, lung, nodule, exclude, distance_mm, attribution, spacing = _check_inputs(
        region, hu, lung, attribution, nodule, spacing_mm=spacing_mm, exclude=exclude,
        distance_mm=distance_mm, grow_by_mm=grow_by_mm, reach_mm=reach_mm, dense_hu=dense_hu,
        smoothed=(faint_hu, lucent_hu, smooth_mm), nodule_margin_mm=nodule_margin_mm,
    )
    grown = grow_mm(region, grow_by_mm, tuple(spacing))
    fields, faint, aerated = _density_fields(hu, lung, exclude, spacing, dense_hu=dense_hu,
                                             smoothed=(faint_hu, lucent_hu, smooth_mm),
                                             margin_mm=nodule_margin_mm)
    fields, labels, n, starts, aerated = _label_kinds(grown, fields, faint, aerated)
    if n == 0:
        return NO_STRUCTURE
    mass = ndimage.sum(attribution, labels, index=np.arange(1, n + 1))
    k = int(np.argmax(mass)) + 1
    comp = labels == k
    total = float(attribution[grown].sum())
    if reach_mm > grow_by_mm:
        kind = fields[int(np.searchsorted(starts, k, side="left")) - 1]
        comp = _whole(comp, kind, region, grown & aerated, reach_mm, spacing)
    return _describe_structure(comp, hu, nodule, spacing, distance_mm,
                               share=float(mass[k - 1] / total) if total > 0 else 0.0)


def _density_fields(hu, lung, exclude, spacing, *, dense_hu: float, smoothed,
                    margin_mm: float):
    """``(fields, faint, aerated)``.  *fields*: for the dense and (when its HU of *smoothed*
    ``(faint_hu, lucent_hu, smooth_mm)`` is not None) the lucent structures, ``(field,
    extent, values, direction)``: the lung voxels outside *exclude* grown by *margin_mm* of
    that kind; those a structure found may extend over when described whole (the dense
    field; for a faint one, the lung not at a dense edge; all of the lung for a lucent one,
    whose smoothed edge lies above ``lucent_hu``); the HU its bounds are measured on (*hu*;
    *hu* smoothed); and ``1`` (denser than the lung) or ``-1``.  *faint*: a function
    returning that tuple for the faint structures, called only when they are looked for
    (None without a ``faint_hu``).  *aerated*: the lung voxels neither dense nor lucent
    (the nodules included)."""
    faint_hu, lucent_hu, smooth_mm = smoothed
    free = lung & ~grow_mm(np.asarray(exclude, dtype=bool), margin_mm, tuple(spacing))
    dense = hu >= dense_hu
    fields, aerated = [(free & dense, free & dense, hu, 1.0)], lung & ~dense
    if faint_hu is None and lucent_hu is None:
        return fields, None, aerated
    smooth = _smoothed(hu, smooth_mm, spacing)
    if lucent_hu is not None:
        lucent = smooth <= lucent_hu
        fields.append((free & lucent, free, smooth, -1.0))
        aerated &= ~lucent

    def faint():
        away = free & ~grow_mm(dense, _RIM_MM, tuple(spacing))
        return away & (smooth >= faint_hu), away, smooth, 1.0
    return fields, (None if faint_hu is None else faint), aerated


def _label_kinds(grown, fields, faint, aerated) -> tuple[list, np.ndarray, int, list[int],
                                                          np.ndarray]:
    """``(kinds, labels, n, starts, aerated)``: :func:`_components` of the dense and lucent
    *fields*, or of the one *faint* returns (and *aerated* without it) when the grown region
    holds none of theirs: the faint field also takes in the partial volume of vessels too
    thin to be dense and between the vessels of a bundle (docs/benchmarks/discovery.md#lucent),
    so ground glass is the structure only where there is no other."""
    labels, n, starts = _components(grown, [kind[0] for kind in fields])
    if n == 0 and faint is not None:
        kind = faint()
        fields, aerated = [kind], aerated & ~kind[0]
        labels, n, starts = _components(grown, [kind[0]])
    return fields, labels, n, starts, aerated


def _components(grown, fields) -> tuple[np.ndarray, int, list[int]]:
    """``(labels, n, starts)``: the 26-connected components of ``grown & field`` for each of
    *fields*, numbered on from one field to the next (field ``i`` holds labels
    ``starts[i] + 1 .. starts[i + 1]``)."""
    labels, n, starts = np.zeros(grown.shape, np.int32), 0, []
    for field in fields:
        lab, m = ndimage.label(grown & field, structure=FULL_26)
        labels[lab > 0] = lab[lab > 0] + n
        starts.append(n)
        n += m
    return labels, n, starts


def _smoothed(hu: np.ndarray, sigma_mm: float, spacing) -> np.ndarray:
    """*hu* smoothed by a Gaussian of *sigma_mm* (mm) on a grid of *spacing* (float32)."""
    hu = np.asarray(hu, dtype=np.float32)
    if sigma_mm <= 0:
        return hu
    return ndimage.gaussian_filter(hu, sigma=[sigma_mm / float(d) for d in spacing],
                                   mode="nearest")


def _whole(piece, kind, region, aerated, reach_mm: float, spacing) -> np.ndarray:
    """The connected part of *kind*'s extent (``(field, extent, values, direction)`` of
    :func:`_density_fields`) holding *piece*'s extreme voxel of *values* (the densest with
    *direction* 1, the darkest with -1), within *reach_mm* of *region*, bounded at half the
    way from the median of *values* over the *aerated* voxels to that extreme (to the field
    without such voxels)."""
    field, extent, values, direction = kind
    seed = np.unravel_index(int(np.argmax(np.where(piece, direction * values, -np.inf))),
                            piece.shape)
    within = extent & grow_mm(region, reach_mm, tuple(spacing))
    if aerated.any():
        background = float(np.median(values[aerated]))
        halfway = background + (float(values[seed]) - background) / 2.0
        within &= direction * values >= direction * halfway
    else:
        within &= field
    wide, _ = ndimage.label(within, structure=FULL_26)
    return wide == wide[seed]


def _check_inputs(region, hu, lung, attribution, nodule, *, spacing_mm, exclude, distance_mm,
                  grow_by_mm, reach_mm, dense_hu, smoothed, nodule_margin_mm):
    """Validated ``(region, hu, lung, nodule, exclude, distance_mm, attribution, spacing)``
    for :func:`attended_structure`, as arrays, or ``ValueError``."""
    shape = _check_same_shape({"region": region, "hu": hu, "lung": lung,
                               "attribution": attribution, "nodule": nodule})
    spacing = np.asarray(check_spacing(spacing_mm), dtype=float)
    for name, value in (("grow_by_mm", grow_by_mm), ("nodule_margin_mm", nodule_margin_mm)):
        check_nonneg(value, name)
    if not float(reach_mm) >= float(grow_by_mm):
        raise ValueError(f"reach_mm must be at least grow_by_mm ({grow_by_mm} mm); received "
                         f"{reach_mm!r}")
    if not math.isfinite(float(dense_hu)):
        raise ValueError(f"dense_hu must be finite; received {dense_hu!r}")
    faint_hu, lucent_hu, smooth_mm = smoothed
    if faint_hu is not None and not float(faint_hu) < float(dense_hu):
        raise ValueError(f"faint_hu must be a finite HU below dense_hu ({dense_hu}) or None; "
                         f"received {faint_hu!r}")
    below = float(dense_hu) if faint_hu is None else float(faint_hu)
    if lucent_hu is not None and not float(lucent_hu) < below:
        raise ValueError(f"lucent_hu must be a finite HU below faint_hu and dense_hu ({below}) "
                         f"or None; received {lucent_hu!r}")
    check_nonneg(smooth_mm, "smooth_mm")
    region = np.asarray(region, dtype=bool)
    nodule = np.asarray(nodule, dtype=bool)
    if not region.any():
        raise ValueError("region is empty: it has no voxel to look for a structure in")
    if exclude is None:
        exclude = nodule
    elif np.shape(exclude) != shape:
        raise ValueError(f"exclude must have the region's shape {shape}; received "
                         f"{np.shape(exclude)}")
    if distance_mm is not None:
        distance_mm = check_distance(distance_mm, nodule)
    attribution = np.asarray(attribution, dtype=np.float64)
    return (region, np.asarray(hu), np.asarray(lung, dtype=bool), nodule, exclude, distance_mm,
            attribution, spacing)


def _describe_structure(comp, hu, nodule, spacing, distance_mm, *, share) -> AttendedStructure:
    """Volume, density, gap, radial alignment and elongation of the structure *comp*."""
    coords = np.argwhere(comp) * spacing
    centre = coords.mean(axis=0)
    eigval, eigvec = solid_moments(coords, spacing)
    elong = float(math.sqrt(eigval[-1] / eigval[0])) if len(coords) > 1 else 1.0

    gap = radial = math.nan
    if nodule.any():
        dist = distance_to_mask_mm(nodule, spacing) if distance_mm is None else distance_mm
        gap = float(dist[comp].min())
        away = centre - np.argwhere(nodule).mean(axis=0) * spacing
        norm = float(np.linalg.norm(away))
        if norm > 0 and len(coords) >= _MIN_AXIS_VOXELS:
            radial = float(abs(eigvec[:, -1] @ away) / norm)
    values = np.asarray(hu)[comp]
    return AttendedStructure(
        volume_mm3=float(comp.sum() * np.prod(spacing)),
        median_hu=float(np.median(values)),
        max_hu=float(values.max()),
        gap_mm=gap,
        radial=radial,
        elongation=elong,
        attribution_share=share,
    )
