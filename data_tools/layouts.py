"""Recognise how an input folder is laid out, and list its cases.

Layouts (``discover_cases(..., layout=NAME)``; ``"auto"`` applies the first rule that fits)
-----------------------------------------------------------------------------------------
``manifest``
    A CSV file with the columns ``case_id,image,mask`` (``mask`` may be empty: a NIfTI label
    map or an LIDC XML file) and, optionally, ``series_uid``: the SeriesInstanceUID to read
    when a DICOM folder holds several CT series (otherwise the rule of
    :func:`data_tools.dicom_series.select_ct_series` chooses); relative paths are taken from
    the CSV's folder.
``msd``
    The Medical Segmentation Decathlon layout (Task06_Lung): ``dataset.json`` beside
    ``imagesTr/`` and ``labelsTr/``; each ``imagesTr/<name>.nii.gz`` is a case, its label map
    ``labelsTr/<name>.nii.gz`` (1 = tumour; each connected tumour component becomes one
    nodule).  ``imagesTs/`` cases have no labels and are scored without a mask.  The
    ``._*`` files that macOS leaves in the Decathlon archives are ignored.
    Auto: the folder holds ``dataset.json`` and ``imagesTr/``.
``luna16``
    LUNA16: ``<series uid>.mhd`` + ``.raw`` volumes (in ``subset*/`` folders or not) and an
    ``annotations.csv`` (world-mm centres and diameters) anywhere in the tree; each nodule
    becomes a ball on the scan grid (:func:`data_tools.metaimage.luna_mask`).
    Auto: ``.mhd`` files and an ``annotations.csv`` under the folder, unless one sub-folder
    holds both (then that sub-folder is the LUNA16 root, and the folder is ``cases``).
``cases``
    A folder of case folders (every sub-folder not starting with ``_`` or ``.``), or one case
    folder: a folder without sub-folders, one holding an image file itself (DICOM,
    NIfTI, MetaImage; a LICENSE, README or metadata.csv beside case folders does not count),
    or one whose images are all in one sub-folder while its other sub-folders hold only
    annotation XML (a TCIA patient folder with its series and its box or reader files
    beside it, e.g. ``ct/`` and ``boxes/``).
    A sub-folder that is itself an MSD or LUNA16 root (auto rules above) is
    expanded into its cases, so one input may mix layouts (``cases`` only, not the
    restricted layouts below).  A case folder holds a DICOM CT series (any depth) or one NIfTI / MetaImage
    volume, and its annotation, the first of: a NIfTI label mask (name contains ``mask``,
    ``seg``, ``label`` or ``annot``; with DICOM, a lone NIfTI file is the mask), LIDC-IDRI XML
    (``*.xml`` holding ``LidcReadMessage``), and, found when the series is read, an RTSTRUCT
    (NSCLC-Radiomics) or a DICOM SEG object in the same tree.  This covers LIDC-IDRI and
    NSCLC-Radiomics downloads as TCIA arranges them (patient / study / series).
``lidc``, ``nsclc``, ``seg``
    The ``cases`` rule restricted to one annotation kind (LIDC XML, RTSTRUCT, DICOM SEG): a
    case folder without it is reported as a problem instead of being scored without a mask.

Case ids are pseudonymous (:func:`data_tools.deid.pseudonymous_id` of the folder name, the
MSD image name, the LUNA16 series UID or the manifest's case id), so no source name appears
in any output.  A case that cannot be used carries ``problem`` instead of raising, so that a
batch records it and goes on.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass, field
from pathlib import Path

from .boxes import is_voc_xml
from .errors import DataError, NoSeriesError, file_label
from .metaimage import is_metaimage
from .nifti import is_nifti
from .part10 import is_dicom_file
from .pseudonyms import pseudonymous_id

__all__ = ["CaseSpec", "LAYOUTS", "discover_cases", "detect_layout"]

log = logging.getLogger(__name__)

LAYOUTS = ("auto", "cases", "manifest", "msd", "luna16", "lidc", "nsclc", "seg")
_MASK_WORDS = ("mask", "seg", "label", "annot")
_NOT_IMAGE_SUFFIXES = {".csv", ".json", ".txt", ".md", ".toml", ".xml", ".raw", ".zraw",
                       ".pdf", ".html", ".log", ".zip"}
_RESTRICTED = {"lidc": "lidc", "nsclc": "rtstruct", "seg": "seg"}


@dataclass(frozen=True)
class CaseSpec:
    """Where one case's files are. ``case_id`` is the only name that may leave the tool.

    Attributes
    ----------
    case_id : str
        Pseudonymous id.
    image : Path
        A DICOM folder, or a NIfTI / MetaImage file.
    image_kind : str
        ``"dicom"``, ``"nifti"`` or ``"metaimage"``.
    mask : Path or None
        The annotation file (NIfTI mask, LIDC XML, MSD label map, LUNA16 annotations.csv);
        None for DICOM cases whose RTSTRUCT/SEG is found when the series is read.
    problem : str or None
        Set when the case cannot be used; the batch records it.
    mask_kind : str
        ``"nifti"``, ``"msd"`` (label map split into connected components), ``"lidc"``,
        ``"luna16"``, ``"boxes"`` (per-slice PASCAL VOC boxes, :mod:`data_tools.boxes`),
        ``"dicom"`` (RTSTRUCT or SEG in the series tree) or ``"rtstruct"`` /
        ``"seg"`` (required).
    layout : str
        The layout the case was found in.
    mask_candidates : tuple of Path
        Other annotation files of the same kind (several LIDC XML files: the one whose series
        matches the chosen CT series is used).
    source_key : str
        A private key of the case at the source: the LUNA16 series UID, or the DICOM
        SeriesInstanceUID a manifest asks for; never output.
    """

    case_id: str
    image: Path
    image_kind: str
    mask: Path | None
    problem: str | None = None
    mask_kind: str = "nifti"
    layout: str = "cases"
    mask_candidates: tuple[Path, ...] = field(default=(), repr=False)
    source_key: str = field(default="", repr=False)


def _is_mask_name(path: Path) -> bool:
    name = path.name.lower()
    return any(word in name for word in _MASK_WORDS)


def _is_lidc_xml(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            head = fh.read(4096)
    except OSError:
        return False
    return b"LidcReadMessage" in head


def _visible(path: Path) -> bool:
    return not path.name.startswith(".")


def _holds_images(folder: Path) -> bool:
    """Whether *folder* itself (not its sub-folders) holds an image file: DICOM (with or
    without the Part 10 preamble), NIfTI or MetaImage.  A LICENSE, README or metadata.csv
    beside the case folders (as a TCIA download has) does not make the folder one case."""
    return any(p.is_file() and _visible(p) and p.suffix.lower() not in _NOT_IMAGE_SUFFIXES
               and (is_nifti(p) or is_metaimage(p) or is_dicom_file(p) or _raw_dicom(p))
               for p in folder.iterdir())


def _raw_dicom(path: Path) -> bool:
    """A DICOM dataset without the Part 10 preamble: parsed with pydicom, imported only for
    such files (Part 10 files are told by :func:`~data_tools.part10.is_dicom_file`)."""
    from .dicom_series import is_raw_dicom

    return is_raw_dicom(path)


def _images_below(folder: Path) -> bool:
    """Whether *folder* or any folder below it holds an image file (stops at the first)."""
    return _holds_images(folder) or any(_images_below(d) for d in _subdirs(folder))


def _annotations_only(folder: Path) -> bool:
    """Whether everything visible below *folder* is annotation XML (VOC boxes or LIDC
    readings), at least one file."""
    files = [p for p in folder.rglob("*") if p.is_file() and _visible(p)]
    return bool(files) and all(p.suffix.lower() == ".xml" and (is_voc_xml(p) or _is_lidc_xml(p))
                               for p in files)


def _one_case_with_annotations_beside(subdirs: list[Path]) -> bool:
    """One sub-folder holds images and every other one only annotation XML (module
    docstring): the folder above them is one case."""
    if len(subdirs) < 2:
        return False
    with_images = []
    for d in subdirs:            # a folder of case folders: decided at its second case
        if _images_below(d):
            with_images.append(d)
            if len(with_images) > 1:
                return False
    return (len(with_images) == 1
            and all(_annotations_only(d) for d in subdirs if d is not with_images[0]))


def _case_from_folder(folder: Path, case_id: str, *, require: str | None = None) -> CaseSpec:
    files = [p for p in folder.rglob("*") if p.is_file() and _visible(p)]
    niftis = sorted(p for p in files if p.parent == folder and is_nifti(p))
    metas = sorted(p for p in files if p.parent == folder and is_metaimage(p))
    xmls = sorted(p for p in files if p.suffix.lower() == ".xml" and _is_lidc_xml(p))
    voc = sorted(p for p in files if p.suffix.lower() == ".xml" and p not in xmls
                 and is_voc_xml(p))
    dicom_like = [p for p in files if not is_nifti(p) and not is_metaimage(p)
                  and p.suffix.lower() not in _NOT_IMAGE_SUFFIXES]
    masks = [p for p in niftis if _is_mask_name(p)]
    images = [p for p in niftis + metas if not _is_mask_name(p)]

    def spec(image, kind, mask, mask_kind, problem=None):
        if require and problem is None and mask_kind != require and not (
                mask_kind == "dicom" and require in ("rtstruct", "seg")):
            what = {"lidc": "LIDC XML file", "rtstruct": "RTSTRUCT",
                    "seg": "DICOM SEG"}[require]
            problem = f"case folder holds no {what}"
        if require in ("rtstruct", "seg") and mask_kind == "dicom":
            mask_kind = require
        candidates = {"lidc": tuple(xmls), "boxes": tuple(voc)}.get(mask_kind, ())
        return CaseSpec(case_id, image, kind, mask, problem, mask_kind,
                        layout=next((k for k, v in _RESTRICTED.items() if v == require), "cases"),
                        mask_candidates=candidates)

    if dicom_like:  # a DICOM series folder
        if not masks and len(images) == 1 and images[0].suffix != ".mhd":
            masks, images = images, []
        if len(masks) > 1:
            return spec(folder, "dicom", None, "nifti",
                        f"case folder holds {len(masks)} mask files; keep one")
        if masks and require is None:
            return spec(folder, "dicom", masks[0], "nifti")
        if xmls and require in (None, "lidc"):
            return spec(folder, "dicom", xmls[0], "lidc")
        if voc and require is None:  # per-slice boxes (PASCAL VOC): data_tools.boxes
            return spec(folder, "dicom", voc[0].parent, "boxes")
        return spec(folder, "dicom", None, "dicom")
    if len(images) == 1:
        kind = "metaimage" if is_metaimage(images[0]) else "nifti"
        if len(masks) > 1:
            return spec(images[0], kind, None, "nifti",
                        f"case folder holds {len(masks)} mask files; keep one")
        return spec(images[0], kind, masks[0] if masks else None, "nifti")
    if not images:
        return spec(folder, "dicom", None, "nifti",
                    "case folder holds no DICOM files and no NIfTI or MetaImage volume")
    return spec(folder, "nifti", None, "nifti",
                f"case folder holds {len(images)} volumes and no rule picks one; name the mask "
                "'*mask*.nii.gz' or use a manifest CSV")


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
        kind = ("nifti" if is_nifti(image) else "metaimage" if is_metaimage(image)
                else "dicom")
        mask_kind = "lidc" if mask is not None and mask.suffix.lower() == ".xml" else "nifti"
        if mask is None and kind == "dicom":
            mask_kind = "dicom"  # an RTSTRUCT / SEG in the series tree, if any
        specs.append(CaseSpec(case_id, image, kind, mask, mask_kind=mask_kind,
                              layout="manifest",
                              source_key=(row.get("series_uid") or "").strip()))
    return specs


def _nifti_stem(path: Path) -> str:
    name = path.name
    return name[:-7] if name.lower().endswith(".nii.gz") else path.stem


def _from_msd(root: Path) -> list[CaseSpec]:
    specs = []
    for split, labelled in (("imagesTr", True), ("imagesTs", False)):
        folder = root / split
        if not folder.is_dir():
            continue
        for image in sorted(p for p in folder.iterdir() if is_nifti(p) and _visible(p)):
            stem = _nifti_stem(image)
            case_id = pseudonymous_id(f"msd/{stem}")
            if not labelled:
                specs.append(CaseSpec(case_id, image, "nifti", None, layout="msd"))
                continue
            label = next((p for p in (root / "labelsTr" / image.name,
                                      root / "labelsTr" / f"{stem}.nii") if p.is_file()), None)
            problem = None if label else (f"MSD image {file_label(image)} has no label map in "
                                          "labelsTr/ (same file name expected)")
            specs.append(CaseSpec(case_id, image, "nifti", label, problem, mask_kind="msd",
                                  layout="msd"))
    if not specs:
        raise NoSeriesError(f"the MSD folder {file_label(root)} has no images in imagesTr/ or "
                            "imagesTs/", path=root)
    return specs


def _find_luna_annotations(root: Path) -> Path | None:
    found = sorted(p for p in root.rglob("annotations.csv") if _visible(p))
    return found[0] if found else None


def _holds_luna(folder: Path) -> bool:
    return (_find_luna_annotations(folder) is not None
            and any(_visible(p) for p in folder.rglob("*.mhd")))


def _subdirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name[:1] not in "_.")


def _from_luna(root: Path) -> list[CaseSpec]:
    annotations = _find_luna_annotations(root)
    specs = []
    for image in sorted(p for p in root.rglob("*.mhd") if _visible(p)):
        uid = image.stem
        problem = None if annotations else ("no annotations.csv found in the LUNA16 folder; "
                                            "put it beside the subset folders")
        specs.append(CaseSpec(pseudonymous_id(uid), image, "metaimage", annotations, problem,
                              mask_kind="luna16", layout="luna16", source_key=uid))
    if not specs:
        raise NoSeriesError(f"the LUNA16 folder {file_label(root)} holds no .mhd volumes",
                            path=root)
    return specs


def detect_layout(input_path: str | Path) -> str:
    """The layout ``discover_cases(..., layout="auto")`` would use (see module docstring)."""
    root = Path(input_path)
    if root.is_file() and root.suffix.lower() == ".csv":
        return "manifest"
    if not root.is_dir():
        raise NoSeriesError(f"input {file_label(root)} is neither a folder nor a manifest CSV",
                            path=root)
    if (root / "dataset.json").is_file() and (root / "imagesTr").is_dir():
        return "msd"
    if _holds_luna(root) and not any(_holds_luna(d) for d in _subdirs(root)):
        return "luna16"
    return "cases"


def discover_cases(input_path: str | Path, *, layout: str = "auto") -> list[CaseSpec]:
    """List the cases under *input_path*.

    Parameters
    ----------
    input_path : path
        A folder (any layout of the module docstring) or a manifest CSV.
    layout : str
        One of ``LAYOUTS``; ``"auto"`` recognises the layout.

    Returns
    -------
    list of CaseSpec
        Sorted by case id.

    Raises
    ------
    NoSeriesError
        The input holds nothing that looks like a case, or is missing.
    ValueError
        Unknown *layout*.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}; received {layout!r}")
    root = Path(input_path)
    chosen = detect_layout(root) if layout == "auto" else layout
    if chosen != layout:
        log.info("input layout recognised as %s", chosen)
    if chosen == "manifest":
        specs = _from_manifest(root)
    elif not root.is_dir():
        raise NoSeriesError(f"input {file_label(root)} is not a folder", path=root)
    elif chosen == "msd":
        specs = _from_msd(root)
    elif chosen == "luna16":
        specs = _from_luna(root)
    else:
        require = _RESTRICTED.get(chosen)
        subdirs = _subdirs(root)
        if not subdirs or _holds_images(root) or _one_case_with_annotations_beside(subdirs):
            # the input is itself one case folder
            specs = [_case_from_folder(root, pseudonymous_id(root.name), require=require)]
        else:
            specs = []
            for d in subdirs:
                inner = detect_layout(d) if require is None else "cases"
                if inner == "msd":
                    specs += _from_msd(d)
                elif inner == "luna16":
                    specs += _from_luna(d)
                else:
                    specs.append(_case_from_folder(d, pseudonymous_id(d.name), require=require))
    if not specs:
        raise NoSeriesError(f"input {file_label(root)} holds no cases", path=root)
    return sorted(specs, key=lambda s: s.case_id)
