"""Off-mask region extraction on a constructed scene (answers worked out by hand)."""

import math

import numpy as np
import pandas as pd
import pytest

from discovery.regions.offmask import (
    REGION_COLUMNS,
    OffMaskRegion,
    OffMaskSettings,
    extract_offmask_regions,
    regions_table,
)

SPACING = (2.0, 1.0, 1.0)  # voxel = 2 mm³
CENTER = (9.5, 14.5, 14.5)
# Total attribution of the scene below:
#   mask 8 x 10 = 80, A 8 x 8 = 64, B 18 x 6 = 108, margin blob 8 x 9 = 72,
#   single voxel 7, faint blob 8 x 3 = 24  ->  355
TOTAL = 355.0


def _scene():
    shape = (20, 30, 30)
    attr = np.zeros(shape)
    mask = np.zeros(shape, bool)
    hu = np.full(shape, -800.0)

    mask[9:11, 14:16, 14:16] = True  # centre (9.5, 14.5, 14.5)
    attr[mask] = 10.0  # on-mask blob, peak 10 -> threshold 5

    attr[2:4, 2:4, 2:4] = 8.0  # blob A: 8 voxels = 16 mm³, bright bead
    hu[2:4, 2:4, 2:4] = 2400.0

    attr[15:17, 24:27, 24:27] = 6.0  # blob B: 18 voxels = 36 mm³, soft tissue
    hu[15, 24:27, 24:27] = 40.0
    hu[16, 24:27, 24:27] = 60.0  # mean 50, population std 10, max 60

    attr[9:11, 14:16, 18:20] = 9.0  # 3-4 mm from the mask in x: inside the 5 mm margin
    attr[18, 5, 25] = 7.0  # 1 voxel = 2 mm³ < 15 mm³
    attr[2:4, 25:27, 2:4] = 3.0  # below 0.5 x peak
    return attr, mask, hu


def _extract(attr, mask, hu, **kw):
    return extract_offmask_regions(attr, mask, hu, spacing_mm=SPACING, nodule_center_zyx=CENTER, **kw)


def test_off_mask_blobs_found_with_hand_computed_descriptors():
    labels, regions = _extract(*_scene())
    assert [r.region_index for r in regions] == [1, 2]
    b, a = regions  # B carries more attribution (108 > 64) so comes first

    assert (b.n_voxels, b.volume_mm3) == (18, 36.0)
    assert b.mass_share == pytest.approx(108 / TOTAL)
    assert b.peak_value == 6.0
    assert b.centroid_zyx == pytest.approx((15.5, 25.0, 25.0))
    # (15.5 - 9.5) * 2 = 12, (25 - 14.5) * 1 = 10.5, 10.5
    assert b.offset_mm == pytest.approx((12.0, 10.5, 10.5))
    assert b.offset_distance_mm == pytest.approx(math.sqrt(144 + 2 * 10.5**2))
    # Nearest pair (15,24,24)-(10,15,15): (5 * 2, 9, 9) mm
    assert b.distance_to_mask_mm == pytest.approx(math.sqrt(100 + 81 + 81))
    assert (b.mean_hu, b.max_hu, b.std_hu) == pytest.approx((50.0, 60.0, 10.0))

    assert (a.n_voxels, a.volume_mm3) == (8, 16.0)
    assert a.mass_share == pytest.approx(64 / TOTAL)
    assert a.centroid_zyx == pytest.approx((2.5, 2.5, 2.5))
    # (2.5 - 9.5) * 2 = -14, (2.5 - 14.5) = -12, -12 -> sqrt(196 + 144 + 144) = 22
    assert a.offset_mm == pytest.approx((-14.0, -12.0, -12.0))
    assert a.offset_distance_mm == pytest.approx(22.0)
    # Nearest pair (3,3,3)-(9,14,14): (6 * 2, 11, 11) mm
    assert a.distance_to_mask_mm == pytest.approx(math.sqrt(144 + 121 + 121))
    assert (a.mean_hu, a.max_hu, a.std_hu) == pytest.approx((2400.0, 2400.0, 0.0))

    assert labels.dtype == np.int32 and labels.shape == (20, 30, 30)
    assert np.count_nonzero(labels == 1) == 18 and np.all(labels[15:17, 24:27, 24:27] == 1)
    assert np.count_nonzero(labels == 2) == 8 and np.all(labels[2:4, 2:4, 2:4] == 2)
    assert set(np.unique(labels)) == {0, 1, 2}


def test_margin_min_volume_and_threshold_exclusions():
    attr, mask, hu = _scene()
    labels, _ = _extract(attr, mask, hu)
    assert not labels[9:11, 14:16, 18:20].any()  # within the margin
    assert labels[18, 5, 25] == 0  # too small
    assert not labels[2:4, 25:27, 2:4].any()  # below threshold
    assert not labels[mask].any()

    # A 2 mm margin lets the near blob through (3 mm away); min volume 0 keeps the voxel.
    _, regions = _extract(attr, mask, hu, settings=OffMaskSettings(margin_mm=2.0, min_volume_mm3=0.0))
    assert [r.n_voxels for r in regions] == [18, 8, 8, 1]
    assert [r.mass_share * TOTAL for r in regions] == pytest.approx([108, 72, 64, 7])
    assert regions[1].distance_to_mask_mm == pytest.approx(3.0)


def test_ordering_follows_mass_share():
    attr, mask, hu = _scene()
    attr[16, 24:27, 24:27] = 0.0  # B shrinks to 9 voxels (18 mm³, mass 54 < A's 64)
    _, regions = _extract(attr, mask, hu)
    assert [r.n_voxels for r in regions] == [8, 9]
    assert [r.mass_share * (TOTAL - 54) for r in regions] == pytest.approx([64, 54])
    shares = [r.mass_share for r in regions]
    assert shares == sorted(shares, reverse=True)


def test_empty_mask_counts_every_strong_component():
    attr, mask, hu = _scene()
    labels, regions = _extract(attr, np.zeros_like(mask), hu)
    # Nodule blob (80), margin blob (72: 2 voxels apart in x, so separate), A, B; not the
    # single voxel (too small) nor the faint blob.
    assert [round(r.mass_share * TOTAL) for r in regions] == [108, 80, 72, 64]
    assert all(math.isnan(r.distance_to_mask_mm) for r in regions)
    assert labels.max() == 4


def test_zero_attribution_gives_no_regions():
    _, mask, hu = _scene()
    labels, regions = _extract(np.zeros(mask.shape), mask, hu)
    assert regions == [] and labels.dtype == np.int32 and not labels.any()


def test_connectivity():
    attr = np.zeros((3, 3, 3))
    attr[0, 0, 0] = attr[1, 1, 1] = 1.0  # corner neighbours only
    mask = np.zeros(attr.shape, bool)
    hu = np.zeros(attr.shape)
    kw = dict(spacing_mm=(1.0, 1.0, 1.0), nodule_center_zyx=(1, 1, 1))
    s26 = OffMaskSettings(min_volume_mm3=0.0, connectivity=26)
    s6 = OffMaskSettings(min_volume_mm3=0.0, connectivity=6)
    assert len(extract_offmask_regions(attr, mask, hu, settings=s26, **kw)[1]) == 1
    assert len(extract_offmask_regions(attr, mask, hu, settings=s6, **kw)[1]) == 2


def test_weighted_centroid():
    attr = np.zeros((1, 1, 10))
    attr[0, 0, 6] = 1.0
    attr[0, 0, 7] = 3.0  # centroid x = (6 * 1 + 7 * 3) / 4 = 6.75
    mask = np.zeros(attr.shape, bool)
    mask[0, 0, 0] = True
    _, (r,) = extract_offmask_regions(
        attr, mask, np.zeros(attr.shape), spacing_mm=(1.0, 1.0, 2.0), nodule_center_zyx=(0, 0, 0),
        settings=OffMaskSettings(rel_threshold=0.1, min_volume_mm3=0.0),
    )
    assert r.centroid_zyx == pytest.approx((0.0, 0.0, 6.75))
    assert r.offset_mm == pytest.approx((0.0, 0.0, 13.5))
    assert r.distance_to_mask_mm == pytest.approx(12.0)


@pytest.mark.parametrize(
    "kw",
    [
        dict(margin_mm=-1.0),
        dict(rel_threshold=0.0),
        dict(rel_threshold=1.5),
        dict(min_volume_mm3=float("nan")),
        dict(connectivity=8),
    ],
)
def test_bad_settings_raise(kw):
    with pytest.raises(ValueError):
        OffMaskSettings(**kw)


def test_bad_inputs_raise():
    attr, mask, hu = _scene()
    with pytest.raises(ValueError, match="hu"):
        _extract(attr, mask, hu[:, :, :-1])
    with pytest.raises(ValueError, match="ReLU"):
        _extract(attr - 1.0, mask, hu)
    with pytest.raises(ValueError, match="nodule_center_zyx"):
        extract_offmask_regions(attr, mask, hu, spacing_mm=SPACING, nodule_center_zyx=(1, 2))
    bad_hu = hu.copy()
    bad_hu[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="finite"):
        _extract(attr, mask, bad_hu)


def test_regions_table_flattens_fields():
    _, regions = _extract(*_scene())
    df = regions_table(regions, case_id="case-ab12", nodule_id="n1")
    assert list(df.columns) == REGION_COLUMNS
    assert len(df) == 2
    assert df["case_id"].tolist() == ["case-ab12"] * 2
    assert df["region_index"].tolist() == [1, 2]
    row = df.iloc[1]
    assert (row["offset_z_mm"], row["offset_y_mm"], row["offset_x_mm"]) == pytest.approx((-14, -12, -12))
    assert (row["centroid_z"], row["centroid_y"], row["centroid_x"]) == pytest.approx((2.5, 2.5, 2.5))
    assert row["volume_mm3"] == 16.0 and row["mean_hu"] == 2400.0


def test_regions_table_empty():
    df = regions_table([], case_id="c", nodule_id="n1")
    assert list(df.columns) == REGION_COLUMNS and len(df) == 0
    assert df["volume_mm3"].dtype == np.float64 and df["region_index"].dtype == np.int64
    with pytest.raises(ValueError):
        regions_table([{"not": "a region"}], case_id="c", nodule_id="n1")
    assert isinstance(pd.concat([df, regions_table(_extract(*_scene())[1], case_id="c", nodule_id=1)]), pd.DataFrame)


def test_region_is_frozen():
    _, regions = _extract(*_scene())
    assert isinstance(regions[0], OffMaskRegion)
    with pytest.raises(AttributeError):
        regions[0].mass_share = 1.0  # type: ignore[misc]
