"""RTSTRUCT and DICOM SEG -> label masks on a CT grid (data_tools.dicom_masks).

Inputs are written in tmp_path with the real writers: a tiny CT series (_dicom_factory), an
RTSTRUCT built with pydicom, segmentations built with highdicom.  Expected masks are computed
by hand from the "pixel centre inside (or on the outline)" rule.
"""

from __future__ import annotations

import logging
import re

import numpy as np
import pydicom
import pytest
from _dicom_factory import write_ct_series
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pydicom.valuerep import format_number_as_ds

from data_tools import dicom_masks
from data_tools.dicom import load_dicom_series
from data_tools.dicom_masks import (
    RTSTRUCT_SOP_CLASS,
    is_rtstruct,
    is_seg,
    rtstruct_mask,
    seg_mask,
)
from data_tools.dicom_series import READ_ERRORS
from data_tools.errors import (
    DataError,
    GeometryMismatchError,
    MaskError,
    UnreadableFileError,
)

PHI = ("Doe", "Jane", "SYN-0001", "20240101", "Phantom")
UID_RE = re.compile(r"\d+(\.\d+){3,}")


def assert_safe(message: str, *paths) -> None:
    """No patient data, UID or folder in a message."""
    for word in PHI:
        assert word not in message
    assert not UID_RE.search(message), message
    for p in paths:
        assert str(p.parent) not in message


@pytest.fixture
def ct(tmp_path):
    written = write_ct_series(tmp_path / "ct", n=8, rows=16, cols=16, slice_thickness=2.5)
    return written, load_dicom_series(tmp_path / "ct")


# -- RTSTRUCT builder -------------------------------------------------------------------------

def square(k, r0, r1, c0, c1):
    """Closed square on slice k with corners at fractional (row, col) indices."""
    return [(k, r0, c0), (k, r0, c1), (k, r1, c1), (k, r1, c0)]


def write_rtstruct(path, volume, rois, *, for_uid="1.2.826.0.1.3680043.2.1125.1"):
    """rois: list of (roi_number, name, [(geometric_type, [(k, row, col), ...]), ...])."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = RTSTRUCT_SOP_CLASS
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = RTSTRUCT_SOP_CLASS
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "RTSTRUCT"
    ds.PatientName = "Doe^Jane"
    ds.PatientID = "SYN-0001"
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.StructureSetLabel = "GTV"
    ref = Dataset()
    ref.FrameOfReferenceUID = for_uid
    ds.ReferencedFrameOfReferenceSequence = DicomSequence([ref])
    ssroi, roic, obs = [], [], []
    for number, name, contours in rois:
        item = Dataset()
        item.ROINumber = number
        item.ReferencedFrameOfReferenceUID = for_uid
        item.ROIName = name
        item.ROIGenerationAlgorithm = "MANUAL"
        ssroi.append(item)
        seq = []
        for kind, pts in contours:
            lps = volume.voxel_to_world(np.asarray(pts, dtype=float))
            c = Dataset()
            c.ContourGeometricType = kind
            c.NumberOfContourPoints = len(pts)
            c.ContourData = [format_number_as_ds(float(v)) for v in lps.ravel()]
            seq.append(c)
        rc = Dataset()
        rc.ReferencedROINumber = number
        rc.ROIDisplayColor = [255, 0, 0]
        rc.ContourSequence = DicomSequence(seq)
        roic.append(rc)
        o = Dataset()
        o.ObservationNumber = number
        o.ReferencedROINumber = number
        o.RTROIInterpretedType = "GTV" if "GTV" in name else "ORGAN"
        o.ROIInterpreter = ""
        obs.append(o)
    ds.StructureSetROISequence = DicomSequence(ssroi)
    ds.ROIContourSequence = DicomSequence(roic)
    ds.RTROIObservationsSequence = DicomSequence(obs)
    ds.save_as(path, enforce_file_format=True)
    return path


def closed(*pts_lists):
    return [("CLOSED_PLANAR", pts) for pts in pts_lists]


# -- RTSTRUCT tests ---------------------------------------------------------------------------

def test_rtstruct_square_on_two_slices_exact_voxels(ct, tmp_path):
    _, vol = ct
    gtv = closed(square(2, 3.5, 7.5, 4.5, 8.5), square(3, 3.5, 7.5, 4.5, 8.5))
    lung = closed(square(2, 0.5, 14.5, 0.5, 14.5))
    # ROIs listed out of number order; a POINT contour is ignored
    path = write_rtstruct(tmp_path / "rs.dcm", vol,
                          [(7, "Lung-Left", lung),
                           (1, "GTV-1", gtv + [("POINT", [(2, 1.0, 1.0)])])])
    assert is_rtstruct(path) and not is_seg(path)
    mask, info = rtstruct_mask(path, vol)
    expected = np.zeros(vol.shape, np.int16)
    expected[2:4, 4:8, 5:9] = 1               # centres of rows 4..7, cols 5..8 are inside
    np.testing.assert_array_equal(mask.array, expected)
    np.testing.assert_allclose(mask.affine, vol.affine)
    dz, dy, dx = vol.spacing_mm
    assert info == [{"label": 1, "roi_number": 1, "roi_name": "GTV-1", "n_contours": 2,
                     "volume_mm3": pytest.approx(32 * dz * dy * dx)}]


def test_rtstruct_selection_by_pattern_and_names(ct, tmp_path):
    _, vol = ct
    path = write_rtstruct(tmp_path / "rs.dcm", vol, [
        (5, "gtv-2", closed(square(5, 9.5, 11.5, 9.5, 11.5))),
        (2, "Lung-Left", closed(square(1, 0.5, 2.5, 0.5, 1.5))),
        (1, "GTV-1", closed(square(2, 3.5, 7.5, 4.5, 8.5))),
    ])
    mask, info = rtstruct_mask(path, vol)     # default pattern: case-insensitive 'gtv'
    assert [(d["label"], d["roi_number"], d["roi_name"]) for d in info] == [
        (1, 1, "GTV-1"), (2, 5, "gtv-2")]
    assert np.count_nonzero(mask.array == 1) == 16
    assert np.all(mask.array[5, 10:12, 10:12] == 2) and np.count_nonzero(mask.array == 2) == 4
    mask, info = rtstruct_mask(path, vol, roi_names=["Lung-Left"])
    expected = np.zeros(vol.shape, np.int16)
    expected[1, 1:3, 1:2] = 1
    np.testing.assert_array_equal(mask.array, expected)
    assert info[0]["roi_number"] == 2
    mask, info = rtstruct_mask(path, vol, roi_pattern=r"^lung")
    assert [d["roi_name"] for d in info] == ["Lung-Left"]
    with pytest.raises(MaskError) as err:
        rtstruct_mask(path, vol, roi_names=["GTV-9"])
    assert "'GTV-9'" in str(err.value) and "'Lung-Left'" in str(err.value)


def test_rtstruct_hole_by_even_odd(ct, tmp_path):
    _, vol = ct
    path = write_rtstruct(tmp_path / "rs.dcm", vol, [
        (1, "GTV-1", closed(square(4, 1.5, 10.5, 1.5, 10.5), square(4, 4.5, 6.5, 4.5, 6.5)))])
    mask, info = rtstruct_mask(path, vol)
    expected = np.zeros(vol.shape, np.int16)
    expected[4, 2:11, 2:11] = 1
    expected[4, 5:7, 5:7] = 0
    np.testing.assert_array_equal(mask.array, expected)
    assert np.count_nonzero(mask.array) == 81 - 4 and info[0]["n_contours"] == 2


def test_rtstruct_outline_through_pixel_centres_is_inside(ct, tmp_path):
    _, vol = ct
    # square, right triangle and diamond whose outlines (and vertices) pass through centres
    path = write_rtstruct(tmp_path / "rs.dcm", vol, [
        (1, "GTV-1", closed(square(0, 2, 5, 2, 5), [(6, 2, 2), (6, 2, 6), (6, 6, 2)],
                            [(7, 2, 5), (7, 5, 8), (7, 8, 5), (7, 5, 2)]))])
    mask, _ = rtstruct_mask(path, vol)
    expected = np.zeros(vol.shape, np.int16)
    expected[0, 2:6, 2:6] = 1
    r, c = np.indices((16, 16))
    expected[6][(r >= 2) & (c >= 2) & (r + c <= 8)] = 1
    expected[7][np.abs(r - 5) + np.abs(c - 5) <= 3] = 1
    np.testing.assert_array_equal(mask.array, expected)
    assert np.count_nonzero(mask.array[6]) == 15 and np.count_nonzero(mask.array[7]) == 25


def test_rtstruct_random_polygon_matches_brute_force(ct, tmp_path):
    _, vol = ct
    rng = np.random.default_rng(3)
    angles = np.sort(rng.uniform(0, 2 * np.pi, 12))
    radius = rng.uniform(2.0, 6.5, 12)
    rows, cols = 7.3 + radius * np.sin(angles), 7.6 + radius * np.cos(angles)
    path = write_rtstruct(tmp_path / "rs.dcm", vol, [
        (1, "nodule", closed([(3, r, c) for r, c in zip(rows, cols)]))])
    mask, _ = rtstruct_mask(path, vol)
    # brute-force even-odd ray casting at every pixel centre
    pr, pc = np.indices((16, 16), dtype=float)
    inside = np.zeros((16, 16), bool)
    for i in range(12):
        r0, c0, r1, c1 = rows[i], cols[i], rows[(i + 1) % 12], cols[(i + 1) % 12]
        crosses = (r0 > pr) != (r1 > pr)
        xc = c0 + (pr - r0) * (c1 - c0) / (r1 - r0)
        inside ^= crosses & (pc < xc)
    assert 20 < inside.sum() < 200
    np.testing.assert_array_equal(mask.array[3], inside.astype(np.int16))
    assert np.count_nonzero(mask.array) == inside.sum()


def test_rtstruct_contour_between_slices_is_an_error(ct, tmp_path):
    _, vol = ct
    path = write_rtstruct(tmp_path / "rs.dcm", vol, [
        (3, "GTV-1", closed(square(2.5, 3.5, 7.5, 4.5, 8.5)))])
    with pytest.raises(MaskError) as err:
        rtstruct_mask(path, vol)
    msg = str(err.value)
    assert "'rs.dcm'" in msg and "ROI 3" in msg and "0.50" in msg
    assert_safe(msg, path)


def test_rtstruct_no_match_lists_names(ct, tmp_path):
    _, vol = ct
    path = write_rtstruct(tmp_path / "rs.dcm", vol, [
        (1, "GTV-1", closed(square(2, 3.5, 7.5, 4.5, 8.5))),
        (2, "Lung-Left", closed(square(2, 0.5, 2.5, 0.5, 2.5)))])
    with pytest.raises(MaskError) as err:
        rtstruct_mask(path, vol, roi_pattern="heart")
    msg = str(err.value)
    assert "'GTV-1'" in msg and "'Lung-Left'" in msg and "roi_names" in msg
    assert_safe(msg, path)


def test_rtstruct_clipping_overlap_and_frame_of_reference(ct, tmp_path, caplog):
    _, vol = ct
    path = write_rtstruct(tmp_path / "rs.dcm", vol, [
        (1, "GTV-1", closed(square(1, -4.5, 2.5, 12.5, 20.5), square(30, 2.5, 4.5, 2.5, 4.5))),
        (2, "GTV-2", closed(square(1, 1.5, 3.5, 13.5, 14.5)))])
    with caplog.at_level(logging.WARNING, logger="data_tools.dicom_masks"):
        mask, info = rtstruct_mask(path, vol)
    expected = np.zeros(vol.shape, np.int16)
    expected[1, 0:3, 13:16] = 1               # clipped to the grid
    expected[1, 2:4, 14:15] = 2               # later label wins
    np.testing.assert_array_equal(mask.array, expected)
    text = caplog.text
    assert "2 contour(s) lie partly or wholly outside" in text
    assert "1 voxel(s) belong to more than one" in text
    assert_safe(text, path)
    assert [d["n_contours"] for d in info] == [2, 1]
    rtstruct_mask(path, vol, frame_of_reference_uid="1.2.826.0.1.3680043.2.1125.1")
    with pytest.raises(GeometryMismatchError) as err:
        rtstruct_mask(path, vol, frame_of_reference_uid="1.2.3.4.5")
    assert_safe(str(err.value), path)


def test_rtstruct_on_sagittal_series(tmp_path):
    write_ct_series(tmp_path / "sag", n=8, rows=16, cols=16,
                    orientation=(0.0, 1.0, 0.0, 0.0, 0.0, -1.0))
    vol = load_dicom_series(tmp_path / "sag")
    path = write_rtstruct(tmp_path / "rs.dcm", vol, [
        (1, "GTV-1", closed(square(3, 3.5, 7.5, 4.5, 8.5)))])
    # the slices are sagittal: L (x) is constant across a slice, so the contour is too
    assert np.ptp(vol.voxel_to_world([[3, 0, 0], [3, 15, 15]])[:, 0]) == pytest.approx(0)
    mask, _ = rtstruct_mask(path, vol)
    expected = np.zeros(vol.shape, np.int16)
    expected[3, 4:8, 5:9] = 1
    np.testing.assert_array_equal(mask.array, expected)


def test_pydicom_rtstruct_is_recognised_and_fails_clearly(ct):
    _, vol = ct
    path = get_testdata_file("rtstruct.dcm")
    assert is_rtstruct(path) and not is_seg(path)
    with pytest.raises(MaskError) as err:
        rtstruct_mask(path, vol)
    msg = str(err.value)
    assert "'patient'" in msg and "'Isocenter 1'" in msg and "roi_names" in msg
    assert_safe(msg)
    with pytest.raises(GeometryMismatchError) as err:
        rtstruct_mask(path, vol, roi_names=["patient"])
    assert "'rtstruct.dcm'" in str(err.value)
    assert_safe(str(err.value))


def test_unreadable_and_wrong_modality(ct, tmp_path):
    written, vol = ct
    good = write_rtstruct(tmp_path / "rs.dcm", vol, [
        (1, "GTV-1", closed(square(2, 3.5, 7.5, 4.5, 8.5)))])
    truncated = tmp_path / "cut.dcm"
    truncated.write_bytes(good.read_bytes()[:300])
    text = tmp_path / "notes.txt"
    text.write_text("GTV-1 drawn by Doe\n")
    for p in (truncated, text, tmp_path / "missing.dcm"):
        assert not is_seg(p)
        with pytest.raises(UnreadableFileError) as err:
            rtstruct_mask(p, vol)
        assert repr(p.name) in str(err.value)
        assert_safe(str(err.value), p)
    assert not is_rtstruct(text) and not is_rtstruct(written.files[0])
    with pytest.raises(DataError, match="modality 'CT', not an RTSTRUCT") as err:
        rtstruct_mask(written.files[0], vol)
    assert_safe(str(err.value), written.files[0])
    with pytest.raises(DataError, match="modality 'RTSTRUCT', not a SEG"):
        seg_mask(good, vol)



def test_read_errors_are_those_of_dicom_series():
    """One list of what pydicom raises on damaged files, shared with the series reader; the
    mask readers add the errors of walking a malformed dataset."""
    assert dicom_masks._PARSE_ERRORS[:len(READ_ERRORS)] == READ_ERRORS
    assert set(dicom_masks._PARSE_ERRORS) - set(READ_ERRORS) == {AttributeError, KeyError,
                                                                 IndexError}

# -- SEG ------------------------------------------------------------------------------------

def make_seg(path, written, pixel_array, *, seg_type="BINARY", n_segments=2, order=None):
    import highdicom as hd
    from pydicom.sr.codedict import codes

    sources = [pydicom.dcmread(f) for f in written.files]
    for src in sources:                       # type-2 attributes highdicom copies
        for keyword in ("PatientBirthDate", "PatientSex", "StudyID", "StudyTime",
                        "AccessionNumber", "ReferringPhysicianName"):
            if keyword not in src:
                setattr(src, keyword, "")
    order = np.arange(len(sources)) if order is None else np.asarray(order)
    sources = [sources[i] for i in order]
    pixel_array = pixel_array[order]
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=n, segment_label=f"nodule {n}",
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=codes.SCT.Nodule,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL)
        for n in range(1, n_segments + 1)]
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=pixel_array,
        segmentation_type=getattr(hd.seg.SegmentationTypeValues, seg_type),
        segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=2,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="test",
        manufacturer_model_name="test", software_versions="0", device_serial_number="0")
    assert str(seg.PatientName) == "Doe^Jane"
    seg.save_as(path)
    return path


def two_segments(shape):
    arr = np.zeros((*shape, 2), np.uint8)
    arr[2:5, 3:7, 4:9, 0] = 1
    arr[4:6, 6:9, 8:12, 1] = 1                # overlaps segment 1 on slice 4, rows 6, cols 8
    return arr


def test_seg_binary_round_trip_shuffled_sources(ct, tmp_path, caplog):
    written, vol = ct
    arr = two_segments(vol.shape)
    path = make_seg(tmp_path / "seg.dcm", written, arr,
                    order=np.random.default_rng(0).permutation(vol.shape[0]))
    assert is_seg(path) and not is_rtstruct(path)
    with caplog.at_level(logging.WARNING, logger="data_tools.dicom_masks"):
        mask, info = seg_mask(path, vol)
    expected = np.zeros(vol.shape, np.int16)
    expected[arr[..., 0] > 0] = 1
    expected[arr[..., 1] > 0] = 2
    np.testing.assert_array_equal(mask.array, expected)
    np.testing.assert_allclose(mask.affine, vol.affine)
    assert "1 voxel(s) belong to more than one" in caplog.text
    dz, dy, dx = vol.spacing_mm
    assert [(d["label"], d["segment_number"], d["segment_label"]) for d in info] == [
        (1, 1, "nodule 1"), (2, 2, "nodule 2")]
    assert info[0]["volume_mm3"] == pytest.approx((60 - 1) * dz * dy * dx)
    mask2, info2 = seg_mask(path, vol, segment_numbers=[2])
    np.testing.assert_array_equal(mask2.array, arr[..., 1].astype(np.int16))
    assert info2[0]["label"] == 1 and info2[0]["segment_number"] == 2
    with pytest.raises(MaskError, match="'nodule 1'") as err:
        seg_mask(path, vol, segment_numbers=[3])
    assert_safe(str(err.value), path)
    with pytest.raises(MaskError, match=r"\(segment_numbers is empty\)"):
        seg_mask(path, vol, segment_numbers=[])


def test_seg_fractional_threshold_half(ct, tmp_path):
    written, vol = ct
    prob = np.zeros((*vol.shape, 1), np.float32)
    prob[3, 2:6, 2:6, 0] = 0.3
    prob[3, 3:5, 3:6, 0] = 0.6
    prob[4, 8, 8, 0] = 1.0
    prob[4, 9, 9, 0] = 0.45
    path = make_seg(tmp_path / "frac.dcm", written, prob, seg_type="FRACTIONAL", n_segments=1)
    assert pydicom.dcmread(path).SegmentationType == "FRACTIONAL"
    mask, info = seg_mask(path, vol)
    np.testing.assert_array_equal(mask.array, (prob[..., 0] >= 0.5).astype(np.int16))
    assert np.count_nonzero(mask.array) == 7 and info[0]["segment_label"] == "nodule 1"


def test_seg_on_other_grid_is_a_geometry_error(ct, tmp_path):
    written, vol = ct
    other = write_ct_series(tmp_path / "other", n=8, rows=16, cols=16, pixel_spacing=(0.75, 0.8),
                            slice_thickness=2.5)
    path = make_seg(tmp_path / "seg.dcm", other, two_segments(vol.shape))
    with pytest.raises(GeometryMismatchError, match="Resample") as err:
        seg_mask(path, vol)
    assert "'seg.dcm'" in str(err.value)
    assert_safe(str(err.value), path)
    shifted = write_ct_series(tmp_path / "shift", n=8, rows=16, cols=16,
                              origin=(-100.0, -120.0, -48.75), slice_thickness=2.5)  # half a slice off
    path = make_seg(tmp_path / "seg2.dcm", shifted, two_segments(vol.shape))
    with pytest.raises(GeometryMismatchError, match="does not lie on the CT grid") as err:
        seg_mask(path, vol)
    assert_safe(str(err.value), path)
    inplane = write_ct_series(tmp_path / "inplane", n=8, rows=16, cols=16,
                              origin=(-100.4, -120.0, -50.0), slice_thickness=2.5)
    path = make_seg(tmp_path / "seg4.dcm", inplane, two_segments(vol.shape))
    with pytest.raises(GeometryMismatchError, match=r"\(\+0\.00, \+0\.00, -0\.50\)"):
        seg_mask(path, vol)
    far = write_ct_series(tmp_path / "far", n=8, rows=16, cols=16,
                          origin=(-100.0, -120.0, 50.0), slice_thickness=2.5)
    path = make_seg(tmp_path / "seg5.dcm", far, two_segments(vol.shape))
    with pytest.raises(GeometryMismatchError, match="no segmented frame") as err:
        seg_mask(path, vol)
    assert_safe(str(err.value), path)
    with pytest.raises(GeometryMismatchError) as err:
        seg_mask(make_seg(tmp_path / "seg3.dcm", written, two_segments(vol.shape)), vol,
                 frame_of_reference_uid="1.2.3.4.5")
    assert_safe(str(err.value), path)
    truncated = tmp_path / "cut.dcm"
    truncated.write_bytes(path.read_bytes()[:1500])
    with pytest.raises(UnreadableFileError) as err:
        seg_mask(truncated, vol)
    assert_safe(str(err.value), truncated)


def test_seg_labelmap_skips_background_segment(ct, tmp_path):
    written, vol = ct
    lab = np.zeros(vol.shape, np.uint8)
    lab[2:4, 3:6, 3:6] = 1
    lab[5, 8:10, 8:12] = 2
    path = make_seg(tmp_path / "lm.dcm", written, lab, seg_type="LABELMAP")
    assert is_seg(path)
    mask, info = seg_mask(path, vol)
    np.testing.assert_array_equal(mask.array, lab.astype(np.int16))
    assert [d["segment_number"] for d in info] == [1, 2]
