"""Alignment metrics on hand-made arrays (answers worked out by hand in comments)."""

import math

import numpy as np
import pytest

from discovery.align.metrics import (
    AlignThresholds,
    Alignment,
    align,
    near_mass,
    peak_distance_mm,
    pointing_game,
    relevance_mass,
    relevance_rank,
    verdict_agreement,
)

ISO = (1.0, 1.0, 1.0)


def _grid_1x3x3():
    # z = 0 slice:      x=0 x=1 x=2
    #           y=0  [   1,  2,  0 ]
    #           y=1  [   0,  5,  1 ]
    #           y=2  [   0,  0,  1 ]      total = 10, peak 5 at (0, 1, 1)
    return np.array([[[1.0, 2.0, 0.0], [0.0, 5.0, 1.0], [0.0, 0.0, 1.0]]])


def _mask(shape, *voxels):
    m = np.zeros(shape, dtype=bool)
    for v in voxels:
        m[v] = True
    return m


# ------------------------------------------------------------------------ golden values


def test_rma_rra_on_1x3x3():
    a = _grid_1x3x3()
    m = _mask(a.shape, (0, 0, 1), (0, 1, 1))
    # RMA = (2 + 5) / 10; K = 2 and the two largest values (5, 2) are both in M.
    assert relevance_mass(a, m) == pytest.approx(0.7)
    assert relevance_rank(a, m) == 1.0

    m = _mask(a.shape, (0, 1, 1), (0, 2, 2))
    # RMA = (5 + 1) / 10; top-2 = {5 at (1,1) in M, 2 at (0,1) not in M} -> 1/2.
    assert relevance_mass(a, m) == pytest.approx(0.6)
    assert relevance_rank(a, m) == 0.5


def test_rra_ties_break_in_c_order():
    a = np.zeros((1, 3, 3))
    a[0, 0, 0] = a[0, 2, 2] = 1.0
    # K = 1; the tie between flat index 0 and 8 goes to index 0.
    assert relevance_rank(a, _mask(a.shape, (0, 0, 0))) == 1.0
    assert relevance_rank(a, _mask(a.shape, (0, 2, 2))) == 0.0


def test_pointing_and_peak_distance_on_1x3x3():
    a = _grid_1x3x3()
    m = _mask(a.shape, (0, 1, 1))
    assert pointing_game(a, m, ISO) == 1.0
    assert peak_distance_mm(a, m, ISO) == 0.0

    m = _mask(a.shape, (0, 0, 0))
    # Peak (0,1,1) to (0,0,0): dy = 1 * 0.5 mm, dx = 1 * 0.7 mm -> sqrt(0.25 + 0.49).
    sp = (2.0, 0.5, 0.7)
    assert peak_distance_mm(a, m, sp) == pytest.approx(math.sqrt(0.74))
    assert pointing_game(a, m, sp) == 0.0
    assert pointing_game(a, m, sp, tolerance_mm=0.87) == 1.0  # sqrt(0.74) = 0.8602
    assert pointing_game(a, m, sp, tolerance_mm=0.86) == 0.0


def test_pointing_ties_use_first_voxel_in_c_order():
    a = np.zeros((1, 3, 3))
    a[0, 0, 2] = a[0, 2, 0] = 3.0  # (0,0,2) comes first in C order
    assert pointing_game(a, _mask(a.shape, (0, 0, 2)), ISO) == 1.0
    assert pointing_game(a, _mask(a.shape, (0, 2, 0)), ISO) == 0.0


def test_anisotropic_spacing_changes_the_pointing_outcome():
    a = np.zeros((1, 3, 3))
    a[0, 1, 1] = 1.0
    m = _mask(a.shape, (0, 0, 0))
    # One row and one column away: sqrt(3^2 + 1^2) = 3.16 mm with (dy, dx) = (3, 1) ...
    assert peak_distance_mm(a, m, (1.0, 3.0, 1.0)) == pytest.approx(math.sqrt(10))
    assert pointing_game(a, m, (1.0, 3.0, 1.0), tolerance_mm=3.5) == 1.0
    # ... but sqrt(1^2 + 4^2) = 4.12 mm with (dy, dx) = (1, 4).
    assert peak_distance_mm(a, m, (1.0, 1.0, 4.0)) == pytest.approx(math.sqrt(17))
    assert pointing_game(a, m, (1.0, 1.0, 4.0), tolerance_mm=3.5) == 0.0


def test_near_mass_uses_physical_margin_inclusive():
    a = np.ones((1, 1, 5))
    m = _mask(a.shape, (0, 0, 0))
    sp = (1.0, 1.0, 2.0)  # distances along x: 0, 2, 4, 6, 8 mm
    assert near_mass(a, m, sp, margin_mm=4.0) == pytest.approx(3 / 5)
    assert near_mass(a, m, sp, margin_mm=3.9) == pytest.approx(2 / 5)
    assert near_mass(a, m, sp, margin_mm=0.0) == pytest.approx(relevance_mass(a, m))


# --------------------------------------------------------------------------- degenerate


def test_empty_mask_gives_nan_everywhere_and_no_mask_verdict():
    a = _grid_1x3x3()
    m = np.zeros(a.shape, dtype=bool)
    assert math.isnan(relevance_mass(a, m))
    assert math.isnan(relevance_rank(a, m))
    assert math.isnan(pointing_game(a, m, ISO, tolerance_mm=4.0))
    assert math.isnan(peak_distance_mm(a, m, ISO))
    assert math.isnan(near_mass(a, m, ISO, margin_mm=5.0))
    r = align(a, m, spacing_mm=ISO)
    assert r.verdict == "no-mask"
    assert r.status == "empty mask: no annotated voxels for this nodule"
    for v in (r.rma, r.rra, r.pointing_hit, r.peak_distance_mm, r.near_mass):
        assert math.isnan(v)


def test_zero_attribution_gives_no_attribution_verdict():
    a = np.zeros((1, 3, 3))
    m = _mask(a.shape, (0, 1, 1))
    r = align(a, m, spacing_mm=ISO)
    assert r.verdict == "no-attribution"
    assert r.status == "attribution is zero everywhere"
    assert math.isnan(r.rma) and math.isnan(r.pointing_hit) and math.isnan(r.near_mass)
    assert math.isnan(relevance_mass(a, m)) and math.isnan(relevance_rank(a, m))
    # Empty mask takes precedence over zero attribution.
    assert align(a, np.zeros(a.shape, bool), spacing_mm=ISO).verdict == "no-mask"


def test_integer_mask_nonzero_is_inside():
    a = _grid_1x3x3()
    m = np.zeros(a.shape, dtype=np.uint8)
    m[0, 0, 1] = 3
    m[0, 1, 1] = 1
    assert relevance_mass(a, m) == pytest.approx(0.7)


# --------------------------------------------------------------------------- validation


def test_negative_attribution_raises_with_advice():
    a = _grid_1x3x3()
    a[0, 0, 0] = -0.1
    with pytest.raises(ValueError, match="ReLU"):
        align(a, _mask(a.shape, (0, 1, 1)), spacing_mm=ISO)
    with pytest.raises(ValueError, match="non-negative"):
        relevance_mass(a, _mask(a.shape, (0, 1, 1)))


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="same"):
        relevance_mass(np.ones((1, 3, 3)), np.ones((1, 3, 4), bool))
    with pytest.raises(ValueError, match="same"):
        align(np.ones((2, 3, 3)), np.ones((1, 3, 3), bool), spacing_mm=ISO)


@pytest.mark.parametrize(
    "attr, mask, spacing",
    [
        (np.full((1, 2, 2), np.nan), np.ones((1, 2, 2), bool), ISO),  # non-finite attr
        (np.ones((1, 2, 2)), np.ones((1, 2, 2)) * 0.5, ISO),  # float mask
        (np.ones((2, 2)), np.ones((2, 2), bool), ISO),  # not 3-D
        (np.ones((1, 2, 2)), np.ones((1, 2, 2), bool), (1.0, 0.0, 1.0)),  # zero spacing
        (np.ones((1, 2, 2)), np.ones((1, 2, 2), bool), (1.0, 1.0)),  # 2 spacings
    ],
)
def test_bad_inputs_raise(attr, mask, spacing):
    with pytest.raises(ValueError):
        align(attr, mask, spacing_mm=spacing)


def test_bad_thresholds_raise():
    with pytest.raises(ValueError):
        AlignThresholds(pointing_tolerance_mm=-1.0)
    with pytest.raises(ValueError):
        AlignThresholds(aligned_near_mass=1.5)
    with pytest.raises(ValueError):
        AlignThresholds(aligned_near_mass=0.2, offmask_near_mass=0.3)


# ------------------------------------------------------------------------------ verdict


def _line(n=20):
    """A 1x1xn line, 1 mm voxels, mask at x = 0 (distance to mask = x mm)."""
    a = np.zeros((1, 1, n))
    return a, _mask(a.shape, (0, 0, 0))


def test_verdict_aligned():
    a, m = _line()
    a[0, 0, 0] = 2.0
    a[0, 0, 1:4] = 1.0  # all within 5 mm
    r = align(a, m, spacing_mm=ISO)
    assert isinstance(r, Alignment)
    assert (r.verdict, r.status) == ("aligned", "ok")
    assert r.pointing_hit == 1.0 and r.peak_distance_mm == 0.0 and r.near_mass == 1.0
    assert r.rma == pytest.approx(2 / 5) and r.rra == 1.0


def test_verdict_off_mask():
    a, m = _line()
    a[0, 0, 15] = 1.0  # 15 mm away, nothing within the 10 mm margin
    r = align(a, m, spacing_mm=ISO)
    assert r.verdict == "off-mask"
    assert r.pointing_hit == 0.0 and r.peak_distance_mm == 15.0 and r.near_mass == 0.0


def test_verdict_partial_hit_but_little_near_mass():
    a, m = _line()
    a[0, 0, 3] = 1.0  # peak 3 mm away: hit with the 10 mm tolerance
    a[0, 0, 11:20] = 0.5  # mass 4.5 beyond the 10 mm margin -> near mass 1 / 5.5
    r = align(a, m, spacing_mm=ISO)
    assert r.pointing_hit == 1.0 and r.near_mass == pytest.approx(1 / 5.5)
    assert r.verdict == "partial"


def test_verdict_partial_miss_but_much_near_mass():
    a, m = _line()
    a[0, 0, 12] = 1.0  # peak 12 mm away: miss
    a[0, 0, 0:4] = 0.9  # near mass 3.6 / 4.6
    r = align(a, m, spacing_mm=ISO)
    assert r.pointing_hit == 0.0 and r.near_mass == pytest.approx(3.6 / 4.6)
    assert r.verdict == "partial"


def test_thresholds_change_the_verdict():
    a, m = _line()
    a[0, 0, 6] = 1.0  # 6 mm: a hit at the 10 mm tolerance, a miss at the former 4 mm
    assert align(a, m, spacing_mm=ISO).verdict == "aligned"
    former = AlignThresholds(pointing_tolerance_mm=4.0, near_margin_mm=5.0,
                             aligned_near_mass=0.5, offmask_near_mass=0.25)
    assert align(a, m, spacing_mm=ISO, thresholds=former).verdict == "off-mask"


def test_describe_verdicts_says_what_align_does():
    from discovery.align.metrics import describe_verdicts

    text = describe_verdicts()
    assert "within 10 mm of the mask" in text and "at least 60%" in text
    assert "less than 30%" in text
    t = AlignThresholds(pointing_tolerance_mm=4.0, near_margin_mm=5.0, aligned_near_mass=0.5,
                        offmask_near_mass=0.25)
    assert "within 4 mm of the mask" in describe_verdicts(t) and "5 mm of it" in describe_verdicts(t)


def test_align_matches_single_metric_functions():
    rng = np.random.default_rng(1)
    a = rng.random((5, 6, 7)) ** 4
    m = np.zeros(a.shape, bool)
    m[1:3, 2:4, 2:5] = True
    sp = (2.5, 0.8, 0.8)
    r = align(a, m, spacing_mm=sp)
    t = AlignThresholds()
    assert r.rma == pytest.approx(relevance_mass(a, m))
    assert r.rra == relevance_rank(a, m)
    assert r.peak_distance_mm == pytest.approx(peak_distance_mm(a, m, sp))
    assert r.pointing_hit == pointing_game(a, m, sp, tolerance_mm=t.pointing_tolerance_mm)
    assert r.near_mass == pytest.approx(near_mass(a, m, sp, margin_mm=t.near_margin_mm))


# ---------------------------------------------------------------------------- invariants


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_invariants_on_random_maps(seed):
    rng = np.random.default_rng(seed)
    a = rng.random((4, 5, 6))
    m = rng.random(a.shape) < 0.2
    sp = (3.0, 0.7, 0.7)
    assert 0.0 <= relevance_mass(a, m) <= 1.0
    assert 0.0 <= relevance_rank(a, m) <= 1.0
    assert 0.0 <= near_mass(a, m, sp, margin_mm=2.0) <= 1.0

    full = np.ones(a.shape, bool)
    assert relevance_mass(a, full) == pytest.approx(1.0)
    assert relevance_rank(a, full) == 1.0
    r_full = align(a, full, spacing_mm=sp)
    assert (r_full.verdict, r_full.near_mass, r_full.peak_distance_mm) == ("aligned", 1.0, 0.0)

    r = align(a, m, spacing_mm=sp)
    r_scaled = align(a * 37.5, m, spacing_mm=sp)
    assert r_scaled.verdict == r.verdict
    assert r_scaled.rra == r.rra
    assert r_scaled.pointing_hit == r.pointing_hit
    assert r_scaled.peak_distance_mm == r.peak_distance_mm
    assert r_scaled.rma == pytest.approx(r.rma, rel=1e-12)
    assert r_scaled.near_mass == pytest.approx(r.near_mass, rel=1e-12)


def test_inputs_are_not_modified():
    a = _grid_1x3x3()
    m = _mask(a.shape, (0, 1, 1))
    a0, m0 = a.copy(), m.copy()
    align(a, m, spacing_mm=ISO)
    assert np.array_equal(a, a0) and np.array_equal(m, m0)


# ----------------------------------------------------------------- agreement with reliance


def test_verdict_agreement_hand_computed():
    verdicts = ["aligned", "aligned", "partial", "off-mask", "aligned", "partial", "aligned"]
    rests = [1.0, 0.0, 1.0, 0.0, np.nan, 0.0, 1.0]
    predicted = [1, 1, 1, 1, 1, 1, 0]  # the last one is predicted benign: left out
    a = verdict_agreement(verdicts, rests, predicted)
    assert (a.n, a.n_rests) == (5, 2)  # the NaN row is left out too
    assert a.sensitivity == 0.5 and a.specificity == pytest.approx(2 / 3)
    assert a.balanced_accuracy == pytest.approx((0.5 + 2 / 3) / 2)
    none = verdict_agreement(["aligned"], [1.0], [1])
    assert none.sensitivity == 1.0 and math.isnan(none.specificity)
    assert math.isnan(none.balanced_accuracy)
    with pytest.raises(ValueError, match="one length"):
        verdict_agreement(["aligned"], [1.0, 0.0], [1])


def test_describe_agreement_states_the_figure_and_warns_below_the_target():
    from discovery.align.metrics import MIN_VERDICT_AGREEMENT, Agreement, describe_agreement

    verdicts = ["aligned", "aligned", "partial", "off-mask", "aligned", "partial"]
    text, weak = describe_agreement(verdict_agreement(verdicts, [1, 0, 1, 0, np.nan, 0], [1] * 6))
    # 5 compared, 2 rest on the nodule; sensitivity 1/2, specificity 2/3, BA 0.58
    assert weak and "Of 5 predicted-malignant nodules" in text and "2 rest on" in text
    assert "balanced accuracy 0.58 (sensitivity 0.50, specificity 0.67)" in text
    assert "weak evidence" in text
    good = Agreement(balanced_accuracy=MIN_VERDICT_AGREEMENT, sensitivity=0.9, specificity=0.9,
                     n=20, n_rests=10)
    text, weak = describe_agreement(good)
    assert not weak and "balanced accuracy 0.90" in text and "weak" not in text
    # one class only: the one share that can be measured decides
    text, weak = describe_agreement(verdict_agreement(["aligned", "partial"], [0, 0], [1, 1]))
    assert weak and "0 rest on" in text and "50% of them are nevertheless 'aligned'" in text
    text, weak = describe_agreement(verdict_agreement(["aligned"], [1], [1]))
    assert not weak and "1 rests on" in text and "100% of them are 'aligned'" in text
    text, weak = describe_agreement(verdict_agreement(["aligned"], [np.nan], [1]))
    assert not weak and "could not be measured" in text


def test_agreement_reading_of_a_findings_table():
    import pandas as pd

    from discovery.patterns.outcomes import agreement_reading

    findings = pd.DataFrame({
        "status": ["ok", "ok", "ok", "ok", "failed", "ok"],
        "verdict": ["aligned", "partial", "aligned", "off-mask", "aligned", "aligned"],
        "predicted_label": [1, 1, 1, 1, 1, 0],
        "rests_on_nodule": [1.0, 1.0, 0.0, 0.0, 0.0, 1.0],
    })
    # compared: the four scored predicted-malignant rows; sensitivity 1/2, specificity 1/2
    text, weak = agreement_reading(findings)
    assert weak and "Of 4 predicted-malignant nodules" in text
    assert "balanced accuracy 0.50 (sensitivity 0.50, specificity 0.50)" in text
    text, weak = agreement_reading(findings.drop(columns="rests_on_nodule"))
    assert not weak and "not measured for these results" in text
    with pytest.raises(ValueError, match="verdict"):
        agreement_reading(findings.drop(columns="verdict"))
