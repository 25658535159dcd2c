"""Read a case: its CT volume, its nodule mask and what the annotation says of each nodule.

Where the cases are is :mod:`data_tools.layouts`' job (``discover_cases`` is re-exported
here).  :func:`read_case` turns a :class:`CaseSpec` into a :class:`LoadedCase`; the mask
comes from the source the layout found:

* ``nifti``: a label map (0 background, 1..N nodules), which must lie on the image grid;
* ``msd``: a Decathlon label map; label > 0 is tumour, and each 26-connected component
  becomes one nodule (labels 1..N by size, largest first);
* ``lidc``: LIDC-IDRI XML; readers' contours are grouped into nodules and combined at the
  consensus level (default 0.5); the readers' median ratings ride along
  (:func:`data_tools.lidc.lidc_mask`).  With several XML files, the one whose series UID
  matches the chosen CT series is used;
* ``luna16``: ``annotations.csv`` balls (:func:`data_tools.metaimage.luna_mask`);
* ``dicom`` / ``rtstruct`` / ``seg``: an RTSTRUCT (GTV-like ROIs) or a DICOM SEG found among
  the series of the case's DICOM tree (RTSTRUCT first); ``dicom`` scores the case without a
  mask when there is neither, ``rtstruct``/``seg`` make it a problem.

Every error names files by base name only, never a folder.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .errors import DataError, MaskError, file_label
from .layouts import CaseSpec, discover_cases
from .memory import DEFAULT_MAX_BYTES, unpooled_buffers
from .pseudonyms import pseudonymous_id
from .volume import Mask, Volume, check_same_grid

if TYPE_CHECKING:
    from .dicom_series import ReadBytes

__all__ = ["CaseSpec", "LoadedCase", "discover_cases", "load_case", "read_case", "read_labels"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedCase:
    """A case read into memory.

    Attributes
    ----------
    volume : Volume
        CT, HU.
    mask : Mask or None
        Nodule labels 1..N on the volume's grid.
    nodules : tuple of dict
        Per label, what the annotation says (``label`` plus e.g. ``n_readers`` and
        ``lidc_malignancy`` for LIDC, ``roi_name`` for RTSTRUCT); may be empty.
    mask_source : str
        Which kind of annotation made the mask (``"none"`` without one).
    """

    volume: Volume
    mask: Mask | None
    nodules: tuple = field(default=())
    mask_source: str = "none"


def load_case(spec: CaseSpec, **options) -> tuple[Volume, Mask | None]:
    """``(volume, mask)`` of :func:`read_case` (the annotation's per-nodule facts dropped)."""
    case = read_case(spec, **options)
    return case.volume, case.mask


def read_case(spec: CaseSpec, *, max_bytes: int | None = DEFAULT_MAX_BYTES,
              lidc_level: float = 0.5, read: ReadBytes | None = None,
              integer_hu: bool = False) -> LoadedCase:
    """Read a case's image and its mask from the source its layout found.

    Parameters
    ----------
    spec : CaseSpec
    max_bytes : int or None
        Refuse a volume larger than this as float32 (checked from the headers first).
    lidc_level : float
        LIDC consensus level: a voxel is in when at least this fraction of the readers who
        marked the nodule include it.
    read : callable(path) -> bytes or None, optional
        Gives the bytes of an input file, so that a caller can read each file once (and
        e.g. hash what it reads): the DICOM files and NIfTI images and masks are then parsed
        from those bytes; the other readers (MetaImage, LIDC XML, LUNA16 CSV, RTSTRUCT and
        SEG) open their files themselves, as they do when *read* returns None.
    integer_hu : bool
        A DICOM series' HU as int16 where exact (:func:`data_tools.dicom.read_ct_files`):
        half the memory of float32.  Other images are float32.

    Raises
    ------
    DataError
        Any input problem, with a message that names files by base name only.
    """
    if spec.problem:
        raise DataError(spec.problem)
    with unpooled_buffers():        # the files' buffers are handed back when freed
        return _read_case(spec, max_bytes, lidc_level, read, integer_hu)


def _read_case(spec: CaseSpec, max_bytes, lidc_level, read, integer_hu) -> LoadedCase:
    series = []
    chosen = None
    if spec.image_kind == "nifti":
        from .nifti import load_nifti

        volume = load_nifti(spec.image, max_bytes=max_bytes, read=read)
    elif spec.image_kind == "metaimage":
        from .metaimage import load_metaimage

        volume = load_metaimage(spec.image, max_bytes=max_bytes)
    else:
        from .dicom import load_dicom_folder

        volume, chosen, series = load_dicom_folder(spec.image, max_bytes=max_bytes,
                                                   series_uid=spec.source_key or None, read=read,
                                                   integer_hu=integer_hu)
    mask, nodules, source = _read_mask(spec, volume, chosen, series, lidc_level, read)
    if mask is not None:
        what = f"mask {file_label(spec.mask)}" if spec.mask is not None else "mask"
        check_same_grid(volume, mask, what=what)
    return LoadedCase(volume, mask, tuple(nodules), source)


def _read_mask(spec: CaseSpec, volume: Volume, chosen, series, lidc_level,
               read: ReadBytes | None = None):
    kind = spec.mask_kind
    if kind == "nifti" or kind == "msd":
        if spec.mask is None:
            return None, [], "none"
        from .nifti import load_nifti_mask

        mask = load_nifti_mask(spec.mask, read=read)
        if kind == "msd":
            check_same_grid(volume, mask, what=f"label map {file_label(spec.mask)}")
            mask = split_components(mask)
        return mask, [], kind
    if kind == "lidc":
        from .lidc import lidc_mask, read_lidc_xml

        xml = spec.mask
        if chosen is not None and len(spec.mask_candidates) > 1:
            match = [x for x in spec.mask_candidates
                     if read_lidc_xml(x).series_uid == chosen.series_uid]
            if not match:
                raise MaskError(f"none of the {len(spec.mask_candidates)} LIDC XML files in "
                                "the case folder belongs to the chosen CT series")
            xml = match[0]
        mask, nodules = lidc_mask(xml, volume, level=lidc_level)
        return mask, nodules, "lidc"
    if kind == "boxes":
        from .boxes import box_mask, read_voc_boxes

        files = chosen.files if chosen is not None else ()
        return box_mask(volume, read_voc_boxes(spec.mask_candidates), files), [], "boxes"
    if kind == "luna16":
        from .metaimage import luna_mask

        mask, nodules = luna_mask(volume, _luna_annotations(spec.mask),
                                  series_uid=spec.source_key)
        return mask, nodules, "luna16"
    # DICOM annotation objects found among the case's series
    from .dicom_masks import rtstruct_mask, seg_mask

    wanted = {"dicom": ("RTSTRUCT", "SEG"), "rtstruct": ("RTSTRUCT",), "seg": ("SEG",)}[kind]
    for modality in wanted:
        objects = [s for s in series if s.modality == modality]
        if not objects:
            continue
        files = sorted(f for s in objects for f in s.files)
        if len(files) > 1:
            log.info("%d %s objects in the case folder; using %s", len(files), modality,
                     file_label(files[0]))
        if modality == "RTSTRUCT":
            mask, nodules = rtstruct_mask(files[0], volume, image_uids=_sop_uids(chosen))
        else:
            mask, nodules = seg_mask(files[0], volume)
        return mask, nodules, modality.lower()
    if kind != "dicom":
        raise MaskError(f"the case folder holds no {' or '.join(wanted)} object")
    return None, [], "none"


def _sop_uids(chosen) -> set[str] | None:
    """The SOPInstanceUIDs of the chosen CT series' files (headers only), None without one."""
    if chosen is None:
        return None
    import pydicom

    uids = set()
    for f in chosen.files:
        try:
            uids.add(str(pydicom.dcmread(f, stop_before_pixels=True,
                                         specific_tags=["SOPInstanceUID"]).SOPInstanceUID))
        except (AttributeError, OSError, pydicom.errors.InvalidDicomError):
            continue
    return uids


@lru_cache(maxsize=4)
def _luna_annotations(path: Path):
    from .metaimage import read_luna_annotations

    return read_luna_annotations(path)


def split_components(mask: Mask) -> Mask:
    """One label per 26-connected component of ``mask > 0``, 1..N by size (largest first).

    Parameters
    ----------
    mask : Mask
        Any label map; only ``> 0`` matters (the Decathlon's 1 = tumour).

    Returns
    -------
    Mask
        Same grid and metadata; shape ``(z, y, x)``.
    """
    from scipy import ndimage

    comp, n = ndimage.label(mask.array > 0, structure=np.ones((3, 3, 3), bool))
    if n == 0:
        return Mask(np.zeros(mask.shape, np.int16), mask.affine, mask.metadata)
    sizes = np.bincount(comp.ravel())[1:]
    order = np.argsort(-sizes, kind="stable")       # component index (0-based) by size
    relabel = np.zeros(n + 1, np.int16)
    relabel[order + 1] = np.arange(1, n + 1, dtype=np.int16)
    return Mask(relabel[comp], mask.affine, mask.metadata)


#: a case id as the results write it (``pseudonymous_id``'s form)
_RESULTS_CASE_ID = re.compile(r"case-[0-9a-f]{10}")


def _results_case_id(value: str, column: str) -> str:
    """*value* of a labels file's case column as the results key it: a ``case_id`` already in
    the results' form (``case-`` + 10 hex digits, e.g. from ``findings.csv``) is kept, any
    other name is pseudonymised as the layouts do."""
    if column == "case_id" and _RESULTS_CASE_ID.fullmatch(value):
        return value
    return pseudonymous_id(value)


def read_labels(path: str | Path):
    """Known true labels of nodules, keyed the way the results are.

    Parameters
    ----------
    path : path
        CSV with a case column (``case_dir`` or ``case_id``: the case folder's name or the
        manifest's case id, as at the source; a ``case_id`` already in the results' form,
        ``case-`` and 10 hex digits as in ``findings.csv``, is taken as it is), a nodule column (``nodule_label``: the mask
        label, or ``nodule_id`` such as ``n2``) and ``malignant`` (0 or 1).  The truth manifest
        ``truth.csv`` of ``discovery sample`` has this form.

    Returns
    -------
    pandas.DataFrame
        ``case_id`` (pseudonymous, as in the results), ``nodule_id``, ``malignant`` (int).

    Raises
    ------
    DataError
        Unreadable file, missing columns or a label other than 0/1 (the message names the
        file by its base name and the offending rows).
    """
    import numpy as np
    import pandas as pd

    path = Path(path)
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read the labels file {file_label(path)}: {type(exc).__name__}",
                        path=path) from None
    case_col = next((c for c in ("case_dir", "case_id") if c in table.columns), None)
    nod_col = next((c for c in ("nodule_label", "nodule_id") if c in table.columns), None)
    if case_col is None or nod_col is None or "malignant" not in table.columns:
        raise DataError(f"labels file {file_label(path)} needs columns case_dir (or case_id), "
                        f"nodule_label (or nodule_id) and malignant; it has "
                        f"{list(table.columns)}", path=path)
    bad = ~table["malignant"].str.strip().isin(["0", "1"])
    if bad.any():
        rows = [int(i) + 2 for i in np.flatnonzero(bad.to_numpy())[:5]]
        raise DataError(f"labels file {file_label(path)}: malignant must be 0 or 1; line(s) "
                        f"{rows} hold something else", path=path)
    nodule = table[nod_col].str.strip()
    if nod_col == "nodule_label":
        nodule = "n" + nodule
    return pd.DataFrame({
        "case_id": [_results_case_id(str(c).strip(), case_col) for c in table[case_col]],
        "nodule_id": nodule.to_numpy(),
        "malignant": table["malignant"].str.strip().astype(int).to_numpy(),
    }).drop_duplicates(["case_id", "nodule_id"], keep="last").reset_index(drop=True)
