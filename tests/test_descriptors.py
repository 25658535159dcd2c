"""Region descriptors on a constructed chest (answers worked out by hand)."""

import math

import numpy as np
import pytest
from scipy import ndimage

from data_tools.volume import affine_from_spacing
from discovery.regions.descriptors import (
    RELATIONS,
    RegionAnatomy,
    classify_relation,
    describe_region,
    direction_words,
    elongation,
    lung_mask,
    offset_lps_mm,
    region_descriptors,
)

SPACING = (2.0, 1.5, 1.5)  # voxel = 4.5 mm³
SHAPE = (40, 64, 64)
# Lungs (boxes, -850 HU) inside a 0 HU body; outside air (-1000) touches the in-plane border.
RIGHT = (slice(4, 36), slice(10, 46), slice(8, 28))  # patient right = low x
LEFT = (slice(4, 36), slice(10, 46), slice(36, 56))
SMALL = (slice(16, 24), slice(50, 56), slice(26, 38))  # 576 voxels = 2.6 ml
TUBE = (slice(8, 32), 28, 46)  # 1-voxel vessel along z in the left lung, 24 voxels
NODULE_C, NODULE_R = (20, 28, 18), 3  # sphere in the right lung
ROD = (slice(8, 32), 20, 44)  # 2500 HU wire along z in the left lung


def _ball(shape, center, radius):
    zz, yy, xx = np.indices(shape)
    return sum((a - c) ** 2 for a, c in zip((zz, yy, xx), center)) <= radius**2


def _chest():
    rng = np.random.default_rng(0)
    hu = np.full(SHAPE, -1000.0)
    hu[:, 4:60, 2:62] = 0.0  # body
    hu[RIGHT] = -850.0
    hu[LEFT] = -850.0
    hu[SMALL] = -850.0
    hu += rng.normal(0.0, 20.0, SHAPE)  # noise well inside every threshold
    hu[TUBE] = 0.0
    hu[ROD] = 2500.0
    hu[_ball(SHAPE, NODULE_C, NODULE_R)] = 30.0
    lung = np.zeros(SHAPE, bool)
    lung[RIGHT] = True
    lung[LEFT] = True
    return hu, lung


# --------------------------------------------------------------------------- lung_mask


def test_lung_mask_finds_both_lungs_and_fills_them():
    hu, expected = _chest()
    got = lung_mask(hu, spacing_mm=SPACING)
    assert got.dtype == bool and got.shape == SHAPE
    np.testing.assert_array_equal(got, expected)  # boxes exactly: closing keeps a box
    assert got[TUBE].all() and got[NODULE_C] and got[ROD].all()  # filled
    assert not got[:, :4].any() and not got[:, :, :2].any()  # outside air
    assert not got[SMALL].any()  # 2.6 ml < 20 ml


def test_lung_mask_min_volume_and_soft_tissue():
    hu, _ = _chest()
    assert lung_mask(hu, spacing_mm=SPACING, min_volume_ml=1.0)[SMALL].all()
    assert not lung_mask(np.zeros((10, 20, 20)), spacing_mm=SPACING).any()
    body = np.full((10, 20, 20), -1000.0)
    body[:, 2:18, 2:18] = 20.0  # air around soft tissue only
    assert not lung_mask(body, spacing_mm=SPACING).any()


def test_lung_mask_closes_a_notch_in_physical_mm():
    hu = np.full((12, 40, 40), -1000.0)
    hu[:, 2:38, 2:38] = 0.0
    hu[1:11, 8:32, 8:32] = -850.0
    hu[1:11, 8:32, 19:20] = 0.0  # 1-voxel wall splitting the lung, open at both y ends
    got = lung_mask(hu, spacing_mm=(1.0, 1.0, 1.0), min_volume_ml=0.1)
    assert got[5, 20, 19]  # 1 mm slit closed by a 4 mm ball
    got0 = lung_mask(hu, spacing_mm=(1.0, 1.0, 1.0), min_volume_ml=0.1, fill_radius_mm=0)
    assert not got0[5, 20, 19]


def test_lung_mask_rejects_bad_input():
    with pytest.raises(ValueError, match="3-D"):
        lung_mask(np.zeros((4, 4)), spacing_mm=SPACING)
    with pytest.raises(ValueError, match="finite"):
        lung_mask(np.full((4, 4, 4), np.nan), spacing_mm=SPACING)
    with pytest.raises(ValueError, match="spacing_mm"):
        lung_mask(np.zeros((4, 4, 4)), spacing_mm=(1, 1))


# --------------------------------------------------------------------------- region


def _box(*slices):
    m = np.zeros(SHAPE, bool)
    m[slices] = True
    return m


def test_region_across_lung_wall_is_outside_lung():
    hu, lung = _chest()
    region = _box(slice(18, 22), slice(20, 24), slice(3, 11))  # x 3..7 body, 8..10 lung
    d = region_descriptors(region, hu, lung, spacing_mm=SPACING)
    assert isinstance(d, RegionAnatomy)
    assert d.lung_fraction == pytest.approx(3 / 8)
    assert d.lung_fraction == pytest.approx(lung[region].mean())
    assert d.pleura_distance_mm == pytest.approx(1.5)
    assert d.relation == "outside lung"


def test_region_inside_touching_wall_is_pleura_adjacent():
    hu, lung = _chest()
    region = _box(slice(18, 22), slice(20, 24), slice(8, 12))  # x = 8 is the lung's edge
    d = region_descriptors(region, hu, lung, spacing_mm=SPACING)
    assert d.lung_fraction == 1.0
    assert d.pleura_distance_mm == pytest.approx(1.5)  # one dx to x = 7
    assert d.relation == "pleura-adjacent"
    # Half in, half out: not "outside lung" (< 0.5 is strict), then pleura-adjacent.
    half = _box(slice(18, 22), slice(20, 24), slice(4, 12))
    d = region_descriptors(half, hu, lung, spacing_mm=SPACING)
    assert d.lung_fraction == 0.5 and d.relation == "pleura-adjacent"
    # Two slices deeper in z (dz = 2 mm): nearest boundary is the x wall at 3 dx = 4.5 mm.
    deeper = _box(slice(18, 22), slice(20, 24), slice(10, 14))
    d = region_descriptors(deeper, hu, lung, spacing_mm=SPACING)
    assert d.pleura_distance_mm == pytest.approx(4.5) and d.relation == "inside lung"


def test_region_around_tube_is_vessel_like():
    hu, lung = _chest()
    region = _box(slice(10, 30), slice(27, 30), slice(45, 48))  # 3x3 around the tube
    d = region_descriptors(region, hu, lung, spacing_mm=SPACING)
    assert d.dense_fraction == pytest.approx(1 / 9)
    # 20-voxel line along z: elongation L * dz / min(dy, dx) = 20 * 2 / 1.5
    assert d.dense_elongation == pytest.approx(20 * 2.0 / 1.5)
    assert d.pleura_distance_mm > 3.0
    assert d.relation == "vessel-like"


def test_bright_rod_and_round_nodule_are_inside_lung():
    hu, lung = _chest()
    rod = _box(slice(10, 30), slice(19, 22), slice(43, 46))
    d = region_descriptors(rod, hu, lung, spacing_mm=SPACING)
    assert d.dense_elongation > 3.0 and d.dense_fraction > 0.05
    assert d.hu_p90 == pytest.approx(2500.0)  # 1/9 of voxels at 2500, 20 >= 9 of them
    assert d.relation == "inside lung"
    ball = _ball(SHAPE, NODULE_C, NODULE_R + 2)
    d = region_descriptors(ball, hu, lung, spacing_mm=SPACING)
    assert d.dense_elongation < 3.0 and d.relation == "inside lung"


def test_hu_statistics_match_numpy():
    hu, lung = _chest()
    region = _box(slice(15, 25), slice(40, 50), slice(20, 30))
    h = hu[region]
    d = region_descriptors(region, hu, lung, spacing_mm=SPACING)
    assert d.hu_mean == pytest.approx(h.mean())
    assert d.hu_median == pytest.approx(np.median(h))
    assert d.hu_p90 == pytest.approx(np.percentile(h, 90))
    assert d.hu_max == pytest.approx(h.max())
    assert d.hu_std == pytest.approx(h.std())
    assert d.dense_fraction == pytest.approx((h >= -400).mean())


def test_region_edge_cases():
    hu, lung = _chest()
    body = _box(slice(18, 20), slice(50, 52), slice(4, 6))
    d = region_descriptors(body, hu, lung, spacing_mm=SPACING)
    assert d.lung_fraction == 0 and math.isnan(d.pleura_distance_mm)
    assert not math.isnan(d.dense_elongation) and d.relation == "outside lung"
    air = _box(slice(18, 22), slice(20, 24), slice(14, 18))
    d = region_descriptors(air, hu, lung, spacing_mm=SPACING)
    assert math.isnan(d.dense_elongation) and d.dense_fraction == 0
    crop = (slice(10, 20), slice(20, 30), slice(12, 22))  # wholly inside the right lung
    d = region_descriptors(np.ones((10, 10, 10), bool), hu[crop], lung[crop], spacing_mm=SPACING)
    assert d.pleura_distance_mm == math.inf and d.relation == "inside lung"


def test_region_rejects_empty_and_mismatched():
    hu, lung = _chest()
    with pytest.raises(ValueError, match="empty"):
        region_descriptors(np.zeros(SHAPE, bool), hu, lung, spacing_mm=SPACING)
    with pytest.raises(ValueError, match=r"same \(z, y, x\) shape.*\(40, 64, 63\)"):
        region_descriptors(np.ones(SHAPE, bool), hu[..., :63], lung, spacing_mm=SPACING)


def test_classify_relation_thresholds():
    assert classify_relation(0.49, 0.0, 1.0, 9.0, 0.0) == "outside lung"
    assert classify_relation(0.5, 3.0, 1.0, 9.0, 0.0) == "pleura-adjacent"
    assert classify_relation(1.0, 3.1, 0.05, 3.0, 299.0) == "vessel-like"
    assert classify_relation(1.0, 3.1, 0.04, 3.0, 0.0) == "inside lung"
    assert classify_relation(1.0, 3.1, 0.05, math.nan, 0.0) == "inside lung"
    assert classify_relation(1.0, 3.1, 0.05, 3.0, 300.0) == "inside lung"
    assert set(RELATIONS) == {"outside lung", "pleura-adjacent", "vessel-like", "inside lung"}


# --------------------------------------------------------------------------- elongation


def test_elongation_known_values():
    sphere = _ball((21, 21, 21), (10, 10, 10), 8)
    assert elongation(sphere, spacing_mm=(1, 1, 1)) == pytest.approx(1.0, abs=0.15)
    zz, yy, xx = np.indices((21, 41, 41))  # physical 8 mm ball on (2, 1, 1) voxels
    phys = ((zz - 10) * 2.0) ** 2 + (yy - 20) ** 2 + (xx - 20) ** 2 <= 64
    assert elongation(phys, spacing_mm=(2, 1, 1)) == pytest.approx(1.0, abs=0.15)
    line = np.zeros((3, 3, 20), bool)
    line[1, 1, :] = True
    # along x: variance (L² - 1)/12 + 1/12 = L²/12; across: 1/12  ->  sqrt(L²) = L
    assert elongation(line, spacing_mm=(1, 1, 1)) == pytest.approx(20.0)
    assert elongation(line, spacing_mm=(2, 1, 1)) == pytest.approx(20.0)
    assert elongation(line.transpose(2, 0, 1), spacing_mm=(2, 1, 1)) == pytest.approx(40.0)
    assert elongation(np.ones((5, 5, 5), bool), spacing_mm=(3, 1, 1)) == pytest.approx(3.0)
    assert elongation(np.ones((5, 5, 5), bool), spacing_mm=(1, 1, 1)) == pytest.approx(1.0)
    one = np.zeros((3, 3, 3), bool)
    one[1, 1, 1] = True
    assert elongation(one, spacing_mm=(3, 1, 1)) == 1.0
    with pytest.raises(ValueError, match="empty"):
        elongation(np.zeros((3, 3, 3), bool), spacing_mm=(1, 1, 1))


# --------------------------------------------------------------------------- direction


def test_offset_lps_axis_aligned_flipped_and_rotated():
    aff = affine_from_spacing((2.0, 1.5, 0.7), origin_mm=(-100, 20, 300))
    np.testing.assert_allclose(offset_lps_mm((4.0, 3.0, -6.0), aff), (-6.0, 3.0, 4.0))
    flipped = np.diag([-0.7, -1.5, -2.0, 1.0])[:, [2, 1, 0, 3]]  # x->R, y->A, z->I
    np.testing.assert_allclose(offset_lps_mm((4.0, 3.0, -6.0), flipped), (6.0, -3.0, -4.0))
    rot = np.eye(4)
    rot[:3, :3] = [[0, -1.2, 0], [0, 0, 0.8], [2.5, 0, 0]]  # y index -> R, x index -> P
    np.testing.assert_allclose(offset_lps_mm((0.0, 1.0, 2.0), rot), (-1.0, 2.0, 0.0))
    rng = np.random.default_rng(1)  # any affine: agrees with the index -> LPS map
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    sp = np.array([2.5, 0.8, 0.6])
    general = np.eye(4)
    general[:3, :3] = q * sp
    step = np.array([3.0, -2.0, 5.0])  # voxels
    np.testing.assert_allclose(offset_lps_mm(step * sp, general), general[:3, :3] @ step)
    with pytest.raises(ValueError, match="4x4"):
        offset_lps_mm((1, 2, 3), np.eye(3))


def test_direction_words_lateral_medial_both_sides():
    right = {"nodule_lps_mm": (-60.0, 10.0, 0.0), "midline_x_mm": 5.0}  # patient right
    left = {"nodule_lps_mm": (70.0, 10.0, 0.0), "midline_x_mm": 5.0}
    assert direction_words((-10, 0, 0), **right) == "lateral"
    assert direction_words((10, 0, 0), **right) == "medial"
    assert direction_words((10, 0, 0), **left) == "lateral"
    assert direction_words((-10, 0, 0), **left) == "medial"
    assert direction_words((-8, 6, 0), **right) == "lateral and posterior"
    assert direction_words((6, -8, 0), **right) == "anterior and medial"
    assert direction_words((0, -3, 10), **left) == "superior"
    assert direction_words((0, 0, -5), **left) == "inferior"
    assert direction_words((1, 1, 1), **left) == "lateral, posterior and superior"
    assert direction_words((0, 0, 0), **left) == "at the nodule centre"
    on_mid = {"nodule_lps_mm": (5.0, 0.0, 0.0), "midline_x_mm": 5.0}
    assert direction_words((3, 0, 0), **on_mid) == "left"
    assert direction_words((0.3, 0.1, 0.1), **left, min_fraction=1.0) == "lateral"
    with pytest.raises(ValueError, match="min_fraction"):
        direction_words((1, 0, 0), **left, min_fraction=0.0)


def test_describe_region_golden():
    assert describe_region(12.4, "lateral", "pleura-adjacent", -20.3) == (
        "pleura-adjacent, about 12 mm lateral of the nodule, soft-tissue density (mean -20 HU)"
    )
    assert describe_region(7.5, "medial and inferior", "vessel-like", 40.0) == (
        "vessel-like, about 8 mm medial and inferior of the nodule, soft-tissue density "
        "(mean 40 HU)"
    )
    assert describe_region(0.0, "at the nodule centre", "inside lung", -850) == (
        "inside lung, at the nodule centre, lung/air density (mean -850 HU)"
    )
    bands = [(-501, "lung/air"), (-500, "fat"), (-30, "soft-tissue"), (150, "calcified"),
             (1200, "metal-bright")]
    for hu, words in bands:
        assert f", {words} density (mean {hu} HU)" in describe_region(5, "superior",
                                                                       "inside lung", hu)
    with pytest.raises(ValueError, match="relation"):
        describe_region(5, "superior", "near lung", 0.0)


def test_lung_field_within_boxes_equals_the_whole_field_there():
    """The restricted lung field (the pipeline's) matches the global one inside each box."""
    from data_tools.synthetic import SyntheticConfig, generate_case
    from discovery.regions.descriptors import lung_components, lung_mask

    case = generate_case(3, config=SyntheticConfig(shape_yx=128, n_slices=(56, 56), slice_spacing_mm=(1.2, 1.2)), index=0)
    spacing = tuple(float(v) for v in np.linalg.norm(case.affine[:3, :3], axis=0))
    full = lung_mask(case.hu, spacing_mm=spacing)
    assert full.any()
    zs, ys, xs = np.nonzero(case.mask)
    boxes = []
    for lab in np.unique(case.mask[case.mask > 0]):
        z, y, x = (int(np.mean(a[case.mask[zs, ys, xs] == lab])) for a in (zs, ys, xs))
        boxes.append((slice(z - 10, z + 10), slice(y - 20, y + 20), slice(x - 20, x + 20)))
    part = lung_mask(case.hu, spacing_mm=spacing, within=boxes,
                     components=lung_components(case.hu, spacing_mm=spacing))
    inside = np.zeros(case.hu.shape, bool)
    for b in boxes:
        b = tuple(slice(max(0, s.start), s.stop) for s in b)
        inside[b] = True
    np.testing.assert_array_equal(part[inside], full[inside])
    assert not part[~inside].any()


def _components_reference(hu, spacing, threshold_hu=-400.0, min_volume_ml=20.0):
    """Steps 1-2 of lung_mask written plainly: scipy's int32 labels, per-label counts."""
    labels, n = ndimage.label(hu < threshold_hu)
    border = np.zeros(n + 1, bool)
    for side in (labels[:, 0], labels[:, -1], labels[:, :, 0], labels[:, :, -1]):
        border[side] = True
    keep = ~border & (np.bincount(labels.ravel(), minlength=n + 1)
                      >= 1000.0 * min_volume_ml / float(np.prod(spacing)))
    keep[0] = False
    return keep[labels]


@pytest.mark.parametrize("n_bubbles", [40, 80_000])
def test_lung_components_beyond_65535_components(n_bubbles):
    """The air is labelled as uint16 while its components fit, as int32 beyond: the lungs
    are the same either way (here 1 lung block, outside air, and 40 or 80,000 one-voxel air
    bubbles in soft tissue, which are too small to keep)."""
    from discovery.regions.descriptors import lung_components

    hu = np.zeros((40, 200, 200), np.float32)
    hu[:, :3], hu[:, -3:], hu[:, :, :3], hu[:, :, -3:] = -1000, -1000, -1000, -1000
    hu[5:35, 20:60, 20:60] = -850                     # the lung: 48 ml at 1 mm
    rng = np.random.default_rng(0)
    zyx = np.argwhere(np.ones((20, 66, 96), bool)) * 2 + (0, 64, 4)  # 126,720 sites
    zyx = zyx[rng.permutation(len(zyx))[:n_bubbles]]
    hu[tuple(zyx.T)] = -1000                          # isolated: every other voxel
    assert (ndimage.label(hu < -400)[1] > 65_535) == (n_bubbles > 65_535)
    spacing = (1.0, 1.0, 1.0)
    got = lung_components(hu, spacing_mm=spacing)
    np.testing.assert_array_equal(got, _components_reference(hu, spacing))
    np.testing.assert_array_equal(lung_components(hu, spacing_mm=spacing, threads=2), got)
    assert got[5:35, 20:60, 20:60].all() and got.sum() == 30 * 40 * 40


@pytest.mark.parametrize("threads", [2, 3, 7])
def test_lung_components_on_threads_join_the_slabs_exactly(threads):
    """Labelled in slabs of slices on threads, the components are joined across the seams:
    the same lungs as one labelling (the reference), whatever the number of slabs."""
    from discovery.regions.descriptors import lung_components

    hu = np.zeros((21, 40, 40), np.float32)
    hu[:, :2], hu[:, -2:], hu[:, :, :2], hu[:, :, -2:] = -1000, -1000, -1000, -1000
    # a U: two columns that meet only in the last slices, so their halves join through
    # slabs they do not share; 8 x 6 x 6 + 8 x 6 x 6 + 3 x 6 x 26 voxels = 1,044 (kept)
    hu[10:21, 5:11, 5:11] = -900
    hu[10:21, 5:11, 25:31] = -900
    hu[18:21, 5:11, 5:31] = -900
    # a tube from the centre to the border in slice 3 only: outside air, dropped
    hu[0:12, 20:26, 15:21] = -900
    hu[3, 20:23, 0:21] = -900
    # a block whose parts in each slab are each under the minimum, together above it
    hu[4:16, 28:36, 5:13] = -900                       # 12 x 8 x 8 = 768 voxels
    # noise: many small components, some across seams
    rng = np.random.default_rng(5)
    hu[(rng.random(hu.shape) < 0.05) & (hu == 0)] = -700
    spacing = (1.0, 1.0, 1.0)
    min_ml = 0.7                                       # 700 voxels at 1 mm
    expect = _components_reference(hu, spacing, min_volume_ml=min_ml)
    assert expect[10:21, 5:11, 5:11].all() and expect[4:16, 28:36, 5:13].all()
    assert not expect[0:12, 20:26, 15:21].any()
    for n in (1, threads):
        np.testing.assert_array_equal(
            lung_components(hu, spacing_mm=spacing, min_volume_ml=min_ml, threads=n), expect)


@pytest.mark.parametrize("min_ml", [0.0, 0.2])
def test_lung_components_with_many_or_no_components_kept(min_ml):
    """Kept labels are written by comparison when a slab keeps at most four (the lungs) and
    through a lookup table beyond: both give the reference's field, as does keeping none."""
    from discovery.regions.descriptors import lung_components

    rng = np.random.default_rng(11)
    hu = np.where(rng.random((24, 48, 48)) < 0.3, -900, 0).astype(np.int16)
    spacing = (1.0, 1.0, 1.0)
    expect = _components_reference(hu, spacing, min_volume_ml=min_ml)
    kept = ndimage.label(expect)[1]
    assert kept > 4 if min_ml == 0.0 else 0 < kept <= 4
    for n in (1, 2, 3):
        np.testing.assert_array_equal(
            lung_components(hu, spacing_mm=spacing, min_volume_ml=min_ml, threads=n), expect)
    assert not lung_components(hu, spacing_mm=spacing, min_volume_ml=1e6).any()


def test_lung_mask_on_threads_is_the_same_field():
    from data_tools.synthetic import SyntheticConfig, generate_case
    from discovery.regions.descriptors import lung_mask

    case = generate_case(4, config=SyntheticConfig(shape_yx=96, n_slices=(40, 40),
                                                   slice_spacing_mm=(1.5, 1.5)), index=0)
    spacing = tuple(float(v) for v in np.linalg.norm(case.affine[:3, :3], axis=0))
    boxes = [(slice(5, 25), slice(10, 50), slice(10, 50)), (slice(15, 38), slice(30, 90),
                                                            slice(40, 96)),
             (slice(-3, 12), slice(0, 40), slice(50, 90))]     # overlapping, one clipped
    one = lung_mask(case.hu, spacing_mm=spacing, within=boxes)
    assert one.any()
    np.testing.assert_array_equal(lung_mask(case.hu, spacing_mm=spacing, within=boxes,
                                            threads=3), one)
    np.testing.assert_array_equal(lung_mask(case.hu, spacing_mm=spacing, threads=2),
                                  lung_mask(case.hu, spacing_mm=spacing))


@pytest.mark.parametrize("slab_voxels", [1, 150, 10_000, 1 << 22])
def test_component_sizes_counted_by_slab_equal_one_bincount(slab_voxels):
    """The lungs' component sizes are counted a few slices at a time (no 64-bit copy of a
    whole scan's labels); any slab size gives the whole-volume count."""
    from discovery.regions.descriptors import _component_sizes

    rng = np.random.default_rng(3)
    labels, n = ndimage.label(rng.random((13, 17, 19)) < 0.3)
    labels = labels.astype(np.uint16)
    np.testing.assert_array_equal(_component_sizes(labels, n, slab_voxels=slab_voxels),
                                  np.bincount(labels.ravel(), minlength=n + 1))
