"""ROI extraction and the inverse map back to the scan grid."""

import numpy as np
import pytest

from data_tools.volume import Mask, Volume, affine_from_spacing
from discovery.model.card import ModelCard
from discovery.model.rois import (
    DEFAULT_INPUT_WINDOWS,
    HU_WINDOWS,
    extract_roi,
    network_input,
    nodule_sites,
    normalize_hu,
    parse_windows,
    roi_input,
    roi_to_scan,
    window_channels,
)


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


def test_roi_of_an_int16_scan_equals_the_roi_of_its_float32_copy():
    rng = np.random.default_rng(0)
    hu = rng.integers(-1024, 3000, size=(30, 50, 50)).astype(np.int16)
    affine = affine_from_spacing((1.25, 0.7, 0.7), (0.0, 0.0, 0.0))
    a = extract_roi(Volume(hu, affine), (14.3, 20.6, 31.1), size_vox=(8, 8, 8),
                    spacing_mm=(1.5, 1.5, 1.5))
    b = extract_roi(Volume(hu.astype(np.float32), affine), (14.3, 20.6, 31.1),
                    size_vox=(8, 8, 8), spacing_mm=(1.5, 1.5, 1.5))
    assert a.hu.dtype == np.float32 and not np.array_equal(a.hu, np.round(a.hu))
    np.testing.assert_array_equal(a.hu, b.hu)


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


def test_window_channels_golden_values():
    """One channel per window, each (hu - low) / (high - low) clipped to [0, 1]."""
    hu = np.array([-1100.0, -1000.0, -860.0, -650.0, -300.0, -160.0, 40.0, 240.0, 1000.0, 3000.0])
    out = window_channels(hu, [HU_WINDOWS[k] for k in ("lung", "soft", "wide")])
    assert out.shape == (3, 10) and out.dtype == np.float32
    np.testing.assert_allclose(out[0], [0, 0, 0.2, 0.5, 1, 1, 1, 1, 1, 1], atol=1e-6)      # lung
    np.testing.assert_allclose(out[1], [0, 0, 0, 0, 0, 0, 0.5, 1, 1, 1], atol=1e-6)        # soft
    np.testing.assert_allclose(out[2], [0, 0, 0.035, 0.0875, 0.175, 0.21, 0.26, 0.31, 0.5, 1],
                               atol=1e-6)                                                   # wide
    # ground glass against aerated lung: 4000 / 700 = 5.7 times the contrast of the wide window
    assert (out[0, 3] - out[0, 2]) / (out[2, 3] - out[2, 2]) == pytest.approx(4000 / 700)
    # the default: lung, soft, dense -- three ranges side by side, each over the whole scale --
    # and lucent, the bottom of lung's: only what is darker than aerated lung below 1
    default = window_channels(hu, [HU_WINDOWS[k] for k in DEFAULT_INPUT_WINDOWS])
    np.testing.assert_allclose(default[2], [0, 0, 0, 0, 0, 0, 0, 0, 760 / 2760, 1], atol=1e-6)
    np.testing.assert_allclose(default[3], [0, 0, 1, 1, 1, 1, 1, 1, 1, 1], atol=1e-6)
    emphysema, lung = window_channels(np.array([-960.0, -860.0]), [HU_WINDOWS["lucent"]])[0]
    assert lung == 1 and emphysema == pytest.approx(0.4)
    with pytest.raises(ValueError, match="at least one"):
        window_channels(hu, [])
    with pytest.raises(ValueError, match="high > low"):
        window_channels(hu, [(0, 0)])


def test_network_input_of_a_single_window_card_is_the_old_normalisation():
    """Cards without input_windows (the demo model's) get exactly what they got before."""
    hu = np.random.default_rng(0).uniform(-1200, 3200, (8, 8, 8)).astype(np.float32)
    old = normalize_hu(hu, ModelCard().hu_window)[None]
    new = network_input(hu, ModelCard())
    assert new.shape == (1, 8, 8, 8) and new.dtype == old.dtype
    assert new.tobytes() == old.tobytes()
    two = ModelCard().with_windows([(-1000, -300), (-1000, 3000)])
    x = network_input(hu, two)
    assert x.shape == (2, 8, 8, 8) and x[1].tobytes() == old[0].tobytes()
    np.testing.assert_array_equal(x[0], normalize_hu(hu, (-1000, -300)))


def test_roi_input_has_one_channel_per_window():
    arr = np.full((20, 20, 20), -860.0, np.float32)
    arr[8:12, 8:12, 8:12] = -600.0
    vol = Volume(arr, affine_from_spacing((2.0, 2.0, 2.0)))
    card = ModelCard(roi_size_vox=(8, 8, 8), roi_spacing_mm=(2.0, 2.0, 2.0)).with_windows(
        parse_windows("lung,soft,wide"))
    x = roi_input(vol, (9.5, 9.5, 9.5), card)
    assert x.shape == (3, 8, 8, 8)
    assert x[0].max() == pytest.approx(400 / 700) and x[1].max() == 0.0  # ground glass: lung only
    assert x[2].max() == pytest.approx(0.1)


def test_parse_windows():
    assert parse_windows("lung,wide") == (HU_WINDOWS["lung"], HU_WINDOWS["wide"])
    assert parse_windows("-1000:-400, soft") == ((-1000.0, -400.0), HU_WINDOWS["soft"])
    for bad in ("", "lungs", "-400:-1000", "1:x", "5"):
        with pytest.raises(ValueError, match="neither"):
            parse_windows(bad)
