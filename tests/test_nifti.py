"""NIfTI edge cases (issue 5): orientation, qform/sform, truncation, dimensionality."""

from __future__ import annotations

import gzip
import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from data_tools.errors import MaskError, UnreadableFileError
from data_tools.nifti import load_nifti, load_nifti_mask, save_nifti
from data_tools.volume import Volume, affine_from_spacing

SECRET = "Doe^Jane"
NIB_DATA = Path(nib.__file__).parent / "tests" / "data"


@pytest.fixture
def folder(tmp_path):
    d = tmp_path / SECRET
    d.mkdir()
    return d


def _ras_image(data, affine):
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    return img


def test_round_trip_keeps_array_and_affine(folder):
    rng = np.random.default_rng(0)
    vol = Volume(rng.normal(size=(5, 6, 7)).astype(np.float32),
                 affine_from_spacing((2.5, 0.7, 0.8), (-10.0, 20.0, 30.0)))
    back = load_nifti(save_nifti(vol, folder / "ct.nii.gz"))
    np.testing.assert_array_equal(back.array, vol.array)
    np.testing.assert_allclose(back.affine, vol.affine, atol=1e-5)


@pytest.mark.parametrize("codes", ["RAS", "LPS", "PIL", "ASL"])
def test_any_stored_orientation_gives_the_same_world_and_axes(folder, codes):
    """The same physical volume stored in four voxel orders reads back identically."""
    rng = np.random.default_rng(1)
    data = rng.integers(0, 100, size=(4, 5, 6)).astype(np.int16)
    base = np.diag([0.9, 1.1, 2.0, 1.0])
    base[:3, 3] = [-30.0, 12.0, 40.0]
    ref = load_nifti(_save(folder / "ref.nii", data, base))
    ornt = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt("RAS"),
                                           nib.orientations.axcodes2ornt(tuple(codes)))
    moved = nib.Nifti1Image(data, base).as_reoriented(ornt)
    assert nib.aff2axcodes(moved.affine) == tuple(codes)
    got = load_nifti(_save(folder / f"{codes}.nii", np.asanyarray(moved.dataobj), moved.affine))
    np.testing.assert_array_equal(got.array, ref.array)
    np.testing.assert_allclose(got.affine, ref.affine, atol=1e-5)
    # the project's convention: columns toward Left (+x LPS), rows toward Posterior, slices up
    assert got.affine[0, 2] > 0 and got.affine[1, 1] > 0 and got.affine[2, 0] > 0


def _save(path, data, affine):
    nib.save(_ras_image(data, affine), str(path))
    return path


def test_qform_sform_disagreement_uses_sform_and_records_it(folder, caplog):
    data = np.zeros((4, 4, 4), np.float32)
    sform = np.diag([1.0, 1.0, 1.0, 1.0])
    qform = sform.copy()
    qform[:3, 3] = [0.0, 0.0, 5.0]  # 5 mm shift along z
    img = nib.Nifti1Image(data, sform)
    img.set_sform(sform, code=2)
    img.set_qform(qform, code=1)
    nib.save(img, str(folder / "x.nii"))
    with caplog.at_level(logging.WARNING, logger="data_tools.nifti"):
        vol = load_nifti(folder / "x.nii")
    assert "5.0 mm" in vol.metadata["xform_note"] and "sform used" in vol.metadata["xform_note"]
    assert vol.voxel_to_world([0, 0, 0])[2] == pytest.approx(0.0)  # sform's origin
    assert any("disagree" in r.getMessage() for r in caplog.records)
    assert all(SECRET not in r.getMessage() for r in caplog.records)


def test_agreeing_xforms_leave_no_note(folder):
    vol = load_nifti(_save(folder / "ok.nii", np.zeros((3, 3, 3), np.float32), np.eye(4)))
    assert "xform_note" not in vol.metadata


def test_missing_xforms_are_flagged(folder):
    img = nib.Nifti1Image(np.zeros((3, 3, 3), np.float32), None)
    img.set_sform(None, code=0)
    img.set_qform(None, code=0)
    nib.save(img, str(folder / "bare.nii"))
    assert "orientation assumed" in load_nifti(folder / "bare.nii").metadata["xform_note"]


def test_truncated_gz_names_the_file_only(folder):
    path = _save(folder / "scan.nii.gz", np.ones((20, 20, 20), np.float32), np.eye(4))
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(UnreadableFileError) as excinfo:
        load_nifti(path)
    text = str(excinfo.value)
    assert "'scan.nii.gz'" in text and "truncated" in text
    assert SECRET not in text and str(folder) not in text


def test_gz_that_is_not_gzip_and_empty_file(folder):
    (folder / "fake.nii.gz").write_bytes(b"not gzip at all" * 30)
    with pytest.raises(UnreadableFileError, match="'fake.nii.gz'"):
        load_nifti(folder / "fake.nii.gz")
    (folder / "empty.nii").write_bytes(b"")
    with pytest.raises(UnreadableFileError, match="empty"):
        load_nifti(folder / "empty.nii")


def test_real_4d_nibabel_file_is_refused(folder):
    with pytest.raises(UnreadableFileError) as excinfo:
        load_nifti(NIB_DATA / "example4d.nii.gz")
    assert "4 dimensions" in str(excinfo.value) and "Split" in str(excinfo.value)


def test_singleton_fourth_axis_is_accepted(folder):
    data = np.arange(24, dtype=np.float32).reshape(2, 3, 4, 1)
    vol = load_nifti(_save(folder / "t1.nii", data, np.eye(4)))
    assert vol.shape == (4, 3, 2)


def test_real_nibabel_anatomical_reads_in_the_convention():
    vol = load_nifti(NIB_DATA / "anatomical.nii")
    img = nib.load(str(NIB_DATA / "anatomical.nii"))
    assert sorted(vol.shape) == sorted(img.shape[:3])
    # the world position of the first stored voxel is found in ours at some corner
    world0 = (np.diag([-1, -1, 1, 1]) @ img.affine @ [0, 0, 0, 1])[:3]
    corners = [vol.voxel_to_world([z, y, x]) for z in (0, vol.shape[0] - 1)
               for y in (0, vol.shape[1] - 1) for x in (0, vol.shape[2] - 1)]
    assert min(np.linalg.norm(np.asarray(corners) - world0, axis=1)) < 1e-3


def test_fractional_mask_is_refused(folder):
    _save(folder / "prob_mask.nii", np.full((3, 3, 3), 0.4, np.float32), np.eye(4))
    with pytest.raises(Exception, match="fractional"):
        load_nifti_mask(folder / "prob_mask.nii")


def test_gzip_member_cut_mid_header(folder):
    path = folder / "cut.nii.gz"
    path.write_bytes(gzip.compress(b"\x5c\x01\x00\x00" + bytes(100)))
    with pytest.raises(UnreadableFileError, match="'cut.nii.gz'"):
        load_nifti(path)


def test_memory_limit_is_checked_from_the_header(folder):
    from data_tools.errors import DataError

    path = _save(folder / "big.nii.gz", np.zeros((10, 20, 30), np.float32), np.eye(4))
    with pytest.raises(DataError, match=r"\(10, 20, 30\)") as excinfo:
        load_nifti(path, max_bytes=1000)
    assert "'big.nii.gz'" in str(excinfo.value) and "--max-volume-gb" in str(excinfo.value)
    assert load_nifti(path, max_bytes=10 * 20 * 30 * 4).shape == (30, 20, 10)


# -- reading from bytes handed in (read=): what a batch does to read each input file once ----

def _both(loader, path, **kwargs):
    """``loader`` on the file, and on its bytes given through ``read=`` (each asked once)."""
    asked = []

    def read(p):
        asked.append(p)
        return p.read_bytes()

    from_file = loader(path, **kwargs)
    from_bytes = loader(path, read=read, **kwargs)
    assert asked == [path]
    return from_file, from_bytes


@pytest.mark.parametrize("name", ["ct.nii", "ct.nii.gz"])
@pytest.mark.parametrize("codes", ["RAS", "PIL"])
def test_bytes_handed_in_read_as_the_file_does(folder, name, codes):
    rng = np.random.default_rng(2)
    data = rng.normal(0, 300, size=(4, 5, 6)).astype(np.float32)
    ornt = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt("RAS"),
                                           nib.orientations.axcodes2ornt(tuple(codes)))
    moved = nib.Nifti1Image(data, np.diag([0.9, 1.1, 2.0, 1.0])).as_reoriented(ornt)
    img = _ras_image(np.asanyarray(moved.dataobj), moved.affine)
    img.set_data_dtype(np.int16)  # stored scaled (scl_slope / scl_inter), unscaled on reading
    path = folder / name
    nib.save(img, str(path))
    mask = _save(folder / f"mask_{name}", (np.asanyarray(moved.dataobj) > 0).astype(np.int16),
                 moved.affine)
    for loader, p in ((load_nifti, path), (load_nifti_mask, mask)):
        a, b = _both(loader, p)
        assert a.array.dtype == b.array.dtype and type(a) is type(b)
        np.testing.assert_array_equal(a.array, b.array)
        np.testing.assert_array_equal(a.affine, b.affine)
        assert dict(a.metadata) == dict(b.metadata)
    assert nib.load(str(path)).dataobj.slope != 1.0  # really stored scaled


def test_nifti2_and_a_reader_that_declines(folder):
    data = np.arange(60, dtype=np.float32).reshape(3, 4, 5)
    path = folder / "two.nii.gz"
    nib.save(nib.Nifti2Image(data, np.eye(4)), str(path))
    a, b = _both(load_nifti, path)
    np.testing.assert_array_equal(a.array, b.array)
    # None from read: the file is opened as usual
    np.testing.assert_array_equal(load_nifti(path, read=lambda p: None).array, a.array)


def _error(loader, path, **kwargs) -> tuple[type, str]:
    with pytest.raises(Exception) as excinfo:
        loader(path, **kwargs)
    return type(excinfo.value), str(excinfo.value)


def test_bad_bytes_handed_in_fail_as_the_file_does(folder):
    ok = _save(folder / "scan.nii.gz", np.ones((20, 20, 20), np.float32), np.eye(4))
    raw = ok.read_bytes()
    files = {"half.nii.gz": raw[: len(raw) // 2], "fake.nii.gz": b"not gzip at all" * 30,
             "empty.nii": b"", "cut.nii.gz": gzip.compress(b"\x5c\x01\x00\x00" + bytes(100)),
             "garbage.nii.gz": b"\x1f\x8b\x08garbage", "text.nii": b"hello" * 100}
    for name, content in files.items():
        (folder / name).write_bytes(content)
        from_file = _error(load_nifti, folder / name)
        assert from_file[0] is UnreadableFileError, name
        assert _error(load_nifti, folder / name, read=lambda p: p.read_bytes()) == from_file, name
    # the size limit is still checked from the header
    assert _error(load_nifti, ok, max_bytes=1000, read=lambda p: p.read_bytes()) == \
        _error(load_nifti, ok, max_bytes=1000)


def test_mask_labels_beyond_int16_are_refused_not_wrapped(folder):
    # labels are stored as int16; 40000 would wrap to -25536 and pass as a silent negative
    arr = np.zeros((3, 3, 3), np.int32)
    arr[1, 1, 1] = 40000
    _save(folder / "big_labels.nii", arr, np.eye(4))
    with pytest.raises(MaskError, match="maximum 40000"):
        load_nifti_mask(folder / "big_labels.nii")
    arr[1, 1, 1] = 32767
    _save(folder / "ok_labels.nii", arr, np.eye(4))
    mask = load_nifti_mask(folder / "ok_labels.nii")
    assert mask.array.dtype == np.int16 and mask.array.max() == 32767
