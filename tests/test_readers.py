"""Consensus masks and per-reader alignment on hand-made arrays (worked out in comments)."""

import math

import numpy as np
import pandas as pd
import pytest

from discovery.align.metrics import pointing_game, relevance_mass, relevance_rank
from discovery.align.metrics import AlignThresholds
from discovery.align.readers import METRIC_COLUMNS, consensus_mask, reader_metrics

ISO = (1.0, 1.0, 1.0)


def _line(*values):
    return np.array(values).reshape(1, 1, -1)


def _four_readers():
    # A 1x1x5 line; x =        0  1  2  3  4
    return [
        _line(1, 1, 1, 0, 0).astype(bool),  # reader 1
        _line(0, 1, 1, 1, 0).astype(bool),  # reader 2
        _line(0, 0, 1, 1, 0).astype(bool),  # reader 3
        _line(0, 0, 1, 0, 0).astype(bool),  # reader 4
    ]  # votes:                1  2  4  2  0


# ------------------------------------------------------------------------ consensus


@pytest.mark.parametrize(
    "level, expected",
    [
        (0.25, (1, 1, 1, 1, 0)),  # >= 1 vote: the union
        (0.26, (0, 1, 1, 1, 0)),  # >= 1.04 votes, i.e. 2
        (0.5, (0, 1, 1, 1, 0)),  # >= 2 votes: 2 of 4 is in
        (0.75, (0, 0, 1, 0, 0)),  # >= 3 votes
        (1.0, (0, 0, 1, 0, 0)),  # all 4: the intersection
    ],
)
def test_consensus_of_four_readers(level, expected):
    got = consensus_mask(_four_readers(), level=level)
    assert got.dtype == bool and got.shape == (1, 1, 5)
    assert np.array_equal(got, _line(*expected).astype(bool))


def test_consensus_level_rounding_is_forgiven():
    r = [_line(1, 1, 0), _line(1, 0, 0), _line(0, 1, 1)]  # votes 2 2 1 of 3
    # 1/3 and 2/3 are not exact in binary; 1 of 3 must still pass 1/3 and 2 of 3 pass 2/3.
    assert np.array_equal(consensus_mask(r, level=1 / 3), _line(1, 1, 1).astype(bool))
    assert np.array_equal(consensus_mask(r, level=2 / 3), _line(1, 1, 0).astype(bool))
    assert np.array_equal(consensus_mask(r, level=0.67), _line(0, 0, 0).astype(bool))


def test_consensus_accepts_a_4d_array_and_integer_masks():
    readers = _four_readers()
    stacked = np.stack(readers).astype(np.uint8) * 3  # nonzero = inside
    for level in (0.25, 0.5, 0.75):
        assert np.array_equal(
            consensus_mask(stacked, level=level), consensus_mask(readers, level=level)
        )


def test_consensus_is_reader_order_free_and_one_reader_is_itself():
    readers = _four_readers()
    for level in (0.25, 0.5, 0.75, 1.0):
        assert np.array_equal(
            consensus_mask(readers[::-1], level=level), consensus_mask(readers, level=level)
        )
        assert np.array_equal(consensus_mask(readers[:1], level=level), readers[0])


def test_consensus_with_an_empty_reader_counts_it():
    readers = _four_readers()[:3] + [np.zeros((1, 1, 5), bool)]
    # votes 1 2 3 2 0 -> at 0.75 (3 votes) only x = 2; at 1.0 nothing.
    assert np.array_equal(consensus_mask(readers, level=0.75), _line(0, 0, 1, 0, 0).astype(bool))
    assert not consensus_mask(readers, level=1.0).any()


@pytest.mark.parametrize(
    "masks, level, match",
    [
        ([], 0.5, "at least one reader"),
        (np.zeros((0, 1, 1, 5), bool), 0.5, "at least one reader"),
        ([np.ones((1, 1, 5), bool), np.ones((1, 1, 4), bool)], 0.5, r"reader 2 has \(1, 1, 4\)"),
        ([np.ones((1, 5), bool)], 0.5, "3-D"),
        (np.ones((1, 1, 5), bool), 0.5, r"\(R, z, y, x\)"),  # one mask, not a stack
        ([np.ones((1, 1, 5)) * 0.5], 0.5, "bool or integer"),
        (None, 0.5, "sequence"),
        ([np.ones((1, 1, 5), bool)], 0.0, r"\(0, 1\]"),
        ([np.ones((1, 1, 5), bool)], 1.5, r"\(0, 1\]; received 1.5"),
        ([np.ones((1, 1, 5), bool)], math.nan, r"\(0, 1\]"),
        ([np.ones((1, 1, 5), bool)], "half", r"\(0, 1\]; received 'half'"),
    ],
)
def test_consensus_bad_inputs_raise(masks, level, match):
    with pytest.raises(ValueError, match=match):
        consensus_mask(masks, level=level)


# ------------------------------------------------------------------------ reader metrics


def test_reader_metrics_by_hand():
    a = _line(0.0, 1.0, 3.0, 2.0, 0.0)  # total 6, peak at x = 2
    rows = reader_metrics(a, _four_readers(), ISO)
    assert [r["reference"] for r in rows] == [
        "reader_1", "reader_2", "reader_3", "reader_4",
        "consensus_0.25", "consensus_0.50", "consensus_0.75",
    ]  # fmt: skip
    assert all(tuple(r) == METRIC_COLUMNS for r in rows)
    got = {r["reference"]: (r["n_voxels"], r["rma"], r["rra"], r["pointing_hit"]) for r in rows}
    # reader 1 {0,1,2}: RMA (0+1+3)/6; top-3 = x2, x3, x1 -> 2 of 3 in; peak x2 in.
    assert got["reader_1"] == (3, pytest.approx(4 / 6), pytest.approx(2 / 3), 1.0)
    # reader 2 {1,2,3}: all 6 of 6; top-3 all in.
    assert got["reader_2"] == (3, pytest.approx(1.0), 1.0, 1.0)
    # reader 3 {2,3}: 5/6; top-2 = x2, x3.
    assert got["reader_3"] == (2, pytest.approx(5 / 6), 1.0, 1.0)
    # reader 4 {2}: 3/6; top-1 = x2.
    assert got["reader_4"] == (1, pytest.approx(0.5), 1.0, 1.0)
    # consensus 0.25 {0,1,2,3}: 6/6; top-4 = x2, x3, x1, then x0 (the 0 tie goes to x0).
    assert got["consensus_0.25"] == (4, pytest.approx(1.0), 1.0, 1.0)
    assert got["consensus_0.50"] == got["reader_2"]
    assert got["consensus_0.75"] == got["reader_4"]
    assert [r["level"] for r in rows[4:]] == [0.25, 0.5, 0.75]
    assert all(math.isnan(r["level"]) for r in rows[:4])


def test_reader_metrics_pointing_tolerance_is_in_mm():
    a = _line(0.0, 0.0, 0.0, 0.0, 1.0)  # peak at x = 4
    readers = [_line(1, 0, 0, 0, 0), _line(0, 0, 1, 0, 0)]  # 4 and 2 columns from the peak
    sp = (1.0, 1.0, 1.5)  # -> 6 mm and 3 mm
    hits = [r["pointing_hit"] for r in reader_metrics(a, readers, sp, levels=(), tolerance_mm=4)]
    assert hits == [0.0, 1.0]  # 6 mm misses, 3 mm hits
    default = AlignThresholds().pointing_tolerance_mm  # the calibrated default (10 mm)
    hits = [r["pointing_hit"] for r in reader_metrics(a, readers, sp, levels=())]
    assert hits == [float(default >= 6.0), float(default >= 3.0)]
    hits = [r["pointing_hit"] for r in reader_metrics(a, readers, sp, levels=(), tolerance_mm=6)]
    assert hits == [1.0, 1.0]
    hits = [r["pointing_hit"] for r in reader_metrics(a, readers, sp, levels=(), tolerance_mm=0)]
    assert hits == [0.0, 0.0]


def test_reader_metrics_match_align_functions_and_make_a_dataframe():
    rng = np.random.default_rng(4)
    a = rng.random((4, 6, 6)) ** 3
    readers = [np.zeros(a.shape, bool) for _ in range(3)]
    readers[0][1:3, 2:4, 2:4] = True
    readers[1][1:3, 2:5, 1:4] = True
    readers[2][2:4, 3:5, 2:5] = True
    sp = (2.5, 0.7, 0.7)
    rows = reader_metrics(a, readers, sp, levels=(0.5,), tolerance_mm=1.0)
    refs = list(readers) + [consensus_mask(readers, level=0.5)]
    for row, m in zip(rows, refs):
        assert row["rma"] == relevance_mass(a, m)
        assert row["rra"] == relevance_rank(a, m)
        assert row["pointing_hit"] == pointing_game(a, m, sp, tolerance_mm=1.0)
    df = pd.DataFrame(rows)
    assert list(df.columns) == list(METRIC_COLUMNS) and len(df) == 4


def test_reader_metrics_empty_references_are_nan():
    a = _line(0.0, 1.0, 3.0, 2.0, 0.0)
    readers = [_line(0, 0, 1, 0, 0).astype(bool), np.zeros((1, 1, 5), bool)]
    rows = reader_metrics(a, readers, ISO, levels=(0.5, 1.0))
    by_ref = {r["reference"]: r for r in rows}
    for ref in ("reader_2", "consensus_1.00"):  # a reader who drew nothing; no common voxel
        r = by_ref[ref]
        assert r["n_voxels"] == 0
        assert math.isnan(r["rma"]) and math.isnan(r["rra"]) and math.isnan(r["pointing_hit"])
    assert by_ref["consensus_0.50"]["n_voxels"] == 1  # 1 of 2 readers is half
    # All-zero attribution: NaN against every reference.
    rows = reader_metrics(np.zeros((1, 1, 5)), readers, ISO)
    assert all(math.isnan(r["rma"]) and math.isnan(r["pointing_hit"]) for r in rows)


def test_reader_metrics_invariants():
    rng = np.random.default_rng(5)
    a = rng.random((3, 5, 5))
    readers = [rng.random(a.shape) < p for p in (0.2, 0.3, 0.4)]
    rows = reader_metrics(a, readers, ISO)
    # Permuting the readers permutes the reader rows and leaves consensus rows unchanged.
    perm = (2, 0, 1)
    rows_p = reader_metrics(a, [readers[i] for i in perm], ISO)
    metrics = ("n_voxels", "rma", "rra", "pointing_hit")
    for j, i in enumerate(perm):
        assert [rows_p[j][k] for k in metrics] == [rows[i][k] for k in metrics]
    for r, rp in zip(rows[3:], rows_p[3:]):
        assert r == rp
    # Positive scaling changes nothing.
    for r, rs in zip(rows, reader_metrics(a * 37.5, readers, ISO)):
        assert (rs["rra"], rs["pointing_hit"], rs["n_voxels"]) == (
            r["rra"], r["pointing_hit"], r["n_voxels"],
        )  # fmt: skip
        assert rs["rma"] == pytest.approx(r["rma"], rel=1e-12)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"levels": (0.5, 0.501)}, "differ at 2 decimals"),
        ({"levels": (0.0,)}, r"\(0, 1\]"),
        ({"levels": 0.5}, "levels must be a sequence"),
        ({"tolerance_mm": -1.0}, "tolerance_mm"),
    ],
)
def test_reader_metrics_bad_options_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        reader_metrics(_line(0.0, 1.0, 3.0, 2.0, 0.0), _four_readers(), ISO, **kwargs)


def test_reader_metrics_bad_inputs_raise():
    with pytest.raises(ValueError, match="same"):
        reader_metrics(np.ones((1, 1, 6)), _four_readers(), ISO)
    with pytest.raises(ValueError, match="ReLU"):
        reader_metrics(_line(0.0, -1.0, 3.0, 2.0, 0.0), _four_readers(), ISO)
    with pytest.raises(ValueError, match="spacing_mm"):
        reader_metrics(_line(0.0, 1.0, 3.0, 2.0, 0.0), _four_readers(), (1.0, 1.0))
    with pytest.raises(ValueError, match="at least one reader"):
        reader_metrics(_line(0.0, 1.0, 3.0, 2.0, 0.0), [], ISO)
