"""Real scanners' files against independent oracles (issue 20), read in place from
``../shared/realdata`` (tests/_realdata.py; required in CI)."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

from _realdata import realdata


def _sitk_array(path):
    import SimpleITK as sitk

    image = sitk.ReadImage(str(path))
    return sitk.GetArrayFromImage(image), image


def test_real_lung_field_against_the_chest_imaging_platform_mask():
    """The HU-based lung field of the region descriptors against the real whole-lung mask of
    the same chest CT (64 x 64 x 79 at 4.2 x 4.2 x 4.0 mm), read through the DICOM loader and
    checked voxel for voxel against the NRRD export SimpleITK reads."""
    from data_tools.dicom import load_dicom_series
    from discovery.regions.descriptors import lung_mask

    root = realdata("chest-imaging-platform")
    volume = load_dicom_series(root / "ct-64Dicom")
    nrrd, image = _sitk_array(root / "ct-64.nrrd")
    np.testing.assert_array_equal(volume.array, nrrd.astype(np.float32))   # same HU, same grid
    np.testing.assert_allclose(volume.voxel_to_world((0, 0, 0)),
                               image.TransformIndexToPhysicalPoint((0, 0, 0)), atol=1e-3)
    truth = _sitk_array(root / "wholeLung-64.nrrd")[0] > 0
    field = lung_mask(volume.array, spacing_mm=volume.spacing_mm)
    dice = 2.0 * (field & truth).sum() / (field.sum() + truth.sum())
    assert dice >= 0.975, dice          # measured 0.980 (docs/guide/inputs.md, real files)


@pytest.mark.parametrize("name", ["CT1", "CT2"])
def test_nema_wg04_every_transfer_syntax_decodes_to_the_reference(name):
    """NEMA WG04 CT1 (GE) and CT2 (Toshiba) in every transfer syntax: the lossless ones equal
    the uncompressed REF bit for bit; the lossy ones stay within their stated tolerance."""
    root = realdata("nema-wg04")
    ref = pydicom.dcmread(next((root / "REF").glob(f"{name}*"))).pixel_array.astype(np.int32)
    seen = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and p.name != "REF"):
        files = sorted(folder.glob(f"{name}*"))
        if not files:
            continue
        ds = pydicom.dcmread(files[0])
        diff = np.abs(ds.pixel_array.astype(np.int32) - ref)
        seen[folder.name] = int(diff.max())
    lossless = {k: v for k, v in seen.items() if k in ("J2KR", "JLSL", "JPLL", "RLE")}
    assert set(lossless) == {"J2KR", "JLSL", "JPLL", "RLE"} and set(lossless.values()) == {0}, seen
    assert 0 < seen["JLSN"] <= 4, seen              # near-lossless JPEG-LS: NEAR = 4 here
    # lossy JPEG 2000: measured RMSE 38 (CT1) and 30 (CT2) stored units, PSNR 41 dB over the
    # image's range; the documented tolerance is PSNR >= 40 dB
    lossy = pydicom.dcmread(next((root / "J2KI").glob(f"{name}*"))).pixel_array.astype(float)
    rmse = float(np.sqrt(((lossy - ref) ** 2).mean()))
    assert 0 < rmse and 20 * np.log10(float(ref.max() - ref.min()) / rmse) >= 40.0, rmse


def _case_with(tmp_path, *files, series="ct-3slice"):
    """A case folder of dcmqi's three real CT slices plus *files* (copied to a temporary
    folder, never into the repository)."""
    import shutil

    root = realdata("dcmqi")
    case = tmp_path / "case"
    shutil.copytree(root / series, case)
    for f in files:
        shutil.copy(root / f, case)
    return case


def test_dcmqi_liver_seg_equals_dcmqis_own_label_map_voxel_for_voxel(tmp_path):
    from data_tools.cases import read_case
    from data_tools.layouts import discover_cases

    loaded = read_case(discover_cases(_case_with(tmp_path, "liver.dcm"))[0])
    truth, image = _sitk_array(realdata("dcmqi") / "liver_seg.nrrd")
    assert loaded.mask_source == "seg" and loaded.mask.array.shape == truth.shape
    np.testing.assert_allclose(loaded.volume.voxel_to_world((0, 0, 0)),
                               image.TransformIndexToPhysicalPoint((0, 0, 0)), atol=1e-3)
    np.testing.assert_array_equal(loaded.mask.array > 0, truth > 0)       # 107,098 voxels
    assert int((truth > 0).sum()) == 107098


def test_dcmqi_overlapping_segments_give_one_label_each_and_a_warning(tmp_path, caplog):
    """partial_overlaps.dcm: five segments, 3,134 voxels in more than one; each segment one
    label, the later segment winning where they overlap, with a warning that says so."""
    import logging

    from data_tools.cases import read_case
    from data_tools.layouts import discover_cases

    with caplog.at_level(logging.WARNING):
        loaded = read_case(discover_cases(_case_with(tmp_path, "partial_overlaps.dcm"))[0])
    assert sorted(np.unique(loaded.mask.array).tolist()) == [0, 1, 2, 3, 4, 5]
    assert [n["segment_label"] for n in loaded.nodules] == ["GREEN", "ORANGE", "PURPLE",
                                                            "LIGHT_BLUE", "DARK_BLUE"]
    assert "3134 voxel(s) belong to more than one selected label" in caplog.text
