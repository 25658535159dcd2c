"""DICOM exports of the results: SEG, Parametric Map and TID 1500 SR over the source series.

``export_case_dicom`` writes, per DICOM case, into ``OUT/<case_id>/``::

    ct/CT0001.dcm ...   the source CT series, de-identified (one file per slice, in slice order)
    seg.dcm             Segmentation: one segment per nodule, one for the off-mask regions
    pmap.dcm            Parametric Map: the attribution (float32; LayerCAM for the demo model)
    sr.dcm              Comprehensive 3D SR, TID 1500 Measurement Report: per nodule the
                        probability, alignment metrics and verdict

so that a viewer (3D Slicer, OHIF) opening the folder shows the findings over the images.
Every file is written to a temporary name and renamed (:func:`data_tools.files.atomic_path`).

Rules
-----
* **Privacy.**  The results hold only pseudonymous ids and arrays, so the source headers are
  re-read from the input (the case's folder, series chosen as when it was scored) and each is
  de-identified with :func:`data_tools.deid.deidentify_dataset` (*key*: the secret of the
  keyed UID / Patient ID pseudonyms; one key keeps the UIDs of repeated exports equal)
  *before* anything is derived from it.  The SEG, Parametric Map and SR are built from the
  de-identified copies only, so their patient / study attributes (copied by highdicom) and
  every reference carry the replaced UIDs; the new series and instance UIDs are random
  (``highdicom.UID``).  Type 2 patient / study attributes missing after de-identification
  are added empty (highdicom copies them), and a missing or empty Slice Thickness becomes
  the slice step.  No source path, patient name / ID, original UID
  or series description is in any file; file names are made of the case id and slice
  numbers.  Pixel data are copied unchanged (see ``deidentify_dataset``).
* **Slice matching.**  The stored arrays are sorted along the slice normal, as
  :func:`data_tools.dicom.load_dicom_folder` returns them.  Each source file is placed at the
  array slice ``k`` its ImagePositionPatient projects to along the stored affine's slice axis
  (never file order); files off the grid (localizers) are skipped, exact duplicates keep the
  first by path (as the reader does), and every slice must be found.  The re-read series
  must have the stored grid (shape, affine within 1e-3 mm) and the stored HU, or the case
  is refused (rescore it).  A gantry-tilted series, resampled when it was scored, is
  refused: its grid no longer matches the source images.
* **SEG** (``BINARY``, empty frames omitted; segments may overlap, when an off-mask region
  of one nodule reaches into another nodule's mask).  Segment ``i`` (``1..N``) is nodule
  ``n<label>`` in label order: label "Nodule n<label>", category SCT 49755003
  "Morphologically Abnormal Structure", type SCT 27925004 "Nodule", algorithm type MANUAL
  (the mask is the input's annotation).  Segment ``N+1`` "Off-mask attention" is the union
  of the case's off-mask regions (``region_map > 0``): category SCT 309825002 "Spatial and
  Relational Concept", type DCM 130403 "Gradient-weighted class activation", algorithm type
  AUTOMATIC with an Algorithm Identification naming this tool, its version and the model
  hash.  Omitted when the case has no off-mask region.
* **Parametric Map** (float32, Float Pixel Data) of the slab of slices holding a nonzero
  attribution or a nodule voxel (the attribution is zero elsewhere; frames reference the
  source slices at the same positions).  Real World Value Mapping: identity, LUT label the
  method the results were scored with ("LayerCAM", "Grad-CAM"), unit UCUM ``{attribution}``,
  quantity DCM 130403 (gradient-weighted class activation).
* **SR** (TID 1500): one TID 1411 Volumetric ROI group per nodule, referencing its SEG
  segment (with the source images) and the Parametric Map; tracking id "Nodule n<label>"
  (the SEG segment's tracking UID), finding type SCT "Nodule", finding site SCT "Lung".
  Measurements (NaN values are left out): DCM 111047 "Probability of cancer" (the model's
  probability of malignancy, UCUM ``1``), SCT 118565006 "Volume" (mm3), and in the private
  scheme ``99CTNOD`` (declared in the Coding Scheme Identification Sequence): RMA, RRA,
  near mass, off-mask share (UCUM ``1``) and peak distance (mm).  Qualitative evaluation
  ``99CTNOD VERDICT`` with one code per verdict of :data:`discovery.align.metrics.VERDICTS`.
  Observer: a device (this tool).
* ``export_dicom`` exports every DICOM case of an input (discovered with
  :func:`data_tools.layouts.discover_cases`; its case ids are the results' ids).  Cases
  that are not DICOM, not in the results, or without a nodule are skipped with a logged
  reason; a case that fails is recorded with a safe message and the others go on.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import highdicom as hd
import numpy as np
import pandas as pd
import pydicom
from highdicom.coding_schemes import CodingSchemeIdentificationItem
from highdicom.sr import CodedConcept
from pydicom.sr.codedict import codes
from pydicom.valuerep import format_number_as_ds

from data_tools.deid import DEFAULT_KEY_NOTICE, deidentify_dataset, pseudonymous_id
from data_tools.dicom import load_dicom_folder
from data_tools.errors import (
    DataError,
    GeometryMismatchError,
    SeriesValidationError,
    file_label,
    safe_error,
)
from data_tools.files import atomic_path
from data_tools.layouts import CaseSpec, discover_cases
from data_tools.volume import spacing_from_affine
from discovery.explain.catalog import map_title
from discovery.store.arrays import ct_int16, matches_stored_ct
from discovery.store.tables import ResultsStore, load_case_arrays

__all__ = [
    "MEASUREMENTS",
    "PRIVATE_SCHEME",
    "TOOL_NAME",
    "VERDICT_CODES",
    "VERDICT_CONCEPT",
    "export_case_dicom",
    "export_dicom",
]

log = logging.getLogger(__name__)

TOOL_NAME = "ct-nodule-discovery"
PRIVATE_SCHEME = "99CTNOD"
SERIES_NUMBERS = {"seg": 9001, "pmap": 9002, "sr": 9003}
POSITION_TOLERANCE_MM = 0.05

_CT_CHEST = CodedConcept("24627-2", "LN", "CT Chest")
_GRADCAM = codes.DCM.GradientWeightedClassActivation   # DCM 130403
_NO_UNITS = codes.UCUM.NoUnits
_ATTRIBUTION_UNIT = CodedConcept("{attribution}", "UCUM", "attribution")


def _private(value: str, meaning: str) -> CodedConcept:
    return CodedConcept(value, PRIVATE_SCHEME, meaning)


#: (findings column, concept, unit) of the SR measurements, in report order
MEASUREMENTS = (
    ("probability", codes.DCM.ProbabilityOfCancer, _NO_UNITS),
    ("rma", _private("RMA", "Relevance mass accuracy"), _NO_UNITS),
    ("rra", _private("RRA", "Relevance rank accuracy"), _NO_UNITS),
    ("peak_distance_mm", _private("PEAKDIST", "Attribution peak distance to nodule"),
     codes.UCUM.Millimeter),
    ("near_mass", _private("NEARMASS", "Attribution mass near nodule"), _NO_UNITS),
    ("offmask_mass_share", _private("OFFSHARE", "Off-mask attribution share"), _NO_UNITS),
    ("volume_mm3", codes.SCT.Volume, codes.UCUM.CubicMillimeter),
)
VERDICT_CONCEPT = _private("VERDICT", "Attribution alignment verdict")
#: verdict (discovery.align.metrics.VERDICTS) -> code value in the private scheme
VERDICT_CODES = {
    "aligned": _private("ALIGNED", "Attribution on the nodule"),
    "partial": _private("PARTIAL", "Attribution partly on the nodule"),
    "off-mask": _private("OFFMASK", "Attribution off the nodule"),
    "no-mask": _private("NOMASK", "No nodule mask"),
    "no-attribution": _private("NOATTR", "No attribution"),
}


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(TOOL_NAME)
    except PackageNotFoundError:
        return "unknown"


# -- reading the source series -----------------------------------------------------------
def _as_spec(case: CaseSpec | str | Path) -> CaseSpec:
    if isinstance(case, CaseSpec):
        return case
    folder = Path(case)
    return CaseSpec(case_id=pseudonymous_id(folder.name), image=folder, image_kind="dicom",
                    mask=None, mask_kind="dicom")


def _iop(ds) -> np.ndarray:
    return np.array([float(v) for v in ds.ImageOrientationPatient], dtype=float)


def _source_slices(files, affine: np.ndarray, spacing_mm, shape: tuple[int, int, int]) -> list:
    """Read *files* (pixels included) and return one dataset per array slice ``k`` of the
    grid *affine* (voxel spacing *spacing_mm*, ``(dz, dy, dx)``: its columns' norms)."""
    step, origin = affine[:3, 0], affine[:3, 3]
    row_cos = affine[:3, 2] / spacing_mm[2]
    col_cos = affine[:3, 1] / spacing_mm[1]
    found: dict[int, pydicom.Dataset] = {}
    for path in sorted(Path(f) for f in files):
        ds = pydicom.dcmread(path)
        try:
            iop, ipp = _iop(ds), np.array([float(v) for v in ds.ImagePositionPatient])
            size = (int(ds.Rows), int(ds.Columns))
        except (AttributeError, ValueError, TypeError):
            log.info("skipping %s: no image geometry", file_label(path))
            continue
        if (size != tuple(shape[1:]) or not np.allclose(iop[:3], row_cos, atol=1e-3)
                or not np.allclose(iop[3:], col_cos, atol=1e-3)):
            log.info("skipping %s: not on the series grid (a localizer?)", file_label(path))
            continue
        t = float((ipp - origin) @ step / (step @ step))
        k = round(t)
        if not 0 <= k < shape[0] or np.linalg.norm(ipp - (origin + k * step)) > \
                POSITION_TOLERANCE_MM:
            log.info("skipping %s: its position is off the slice grid", file_label(path))
            continue
        if k in found:
            log.info("skipping %s: a second file at slice %d", file_label(path), k)
            continue
        found[k] = ds
    missing = [k for k in range(shape[0]) if k not in found]
    if missing:
        raise GeometryMismatchError(
            f"{len(missing)} of the {shape[0]} slices of the scored grid have no source file "
            f"(first missing: slice {missing[0]}). The input series changed since it was "
            "scored; rescore the case before exporting.")
    return [found[k] for k in range(shape[0])]


#: Type 2 patient / study attributes that highdicom copies from the source: added empty
#: when the source (or the de-identification) left them out
_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate",
          "StudyTime", "AccessionNumber", "StudyID", "ReferringPhysicianName")


def _complete(ds, slice_step_mm: float):
    """Add what highdicom reads from a source image: the Type 2 attributes above (empty)
    and, when absent or empty, Slice Thickness (the slice step, mm).  An empty Specific
    Character Set (real GE files have one) is removed: empty and absent both mean the
    default repertoire (PS3.5 6.1.2.5.1), and highdicom, which copies it into the SEG,
    refuses the empty value."""
    for keyword in _TYPE2:
        if keyword not in ds:
            setattr(ds, keyword, "")
    if ds.get("SliceThickness", None) in (None, ""):
        ds.SliceThickness = format_number_as_ds(float(slice_step_mm))
    if "SpecificCharacterSet" in ds and not ds.SpecificCharacterSet:
        del ds.SpecificCharacterSet
    return ds


# -- building the objects ------------------------------------------------------------------
def _algorithm(model_sha: str, title: str) -> hd.AlgorithmIdentificationSequence:
    return hd.AlgorithmIdentificationSequence(
        name=f"{TOOL_NAME} {title} off-mask regions", version=_version(),
        family=codes.cid7162.ArtificialIntelligence,
        parameters={"model_sha256": model_sha[:16] or "unknown"})


def _segmentation(sources, nodules, mask, region_map, model_sha, common, title):
    descriptions = []
    dtype = np.uint8 if len(nodules) < 255 else np.uint16
    labels = np.zeros(mask.shape, dtype)  # label-map style: segment number per voxel
    for i, (nid, label, tracking_uid) in enumerate(nodules, start=1):
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=i, segment_label=f"Nodule {nid}",
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=codes.SCT.Nodule,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
            tracking_uid=tracking_uid, tracking_id=f"Nodule {nid}"))
        labels[mask == label] = i
    pixels = labels
    off = region_map > 0
    if off.any():
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=len(descriptions) + 1, segment_label="Off-mask attention",
            segmented_property_category=codes.SCT.SpatialAndRelationalConcept,
            segmented_property_type=_GRADCAM,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=_algorithm(model_sha, title),
            tracking_uid=hd.UID(), tracking_id="Off-mask attention"))
        if labels[off].any():  # a region of one nodule overlaps another's mask: stack
            pixels = np.stack([labels == i for i in range(1, len(nodules) + 1)] + [off],
                              axis=-1).astype(np.uint8)
        else:
            labels[off] = len(descriptions)
    return hd.seg.Segmentation(
        source_images=sources, pixel_array=pixels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions, series_instance_uid=hd.UID(),
        series_number=SERIES_NUMBERS["seg"], sop_instance_uid=hd.UID(), instance_number=1,
        content_label="NODULES", content_description="Nodule masks and off-mask attention",
        series_description="Nodules and off-mask attention", **common)


def _parametric_map(sources, attribution, mask, common, title):
    """The attribution as a Parametric Map; *title*: its method ("LayerCAM"), the LUT's
    label (16 characters at most) and the descriptions."""
    keep = np.flatnonzero((attribution != 0).any(axis=(1, 2)) | (mask != 0).any(axis=(1, 2)))
    z0, z1 = (int(keep[0]), int(keep[-1]) + 1) if keep.size else (0, attribution.shape[0])
    values = np.ascontiguousarray(attribution[z0:z1], dtype=np.float32)
    lo, hi = float(values.min()), float(values.max())
    hi = hi if hi > lo else lo + 1.0
    mapping = hd.pm.RealWorldValueMapping(
        lut_label=title[:16], lut_explanation=f"{title} attribution on the CT grid"[:64],
        unit=_ATTRIBUTION_UNIT, value_range=(lo, hi), slope=1.0, intercept=0.0,
        quantity_definition=_GRADCAM)
    pmap = hd.pm.ParametricMap(
        source_images=sources[z0:z1], pixel_array=values, series_instance_uid=hd.UID(),
        series_number=SERIES_NUMBERS["pmap"], sop_instance_uid=hd.UID(), instance_number=1,
        contains_recognizable_visual_features=False, real_world_value_mappings=[mapping],
        # raw CAM values span far less than 1: a window narrower than 1 is valid only
        # with LINEAR_EXACT (PS3.3 C.11.2.1.3)
        voi_lut_transformations=[hd.VOILUTTransformation(
            window_center=(lo + hi) / 2, window_width=hi - lo,
            voi_lut_function=hd.VOILUTFunctionValues.LINEAR_EXACT)],
        content_label="ATTRIBUTION", content_description=f"{title} attribution"[:64],
        series_description=f"{title} attribution"[:64], **common)
    # General Series: Laterality is required for a paired body part; the source's body part
    # (CHEST: unpaired) says none is needed.  highdicom copies it into the SEG, not here.
    # Without one (real Philips and GE series), the laterality is unknown: the source's
    # Laterality as it is, else empty, which PS3.3 allows when unknown (dciodvfy: Type 2C
    # missing otherwise).
    body_part = sources[0].get("BodyPartExamined")
    if body_part:
        pmap.BodyPartExamined = body_part
    else:
        pmap.Laterality = sources[0].get("Laterality", "")
    return pmap


def _referenced_segment(seg, segment_number: int) -> hd.sr.ReferencedSegment:
    """The SR's reference to segment *segment_number* of *seg*: highdicom's
    ``ReferencedSegment.from_segmentation``, except for a SEG of one segment, whose segment
    identification highdicom writes once in the shared functional groups and which
    ``from_segmentation`` then cannot read (it looks in every frame's; a real case with one
    nodule and no off-mask region failed so).  There every frame is the segment's, and the
    reference lists each frame's source image once, as ``from_segmentation`` does."""
    shared = seg.SharedFunctionalGroupsSequence[0]
    if "SegmentIdentificationSequence" not in shared:
        return hd.sr.ReferencedSegment.from_segmentation(seg, segment_number)
    sources, seen = [], set()
    for item in seg.PerFrameFunctionalGroupsSequence:
        for derivation in item.get("DerivationImageSequence", []):
            for src in derivation.get("SourceImageSequence", []):
                if src.ReferencedSOPInstanceUID not in seen:
                    seen.add(src.ReferencedSOPInstanceUID)
                    sources.append(hd.sr.SourceImageForSegmentation(
                        src.ReferencedSOPClassUID, src.ReferencedSOPInstanceUID))
    return hd.sr.ReferencedSegment(sop_class_uid=seg.SOPClassUID,
                                   sop_instance_uid=seg.SOPInstanceUID,
                                   segment_number=segment_number, source_images=sources)


def _measurement_group(row, segment_number, tracking_uid, seg):
    # No TID 1411 'Real World Value Map used for measurement' row: it must reference a Real
    # World Value Mapping instance, and the Parametric Map carries its mapping inline (the
    # map is listed in the report's evidence instead; dciodvfy flags the class mismatch).
    nid = str(row["nodule_id"])
    measurements = []
    for column, concept, unit in MEASUREMENTS:
        value = row.get(column)
        if value is None or not np.isfinite(float(value)):
            continue
        measurements.append(hd.sr.Measurement(name=concept, value=float(value), unit=unit))
    verdict = VERDICT_CODES.get(str(row.get("verdict") or ""))
    evaluations = [hd.sr.QualitativeEvaluation(VERDICT_CONCEPT, verdict)] if verdict else None
    return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=tracking_uid,
                                                     identifier=f"Nodule {nid}"),
        referenced_segment=_referenced_segment(seg, segment_number),
        finding_type=codes.SCT.Nodule,
        finding_category=codes.SCT.MorphologicallyAbnormalStructure,
        algorithm_id=hd.sr.AlgorithmIdentification(name=TOOL_NAME, version=_version()),
        finding_sites=[hd.sr.FindingSite(codes.SCT.Lung)],
        measurements=measurements, qualitative_evaluations=evaluations)


def _report(sources, rows, seg, pmap, tracking, common):
    device = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=_tool_uid(), name=TOOL_NAME, manufacturer_name=TOOL_NAME,
            model_name=TOOL_NAME))
    groups = [_measurement_group(row, i, tracking[i - 1], seg)
              for i, row in enumerate(rows, start=1)]
    content = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=device),
        procedure_reported=_CT_CHEST, imaging_measurements=groups,
        title=codes.DCM.ImagingMeasurementReport)
    scheme = CodingSchemeIdentificationItem(
        designator=PRIVATE_SCHEME, name=f"{TOOL_NAME} codes",
        responsible_organization=TOOL_NAME)
    return hd.sr.Comprehensive3DSR(
        evidence=[*sources, seg, pmap], content=content[0], series_instance_uid=hd.UID(),
        series_number=SERIES_NUMBERS["sr"], sop_instance_uid=hd.UID(), instance_number=1,
        manufacturer=common["manufacturer"], is_complete=True, coding_schemes=[scheme],
        series_description="Nodule findings")


def _tool_uid() -> str:
    """A fixed UID for this tool as an SR observer device."""
    digest = hashlib.sha256(f"{TOOL_NAME} device".encode()).digest()
    return "2.25." + str(int.from_bytes(digest[:15], "big"))


def _write(ds, path: Path) -> Path:
    with atomic_path(path) as tmp:
        ds.save_as(tmp, enforce_file_format=True)
    return path


# -- one case, step by step ------------------------------------------------------------------
def _scored_nodules(results_dir: str | Path, spec: CaseSpec) -> tuple[pd.DataFrame, str, str]:
    """The findings rows of the case's nodules, the model's SHA-256 (``""`` if unknown) and
    the method of its maps in words (``"LayerCAM"``); DataError when the case is not DICOM
    or has no scored nodule."""
    cid = spec.case_id
    if spec.image_kind != "dicom":
        raise DataError(f"case {cid} is a {spec.image_kind} case; only DICOM cases can be "
                        "exported as DICOM")
    store = ResultsStore(results_dir, create=False)
    try:
        findings, meta = store.findings(), store.meta()
    finally:
        store.close()
    rows = findings[(findings["case_id"] == cid) & (findings["nodule_id"].fillna("") != "")]
    if not len(rows):
        raise DataError(f"case {cid} has no scored nodule in the results; score it with a "
                        "nodule mask first")
    return rows, str(meta.get("model_sha256") or ""), map_title(meta.get("method"))


def _scored_series(spec: CaseSpec, arrays: dict) -> list:
    """Re-read the case's series as it was scored; return its files.

    Refuses (DataError) a gantry-tilted series and one whose grid or HU differ from the
    stored arrays.
    """
    cid, mask = spec.case_id, np.asarray(arrays["mask"])
    volume, chosen, _ = load_dicom_folder(spec.image, series_uid=spec.source_key or None)
    if "gantry_tilt_deg" in volume.metadata:
        raise SeriesValidationError(
            f"case {cid}: the series has a gantry tilt of {volume.metadata['gantry_tilt_deg']} "
            "degrees and was resampled onto an orthogonal grid when scored; the results no "
            "longer line up with the source images, so no DICOM objects referencing them can "
            "be made. Export the case as NIfTI instead.")
    ct = ct_int16(volume.array)
    affine = np.asarray(arrays["affine"], dtype=float)
    if (volume.shape != mask.shape or not np.allclose(volume.affine, affine, atol=1e-3)
            or not matches_stored_ct(ct, np.asarray(arrays["ct"]))):
        raise GeometryMismatchError(
            f"case {cid}: the series in the input (grid {volume.shape}) differs from the one "
            f"scored (grid {mask.shape}); rescore the case before exporting.")
    return chosen.files


def _nodules_in_mask(rows: pd.DataFrame, mask: np.ndarray, cid: str) -> list[pd.Series]:
    """The rows (label order, ``_label`` added) of the nodules with a voxel in *mask*."""
    rows = rows.assign(_label=[int(str(n).lstrip("n")) for n in rows["nodule_id"]])
    rows = rows.sort_values("_label")
    present = set(np.unique(mask).tolist())
    kept = [r for _, r in rows.iterrows() if r["_label"] in present]
    for _, r in rows.iterrows():
        if r["_label"] not in present:
            log.warning("case %s: nodule %s has no voxel in the stored mask; left out", cid,
                        r["nodule_id"])
    if not kept:
        raise DataError(f"case {cid}: no nodule of the findings is in the stored mask")
    return kept


def _write_case(case_dir: Path, sources: list, seg, pmap, sr) -> list[Path]:
    """The CT slices (``ct/CT0001.dcm`` ..., stale ones removed), then the SEG, Parametric
    Map and SR; returns the paths written."""
    ct_dir = case_dir / "ct"
    ct_dir.mkdir(parents=True, exist_ok=True)
    names = [f"CT{k + 1:04d}.dcm" for k in range(len(sources))]
    for stale in ct_dir.glob("CT*.dcm"):
        if stale.name not in names:
            stale.unlink()
    written = [_write(ds, ct_dir / name) for ds, name in zip(sources, names)]
    return written + [_write(seg, case_dir / "seg.dcm"), _write(pmap, case_dir / "pmap.dcm"),
                      _write(sr, case_dir / "sr.dcm")]


# -- public API ------------------------------------------------------------------------
def export_case_dicom(results_dir: str | Path, case_spec_or_folder: CaseSpec | str | Path,
                      out_dir: str | Path, *, key: str | bytes | None = None) -> list[Path]:
    """Write the de-identified CT, SEG, Parametric Map and SR of one scored DICOM case.

    Parameters
    ----------
    results_dir : path
        A results folder written by ``discovery score``.
    case_spec_or_folder : CaseSpec or path
        The case as :func:`data_tools.layouts.discover_cases` lists it, or its DICOM folder
        (its case id is then the pseudonym of the folder name, as in the ``cases`` layout).
    out_dir : path
        Files go to ``out_dir/<case_id>/`` (module docstring).
    key : str or bytes, optional
        De-identification secret (:func:`data_tools.deid.deidentify_dataset`).

    Returns
    -------
    list of Path
        The files written: the CT slices in slice order, then ``seg.dcm``, ``pmap.dcm``,
        ``sr.dcm``.

    Raises
    ------
    DataError
        Not a DICOM case, not in the results or without a nodule, a gantry-tilted series,
        or a source series that no longer matches the scored grid.
    """
    spec = _as_spec(case_spec_or_folder)
    cid = spec.case_id
    rows, model_sha, title = _scored_nodules(results_dir, spec)
    arrays = load_case_arrays(results_dir, cid)
    mask, affine = np.asarray(arrays["mask"]), np.asarray(arrays["affine"], dtype=float)
    files, spacing = _scored_series(spec, arrays), spacing_from_affine(affine)
    sources = [_complete(deidentify_dataset(ds, key=key), spacing[0])
               for ds in _source_slices(files, affine, spacing, mask.shape)]
    kept = _nodules_in_mask(rows, mask, cid)
    tracking = [hd.UID() for _ in kept]
    common = {"manufacturer": TOOL_NAME, "manufacturer_model_name": TOOL_NAME,
              "software_versions": _version(),
              "device_serial_number": model_sha[:16] or "unknown"}
    seg = _segmentation(sources, [(str(r["nodule_id"]), int(r["_label"]), t)
                                  for r, t in zip(kept, tracking)],
                        mask, np.asarray(arrays["region_map"]), model_sha, common, title)
    pmap = _parametric_map(sources, np.asarray(arrays["attribution"]), mask, common, title)
    sr = _report(sources, kept, seg, pmap, tracking, common)
    written = _write_case(Path(out_dir) / cid, sources, seg, pmap, sr)
    log.info("case %s: exported %d CT slices, SEG (%d segments), Parametric Map, SR", cid,
             len(sources), len(seg.SegmentSequence))
    return written


def export_dicom(results_dir: str | Path, input_path: str | Path, out_dir: str | Path, *,
                 key: str | bytes | None = None, layout: str = "auto") -> dict:
    """Export every scored DICOM case of *input_path* (see :func:`export_case_dicom`).

    Parameters
    ----------
    results_dir : path
        The results folder.
    input_path : path
        The input that was scored (folder or manifest CSV).
    out_dir : path
        Output folder; one sub-folder per case.
    key : str or bytes, optional
        De-identification secret.
    layout : str
        Input layout (:data:`data_tools.layouts.LAYOUTS`).

    Returns
    -------
    dict
        ``exported``: case id -> list of Path written; ``skipped``: case id -> reason;
        ``failed``: case id -> safe error message.
    """
    if key is None and "DISCOVERY_ID_KEY" not in os.environ:
        log.warning(DEFAULT_KEY_NOTICE)
    store = ResultsStore(results_dir, create=False)
    try:
        findings = store.findings()
    finally:
        store.close()
    known = set(findings["case_id"])
    with_nodules = set(findings.loc[findings["nodule_id"].fillna("") != "", "case_id"])
    out: dict[str, dict] = {"exported": {}, "skipped": {}, "failed": {}}
    for spec in discover_cases(input_path, layout=layout):
        cid = spec.case_id
        reason = None
        if spec.image_kind != "dicom":
            reason = f"not a DICOM case ({spec.image_kind})"
        elif cid not in known:
            reason = "not in the results"
        elif cid not in with_nodules:
            states = sorted(set(findings.loc[findings["case_id"] == cid, "status"].astype(str)))
            reason = f"no scored nodule (status {', '.join(states)})"
        if reason:
            log.info("case %s skipped: %s", cid, reason)
            out["skipped"][cid] = reason
            continue
        try:
            out["exported"][cid] = export_case_dicom(results_dir, spec, out_dir, key=key)
        except Exception as exc:  # noqa: BLE001 -- record the case and go on
            if isinstance(exc, DataError):
                message = str(exc)
            else:
                message = safe_error(exc, input_path, spec.image).replace(
                    "while scoring", "while exporting", 1)
            log.warning("case %s not exported: %s", cid, message)
            out["failed"][cid] = message
    return out
