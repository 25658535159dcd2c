"""Cluster statistics: enrichment p-values, BH, eigengap spectral clustering, benchmark scores."""

import math

import numpy as np
import pytest
from scipy.stats import fisher_exact
from sklearn.metrics import adjusted_rand_score

from discovery.patterns.stats import (
    Enrichment,
    KindMatch,
    adjusted_rand,
    benjamini_hochberg,
    enrichment_test,
    exemplars_one_per_group,
    match_kind,
    rank_by_centrality,
    spectral_eigengap,
    top_k_precision,
)


def _pool(n_pool, k_pool, n_in, k_in):
    """Bool arrays with the given 2x2 counts (positives first, cluster over the ends)."""
    positive = np.zeros(n_pool, bool)
    positive[:k_pool] = True
    in_cluster = np.zeros(n_pool, bool)
    in_cluster[:k_in] = True  # k_in positives in the cluster
    in_cluster[k_pool : k_pool + n_in - k_in] = True  # and n_in - k_in negatives
    return in_cluster, positive


# -------------------------------------------------------------------------- enrichment


def test_symmetric_table_matches_fisher_and_hand_count():
    # 20 nodules, 10 positive, cluster of 10 with 8 positives: [[8, 2], [2, 8]].
    inc, pos = _pool(20, 10, 10, 8)
    e = enrichment_test(inc, pos, n_permutations=5000, seed=1)
    assert isinstance(e, Enrichment)
    assert (e.n_in, e.n_pool, e.k_in, e.k_pool) == (10, 20, 8, 10)
    assert e.share_in == pytest.approx(0.8)
    assert e.share_pool == pytest.approx(0.5)
    assert e.ratio == pytest.approx(1.6)
    # P(X >= 8) + P(X <= 2) = 2 * (45^2 + 10^2 + 1) / C(20, 10)
    by_hand = 2 * (45**2 + 10**2 + 1) / math.comb(20, 10)
    assert e.p_exact == pytest.approx(by_hand, rel=1e-9)
    assert e.p_exact == pytest.approx(fisher_exact([[8, 2], [2, 8]])[1], rel=1e-9)
    assert abs(e.p_value - e.p_exact) < 0.02


def test_asymmetric_table_counts_outcomes_as_far_from_the_mean():
    # 30 nodules, 9 positive, cluster of 8 with 6 positives; E = 2.4, |6 - E| = 3.6, so
    # only x >= 6 is as far (x <= -1.2 is impossible).
    inc, pos = _pool(30, 9, 8, 6)
    e = enrichment_test(inc, pos, n_permutations=5000, seed=0)
    by_hand = sum(math.comb(9, x) * math.comb(21, 8 - x) for x in (6, 7, 8)) / math.comb(30, 8)
    assert e.p_exact == pytest.approx(by_hand, rel=1e-9)
    assert abs(e.p_value - e.p_exact) < 0.02


def test_depletion_is_two_sided():
    # 0 of 10 positives in the cluster mirrors 10 of 10: same p.
    low = enrichment_test(*_pool(20, 10, 10, 0), n_permutations=500)
    high = enrichment_test(*_pool(20, 10, 10, 10), n_permutations=500)
    assert low.p_exact == pytest.approx(high.p_exact, rel=1e-12)
    assert low.p_exact == pytest.approx(2 / math.comb(20, 10), rel=1e-9)
    assert low.ratio == 0.0


def test_perfectly_enriched_cluster_has_tiny_p():
    inc, pos = _pool(200, 20, 20, 20)
    e = enrichment_test(inc, pos, n_permutations=2000, seed=0)
    assert e.share_in == 1.0 and e.ratio == pytest.approx(10.0)
    assert e.p_value == pytest.approx(1 / 2001)
    assert e.p_exact == pytest.approx(1 / math.comb(200, 20), rel=1e-6)


def test_cluster_with_pool_share_has_p_one():
    inc, pos = _pool(20, 10, 10, 5)
    e = enrichment_test(inc, pos, n_permutations=2000, seed=3)
    assert e.ratio == pytest.approx(1.0)
    assert e.p_exact == pytest.approx(1.0)
    assert e.p_value == 1.0  # every permutation is at least as far from E as 0


def test_permutation_close_to_exact_on_a_random_pool():
    rng = np.random.default_rng(5)
    pos = rng.random(400) < 0.3
    inc = rng.random(400) < (0.15 + 0.1 * pos)  # mildly enriched
    e = enrichment_test(inc, pos, n_permutations=5000, seed=2)
    assert 0.0 < e.p_exact < 1.0
    assert abs(e.p_value - e.p_exact) < 0.02


def test_enrichment_is_deterministic_under_a_seed():
    rng = np.random.default_rng(0)
    pos = rng.random(300) < 0.4
    inc = rng.random(300) < 0.2
    a = enrichment_test(inc, pos, n_permutations=300, seed=7)
    b = enrichment_test(inc, pos, n_permutations=300, seed=7)
    assert a == b
    others = {enrichment_test(inc, pos, n_permutations=300, seed=s).p_value for s in range(5)}
    assert len(others) > 1  # the seed is actually used


def test_enrichment_accepts_zero_one_integers():
    inc, pos = _pool(20, 10, 10, 8)
    a = enrichment_test(inc.astype(int), pos.astype(np.int64), n_permutations=200)
    b = enrichment_test(inc, pos, n_permutations=200)
    assert a == b


@pytest.mark.parametrize(
    "inc, pos",
    [
        (np.zeros(10, bool), np.arange(10) < 4),  # empty cluster
        (np.zeros(0, bool), np.zeros(0, bool)),  # empty pool
    ],
)
def test_empty_cluster_or_pool_gives_nan(inc, pos):
    e = enrichment_test(inc, pos, n_permutations=100)
    assert e.n_in == 0
    assert math.isnan(e.share_in) and math.isnan(e.ratio)
    assert math.isnan(e.p_value) and math.isnan(e.p_exact)


def test_empty_pool_has_nan_pool_share():
    e = enrichment_test(np.zeros(0, bool), np.zeros(0, bool))
    assert e.n_pool == 0 and math.isnan(e.share_pool)


@pytest.mark.parametrize("k_pool", [0, 12])
def test_pool_without_variation_gives_p_one(k_pool):
    inc = np.arange(12) < 5
    pos = np.arange(12) < k_pool
    e = enrichment_test(inc, pos, n_permutations=100)
    assert e.p_value == 1.0 and e.p_exact == 1.0
    if k_pool == 0:
        assert e.share_pool == 0.0 and math.isnan(e.ratio)
    else:
        assert e.ratio == pytest.approx(1.0)


def test_cluster_covering_the_pool_gives_p_one():
    e = enrichment_test(np.ones(12, bool), np.arange(12) < 4, n_permutations=100)
    assert e.p_value == 1.0 and e.p_exact == 1.0 and e.ratio == pytest.approx(1.0)


_ONES3 = np.ones(3, bool)


@pytest.mark.parametrize(
    "inc, pos, kwargs, match",
    [
        (_ONES3, np.ones(4, bool), {}, "same length"),
        (np.array([0, 2, 1]), _ONES3, {}, "in_cluster"),
        (np.ones((2, 2), bool), np.ones(4, bool), {}, "1-D"),
        (_ONES3, _ONES3, {"n_permutations": 0}, "n_permutations"),
        (_ONES3, _ONES3, {"seed": -1}, "seed"),
    ],
)
def test_enrichment_rejects_bad_input(inc, pos, kwargs, match):
    with pytest.raises(ValueError, match=match):
        enrichment_test(inc, pos, **kwargs)


# ------------------------------------------------------------------ Benjamini-Hochberg


def test_bh_against_hand_computed_q_values():
    # m = 4 non-NaN: sorted 0.01, 0.03, 0.04, 0.20 -> p*m/rank 0.04, 0.06, 0.0533, 0.20,
    # running minimum from the top -> 0.04, 0.0533, 0.0533, 0.20.
    q = benjamini_hochberg([0.01, 0.04, 0.03, np.nan, 0.20])
    expected = [0.04, 0.16 / 3, 0.16 / 3, np.nan, 0.20]
    np.testing.assert_allclose(q, expected, rtol=1e-12)
    np.testing.assert_allclose(benjamini_hochberg([0.9, 0.8]), [0.9, 0.9])
    np.testing.assert_allclose(benjamini_hochberg([0.5, 0.5, 0.5]), [0.5, 0.5, 0.5])


def test_bh_edge_cases():
    assert benjamini_hochberg([]).shape == (0,)
    assert np.isnan(benjamini_hochberg([np.nan, np.nan])).all()
    with pytest.raises(ValueError, match="1.5"):
        benjamini_hochberg([0.1, 1.5])
    with pytest.raises(ValueError, match="1-D"):
        benjamini_hochberg(np.zeros((2, 2)))


# ------------------------------------------------------------------ spectral clustering


def _blobs(sizes=(50, 30, 20), seed=0):
    rng = np.random.default_rng(seed)
    centres = np.array([[0.0, 0.0, 0.0, 0.0], [10.0, 0.0, 0.0, 0.0], [0.0, 10.0, 0.0, 0.0]])
    z = np.vstack([rng.normal(c, 0.5, (n, 4)) for c, n in zip(centres, sizes)])
    truth = np.repeat(np.arange(len(sizes)), sizes)
    return z, truth


def test_spectral_eigengap_finds_three_blobs():
    z, truth = _blobs()
    labels, k, gaps = spectral_eigengap(z, max_clusters=10, n_neighbors=10, seed=0)
    assert k == 3
    assert labels.dtype == np.int64 and labels.shape == truth.shape
    assert adjusted_rand_score(truth, labels) == 1.0
    np.testing.assert_array_equal(np.bincount(labels), [50, 30, 20])  # numbered by size
    assert gaps.shape == (10,)
    assert np.argmax(gaps) == 2  # lambda_4 - lambda_3: three zero eigenvalues


def test_spectral_eigengap_is_deterministic():
    z, _ = _blobs(seed=4)
    a = spectral_eigengap(z, seed=1)
    b = spectral_eigengap(z, seed=1)
    np.testing.assert_array_equal(a[0], b[0])
    assert a[1] == b[1]
    np.testing.assert_array_equal(a[2], b[2])


def test_spectral_eigengap_small_and_trivial_inputs():
    for n in (0, 1, 2):
        labels, k, gaps = spectral_eigengap(np.zeros((n, 3)))
        assert k == 1 and labels.shape == (n,) and not labels.any() and gaps.shape == (0,)
    # 5 points with n_neighbors clipped to 4: a complete graph, flat spectrum -> one cluster.
    z = np.random.default_rng(0).normal(size=(5, 2))
    labels, k, gaps = spectral_eigengap(z, n_neighbors=50)
    assert k == 1 and not labels.any()
    assert gaps.shape == (4,)
    np.testing.assert_allclose(gaps[1:], 0.0, atol=1e-10)


def test_spectral_eigengap_more_components_than_max_clusters():
    # 12 far-apart tight pairs, 1 neighbour each: 12 components, 12 zero eigenvalues, so
    # every gap is 0 and k falls back to max_clusters; pairs are never split.
    rng = np.random.default_rng(1)
    centres = rng.permutation(np.arange(12))[:, None] * 100.0
    z = np.repeat(centres, 2, axis=0) + rng.normal(0, 0.1, (24, 1))
    labels, k, gaps = spectral_eigengap(z, max_clusters=10, n_neighbors=1)
    assert k == 10
    np.testing.assert_allclose(gaps, 0.0, atol=1e-10)
    assert np.all(labels[0::2] == labels[1::2])
    assert np.unique(labels).size <= 10


@pytest.mark.parametrize(
    "z, kwargs, match",
    [
        (np.zeros(5), {}, "2-D"),
        (np.full((5, 2), np.nan), {}, "finite"),
        (np.zeros((5, 2)), {"max_clusters": 1}, "max_clusters"),
        (np.zeros((5, 2)), {"n_neighbors": 0}, "n_neighbors"),
    ],
)
def test_spectral_eigengap_rejects_bad_input(z, kwargs, match):
    with pytest.raises(ValueError, match=match):
        spectral_eigengap(z, **kwargs)


# ----------------------------------------------------------------- benchmark evaluation


def test_match_kind_hand_computed():
    cluster = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, -1])
    truth = np.array(["a", "a", "b", "a", "a", "b", "b", "none", "none", "a"])
    # kind a: T = {0, 1, 3, 4, 9}.  Cluster 0: P 2/3, R 2/5, F1 1/2.
    # Cluster 1: P 1, R 2/5, F1 4/7 -> best.  Cluster 2: no overlap.
    m = match_kind(cluster, truth, "a")
    assert isinstance(m, KindMatch)
    assert (m.kind, m.cluster, m.n_truth, m.n_cluster) == ("a", 1, 5, 2)
    assert m.precision == pytest.approx(1.0)
    assert m.recall == pytest.approx(0.4)
    assert m.f1 == pytest.approx(4 / 7)
    # kind b: T = {2, 5, 6}.  Cluster 0: F1 1/3.  Cluster 2: P 1/2, R 2/3, F1 4/7.
    m = match_kind(cluster, truth, "b")
    assert (m.cluster, m.n_cluster) == (2, 4)
    assert (m.precision, m.recall, m.f1) == pytest.approx((0.5, 2 / 3, 4 / 7))


def test_match_kind_tie_goes_to_lower_id():
    # Clusters 1 and 0 both have P 1/2, R 1/3, F1 0.4 for kind x; 0 wins.
    m = match_kind([1, 1, 0, 0, -1], ["x", "y", "x", "y", "x"], "x")
    assert m.cluster == 0
    assert (m.precision, m.recall, m.f1) == pytest.approx((0.5, 1 / 3, 0.4))


def test_match_kind_missing_kind_and_no_overlap():
    m = match_kind([0, 0, 1], ["a", "a", "none"], "beads")
    assert m.cluster == -1 and m.n_truth == 0 and m.n_cluster == 0
    assert math.isnan(m.precision) and math.isnan(m.recall) and math.isnan(m.f1)
    m = match_kind([0, 0, -1], ["a", "a", "b"], "b")  # only unclustered regions of b
    assert (m.cluster, m.precision, m.recall, m.f1, m.n_truth) == (-1, 0.0, 0.0, 0.0, 1)
    with pytest.raises(ValueError, match="same length"):
        match_kind([0, 1], ["a"], "a")
    with pytest.raises(ValueError, match=">= -1"):
        match_kind([0, -2], ["a", "a"], "a")


def test_top_k_precision():
    ranked = ["a", "b", "a", "a", "c"]
    assert top_k_precision(ranked, "a", k=2) == pytest.approx(0.5)
    assert top_k_precision(ranked, "a", k=4) == pytest.approx(0.75)
    assert top_k_precision(ranked, "a", k=10) == pytest.approx(0.6)  # min(k, len) = 5
    assert top_k_precision(ranked, "z") == 0.0
    assert math.isnan(top_k_precision([], "a"))
    with pytest.raises(ValueError, match="k must"):
        top_k_precision(ranked, "a", k=0)


def test_adjusted_rand_noise_handling():
    cluster = [0, 0, -1, -1]
    truth = ["a", "a", "b", "b"]
    assert adjusted_rand(cluster, truth, noise="label") == pytest.approx(1.0)
    singletons = adjusted_rand(cluster, truth)
    assert singletons == pytest.approx(adjusted_rand_score(truth, [0, 0, 1, 2]))
    assert singletons < 1.0
    assert adjusted_rand([0, 0, 1, 1], [5, 5, 7, 7]) == pytest.approx(1.0)
    assert math.isnan(adjusted_rand([], []))
    with pytest.raises(ValueError, match="noise"):
        adjusted_rand(cluster, truth, noise="drop")


def test_rank_by_centrality_and_exemplars_golden():
    z = np.array([[0.0], [10.0], [1.0], [-1.0], [-10.0]])  # mean 0
    order = rank_by_centrality(z)
    assert order.dtype == np.int64
    np.testing.assert_array_equal(order, [0, 2, 3, 1, 4])  # ties keep input order
    assert rank_by_centrality(np.zeros((0, 3))).shape == (0,)

    groups = np.array(["p1", "p2", "p1", "p1", "p3", "p2"])
    walk = [3, 0, 4, 1, 2, 5]
    # 3 (p1) kept, 0 (p1) skipped, 4 (p3) kept, 1 (p2) kept, then only repeats.
    assert exemplars_one_per_group(walk, groups, k=5) == [3, 4, 1]
    assert exemplars_one_per_group(walk, groups, k=2) == [3, 4]
    assert exemplars_one_per_group([], groups) == []
    with pytest.raises(ValueError, match="indices"):
        exemplars_one_per_group([0, 6], groups)
