"""Anatomical descriptors of an off-mask attention region, in words a clinician can use.

An off-mask region (:mod:`discovery.regions.offmask`) is a boolean mask on a scan-grid crop next to
a nodule.  :func:`lung_mask` finds the lung field of the whole scan; :func:`region_descriptors`
measures a region against it and the CT density and names its relation to the lung
(:data:`RELATIONS`) by :func:`classify_relation`; :func:`elongation` is the shape measure;
:func:`offset_lps_mm`, :func:`direction_words` and :func:`describe_region` turn a grid
offset into patient-frame words and a one-line description.

Conventions: arrays are ``(z, y, x)``; ``spacing_mm`` is ``(dz, dy, dx)``; ``affine`` maps
``[z, y, x, 1]`` to patient LPS mm (+x Left, +y Posterior, +z Superior), see
:mod:`data_tools.volume`.  Distances are between voxel centres, in mm.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from data_tools.checks import check_nonneg, check_spacing
from discovery.parallel import thread_map
from discovery.regions.morphology import close_ball

__all__ = [
    "AT_CENTRE",
    "DENSITY_BANDS",
    "RELATIONS",
    "RegionAnatomy",
    "classify_relation",
    "lung_components",
    "describe_region",
    "direction_words",
    "elongation",
    "lung_mask",
    "offset_lps_mm",
    "region_descriptors",
    "solid_moments",
]

#: Every relation :func:`classify_relation` can return, in the order its rule tries them.
RELATIONS = ("outside lung", "pleura-adjacent", "vessel-like", "inside lung")

#: ``(words, lower HU inclusive, upper HU exclusive)`` used by :func:`describe_region`.
DENSITY_BANDS = (
    ("lung/air density", -math.inf, -500.0),
    ("fat density", -500.0, -30.0),
    ("soft-tissue density", -30.0, 150.0),
    ("calcified density", 150.0, 1200.0),
    ("metal-bright density", 1200.0, math.inf),
)

#: What :func:`direction_words` returns for a zero offset.
AT_CENTRE = "at the nodule centre"

#: Slack (mm) on distance comparisons, as in :mod:`discovery.align.metrics`.
DISTANCE_SLACK_MM = 1e-6
#: Offsets shorter than this (mm) count as zero in :func:`direction_words`.
_ZERO_OFFSET_MM = 1e-9
FULL_26 = np.ones((3, 3, 3), dtype=bool)


# --------------------------------------------------------------------------- validation


def _check_array(arr, name: str, *, mask: bool) -> np.ndarray:
    """3-D bool array (``mask``: bool or integer, nonzero = inside) or finite float64."""
    arr = np.asarray(arr)
    if arr.ndim != 3:
        raise ValueError(f"{name} must be a 3-D (z, y, x) array; received shape {arr.shape}")
    kinds, what = ("biu", "bool or integer (nonzero = inside)") if mask else ("iuf", "real")
    if arr.dtype.kind not in kinds:
        raise ValueError(f"{name} must be {what}; received dtype {arr.dtype}")
    if mask:
        return arr.astype(bool, copy=False)
    arr = arr.astype(np.float64, copy=False)
    if not np.all(np.isfinite(arr)):
        n_bad = int(np.count_nonzero(~np.isfinite(arr)))
        raise ValueError(f"{name} must be finite; received {n_bad} NaN or infinite voxel(s)")
    return arr


def _check_volume(arr, name: str) -> np.ndarray:
    """A 3-D real array checked for NaN / infinity slice by slice and returned as it is
    (float32 stays float32: a whole scan in float64 would be twice its size again)."""
    arr = np.asarray(arr)
    if arr.ndim != 3:
        raise ValueError(f"{name} must be a 3-D (z, y, x) array; received shape {arr.shape}")
    if arr.dtype.kind not in "iuf":
        raise ValueError(f"{name} must be real; received dtype {arr.dtype}")
    if arr.dtype.kind == "f":
        n_bad = sum(int(np.count_nonzero(~np.isfinite(arr[k]))) for k in range(arr.shape[0]))
        if n_bad:
            raise ValueError(f"{name} must be finite; received {n_bad} NaN or infinite voxel(s)")
    return arr


def _check_finite(value, name: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = math.nan
    if not math.isfinite(v):
        raise ValueError(f"{name} must be a finite number; received {value!r}")
    return v


def _check_vec3(value, name: str) -> np.ndarray:
    try:
        v = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        v = np.full(1, np.nan)
    if v.shape != (3,) or not np.all(np.isfinite(v)):
        raise ValueError(f"{name} must be 3 finite floats; received {value!r}")
    return v


# --------------------------------------------------------------------------- lung field


def lung_mask(hu, *, spacing_mm, threshold_hu: float = -400.0, min_volume_ml: float = 20.0,
              fill_radius_mm: float = 4.0, within=None, fill_margin_mm: float = 20.0,
              components=None, threads: int = 1) -> np.ndarray:
    """Lung field of a chest CT: the lungs with everything they enclose filled in.

    1. Air-like voxels ``hu < threshold_hu``, split into 6-connected components (faces
       only, so outside air touching a lung through a voxel edge or corner stays apart).
    2. Components touching the in-plane border (planes ``y = 0``, ``y = -1``, ``x = 0``,
       ``x = -1``) are air outside the body and are dropped; the first and last slices are
       not border (lungs are often cut there).  Components smaller than ``min_volume_ml``
       (voxel count x ``dz * dy * dx``) are dropped.
    3. A 3-D binary closing with the physical ball ``(dz*i)² + (dy*j)² + (dx*k)² <= r²``,
       ``r = fill_radius_mm`` (:func:`discovery.regions.morphology.close_ball`, exactly
       the closing two Euclidean distance transforms give, on the lungs' bounding box
       padded by ``r``), then per-axial-slice hole filling.

    Parameters
    ----------
    hu : ndarray, shape (z, y, x)
        Whole chest CT in HU (finite), with air outside the body along the in-plane border
        as in any full-field-of-view scan.
    spacing_mm : sequence of 3 floats
        Voxel size ``(dz, dy, dx)`` in mm.
    threshold_hu : float, optional
        Voxels strictly below it are air-like.
    min_volume_ml : float, optional
        Smallest component kept (1 ml = 1000 mm³).
    fill_radius_mm : float, optional
        Radius (mm) of the closing ball; 0 skips the closing (holes are still filled).
    within : sequence of (slice, slice, slice), optional
        Boxes where the lung field is needed (the analysed ROIs; default: everywhere).
        Step 3 then runs only on each box grown by ``2 * fill_radius_mm`` (the closing in
        the box is the global one) and, in-plane, by ``fill_margin_mm`` more; voxels outside
        every box are False.  A hole whose enclosure leaves the grown box is not filled.
    fill_margin_mm : float, optional
        In-plane context for the hole filling with *within*.
    components : ndarray of bool, shape (z, y, x), optional
        :func:`lung_components` of the same *hu* and settings (steps 1-2 are then skipped).
    threads : int, optional
        For steps 1-2 (:func:`lung_components`) and the boxes of *within*, that many at
        once; the result does not depend on it.

    Returns
    -------
    ndarray of bool, shape (z, y, x)
        The lung field.  It *includes* vessels, airway walls and nodules inside the lungs
        (holes in the air mask), and the trachea and bronchi connected to the lungs.  A
        volume with no air but outside air (for example all soft tissue) gives all False.

    Notes
    -----
    Lungs cut by the in-plane field of view touch the border and are lost.  Air pockets
    outside the lungs larger than ``min_volume_ml`` (stomach gas on low slices) are kept."""
    hu = _check_volume(hu, "hu")
    spacing = check_spacing(spacing_mm)
    threshold_hu = _check_finite(threshold_hu, "threshold_hu")
    min_volume_ml = check_nonneg(min_volume_ml, "min_volume_ml")
    radius = check_nonneg(fill_radius_mm, "fill_radius_mm")
    margin = check_nonneg(fill_margin_mm, "fill_margin_mm")

    out = np.zeros(hu.shape, dtype=bool)
    lungs = _lung_air(hu, spacing, threshold_hu, min_volume_ml, components, threads)
    if not lungs.any():
        return out
    if within is None:
        box = ndimage.find_objects(lungs.astype(np.int8))[0]
        out[box] = _close_and_fill(lungs, box, spacing, radius)
        return out
    # each box's field on a thread (boxes may overlap: they are ORed in afterwards, in order)
    for found in thread_map(lambda box: _fill_box(lungs, box, spacing, radius, margin),
                            within, threads=threads):
        if found is not None:
            out[found[0]] |= found[1]
    return out


def _fill_box(lungs, box, spacing, radius, margin):
    """Step 3 of :func:`lung_mask` inside one *box* (clipped to the scan), on a context grown
    by ``2 * radius`` (plus *margin* in-plane): ``(box, field inside it)``, None for an empty
    box."""
    box = tuple(slice(max(0, s.start), min(n, s.stop)) for s, n in zip(box, lungs.shape))
    if any(s.stop <= s.start for s in box):
        return None
    grow = [math.ceil(2 * radius / sp) + 1 for sp in spacing]
    grow[1] += math.ceil(margin / spacing[1])
    grow[2] += math.ceil(margin / spacing[2])
    context = tuple(slice(max(0, s.start - g), min(n, s.stop + g))
                    for s, g, n in zip(box, grow, lungs.shape))
    field = _close_and_fill(lungs, context, spacing, radius)
    inner = tuple(slice(b.start - c.start, b.stop - c.start) for b, c in zip(box, context))
    return box, field[inner]


def _lung_air(hu, spacing, threshold_hu, min_volume_ml, components, threads) -> np.ndarray:
    """Steps 1-2 of :func:`lung_mask`: *components* checked against *hu*, or computed."""
    if components is None:
        return lung_components(hu, spacing_mm=spacing, threshold_hu=threshold_hu,
                               min_volume_ml=min_volume_ml, threads=threads)
    lungs = np.asarray(components, dtype=bool)
    if lungs.shape != hu.shape:
        raise ValueError(f"components must have the shape of hu {hu.shape}; received "
                         f"{lungs.shape}")
    return lungs


def lung_components(hu, *, spacing_mm, threshold_hu: float = -400.0,
                    min_volume_ml: float = 20.0, threads: int = 1) -> np.ndarray:
    """Steps 1-2 of :func:`lung_mask`: the lungs' air, before closing and hole filling.

    Parameters
    ----------
    hu, spacing_mm, threshold_hu, min_volume_ml
        As for :func:`lung_mask`.
    threads : int, optional
        Label that many slabs of axial slices at once (SciPy releases the GIL while it
        labels) and join the components across the slabs' seams; the result does not
        depend on it.

    Returns
    -------
    ndarray of bool, shape (z, y, x)
    """
    spacing = check_spacing(spacing_mm)
    hu = np.asarray(hu)
    air = hu < threshold_hu
    cuts = np.linspace(0, air.shape[0], max(1, min(int(threads), air.shape[0])) + 1).astype(int)
    slabs = [slice(a, b) for a, b in zip(cuts[:-1], cuts[1:])]
    parts = thread_map(lambda s: _label_6(air[s]), slabs, threads=threads)
    del air
    offsets = np.cumsum([0] + [n for _, n in parts])       # slab i's label k is offsets[i] + k
    root = _join_seams([labels for labels, _ in parts], offsets)
    # A component touches the in-plane border exactly when one of its voxels lies on it;
    # the sizes are counted a slab at a time (a whole-volume bincount would first copy the
    # labels to 64-bit integers, 600 MiB on a full-size scan).
    sizes = np.zeros(int(offsets[-1]) + 1, dtype=np.int64)
    counted = thread_map(lambda part: _component_sizes(*part), parts, threads=threads)
    for i, count in enumerate(counted):
        sizes[offsets[i] + 1:offsets[i + 1] + 1] = count[1:]
    sizes = np.bincount(root, weights=sizes, minlength=len(root))   # per joined component
    min_voxels = 1000.0 * min_volume_ml / float(np.prod(spacing))
    keep = sizes >= min_voxels
    keep[0] = False
    for i, (labels, _) in enumerate(parts):
        for edge in (labels[:, 0, :], labels[:, -1, :], labels[:, :, 0], labels[:, :, -1]):
            on_edge = np.unique(edge)
            keep[root[offsets[i] + on_edge[on_edge > 0]]] = False
    keep = keep[root]
    out = np.empty(hu.shape, dtype=bool)

    def fill(i: int) -> None:
        lut = np.concatenate([[False], keep[offsets[i] + 1:offsets[i + 1] + 1]])
        labels, z0 = parts[i][0], slabs[i].start
        kept = np.flatnonzero(lut).astype(labels.dtype)
        if not len(kept):
            out[z0:z0 + len(labels)] = False
            return
        for k in range(0, len(labels), 8):               # no slab-sized temporary
            chunk = labels[k:k + 8]
            dest = out[z0 + k:z0 + k + len(chunk)]
            if len(kept) <= 4:         # the lungs: one to a few labels; comparing is faster
                np.equal(chunk, kept[0], out=dest)
                for label in kept[1:]:
                    dest |= chunk == label
            else:
                np.take(lut, chunk, out=dest)

    thread_map(fill, range(len(parts)), threads=threads)
    return out


def _join_seams(labels: list[np.ndarray], offsets: np.ndarray) -> np.ndarray:
    """Root label of every global label ``0..offsets[-1]`` once the components of adjacent
    slabs that touch across their seam (z-neighbours, as 6-connectivity has) are joined;
    0 stays 0 and every root is the smallest label of its component."""
    parent = np.arange(int(offsets[-1]) + 1)

    def find(k: int) -> int:
        while parent[k] != k:
            parent[k] = parent[parent[k]]
            k = int(parent[k])
        return k

    span = len(parent)                                     # pairs as one 64-bit key
    for i in range(1, len(labels)):
        below, above = labels[i - 1][-1], labels[i][0]
        both = (below > 0) & (above > 0)
        keys = np.unique((below[both].astype(np.int64) + offsets[i - 1]) * span
                         + above[both].astype(np.int64) + offsets[i])   # a 1-D unique: fast
        for a, b in zip(*np.divmod(keys, span)):
            ra, rb = find(int(a)), find(int(b))
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)
    return np.array([find(k) for k in range(len(parent))], dtype=np.int64)


def _component_sizes(labels: np.ndarray, n: int, *, slab_voxels: int = 1 << 22) -> np.ndarray:
    """Voxel count of each label ``0..n`` of *labels*, counted a few slices at a time."""
    sizes = np.zeros(n + 1, dtype=np.int64)
    step = max(1, slab_voxels // max(1, labels[0].size))
    for k in range(0, labels.shape[0], step):
        sizes += np.bincount(labels[k:k + step].ravel(), minlength=n + 1)
    return sizes


def _label_6(binary: np.ndarray) -> tuple[np.ndarray, int]:
    """6-connected components of *binary* (scipy's default structure): uint16 labels when
    there are at most 65,535 of them (half the memory of scipy's int32, 150 MiB less on a
    512 x 512 x 300 scan, and faster), else int32."""
    out = np.empty(binary.shape, dtype=np.uint16)
    try:
        n = ndimage.label(binary, output=out)
    except RuntimeError:  # "insufficient bit-depth": more components than uint16 can count
        del out
        return ndimage.label(binary)
    return out, int(n)


def _close_and_fill(lungs, box, spacing, radius) -> np.ndarray:
    """Closing (exact ball of *radius* mm) and per-slice hole filling of ``lungs[box]``;
    zero padding outside *box* (the lungs' bounding box, or a context grown so that the
    padding's effect stays outside the part used)."""
    pad = [math.ceil(radius / s) + 1 for s in spacing]
    crop = np.pad(lungs[box], [(p, p) for p in pad])
    if radius > 0:
        crop = close_ball(crop, spacing_mm=spacing, radius_mm=radius + DISTANCE_SLACK_MM)
    in_plane = np.zeros((3, 3, 3), dtype=bool)
    in_plane[1] = ndimage.generate_binary_structure(2, 1)  # no z neighbours: per slice
    crop = ndimage.binary_fill_holes(crop, structure=in_plane)
    return crop[tuple(slice(p, p + s.stop - s.start) for p, s in zip(pad, box))]


# --------------------------------------------------------------------------- shape


def elongation(mask, *, spacing_mm) -> float:
    """``sqrt(largest / smallest eigenvalue)`` of a voxel set's second moments in mm.

    The matrix is the population covariance (``ddof=0``) of the voxel-centre coordinates
    ``(z*dz, y*dy, x*dx)`` plus ``diag(dz², dy², dx²) / 12`` (the variance of a point
    uniform over one voxel): the exact covariance of the solid union of the voxel boxes.
    A one-voxel-thick line therefore stays finite: ``L`` voxels along x at spacing
    ``(dz, dy, dx)`` give ``L * dx / min(dz, dy)`` (variance ``L² dx² / 12`` along it);
    a cube of ``n³`` voxels at spacing ``(3, 1, 1)`` gives exactly 3; a ball is close to 1.

    Parameters
    ----------
    mask : ndarray of bool or int, shape (z, y, x)
        Non-empty; nonzero voxels are in the set (connectivity is not checked).
    spacing_mm : sequence of 3 floats
        Voxel size ``(dz, dy, dx)`` in mm.

    Returns
    -------
    float
        ``>= 1``; 1.0 for a single voxel (no shape information, whatever the spacing).
    """
    mask = _check_array(mask, "mask", mask=True)
    spacing = np.asarray(check_spacing(spacing_mm))
    idx = np.nonzero(mask)
    if idx[0].size == 0:
        raise ValueError("mask is empty; elongation needs at least one voxel")
    if idx[0].size == 1:
        return 1.0
    eig, _ = solid_moments(np.stack(idx, axis=1) * spacing, spacing)
    return float(math.sqrt(eig[-1] / eig[0]))


def solid_moments(coords_mm: np.ndarray, spacing) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (ascending, mm²) and eigenvectors (columns) of the second moments of the
    solid union of voxel boxes centred at ``coords_mm`` (shape (N, 3), N >= 1): the
    population covariance of the centres plus ``diag(spacing²) / 12`` (see
    :func:`elongation`, which is ``sqrt(eig[-1] / eig[0])`` of it)."""
    spacing = np.asarray(spacing, dtype=float)
    cov = (np.cov(coords_mm, rowvar=False, bias=True) if len(coords_mm) > 1
           else np.zeros((3, 3)))
    return np.linalg.eigh(cov + np.diag(spacing**2 / 12.0))  # all eigenvalues > 0


# --------------------------------------------------------------------------- region


@dataclass(frozen=True)
class RegionAnatomy:
    """A region's place relative to the lung and its density (see :func:`region_descriptors`).

    Attributes
    ----------
    lung_fraction : float
        Share of region voxels inside the lung field, in [0, 1].
    pleura_distance_mm : float
        Smallest distance (mm) from a region voxel inside the lung to the nearest non-lung
        voxel of the crop; NaN if no region voxel is in the lung; inf if the crop is all lung.
    dense_fraction : float
        Share of region voxels with ``hu >= dense_hu``, in [0, 1].
    dense_elongation : float
        :func:`elongation` of the largest 26-connected component of dense region voxels;
        NaN when that component has fewer than 3 voxels (or there is no dense voxel).
    elongation : float
        :func:`elongation` of the whole region.
    hu_mean, hu_median, hu_p90, hu_max, hu_std : float
        HU over the region; ``hu_p90`` is :func:`numpy.percentile` (linear interpolation)
        at 90, ``hu_std`` the population standard deviation (``ddof=0``).
    relation : str
        One of :data:`RELATIONS`, by :func:`classify_relation`.
    """

    lung_fraction: float
    pleura_distance_mm: float
    dense_fraction: float
    dense_elongation: float
    elongation: float
    hu_mean: float
    hu_median: float
    hu_p90: float
    hu_max: float
    hu_std: float
    relation: str


def classify_relation(
    lung_fraction, pleura_distance_mm, dense_fraction, dense_elongation, hu_p90, *,
    pleura_mm: float = 3.0, min_lung_fraction: float = 0.5,
    vessel_dense_fraction: float = 0.05, vessel_elongation: float = 3.0,
    vessel_max_p90_hu: float = 300.0,
) -> str:
    """A region's relation to the lung; the first rule that matches wins.

    1. ``lung_fraction < min_lung_fraction`` -> ``"outside lung"``.
    2. ``pleura_distance_mm <= pleura_mm`` -> ``"pleura-adjacent"``.
    3. ``dense_fraction >= vessel_dense_fraction`` and ``dense_elongation >=
       vessel_elongation`` and ``hu_p90 < vessel_max_p90_hu`` -> ``"vessel-like"`` (a
       tubular soft-tissue structure, not a calcification or metal).
    4. Otherwise ``"inside lung"``.

    The measurements are those of :class:`RegionAnatomy`; a NaN one never satisfies its
    rule.  Returns one of :data:`RELATIONS`.
    """
    for name, value in (("pleura_mm", pleura_mm), ("min_lung_fraction", min_lung_fraction),
                        ("vessel_dense_fraction", vessel_dense_fraction),
                        ("vessel_elongation", vessel_elongation),
                        ("vessel_max_p90_hu", vessel_max_p90_hu)):
        _check_finite(value, name)
    if lung_fraction < min_lung_fraction:
        return RELATIONS[0]
    if pleura_distance_mm <= pleura_mm:
        return RELATIONS[1]
    if (dense_fraction >= vessel_dense_fraction and dense_elongation >= vessel_elongation
            and hu_p90 < vessel_max_p90_hu):
        return RELATIONS[2]
    return RELATIONS[3]


def region_descriptors(
    region, hu, lung, *, spacing_mm, dense_hu: float = -400.0,
    pleura_mm: float = 3.0, min_lung_fraction: float = 0.5,
    vessel_dense_fraction: float = 0.05, vessel_elongation: float = 3.0,
    vessel_max_p90_hu: float = 300.0,
) -> RegionAnatomy:
    """Describe one region of a crop against the lung field and the CT density.

    Parameters
    ----------
    region : ndarray of bool or int, shape (z, y, x)
        The region (nonzero voxels); must be non-empty.
    hu : ndarray, shape (z, y, x)
        CT crop in HU (finite) on the same grid.
    lung : ndarray of bool or int, shape (z, y, x)
        Lung field (:func:`lung_mask` of the whole scan) cropped the same way.
    spacing_mm : sequence of 3 floats
        Voxel size ``(dz, dy, dx)`` in mm.
    dense_hu : float, optional
        Region voxels with ``hu >= dense_hu`` are "dense" (soft tissue or denser).
    pleura_mm, min_lung_fraction, vessel_dense_fraction, vessel_elongation, \
vessel_max_p90_hu : float, optional
        Thresholds of the relation rule, passed to :func:`classify_relation`.

    Returns
    -------
    RegionAnatomy

    Notes
    -----
    ``pleura_distance_mm`` comes from :func:`scipy.ndimage.distance_transform_edt` of
    ``lung`` with ``sampling=spacing_mm``, which only sees the crop's own non-lung voxels:
    the crop border is not a boundary, so the distance is exact when the nearest pleura lies
    in the crop and an overestimate otherwise; ``inf`` when the crop is all lung.
    """
    region, hu, lung = _check_region_arrays(region, hu, lung)
    spacing = check_spacing(spacing_mm)
    dense_hu = _check_finite(dense_hu, "dense_hu")
    n = int(np.count_nonzero(region))
    if n == 0:
        raise ValueError("region is empty: it has no nonzero voxel to describe")

    in_lung = region & lung
    n_in_lung = int(np.count_nonzero(in_lung))
    pleura = _pleura_distance(in_lung, n_in_lung, lung, spacing)
    dense = region & (hu >= dense_hu)
    dense_elong = _dense_elongation(dense, spacing)

    h = hu[region]
    stats = {
        "lung_fraction": n_in_lung / n,
        "pleura_distance_mm": pleura,
        "dense_fraction": int(np.count_nonzero(dense)) / n,
        "dense_elongation": dense_elong,
        "elongation": elongation(region, spacing_mm=spacing),
        "hu_mean": float(h.mean()),
        "hu_median": float(np.median(h)),
        "hu_p90": float(np.percentile(h, 90)),
        "hu_max": float(h.max()),
        "hu_std": float(h.std()),
    }
    keys = ("lung_fraction", "pleura_distance_mm", "dense_fraction", "dense_elongation", "hu_p90")
    relation = classify_relation(
        *(stats[k] for k in keys), pleura_mm=pleura_mm, min_lung_fraction=min_lung_fraction,
        vessel_dense_fraction=vessel_dense_fraction, vessel_elongation=vessel_elongation,
        vessel_max_p90_hu=vessel_max_p90_hu,
    )
    return RegionAnatomy(**stats, relation=relation)


def _check_region_arrays(region, hu, lung) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """*region* and *lung* as bool, *hu* as finite float64, all of one 3-D shape."""
    region = _check_array(region, "region", mask=True)
    hu = _check_array(hu, "hu", mask=False)
    lung = _check_array(lung, "lung", mask=True)
    if not region.shape == hu.shape == lung.shape:
        raise ValueError(
            "region, hu and lung must have the same (z, y, x) shape; received region "
            f"{region.shape}, hu {hu.shape} and lung {lung.shape}"
        )
    return region, hu, lung


def _pleura_distance(in_lung, n_in_lung: int, lung, spacing) -> float:
    """Smallest distance (mm) from a voxel of *in_lung* to a non-lung voxel of the crop:
    NaN without such a voxel, inf for an all-lung crop."""
    if n_in_lung == 0:
        return math.nan
    if lung.all():
        return math.inf  # no boundary in the crop (the EDT would return nonsense)
    return float(ndimage.distance_transform_edt(lung, sampling=spacing)[in_lung].min())


def _dense_elongation(dense, spacing) -> float:
    """:func:`elongation` of the largest 26-connected component of *dense*; NaN when it has
    fewer than 3 voxels (or there is none)."""
    comp, n_comp = ndimage.label(dense, structure=FULL_26)
    if n_comp:
        sizes = np.bincount(comp.ravel())
        largest = int(sizes[1:].argmax()) + 1
        if sizes[largest] >= 3:
            return elongation(comp == largest, spacing_mm=spacing)
    return math.nan


# --------------------------------------------------------------------------- direction


def offset_lps_mm(offset_zyx_mm, affine) -> np.ndarray:
    """An offset along the grid axes as a patient LPS vector.

    Parameters
    ----------
    offset_zyx_mm : sequence of 3 floats
        ``(dz, dy, dx)`` in mm along the slice, row and column axes (for example
        :attr:`discovery.regions.offmask.OffMaskRegion.offset_mm`).
    affine : ndarray, shape (4, 4)
        ``[z, y, x, 1]`` -> LPS mm; only the direction cosines (the columns of
        ``affine[:3, :3]`` divided by their norms) are used.

    Returns
    -------
    ndarray, shape (3,)
        ``(L, P, S)`` in mm; ``(dx, dy, dz)`` for an axis-aligned affine
        (:func:`data_tools.volume.affine_from_spacing`).
    """
    off = _check_vec3(offset_zyx_mm, "offset_zyx_mm")
    aff = np.asarray(affine, dtype=float)
    if aff.shape != (4, 4) or not np.all(np.isfinite(aff)):
        raise ValueError(f"affine must be a finite 4x4 matrix; received shape {aff.shape}")
    norms = np.linalg.norm(aff[:3, :3], axis=0)
    if np.any(norms == 0):
        raise ValueError(f"affine has a zero-length axis; column norms {norms.tolist()}")
    return (aff[:3, :3] / norms) @ off


def direction_words(
    offset_lps_mm, *, nodule_lps_mm, midline_x_mm: float, min_fraction: float = 0.4
) -> str:
    """Plain-language direction of an LPS offset from a nodule, for example
    ``"lateral and posterior"``.

    * x: ``"lateral"`` when the offset points away from the midline (sign of ``offset_x``
      equals sign of ``nodule_x - midline_x_mm``), else ``"medial"``; for a nodule exactly
      on the midline, ``"left"`` (+x, the patient's left) or ``"right"``.
    * y: ``"posterior"`` (+y) or ``"anterior"``; z: ``"superior"`` (+z) or ``"inferior"``.

    An axis is named when ``|component| >= min_fraction * norm`` (the largest always is),
    by decreasing ``|component|`` (ties: x, y, z), joined as ``"a"``, ``"a and b"`` or
    ``"a, b and c"``.  An offset shorter than 1e-9 mm gives :data:`AT_CENTRE`.

    Parameters
    ----------
    offset_lps_mm : sequence of 3 floats
        ``(L, P, S)`` offset in mm from the nodule centre (:func:`offset_lps_mm`).
    nodule_lps_mm : sequence of 3 floats
        Nodule centre, LPS mm.
    midline_x_mm : float
        LPS x (mm) of the patient's midline (for example the body's centre in x).
    min_fraction : float, optional
        In (0, 1].
    """
    off = _check_vec3(offset_lps_mm, "offset_lps_mm")
    nodule = _check_vec3(nodule_lps_mm, "nodule_lps_mm")
    side = nodule[0] - _check_finite(midline_x_mm, "midline_x_mm")
    min_fraction = _check_finite(min_fraction, "min_fraction")
    if not 0.0 < min_fraction <= 1.0:
        raise ValueError(f"min_fraction must be in (0, 1]; received {min_fraction!r}")
    norm = float(np.linalg.norm(off))
    if norm < _ZERO_OFFSET_MM:
        return AT_CENTRE

    x_word = ("left" if off[0] > 0 else "right") if side == 0 else (
        "lateral" if (off[0] > 0) == (side > 0) else "medial")
    words = (x_word, "posterior" if off[1] > 0 else "anterior",
             "superior" if off[2] > 0 else "inferior")
    mag = np.abs(off)
    order = sorted(range(3), key=lambda i: -mag[i])  # stable: ties keep x, y, z
    chosen = [words[i] for i in order if mag[i] >= min_fraction * norm] or [words[order[0]]]
    return chosen[0] if len(chosen) == 1 else ", ".join(chosen[:-1]) + " and " + chosen[-1]


def _round_half_away(x: float) -> int:
    r = math.floor(abs(x) + 0.5)
    return -r if x < 0 else r


def describe_region(distance_mm, direction, relation, hu_mean) -> str:
    """One line for a clinician, for example ``"pleura-adjacent, about 12 mm lateral of the
    nodule, soft-tissue density (mean -20 HU)"``.

    Parameters
    ----------
    distance_mm : float
        Distance (mm, >= 0) from the nodule centre; rounded to whole mm, halves up.
    direction : str
        From :func:`direction_words`; :data:`AT_CENTRE` replaces the "about ... of the
        nodule" part.
    relation : str
        One of :data:`RELATIONS`.
    hu_mean : float
        Mean HU of the region, named by :data:`DENSITY_BANDS` and rounded to whole HU
        (halves away from zero).
    """
    distance = check_nonneg(distance_mm, "distance_mm")
    hu = _check_finite(hu_mean, "hu_mean")
    if not isinstance(direction, str) or not direction.strip():
        raise ValueError(f"direction must be a non-empty string; received {direction!r}")
    if relation not in RELATIONS:
        raise ValueError(f"relation must be one of {RELATIONS}; received {relation!r}")
    where = AT_CENTRE if direction == AT_CENTRE else (
        f"about {_round_half_away(distance)} mm {direction} of the nodule")
    density = next(words for words, lo, hi in DENSITY_BANDS if lo <= hu < hi)
    return f"{relation}, {where}, {density} (mean {_round_half_away(hu)} HU)"
