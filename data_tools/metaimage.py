"""MetaImage scans (``.mhd`` + ``.raw``, ``.mha``) and LUNA16 nodule annotations.

LUNA16 ships every CT scan as a MetaImage: a small text header (``.mhd``) naming a raw
data file (``.raw``) in the same folder.  Its ``annotations.csv`` gives one row per nodule:
``seriesuid, coordX, coordY, coordZ, diameter_mm``, the centre in world millimetres.

Rules
-----
* **Reading** goes through SimpleITK's MetaImage reader.  ``GetArrayFromImage`` already
  returns ``(z, y, x)``; values are cast to float32 without rescaling (LUNA16 stores HU as
  int16).
* **Geometry.** ITK's physical space *is* LPS, so no axis flips are needed.  ITK maps an
  index ``(i, j, k)`` (x, y, z order) to ``origin + D @ diag(spacing) @ (i, j, k)``.  Our
  index order is ``(z, y, x) = (k, j, i)``, so the affine's column ``c`` is ITK direction
  column ``2 - c`` times ``spacing[2 - c]``, and its translation is ``GetOrigin()``.  Hence
  ``volume.voxel_to_world([k, j, i]) == img.TransformIndexToPhysicalPoint((i, j, k))``.
* **Header first.** The header is parsed here *before* SimpleITK is called, so that the
  common failures get a clear message naming files by base name only: a missing data file
  (``.mhd`` and ``.raw`` must be copied together), a data file shorter than
  ``DimSize x element size`` (truncated), text that is not a MetaImage header (no
  ``ObjectType``/``NDims``), images that are not 3-D, and multi-component (vector) pixels.
  Any other SimpleITK failure is reported by exception *type* only: SimpleITK's messages
  contain full paths.  Compressed data (``CompressedData = True``) is not size-checked
  beyond ``CompressedDataSize``; file-pattern and ``LIST`` data files are checked for
  existence only where the names are listed.
* **Memory.** :func:`estimate_bytes` is ``prod(DimSize) x 4`` (the float32 result);
  ``load_metaimage(..., max_bytes=N)`` refuses larger scans before reading anything.
* **Masks** (:func:`luna_mask`): each annotation of the requested series becomes a ball of
  diameter ``diameter_mm * scale`` around its world point.  ``coordX, coordY, coordZ`` are
  ITK/LPS world mm, the frame of the affine, so the centre is placed with
  ``volume.world_to_voxel``.  A voxel belongs to the ball when the distance in mm from its
  *centre* to the nodule centre is ``<= radius`` (exact on anisotropic and oblique grids).
  A ball holding no voxel centre (a nodule smaller than a voxel) still gets the voxel that
  contains its centre.  Labels are ``1..N`` in the CSV row order of the series, counting
  only placed nodules.  Where balls overlap, the voxel goes to the nearer centre (in mm);
  on an exact tie the lower label keeps it.  A centre outside the volume (its containing
  voxel index is out of range) is skipped with a warning naming the CSV line.  A series
  without rows gives an all-zero mask and a log line, never an error.
* The series UID is never written into messages, logs or the returned dicts.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .errors import DataError, UnreadableFileError, file_label
from .volume import Mask, Volume

if TYPE_CHECKING:                 # pandas is imported where a LUNA16 CSV is read: finding
    import pandas as pd           # the cases of a folder (data_tools.layouts) needs no pandas

__all__ = [
    "ANNOTATION_COLUMNS",
    "CANDIDATE_COLUMNS",
    "estimate_bytes",
    "is_metaimage",
    "load_metaimage",
    "luna_mask",
    "metaimage_data_files",
    "read_luna_annotations",
    "read_luna_candidates",
]

log = logging.getLogger(__name__)

ANNOTATION_COLUMNS = ("seriesuid", "coordX", "coordY", "coordZ", "diameter_mm")
CANDIDATE_COLUMNS = ("seriesuid", "coordX", "coordY", "coordZ", "class")

#: Bytes of the header read when looking for the header lines (``.mha`` holds data after it).
_HEADER_READ_BYTES = 1 << 16

_ELEMENT_BYTES = {
    "MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4,
    "MET_UINT": 4, "MET_LONG": 4, "MET_ULONG": 4, "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8,
    "MET_FLOAT": 4, "MET_DOUBLE": 8,
}

_GIB = float(1 << 30)


def is_metaimage(path: str | Path) -> bool:
    """True for ``*.mhd`` and ``*.mha`` names (case-insensitive); the file is not opened."""
    return Path(path).suffix.lower() in (".mhd", ".mha")


# -- header ---------------------------------------------------------------------------------

def _unreadable(path: Path, what: str) -> UnreadableFileError:
    return UnreadableFileError(f"MetaImage header {file_label(path)} {what}", path=path)


def _header_fields(raw: bytes) -> tuple[dict[str, str], list[str], int | None]:
    """The ``key = value`` lines of a header's first bytes *raw* up to ``ElementDataFile``:
    ``(fields, list_files, header_end)``, keys lower-case, values stripped; ``list_files``
    the names after ``ElementDataFile = LIST``; ``header_end`` the byte offset after the
    ElementDataFile line (None without one)."""
    fields: dict[str, str] = {}
    list_files: list[str] = []
    header_end = None
    pos = 0
    in_list = False
    for line in raw.splitlines(keepends=True):
        pos += len(line)
        text = line.decode("latin-1").strip()
        if in_list:
            if text:
                list_files.append(text)
            continue
        if not text or "=" not in text:
            continue
        key, _, value = text.partition("=")
        key, value = key.strip().lower(), value.strip()
        fields[key] = value
        if key == "elementdatafile":
            header_end = pos
            if value.split()[:1] and value.split()[0].upper() == "LIST":
                in_list = True
            else:
                break
    return fields, list_files, header_end


def metaimage_data_files(path: str | Path) -> list[Path]:
    """The data file(s) the MetaImage header *path* names, whether they exist or not.

    None for ``ElementDataFile = LOCAL`` (an ``.mha``: the data follow the header) or an
    empty value; the listed files for ``LIST``; the named file otherwise (beside the header
    unless absolute).  For a numbered file pattern (``%``), a header without
    ``ElementDataFile`` or one that cannot be read: the header's same-stem siblings
    (``name.*``).  Never raises for a bad header (:func:`load_metaimage` reports that).
    """
    header = Path(path)
    siblings = sorted(p for p in header.parent.glob(f"{header.stem}.*") if p != header)
    try:
        with open(header, "rb") as fh:
            raw = fh.read(_HEADER_READ_BYTES)
    except OSError:
        return siblings
    fields, list_files, _ = _header_fields(raw)
    if "elementdatafile" not in fields:
        return siblings
    tokens = fields["elementdatafile"].split()
    if not tokens or tokens[0].upper() == "LOCAL":
        return []
    if tokens[0].upper() == "LIST":
        return [_data_path(header, name) for name in list_files]
    if "%" in tokens[0]:
        return siblings
    return [_data_path(header, fields["elementdatafile"])]


def _parse_header(path: Path) -> dict:
    """Parse the text header of *path*; return a dict of the fields this module uses.

    Keys: ``ndims``, ``dims`` (x, y, z order), ``channels``, ``element_bytes`` (None when the
    type is unknown), ``compressed``, ``compressed_size``, ``header_size``, ``data_file``
    (the ElementDataFile value), ``list_files``, ``header_end`` (byte offset after the
    ElementDataFile line; where ``LOCAL`` data starts).
    """
    if not path.is_file():
        raise UnreadableFileError(f"MetaImage file {file_label(path)} does not exist", path=path)
    if path.stat().st_size == 0:
        raise UnreadableFileError(f"MetaImage file {file_label(path)} is empty (0 bytes)",
                                  path=path)
    with open(path, "rb") as fh:
        raw = fh.read(_HEADER_READ_BYTES)
    fields, list_files, header_end = _header_fields(raw)
    if "objecttype" not in fields or "ndims" not in fields:
        raise _unreadable(
            path, "is not a MetaImage header (no 'ObjectType' / 'NDims' lines). Check that "
            "the file is the .mhd/.mha header of a scan and not another file renamed."
        )
    try:
        ndims = int(fields["ndims"])
        dims = [int(v) for v in fields.get("dimsize", "").split()]
        channels = int(fields.get("elementnumberofchannels", "1"))
        header_size = int(float(fields.get("headersize", "0")))
        compressed_size = int(float(fields["compresseddatasize"])) \
            if "compresseddatasize" in fields else None
    except ValueError:
        raise _unreadable(path, "has a malformed NDims, DimSize, ElementNumberOfChannels, "
                          "HeaderSize or CompressedDataSize line; re-export the scan.") from None
    if len(dims) != ndims or any(d <= 0 for d in dims):
        raise _unreadable(path, f"declares NDims = {ndims} but DimSize has {len(dims)} "
                          "positive values; the header is damaged. Re-export the scan.")
    etype = fields.get("elementtype", "").upper()
    if etype.endswith("_ARRAY"):
        etype = etype[: -len("_ARRAY")]
        channels = max(channels, 2)
    if "elementdatafile" not in fields or not fields["elementdatafile"]:
        raise _unreadable(path, "has no 'ElementDataFile' line, so the voxel data cannot be "
                          "found. Re-export the scan.")
    return {
        "ndims": ndims, "dims": dims, "channels": channels,
        "element_bytes": _ELEMENT_BYTES.get(etype), "element_type": etype,
        "compressed": fields.get("compresseddata", "false").lower() in ("true", "1", "yes"),
        "compressed_size": compressed_size, "header_size": header_size,
        "data_file": fields["elementdatafile"], "list_files": list_files,
        "header_end": header_end,
    }


def _check_shape(path: Path, hdr: dict) -> None:
    if hdr["ndims"] != 3:
        dims = " x ".join(str(d) for d in hdr["dims"])
        raise UnreadableFileError(
            f"MetaImage {file_label(path)} is {hdr['ndims']}-D (DimSize {dims}); a CT scan "
            "must be 3-D. Split multi-volume series into single 3-D volumes.", path=path)
    if hdr["channels"] != 1:
        raise UnreadableFileError(
            f"MetaImage {file_label(path)} has {hdr['channels']} components per voxel "
            "(a vector/colour image); a CT scan must hold one value per voxel.", path=path)


def _data_path(path: Path, name: str) -> Path:
    p = Path(name)
    return p if p.is_absolute() else path.parent / p


def _check_data(path: Path, hdr: dict) -> None:
    """Missing or truncated data file -> UnreadableFileError (base names only)."""
    value = hdr["data_file"]
    tokens = value.split()
    n_voxels = math.prod(hdr["dims"])
    expected = None if hdr["element_bytes"] is None else n_voxels * hdr["element_bytes"]
    if value.upper() == "LOCAL":
        data = path
        available = path.stat().st_size - (hdr["header_end"] or 0)
    elif tokens[0].upper() == "LIST":
        for name in hdr["list_files"]:
            if not _data_path(path, name).is_file():
                raise UnreadableFileError(
                    f"data file {file_label(name)} listed in MetaImage header "
                    f"{file_label(path)} is missing; copy the header together with all of "
                    "its data files into the same folder.", path=path)
        return
    elif len(tokens) == 4 and "%" in tokens[0]:
        return  # numbered file pattern: let the reader resolve it
    else:
        data = _data_path(path, value)
        if not data.is_file():
            raise UnreadableFileError(
                f"data file {file_label(data)} named by MetaImage header {file_label(path)} "
                "(ElementDataFile) is missing. The .mhd header and its .raw data file must be "
                "copied together into the same folder.", path=path)
        available = data.stat().st_size - max(hdr["header_size"], 0)
    if hdr["compressed"]:
        if hdr["compressed_size"] is not None and available < hdr["compressed_size"]:
            raise UnreadableFileError(
                f"data file {file_label(data)} of MetaImage {file_label(path)} holds "
                f"{available} bytes but the header declares CompressedDataSize = "
                f"{hdr['compressed_size']}; it is truncated. Copy it again.", path=path)
        return
    if expected is not None and available < expected:
        dims = " x ".join(str(d) for d in hdr["dims"])
        raise UnreadableFileError(
            f"data file {file_label(data)} of MetaImage {file_label(path)} is truncated: it "
            f"holds {max(available, 0)} bytes of voxel data but DimSize {dims} of "
            f"{hdr['element_type']} needs {expected}. Copy it again from the source.",
            path=path)


def estimate_bytes(path: str | Path) -> int:
    """Memory in bytes of the float32 array :func:`load_metaimage` would return.

    Parameters
    ----------
    path : str or Path
        ``.mhd`` or ``.mha`` header; only the header text is read.

    Returns
    -------
    int
        ``prod(DimSize) * 4``.

    Raises
    ------
    UnreadableFileError
        Missing file or a header that is not MetaImage.
    """
    hdr = _parse_header(Path(path))
    return int(math.prod(hdr["dims"])) * 4


# -- image ----------------------------------------------------------------------------------

def _affine_from_image(img) -> np.ndarray:
    """4x4 affine for ``(z, y, x)`` indices from an ITK image (ITK space is LPS)."""
    direction = np.asarray(img.GetDirection(), dtype=float).reshape(3, 3)
    spacing = np.asarray(img.GetSpacing(), dtype=float)
    itk_cols = direction * spacing[None, :]  # column c = direction column c * spacing[c]
    aff = np.eye(4)
    aff[:3, :3] = itk_cols[:, ::-1]  # our (z, y, x) = ITK (k, j, i)
    aff[:3, 3] = np.asarray(img.GetOrigin(), dtype=float)
    return aff


def load_metaimage(path: str | Path, *, max_bytes: int | None = None) -> Volume:
    """Load a 3-D MetaImage CT scan as a float32 :class:`Volume`.

    Parameters
    ----------
    path : str or Path
        ``.mhd`` header (with its data file beside it) or single-file ``.mha``.
    max_bytes : int, optional
        Refuse scans whose float32 array (:func:`estimate_bytes`) exceeds this many bytes,
        before reading any voxel data.  None: no limit.

    Returns
    -------
    Volume
        array (z, y, x) float32 in the stored units (HU for LUNA16), affine ``[z, y, x, 1]``
        -> LPS mm, metadata ``{"format": "metaimage", "modality": "CT"}``.

    Raises
    ------
    UnreadableFileError
        Missing header or data file, truncated data, not a MetaImage, not 3-D, vector
        pixels, or any other reader failure (reported by exception type only).
    DataError
        The scan is larger than *max_bytes*.
    """
    import SimpleITK as sitk

    path = Path(path)
    hdr = _parse_header(path)
    _check_shape(path, hdr)
    if max_bytes is not None:
        need = math.prod(hdr["dims"]) * 4
        if need > max_bytes:
            x, y, z = hdr["dims"]
            raise DataError(
                f"MetaImage {file_label(path)} needs {need / _GIB:.2f} GiB as float32 "
                f"(dimensions x, y, z = {x} x {y} x {z}), above the limit of "
                f"{max_bytes / _GIB:.2f} GiB. Raise the max_bytes setting "
                "(load_metaimage(..., max_bytes=...)) or pass max_bytes=None for no limit.",
                path=path)
    _check_data(path, hdr)
    reader = sitk.ImageFileReader()
    reader.SetImageIO("MetaImageIO")
    reader.SetFileName(str(path))
    warn = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)  # ITK warnings carry full paths
    try:
        img = reader.Execute()
    except (RuntimeError, OSError) as exc:
        raise UnreadableFileError(
            f"MetaImage {file_label(path)} cannot be read ({type(exc).__name__}); it is "
            "damaged or uses an unsupported layout. Re-export or re-copy the .mhd and its "
            "data file together.", path=path) from None
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(warn)
    if img.GetDimension() != 3:
        raise UnreadableFileError(
            f"MetaImage {file_label(path)} is {img.GetDimension()}-D; a CT scan must be 3-D.",
            path=path)
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise UnreadableFileError(
            f"MetaImage {file_label(path)} has {img.GetNumberOfComponentsPerPixel()} "
            "components per voxel; a CT scan must hold one value per voxel.", path=path)
    arr = sitk.GetArrayViewFromImage(img).astype(np.float32)  # (z, y, x), a copy
    try:
        return Volume(arr, _affine_from_image(img), {"format": "metaimage", "modality": "CT"})
    except ValueError as exc:
        raise UnreadableFileError(f"MetaImage {file_label(path)} has unusable geometry: {exc}",
                                  path=path) from None


# -- LUNA16 CSVs ----------------------------------------------------------------------------

def _lines(lines: list[int], limit: int = 10) -> str:
    shown = ", ".join(str(n) for n in lines[:limit])
    return shown + (f" (and {len(lines) - limit} more)" if len(lines) > limit else "")


def _read_luna_csv(csv_path: str | Path, columns: tuple[str, ...], kind: str) -> pd.DataFrame:
    import pandas as pd

    path = Path(csv_path)
    name = file_label(path)
    if not path.is_file():
        raise UnreadableFileError(f"{kind} file {name} does not exist", path=path)
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False, skip_blank_lines=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise UnreadableFileError(
            f"{kind} file {name} is not a readable CSV ({type(exc).__name__}).", path=path
        ) from None
    raw.columns = [str(c).strip() for c in raw.columns]
    missing = [c for c in columns if c not in raw.columns]
    if missing:
        raise DataError(
            f"{kind} file {name} lacks column(s) {', '.join(missing)}; expected a header line "
            f"'{','.join(columns)}' (found: {', '.join(map(str, raw.columns)) or 'none'}).",
            path=path)
    raw.index = pd.RangeIndex(2, len(raw) + 2, name="line")  # line 1 is the header
    raw = raw[list(columns)].apply(lambda s: s.str.strip())
    raw = raw[(raw != "").any(axis=1)]  # blank lines
    out = pd.DataFrame(index=raw.index)
    out["seriesuid"] = raw["seriesuid"]
    bad_uid = raw.index[raw["seriesuid"] == ""].tolist()
    if bad_uid:
        raise DataError(f"{kind} file {name} has an empty seriesuid on line(s) "
                        f"{_lines(bad_uid)}.", path=path)
    for col in columns[1:]:
        values = pd.to_numeric(raw[col], errors="coerce")
        bad = raw.index[~np.isfinite(values.to_numpy(dtype=float))].tolist()
        if bad:
            raise DataError(
                f"{kind} file {name}: column {col} is not a finite number on line(s) "
                f"{_lines(bad)}. Fix or remove those lines.", path=path)
        out[col] = values.astype(float)
    return out


def read_luna_annotations(csv_path: str | Path) -> pd.DataFrame:
    """Read and validate a LUNA16 ``annotations.csv``.

    Parameters
    ----------
    csv_path : str or Path
        CSV with header ``seriesuid,coordX,coordY,coordZ,diameter_mm`` (extra columns are
        ignored).  Blank lines are skipped.

    Returns
    -------
    DataFrame
        Columns ``seriesuid`` (str), ``coordX, coordY, coordZ`` (LPS world mm, float),
        ``diameter_mm`` (float > 0), in file order.  The index (named ``line``) is the
        1-based line number in the file, used in messages.

    Raises
    ------
    DataError
        Missing columns, empty series UIDs, non-numeric values or non-positive diameters;
        the message names the file's base name and the offending line numbers.
    """
    df = _read_luna_csv(csv_path, ANNOTATION_COLUMNS, "annotations")
    bad = df.index[df["diameter_mm"] <= 0].tolist()
    if bad:
        path = Path(csv_path)
        raise DataError(f"annotations file {file_label(path)}: diameter_mm must be > 0 on "
                        f"line(s) {_lines(bad)}.", path=path)
    return df


def read_luna_candidates(csv_path: str | Path) -> pd.DataFrame:
    """Read and validate a LUNA16 ``candidates.csv`` / ``candidates_V2.csv``.

    Returns
    -------
    DataFrame
        Columns ``seriesuid, coordX, coordY, coordZ`` (as :func:`read_luna_annotations`) and
        ``class`` (int, 0 or 1); index ``line`` as there.

    Raises
    ------
    DataError
        As :func:`read_luna_annotations`, or a ``class`` other than 0/1.
    """
    df = _read_luna_csv(csv_path, CANDIDATE_COLUMNS, "candidates")
    bad = df.index[~df["class"].isin([0.0, 1.0])].tolist()
    if bad:
        path = Path(csv_path)
        raise DataError(f"candidates file {file_label(path)}: class must be 0 or 1 on "
                        f"line(s) {_lines(bad)}.", path=path)
    df["class"] = df["class"].astype(int)
    return df


# -- masks ----------------------------------------------------------------------------------

def luna_mask(volume: Volume, annotations: pd.DataFrame, *, series_uid: str,
              scale: float = 1.0) -> tuple[Mask, list[dict]]:
    """Draw the annotated nodules of one series as balls on *volume*'s grid.

    Parameters
    ----------
    volume : Volume
        The scan, shape (z, y, x), with its LPS affine (e.g. from :func:`load_metaimage`).
    annotations : DataFrame
        Columns ``seriesuid, coordX, coordY, coordZ, diameter_mm`` (world LPS mm), e.g.
        from :func:`read_luna_annotations`; rows of other series are ignored.
    series_uid : str
        The series whose rows are drawn (never logged or returned).
    scale : float
        Multiplies every diameter (> 0); e.g. 1.5 for a margin around the nodule.

    Returns
    -------
    mask : Mask
        int16, shape (z, y, x), same affine as *volume*; labels 1..N in row order.
    nodules : list of dict
        One per placed nodule: ``label``, ``diameter_mm`` (as annotated, before *scale*),
        ``center_lps_mm`` ([x, y, z] floats), ``n_voxels`` (after overlap resolution).

    Raises
    ------
    DataError
        Missing columns or a non-positive *scale*.
    """
    missing = [c for c in ANNOTATION_COLUMNS if c not in annotations.columns]
    if missing:
        raise DataError(f"annotations lack column(s) {', '.join(missing)}; expected "
                        f"{', '.join(ANNOTATION_COLUMNS)}.")
    if not (np.isfinite(scale) and scale > 0):
        raise DataError(f"scale must be a positive number; received {scale!r}.")
    shape = np.asarray(volume.shape)
    labels = np.zeros(volume.shape, dtype=np.int16)
    rows = annotations[annotations["seriesuid"].astype(str).str.strip() == str(series_uid).strip()]
    if rows.empty:
        log.info("no annotation rows for the requested series; returning an empty mask")
        return Mask(labels, volume.affine, {"format": "luna16-annotations"}), []
    centres_vox: list[np.ndarray] = []
    placed: list[dict] = []
    for ordinal, (line, row) in enumerate(rows.iterrows(), start=1):
        centre = np.array([row["coordX"], row["coordY"], row["coordZ"]], dtype=float)
        diameter = float(row["diameter_mm"])
        if not (np.all(np.isfinite(centre)) and np.isfinite(diameter) and diameter > 0):
            log.warning("annotation at row %s (nodule %d of the series) has a non-finite "
                        "centre or a non-positive diameter; skipped", line, ordinal)
            continue
        c = volume.world_to_voxel(centre)
        nearest = np.floor(c + 0.5).astype(int)
        if np.any(nearest < 0) or np.any(nearest >= shape):
            log.warning("annotation at row %s (nodule %d of the series): centre %s mm lies "
                        "outside the volume (voxel %s, shape %s); skipped", line, ordinal,
                        np.round(centre, 2).tolist(), np.round(c, 1).tolist(),
                        tuple(shape.tolist()))
            continue
        label = len(placed) + 1
        _draw_ball(labels, volume.affine[:3, :3], c, 0.5 * diameter * float(scale), label,
                   centres_vox)
        centres_vox.append(c)
        placed.append({"label": label, "diameter_mm": diameter,
                       "center_lps_mm": [float(v) for v in centre], "n_voxels": 0})
    counts = np.bincount(labels.ravel(), minlength=len(placed) + 1)
    for info in placed:
        info["n_voxels"] = int(counts[info["label"]])
        if info["n_voxels"] == 0:
            log.warning("nodule label %d lost all its voxels to nearer overlapping nodules",
                        info["label"])
    log.info("placed %d of %d annotated nodules of the series", len(placed), len(rows))
    return Mask(labels, volume.affine, {"format": "luna16-annotations"}), placed


def _draw_ball(labels: np.ndarray, lin: np.ndarray, c: np.ndarray, radius: float, label: int,
               centres_vox: list[np.ndarray]) -> None:
    """Give *label* to the voxels of *labels* whose centres lie within *radius* mm of the
    voxel point *c* (*lin*: the affine's 3x3 part), the voxel holding *c* when none does; a
    voxel already labelled goes to the nearer centre (*centres_vox*: those of labels 1..)."""
    shape = np.asarray(labels.shape)
    nearest = np.floor(c + 0.5).astype(int)
    # half-extent (in voxels) along each index axis of a ball of radius 1 mm
    unit_extent = np.linalg.norm(np.linalg.inv(lin), axis=1)
    half = radius * unit_extent + 1.0
    lo = np.maximum(np.floor(c - half).astype(int), 0)
    hi = np.minimum(np.ceil(c + half).astype(int) + 1, shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    grid = np.stack(np.meshgrid(*(np.arange(a, b) for a, b in zip(lo, hi)),
                                indexing="ij"), axis=-1).astype(float)
    dist = np.linalg.norm((grid - c) @ lin.T, axis=-1)
    inside = dist <= radius
    if not inside.any():  # smaller than a voxel: keep the voxel holding the centre
        inside[tuple(nearest - lo)] = True
    current = labels[box]
    taken = inside & (current > 0)
    if taken.any():
        others = np.stack(centres_vox)[current[taken].astype(int) - 1]
        other_dist = np.linalg.norm((grid[taken] - others) @ lin.T, axis=-1)
        keep = np.ones_like(inside)
        keep[taken] = dist[taken] < other_dist
        inside &= keep
    current[inside] = label
