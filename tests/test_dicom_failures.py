"""Failure modes of real CT series (issue 5): each one handled as documented, with a message a
user can act on.  Series are written with pydicom; compressed pixel data comes from the real
files that ship with pydicom."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import RLELossless, generate_uid

from _dicom_factory import AXIAL, ct_dataset, write_ct_series
from data_tools import dicom as dicom_mod
from data_tools import dicom_pixels
from data_tools.dicom import find_series, load_dicom_series, read_ct_files
from data_tools.errors import NoSeriesError, SeriesValidationError, UnreadableFileError, file_label
# the private case folder, the log check and the message check of the loader's other tests
from test_dicom import SECRET, _logs_are_private, _message, case_dir  # noqa: F401

# ------------------------------------------------------------------ duplicates and localizers


def test_identical_duplicate_is_dropped_with_a_warning(case_dir, caplog):
    written = write_ct_series(case_dir)
    copy = case_dir / "copy_of_slice.dcm"
    copy.write_bytes(written.files[3].read_bytes())
    vol = load_dicom_series(case_dir)
    np.testing.assert_array_equal(vol.array, written.hu)
    assert any("exact duplicate" in r.getMessage() for r in caplog.records)


def test_different_images_at_one_position_are_refused(case_dir, tmp_path):
    written = write_ct_series(case_dir)
    ds = pydicom.dcmread(written.files[3])
    ds.SOPInstanceUID = generate_uid()
    ds.PixelData = (ds.pixel_array + 7).astype(np.int16).tobytes()
    ds.InstanceNumber = 99
    ds.save_as(case_dir / "second_recon.dcm", enforce_file_format=True)
    with pytest.raises(SeriesValidationError) as excinfo:
        load_dicom_series(case_dir)
    text = _message(excinfo, tmp_path)
    assert "different slices share a position" in text and "InstanceNumber 99" in text
    assert f"{16 * 16} voxel(s)" in text


@pytest.mark.parametrize("kind", ["image-type", "orientation"])
def test_localizer_under_the_ct_series_uid_is_dropped(case_dir, caplog, kind):
    written = write_ct_series(case_dir, n=12)
    stored = np.zeros((20, 24), np.int16)
    if kind == "image-type":  # says LOCALIZER, but shares the grid
        stored = np.zeros((16, 16), np.int16)
        scout = ct_dataset(stored, position=written.positions[0] + [0, 0, 1.0],
                           series_uid=written.series_uid,
                           image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"))
    else:  # no LOCALIZER in ImageType, but coronal and another matrix
        scout = ct_dataset(stored, position=(-200.0, 0.0, 100.0),
                           orientation=(1, 0, 0, 0, 0, -1), series_uid=written.series_uid)
    scout.save_as(case_dir / "scout.dcm", enforce_file_format=True)
    vol = load_dicom_series(case_dir)
    np.testing.assert_array_equal(vol.array, written.hu)
    assert any("localizer" in r.getMessage() for r in caplog.records)


def test_many_off_grid_files_are_not_taken_for_localizers(case_dir, tmp_path):
    written = write_ct_series(case_dir, n=6)
    for k in range(3):  # half the series in another orientation: a mixed folder, refused
        ds = pydicom.dcmread(written.files[k])
        ds.ImageOrientationPatient = [1, 0, 0, 0, 0.99, 0.141]
        ds.save_as(written.files[k], enforce_file_format=True)
    with pytest.raises(SeriesValidationError) as excinfo:
        load_dicom_series(case_dir)
    assert "ImageOrientationPatient differs" in _message(excinfo, tmp_path)


# ------------------------------------------------------------------------------ gantry tilt


def test_gantry_tilt_is_resampled_and_recorded(case_dir):
    """A ramp along world y must land on the same rows in every slice after the correction."""
    n, rows, cols, ps, step, shear = 6, 20, 8, 1.0, 2.0, 0.3  # 0.3 mm in y per slice
    origin = np.array([-4.0, -10.0, -30.0])
    for k in range(n):
        pos = origin + [0.0, k * shear, k * step]
        y_world = pos[1] + np.arange(rows) * ps                 # world y of each row
        stored = np.repeat((10 * y_world)[:, None], cols, axis=1).round().astype(np.int16)
        ds = ct_dataset(stored, position=pos, pixel_spacing=(ps, ps), slope=0.1, intercept=0.0,
                        instance=k + 1, series_uid="1.2.3.4", study_uid="1.2.3")
        ds.save_as(case_dir / f"s{k}.dcm", enforce_file_format=True)
    vol = load_dicom_series(case_dir)
    expected_tilt = np.degrees(np.arctan(shear / step))
    assert float(vol.metadata["gantry_tilt_deg"]) == pytest.approx(expected_tilt, abs=0.01)
    assert "gantry tilt" in vol.metadata["resampled"]
    np.testing.assert_allclose(vol.affine[:3, 0], [0, 0, step], atol=1e-6)  # orthogonal now
    y_first = origin[1] + np.arange(rows) * ps
    for k in range(n):  # rows whose source lies inside the slice: exact (linear interpolation)
        inside = slice(int(np.ceil(k * shear)) + 1, rows)
        np.testing.assert_allclose(vol.array[k, inside, 3], y_first[inside], atol=0.06)
    assert vol.array[n - 1, 0, 3] == pytest.approx(vol.array.min())  # filled from outside: air


def test_gantry_tilt_resamples_integer_hu_as_float32(case_dir):
    n, rows, cols, step, shear = 5, 12, 6, 2.0, 0.5
    rng = np.random.default_rng(4)
    for k in range(n):
        stored = rng.integers(-1000, 1000, size=(rows, cols)).astype(np.int16)
        ds = ct_dataset(stored, position=[0.0, k * shear, k * step], pixel_spacing=(1.0, 1.0),
                        slope=1.0, intercept=0.0, instance=k + 1, series_uid="1.2.3.5",
                        study_uid="1.2.3")
        ds.save_as(case_dir / f"s{k}.dcm", enforce_file_format=True)
    vol = load_dicom_series(case_dir, integer_hu=True)
    assert "gantry_tilt_deg" in vol.metadata
    assert vol.array.dtype == np.float32                   # interpolated, not truncated
    np.testing.assert_array_equal(vol.array, load_dicom_series(case_dir).array)
    assert not np.array_equal(vol.array, np.round(vol.array))


def test_untilted_series_keeps_its_voxels_and_records_nothing(case_dir):
    written = write_ct_series(case_dir)
    vol = load_dicom_series(case_dir)
    assert "gantry_tilt_deg" not in vol.metadata
    np.testing.assert_array_equal(vol.array, written.hu)


# -------------------------------------------------------------------------- memory estimate


def test_memory_estimate_refuses_before_reading_pixels(case_dir, tmp_path, monkeypatch):
    write_ct_series(case_dir, n=10, rows=64, cols=64)
    monkeypatch.setattr(dicom_mod, "_read_pixels", lambda s: pytest.fail("pixels were read"))
    with pytest.raises(SeriesValidationError) as excinfo:
        load_dicom_series(case_dir, max_bytes=100_000)
    text = _message(excinfo, tmp_path)
    assert "0.00 GiB" not in text.split("above")[0] or "10 slices of 64 x 64" in text
    assert "10 slices of 64 x 64" in text and "--max-volume-gb" in text


def test_memory_limit_none_means_no_limit(case_dir):
    written = write_ct_series(case_dir, n=4)
    assert load_dicom_series(case_dir, max_bytes=None).shape == written.hu.shape


# ---------------------------------------------------------------- compressed transfer syntaxes


def _series_from_real_compressed(folder, name: str, n: int = 3):
    """A CT series whose slices carry the real compressed pixel data of pydicom's *name*."""
    src = pydicom.dcmread(get_testdata_file(name))
    series_uid = generate_uid()
    for k in range(n):
        ds = src.copy()
        ds.Modality = "CT"
        ds.SOPClassUID = pydicom.uid.CTImageStorage
        ds.file_meta.MediaStorageSOPClassUID = pydicom.uid.CTImageStorage
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.SeriesInstanceUID = series_uid
        ds.ImageOrientationPatient = list(AXIAL)
        ds.ImagePositionPatient = [0.0, 0.0, 3.0 * k]
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        ds.InstanceNumber = k + 1
        ds.save_as(folder / f"c{k}.dcm", enforce_file_format=True)


@pytest.mark.parametrize("name", ["MR_small_RLE.dcm", "MR_small_jp2klossless.dcm",
                                  "MR_small_jpeg_ls_lossless.dcm"])
def test_real_compressed_pixel_data_decodes_losslessly(case_dir, name):
    _series_from_real_compressed(case_dir, name)
    reference = pydicom.dcmread(get_testdata_file("MR_small.dcm")).pixel_array
    vol = load_dicom_series(case_dir)
    assert vol.shape == (3, *reference.shape)
    for k in range(3):
        np.testing.assert_array_equal(vol.array[k], reference.astype(np.float32) - 1024)


def test_series_compressed_here_round_trips(case_dir):
    written = write_ct_series(case_dir, n=4)
    for path in written.files:
        ds = pydicom.dcmread(path)
        ds.compress(RLELossless)
        ds.save_as(path, enforce_file_format=True)
    np.testing.assert_array_equal(load_dicom_series(case_dir).array, written.hu)


def test_missing_decoder_is_named_before_any_pixel_is_read(case_dir, tmp_path, monkeypatch):
    _series_from_real_compressed(case_dir, "MR_small_jp2klossless.dcm")

    class _NoDecoder:
        is_available = False

    monkeypatch.setattr(dicom_pixels, "get_decoder", lambda ts: _NoDecoder())
    monkeypatch.setattr(dicom_mod, "_read_pixels", lambda s: pytest.fail("pixels were read"))
    with pytest.raises(UnreadableFileError) as excinfo:
        load_dicom_series(case_dir)
    text = _message(excinfo, tmp_path)
    assert "JPEG 2000" in text and "pylibjpeg-openjpeg" in text and "c0.dcm" in text


# -------------------------------------------------------------- files that are not quite DICOM


def test_file_without_preamble_is_read(case_dir):
    written = write_ct_series(case_dir)
    ds = pydicom.dcmread(written.files[2])
    raw = case_dir / "no_preamble"
    written.files[2].unlink()
    ds.preamble = None
    pydicom.dcmwrite(raw, ds, enforce_file_format=False)
    assert raw.read_bytes()[128:132] != b"DICM"
    np.testing.assert_array_equal(load_dicom_series(case_dir).array, written.hu)


def test_pydicom_no_meta_file_and_random_bytes_are_skipped(case_dir):
    written = write_ct_series(case_dir)
    (case_dir / "no_meta.dcm").write_bytes(open(get_testdata_file("no_meta.dcm"), "rb").read())
    (case_dir / "noise.bin").write_bytes(np.random.default_rng(0).bytes(4000))
    (case_dir / "empty.dcm").write_bytes(b"")
    assert [s.n_files for s in find_series(case_dir)] == [len(written.files)]
    np.testing.assert_array_equal(load_dicom_series(case_dir).array, written.hu)


def test_real_mr_small_is_refused_as_not_ct(case_dir, tmp_path):
    (case_dir / "MR_small.dcm").write_bytes(open(get_testdata_file("MR_small.dcm"), "rb").read())
    with pytest.raises(NoSeriesError) as excinfo:
        load_dicom_series(case_dir)
    assert "MR with 1 file" in _message(excinfo, tmp_path)


def test_real_truncated_mr_is_reported_by_name(case_dir, tmp_path):
    path = case_dir / "MR_truncated.dcm"
    path.write_bytes(open(get_testdata_file("MR_truncated.dcm"), "rb").read())
    with pytest.raises(SeriesValidationError) as excinfo:
        read_ct_files([path] * 3)
    assert file_label(path) in _message(excinfo, tmp_path)


@pytest.mark.parametrize("signed", [0, 1])
def test_bits_stored_below_bits_allocated_matches_pydicom(case_dir, signed):
    """12 of 16 bits stored, junk in the top bits: the fast native path agrees with pydicom."""
    written = write_ct_series(case_dir, n=3, rows=2, cols=2)
    raw = np.array([[0x0FFF, 0xF123], [0x0800, 0x07FF]], dtype=np.uint16)
    for path in written.files:
        ds = pydicom.dcmread(path)
        ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 12, 11, signed
        ds.PixelData = raw.tobytes()
        ds.save_as(path, enforce_file_format=True)
    vol = load_dicom_series(case_dir)
    for k, path in enumerate(written.files):  # files in slice order
        ds = pydicom.dcmread(path)
        expected = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        np.testing.assert_array_equal(vol.array[k], expected.astype(np.float32))
