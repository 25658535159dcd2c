"""Write ONE input tree that mixes every supported layout with broken cases (tests only).

``write_mixed_tree(root)`` writes, with the real writers (pydicom, highdicom, SimpleITK,
nibabel, XML text), tiny CT scans of 20 slices x 40 x 40 voxels (1.5 mm pixels, 2 mm
slices, HU background about -850, a 40 HU ball nodule of radius 5 mm) in these layouts:

=====================  ============================================================  =====
folder                 what                                                          finds
=====================  ============================================================  =====
Task06_Lung/           MSD: ``imagesTr/lung_001`` + ``labelsTr/lung_001`` (two       2 + 0
                       blobs, both label 1), ``imagesTs/lung_050`` (no label), a
                       macOS ``._lung_001.nii.gz`` junk file
LUNA16/                ``subset0/<uid1>.mhd/.raw``, ``annotations.csv`` (uid1 and a  1
                       uid that is absent); ``subset0/<uid2>.mhd`` without its .raw  fail
LIDC-IDRI-0001/        study/series DICOM CT + ``069.xml`` (two readers)             1
LUNG1-001/             study/``CT``/ DICOM + study/``RTSTRUCT``/``1-1.dcm`` (GTV-1)  1
SEG-0001/              ``CT``/ DICOM + ``SEG``/``seg.dcm`` (highdicom)               1
native-nifti/          ``ct.nii.gz`` + ``mask.nii.gz``                               1
compressed-rle/        RLE Lossless DICOM series + ``mask.nii.gz`` on its grid       1
broken-gap/            DICOM series with slice 7 removed                             fail
broken-truncated/      DICOM series with one file cut to half its bytes              fail
mr-only/               pydicom's ``MR_small.dcm``                                    fail
mr-truncated/          pydicom's ``MR_truncated.dcm``                                fail
empty-case/            nothing                                                       fail
nifti-4d/              nibabel's ``example4d.nii.gz`` as ``ct.nii.gz``               fail
mask-wrong-grid/       ``ct.nii.gz`` (20 x 40 x 40) + ``mask.nii.gz`` (20 x 40 x 30)   fail
=====================  ============================================================  =====

Every DICOM file names the patient ``Doe^Jane``; no folder or file name holds it.

Run ``python tests/_layout_factory.py OUT_DIR`` to write the tree for ``discovery score``.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np

SHAPE = (20, 40, 40)                    # (z, y, x)
SPACING = (2.0, 1.5, 1.5)               # (dz, dy, dx) mm
ORIGIN = (-30.0, -30.0, -20.0)          # LPS mm of voxel (0, 0, 0)
CENTER = (10, 20, 20)                   # voxel of the nodule centre
RADIUS_MM = 5.0
PATIENT = "Doe^Jane"
UID_ROOT = "1.3.6.1.4.1.14519.5.2.1.6279.6001."


def _affine():
    from data_tools.volume import affine_from_spacing

    return affine_from_spacing(SPACING, ORIGIN)


def ball(center=CENTER, radius_mm=RADIUS_MM, shape=SHAPE) -> np.ndarray:
    """Bool ``(z, y, x)``: voxel centres within *radius_mm* of the voxel *center*."""
    zz, yy, xx = np.indices(shape)
    d2 = sum(((ax - c) * s) ** 2 for ax, c, s in zip((zz, yy, xx), center, SPACING))
    return d2 <= radius_mm ** 2


def phantom(rng, blobs=((CENTER, RADIUS_MM),), shape=SHAPE):
    """Integer HU ``(z, y, x)`` (background -850 +- noise, blobs 40) and the bool blob union."""
    hu = np.rint(rng.normal(-850.0, 15.0, shape))
    inside = np.zeros(shape, bool)
    for center, radius in blobs:
        inside |= ball(center, radius, shape)
    hu[inside] = 40.0
    return hu.astype(np.float32), inside


def _uid(*parts) -> str:
    from pydicom.uid import generate_uid

    return generate_uid(entropy_srcs=[str(p) for p in parts])


def write_dicom_series(folder: Path, hu: np.ndarray, *, seed, compress=False,
                       prefix="1-") -> list[Path]:
    """One file per slice (``ct_dataset``); slope 1 / intercept -1024, or slope 0.5 /
    intercept -1000 on odd slices (HU stays exact); returns the files in slice order."""
    from _dicom_factory import ct_dataset
    from pydicom.uid import RLELossless

    folder.mkdir(parents=True, exist_ok=True)
    series_uid, study_uid = _uid(seed, folder.name, "series"), _uid(seed, folder.name, "study")
    files = []
    for k in range(hu.shape[0]):
        slope, intercept = (0.5, -1000.0) if k % 2 else (1.0, -1024.0)
        stored = np.rint((hu[k] - intercept) / slope).astype(np.int16)
        pos = (ORIGIN[0], ORIGIN[1], ORIGIN[2] + k * SPACING[0])
        ds = ct_dataset(stored, position=pos, pixel_spacing=SPACING[1:], slope=slope,
                        intercept=intercept, instance=hu.shape[0] - k, series_uid=series_uid,
                        study_uid=study_uid, slice_thickness=SPACING[0])
        ds.PatientName = PATIENT
        if compress:
            ds.compress(RLELossless)
        path = folder / f"{prefix}{k + 1:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    return files


# -- annotation writers ------------------------------------------------------------------------

def _square(x0, y0, x1, y1):
    """Closed 8-connected contour along the rectangle's border (first point repeated)."""
    pts = [(x, y0) for x in range(x0, x1)] + [(x1, y) for y in range(y0, y1)]
    pts += [(x, y1) for x in range(x1, x0, -1)] + [(x0, y) for y in range(y1, y0, -1)]
    return pts + [pts[0]]


def _lidc_nodule_xml(center, halves, chars, number=1) -> str:
    """One ``unblindedReadNodule``: square contours of half widths *halves* (by slice k)
    around voxel *center* ``(z, y, x)`` (its z unused), ratings *chars*."""
    _, cy, cx = center
    rois = []
    for k, h in halves.items():
        z = ORIGIN[2] + k * SPACING[0]
        edges = "".join(f"<edgeMap><xCoord>{x}</xCoord><yCoord>{y}</yCoord></edgeMap>"
                        for x, y in _square(cx - h - 1, cy - h - 1, cx + h + 1, cy + h + 1))
        rois.append(f"<roi><imageZposition>{z:.6f}</imageZposition><imageSOP_UID>"
                    f"1.2.3.{k}</imageSOP_UID><inclusion>TRUE</inclusion>{edges}</roi>")
    ch = "".join(f"<{key}>{v}</{key}>" for key, v in chars.items())
    return (f"<unblindedReadNodule><noduleID>Nodule {number:03d}</noduleID><characteristics>"
            f"{ch}</characteristics>{''.join(rois)}</unblindedReadNodule>")


def lidc_xml(series_uid: str, readers, *, nodules=None) -> str:
    """LIDC XML text; *readers*: per reader ``(half_widths by slice k, characteristics)``.

    A half width h draws the square contour ``cx-h-1 .. cx+h+1`` whose interior (the
    nodule: LIDC contours mark the first pixel outside) is ``cx-h .. cx+h``.  With
    *nodules* instead (``readers`` ignored): per reader a list of ``(center, half_widths,
    characteristics)``, one ``unblindedReadNodule`` each."""
    if nodules is None:
        nodules = [[(CENTER, halves, chars)] for halves, chars in readers]
    sessions = [
        f"<readingSession><annotationVersion>3.12</annotationVersion><servicingRadiologistID>"
        f"anon{r}</servicingRadiologistID>"
        + "".join(_lidc_nodule_xml(c, h, ch, j + 1) for j, (c, h, ch) in enumerate(reads))
        + "</readingSession>" for r, reads in enumerate(nodules)]
    return ('<?xml version="1.0" encoding="UTF-8"?>\n<LidcReadMessage xmlns="http://www.nih.gov"'
            ' uid="1.3.6.1.4.1.14519.5.2.1.6279.6001.1" tool="Max" toolVersion="1.0">'
            f"<ResponseHeader><Version>1.8.1</Version><SeriesInstanceUid>{series_uid}"
            "</SeriesInstanceUid></ResponseHeader>" + "".join(sessions) + "</LidcReadMessage>\n")


#: Two nodule sites of :func:`write_lidc_cohort` (voxel ``(z, y, x)``), 24 mm apart in y and
#: x: the consensus labels them n1 (smaller y) and n2.
LIDC_SITES = ((10, 12, 12), (10, 28, 28))


def write_lidc_cohort(root: Path, cases: dict, *, seed: int = 0) -> dict:
    """LIDC-IDRI-layout cases under *root*: per case name, per reader, the malignancy rating
    (or None: the reader gives none) of each nodule of :data:`LIDC_SITES`, e.g.
    ``{"LIDC-IDRI-0001": [(5, 1), (4, 2)]}`` (two readers, two nodules).  Each case is a
    patient / study / series DICOM CT (:func:`phantom` with a 40 HU ball at each site) with
    ``069.xml`` beside the slices; every reader draws each nodule on slices 8..12.
    Returns case name -> pseudonymous case id."""
    import pydicom

    from data_tools.deid import pseudonymous_id

    rng = np.random.default_rng(seed)
    halves = {8: 1, 9: 2, 10: 2, 11: 2, 12: 1}
    ids = {}
    for name, readers in cases.items():
        series = Path(root) / name / "01-01-2000-NA-30178" / "3000566.000000-NA-03192"
        hu, _ = phantom(rng, blobs=[(c, RADIUS_MM) for c in LIDC_SITES])
        files = write_dicom_series(series, hu, seed=f"{seed}-{name}")
        uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)
        reads = [[(c, halves, {"subtlety": 4} if m is None else {"malignancy": m})
                  for c, m in zip(LIDC_SITES, ratings)] for ratings in readers]
        (series / "069.xml").write_text(lidc_xml(uid, (), nodules=reads), encoding="utf-8")
        ids[name] = pseudonymous_id(name)
    return ids


#: LIDC readers: reader 1 half widths 2 (5 x 5 pixels) on slices 9..11, 1 on 8 and 12;
#: reader 2 the same without slice 12.  Consensus (>= 1 of 2): 3 * 25 + 2 * 9 = 93 voxels.
LIDC_READERS = (
    ({8: 1, 9: 2, 10: 2, 11: 2, 12: 1},
     {"subtlety": 5, "calcification": 6, "sphericity": 4, "margin": 4, "lobulation": 2,
      "spiculation": 1, "texture": 5, "malignancy": 4}),
    ({8: 1, 9: 2, 10: 2, 11: 2},
     {"subtlety": 4, "calcification": 6, "sphericity": 5, "margin": 3, "lobulation": 1,
      "spiculation": 2, "texture": 5, "malignancy": 5}),
)


def lidc_expected_mask() -> np.ndarray:
    """int16 ``(z, y, x)``: the LIDC consensus at level 0.5 of :data:`LIDC_READERS`."""
    out = np.zeros(SHAPE, np.int16)
    _, cy, cx = CENTER
    for k, h in LIDC_READERS[0][0].items():
        out[k, cy - h:cy + h + 1, cx - h:cx + h + 1] = 1
    return out


#: RTSTRUCT GTV-1: squares with corners at half-voxel offsets, half width 2.5 pixels on
#: slices 8..12 -> rows/cols cy-2..cy+2: 5 x 25 = 125 voxels.
RT_SLICES = range(8, 13)


def rtstruct_expected_mask() -> np.ndarray:
    out = np.zeros(SHAPE, np.int16)
    _, cy, cx = CENTER
    out[RT_SLICES.start:RT_SLICES.stop, cy - 2:cy + 3, cx - 2:cx + 3] = 1
    return out


def write_rtstruct(path: Path, ct_file: Path, *, seed) -> Path:
    """An RTSTRUCT with one ROI ``GTV-1`` (:data:`RT_SLICES`) referencing *ct_file*'s frame."""
    import pydicom
    from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import ExplicitVRLittleEndian
    from pydicom.valuerep import format_number_as_ds

    from data_tools.dicom_masks import RTSTRUCT_SOP_CLASS

    ct = pydicom.dcmread(ct_file, stop_before_pixels=True)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = RTSTRUCT_SOP_CLASS
    meta.MediaStorageSOPInstanceUID = _uid(seed, "rtstruct")
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = RTSTRUCT_SOP_CLASS
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "RTSTRUCT"
    ds.PatientName, ds.PatientID = PATIENT, ct.PatientID
    ds.StudyInstanceUID = ct.StudyInstanceUID
    ds.SeriesInstanceUID = _uid(seed, "rtstruct-series")
    ds.StructureSetLabel = "GTV"
    ref = Dataset()
    ref.FrameOfReferenceUID = ct.FrameOfReferenceUID
    ds.ReferencedFrameOfReferenceSequence = Sequence([ref])
    roi = Dataset()
    roi.ROINumber, roi.ROIName = 1, "GTV-1"
    roi.ReferencedFrameOfReferenceUID = ct.FrameOfReferenceUID
    roi.ROIGenerationAlgorithm = "MANUAL"
    _, cy, cx = CENTER
    contours = []
    for k in RT_SLICES:
        corners = [(cy - 2.5, cx - 2.5), (cy - 2.5, cx + 2.5), (cy + 2.5, cx + 2.5),
                   (cy + 2.5, cx - 2.5)]
        lps = [(ORIGIN[0] + c * SPACING[2], ORIGIN[1] + r * SPACING[1],
                ORIGIN[2] + k * SPACING[0]) for r, c in corners]
        c = Dataset()
        c.ContourGeometricType = "CLOSED_PLANAR"
        c.NumberOfContourPoints = 4
        c.ContourData = [format_number_as_ds(float(v)) for p in lps for v in p]
        contours.append(c)
    rc = Dataset()
    rc.ReferencedROINumber = 1
    rc.ROIDisplayColor = [255, 0, 0]
    rc.ContourSequence = Sequence(contours)
    obs = Dataset()
    obs.ObservationNumber, obs.ReferencedROINumber = 1, 1
    obs.RTROIInterpretedType, obs.ROIInterpreter = "GTV", ""
    ds.StructureSetROISequence = Sequence([roi])
    ds.ROIContourSequence = Sequence([rc])
    ds.RTROIObservationsSequence = Sequence([obs])
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_seg(path: Path, ct_files: list[Path], labels: np.ndarray) -> Path:
    """A highdicom BINARY SEG with one segment (*labels* > 0) on the series *ct_files*."""
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes

    sources = [pydicom.dcmread(f) for f in ct_files]
    for src in sources:                   # type-2 attributes highdicom copies
        for keyword in ("PatientBirthDate", "PatientSex", "StudyID", "StudyTime",
                        "AccessionNumber", "ReferringPhysicianName"):
            if keyword not in src:
                setattr(src, keyword, "")
    desc = hd.seg.SegmentDescription(
        segment_number=1, segment_label="nodule 1",
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Nodule,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL)
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=(labels > 0).astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=[desc],
        series_instance_uid=hd.UID(), series_number=2, sop_instance_uid=hd.UID(),
        instance_number=1, manufacturer="test", manufacturer_model_name="test",
        software_versions="0", device_serial_number="0")
    path.parent.mkdir(parents=True, exist_ok=True)
    seg.save_as(path)
    return path


def write_metaimage(path: Path, hu: np.ndarray) -> Path:
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(hu.astype(np.int16))          # (z, y, x) -> ITK (x, y, z)
    img.SetSpacing((SPACING[2], SPACING[1], SPACING[0]))
    img.SetOrigin(ORIGIN)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path))                           # writes .mhd + .raw
    return path


# -- the tree ----------------------------------------------------------------------------------

def _good(name, n_nodules, mask_source, *, status="ok", layout="cases"):
    return {"name": name, "n_nodules": n_nodules, "mask_source": mask_source,
            "status": status, "layout": layout}


def write_mixed_tree(root: Path, *, seed: int = 0) -> dict:
    """Write the mixed tree (module docstring) under *root* and return what a batch finds.

    Returns
    -------
    dict
        ``good``: case id -> ``{"name", "n_nodules", "mask_source", "status", "layout"}``
        (``name`` is the source folder or file name, for the test's messages only);
        ``broken``: case id -> ``{"name", "error", "layout"}`` (``error``: a substring the
        error must contain);
        ``secrets``: strings that must appear in no output (patient name parts, LUNA16
        series UIDs); ``luna_uid``, ``lidc_case``, ``msd_case``: handy keys.
    """
    import nibabel as nib
    import pydicom
    from pydicom.data import get_testdata_file

    from data_tools.deid import pseudonymous_id
    from data_tools.nifti import save_nifti
    from data_tools.volume import Mask, Volume

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    aff = _affine()
    good, broken = {}, {}

    # MSD Task06_Lung: two tumour blobs (both label 1), a test image, macOS junk
    msd = root / "Task06_Lung"
    (msd / "dataset.json").parent.mkdir(parents=True, exist_ok=True)
    (msd / "dataset.json").write_text(
        '{"name": "Lung", "modality": {"0": "CT"}, "labels": {"0": "background", "1": "cancer"},'
        ' "training": [{"image": "./imagesTr/lung_001.nii.gz", "label": '
        '"./labelsTr/lung_001.nii.gz"}], "test": ["./imagesTs/lung_050.nii.gz"]}\n')
    blobs = (((10, 12, 12), 6.0), ((10, 28, 28), 4.0))      # larger first: label 1 after split
    hu, inside = phantom(rng, blobs)
    save_nifti(Volume(hu, aff), msd / "imagesTr" / "lung_001.nii.gz")
    save_nifti(Mask(inside.astype(np.int16), aff), msd / "labelsTr" / "lung_001.nii.gz")
    (msd / "imagesTr" / "._lung_001.nii.gz").write_bytes(b"\x00\x05\x16\x07AppleDouble junk")
    save_nifti(Volume(phantom(rng)[0], aff), msd / "imagesTs" / "lung_050.nii.gz")
    good[pseudonymous_id("msd/lung_001")] = _good("lung_001", 2, "msd", layout="msd")
    good[pseudonymous_id("msd/lung_050")] = _good("lung_050", 0, "none", status="no-mask",
                                                  layout="msd")

    # LUNA16: one good scan, one header without its .raw, a CSV row for an absent uid
    uids = [UID_ROOT + "".join(str(d) for d in rng.integers(0, 10, 30)) for _ in range(3)]
    luna = root / "LUNA16"
    write_metaimage(luna / "subset0" / f"{uids[0]}.mhd", phantom(rng)[0])
    write_metaimage(luna / "subset0" / f"{uids[1]}.mhd", phantom(rng)[0])
    (luna / "subset0" / f"{uids[1]}.raw").unlink()
    world = [ORIGIN[i] + CENTER[2 - i] * SPACING[2 - i] for i in range(3)]   # x, y, z
    (luna / "annotations.csv").write_text(
        "seriesuid,coordX,coordY,coordZ,diameter_mm\n"
        f"{uids[0]},{world[0]:.4f},{world[1]:.4f},{world[2]:.4f},10.0\n"
        f"{uids[2]},1.0,2.0,3.0,6.0\n")
    good[pseudonymous_id(uids[0])] = _good("LUNA16 scan", 1, "luna16", layout="luna16")
    broken[pseudonymous_id(uids[1])] = {"name": "LUNA16 scan without .raw",
                                        "error": "is missing", "layout": "luna16"}

    # LIDC-IDRI: patient / study / series, XML beside the slices
    lidc_series = root / "LIDC-IDRI-0001" / "01-01-2000-NA-30178" / "3000566.000000-NA-03192"
    files = write_dicom_series(lidc_series, phantom(rng)[0], seed=seed)
    series_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)
    (lidc_series / "069.xml").write_text(lidc_xml(series_uid, LIDC_READERS), encoding="utf-8")
    good[pseudonymous_id("LIDC-IDRI-0001")] = _good("LIDC-IDRI-0001", 1, "lidc")

    # NSCLC-Radiomics: CT and RTSTRUCT in sibling series folders
    study = root / "LUNG1-001" / "09-18-2008-StudyID-69331"
    files = write_dicom_series(study / "CT", phantom(rng)[0], seed=seed)
    write_rtstruct(study / "RTSTRUCT" / "1-1.dcm", files[0], seed=seed)
    good[pseudonymous_id("LUNG1-001")] = _good("LUNG1-001", 1, "rtstruct")

    # DICOM SEG beside its CT series
    hu, inside = phantom(rng)
    files = write_dicom_series(root / "SEG-0001" / "CT", hu, seed=seed + 1)
    write_seg(root / "SEG-0001" / "SEG" / "seg.dcm", files, inside)
    good[pseudonymous_id("SEG-0001")] = _good("SEG-0001", 1, "seg")

    # NIfTI image + mask
    hu, inside = phantom(rng)
    save_nifti(Volume(hu, aff), root / "native-nifti" / "ct.nii.gz")
    save_nifti(Mask(inside.astype(np.int16), aff), root / "native-nifti" / "mask.nii.gz")
    good[pseudonymous_id("native-nifti")] = _good("native-nifti", 1, "nifti")

    # RLE Lossless DICOM + NIfTI mask on the DICOM grid
    hu, inside = phantom(rng)
    write_dicom_series(root / "compressed-rle", hu, seed=seed + 2, compress=True)
    save_nifti(Mask(inside.astype(np.int16), aff), root / "compressed-rle" / "mask.nii.gz")
    good[pseudonymous_id("compressed-rle")] = _good("compressed-rle", 1, "nifti")

    # -- broken cases ---------------------------------------------------------------------------
    def bad(name, error):
        broken[pseudonymous_id(name)] = {"name": name, "error": error, "layout": "cases"}

    files = write_dicom_series(root / "broken-gap", phantom(rng)[0], seed=seed + 3)
    files[7].unlink()
    bad("broken-gap", "gap")
    files = write_dicom_series(root / "broken-truncated", phantom(rng)[0], seed=seed + 4)
    data = files[5].read_bytes()
    files[5].write_bytes(data[: len(data) // 2])
    bad("broken-truncated", f"'{files[5].name}'")
    (root / "mr-only").mkdir()
    shutil.copy(get_testdata_file("MR_small.dcm"), root / "mr-only" / "MR_small.dcm")
    bad("mr-only", "MR")
    (root / "mr-truncated").mkdir()
    shutil.copy(get_testdata_file("MR_truncated.dcm"), root / "mr-truncated" / "MR_truncated.dcm")
    bad("mr-truncated", "MR")
    (root / "empty-case").mkdir()
    bad("empty-case", "no DICOM files")
    (root / "nifti-4d").mkdir()
    shutil.copy(Path(nib.__file__).parent / "tests" / "data" / "example4d.nii.gz",
                root / "nifti-4d" / "ct.nii.gz")
    bad("nifti-4d", "must be 3-D")
    hu, inside = phantom(rng)
    save_nifti(Volume(hu, aff), root / "mask-wrong-grid" / "ct.nii.gz")
    save_nifti(Mask(inside[:, :, :30].astype(np.int16), aff),
               root / "mask-wrong-grid" / "mask.nii.gz")
    bad("mask-wrong-grid", "'mask.nii.gz'")

    return {"good": good, "broken": broken, "secrets": ["Doe", "Jane", *uids[:2]],
            "luna_uid": uids[0], "lidc_case": pseudonymous_id("LIDC-IDRI-0001"),
            "msd_case": pseudonymous_id("msd/lung_001")}


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python tests/_layout_factory.py OUT_DIR")
    sys.path.insert(0, str(Path(__file__).resolve().parent))            # _dicom_factory
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))        # data_tools
    out = Path(sys.argv[1])
    found = write_mixed_tree(out)
    print(f"wrote {len(found['good'])} good and {len(found['broken'])} broken cases; "
          f"score them with: discovery score {out} --out results")
