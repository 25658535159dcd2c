"""Gaussian-mixture clustering (discovery.patterns.mixture): hand-computed merges, a tight
mode inside a spread background, a stretched group kept whole, and the clustering method
``"gmm"`` of discovery.patterns.clustering."""

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import adjusted_rand_score

from discovery.patterns.clustering import PatternSettings, cluster_regions
from discovery.patterns.mixture import (
    DEMP_CUTOFF,
    clusterwise_jaccard,
    gaussian_mixture_bic,
    keep_medoid,
    medoid_partition,
    merge_overlapping,
    mixture_selections,
)
from tests.test_patterns import _cohort


# ---------------------------------------------------------------------- merge_overlapping


def test_merge_by_hand_computed_misclassification():
    # Components 0 and 1 overlap: of component 0's mass (0.9 + 0.6 + 0.1 + 0 = 1.6), the
    # point assigned to 1 carries 0.1 -> p(1 | 0) = 0.1 / 1.6 = 0.0625; of component 1's
    # (0.1 + 0.4 + 0.9 + 0 = 1.4), the points assigned to 0 carry 0.5 -> p(0 | 1) = 0.357.
    # Component 2 owns the last point alone: p = 0 with both.
    tau = np.array([[0.9, 0.1, 0.0],
                    [0.6, 0.4, 0.0],
                    [0.1, 0.9, 0.0],
                    [0.0, 0.0, 1.0]])
    # 0.357 >= 0.3: 0 and 1 merge; then nothing overlaps component 2
    np.testing.assert_array_equal(merge_overlapping(tau, cutoff=0.3), [0, 0, 0, 1])
    # 0.357 < 0.4: nothing merges; ids by decreasing size, ties by first appearance
    np.testing.assert_array_equal(merge_overlapping(tau, cutoff=0.4), [0, 0, 1, 2])


def test_merge_keeps_separate_components_and_is_label_order_free():
    tau = np.eye(3)[[2, 2, 2, 0, 0, 1]]
    np.testing.assert_array_equal(merge_overlapping(tau, cutoff=DEMP_CUTOFF),
                                  [0, 0, 0, 1, 1, 2])
    np.testing.assert_array_equal(merge_overlapping(np.ones((4, 1))), [0, 0, 0, 0])


@pytest.mark.parametrize("tau, cutoff", [(np.ones(3), 0.1), (np.full((2, 2), np.nan), 0.1),
                                         (-np.ones((2, 2)), 0.1), (np.ones((2, 2)), 0.0),
                                         (np.ones((2, 2)), 1.5)])
def test_merge_rejects_bad_input(tau, cutoff):
    with pytest.raises(ValueError, match="posteriors|cutoff"):
        merge_overlapping(tau, cutoff=cutoff)


# ------------------------------------------------------------------ gaussian_mixture_bic


def _mode_in_background(seed=0, n_background=400, n_mode=60):
    """A wide 3-D background (two broad overlapping blobs) and a tight mode of 60 points
    inside its spread (1.5 background SDs from its centre): truth 1 for the mode."""
    rng = np.random.default_rng(seed)
    bg = np.vstack([rng.normal([0, 0, 0], 1.0, (n_background // 2, 3)),
                    rng.normal([1.0, 0.5, 0], 1.2, (n_background // 2, 3))])
    mode = rng.normal([-1.5, 1.5, 1.0], 0.12, (n_mode, 3))
    return np.vstack([bg, mode]), np.r_[np.zeros(len(bg), int), np.ones(n_mode, int)]


def _f1_of_best_cluster(labels, truth):
    best = 0.0
    for c in np.unique(labels[labels >= 0]):
        tp = np.sum((labels == c) & (truth == 1))
        p, r = tp / np.sum(labels == c), tp / np.sum(truth == 1)
        best = max(best, 0.0 if tp == 0 else 2 * p * r / (p + r))
    return best


def test_tight_mode_inside_a_spread_background_is_its_own_cluster():
    from sklearn.cluster import HDBSCAN

    for seed in range(3):
        z, truth = _mode_in_background(seed)
        labels, k = gaussian_mixture_bic(z, seed=0)
        assert _f1_of_best_cluster(labels, truth) >= 0.95, seed
        assert k >= 2
        # the background is not split into many pieces: at most 3 clusters in all
        assert labels.max() + 1 <= 3
        # what the mixture is for: density-based clustering finds no such cluster here
        hdb = HDBSCAN(min_cluster_size=5, copy=True).fit(z).labels_
        assert _f1_of_best_cluster(hdb, truth) < _f1_of_best_cluster(labels, truth)


def test_overlapping_components_of_a_stretched_group_are_merged():
    # one group spread uniformly along a 12-unit line (no Gaussian fits it: BIC takes
    # several components) and a compact group far from it
    rng = np.random.default_rng(3)
    line = np.c_[rng.uniform(0, 12, 300), rng.normal(0, 0.2, 300)]
    blob = rng.normal([6, 8], 0.3, (80, 2))
    z = np.vstack([line, blob])
    truth = np.r_[np.zeros(300, int), np.ones(80, int)]
    unmerged, k = gaussian_mixture_bic(z, cutoff=None)
    assert k >= 3 and unmerged.max() + 1 == k        # the line took several components
    merged, k2 = gaussian_mixture_bic(z)
    assert k2 == k
    assert adjusted_rand_score(truth, merged) == 1.0


def test_mixture_is_seeded_and_handles_tiny_inputs():
    z, _ = _mode_in_background(1)
    a, ka = gaussian_mixture_bic(z, seed=4)
    b, kb = gaussian_mixture_bic(z, seed=4)
    np.testing.assert_array_equal(a, b)
    assert ka == kb
    np.testing.assert_array_equal(gaussian_mixture_bic(np.zeros((1, 2)))[0], [0])
    assert gaussian_mixture_bic(np.zeros((0, 2)))[0].shape == (0,)
    labels, k = gaussian_mixture_bic(z, max_components=1)
    assert k == 1 and (labels == 0).all()


def test_medoid_partition_by_hand():
    a = [0, 0, 1, 1]
    b = [0, 1, 0, 1]          # against a: every cell of the 2 x 2 table holds one item
    relabelled = [1, 1, 0, 0]
    # ARI(a, b) = (0 - 2 * 2 / 6) / ((2 + 2) / 2 - 2 * 2 / 6) = -0.5; ARI(a, relabelled) = 1
    index, agreement = medoid_partition([a, b, relabelled])
    assert index == 0                                 # tie with the third: the first
    assert agreement == pytest.approx((1.0 - 0.5) / 2)
    assert medoid_partition([b, a, relabelled])[0] == 1
    assert medoid_partition([a, a]) == (0, pytest.approx(1.0))
    for bad in ([a], [a, [0, 1, 0]], [np.zeros((2, 2)), np.zeros((2, 2))]):
        with pytest.raises(ValueError, match="two or more 1-D label arrays"):
            medoid_partition(bad)


def test_several_runs_keep_the_medoid_of_the_single_runs():
    """runs=R is the medoid of the single selections from seeds seed .. seed + R - 1."""
    rng = np.random.default_rng(5)
    # three overlapping groups: the selections from different seeds disagree; from seed 1
    # the first finds two clusters, the next two find one (the medoid is the second)
    z = np.vstack([rng.normal(c, 0.9, (60, 2)) for c in ((0, 0), (2, 0), (1, 1.8))])
    singles = [gaussian_mixture_bic(z, seed=1 + r) for r in range(3)]
    assert [int(labels.max()) + 1 for labels, _ in singles] == [2, 1, 1]
    labels, k = gaussian_mixture_bic(z, seed=1, runs=3)
    np.testing.assert_array_equal(labels, singles[1][0])
    assert k == singles[1][1]
    np.testing.assert_array_equal(gaussian_mixture_bic(z, seed=1, runs=1)[0], singles[0][0])


def test_mixture_selections_are_the_single_runs_in_seed_order():
    rng = np.random.default_rng(5)
    z = np.vstack([rng.normal(c, 0.9, (60, 2)) for c in ((0, 0), (2, 0), (1, 1.8))])
    fits = mixture_selections(z, seed=1, runs=3)
    for r, (labels, k) in enumerate(fits):
        single = gaussian_mixture_bic(z, seed=1 + r)
        np.testing.assert_array_equal(labels, single[0])
        assert k == single[1]
    assert len(mixture_selections(np.zeros((1, 2)), runs=4)) == 1
    # keep_medoid: the second selection is the medoid here; the others are the first and third
    kept, others = keep_medoid(fits)
    assert kept is fits[1]
    assert len(others) == 2 and others[0] is fits[0][0] and others[1] is fits[2][0]
    assert keep_medoid(fits[:1]) == (fits[0], [])


def test_clusterwise_jaccard_by_hand():
    labels = [0, 0, 0, 1, 1, -1]
    # cluster 0 = {0, 1, 2}, cluster 1 = {3, 4}; item 5 unclustered
    same = [5, 5, 5, 7, 7, 9]         # both found whole: 1, 1 (item 5 alone is no match)
    other = [0, 0, 1, 1, 1, 1]        # {0, 1}: J(c0) = 2 / 3; {2, 3, 4, 5}: J(c1) = 2 / 4
    np.testing.assert_allclose(clusterwise_jaccard(labels, [same]), [1.0, 1.0])
    np.testing.assert_allclose(clusterwise_jaccard(labels, [other]), [2 / 3, 0.5])
    np.testing.assert_allclose(clusterwise_jaccard(labels, [same, other]),
                               [(1 + 2 / 3) / 2, 0.75])
    # a partition that clusters nothing dissolves every cluster
    np.testing.assert_allclose(clusterwise_jaccard(labels, [[-1] * 6]), [0.0, 0.0])
    assert np.isnan(clusterwise_jaccard(labels, [])).all()
    assert clusterwise_jaccard([-1, -1], [[0, 0]]).shape == (0,)
    with pytest.raises(ValueError, match="1-D label arrays of one length"):
        clusterwise_jaccard(labels, [[0, 1]])


@pytest.mark.parametrize("kwargs", [{"max_components": 0}, {"n_init": 0}, {"seed": -1},
                                    {"seed": 1.5}, {"runs": 0}])
def test_mixture_rejects_bad_options(kwargs):
    with pytest.raises(ValueError, match="must be an integer"):
        gaussian_mixture_bic(np.zeros((5, 2)), **kwargs)


@pytest.mark.parametrize("z", [np.zeros(4), np.array([[0.0, np.nan], [1.0, 2.0]])])
def test_mixture_rejects_bad_arrays(z):
    with pytest.raises(ValueError, match="z must be"):
        gaussian_mixture_bic(z)


# ------------------------------------------------------------------- method="gmm"


def test_gmm_method_of_the_clustering():
    df, truth = _cohort()
    s = PatternSettings(method="gmm")
    out, table = cluster_regions(df, settings=s)
    assert adjusted_rand_score(truth, out["cluster"]) == 1.0
    assert table["n_regions"].tolist() == [14, 12, 11]
    # independent of the row order (rows are fitted in region_key order)
    out2, _ = cluster_regions(df.sample(frac=1.0, random_state=5), settings=s)
    pd.testing.assert_series_equal(out2.loc[out.index, "cluster"], out["cluster"])
    # at most max_clusters components; groups under min_cluster_size are unclustered
    out, table = cluster_regions(df, settings=PatternSettings(method="gmm", max_clusters=2))
    assert len(table) <= 2
    out, table = cluster_regions(df, settings=PatternSettings(method="gmm",
                                                              min_cluster_size=12))
    assert (out["cluster"][truth == 2] == -1).all() and len(table) == 2


def test_cluster_stability_is_the_jaccard_against_the_other_selections(monkeypatch):
    df, truth = _cohort()         # groups 0, 1, 2 of 12, 14 and 11 regions
    s = PatternSettings(method="gmm", mixture_runs=3)
    _, table = cluster_regions(df, settings=s)
    # the cohort's three groups are well apart: every selection finds them whole
    np.testing.assert_allclose(table["stability"], 1.0)

    # hand-set selections (rows in region_key order): the truth twice, and once with groups
    # 1 and 2 merged.  The medoid is the truth; cluster 1 (group 0, 12 regions) is found
    # whole in both others, clusters 0 (group 1, 14) and 2 (group 2, 11) whole in one and
    # within the merged 25 in the other
    order = np.argsort(df["region_key"].to_numpy(), kind="stable")
    t = truth[order]
    merged = np.minimum(t, 1)
    fits = [(merged, 2), (t, 3), (t, 3)]
    import discovery.patterns.clustering as clustering
    monkeypatch.setattr(clustering, "mixture_selections", lambda z, **kw: fits)
    out, table = cluster_regions(df, settings=s)
    assert adjusted_rand_score(truth, out["cluster"]) == 1.0
    assert np.bincount(truth).tolist() == [12, 14, 11]
    np.testing.assert_allclose(table["stability"], [(14 / 25 + 1) / 2, 1.0, (11 / 25 + 1) / 2])

    # one selection, or another method: not measured
    monkeypatch.undo()
    _, single = cluster_regions(df, settings=PatternSettings(method="gmm", mixture_runs=1))
    _, density = cluster_regions(df, settings=PatternSettings(method="hdbscan"))
    assert single["stability"].isna().all() and density["stability"].isna().all()
