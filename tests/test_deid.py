"""PS3.15 basic-profile de-identification (data_tools.deid) on real DICOM files."""

from __future__ import annotations

import copy
import hashlib
import hmac

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import UID, CTImageStorage, SegmentationStorage

from _dicom_factory import ct_dataset
from data_tools.deid import burned_in_annotation_risk, deidentify_dataset, pseudonymous_id

KEY = "test-key"


@pytest.fixture
def ct():
    return pydicom.dcmread(get_testdata_file("CT_small.dcm"))


@pytest.fixture
def rt():
    return pydicom.dcmread(get_testdata_file("rtstruct.dcm"), force=True)


def _uids(ds: Dataset):
    """(keyword, value) of every UI element at any depth, file meta included."""
    found = []
    for elem in ds.iterall():
        if elem.VR == "UI" and elem.value:
            values = elem.value if isinstance(elem.value, list) else [elem.value]
            found += [(elem.keyword, str(v)) for v in values]
    meta = getattr(ds, "file_meta", None)
    if meta is not None:
        found += [(e.keyword, str(e.value)) for e in meta if e.VR == "UI" and e.value]
    return found


def test_no_identifying_value_survives_in_dataset_or_file(ct, tmp_path):
    before = {kw: str(ct.get(kw, "")) for kw in ("PatientName", "PatientID", "InstitutionName",
                                                  "StationName", "StudyDate", "SeriesDate")}
    out = deidentify_dataset(ct, key=KEY)
    path = tmp_path / "out.dcm"
    out.save_as(path)
    raw = path.read_bytes()
    text = str(out)
    # hand-picked identifying values of CT_small.dcm (name, ID, institution, station, dates,
    # the sending AE title, the implementation root inside its UIDs)
    for value in (before["PatientName"], "CompressedSamples", before["PatientID"],
                  before["InstitutionName"], before["StationName"], "20040119", "19970430",
                  "CLUNIE1", "1.3.6.1.4.1.5962"):
        assert value not in text, value
        assert value.encode() not in raw, value
    assert out.PatientName == "" and out.PatientBirthDate == "" and out.PatientSex == ""
    assert out.PatientID == pseudonymous_id("1CT1", key=KEY, prefix="patient")
    assert out.StudyDate == "" and out.StudyTime == "" and out.StudyID == ""
    for kw in ("InstitutionName", "StationName", "SeriesDate", "AcquisitionDate", "PatientAge",
               "OtherPatientIDsSequence", "StudyDescription", "ImageComments",
               "InstanceCreationDate", "TimezoneOffsetFromUTC", "PatientWeight"):
        assert kw not in out, kw
    assert "SourceApplicationEntityTitle" not in out.file_meta
    assert out.preamble == b"\0" * 128
    back = pydicom.dcmread(path)                      # still a readable, valid Part 10 file
    assert back.SOPInstanceUID == back.file_meta.MediaStorageSOPInstanceUID
    assert back.Modality == "CT" and back.Manufacturer == "GE MEDICAL SYSTEMS"


def test_caller_dataset_unchanged(ct, rt):
    for ds in (ct, rt):
        snapshot = copy.deepcopy(ds)
        meta_before = copy.deepcopy(ds.file_meta)
        deidentify_dataset(ds, key=KEY)
        assert ds == snapshot
        assert ds.file_meta == meta_before
    assert str(ct.PatientName) == "CompressedSamples^CT1"
    assert ct.StudyInstanceUID.startswith("1.3.6.1.4.1.5962")


def test_uids_valid_consistent_and_keyed(ct):
    a = deidentify_dataset(ct, key=KEY)
    b = deidentify_dataset(copy.deepcopy(ct), key=KEY)
    c = deidentify_dataset(ct, key="another-key")
    for keyword, value in _uids(a):
        assert UID(value).is_valid, (keyword, value)
        assert len(value) <= 64
    for kw in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID"):
        assert a[kw].value.startswith("2.25.")
        assert a[kw].value != ct[kw].value
        assert a[kw].value == b[kw].value                  # same input, same key -> same UID
        assert a[kw].value != c[kw].value                  # other key -> other UID
    assert a.file_meta.MediaStorageSOPInstanceUID == a.SOPInstanceUID
    assert a.SOPClassUID == CTImageStorage                 # class UIDs are kept
    assert a.file_meta.TransferSyntaxUID == ct.file_meta.TransferSyntaxUID
    assert len({a.StudyInstanceUID, a.SeriesInstanceUID, a.SOPInstanceUID}) == 3
    assert a.PatientID == b.PatientID != c.PatientID
    # the documented rule: 2.25.<first 120 bits of HMAC-SHA256(key, "uid:" + uid)>
    digest = hmac.new(KEY.encode(), b"uid:" + ct.StudyInstanceUID.encode(), hashlib.sha256)
    assert a.StudyInstanceUID == "2.25." + str(int.from_bytes(digest.digest()[:15], "big"))


def test_rtstruct_references_follow_the_referenced_ct(rt):
    ref_for = rt.ReferencedFrameOfReferenceSequence[0]
    study_ref = ref_for.RTReferencedStudySequence[0]
    series_ref = study_ref.RTReferencedSeriesSequence[0]
    # the CT series the structure set points at, built with the same study/series/FoR UIDs
    image = ct_dataset(np.zeros((4, 4), np.int16), position=(0, 0, 0),
                       study_uid=study_ref.ReferencedSOPInstanceUID,
                       series_uid=series_ref.SeriesInstanceUID)
    image.FrameOfReferenceUID = ref_for.FrameOfReferenceUID
    # a contour image reference to that slice, and a nested identifying value
    rt = copy.deepcopy(rt)
    contour_image = Dataset()
    contour_image.ReferencedSOPClassUID = CTImageStorage
    contour_image.ReferencedSOPInstanceUID = image.SOPInstanceUID
    contour_image.InstitutionName = "Secret Hospital"
    rt.ROIContourSequence[0].ContourSequence[0].ContourImageSequence = Sequence([contour_image])

    out_rt = deidentify_dataset(rt, key=KEY)
    out_ct = deidentify_dataset(image, key=KEY)
    o_for = out_rt.ReferencedFrameOfReferenceSequence[0]
    o_study = o_for.RTReferencedStudySequence[0]
    assert o_for.FrameOfReferenceUID == out_ct.FrameOfReferenceUID != image.FrameOfReferenceUID
    assert o_study.ReferencedSOPInstanceUID == out_ct.StudyInstanceUID
    assert o_study.RTReferencedSeriesSequence[0].SeriesInstanceUID == out_ct.SeriesInstanceUID
    assert o_study.ReferencedSOPClassUID == study_ref.ReferencedSOPClassUID   # standard UID kept
    for item in out_rt.StructureSetROISequence:
        assert item.ReferencedFrameOfReferenceUID == out_ct.FrameOfReferenceUID
    o_img = out_rt.ROIContourSequence[0].ContourSequence[0].ContourImageSequence[0]
    assert o_img.ReferencedSOPInstanceUID == out_ct.SOPInstanceUID
    assert o_img.ReferencedSOPClassUID == CTImageStorage
    assert "InstitutionName" not in o_img                  # actions apply inside sequences
    text = str(out_rt)
    for value in ("Test^Phantom30sep", "tPhantom30sep", "19691231", "dmason", "station1",
                  "1.2.826.0.1.3680043.8.498.2010"):
        assert value not in text, value
    assert out_rt.StructureSetLabel == "DEIDENTIFIED"      # Type 1: dummy, not empty
    assert out_rt.StructureSetDate == ""
    # contour geometry untouched
    assert (out_rt.ROIContourSequence[0].ContourSequence[0].ContourData
            == rt.ROIContourSequence[0].ContourSequence[0].ContourData)


def test_private_tags_removed_unless_kept(ct):
    ds = copy.deepcopy(ct)
    ds.private_block(0x0011, "ACME 1.0", create=True).add_new(0x01, "LO", "Doe^Secret")
    item = Dataset()
    item.private_block(0x0013, "ACME 1.0", create=True).add_new(0x02, "LO", "Nested^Secret")
    item.ReferencedSOPInstanceUID = ct.SOPInstanceUID
    ds.ReferencedImageSequence = Sequence([item])
    out = deidentify_dataset(ds, key=KEY)
    assert not any(elem.tag.is_private for elem in out.iterall())
    assert "Secret" not in str(out)
    assert out.ReferencedImageSequence[0].ReferencedSOPInstanceUID == out.SOPInstanceUID
    kept = deidentify_dataset(ds, key=KEY, keep_private=True)
    assert kept.get_private_item(0x0011, 0x01, "ACME 1.0").value == "Doe^Secret"
    assert kept.get_private_item(0x0009, 0x01, "GEMS_IDEN_01").value == "GE_GENESIS_FF"


def test_deidentification_markers(ct, rt):
    for ds in (ct, rt):
        out = deidentify_dataset(ds, key=KEY)
        assert out.PatientIdentityRemoved == "YES"
        assert "Confidentiality Profile" in " ".join(out.DeidentificationMethod)
        (code,) = out.DeidentificationMethodCodeSequence
        assert (code.CodeValue, code.CodingSchemeDesignator) == ("113100", "DCM")
        assert code.CodeMeaning == "Basic Application Confidentiality Profile"


def test_pixel_data_unchanged(ct):
    out = deidentify_dataset(ct, key=KEY)
    assert out.PixelData == ct.PixelData
    np.testing.assert_array_equal(out.pixel_array, ct.pixel_array)
    assert (out.RescaleSlope, out.RescaleIntercept) == (ct.RescaleSlope, ct.RescaleIntercept)
    assert out.ImagePositionPatient == ct.ImagePositionPatient


def test_segmentation_type1_attributes_get_dummies(ct):
    seg = copy.deepcopy(ct)
    seg.SOPClassUID = SegmentationStorage
    seg.DeviceSerialNumber = "SN-12345"
    out = deidentify_dataset(seg, key=KEY)
    assert out.ContentDate == "19000101" and out.ContentTime == "000000"
    assert out.DeviceSerialNumber == "DEIDENTIFIED"
    ct = copy.deepcopy(ct)
    ct.DeviceSerialNumber = "SN-12345"
    out_ct = deidentify_dataset(ct, key=KEY)
    assert out_ct.ContentDate == "" and "DeviceSerialNumber" not in out_ct


def test_burned_in_annotation_risk(ct):
    assert burned_in_annotation_risk(ct) is None               # ORIGINAL CT, attribute absent
    ds = copy.deepcopy(ct)
    ds.BurnedInAnnotation = "NO"
    assert burned_in_annotation_risk(ds) is None
    ds.BurnedInAnnotation = "YES"
    assert "Burned In Annotation" in burned_in_annotation_risk(ds)
    ds.BurnedInAnnotation = "NO"
    ds.ImageType = ["DERIVED", "SECONDARY", "SCREEN SAVE"]
    assert "SECONDARY" in burned_in_annotation_risk(ds)
    ds.ImageType = ["DERIVED", "PRIMARY", "AXIAL"]
    assert burned_in_annotation_risk(ds) is None               # explicit NO on a derived slice
    del ds.BurnedInAnnotation
    assert "not ORIGINAL" in burned_in_annotation_risk(ds)     # absent and derived: unknown
    sc = copy.deepcopy(ct)
    sc.BurnedInAnnotation = "NO"
    for sop_class in ("1.2.840.10008.5.1.4.1.1.7", "1.2.840.10008.5.1.4.1.1.7.4"):
        sc.SOPClassUID = sop_class
        assert "Secondary Capture" in burned_in_annotation_risk(sc)
    sc.SOPClassUID = "1.2.840.10008.5.1.4.1.1.77.1.1"          # VL Endoscopic, not SC
    assert burned_in_annotation_risk(sc) is None


def test_clinical_trial_visit_and_people_attributes_are_removed():
    import pydicom
    from pydicom.data import get_testdata_file

    from data_tools.deid import deidentify_dataset

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.ClinicalTrialSubjectID = "SUBJ-SENTINEL"
    ds.AdmissionID = "ADM-SENTINEL"
    ds.ConsultingPhysicianName = "Consult^Sentinel"
    ds.PerformedStationName = "STATION-SENTINEL"
    ds.RequestingService = "SERVICE-SENTINEL"
    out = deidentify_dataset(ds, key="k")
    assert "SENTINEL" not in str(out).upper()
    assert out.get("ClinicalTrialSubjectID", "") == ""  # Z: present but empty, or removed
