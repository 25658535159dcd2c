"""The attended structure of a region: constructed scans with known answers."""

import math

import numpy as np
import pytest

from discovery.regions.structures import NO_STRUCTURE, attended_structure

SPACING = (1.0, 1.0, 1.0)
SHAPE = (21, 41, 61)
CENTRE = np.array([10, 20, 20])


def _scene():
    """Aerated lung (-850 HU) with a 4 mm ball nodule (40 HU) at CENTRE."""
    hu = np.full(SHAPE, -850.0, dtype=np.float32)
    zz, yy, xx = np.indices(SHAPE)
    nodule = (zz - CENTRE[0]) ** 2 + (yy - CENTRE[1]) ** 2 + (xx - CENTRE[2]) ** 2 <= 16
    hu[nodule] = 40.0
    lung = np.ones(SHAPE, dtype=bool)
    return hu, lung, nodule


def test_radial_strand_from_the_nodule():
    hu, lung, nodule = _scene()
    # a strand along +x from x = 27 (3 mm beyond the nodule's edge at x = 24) to x = 44
    hu[10, 20, 27:45] = 20.0
    region = np.zeros(SHAPE, dtype=bool)
    region[8:13, 17:24, 30:42] = True  # covers the middle of the strand only
    attribution = region.astype(np.float32)
    s = attended_structure(region, hu, lung, attribution, nodule, spacing_mm=SPACING)
    # grown by 3 mm, the region reaches x = 27..44 of the strand: 18 voxels
    assert s.volume_mm3 == pytest.approx(18.0)
    assert s.median_hu == pytest.approx(20.0) and s.max_hu == pytest.approx(20.0)
    assert s.gap_mm == pytest.approx(3.0)  # x = 27 to the nodule's edge voxel at x = 24
    assert s.radial == pytest.approx(1.0, abs=1e-9)
    assert s.elongation == pytest.approx(math.sqrt((18**2 - 1) / 12 + 1 / 12) / math.sqrt(1 / 12))
    assert 0 < s.attribution_share < 1
    # the nodule's distance map, when the caller has it, gives the same answer
    from discovery.align.metrics import distance_to_mask_mm
    same = attended_structure(region, hu, lung, attribution, nodule, spacing_mm=SPACING,
                              distance_mm=distance_to_mask_mm(nodule, SPACING))
    assert same == s


def test_strand_running_around_the_nodule_is_not_radial():
    hu, lung, nodule = _scene()
    hu[10, 5:36, 34] = 20.0  # along y, 14 mm lateral of the nodule centre, centred on it
    region = np.zeros(SHAPE, dtype=bool)
    region[8:13, 10:31, 32:37] = True
    s = attended_structure(region, hu, lung, region.astype(float), nodule, spacing_mm=SPACING)
    assert s.radial == pytest.approx(0.0, abs=1e-9)
    assert s.gap_mm == pytest.approx(10.0)  # x = 34 to the edge voxel at x = 24


def test_air_only_region_has_no_structure():
    hu, lung, nodule = _scene()
    region = np.zeros(SHAPE, dtype=bool)
    region[8:13, 5:10, 45:55] = True
    s = attended_structure(region, hu, lung, region.astype(float), nodule, spacing_mm=SPACING)
    assert s == NO_STRUCTURE
    assert s.volume_mm3 == 0.0 and math.isnan(s.gap_mm) and s.attribution_share == 0.0
    assert math.isnan(s.median_hu) and math.isnan(s.max_hu)


def test_the_component_with_most_attribution_wins_and_nodules_are_excluded():
    hu, lung, nodule = _scene()
    hu[10, 20, 40:43] = 30.0   # small blob A, 3 voxels
    hu[10, 30, 40:50] = 500.0  # longer blob B, 10 voxels, calcified
    region = np.zeros(SHAPE, dtype=bool)
    region[5:16, 15:35, 22:55] = True  # also covers the nodule's rim (x = 22..24)
    attribution = np.zeros(SHAPE, dtype=np.float32)
    attribution[10, 20, 40:43] = 10.0  # A carries 30, B only 10 x 0.5
    attribution[10, 30, 40:50] = 0.5
    attribution[nodule] = 100.0  # the nodule itself is excluded even though it is brightest
    s = attended_structure(region, hu, lung, attribution, nodule, spacing_mm=SPACING)
    assert s.volume_mm3 == pytest.approx(3.0) and s.median_hu == pytest.approx(30.0)
    attribution[10, 30, 40:50] = 5.0  # now B carries 50
    s = attended_structure(region, hu, lung, attribution, nodule, spacing_mm=SPACING)
    assert s.volume_mm3 == pytest.approx(10.0) and s.median_hu == pytest.approx(500.0)
    assert s.max_hu == pytest.approx(500.0)


def test_structure_outside_the_lung_field_is_ignored():
    hu, lung, nodule = _scene()
    hu[10, 20, 30:40] = 20.0
    lung[:, :, 28:] = False  # the chest wall from x = 28 on
    region = np.zeros(SHAPE, dtype=bool)
    region[8:13, 17:24, 30:40] = True
    s = attended_structure(region, hu, lung, region.astype(float), nodule, spacing_mm=SPACING)
    assert s == NO_STRUCTURE


def test_anisotropic_spacing_scales_volume_and_gap():
    hu, lung, nodule = _scene()
    hu[10, 20, 27:45] = 20.0
    region = np.zeros(SHAPE, dtype=bool)
    region[8:13, 17:24, 24:48] = True
    s = attended_structure(region, hu, lung, region.astype(float), nodule,
                           spacing_mm=(2.0, 1.0, 0.5), grow_by_mm=0.0, nodule_margin_mm=0.0)
    assert s.volume_mm3 == pytest.approx(18 * 2.0 * 1.0 * 0.5)
    assert s.gap_mm == pytest.approx(1.5)  # 3 voxels of 0.5 mm along x


def test_a_grazed_ball_is_described_whole_within_the_reach():
    """A region whose grown margin only grazes a dense ball (a marker at the edge of a 3 mm
    map cell) describes the whole ball; with the reach of the grown region, the fragment."""
    hu, lung, nodule = _scene()
    zz, yy, xx = np.indices(SHAPE)
    ball = (zz - 10) ** 2 + (yy - 20) ** 2 + (xx - 45) ** 2 <= 9     # radius 3, x = 42..48
    hu[ball] = 300.0                        # a partial-volume rim ...
    hu[10, 20, 45] = 2500.0                 # ... around a metal-dense core voxel
    region = np.zeros(SHAPE, dtype=bool)
    region[8:13, 17:24, 32:38] = True
    region[10, 20, 38:40] = True            # grown by 3 mm, x = 42 on this row only: one voxel
    attribution = region.astype(np.float32)
    whole = attended_structure(region, hu, lung, attribution, nodule, spacing_mm=SPACING)
    assert whole.volume_mm3 == pytest.approx(float(ball.sum()))
    assert whole.median_hu == pytest.approx(300.0)
    assert whole.max_hu == pytest.approx(2500.0)      # the core, 3 mm beyond the grown region
    part = attended_structure(region, hu, lung, attribution, nodule, spacing_mm=SPACING,
                              reach_mm=3.0)
    assert part.volume_mm3 == pytest.approx(1.0)      # the one voxel inside the grown region
    assert part.max_hu == pytest.approx(300.0)        # the rim only
    assert part.attribution_share == whole.attribution_share   # the share: the grown region's


def test_a_marker_touching_a_vessel_is_described_at_its_half_maximum():
    """Described whole, a structure is bounded halfway from the aerated lung around it to its
    peak: a metal ball touching a soft-tissue vessel is the ball; the vessel itself, whose
    half maximum is below the dense threshold, is all that is dense within the reach."""
    hu, lung, nodule = _scene()
    zz, yy, xx = np.indices(SHAPE)
    ball = (zz - 10) ** 2 + (yy - 20) ** 2 + (xx - 45) ** 2 <= 4     # radius 2, x = 43..47
    hu[10, 10:31, 48] = 40.0                # a vessel along y, touching the ball at x = 48
    hu[ball] = 2500.0
    region = np.zeros(SHAPE, dtype=bool)
    region[8:13, 18:23, 37:41] = True       # grown by 3 mm it grazes the ball's left side
    attribution = region.astype(np.float32)
    s = attended_structure(region, hu, lung, attribution, nodule, spacing_mm=SPACING)
    assert s.volume_mm3 == pytest.approx(float(ball.sum()))           # not the vessel's 21
    assert s.median_hu == pytest.approx(2500.0) and s.max_hu == pytest.approx(2500.0)
    region = np.zeros(SHAPE, dtype=bool)
    region[10, 10:13, 50:53] = True         # beside the vessel's far end, away from the ball
    s = attended_structure(region, hu, lung, region.astype(np.float32), nodule,
                           spacing_mm=SPACING)
    from discovery.align.metrics import grow_mm
    vessel = np.zeros(SHAPE, dtype=bool)
    vessel[10, 10:31, 48] = True
    reach = grow_mm(region, 9.0, SPACING)
    assert s.volume_mm3 == pytest.approx(float(((vessel | ball) & reach).sum()))
    assert s.max_hu == pytest.approx(2500.0)


def test_the_half_maximum_is_measured_from_aerated_lung_not_from_another_nodule():
    """The background of the half-maximum bound is the grown region's lung below the dense
    threshold: a region lying mostly on another annotated nodule (40 HU) still bounds a
    -200 HU strand with a 300 HU knot halfway from the -850 HU lung, so the strand is whole
    (measured from the nodule's 40 HU, only the knot would be left)."""
    hu, lung, nodule = _scene()
    zz, yy, xx = np.indices(SHAPE)
    other = (zz - 10) ** 2 + (yy - 20) ** 2 + (xx - 45) ** 2 <= 64    # radius 8, y = 12..28
    hu[other] = 40.0
    hu[10, 30:40, 45] = -200.0              # a strand beyond the other nodule's 1.5 mm margin
    hu[10, 33, 45] = 300.0
    region = np.zeros(SHAPE, dtype=bool)
    region[8:13, 16:32, 42:49] = True       # mostly on the other nodule
    s = attended_structure(region, hu, lung, region.astype(np.float32), nodule,
                           spacing_mm=SPACING, exclude=nodule | other)
    assert s.volume_mm3 == pytest.approx(10.0)
    assert s.max_hu == pytest.approx(300.0) and s.median_hu == pytest.approx(-200.0)


def test_a_long_strand_is_cut_at_the_reach():
    hu, lung, nodule = _scene()
    hu[10, 20, 27:61] = 20.0                # 34 voxels from x = 27 to the edge
    region = np.zeros(SHAPE, dtype=bool)
    region[10, 20, 30:33] = True
    s = attended_structure(region, hu, lung, region.astype(float), nodule, spacing_mm=SPACING,
                           reach_mm=9.0)
    assert s.volume_mm3 == pytest.approx(float(len(range(27, 42))))   # x = 27..41 (32 + 9)
    assert s.gap_mm == pytest.approx(3.0)
    with pytest.raises(ValueError, match="reach_mm must be at least grow_by_mm"):
        attended_structure(region, hu, lung, region.astype(float), nodule, spacing_mm=SPACING,
                           reach_mm=2.0)


def _noisy_lung(sigma_hu: float, seed: int = 0):
    """:func:`_scene` with white noise of *sigma_hu* on the lung, and the region grid."""
    hu, lung, nodule = _scene()
    hu += np.random.default_rng(seed).normal(0.0, sigma_hu, SHAPE).astype(np.float32)
    return hu, lung, nodule


def test_an_air_space_darker_than_the_lung_is_a_lucent_structure():
    """A 4 mm-radius ball of air (-1000 HU) in noisy lung (-850 +- 30 HU), grazed by the
    region, is found whole and described by its own HU; with ``lucent_hu=None`` (dense
    structures only) the same region has no structure."""
    hu, lung, nodule = _noisy_lung(30.0)
    zz, yy, xx = np.indices(SHAPE)
    ball = (zz - 10) ** 2 + (yy - 20) ** 2 + (xx - 44) ** 2 <= 16       # x = 40..48
    hu[ball] = -1000.0 + np.random.default_rng(1).normal(0, 30.0, int(ball.sum()))
    region = np.zeros(SHAPE, dtype=bool)
    region[7:14, 16:25, 33:40] = True       # grown by 3 mm, it reaches x = 40..42 of the ball
    attribution = np.ones(SHAPE)            # spread over the grown region as over the ball
    s = attended_structure(region, hu, lung, attribution, nodule, spacing_mm=SPACING)
    # the smoothed ball bounded halfway to the air: about its own volume (257 voxels)
    assert 0.75 * ball.sum() <= s.volume_mm3 <= 1.3 * ball.sum(), s
    assert s.median_hu < -960 and s.max_hu < -850, s
    assert s.gap_mm == pytest.approx(16.0, abs=1.5)   # x = 40 to the nodule's edge at x = 24
    assert s.elongation < 1.3 and s.attribution_share > 0
    dense_only = attended_structure(region, hu, lung, attribution, nodule,
                                    spacing_mm=SPACING, lucent_hu=None)
    assert dense_only == NO_STRUCTURE


def test_noisy_aerated_lung_alone_has_no_lucent_structure():
    """The lung's own noise (30 HU around -850: voxels under -950 at about 3 sigma) makes no
    structure once smoothed; unsmoothed, single dark voxels would be taken for one."""
    hu, lung, nodule = _noisy_lung(30.0, seed=2)
    region = np.zeros(SHAPE, dtype=bool)
    region[4:17, 5:15, 40:56] = True
    attribution = region.astype(float)
    assert attended_structure(region, hu, lung, attribution, nodule,
                              spacing_mm=SPACING) == NO_STRUCTURE
    speckle = attended_structure(region, hu, lung, attribution, nodule, spacing_mm=SPACING,
                                 smooth_mm=0.0)
    assert 0 < speckle.volume_mm3 < 10 and speckle.median_hu < -950


def test_a_ground_glass_spot_is_a_faint_structure():
    """A 3 mm-radius ball of ground glass (-620 HU) in noisy lung is found whole as a faint
    structure; with ``faint_hu=None`` the region has none, and with a vessel in reach the
    vessel is the structure (ground glass only where there is no other)."""
    hu, lung, nodule = _noisy_lung(20.0, seed=3)
    zz, yy, xx = np.indices(SHAPE)
    spot = (zz - 10) ** 2 + (yy - 8) ** 2 + (xx - 45) ** 2 <= 9
    hu[spot] = -620.0 + np.random.default_rng(4).normal(0, 20.0, int(spot.sum()))
    region = np.zeros(SHAPE, dtype=bool)
    region[7:14, 4:13, 38:45] = True
    attribution = np.ones(SHAPE)
    s = attended_structure(region, hu, lung, attribution, nodule, spacing_mm=SPACING)
    # smoothing lowers a small spot's peak, and the half maximum is measured on it
    assert 0.5 * spot.sum() <= s.volume_mm3 <= 1.6 * spot.sum(), s
    assert -700 < s.median_hu < -560 and s.max_hu < -400, s
    assert attended_structure(region, hu, lung, attribution, nodule, spacing_mm=SPACING,
                              faint_hu=None) == NO_STRUCTURE
    hu[8:13, 14, 38:45] = 40.0              # a vessel within the grown region
    vessel = attended_structure(region, hu, lung, attribution, nodule, spacing_mm=SPACING)
    assert vessel.median_hu == pytest.approx(40.0)


def test_a_blurred_vessel_is_the_same_structure_as_with_dense_voxels_only():
    """The blurred edge of a dense structure (partial volume above -700 HU) is not ground
    glass: on a scene of blurred vessels and marker, the attended structure is the one of a
    search for dense structures only."""
    from scipy import ndimage

    hu, lung, nodule = _scene()
    hu[9:12, 28:33, 38:52] = 40.0           # vessels 3 voxels thick, dense once blurred
    hu[8:13, 9:12, 30:60] = 40.0
    zz, yy, xx = np.indices(SHAPE)
    hu[(zz - 10) ** 2 + (yy - 20) ** 2 + (xx - 45) ** 2 <= 2] = 2500.0   # a marker
    hu = ndimage.gaussian_filter(hu, 0.8)
    hu += np.random.default_rng(5).normal(0, 15.0, SHAPE).astype(np.float32)
    for box in ((slice(6, 15), slice(6, 34), slice(38, 52)), (slice(8, 13), slice(16, 24),
                                                                slice(40, 50))):
        region = np.zeros(SHAPE, dtype=bool)
        region[box] = True
        attribution = np.ones(SHAPE)
        both = attended_structure(region, hu, lung, attribution, nodule, spacing_mm=SPACING)
        dense = attended_structure(region, hu, lung, attribution, nodule, spacing_mm=SPACING,
                                   faint_hu=None, lucent_hu=None)
        assert both == dense and both.median_hu > -400


def test_dense_and_lucent_structures_compete_on_attribution_mass():
    """A vessel and an air space in one region: the one the attribution is on is attended."""
    hu, lung, nodule = _scene()
    zz, yy, xx = np.indices(SHAPE)
    air = (zz - 10) ** 2 + (yy - 10) ** 2 + (xx - 45) ** 2 <= 9
    hu[air] = -1000.0
    hu[10, 28:33, 38:52] = 40.0             # a vessel along x
    region = np.zeros(SHAPE, dtype=bool)
    region[6:15, 6:34, 38:52] = True
    on_air = np.where(air, 1.0, 0.1) * region
    on_vessel = np.zeros(SHAPE)
    on_vessel[10, 28:33, 38:52] = 1.0
    s_air = attended_structure(region, hu, lung, on_air, nodule, spacing_mm=SPACING)
    s_vessel = attended_structure(region, hu, lung, on_vessel, nodule, spacing_mm=SPACING)
    assert s_air.median_hu < -950 and s_vessel.median_hu == pytest.approx(40.0)
    assert s_vessel.volume_mm3 == pytest.approx(5 * 14)


@pytest.mark.parametrize("bad, match", [
    (dict(region=np.zeros((2, 2, 2), bool)), "one shape"),
    (dict(region=np.zeros(SHAPE, bool)), "empty"),
    (dict(spacing_mm=(1.0, 0.0, 1.0)), "spacing"),
    (dict(grow_by_mm=-1.0), "grow_by_mm"),
    (dict(dense_hu=float("nan")), "dense_hu"),
    (dict(lucent_hu=-300.0), "lucent_hu"),
    (dict(lucent_hu=float("nan")), "lucent_hu"),
    (dict(smooth_mm=-1.0), "smooth_mm"),
    (dict(faint_hu=-300.0), "faint_hu"),
    (dict(faint_hu=-800.0, lucent_hu=-700.0), "lucent_hu"),
    (dict(exclude=np.zeros((3, 3, 3), bool)), "exclude"),
    (dict(distance_mm=np.zeros((3, 3, 3))), "distance_mm"),
])
def test_bad_input_says_what_was_received(bad, match):
    hu, lung, nodule = _scene()
    region = np.zeros(SHAPE, dtype=bool)
    region[10, 20, 30] = True
    kwargs = dict(region=region, hu=hu, lung=lung, attribution=region.astype(float),
                  nodule=nodule, spacing_mm=SPACING)
    kwargs.update(bad)
    with pytest.raises(ValueError, match=match):
        attended_structure(kwargs.pop("region"), kwargs.pop("hu"), kwargs.pop("lung"),
                           kwargs.pop("attribution"), kwargs.pop("nodule"), **kwargs)


def _generator_items(seed: int, n_cases: int, **planted):
    """``(case, spacing, lung, item)`` for each planted item of *n_cases* small scans of the
    synthetic generator (two nodules each; the bead and granuloma off, *planted* on)."""
    from data_tools.synthetic import SyntheticConfig, generate_case
    from discovery.regions.descriptors import lung_mask

    cfg = SyntheticConfig(shape_yx=128, n_slices=(48, 48), pixel_spacing_mm=(1.4, 1.4),
                          slice_spacing_mm=(2.0, 2.0), nodules_per_case=(2, 2),
                          p_bead_malignant=0.0, p_granuloma=0.0, **planted)
    for index in range(n_cases):
        c = generate_case(seed, config=cfg, index=index)
        spacing = tuple(float(v) for v in np.linalg.norm(c.affine[:3, :3], axis=0))
        lung = lung_mask(c.hu, spacing_mm=spacing)
        for item in c.planted_items:
            yield c, spacing, lung, item


def _structures_over(kind: str, grow_by_mm: float, seed: int, n_cases: int, **planted):
    """``(structure, item)`` for each planted *kind* of :func:`_generator_items`: the
    attended structure of a Grad-CAM-like blob, the item grown by *grow_by_mm*, the nodule's
    5 mm surroundings cut (items whose blob is empty skipped)."""
    from discovery.align.metrics import grow_mm

    for c, spacing, lung, item in _generator_items(seed, n_cases, **planted):
        assert item["kind"] == kind
        nodule = c.mask == item["nodule_label"]
        region = (grow_mm(c.planted == item["label"], grow_by_mm, spacing)
                  & ~grow_mm(nodule, 5.0, spacing))
        if region.any():
            yield attended_structure(region, c.hu, lung, region.astype(float), nodule,
                                     spacing_mm=spacing, exclude=c.mask > 0), item


def test_the_generators_pleural_tails_read_as_radial_strands():
    """On the synthetic generator's own scans, a region over a planted pleural tail finds a
    soft-tissue strand that starts next to the nodule and runs radially from it."""
    n = 0
    for s, _ in _structures_over("pleural_tail", 4.0, 3, 3, p_malignant=1.0,
                                 p_tail_malignant=1.0):
        assert s.gap_mm < 4.5 and s.radial > 0.85, s
        assert -400 <= s.median_hu < 200, s  # soft tissue, partial volume at the edges
        n += 1
    assert n >= 3


def test_the_generators_ground_glass_halos_read_as_faint_structures_around_the_nodule():
    """A region over the outer part of a planted ground-glass halo (beyond the 5 mm the
    off-mask regions leave out), away from the vessels, finds a faint structure close to
    the nodule; with a vessel in reach, the vessel (ground glass is the fallback)."""
    from discovery.align.metrics import grow_mm

    n = 0
    for c, spacing, lung, item in _generator_items(
            4, 2, p_tail_malignant=0.0, p_tail_benign=0.0, p_halo_malignant=1.0,
            p_halo_benign=1.0, halo_width_mm=(5.0, 6.0)):
        nodule = c.mask == item["nodule_label"]
        region = (c.planted == item["label"]) & ~grow_mm(nodule, 4.0, spacing)
        vessels = (c.hu >= -400) & ~grow_mm(c.mask > 0, 1.5, spacing)
        clear = region & ~grow_mm(vessels, 3.5, spacing)
        if clear.sum() < 10 or (region & ~clear).sum() < 10:
            continue
        s = attended_structure(clear, c.hu, lung, clear.astype(float), nodule,
                               spacing_mm=spacing, exclude=c.mask > 0)
        assert -800 < s.median_hu < -400 and s.gap_mm < 4.5, s
        near = attended_structure(region, c.hu, lung, region.astype(float), nodule,
                                  spacing_mm=spacing, exclude=c.mask > 0)
        assert near.median_hu > -400, near
        n += 1
    assert n >= 2


def test_the_generators_bullae_read_as_lucent_round_structures():
    """On the synthetic generator's own scans (noise and blur included), a region grazing a
    planted bulla finds an air space darker than the lung, about the bulla's size."""
    n = 0
    for s, item in _structures_over("bulla", 3.0, 3, 2, p_tail_malignant=0.0,
                                    p_tail_benign=0.0, p_bulla_malignant=1.0,
                                    p_bulla_benign=1.0):
        assert s.median_hu < -940 and s.elongation < 2.0, s
        volume = 4 / 3 * np.pi * (item["diameter_mm"] / 2) ** 3
        assert 0.4 * volume < s.volume_mm3 < 2.5 * volume, (s, volume)
        n += 1
    assert n >= 2
