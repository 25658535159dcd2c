"""Tests for data_tools.dicom: tiny synthetic CT series written with pydicom (offline, seeded)."""

from __future__ import annotations

import logging
import shutil

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from _dicom_factory import write_ct_series
from data_tools.dicom import (
    SeriesInfo,
    find_series,
    is_dicom_file,
    load_dicom_folder,
    load_dicom_series,
    read_ct_files,
    select_ct_series,
)
from data_tools.errors import (
    NoSeriesError,
    SeriesValidationError,
    UnreadableFileError,
    file_label,
)

# Hospital exports often name folders after the patient; none of this may reach a message.
SECRET = "Doe^Jane_SYN-0001"
SAFE_KEYS = {"format", "modality", "manufacturer", "model", "kernel", "kvp", "slice_thickness_mm"}


@pytest.fixture
def case_dir(tmp_path):
    folder = tmp_path / SECRET / "CT chest"
    folder.mkdir(parents=True)
    return folder


@pytest.fixture(autouse=True)
def _logs_are_private(caplog, tmp_path):
    caplog.set_level(logging.DEBUG, logger="data_tools")
    yield
    for record in caplog.records:
        text = record.getMessage()
        assert str(tmp_path) not in text and SECRET not in text, text


def _message(excinfo, tmp_path) -> str:
    """The error's message, after checking that it holds no path (privacy)."""
    text = str(excinfo.value)
    assert str(tmp_path) not in text
    assert SECRET not in text
    return text


def _rewrite(path, **changes):
    ds = pydicom.dcmread(path)
    for keyword, value in changes.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    ds.save_as(path, enforce_file_format=True)


def _rotation(deg_x, deg_z) -> np.ndarray:
    ax, az = np.radians(deg_x), np.radians(deg_z)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rx @ rz


# ---------------------------------------------------------------------------- happy paths


def test_hu_round_trip_exact_with_per_slice_rescale(case_dir):
    written = write_ct_series(case_dir)
    vol = load_dicom_series(case_dir)
    assert vol.shape == (8, 16, 16)
    assert vol.array.dtype == np.float32
    np.testing.assert_array_equal(vol.array, written.hu)
    assert vol.metadata["format"] == "dicom" and vol.metadata["modality"] == "CT"


def test_integer_hu_keeps_exact_hu_as_int16(case_dir):
    intercepts = [-1024.0, 0.0, 7.0, -1000.0, -1024.0, 3.0, 0.0, -8.0]
    written = write_ct_series(case_dir, slopes=[1.0] * 8, intercepts=intercepts)
    vol = load_dicom_series(case_dir, integer_hu=True)
    assert vol.array.dtype == np.int16
    np.testing.assert_array_equal(vol.array, written.hu)
    plain = load_dicom_series(case_dir)
    assert plain.array.dtype == np.float32
    np.testing.assert_array_equal(plain.array, vol.array)


def test_integer_hu_with_integer_slopes_is_exact_int16(case_dir):
    # slopes other than 1 are computed through int32 (no int64 copy): still exact
    written = write_ct_series(case_dir, slopes=[2.0, 1.0, 3.0, 2.0, 1.0, 2.0, 1.0, 2.0],
                              intercepts=[-1024.0, -1000.0, -2048.0, 5.0, 0.0, -1024.0,
                                          -1024.0, -3.0])
    vol = load_dicom_series(case_dir, integer_hu=True)
    assert vol.array.dtype == np.int16
    np.testing.assert_array_equal(vol.array, written.hu)
    np.testing.assert_array_equal(load_dicom_series(case_dir).array, vol.array)


@pytest.mark.parametrize("slopes", [None, [1.0, 1.0, 1.0, 20.0, 1.0, 1.0, 1.0, 1.0]],
                         ids=["fractional rescale", "values beyond int16 mid-series"])
def test_integer_hu_falls_back_to_exact_float32(case_dir, slopes, caplog):
    written = write_ct_series(case_dir, slopes=slopes,
                              intercepts=None if slopes is None else [-1024.0] * 8)
    if slopes is not None:
        assert np.abs(written.hu).max() > np.iinfo(np.int16).max   # the case is real
    vol = load_dicom_series(case_dir, integer_hu=True)
    assert vol.array.dtype == np.float32
    np.testing.assert_array_equal(vol.array, written.hu)   # slices before the switch too
    assert (slopes is not None) == any("int16 range" in r.getMessage() for r in caplog.records)


def test_sorting_uses_positions_not_file_names_or_instance_numbers(case_dir):
    written = write_ct_series(case_dir, seed=3)
    by_name = sorted(written.files)
    by_instance = [f for _, f in sorted(zip(written.instances, written.files))]
    assert by_name != written.files and by_instance != written.files  # really shuffled
    for order in (by_name, by_instance, list(reversed(written.files))):
        vol = read_ct_files(order)
        np.testing.assert_array_equal(vol.array, written.hu)
        np.testing.assert_allclose(vol.affine, written.affine, atol=1e-6)


def test_spacing_comes_from_positions_not_slice_thickness(case_dir):
    write_ct_series(case_dir, slice_step=1.25, slice_thickness=5.0)
    vol = load_dicom_series(case_dir)
    assert vol.spacing_mm == pytest.approx((1.25, 0.7, 0.8), abs=1e-6)
    assert float(vol.metadata["slice_thickness_mm"]) == 5.0


def test_affine_maps_voxels_to_dicom_patient_positions(case_dir):
    written = write_ct_series(case_dir, pixel_spacing=(0.7, 0.8))
    vol = load_dicom_series(case_dir)
    for k, ipp in enumerate(written.positions):
        np.testing.assert_allclose(vol.voxel_to_world([k, 0, 0]), ipp, atol=1e-6)
    # DICOM PS3.3 C.7.6.2.1.1: P = IPP + col * PixelSpacing[1] * rowcos
    #                                  + row * PixelSpacing[0] * colcos
    r, c = 5, 11
    expected = written.positions[2] + c * 0.8 * np.array([1, 0, 0]) + r * 0.7 * np.array([0, 1, 0])
    np.testing.assert_allclose(vol.voxel_to_world([2, r, c]), expected, atol=1e-6)
    np.testing.assert_allclose(vol.world_to_voxel(expected), [2, r, c], atol=1e-6)


@pytest.mark.parametrize("orientation", [
    tuple(_rotation(20, 30)[:, 0]) + tuple(_rotation(20, 30)[:, 1]),  # oblique
    (1.0, 0.0, 0.0, 0.0, 0.0, -1.0),  # coronal: normal points posterior
], ids=["oblique", "coronal"])
def test_non_axial_orientation(case_dir, orientation):
    written = write_ct_series(case_dir, orientation=orientation, slice_step=3.0,
                              pixel_spacing=(0.6, 0.9))
    vol = load_dicom_series(case_dir)
    np.testing.assert_allclose(vol.affine, written.affine, atol=1e-5)
    np.testing.assert_array_equal(vol.array, written.hu)
    assert vol.spacing_mm == pytest.approx((3.0, 0.6, 0.9), abs=1e-5)
    normal = np.cross(orientation[:3], orientation[3:])
    np.testing.assert_allclose(vol.affine[:3, 0] / 3.0, normal, atol=1e-5)
    for k, ipp in enumerate(written.positions):
        np.testing.assert_allclose(vol.voxel_to_world([k, 0, 0]), ipp, atol=1e-5)


def test_real_ct_small_replicated_matches_pydicom(case_dir):
    src = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    x, y, z = (float(v) for v in src.ImagePositionPatient)
    expected = []
    for k in range(3):
        ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.ImagePositionPatient = [x, y, round(z + 2.0 * k, 4)]
        ds.InstanceNumber = 3 - k
        ds.RescaleIntercept = -1024 + 10 * k
        ds.save_as(case_dir / f"copy{k}.dcm", enforce_file_format=True)
        again = pydicom.dcmread(case_dir / f"copy{k}.dcm")
        expected.append(again.pixel_array * float(again.RescaleSlope)
                        + float(again.RescaleIntercept))
    vol = load_dicom_series(case_dir)
    assert vol.shape == (3, int(src.Rows), int(src.Columns))
    np.testing.assert_array_equal(vol.array, np.stack(expected).astype(np.float32))
    assert vol.spacing_mm[0] == pytest.approx(2.0)


def test_ct_series_chosen_over_localizer_and_reformat(case_dir, caplog):
    write_ct_series(case_dir / "a_localizer", n=2, prefix="LOC",
                    image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"))
    write_ct_series(case_dir / "b_reformat", n=12, prefix="REF", seed=1,
                    image_type=("DERIVED", "SECONDARY", "REFORMATTED"))
    written = write_ct_series(case_dir / "c_axial", n=8, seed=2)
    series = find_series(case_dir)
    assert sorted(s.n_files for s in series) == [2, 8, 12]
    caplog.clear()
    chosen = select_ct_series(series)
    assert chosen.series_uid == written.series_uid and chosen.is_original_axial
    # two CT series qualify (the localizer has too few slices): said at warning level
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warned == ["the folder holds 2 CT series; reading the one with 8 file(s) (original "
                      "axial first, then the most slices). To read another, list the case in a "
                      "manifest CSV with its series_uid"]
    vol = load_dicom_series(case_dir)
    np.testing.assert_array_equal(vol.array, written.hu)
    # an explicit choice wins
    reformat = next(s for s in series if s.n_files == 12)
    assert select_ct_series(series, series_uid=reformat.series_uid) is reformat
    assert load_dicom_series(case_dir, series_uid=reformat.series_uid).shape[0] == 12


def test_find_series_skips_non_dicom_and_dicomdir(case_dir, caplog):
    write_ct_series(case_dir / "sub")
    (case_dir / "notes.txt").write_text("not an image")
    shutil.copy(get_testdata_file("DICOMDIR"), case_dir / "DICOMDIR")
    shutil.copy(get_testdata_file("DICOMDIR"), case_dir / "index")  # found by its SOP class
    series = find_series(case_dir)
    assert len(series) == 1 and series[0].n_files == 8
    assert isinstance(series[0], SeriesInfo) and series[0].modality == "CT"
    assert find_series(case_dir, recursive=False) == []
    assert any("not a DICOM file" in r.getMessage() for r in caplog.records)


def test_is_dicom_file(case_dir):
    written = write_ct_series(case_dir, n=3)
    (case_dir / "x.txt").write_text("hello")
    assert is_dicom_file(written.files[0])
    assert not is_dicom_file(case_dir / "x.txt")
    assert not is_dicom_file(case_dir / "missing.dcm")
    assert not is_dicom_file(case_dir)


def test_metadata_holds_no_identifiers(case_dir):
    written = write_ct_series(case_dir, slice_thickness=2.5)
    vol = load_dicom_series(case_dir)
    assert set(vol.metadata) <= SAFE_KEYS
    assert vol.metadata["manufacturer"] == "SyntheticCT"
    assert vol.metadata["model"] == "Factory-1"
    assert vol.metadata["kernel"] == "B30f" and vol.metadata["kvp"] == "120"
    values = " ".join(vol.metadata.values())
    for secret in ("Doe", "SYN-0001", "2024", written.series_uid, "chest", str(case_dir)):
        assert secret not in values


# ---------------------------------------------------------------------------- refusals


def test_mr_only_folder_says_mr_was_found(case_dir, tmp_path):
    shutil.copy(get_testdata_file("MR_small.dcm"), case_dir / "mr.dcm")
    with pytest.raises(NoSeriesError) as excinfo:
        load_dicom_series(case_dir)
    text = _message(excinfo, tmp_path)
    assert "MR with 1 file" in text and "CT series" in text


def test_only_a_localizer_is_not_enough(case_dir, tmp_path):
    write_ct_series(case_dir, n=2, image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"))
    with pytest.raises(NoSeriesError) as excinfo:
        load_dicom_series(case_dir)
    assert "CT with 2 files" in _message(excinfo, tmp_path)


@pytest.mark.parametrize("content", [None, "notes.txt", "missing"])
def test_empty_or_missing_folder(case_dir, tmp_path, content):
    folder = case_dir
    if content == "notes.txt":
        (case_dir / content).write_text("nothing here")
    elif content == "missing":
        folder = case_dir / "does-not-exist"
    with pytest.raises(NoSeriesError) as excinfo:
        load_dicom_series(folder)
    assert "CT series" in _message(excinfo, tmp_path)


def test_unknown_series_uid(case_dir, tmp_path):
    write_ct_series(case_dir)
    with pytest.raises(NoSeriesError) as excinfo:
        load_dicom_series(case_dir, series_uid="1.2.3.4.5")
    assert "1.2.3.4.5" not in _message(excinfo, tmp_path)


def test_missing_middle_slice_names_gap_and_neighbours(case_dir, tmp_path):
    written = write_ct_series(case_dir, n=8, slice_step=2.5)
    written.files[4].unlink()
    with pytest.raises(SeriesValidationError) as excinfo:
        load_dicom_series(case_dir)
    text = _message(excinfo, tmp_path)
    assert "5.00 mm" in text and "2.50 mm" in text
    assert f"InstanceNumber {written.instances[3]}" in text
    assert f"InstanceNumber {written.instances[5]}" in text


def test_small_position_jitter_is_accepted(case_dir):
    written = write_ct_series(case_dir, slice_step=2.5)
    ipp = [float(v) for v in written.positions[3]]
    _rewrite(written.files[3], ImagePositionPatient=[ipp[0], ipp[1], ipp[2] + 0.05])
    vol = load_dicom_series(case_dir)
    assert vol.spacing_mm[0] == pytest.approx(2.5, abs=1e-6)


def test_duplicate_position_names_both_slices(case_dir, tmp_path):
    written = write_ct_series(case_dir)
    _rewrite(written.files[5], ImagePositionPatient=[float(v) for v in written.positions[4]])
    with pytest.raises(SeriesValidationError) as excinfo:
        load_dicom_series(case_dir)
    text = _message(excinfo, tmp_path)
    assert "share a position" in text
    assert f"InstanceNumber {written.instances[4]}" in text
    assert f"InstanceNumber {written.instances[5]}" in text


@pytest.mark.parametrize("keyword, value", [
    ("ImageOrientationPatient", [1, 0, 0, 0, 0.99, 0.141]),
    ("PixelSpacing", [0.7, 0.9]),
])
def test_slices_must_share_the_grid(case_dir, tmp_path, keyword, value):
    written = write_ct_series(case_dir)
    _rewrite(written.files[2], **{keyword: value})
    with pytest.raises(SeriesValidationError) as excinfo:
        load_dicom_series(case_dir)
    assert f"{keyword} differs" in _message(excinfo, tmp_path)


@pytest.mark.parametrize("lut", [False, True], ids=["no-rescale", "modality-lut"])
def test_missing_rescale_is_refused(case_dir, tmp_path, lut):
    written = write_ct_series(case_dir)
    _rewrite(written.files[6], RescaleIntercept=None)
    if lut:
        ds = pydicom.dcmread(written.files[6])
        item = pydicom.Dataset()
        item.LUTDescriptor = [4, 0, 16]
        item.ModalityLUTType = "HU"
        item.LUTData = np.arange(4, dtype="<u2").tobytes()
        ds.ModalityLUTSequence = [item]
        ds.save_as(written.files[6], enforce_file_format=True)
    with pytest.raises(SeriesValidationError) as excinfo:
        load_dicom_series(case_dir)
    text = _message(excinfo, tmp_path)
    assert file_label(written.files[6]) in text
    if lut:
        assert "ModalityLUTSequence" in text and "not supported" in text
    else:
        assert "RescaleIntercept" in text and "-1024" in text


def test_single_slice_is_refused(case_dir, tmp_path):
    written = write_ct_series(case_dir, n=3)
    with pytest.raises(SeriesValidationError) as excinfo:
        read_ct_files(written.files[:1])
    assert "at least 3" in _message(excinfo, tmp_path)


def test_truncated_file_is_named(case_dir, tmp_path):
    written = write_ct_series(case_dir)
    victim = written.files[3]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) - 200])
    with pytest.raises(UnreadableFileError) as excinfo:
        load_dicom_series(case_dir)
    text = _message(excinfo, tmp_path)
    assert file_label(victim) in text and "truncated" in text
    assert excinfo.value.path == victim


def test_header_truncated_file_is_skipped_and_mentioned(case_dir, tmp_path):
    written = write_ct_series(case_dir)
    victim = written.files[4]
    victim.write_bytes(victim.read_bytes()[:400])  # keeps 'DICM', loses the series tags
    assert len(find_series(case_dir)[0].files) == 7
    with pytest.raises(SeriesValidationError) as excinfo:
        load_dicom_series(case_dir)
    text = _message(excinfo, tmp_path)
    assert "5.00 mm" in text and "unreadable header" in text
    with pytest.raises(UnreadableFileError) as excinfo:  # given directly, the file is named
        read_ct_files(written.files)
    assert file_label(victim) in _message(excinfo, tmp_path)


def test_non_ct_file_in_given_files_is_refused(case_dir, tmp_path):
    written = write_ct_series(case_dir)
    _rewrite(written.files[0], Modality="MR")
    with pytest.raises(SeriesValidationError) as excinfo:
        read_ct_files(written.files)
    assert "modality MR" in _message(excinfo, tmp_path)


# ------------------------------------------------ bytes handed in (read=): each file read once


def _counting_reader(decline=()):
    asked: dict = {}

    def read(path):
        asked[path] = asked.get(path, 0) + 1
        return None if path.name in decline else path.read_bytes()

    return read, asked


def test_bytes_handed_in_give_the_volume_of_the_files_and_nothing_is_read_again(
        case_dir, monkeypatch):
    """The headers and pixels are parsed from the bytes *read* hands out (each file asked for
    once); no file is opened again, not even to check for the DICM prefix."""
    import data_tools.dicom as dicom
    import data_tools.dicom_series as dicom_series

    written = write_ct_series(case_dir, seed=3)  # per-slice rescale, shuffled file names
    (case_dir / "notes.txt").write_text("not DICOM")
    expected, chosen, series = load_dicom_folder(case_dir)
    read, asked = _counting_reader()

    def opened_again(*args, **kwargs):
        raise AssertionError("a file was opened again")

    monkeypatch.setattr(dicom_series, "is_dicom_file", opened_again)
    monkeypatch.setattr(dicom, "_read_full", opened_again)
    got, got_chosen, got_series = load_dicom_folder(case_dir, read=read)
    assert asked == {p: 1 for p in [*written.files, case_dir / "notes.txt"]}
    np.testing.assert_array_equal(got.array, expected.array)
    np.testing.assert_array_equal(got.affine, expected.affine)
    assert dict(got.metadata) == dict(expected.metadata)
    assert got_chosen == chosen and got_series == series


def test_a_reader_that_declines_some_files_leaves_them_to_be_read_here(case_dir):
    written = write_ct_series(case_dir)
    read, asked = _counting_reader(decline={written.files[2].name, written.files[5].name})
    vol = load_dicom_folder(case_dir, read=read)[0]
    np.testing.assert_array_equal(vol.array, written.hu)
    assert sorted(asked) == sorted(written.files)


@pytest.mark.parametrize("cut", ["pixels", "header"])
def test_truncated_bytes_fail_as_the_truncated_file_does(case_dir, tmp_path, cut):
    written = write_ct_series(case_dir)
    victim = written.files[3]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) - 200] if cut == "pixels" else data[:400])
    errors = []
    for read in (None, _counting_reader()[0]):
        with pytest.raises((UnreadableFileError, SeriesValidationError)) as excinfo:
            load_dicom_folder(case_dir, read=read)
        errors.append((type(excinfo.value), _message(excinfo, tmp_path), excinfo.value.path))
    assert errors[0] == errors[1]
