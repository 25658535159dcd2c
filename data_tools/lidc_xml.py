"""LIDC-IDRI reader annotations: the XML file -> :class:`LidcScan` (readings, contours, ratings).

An LIDC-IDRI scan has one XML file (root ``LidcReadMessage``) holding up to four
``readingSession`` elements, one per anonymous reader.  Tags are matched by their *local*
name, so the usual default namespace ``http://www.nih.gov``, any other namespace string, or
none at all parse the same.  Readers are numbered 1, 2, ... in the order of their
``readingSession`` elements; ``nonNodule`` marks are ignored (counted in a log line and in
``LidcScan.n_non_nodules``).  Out-of-range or non-integer ratings are ignored (warning).
Placing the contours on a CT grid, grouping and consensus: :mod:`data_tools.lidc`.

Privacy: ``series_uid``, SOP UIDs and ``noduleID`` are kept off reprs, messages and
outputs; a file is named only by ``file_label``.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
import xml.etree.ElementTree as ET
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import DataError, UnreadableFileError, file_label

__all__ = ["CHARACTERISTICS", "LidcScan", "ReaderNodule", "Roi", "read_lidc_xml"]

log = logging.getLogger("data_tools.lidc")

#: XML tag -> (key stem used in ``ReaderNodule.characteristics`` and outputs, min, max).
CHARACTERISTICS: dict[str, tuple[str, int, int]] = {
    "subtlety": ("subtlety", 1, 5), "internalStructure": ("internal_structure", 1, 4),
    "calcification": ("calcification", 1, 6), "sphericity": ("sphericity", 1, 5),
    "margin": ("margin", 1, 5), "lobulation": ("lobulation", 1, 5),
    "spiculation": ("spiculation", 1, 5), "texture": ("texture", 1, 5),
    "malignancy": ("malignancy", 1, 5),
}


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
