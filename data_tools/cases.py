"""Find the cases in an input (a folder of case folders, one case folder, or a manifest CSV).

Rules
-----
* A **folder of case folders**: every sub-folder whose name does not start with ``_`` or ``.``
  is one case.  (``_truth/`` beside a synthetic cohort is therefore skipped.)
* A **case folder** holds either a DICOM CT series (any depth) or one NIfTI image, plus an
  optional label mask: a NIfTI file whose name contains ``mask``, ``seg``, ``label`` or
  ``annot``.  A folder with DICOM files and exactly one NIfTI file takes that file as the mask.
* A **manifest CSV** has the columns ``case_id,image,mask`` (``mask`` may be empty); relative
  paths are taken from the CSV's folder.

Case ids are pseudonymous (:func:`data_tools.deid.pseudonymous_id` of the folder name or the
manifest's case id), so neither folder names nor the user's own ids appear in any output.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path

from .deid import pseudonymous_id
from .errors import DataError, NoSeriesError, file_label
from .nifti import is_nifti, load_nifti, load_nifti_mask
from .volume import Mask, Volume, check_same_grid

__all__ = ["CaseSpec", "discover_cases", "load_case", "read_labels"]

log = logging.getLogger(__name__)

_MASK_WORDS = ("mask", "seg", "label", "annot")
_NOT_IMAGE_SUFFIXES = {".csv", ".json", ".txt", ".md", ".toml"}


@dataclass(frozen=True)
class CaseSpec:
    """Where one case's files are. ``case_id`` is the only name that may leave the tool."""

    case_id: str
    image: Path
    image_kind: str  # "dicom" (a folder) or "nifti" (a file)
    mask: Path | None
    problem: str | None = None  # set when the case folder itself is unusable


def _is_mask_name(path: Path) -> bool:
    name = path.name.lower()
    return any(word in name for word in _MASK_WORDS)


def _case_from_folder(folder: Path, case_id: str) -> CaseSpec:
    niftis = sorted(p for p in folder.iterdir() if p.is_file() and is_nifti(p))
    others = [p for p in folder.rglob("*") if p.is_file() and not is_nifti(p)
              and not p.name.startswith(".")]
    masks = [p for p in niftis if _is_mask_name(p)]
    images = [p for p in niftis if not _is_mask_name(p)]
    if others:  # a DICOM series folder
        if not masks and len(images) == 1:
            masks, images = images, []
        if len(masks) > 1:
            return CaseSpec(case_id, folder, "dicom", None,
                            problem=f"case folder holds {len(masks)} mask files; keep one")
        return CaseSpec(case_id, folder, "dicom", masks[0] if masks else None)
    if len(images) == 1:
        if len(masks) > 1:
            return CaseSpec(case_id, images[0], "nifti", None,
                            problem=f"case folder holds {len(masks)} mask files; keep one")
        return CaseSpec(case_id, images[0], "nifti", masks[0] if masks else None)
    if not images:
        return CaseSpec(case_id, folder, "dicom", None,
                        problem="case folder holds no DICOM files and no NIfTI image")
    return CaseSpec(case_id, folder, "nifti", None,
                    problem=f"case folder holds {len(images)} NIfTI images and no rule picks one; "
                            "name the mask '*mask*.nii.gz' or use a manifest CSV")


def _from_manifest(csv_path: Path) -> list[CaseSpec]:
    base = csv_path.parent
    with open(csv_path, newline="") as fh:
        reader = csv.DictReader(fh)
        missing = {"case_id", "image"} - set(reader.fieldnames or [])
        if missing:
            raise DataError(
                f"manifest {file_label(csv_path)} lacks the column(s) {sorted(missing)}; "
                "expected header: case_id,image,mask", path=csv_path)
        rows = list(reader)
    specs = []
    for row in rows:
        case_id = pseudonymous_id(row["case_id"].strip())
        image = (base / row["image"].strip()).resolve()
        mask_txt = (row.get("mask") or "").strip()
        mask = (base / mask_txt).resolve() if mask_txt else None
        kind = "nifti" if is_nifti(image) else "dicom"
        specs.append(CaseSpec(case_id, image, kind, mask))
    return specs


def discover_cases(input_path: str | Path) -> list[CaseSpec]:
    """List the cases under *input_path* (see the module docstring for the rules).

    Returns
    -------
    list of CaseSpec
        Sorted by case id.  A case folder that cannot be used carries ``problem`` instead of
        raising, so that a batch records it and goes on.

    Raises
    ------
    NoSeriesError
        The input holds nothing that looks like a case.
    """
    root = Path(input_path)
    if root.is_file() and root.suffix.lower() == ".csv":
        return sorted(_from_manifest(root), key=lambda s: s.case_id)
    if not root.is_dir():
        raise NoSeriesError(f"input {file_label(root)} is neither a folder nor a manifest CSV",
                            path=root)
    subdirs = sorted(p for p in root.iterdir() if p.is_dir() and p.name[:1] not in "_.")
    case_files = [p for p in root.iterdir() if p.is_file() and not p.name.startswith(".")
                  and p.suffix.lower() not in _NOT_IMAGE_SUFFIXES]
    if case_files or not subdirs:  # the input is itself one case folder
        specs = [_case_from_folder(root, pseudonymous_id(root.name))]
    else:
        specs = [_case_from_folder(d, pseudonymous_id(d.name)) for d in subdirs]
    if not specs:
        raise NoSeriesError(f"input {file_label(root)} holds no case folders")
    return sorted(specs, key=lambda s: s.case_id)


def load_case(spec: CaseSpec) -> tuple[Volume, Mask | None]:
    """Read a case's image and mask; the mask must lie on the image's grid.

    Raises
    ------
    DataError
        Any input problem, with a message that names files by base name only.
    """
    if spec.problem:
        raise DataError(spec.problem)
    if spec.image_kind == "nifti":
        volume = load_nifti(spec.image)
    else:
        from .dicom import load_dicom_series

        volume = load_dicom_series(spec.image)
    mask = None
    if spec.mask is not None:
        mask = load_nifti_mask(spec.mask)
        check_same_grid(volume, mask, what=f"mask {file_label(spec.mask)}")
    return volume, mask


def read_labels(path: str | Path):
    """Known true labels of nodules, keyed the way the results are.

    Parameters
    ----------
    path : path
        CSV with a case column (``case_dir`` or ``case_id``: the case folder's name or the
        manifest's case id, as at the source), a nodule column (``nodule_label``: the mask
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
        "case_id": [pseudonymous_id(str(c).strip()) for c in table[case_col]],
        "nodule_id": nodule.to_numpy(),
        "malignant": table["malignant"].str.strip().astype(int).to_numpy(),
    }).drop_duplicates(["case_id", "nodule_id"], keep="last").reset_index(drop=True)
