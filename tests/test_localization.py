"""Localisation summaries on hand-made arrays (answers worked out by hand in comments)."""

import dataclasses
import math

import numpy as np
import pytest

import discovery.align.localization as loc
from discovery.align.metrics import near_mass, relevance_mass, relevance_rank
from discovery.align.localization import (
    DEFAULT_RINGS_MM,
    Localization,
    Overlap,
    RingShares,
    detection_auc,
    localization_summary,
    otsu_overlap,
    otsu_threshold,
    ring_shares,
    top_k_intersection,
)

ISO = (1.0, 1.0, 1.0)


def _grid_1x3x3():
    # z = 0 slice:      x=0 x=1 x=2
    #           y=0  [   1,  2,  0 ]      flat indices 0 1 2
    #           y=1  [   0,  5,  1 ]                   3 4 5
    #           y=2  [   0,  0,  1 ]                   6 7 8     total = 10
    return np.array([[[1.0, 2.0, 0.0], [0.0, 5.0, 1.0], [0.0, 0.0, 1.0]]])


def _mask(shape, *voxels):
    m = np.zeros(shape, dtype=bool)
    for v in voxels:
        m[v] = True
    return m


def _random_case(seed, shape=(5, 6, 7)):
    rng = np.random.default_rng(seed)
    a = rng.random(shape) ** 3
    m = np.zeros(shape, bool)
    m[1:3, 2:4, 2:5] = True
    m |= rng.random(shape) < 0.05
    return a, m


# ------------------------------------------------------------------------ top-k


def test_top_k_on_1x3x3_with_c_order_ties():
    a = _grid_1x3x3()
    m = _mask(a.shape, (0, 1, 1), (0, 2, 2))  # flat {4, 8}
    # Stable descending order: 5 (4), 2 (1), then the three 1s in C order: 0, 5, 8, then 0s.
    assert top_k_intersection(a, m, k=1) == 1.0  # {4}
    assert top_k_intersection(a, m) == 0.5  # k = |M| = 2: {4, 1}
    assert top_k_intersection(a, m, k=3) == pytest.approx(1 / 3)  # {4, 1, 0}
    assert top_k_intersection(a, m, k=4) == pytest.approx(1 / 4)  # {4, 1, 0, 5}
    assert top_k_intersection(a, m, k=5) == pytest.approx(2 / 5)  # ... and 8
    assert top_k_intersection(a, m, k=9) == pytest.approx(2 / 9)  # k = |V|: |M| / |V|


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_top_k_default_equals_relevance_rank(seed):
    a, m = _random_case(seed)
    assert top_k_intersection(a, m) == relevance_rank(a, m)
    assert top_k_intersection(a, m, k=int(m.sum())) == relevance_rank(a, m)
    # Plateaus (nearest-neighbour upsampling) break ties the same way in both.
    q = np.floor(a * 3)
    assert top_k_intersection(q, m) == relevance_rank(q, m)


@pytest.mark.parametrize("k", [0, 10, -1, 1.5, True, "3"])
def test_top_k_bad_k_raises(k):
    a = _grid_1x3x3()
    with pytest.raises(ValueError, match=r"k must be an integer in \[1, 9\]"):
        top_k_intersection(a, _mask(a.shape, (0, 1, 1)), k=k)


# ------------------------------------------------------------------------ detection AUC


def test_detection_auc_on_1x3x3():
    a = _grid_1x3x3()
    m = _mask(a.shape, (0, 1, 1), (0, 2, 2))  # positives 5 and 1; negatives 1 2 0 0 1 0 0
    # Pairs (pos, neg), 2 x 7 = 14: the 5 beats all 7; the 1 beats the four 0s, ties the two
    # 1s (1/2 each) and loses to the 2: 4 + 1 = 5.  AUC = (7 + 5) / 14 = 6/7.
    # By ranks: 0s -> 2.5, 1s -> 6, 2 -> 8, 5 -> 9; U = (9 + 6) - 2 * 3 / 2 = 12; 12 / 14.
    assert detection_auc(a, m) == pytest.approx(6 / 7)


def test_detection_auc_extremes_and_constant_map():
    a = _grid_1x3x3()
    assert detection_auc(a, _mask(a.shape, (0, 1, 1))) == 1.0  # the 5 beats all
    # A 0 at flat 2 against 1 2 0 5 1 0 0 1: beats nothing, ties three 0s -> 1.5 / 8.
    assert detection_auc(a, _mask(a.shape, (0, 0, 2))) == pytest.approx(3 / 16)
    assert detection_auc(np.full((1, 3, 3), 7.0), _mask((1, 3, 3), (0, 1, 1))) == 0.5
    # No negatives: undefined.
    assert math.isnan(detection_auc(a, np.ones(a.shape, bool)))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_detection_auc_matches_sklearn_with_ties(seed):
    from sklearn.metrics import roc_auc_score

    a, m = _random_case(seed)
    q = np.floor(a * 4)  # four levels: many ties
    for arr in (a, q):
        assert detection_auc(arr, m) == pytest.approx(roc_auc_score(m.ravel(), arr.ravel()))


# ------------------------------------------------------------------------ Otsu


def test_otsu_two_levels_cuts_after_the_first_bin():
    a = np.zeros((1, 3, 3))
    a.ravel()[[0, 1, 4]] = 1.0
    m = np.zeros(a.shape, bool)
    m.ravel()[[1, 4, 8]] = True
    # 256 bins on [0, 1]: the 0s in bin 0, the 1s in bin 255.  Every cut between them has
    # the same between-class variance, so the first wins: threshold = centre of bin 0 = 1/512.
    # F = {0, 1, 4}, M = {1, 4, 8}: |F & M| = 2, Dice = 4 / 6, IoU = 2 / 4.
    o = otsu_overlap(a, m)
    assert isinstance(o, Overlap)
    assert o.threshold == pytest.approx(1 / 512)
    assert (o.dice, o.iou) == (pytest.approx(2 / 3), pytest.approx(0.5))


def test_otsu_three_levels_by_hand():
    a = np.zeros((1, 3, 3))
    a.ravel()[[0]] = 1.0
    a.ravel()[[4, 8]] = 4.0  # six 0s, one 1, two 4s
    # Range [0, 4], bin width 1/64; centres i/64 + 1/128.  0 -> bin 0, 1 -> bin 64,
    # 4 -> bin 255 (centre 3.9921875).  Class means shift with the centres, so compare the
    # two possible splits on centres minus 1/128:
    #   {0} | {1, 4, 4}:  6 * 3 * ((1 + 2 * 3.984375) / 3 - 0)^2      = 160.9
    #   {0, 1} | {4, 4}:  7 * 2 * (3.984375 - 1 / 7)^2                 = 206.6  <- max
    # The first cut of that split is after bin 64: threshold = 64/64 + 1/128 = 1.0078125.
    assert otsu_threshold(a) == pytest.approx(1.0078125)
    o = otsu_overlap(a, _mask(a.shape, (0, 1, 1), (0, 2, 2)))
    assert (o.dice, o.iou) == (1.0, 1.0)  # F = the two 4s = M


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_otsu_matches_skimage(seed):
    filters = pytest.importorskip("skimage.filters")
    a, _ = _random_case(seed)
    assert otsu_threshold(a) == pytest.approx(float(filters.threshold_otsu(a)), rel=1e-12)


def test_otsu_constant_map_and_empty_mask_are_nan():
    m = _mask((1, 3, 3), (0, 1, 1))
    for a in (np.zeros((1, 3, 3)), np.full((1, 3, 3), 2.0)):
        assert math.isnan(otsu_threshold(a))
        assert all(math.isnan(v) for v in otsu_overlap(a, m))
    assert all(math.isnan(v) for v in otsu_overlap(_grid_1x3x3(), np.zeros((1, 3, 3), bool)))


# ------------------------------------------------------------------------ ring shares


def test_ring_shares_on_a_line_with_inclusive_upper_bounds():
    a = np.ones((1, 1, 8))
    m = _mask(a.shape, (0, 0, 0))
    # dx = 2 mm: distances 0, 2, 4, 6, 8, 10, 12, 14 mm; 8 voxels of 1.
    r = ring_shares(a, m, (1.0, 1.0, 2.0))
    assert isinstance(r, RingShares)
    assert r.rings_mm == DEFAULT_RINGS_MM
    assert r.inside == pytest.approx(1 / 8)
    # (0, 5]: 2, 4;  (5, 10]: 6, 8, 10 (10 is in, not in the next ring);  (10, 20]: 12, 14.
    assert r.rings == pytest.approx((2 / 8, 3 / 8, 2 / 8))
    # dx = 1 mm: distances 0..7: (0, 5] holds 1..5, (5, 10] holds 6, 7.
    r = ring_shares(a, m, ISO)
    assert (r.inside, *r.rings) == pytest.approx((1 / 8, 5 / 8, 2 / 8, 0.0))
    r = ring_shares(a, m, ISO, rings_mm=((2, 3), (6, math.inf)))
    assert r.rings == pytest.approx((1 / 8, 1 / 8))  # d = 3;  d = 7


def test_ring_shares_follow_anisotropic_spacing():
    a = np.zeros((3, 1, 3))
    m = _mask(a.shape, (1, 0, 1))
    a[0, 0, 1] = 1.0  # one slice above the mask
    a[1, 0, 0] = 3.0  # one column beside it
    # (dz, dx) = (6, 1): above at 6 mm -> (5, 10]; beside at 1 mm -> (0, 5].
    assert ring_shares(a, m, (6.0, 1.0, 1.0)).rings == pytest.approx((3 / 4, 1 / 4, 0.0))
    # (dz, dx) = (1, 6): the other way round.
    assert ring_shares(a, m, (1.0, 1.0, 6.0)).rings == pytest.approx((1 / 4, 3 / 4, 0.0))
    # Diagonal (0, 0, 0): sqrt(6^2 + 1^2) = 6.08 mm.
    a[0, 0, 0] = 4.0
    assert ring_shares(a, m, (6.0, 1.0, 1.0)).rings == pytest.approx((3 / 8, 5 / 8, 0.0))


@pytest.mark.parametrize("seed", [0, 1])
def test_inside_plus_rings_up_to_m_is_near_mass(seed):
    a, m = _random_case(seed)
    sp = (2.5, 0.7, 0.7)
    r = ring_shares(a, m, sp, rings_mm=((0, 1.4), (1.4, 2.5), (2.5, 5.0), (5.0, math.inf)))
    assert r.inside == pytest.approx(relevance_mass(a, m))
    assert r.inside + r.rings[0] == pytest.approx(near_mass(a, m, sp, margin_mm=1.4))
    assert r.inside + sum(r.rings[:3]) == pytest.approx(near_mass(a, m, sp, margin_mm=5.0))
    assert r.inside + sum(r.rings) == pytest.approx(1.0)


@pytest.mark.parametrize(
    "rings", [(), ((-1, 5),), ((5, 5),), ((5, 2),), ((0, math.nan),), ((0, 1, 2),), (3,), None]
)
def test_bad_rings_raise(rings):
    a = _grid_1x3x3()
    with pytest.raises(ValueError, match="rings_mm must be"):
        ring_shares(a, _mask(a.shape, (0, 1, 1)), ISO, rings_mm=rings)


# ------------------------------------------------------------------------ summary


def test_summary_matches_single_functions_and_computes_distance_once(monkeypatch):
    a, m = _random_case(3)
    sp = (2.5, 0.8, 0.8)
    calls = []
    real = loc.distance_to_mask_mm
    monkeypatch.setattr(loc, "distance_to_mask_mm", lambda *args: calls.append(1) or real(*args))
    s = localization_summary(a, m, sp)
    assert len(calls) == 1
    assert isinstance(s, Localization) and s.status == "ok"
    r = ring_shares(a, m, sp)
    o = otsu_overlap(a, m)
    assert s.topk == top_k_intersection(a, m)
    assert s.auc == pytest.approx(detection_auc(a, m))
    assert (s.otsu_dice, s.otsu_iou) == (pytest.approx(o.dice), pytest.approx(o.iou))
    assert s.inside == pytest.approx(r.inside)
    assert (s.ring_0_5, s.ring_5_10, s.ring_10_20) == pytest.approx(r.rings)
    assert localization_summary(a, m, sp, k=7).topk == top_k_intersection(a, m, k=7)


def test_summary_row_is_flat_and_frozen():
    a = _grid_1x3x3()
    s = localization_summary(a, _mask(a.shape, (0, 1, 1)), ISO)
    row = s.as_row()
    assert list(row) == [
        "topk", "auc", "otsu_dice", "otsu_iou", "inside",
        "ring_0_5", "ring_5_10", "ring_10_20", "status",
    ]  # fmt: skip
    assert all(isinstance(v, float) for k, v in row.items() if k != "status")
    # Peak 5 alone in the mask: topk 1, AUC 1, inside 5/10; the 1 mm neighbours 2, 1 and the
    # 1.41 mm diagonals 1, 0, 0, 1 lie in (0, 5]: 5/10.  Otsu (range [0, 5], width 5/256):
    # the split {0, 1, 2} | {5} wins, so F = {5} = M.
    assert (row["topk"], row["auc"], row["inside"], row["ring_0_5"]) == pytest.approx(
        (1.0, 1.0, 0.5, 0.5)
    )
    assert (row["otsu_dice"], row["otsu_iou"], row["status"]) == (1.0, 1.0, "ok")
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.topk = 0.0  # type: ignore[misc]


def test_summary_full_mask_has_nan_auc_only():
    a = _grid_1x3x3()
    s = localization_summary(a, np.ones(a.shape, bool), ISO)
    assert s.status == "ok" and math.isnan(s.auc)
    assert (s.topk, s.inside, s.ring_0_5) == (1.0, 1.0, 0.0)


# --------------------------------------------------------------------------- degenerate


def test_empty_mask_gives_nan_everywhere():
    a = _grid_1x3x3()
    m = np.zeros(a.shape, bool)
    assert math.isnan(top_k_intersection(a, m))
    assert math.isnan(top_k_intersection(a, m, k=3))
    assert math.isnan(detection_auc(a, m))
    r = ring_shares(a, m, ISO)
    assert math.isnan(r.inside) and all(math.isnan(v) for v in r.rings)
    s = localization_summary(a, m, ISO)
    assert s.status == "empty mask: no annotated voxels for this nodule"
    assert all(math.isnan(v) for k, v in s.as_row().items() if k != "status")
    # Empty mask takes precedence over zero attribution.
    assert localization_summary(a * 0, m, ISO).status.startswith("empty mask")


def test_zero_attribution_gives_nan_everywhere():
    a = np.zeros((1, 3, 3))
    m = _mask(a.shape, (0, 1, 1))
    assert math.isnan(top_k_intersection(a, m))
    assert math.isnan(detection_auc(a, m))
    assert math.isnan(ring_shares(a, m, ISO).rings[0])
    s = localization_summary(a, m, ISO)
    assert s.status == "attribution is zero everywhere"
    assert all(math.isnan(v) for k, v in s.as_row().items() if k != "status")


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "attr, mask, match",
    [
        (np.ones((1, 3, 3)), np.ones((1, 3, 4), bool), "same"),
        (-_grid_1x3x3(), np.ones((1, 3, 3), bool), "ReLU"),
        (np.full((1, 2, 2), np.inf), np.ones((1, 2, 2), bool), "finite"),
        (np.ones((1, 2, 2)), np.ones((1, 2, 2)) * 0.5, "bool or integer"),
        (np.ones((2, 2)), np.ones((2, 2), bool), "3-D"),
    ],
)
def test_bad_inputs_raise_with_what_was_received(attr, mask, match):
    for f in (top_k_intersection, detection_auc, otsu_overlap):
        with pytest.raises(ValueError, match=match):
            f(attr, mask)
    for f in (ring_shares, localization_summary):
        with pytest.raises(ValueError, match=match):
            f(attr, mask, ISO)


def test_bad_spacing_and_k_in_summary_raise():
    a = _grid_1x3x3()
    m = _mask(a.shape, (0, 1, 1))
    with pytest.raises(ValueError, match="spacing_mm"):
        localization_summary(a, m, (1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="spacing_mm"):
        ring_shares(a, m, (1.0, 1.0))
    with pytest.raises(ValueError, match="received 0"):
        localization_summary(a, m, ISO, k=0)


# ---------------------------------------------------------------------------- invariants


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_positive_scaling_changes_nothing(seed):
    a, m = _random_case(seed)
    sp = (2.0, 0.75, 0.75)
    s, s8, s37 = (localization_summary(a * c, m, sp) for c in (1.0, 8.0, 37.5))
    # Ranks are unchanged exactly; shares up to rounding.
    assert s37.topk == s.topk and s37.auc == s.auc
    for f in ("inside", "ring_0_5", "ring_5_10", "ring_10_20"):
        assert getattr(s37, f) == pytest.approx(getattr(s, f), rel=1e-12)
    # Otsu bins are exactly the same under a power-of-two scale (no float edge cases).
    assert (s8.otsu_dice, s8.otsu_iou) == (s.otsu_dice, s.otsu_iou)
    assert otsu_overlap(a * 8.0, m).threshold == 8.0 * otsu_overlap(a, m).threshold


@pytest.mark.parametrize("seed", [0, 1])
def test_permuting_axes_with_spacing_changes_nothing(seed):
    a, m = _random_case(seed)  # continuous values: no ties, so top-k is order-free too
    sp = (2.5, 0.7, 1.1)
    order = (2, 0, 1)
    a_t, m_t = np.transpose(a, order), np.transpose(m, order)
    sp_t = tuple(sp[i] for i in order)
    s, s_t = localization_summary(a, m, sp), localization_summary(a_t, m_t, sp_t)
    for f, v in s.as_row().items():
        assert s_t.as_row()[f] == (v if f == "status" else pytest.approx(v))
    # Flipping a volume (e.g. feet-first vs head-first) changes nothing either.
    s_f = localization_summary(a[::-1, :, ::-1], m[::-1, :, ::-1], sp)
    assert s_f.as_row() == pytest.approx(s.as_row())
    # Transposing without permuting the spacing does change the rings.
    assert localization_summary(a_t, m_t, sp).as_row() != pytest.approx(s.as_row())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ranges_on_random_maps(seed):
    a, m = _random_case(seed)
    s = localization_summary(a, m, (3.0, 0.7, 0.7))
    for f, v in s.as_row().items():
        if f != "status":
            assert 0.0 <= v <= 1.0, f
    assert s.inside + s.ring_0_5 + s.ring_5_10 + s.ring_10_20 <= 1.0 + 1e-12


def test_inputs_are_not_modified():
    a, m = _random_case(0)
    mi = m.astype(np.uint8)
    a0, m0 = a.copy(), mi.copy()
    localization_summary(a, mi, ISO)
    otsu_overlap(a, mi)
    assert np.array_equal(a, a0) and np.array_equal(mi, m0)


def test_a_shared_distance_map_gives_the_same_summaries_without_a_second_transform(monkeypatch):
    from discovery.align.metrics import align, distance_to_mask_mm

    a, m = _random_case(4)
    sp = (2.5, 0.8, 0.8)
    expected_loc, expected_align = localization_summary(a, m, sp), align(a, m, spacing_mm=sp)
    dist = distance_to_mask_mm(m, sp)
    calls = []
    real = loc.distance_to_mask_mm
    monkeypatch.setattr(loc, "distance_to_mask_mm", lambda *args: calls.append(1) or real(*args))
    assert localization_summary(a, m, sp, distance_mm=dist) == expected_loc
    assert align(a, m, spacing_mm=sp, distance_mm=dist) == expected_align
    assert calls == []
    with pytest.raises(ValueError, match="distance_mm must be the float"):
        localization_summary(a, m, sp, distance_mm=dist[:-1])
    with pytest.raises(ValueError, match="mask is empty"):
        distance_to_mask_mm(np.zeros_like(m), sp)


def test_average_ranks_equal_scipy_rankdata_with_ties():
    from scipy.stats import rankdata

    from discovery.align.localization import average_ranks

    rng = np.random.default_rng(4)
    for x in (rng.random(500), rng.integers(0, 4, 500).astype(np.float32), np.zeros(7),
              np.array([2.0]), np.array([]), np.array([3.0, 1.0, 3.0, 2.0])):
        np.testing.assert_array_equal(average_ranks(x), rankdata(x, method="average"))
    np.testing.assert_array_equal(average_ranks(np.array([3.0, 1.0, 3.0, 2.0])),
                                  [3.5, 1.0, 3.5, 2.0])         # by hand
