"""MetaImage reading (geometry, failure modes) and LUNA16 annotation masks."""

from __future__ import annotations

import logging
import math

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from data_tools.errors import DataError, UnreadableFileError
from data_tools.metaimage import (
    estimate_bytes,
    is_metaimage,
    load_metaimage,
    luna_mask,
    metaimage_data_files,
    read_luna_annotations,
    read_luna_candidates,
)

SHAPE = (10, 12, 14)  # (z, y, x)
SPACING = (0.7, 0.9, 2.5)  # ITK order (x, y, z)
ORIGIN = (-100.0, -120.0, -50.0)
# flipped and permuted: ITK x-index -> +P, y-index -> +L, z-index -> -S
PERMUTED = (0, 1, 0, 1, 0, 0, 0, 0, -1)
UID = "1.3.6.1.4.1.14519.5.2.1.6279.6001.999"


def _rotation(deg_z: float, deg_x: float) -> tuple[float, ...]:
    a, b = math.radians(deg_z), math.radians(deg_x)
    rz = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, math.cos(b), -math.sin(b)], [0, math.sin(b), math.cos(b)]])
    return tuple((rz @ rx).ravel().tolist())


OBLIQUE = _rotation(30.0, -20.0)


def _hu(shape=SHAPE) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(-1024, 2000, size=shape).astype(np.int16)


def _image(arr, *, spacing=SPACING, origin=ORIGIN, direction=None):
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    if direction is not None:
        img.SetDirection(direction)
    return img


def _write(folder, img, name="scan.mhd"):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    sitk.WriteImage(img, str(path), useCompression=False)
    return path


def _voxels(shape):
    return [(0, 0, 0), (shape[0] - 1, shape[1] - 1, shape[2] - 1), (3, 5, 7), (9, 0, 2), (1, 11, 0)]


# -- reading --------------------------------------------------------------------------------

def test_is_metaimage():
    assert is_metaimage("a/b/scan.mhd") and is_metaimage("X.MHA")
    assert not is_metaimage("scan.raw") and not is_metaimage("scan.nii.gz")


@pytest.mark.parametrize("direction", [None, PERMUTED, OBLIQUE], ids=["identity", "permuted", "oblique"])
def test_load_array_and_affine_match_itk(tmp_path, direction):
    arr = _hu()
    img = _image(arr, direction=direction)
    vol = load_metaimage(_write(tmp_path, img))
    assert vol.array.dtype == np.float32 and vol.shape == SHAPE
    np.testing.assert_array_equal(vol.array, arr.astype(np.float32))
    assert dict(vol.metadata) == {"format": "metaimage", "modality": "CT"}
    for k, j, i in _voxels(SHAPE):
        expected = img.TransformIndexToPhysicalPoint((i, j, k))
        np.testing.assert_allclose(vol.voxel_to_world([k, j, i]), expected, atol=1e-6)
        np.testing.assert_allclose(vol.world_to_voxel(expected), [k, j, i], atol=1e-6)
    np.testing.assert_allclose(vol.spacing_mm, SPACING[::-1], atol=1e-9)


def test_permuted_direction_affine_by_hand(tmp_path):
    # ITK i (our x, column 2) -> +P * 0.7; j (our y, column 1) -> +L * 0.9; k (our z) -> -S * 2.5
    vol = load_metaimage(_write(tmp_path, _image(_hu(), direction=PERMUTED)))
    expected = np.array([[0, 0.9, 0, ORIGIN[0]], [0, 0, 0.7, ORIGIN[1]],
                         [-2.5, 0, 0, ORIGIN[2]], [0, 0, 0, 1]])
    np.testing.assert_allclose(vol.affine, expected, atol=1e-9)


def test_single_file_mha(tmp_path):
    arr = _hu()
    img = _image(arr, direction=OBLIQUE)
    vol = load_metaimage(_write(tmp_path, img, "scan.mha"))
    np.testing.assert_array_equal(vol.array, arr)
    np.testing.assert_allclose(vol.voxel_to_world([2, 3, 4]), img.TransformIndexToPhysicalPoint((4, 3, 2)))


def test_missing_raw_names_data_file_not_folder(tmp_path):
    folder = tmp_path / "Doe_John_scans"
    path = _write(folder, _image(_hu()), "case7.mhd")
    (folder / "case7.raw").unlink()
    with pytest.raises(UnreadableFileError) as err:
        load_metaimage(path)
    msg = str(err.value)
    assert "'case7.raw'" in msg and "'case7.mhd'" in msg and "copied together" in msg
    assert "Doe_John" not in msg and tmp_path.name not in msg and "/" not in msg.replace(".mhd and", "")
    assert err.value.path == path


def test_truncated_raw(tmp_path):
    path = _write(tmp_path, _image(_hu()))
    raw = tmp_path / "scan.raw"
    full = raw.read_bytes()
    assert len(full) == math.prod(SHAPE) * 2
    raw.write_bytes(full[: len(full) // 2])
    with pytest.raises(UnreadableFileError, match=r"truncated.*1680 bytes.*needs 3360") as err:
        load_metaimage(path)
    assert tmp_path.name not in str(err.value)


def test_not_a_metaimage_header(tmp_path):
    path = tmp_path / "notes.mhd"
    path.write_text("patient notes\nnothing = here\n")
    with pytest.raises(UnreadableFileError, match="not a MetaImage header"):
        load_metaimage(path)
    empty = tmp_path / "empty.mhd"
    empty.write_bytes(b"")
    with pytest.raises(UnreadableFileError, match="empty"):
        load_metaimage(empty)
    with pytest.raises(UnreadableFileError, match="does not exist"):
        load_metaimage(tmp_path / "absent.mhd")


def test_four_d_image_refused(tmp_path):
    img = sitk.GetImageFromArray(np.zeros((2, 3, 4, 5), np.int16), isVector=False)
    assert img.GetDimension() == 4
    path = _write(tmp_path, img, "four.mhd")
    with pytest.raises(UnreadableFileError, match=r"'four.mhd' is 4-D \(DimSize 5 x 4 x 3 x 2\)"):
        load_metaimage(path)


def test_vector_image_refused(tmp_path):
    img = sitk.GetImageFromArray(np.zeros((3, 4, 5, 3), np.float32), isVector=True)
    assert img.GetNumberOfComponentsPerPixel() == 3
    path = _write(tmp_path, img, "rgb.mhd")
    with pytest.raises(UnreadableFileError, match="'rgb.mhd' has 3 components per voxel"):
        load_metaimage(path)


def test_other_reader_failure_reports_type_only(tmp_path):
    folder = tmp_path / "secret_folder"
    path = _write(folder, _image(_hu()))
    text = path.read_text().replace("MET_SHORT", "MET_BOGUS")
    path.write_text(text)
    with pytest.raises(UnreadableFileError) as err:
        load_metaimage(path)
    msg = str(err.value)
    assert "RuntimeError" in msg and "'scan.mhd'" in msg
    assert "secret_folder" not in msg and "ITK" not in msg


def test_estimate_bytes_and_max_bytes(tmp_path):
    path = _write(tmp_path, _image(_hu()))
    assert estimate_bytes(path) == math.prod(SHAPE) * 4 == 6720
    assert load_metaimage(path, max_bytes=6720).shape == SHAPE
    with pytest.raises(DataError) as err:
        load_metaimage(path, max_bytes=6719)
    msg = str(err.value)
    assert "0.00 GiB" in msg and "14 x 12 x 10" in msg and "max_bytes" in msg
    # the check happens before the data file is needed
    (tmp_path / "scan.raw").unlink()
    with pytest.raises(DataError, match="max_bytes"):
        load_metaimage(path, max_bytes=100)


# -- annotation CSVs ------------------------------------------------------------------------

def _csv(tmp_path, text, name="annotations.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_read_annotations_valid_with_line_index(tmp_path):
    path = _csv(tmp_path, "seriesuid,coordX,coordY,coordZ,diameter_mm\n"
                          f"{UID},-10.5,20,30,5.2\n\n1.2.3, 1, 2 ,3,4\n")
    df = read_luna_annotations(path)
    assert list(df.columns) == ["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"]
    assert df.index.tolist() == [2, 4]
    assert df["seriesuid"].tolist() == [UID, "1.2.3"]
    np.testing.assert_allclose(df[["coordX", "coordY", "coordZ", "diameter_mm"]].to_numpy(),
                               [[-10.5, 20, 30, 5.2], [1, 2, 3, 4]])


def test_read_annotations_errors(tmp_path):
    folder = tmp_path / "private_dir"
    folder.mkdir()
    missing = _csv(folder, "seriesuid,coordX,coordY,diameter_mm\n1,2,3,4\n")
    with pytest.raises(DataError, match=r"'annotations.csv' lacks column\(s\) coordZ") as err:
        read_luna_annotations(missing)
    assert "private_dir" not in str(err.value)
    text = ("seriesuid,coordX,coordY,coordZ,diameter_mm\n"
            "a,1,2,3,4\n" "b,1,x,3,4\n" "c,1,2,3,4\n" "d,1,,3,4\n")
    with pytest.raises(DataError, match=r"column coordY is not a finite number on line\(s\) 3, 5\. "):
        read_luna_annotations(_csv(folder, text))
    text = ("seriesuid,coordX,coordY,coordZ,diameter_mm\n"
            "a,1,2,3,0\n" "b,1,2,3,4\n" "c,1,2,3,-2\n")
    with pytest.raises(DataError, match=r"'annotations.csv': diameter_mm must be > 0 on line\(s\) 2, 4"):
        read_luna_annotations(_csv(folder, text))


def test_read_candidates(tmp_path):
    df = read_luna_candidates(_csv(tmp_path, "seriesuid,coordX,coordY,coordZ,class\na,1,2,3,0\nb,4,5,6,1\n",
                                   "candidates_V2.csv"))
    assert df["class"].tolist() == [0, 1] and df["class"].dtype.kind == "i"
    with pytest.raises(DataError, match=r"class must be 0 or 1 on line\(s\) 3"):
        read_luna_candidates(_csv(tmp_path, "seriesuid,coordX,coordY,coordZ,class\na,1,2,3,0\nb,4,5,6,2\n"))


# -- masks ----------------------------------------------------------------------------------

def _brute_ball(img, centre, radius):
    """Voxels (z, y, x) whose centre (via ITK) lies within *radius* mm of *centre*."""
    nx, ny, nz = img.GetSize()
    out = set()
    for k in range(nz):
        for j in range(ny):
            for i in range(nx):
                p = np.array(img.TransformIndexToPhysicalPoint((i, j, k)))
                if np.linalg.norm(p - centre) <= radius:
                    out.add((k, j, i))
    return out


def _annotations(rows):
    return pd.DataFrame(rows, columns=["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"])


@pytest.mark.parametrize("direction", [None, OBLIQUE], ids=["axis", "oblique"])
def test_ball_voxel_count_on_anisotropic_grid(tmp_path, direction):
    img = _image(_hu(), spacing=(0.7, 0.9, 2.0), direction=direction)
    vol = load_metaimage(_write(tmp_path, img))
    centre = np.array(img.TransformContinuousIndexToPhysicalPoint((6.3, 5.6, 4.2)))
    ann = _annotations([[UID, *centre, 6.0]])
    mask, info = luna_mask(vol, ann, series_uid=UID)
    expected = _brute_ball(img, centre, 3.0)
    got = {tuple(v) for v in np.argwhere(mask.array == 1).tolist()}
    assert got == expected and len(expected) > 20
    assert info == [{"label": 1, "diameter_mm": 6.0, "center_lps_mm": centre.tolist(),
                     "n_voxels": len(expected)}]
    np.testing.assert_array_equal(mask.affine, vol.affine)
    # scale enlarges the diameter
    _, info2 = luna_mask(vol, ann, series_uid=UID, scale=1.5)
    assert info2[0]["n_voxels"] == len(_brute_ball(img, centre, 4.5)) > len(expected)
    assert info2[0]["diameter_mm"] == 6.0


def test_known_voxel_with_permuted_direction(tmp_path):
    img = _image(_hu(), direction=PERMUTED)
    vol = load_metaimage(_write(tmp_path, img))
    k, j, i = 7, 3, 11
    centre = img.TransformIndexToPhysicalPoint((i, j, k))
    # sub-voxel nodule (0.3 mm) off the voxel centre: no voxel centre lies within 0.15 mm,
    # yet it still gets exactly the voxel holding its centre
    off = img.TransformContinuousIndexToPhysicalPoint((i + 0.3, j - 0.2, k + 0.1))
    assert not _brute_ball(img, np.array(off), 0.15)
    mask, info = luna_mask(vol, _annotations([[UID, *off, 0.3]]), series_uid=UID)
    assert mask.array[k, j, i] == 1 and int((mask.array > 0).sum()) == 1
    assert info[0]["n_voxels"] == 1
    # a 2 mm ball: 0.7 mm steps along ITK i reach +-1 voxel; 0.9 mm along j reach +-1; 2.5 mm none
    mask, info = luna_mask(vol, _annotations([[UID, *centre, 2.0]]), series_uid=UID)
    assert mask.array[k, j, i] == 1
    assert {tuple(v) for v in np.argwhere(mask.array == 1).tolist()} == _brute_ball(img, np.array(centre), 1.0)


def test_rows_filtered_outside_skipped_and_labels_in_row_order(tmp_path, caplog):
    img = _image(_hu())
    vol = load_metaimage(_write(tmp_path, img))
    a = img.TransformIndexToPhysicalPoint((3, 3, 2))
    b = img.TransformIndexToPhysicalPoint((10, 8, 7))
    outside = img.TransformIndexToPhysicalPoint((3, 3, 40))
    ann = _annotations([
        [UID, *b, 2.0],
        ["1.2.3.other", *a, 4.0],
        [UID, *outside, 3.0],
        [UID, *a, 2.0],
    ])
    ann.index = pd.Index([2, 3, 4, 5], name="line")
    with caplog.at_level(logging.INFO, logger="data_tools.metaimage"):
        mask, info = luna_mask(vol, ann, series_uid=UID)
    assert [d["label"] for d in info] == [1, 2]
    assert info[0]["center_lps_mm"] == list(b) and info[1]["center_lps_mm"] == list(a)
    assert mask.array[7, 8, 10] == 1 and mask.array[2, 3, 3] == 2
    assert mask.labels == [1, 2]
    for d in info:
        assert d["n_voxels"] == int((mask.array == d["label"]).sum())
    # the other series' 4 mm ball around a would have covered more than this series' 2 mm one
    assert info[1]["n_voxels"] == len(_brute_ball(img, np.array(a), 1.0))
    skipped = [r for r in caplog.records if "outside the volume" in r.getMessage()]
    assert len(skipped) == 1 and "row 4" in skipped[0].getMessage()
    assert all(UID not in r.getMessage() for r in caplog.records)
    assert UID not in repr(info)


def test_overlap_goes_to_nearer_centre(tmp_path):
    img = _image(_hu(), spacing=(1.0, 1.0, 1.0))
    vol = load_metaimage(_write(tmp_path, img))
    c1 = np.array(img.TransformContinuousIndexToPhysicalPoint((5.0, 6.0, 5.0)))
    c2 = np.array(img.TransformContinuousIndexToPhysicalPoint((8.2, 6.0, 5.0)))
    mask, info = luna_mask(vol, _annotations([[UID, *c1, 8.0], [UID, *c2, 6.0]]), series_uid=UID)
    ball1, ball2 = _brute_ball(img, c1, 4.0), _brute_ball(img, c2, 3.0)
    assert ball1 & ball2  # they do overlap
    for v in ball1 | ball2:
        p = np.array(img.TransformIndexToPhysicalPoint(v[::-1]))
        d1, d2 = np.linalg.norm(p - c1), np.linalg.norm(p - c2)
        want = 1 if (v in ball1 and (v not in ball2 or d1 <= d2)) else 2
        assert mask.array[v] == want
    assert int((mask.array > 0).sum()) == len(ball1 | ball2)
    assert info[0]["n_voxels"] + info[1]["n_voxels"] == len(ball1 | ball2)


def test_series_without_rows_gives_empty_mask(tmp_path, caplog):
    vol = load_metaimage(_write(tmp_path, _image(_hu())))
    ann = _annotations([["1.2.3.other", 0.0, 0.0, 0.0, 5.0]])
    with caplog.at_level(logging.INFO, logger="data_tools.metaimage"):
        mask, info = luna_mask(vol, ann, series_uid=UID)
    assert info == [] and mask.shape == SHAPE and not mask.array.any()
    assert mask.array.dtype == np.int16
    assert any("no annotation rows" in r.getMessage() for r in caplog.records)
    assert all(UID not in r.getMessage() for r in caplog.records)


def test_luna_mask_rejects_bad_inputs(tmp_path):
    vol = load_metaimage(_write(tmp_path, _image(_hu())))
    with pytest.raises(DataError, match="diameter_mm"):
        luna_mask(vol, pd.DataFrame({"seriesuid": [UID]}), series_uid=UID)
    with pytest.raises(DataError, match="scale"):
        luna_mask(vol, _annotations([[UID, 0.0, 0.0, 0.0, 5.0]]), series_uid=UID, scale=0)


def test_end_to_end_csv_to_mask(tmp_path):
    img = _image(_hu(), direction=OBLIQUE)
    vol = load_metaimage(_write(tmp_path, img))
    c = img.TransformIndexToPhysicalPoint((7, 6, 5))
    csv = _csv(tmp_path, "seriesuid,coordX,coordY,coordZ,diameter_mm\n"
                         f"{UID},{c[0]!r},{c[1]!r},{c[2]!r},4.0\n")
    mask, info = luna_mask(vol, read_luna_annotations(csv), series_uid=UID)
    assert mask.array[5, 6, 7] == 1
    assert info[0]["n_voxels"] == len(_brute_ball(img, np.array(c), 2.0))


# -- the data files a header names (what a batch hashes with it) -----------------------------

def test_data_files_named_by_the_header(tmp_path):
    mhd = _write(tmp_path / "a", _image(_hu()))
    assert metaimage_data_files(mhd) == [mhd.with_suffix(".raw")]
    mha = _write(tmp_path / "b", _image(_hu()), name="scan.mha")
    assert metaimage_data_files(mha) == []  # LOCAL: the data follow the header
    head = "ObjectType = Image\nNDims = 3\nDimSize = 2 2 2\nElementType = MET_SHORT\n"
    c = tmp_path / "c"
    c.mkdir()
    (c / "s.mhd").write_text(head + "ElementDataFile = LIST\nslice1.raw\n\nslice2.raw\n")
    assert metaimage_data_files(c / "s.mhd") == [c / "slice1.raw", c / "slice2.raw"]
    for stem, line in (("p", "ElementDataFile = p%03d.raw 1 2 1\n"), ("n", "")):
        (c / f"{stem}.mhd").write_text(head + line)
        (c / f"{stem}.001.raw").write_bytes(b"x")
        (c / f"{stem}.zraw").write_bytes(b"x")
        # a numbered pattern, or no ElementDataFile: the header's same-stem siblings
        assert metaimage_data_files(c / f"{stem}.mhd") == [c / f"{stem}.001.raw", c / f"{stem}.zraw"]
    assert metaimage_data_files(c / "missing.mhd") == []  # unreadable: siblings (none)
    (c / "abs.mhd").write_text(head + f"ElementDataFile = {tmp_path / 'a' / 'scan.raw'}\n")
    assert metaimage_data_files(c / "abs.mhd") == [tmp_path / "a" / "scan.raw"]
