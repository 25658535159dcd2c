"""LIDC-IDRI reader annotations (XML) -> nodule label masks on a CT voxel grid.

An LIDC-IDRI scan has one XML file (root ``LidcReadMessage``) holding up to four
``readingSession`` elements, one per anonymous reader.  Tags are matched by their *local*
name, so the usual default namespace ``http://www.nih.gov``, any other namespace string, or
none at all parse the same.

Rules
-----
* **Readers** are numbered 1, 2, ... in the order of their ``readingSession`` elements.
  ``nonNodule`` marks are ignored (counted in a log line and in ``LidcScan.n_non_nodules``).
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
  ``inclusion=FALSE`` interiors (holes; the hole's own contour pixels stay in the nodule).
  Polygons are rasterised with numpy (no PIL drawing rules), so the pixels are exact.
* **Small nodules** (< 3 mm: every ROI a single point) mark exactly the one voxel of the
  point.
* **Grouping** (:func:`group_readings`): each reading gets a centroid in LPS mm (of its
  voxels, or of its matched contour points when it has no voxel).  Two readings of
  *different* readers are linked when their centroids are at most ``distance_mm`` apart;
  by default (``distance_mm=None``) the threshold is ``max(5 mm, half the larger
  equivalent-sphere diameter of the two)``.  Links are applied shortest first
  (constrained single linkage); a link that would put two readings of one reader in one
  group is skipped, so a reader contributes only its nearest reading to a group and its
  other reading forms (or joins) another group.
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
  reported for uniformity only.  Out-of-range or non-integer ratings are ignored (warning).

Privacy: ``series_uid``, SOP UIDs and ``noduleID`` are kept off reprs, messages and
outputs; a file is named only by ``file_label``.
"""

from __future__ import annotations

import hashlib
import logging
import math
import numbers
import threading
import xml.etree.ElementTree as ET
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .checks import check_int
from .errors import DataError, GeometryMismatchError, UnreadableFileError, file_label
from .volume import Mask, Volume

__all__ = [
    "CHARACTERISTICS", "LidcScan", "NoduleGroup", "ReaderNodule", "Roi", "group_readings",
    "lidc_mask", "rasterise_reader_nodule", "read_lidc_xml",
]

log = logging.getLogger(__name__)

#: XML tag -> (key stem used in ``ReaderNodule.characteristics`` and outputs, min, max).
CHARACTERISTICS: dict[str, tuple[str, int, int]] = {
    "subtlety": ("subtlety", 1, 5), "internalStructure": ("internal_structure", 1, 4),
    "calcification": ("calcification", 1, 6), "sphericity": ("sphericity", 1, 5),
    "margin": ("margin", 1, 5), "lobulation": ("lobulation", 1, 5),
    "spiculation": ("spiculation", 1, 5), "texture": ("texture", 1, 5),
    "malignancy": ("malignancy", 1, 5),
}
#: Floor of the default grouping threshold (mm).
MIN_LINK_MM = 5.0
#: A slice's z may vary across the image by at most this fraction of the slice step.
_AXIAL_DRIFT = 0.1


@dataclass(frozen=True, eq=False)
class Roi:
    """One contour of one reading on one slice.

    Attributes
    ----------
    z_mm : float -- the slice's patient z (DICOM ImagePositionPatient[2]), mm.
    sop_uid : str -- the slice's SOPInstanceUID (private: not in repr).
    inclusion : bool -- False for a hole to subtract.
    points_xy : ndarray, shape (n, 2), int -- contour points as ``(column, row)`` indices.
    """

    z_mm: float
    sop_uid: str = field(repr=False)
    inclusion: bool
    points_xy: np.ndarray


@dataclass(frozen=True, eq=False)
class ReaderNodule:
    """One reader's reading of one nodule (``unblindedReadNodule``).

    Attributes
    ----------
    reader : int -- 1-based position of the reader's ``readingSession`` in the file.
    nodule_id : str -- the XML ``noduleID``; internal only, never output (not in repr).
    rois : tuple of Roi
    characteristics : dict[str, int] -- ratings keyed by the stems of
        :data:`CHARACTERISTICS` (``"malignancy"``, ``"internal_structure"``, ...); absent
        ratings are absent keys.
    index : int -- 1-based position of the nodule in its reading session (for messages).
    """

    reader: int
    nodule_id: str = field(repr=False)
    rois: tuple[Roi, ...]
    characteristics: dict[str, int]
    index: int = 0

    @property
    def is_small(self) -> bool:
        """True for a < 3 mm nodule: every ROI is a single point."""
        return bool(self.rois) and all(len(np.unique(r.points_xy, axis=0)) == 1 for r in self.rois)


@dataclass(frozen=True, eq=False)
class LidcScan:
    """The parsed XML of one scan.

    Attributes
    ----------
    readers : tuple of tuple of ReaderNodule -- one tuple per ``readingSession`` (a reader
        who marked nothing has an empty tuple).
    n_non_nodules : int -- ``nonNodule`` marks in the file (ignored).
    series_uid : str -- ``ResponseHeader/SeriesInstanceUid`` (private: not in repr).
    """

    readers: tuple[tuple[ReaderNodule, ...], ...]
    n_non_nodules: int = 0
    series_uid: str = field(default="", repr=False)

    @property
    def n_readers(self) -> int:
        return len(self.readers)

    @property
    def nodules(self) -> tuple[ReaderNodule, ...]:
        """All readings, reader by reader."""
        return tuple(n for session in self.readers for n in session)


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


# -- XML ---------------------------------------------------------------------------------

def _local(tag) -> str:
    return tag.rsplit("}", 1)[-1] if isinstance(tag, str) else ""


def _kids(el, name: str) -> list:
    return [c for c in el if _local(c.tag) == name]


def _text(el, name: str) -> str | None:
    for c in el:
        if _local(c.tag) == name:
            return (c.text or "").strip()
    return None


def _number(text: str | None, what: str, label: str, where: str, path: Path) -> float:
    try:
        value = float(text) if text is not None else math.nan
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        shown = "nothing" if text is None else repr(text[:30])
        raise DataError(
            f"LIDC XML file {label}: {where} has {what} {shown}, not a number. The file is "
            "damaged or edited; re-download it from the LIDC-IDRI collection.", path=path)
    return value


def _characteristics(nod_el, label: str, where: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for block in _kids(nod_el, "characteristics"):
        for c in block:
            spec = CHARACTERISTICS.get(_local(c.tag))
            text = (c.text or "").strip()
            if spec is None or not text:
                continue
            key, lo, hi = spec
            try:
                value = float(text)
            except ValueError:
                value = math.nan
            if not (math.isfinite(value) and value == int(value) and lo <= value <= hi):
                log.warning("LIDC XML file %s: %s has %s rating %r outside %d-%d; ignored",
                            label, where, key, text[:20], lo, hi)
                continue
            out[key] = int(value)
    return out


def _parse_roi(roi_el, label: str, where: str, path: Path) -> Roi | None:
    z = _number(_text(roi_el, "imageZposition"), "imageZposition", label, where, path)
    inc_text = (_text(roi_el, "inclusion") or "TRUE").upper()
    if inc_text not in ("TRUE", "FALSE"):
        raise DataError(
            f"LIDC XML file {label}: {where} has inclusion {inc_text[:20]!r}; expected TRUE or "
            "FALSE. The file is damaged or edited; re-download it.", path=path)
    points = []
    for edge in _kids(roi_el, "edgeMap"):
        x = _number(_text(edge, "xCoord"), "xCoord", label, where, path)
        y = _number(_text(edge, "yCoord"), "yCoord", label, where, path)
        points.append((round(x), round(y)))
    if not points:
        log.warning("LIDC XML file %s: %s has no edgeMap point; skipped", label, where)
        return None
    points_xy = np.asarray(points, dtype=np.int64).reshape(-1, 2)
    points_xy.setflags(write=False)  # parsed scans are cached and shared
    return Roi(z_mm=z, sop_uid=_text(roi_el, "imageSOP_UID") or "", inclusion=inc_text == "TRUE",
               points_xy=points_xy)


#: Parsed scans kept by :func:`read_lidc_xml`, keyed by (resolved path, SHA-256 of the bytes).
_SCAN_CACHE: OrderedDict[tuple[str, bytes], LidcScan] = OrderedDict()
_SCAN_CACHE_SIZE = 16
_SCAN_CACHE_LOCK = threading.Lock()


def read_lidc_xml(path: str | Path) -> LidcScan:
    """Parse one LIDC-IDRI annotation XML file.

    The file is read on every call but parsed once: the scan is cached by the file's path
    and content (SHA-256 of its bytes), so choosing a case's XML by its series UID and then
    building its mask parse it once, and a file rewritten in place is parsed again.  The
    returned scan is shared between callers and must not be modified (its contour arrays
    are read-only).

    Parameters
    ----------
    path : str or Path
        The scan's XML file (root ``LidcReadMessage``; any namespace or none).

    Returns
    -------
    LidcScan
        Readings per reader; ``nonNodule`` marks only counted.

    Raises
    ------
    UnreadableFileError
        Missing, empty, not XML or truncated.
    DataError
        No ``readingSession`` element, or a malformed number / inclusion flag.
    """
    path = Path(path)
    data = _read_bytes(path)
    key = (str(path.resolve()), hashlib.sha256(data).digest())
    with _SCAN_CACHE_LOCK:
        scan = _SCAN_CACHE.get(key)
        if scan is not None:
            _SCAN_CACHE.move_to_end(key)
            return scan
    scan = _parse_scan(data, path)
    with _SCAN_CACHE_LOCK:
        _SCAN_CACHE[key] = scan
        while len(_SCAN_CACHE) > _SCAN_CACHE_SIZE:
            _SCAN_CACHE.popitem(last=False)
    return scan


def _read_bytes(path: Path) -> bytes:
    """The bytes of an XML file, or :class:`UnreadableFileError` (missing, unreadable, empty)."""
    label = file_label(path)
    if not path.is_file():
        raise UnreadableFileError(
            f"LIDC XML file {label} does not exist or is not a file; check the annotation "
            "file name.", path=path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UnreadableFileError(
            f"LIDC XML file {label} cannot be read ({type(exc).__name__}); check its "
            "permissions.", path=path) from None
    if not data.strip():
        raise UnreadableFileError(
            f"LIDC XML file {label} is empty ({len(data)} bytes); re-download or re-copy it.",
            path=path)
    return data


def _parse_scan(data: bytes, path: Path) -> LidcScan:
    """Parse the XML *data* of the file *path* (named in messages by its label only)."""
    label = file_label(path)
    try:
        root = ET.fromstring(data)
    except (ET.ParseError, ValueError, LookupError) as exc:
        pos = getattr(exc, "position", None)
        at = f" at line {pos[0]}, column {pos[1]}" if pos else ""
        raise UnreadableFileError(
            f"LIDC XML file {label} is not well-formed XML (parse error{at}); it is probably "
            "truncated or not an annotation file. Re-download or re-copy it.", path=path) from None

    sessions = [el for el in root.iter() if _local(el.tag) == "readingSession"]
    if not sessions:
        raise DataError(
            f"LIDC XML file {label} holds no <readingSession> element (root element "
            f"<{_local(root.tag)[:40]}>). An LIDC-IDRI CT annotation file has root "
            "<LidcReadMessage> with one <readingSession> per reader; pass the XML of the CT "
            "series (chest radiograph files, root <IdriReadMessage>, cannot be used).",
            path=path)
    header = next((el for el in root.iter() if _local(el.tag) == "ResponseHeader"), None)
    series_uid = (_text(header, "SeriesInstanceUid") or "") if header is not None else ""

    readers, n_non, n_small = [], 0, 0
    for r, session in enumerate(sessions, start=1):
        readings = []
        for j, nod_el in enumerate(_kids(session, "unblindedReadNodule"), start=1):
            nod = _parse_reading(nod_el, r, j, label, path)
            if nod is None:
                continue
            n_small += nod.is_small
            readings.append(nod)
        n_non += len(_kids(session, "nonNodule"))
        readers.append(tuple(readings))
    scan = LidcScan(readers=tuple(readers), n_non_nodules=n_non, series_uid=series_uid)
    log.info("LIDC XML file %s: %d readers, %d nodule readings (%d < 3 mm), %d non-nodule "
             "marks ignored", label, scan.n_readers, len(scan.nodules), n_small, n_non)
    return scan


def _parse_reading(nod_el, r: int, j: int, label: str, path: Path) -> ReaderNodule | None:
    """Reader *r*'s nodule #*j* (an ``unblindedReadNodule``), None when it has no contour."""
    where = f"reader {r}, nodule #{j}"
    rois = []
    for m, roi_el in enumerate(_kids(nod_el, "roi"), start=1):
        roi = _parse_roi(roi_el, label, f"{where}, roi #{m}", path)
        if roi is not None:
            rois.append(roi)
    if not rois:
        log.warning("LIDC XML file %s: %s has no contour; ignored", label, where)
        return None
    return ReaderNodule(reader=r, nodule_id=_text(nod_el, "noduleID") or "", rois=tuple(rois),
                        characteristics=_characteristics(nod_el, label, where), index=j)


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


def _reading_voxels(nodule: ReaderNodule, grid: _Grid) -> tuple[np.ndarray, np.ndarray]:
    """``(voxels (n, 3) zyx int, matched contour points (m, 3) zyx float)`` of one reading."""
    _, ny, nx = grid.shape
    small = nodule.is_small
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
            plane = np.zeros((ny, nx), dtype=bool)
            plane[y, x] = True
        else:
            plane = _polygon_interior(pts, ny, nx)
        target = include if (roi.inclusion or small) else exclude
        target[k] = target[k] | plane if k in target else plane
    chunks = []
    for k, plane in include.items():
        if k in exclude:
            plane = plane & ~exclude[k]
        yy, xx = np.nonzero(plane)
        chunks.append(np.column_stack([np.full(yy.size, k), yy, xx]))
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
        Polygon interiors (contour pixels excluded) of the inclusion contours minus those of
        the holes; the single voxel of a < 3 mm nodule.  Contours whose z matches no slice are
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


def _group(scan: LidcScan, volume: Volume, grid: _Grid, distance_mm) -> list[NoduleGroup]:
    items = []   # (reading, voxels, centroid_mm, diameter_mm)
    for nod in scan.nodules:
        vox, pts = _reading_voxels(nod, grid)
        source = vox if len(vox) else pts
        if len(source) == 0:
            log.warning("reader %d, nodule #%d: no contour lies on a slice of the volume; "
                        "ignored", nod.reader, nod.index)
            continue
        centroid = volume.voxel_to_world(source.mean(axis=0))
        items.append((nod, vox, centroid, _equivalent_diameter(len(vox), volume)))
    links = []
    for i in range(len(items)):
        for j in range(i + 1, len(items)):
            a, b = items[i], items[j]
            if a[0].reader == b[0].reader:
                continue
            dist = float(np.linalg.norm(a[2] - b[2]))
            limit = (max(MIN_LINK_MM, 0.5 * max(a[3], b[3])) if distance_mm is None
                     else float(distance_mm))
            if dist <= limit:
                links.append((dist, i, j))
    parent = list(range(len(items)))
    readers = [{it[0].reader} for it in items]

    def root(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for _, i, j in sorted(links):
        ri, rj = root(i), root(j)
        if ri == rj or readers[ri] & readers[rj]:
            continue            # same group already, or a reader would appear twice
        parent[rj] = ri
        readers[ri] |= readers[rj]
    members: dict[int, list[int]] = {}
    for i in range(len(items)):
        members.setdefault(root(i), []).append(i)
    groups = []
    for idx in members.values():
        idx.sort(key=lambda i: items[i][0].reader)
        groups.append(NoduleGroup(
            readings=tuple(items[i][0] for i in idx), voxels=tuple(items[i][1] for i in idx),
            centroid_mm=np.mean([items[i][2] for i in idx], axis=0)))
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
        Fixed centroid-distance threshold in mm; None (default) uses
        ``max(5 mm, half the larger equivalent diameter of the pair)``.

    Returns
    -------
    list of NoduleGroup
        Ordered by centroid z, then y, then x (LPS mm).  Constrained single linkage, at most
        one reading per reader per group (see the module docstring).  Readings with no
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
            log.info("LIDC XML file %s: a nodule marked by %d reader(s) is below min_readers="
                     "%d; dropped", label_name, g.n_readers, min_readers)
            continue
        flat = np.concatenate([np.ravel_multi_index(v.T, shape) for v in g.voxels])
        uniq, counts = np.unique(flat, return_counts=True)
        chosen = uniq[counts >= level * g.n_readers - 1e-9]
        if chosen.size == 0:
            log.warning("LIDC XML file %s: a nodule marked by %d reader(s) near z = %.1f mm has "
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
            log.warning("LIDC XML file %s: %d consensus voxels belong to two nodules; kept "
                        "with the lower label", label_name, chosen.size - free.size)
        if free.size == 0:
            log.warning("LIDC XML file %s: a nodule lies entirely inside another; dropped",
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
    grid = _grid(volume)
    scan = read_lidc_xml(xml_path)
    label_name = file_label(xml_path)
    groups = _group(scan, volume, grid, distance_mm)
    candidates = _consensus(groups, volume, grid.shape, level, min_readers, label_name)
    out, nodules = _label_consensus(candidates, volume, grid.shape, label_name)
    log.info("LIDC XML file %s: %d nodules labelled at consensus level %g (%d grouped)",
             label_name, len(nodules), level, len(groups))
    meta = {"format": "lidc-xml", "consensus_level": f"{level:g}",
            "min_readers": str(int(min_readers))}
    return Mask(out, volume.affine.copy(), meta), nodules
