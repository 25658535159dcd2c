"""Nodule masks derived from per-slice PASCAL VOC boxes (data_tools.boxes): a hand-made series
with hand-computed masks, and the real Lung-PET-CT-Dx patient end to end."""

from __future__ import annotations

import numpy as np
import pytest
from pydicom.uid import generate_uid

from _dicom_factory import ct_dataset
from _realdata import realdata
from data_tools.boxes import SOFT_TISSUE_HU, box_mask, is_voc_xml, read_voc_boxes
from data_tools.cases import read_case
from data_tools.errors import MaskError
from data_tools.layouts import discover_cases

OBJECT = """<object><name>{name}</name><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin>
<xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"""


def _series(folder, n=6, size=20):
    """Lung (-850 HU) with a soft-tissue block (40 HU) on slices 1-3, rows 5-9, cols 6-11,
    and a second block (rows 14-17, cols 2-4) on slice 2 only; the files' order reversed."""
    hu = np.full((n, size, size), -850, np.int16)
    hu[1:4, 5:10, 6:12] = 40
    hu[2, 14:18, 2:5] = 40
    series, study = generate_uid(), generate_uid()
    uids = []
    for k in range(n):
        ds = ct_dataset((hu[k] + 1024).astype(np.int16), position=(0.0, 0.0, 2.0 * k),
                        pixel_spacing=(1.0, 1.0), instance=k + 1, series_uid=series,
                        study_uid=study)
        ds.save_as(folder / f"IM{n - k:03d}.dcm", enforce_file_format=True)
        uids.append(str(ds.SOPInstanceUID))
    return hu, uids


def _box(folder, uid, *boxes, name="A"):
    """One VOC file for slice *uid* with one object per (x0, y0, x1, y1) of *boxes*."""
    objects = "".join(OBJECT.format(name=name, x0=x0, y0=y0, x1=x1, y1=y1)
                      for x0, y0, x1, y1 in boxes)
    (folder / f"{uid}.xml").write_text(
        f"<annotation><size><width>20</width><height>20</height></size>{objects}</annotation>")


def test_boxes_give_the_soft_tissue_component_under_each_box(tmp_path):
    case = tmp_path / "cases" / "patient-1"
    (case / "ct").mkdir(parents=True)
    (case / "boxes").mkdir()
    hu, uids = _series(case / "ct")
    for k in (1, 3):                          # boxes a little larger than the block
        _box(case / "boxes", uids[k], (4, 3, 13, 11))
    _box(case / "boxes", uids[2], (4, 3, 13, 11), (1, 13, 6, 18))  # and the second block
    (spec,) = discover_cases(tmp_path / "cases")
    assert spec.mask_kind == "boxes" and len(spec.mask_candidates) == 3
    assert all(is_voc_xml(p) for p in spec.mask_candidates)
    loaded = read_case(spec)
    assert loaded.mask_source == "boxes"
    mask = loaded.mask.array
    # the volume's z runs with the positions (slice k at z = 2k mm)
    want = np.zeros_like(mask)
    want[1:4, 5:10, 6:12] = 1
    want[2, 14:18, 2:5] = 2
    np.testing.assert_array_equal(mask, want)
    assert (loaded.volume.array[mask > 0] >= SOFT_TISSUE_HU).all()


def test_box_rules_centre_component_and_errors(tmp_path):
    from data_tools.volume import Volume

    folder = tmp_path / "ct"
    folder.mkdir()
    hu, uids = _series(folder)
    # voxel (z, y, x) -> patient (x, y, z) mm: columns of the affine are the z, y, x steps
    affine = np.array([[0, 0, 1, 0], [0, 1, 0, 0], [2, 0, 0, 0], [0, 0, 0, 1]], float)
    volume = Volume(hu.astype(np.float32), affine)
    files = sorted(folder.glob("*.dcm"))
    # one box over both blocks of slice 2, centred on the first: only that one is kept
    (tmp_path / "b").mkdir()
    _box(tmp_path / "b", uids[2], (0, 3, 13, 18))
    mask = box_mask(volume, read_voc_boxes((tmp_path / "b").glob("*.xml")), files).array
    assert mask[2, 5:10, 6:12].all() and not mask[2, 14:18, 2:5].any()
    # centre on lung: the largest soft-tissue component instead
    (tmp_path / "c").mkdir()
    _box(tmp_path / "c", uids[2], (0, 8, 19, 19))
    mask = box_mask(volume, read_voc_boxes((tmp_path / "c").glob("*.xml")), files).array
    assert mask[2, 8:10, 6:12].all() and not mask[2, 14:18, 2:5].any()
    # boxes of another series, and boxes over lung only
    (tmp_path / "d").mkdir()
    _box(tmp_path / "d", "1.2.3.4", (4, 3, 13, 11))
    with pytest.raises(MaskError, match="none of the 1 boxes names a slice"):
        box_mask(volume, read_voc_boxes((tmp_path / "d").glob("*.xml")), files)
    (tmp_path / "e").mkdir()
    _box(tmp_path / "e", uids[5], (4, 3, 13, 11))
    with pytest.raises(MaskError, match="holds soft tissue"):
        box_mask(volume, read_voc_boxes((tmp_path / "e").glob("*.xml")), files)
    bad = tmp_path / "f" / "x.xml"
    bad.parent.mkdir()
    bad.write_text("<annotation><object><bndbox><xmin>a</xmin></bndbox></object></annotation>")
    with pytest.raises(MaskError, match="'x.xml' has an object without numeric"):
        read_voc_boxes([bad])


def test_real_lung_pet_ct_dx_patient_from_boxes_to_flagged_findings(tmp_path):
    """TCIA Lung-PET-CT-Dx A0001 (adenocarcinoma, 5 mm slices, boxes on 11 slices), scored
    with the demo model: a mask on exactly the annotated slices, within the boxes, and
    findings that say the tumour is larger than the model's view."""
    root = realdata("lung-pet-ct-dx")
    (spec,) = discover_cases(root)
    assert spec.mask_kind == "boxes" and len(spec.mask_candidates) == 11
    loaded = read_case(spec)
    mask = loaded.mask.array
    assert loaded.mask_source == "boxes" and mask.max() == 1
    assert int((mask.reshape(mask.shape[0], -1).max(axis=1) > 0).sum()) == 11
    assert (loaded.volume.array[mask > 0] >= SOFT_TISSUE_HU).all()

    from discovery.batch.score import score_folder
    from discovery.store.tables import ResultsStore

    summary = score_folder(root, tmp_path / "results")
    assert summary.n_failed == 0
    store = ResultsStore(tmp_path / "results", create=False)
    findings, cases = store.findings(), store.query("SELECT mask_source FROM cases")
    store.close()
    assert list(cases["mask_source"]) == ["boxes"]
    (row,) = findings.itertuples()
    # the demo model's card knows its phantoms: 1-1.5 mm slices, nodules 4-25 mm, and their
    # intensities; this real scanner image is outside all of them
    assert row.applicability == "larger-than-roi; slice-thickness; nodule-size; intensity"
    assert "the model sees 48 mm" in row.applicability_detail
    assert "slice spacing 5.00 mm" in row.applicability_detail
    text = (tmp_path / "results" / "findings.csv").read_text()
    assert "Lung_Dx" not in text and "A0001" not in text       # no source names leave the tool
    _export_one_segment_case(root, tmp_path)


def _export_one_segment_case(root, tmp_path):
    """The DICOM export of that patient: one nodule and no off-mask region make a SEG of one
    segment, whose identification highdicom shares across frames (the SR's reference to it
    failed before); the SR names segment 1 and every object passes dciodvfy when installed."""
    import shutil
    import subprocess

    import pydicom

    from discovery.report.dicom import export_dicom

    report = export_dicom(tmp_path / "results", root, tmp_path / "dicom", key="test-key")
    assert report["failed"] == {} and len(report["exported"]) == 1
    (files,) = report["exported"].values()
    seg, pmap, sr = (pydicom.dcmread(p) for p in files[-3:])
    assert len(seg.SegmentSequence) == 1
    assert "SegmentIdentificationSequence" in seg.SharedFunctionalGroupsSequence[0]
    refs = [item for item in sr.iterall() if item.keyword == "ReferencedSegmentNumber"]
    assert [int(r.value) for r in refs] == [1]
    dciodvfy = shutil.which("dciodvfy")
    if dciodvfy is None:
        return  # the validator test of test_export_dicom.py says whether it is required
    for path in files[-3:]:
        run = subprocess.run([dciodvfy, str(path)], capture_output=True, text=True, timeout=60)
        errors = [line for line in (run.stdout + run.stderr).splitlines()
                  if line.startswith("Error")]
        assert errors == [], (path.name, errors)


def test_real_patient_with_a_monai_bundle_says_what_it_could_not_check(tmp_path):
    """The same real patient scored with a MONAI bundle (an untrained ResNet-10, sidecar
    without a training domain): complete findings, and flags that say the domain is unknown."""
    from test_external_models import _bundle

    from discovery.batch.score import score_folder
    from discovery.store.tables import ResultsStore

    root = realdata("lung-pet-ct-dx")
    bundle = _bundle(tmp_path / "bundle")
    summary = score_folder(root, tmp_path / "results", model_dir=bundle)
    assert summary.n_failed == 0 and summary.n_nodules == 1
    store = ResultsStore(tmp_path / "results", create=False)
    (row,) = store.findings().itertuples()
    store.close()
    assert row.applicability == "larger-than-roi; domain-unknown"
    assert 0.0 <= row.probability <= 1.0 and row.verdict in ("aligned", "partial", "off-mask")


def test_a_patient_folder_with_its_series_and_boxes_side_by_side_is_one_case(tmp_path):
    """TCIA's patient layout, given directly: ``ct/`` holds the series, ``boxes/`` only the
    VOC files; the patient folder is one case with a box mask, not two cases of which one
    fails.  Beside a second series it is a cohort again."""
    patient = tmp_path / "Patient_7"
    (patient / "ct").mkdir(parents=True)
    (patient / "boxes").mkdir()
    hu, uids = _series(patient / "ct")
    _box(patient / "boxes", uids[2], (6, 5, 11, 9))
    (spec,) = discover_cases(patient)
    assert spec.mask_kind == "boxes" and spec.problem is None and len(spec.mask_candidates) == 1
    loaded = read_case(spec)
    assert loaded.mask_source == "boxes" and int(loaded.mask.array.max()) == 1
    assert np.array_equal(loaded.mask.array > 0, (hu == 40) & (np.arange(6)[:, None, None] == 2)
                          & (np.arange(20)[None, :, None] < 12))
    (patient / "ct2").mkdir()                     # a second series: a folder of cases again
    _series(patient / "ct2")
    specs = discover_cases(patient)
    assert len(specs) == 3 and sum(s.problem is not None for s in specs) == 1


def test_the_real_patient_folder_given_directly_is_one_case():
    (spec,) = discover_cases(realdata("lung-pet-ct-dx") / "Lung_Dx-A0001")
    assert spec.mask_kind == "boxes" and len(spec.mask_candidates) == 11
