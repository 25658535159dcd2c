"""Attention that falls off the annotated nodule, collected into regions.

A nodule's attribution map is thresholded relative to its own peak; voxels within a
physical margin of the mask are removed (they are "looking at the nodule"); what remains is
split into connected components, small ones are dropped, and each survivor is described by
its size, share of attribution, position relative to the nodule and CT density.  The
descriptors feed cohort-level clustering in :mod:`discovery.patterns.clustering`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np
import pandas as pd
from scipy import ndimage

from data_tools.checks import check_nonneg, check_spacing
from discovery.align.metrics import check_map_and_mask
from discovery.schema import SURROUNDINGS_MM

__all__ = [
    "OffMaskSettings",
    "OffMaskRegion",
    "extract_offmask_regions",
    "regions_table",
    "REGION_COLUMNS",
]

_CONNECTIVITY_RANK = {6: 1, 18: 2, 26: 3}

#: Columns of :func:`regions_table`, in order.
REGION_COLUMNS = [
    "case_id",
    "nodule_id",
    "region_index",
    "n_voxels",
    "volume_mm3",
    "mass_share",
    "peak_value",
    "centroid_z",
    "centroid_y",
    "centroid_x",
    "offset_z_mm",
    "offset_y_mm",
    "offset_x_mm",
    "offset_distance_mm",
    "distance_to_mask_mm",
    "mean_hu",
    "max_hu",
    "std_hu",
]

#: Slack (mm) on the margin comparison, as in :mod:`discovery.align.metrics`.
DISTANCE_SLACK_MM = 1e-6


@dataclass(frozen=True)
class OffMaskSettings:
    """How off-mask regions are defined.

    A region is a connected component (``connectivity``-neighbourhood) of voxels whose
    attribution is ``>= rel_threshold * max(attr)`` (the nodule's own attribution peak)
    and whose centre lies *more than* ``margin_mm`` from every mask voxel centre (outside
    the mask dilated by ``margin_mm``).  Components smaller than ``min_volume_mm3`` are
    dropped.

    Attributes
    ----------
    margin_mm : float
        Physical dilation of the mask (mm) inside which attention counts as on the nodule.
        By default :data:`discovery.schema.SURROUNDINGS_MM`, the reach of the reliance on
        the nodule's surroundings (:mod:`discovery.model.reliance`), which measures what
        lies inside it.  (The verdict's ``near_margin_mm`` is wider, 10 mm.)
    rel_threshold : float
        In (0, 1]; fraction of the map's own peak a voxel must reach.
    min_volume_mm3 : float
        Smallest region kept (mm³).
    connectivity : int
        6 (faces), 18 (faces and edges) or 26 (faces, edges and corners).
    """

    margin_mm: float = SURROUNDINGS_MM
    rel_threshold: float = 0.5
    min_volume_mm3: float = 15.0
    connectivity: int = 26

    def __post_init__(self):
        check_nonneg(self.margin_mm, "margin_mm")
        check_nonneg(self.min_volume_mm3, "min_volume_mm3")
        rt = check_nonneg(self.rel_threshold, "rel_threshold")
        if not (0.0 < rt <= 1.0):
            raise ValueError(f"rel_threshold must be in (0, 1]; received {self.rel_threshold!r}")
        if self.connectivity not in _CONNECTIVITY_RANK:
            raise ValueError(
                f"connectivity must be 6, 18 or 26; received {self.connectivity!r}"
            )


@dataclass(frozen=True)
class OffMaskRegion:
    """One off-mask region of attention.

    Attributes
    ----------
    region_index : int
        1..R, by descending ``mass_share``; the region's value in the label array.
    n_voxels : int
        Number of voxels.
    volume_mm3 : float
        ``n_voxels * dz * dy * dx``.
    mass_share : float
        Region's attribution sum / the map's total attribution sum, in (0, 1].
    peak_value : float
        Largest attribution in the region (units of ``attr``).
    centroid_zyx : tuple of 3 floats
        Attribution-weighted centroid, voxel units ``(z, y, x)`` on the input grid.
    offset_mm : tuple of 3 floats
        ``(dz, dy, dx)`` in mm from ``nodule_center_zyx`` to the centroid.
    offset_distance_mm : float
        Euclidean norm of ``offset_mm``.
    distance_to_mask_mm : float
        Smallest distance (mm, voxel centre to voxel centre) from a region voxel to a mask
        voxel; always ``> margin_mm``.  NaN when the mask is empty.
    mean_hu, max_hu, std_hu : float
        CT density over the region's voxels (HU); ``std_hu`` is the population
        standard deviation (``ddof=0``).
    """

    region_index: int
    n_voxels: int
    volume_mm3: float
    mass_share: float
    peak_value: float
    centroid_zyx: tuple[float, float, float]
    offset_mm: tuple[float, float, float]
    offset_distance_mm: float
    distance_to_mask_mm: float
    mean_hu: float
    max_hu: float
    std_hu: float


def _check_center(nodule_center_zyx) -> np.ndarray:
    msg = f"nodule_center_zyx must be 3 finite floats (voxel units); received {nodule_center_zyx!r}"
    try:
        c = np.asarray(nodule_center_zyx, dtype=float)
    except (TypeError, ValueError):
        raise ValueError(msg) from None
    if c.shape != (3,) or not np.all(np.isfinite(c)):
        raise ValueError(msg)
    return c


def extract_offmask_regions(
    attr,
    mask,
    hu,
    *,
    spacing_mm,
    nodule_center_zyx,
    settings: OffMaskSettings = OffMaskSettings(),
) -> tuple[np.ndarray, list[OffMaskRegion]]:
    """Find the connected regions of strong attribution away from the nodule.

    Parameters
    ----------
    attr : ndarray, shape (z, y, x)
        Non-negative, finite attribution magnitudes (not renormalised here).
    mask : ndarray of bool or int, shape (z, y, x)
        Annotated nodule; nonzero voxels are inside.
    hu : ndarray, shape (z, y, x)
        CT crop in Hounsfield units on the same grid.
    spacing_mm : sequence of 3 floats
        Voxel size ``(dz, dy, dx)`` in mm.
    nodule_center_zyx : sequence of 3 floats
        Nodule centre in voxel units of this grid (e.g. the mask centroid, or the crop
        centre); offsets are measured from it.
    settings : OffMaskSettings, optional
        Threshold, margin, minimum volume and connectivity.

    Returns
    -------
    labels : ndarray of int32, shape (z, y, x)
        0 outside every region; ``k`` for the region with ``region_index == k``.
    regions : list of OffMaskRegion
        Sorted by descending ``mass_share`` (ties: order of the region's first voxel in C
        order), ``region_index`` 1..R.

    Raises
    ------
    ValueError
        On shape mismatch, non-finite or negative ``attr``, non-finite ``hu``, a
        non-integer mask, or bad ``spacing_mm`` / ``nodule_center_zyx``.

    Notes
    -----
    * All-zero ``attr``: no regions (there is no peak to threshold against).
    * Empty mask: a margin around nothing excludes nothing, so *every* above-threshold
      component counts as off-mask and ``distance_to_mask_mm`` is NaN.  Callers usually
      report such a nodule as "no-mask" (see :func:`discovery.align.metrics.align`) rather than
      pool its regions with the others.
    * ``mass_share`` is relative to the whole map, so the shares of all regions sum to at
      most 1 minus the share near the mask.
    """
    attr, mask, hu, spacing_mm, center = _check_inputs(
        attr, mask, hu, spacing_mm, nodule_center_zyx, settings
    )
    labels_out = np.zeros(attr.shape, dtype=np.int32)
    total = float(attr.sum())
    if total == 0.0:
        return labels_out, []
    comp, n_comp, dist = _candidate_components(attr, mask, spacing_mm, settings)
    if n_comp == 0:
        return labels_out, []

    voxel_mm3 = float(np.prod(spacing_mm))
    counts = np.bincount(comp.ravel(), minlength=n_comp + 1)
    slices = ndimage.find_objects(comp)
    spacing = np.asarray(spacing_mm)

    found = []  # one dict of OffMaskRegion fields (plus the component label) per region
    for lab in range(1, n_comp + 1):
        n = int(counts[lab])
        volume = n * voxel_mm3
        if volume < settings.min_volume_mm3:
            continue
        found.append(
            _describe_component(
                comp, lab, slices[lab - 1], attr, hu, dist,
                n=n, volume=volume, total=total, center=center, spacing=spacing,
            )
        )
    return _rank_regions(comp, n_comp, found)


def _check_inputs(attr, mask, hu, spacing_mm, nodule_center_zyx, settings):
    """Validated ``(attr, mask, hu as float64, spacing_mm, center)`` for
    :func:`extract_offmask_regions`, or ``ValueError``."""
    attr, mask = check_map_and_mask(attr, mask)
    spacing_mm = check_spacing(spacing_mm)
    center = _check_center(nodule_center_zyx)
    if not isinstance(settings, OffMaskSettings):
        raise ValueError(f"settings must be an OffMaskSettings; received {type(settings).__name__}")
    hu = np.asarray(hu)
    if hu.shape != attr.shape:
        raise ValueError(
            "hu must have the same (z, y, x) shape as attr; "
            f"received hu {hu.shape} and attr {attr.shape}"
        )
    if hu.dtype.kind not in "iuf":
        raise ValueError(f"hu must be a real numeric array; received dtype {hu.dtype}")
    hu = hu.astype(np.float64, copy=False)
    if not np.all(np.isfinite(hu)):
        raise ValueError("hu must be finite; received NaN or infinite voxel(s)")
    return attr, mask, hu, spacing_mm, center


def _candidate_components(attr, mask, spacing_mm, settings: OffMaskSettings):
    """Connected components of the above-threshold voxels outside the margin.

    Returns ``(comp, n_comp, dist)``: the component labels, their count and the distance
    (mm) of every voxel to the mask (``None`` when the mask is empty).
    """
    peak = float(attr.max())
    if mask.any():
        dist = ndimage.distance_transform_edt(~mask, sampling=spacing_mm)
        outside = dist > settings.margin_mm + DISTANCE_SLACK_MM
    else:
        dist = None
        outside = np.ones(attr.shape, dtype=bool)
    candidate = (attr >= settings.rel_threshold * peak) & outside

    structure = ndimage.generate_binary_structure(3, _CONNECTIVITY_RANK[settings.connectivity])
    comp, n_comp = ndimage.label(candidate, structure=structure)
    return comp, n_comp, dist


def _describe_component(comp, lab, sl, attr, hu, dist, *, n, volume, total, center, spacing):
    """The :class:`OffMaskRegion` fields (plus ``label``) of component *lab* in slice *sl*."""
    inside = comp[sl] == lab
    a = attr[sl][inside]
    h = hu[sl][inside]
    idx = np.nonzero(inside)
    coords = np.stack([idx[i] + sl[i].start for i in range(3)], axis=1).astype(float)
    a_sum = float(a.sum())
    centroid = (coords * a[:, None]).sum(axis=0) / a_sum
    offset = (centroid - center) * spacing
    return {
        "label": lab,
        "n_voxels": n,
        "volume_mm3": volume,
        "mass_share": a_sum / total,
        "peak_value": float(a.max()),
        "centroid_zyx": tuple(float(v) for v in centroid),
        "offset_mm": tuple(float(v) for v in offset),
        "offset_distance_mm": float(np.linalg.norm(offset)),
        "distance_to_mask_mm": float(dist[sl][inside].min()) if dist is not None else math.nan,
        "mean_hu": float(h.mean()),
        "max_hu": float(h.max()),
        "std_hu": float(h.std()),
    }


def _rank_regions(comp, n_comp, found) -> tuple[np.ndarray, list[OffMaskRegion]]:
    """Order regions by descending mass share and relabel the components 1..R (0 elsewhere)."""
    # Stable sort: equal mass shares keep the label order (first voxel in C order).
    found.sort(key=lambda r: -r["mass_share"])
    remap = np.zeros(n_comp + 1, dtype=np.int32)
    regions = []
    for k, r in enumerate(found, start=1):
        remap[r["label"]] = k
        kept = {f: v for f, v in r.items() if f != "label"}
        regions.append(OffMaskRegion(region_index=k, **kept))
    return remap[comp], regions


def regions_table(regions, *, case_id, nodule_id) -> pd.DataFrame:
    """Flatten regions into a table, one row per region.

    Parameters
    ----------
    regions : sequence of OffMaskRegion
        As returned by :func:`extract_offmask_regions`.
    case_id : str
        Pseudonymous case identifier, repeated on every row.
    nodule_id : str or int
        Nodule identifier within the case, repeated on every row.

    Returns
    -------
    pandas.DataFrame
        Columns :data:`REGION_COLUMNS`: ``case_id``, ``nodule_id``, ``region_index``,
        ``n_voxels``, ``volume_mm3``, ``mass_share``, ``peak_value``,
        ``centroid_z/y/x`` (voxels), ``offset_z/y/x_mm``, ``offset_distance_mm``,
        ``distance_to_mask_mm``, ``mean_hu``, ``max_hu``, ``std_hu``.  An empty input gives
        an empty frame with these columns.
    """
    rows = []
    for r in regions:
        if not isinstance(r, OffMaskRegion):
            raise ValueError(f"regions must hold OffMaskRegion items; received {type(r).__name__}")
        row = {"case_id": case_id, "nodule_id": nodule_id}
        for f in fields(OffMaskRegion):
            v = getattr(r, f.name)
            if f.name == "centroid_zyx":
                row.update(centroid_z=v[0], centroid_y=v[1], centroid_x=v[2])
            elif f.name == "offset_mm":
                row.update(offset_z_mm=v[0], offset_y_mm=v[1], offset_x_mm=v[2])
            else:
                row[f.name] = v
        rows.append(row)
    df = pd.DataFrame(rows, columns=REGION_COLUMNS)
    ints = {"region_index": "int64", "n_voxels": "int64"}
    floats = {c: "float64" for c in REGION_COLUMNS[3:] if c != "n_voxels"}
    return df.astype({**ints, **floats})
