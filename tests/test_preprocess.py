"""ROI extraction and the inverse map back to the scan grid."""

import numpy as np
import pytest

from data_tools.volume import Mask, Volume, affine_from_spacing
from discovery.model.rois import extract_roi, nodule_sites, normalize_hu, roi_to_scan


def _scan(spacing=(2.0, 0.7, 0.7), shape=(40, 120, 120)):
    z, y, x = np.meshgrid(*[np.arange(s) * sp for s, sp in zip(shape, spacing)], indexing="ij")
    hu = (z + 2 * y + 3 * x).astype(np.float32)  # linear in mm: trilinear resampling is exact
    return Volume(hu, affine_from_spacing(spacing, (-40.0, -40.0, -20.0)))


def test_roi_samples_the_scan_in_mm():
    vol = _scan()
    center = (20.0, 60.0, 60.0)
    roi = extract_roi(vol, center, size_vox=(8, 8, 8), spacing_mm=(1.5, 1.5, 1.5))
    assert roi.hu.shape == (8, 8, 8)
    # a linear ramp: ROI voxel u lies at centre + (u - 3.5) * 1.5 mm along each axis
    u = np.arange(8)
    mm = lambda c, sp: c * sp + (u - 3.5) * 1.5  # noqa: E731
    expect = mm(20, 2.0)[:, None, None] + 2 * mm(60, 0.7)[None, :, None] + 3 * mm(60, 0.7)[None, None, :]
    np.testing.assert_allclose(roi.hu, expect, atol=1e-3)
    # the ROI affine maps its centre voxel to the same patient point as the scan centre
    np.testing.assert_allclose(roi.affine[:3, :3] @ [3.5, 3.5, 3.5] + roi.affine[:3, 3],
                               vol.voxel_to_world(center), atol=1e-9)
    np.testing.assert_allclose(np.linalg.norm(roi.affine[:3, :3], axis=0), 1.5)


def test_outside_the_scan_is_air():
    roi = extract_roi(_scan(), (0.0, 0.0, 0.0), size_vox=(6, 6, 6), spacing_mm=(2, 2, 2))
    assert roi.hu[0, 0, 0] == -1000.0


def test_roi_to_scan_round_trip_on_linear_map():
    vol = _scan()
    roi = extract_roi(vol, (20.0, 60.0, 60.0), size_vox=(16, 16, 16), spacing_mm=(1.5, 1.5, 1.5))
    box, back = roi_to_scan(roi.hu, roi, vol.shape)
    # inside the ROI's extent the resampled-then-returned map equals the scan (linear field)
    lo = np.array([s.start for s in box])
    pts = np.argwhere(back != 0)
    inner = [(p + lo) for p in pts
             if np.all((p + lo - roi.offset_zyx) / roi.scale_zyx >= 0)
             and np.all((p + lo - roi.offset_zyx) / roi.scale_zyx <= 15)]
    assert len(inner) > 100
    for q in inner[:: max(1, len(inner) // 50)]:
        assert back[tuple(q - lo)] == pytest.approx(vol.array[tuple(q)], abs=1e-2)


def test_nodule_sites_and_volume():
    arr = np.zeros((10, 20, 20), np.int16)
    arr[2:4, 5:7, 5:7] = 1          # 8 voxels
    arr[6, 10:13, 10] = 3           # 3 voxels, label 3 (labels need not be contiguous)
    sites = nodule_sites(Mask(arr, affine_from_spacing((2.0, 0.5, 0.5))))
    assert [s.label for s in sites] == [1, 3]
    assert sites[0].center_zyx == pytest.approx((2.5, 5.5, 5.5))
    assert sites[0].volume_mm3 == pytest.approx(8 * 0.5) and sites[1].n_voxels == 3
    assert nodule_sites(Mask(np.zeros((3, 3, 3), np.int16), np.eye(4))) == []


def test_normalize_hu_clips_and_rejects_bad_window():
    out = normalize_hu(np.array([-2000.0, -1000.0, -300.0, 400.0, 3000.0]), (-1000, 400))
    np.testing.assert_allclose(out, [0, 0, 0.5, 1, 1])
    with pytest.raises(ValueError):
        normalize_hu(np.zeros(3), (10, 10))
