"""Cohort clustering of off-mask regions on synthetic, well-separated groups.

The cohort (:func:`_cohort`) has three kinds of region that differ in the clustering
descriptors (:data:`discovery.patterns.clustering.FEATURE_COLUMNS`):

* ``beads``: a metal-bright halo (2600 HU), far from the pleura (NaN or beyond the cap), a
  20 mm³ structure 8 mm from the nodule, not radial;
* ``tails``: pleura-adjacent (halo 80 HU, 1 mm from the pleura), a 150 mm³ strand starting
  2.5 mm from the nodule and running radially from it;
* ``calcified``: a calcified halo (600 HU), 15 mm from the pleura, a 40 mm³ structure 6 mm
  from the nodule.

Each group lives on one nodule per case, and some nodules carry two regions, so counts of
regions, nodules and cases all differ (see :data:`GROUPS`).
"""

import math

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import adjusted_rand_score

from discovery.patterns.stats import benjamini_hochberg
from discovery.regions.descriptors import AT_CENTRE, RELATIONS
from discovery.patterns.clustering import (
    CLUSTER_COLUMNS,
    DENSITY_BANDS_HU,
    FEATURE_COLUMNS,
    GAP_CAP_MM,
    HU_SCALE,
    N_EXEMPLARS,
    PLEURA_CAP_MM,
    RADIAL_COS,
    STRUCTURE_FEATURES,
    VARIED,
    PatternSettings,
    _REQUIRED_COLUMNS,
    cluster_regions,
    density_band,
    describe_pattern,
    region_features,
)

NAN = float("nan")

# Per group: the cases it touches (one nodule per case, nodule id ``nodule``), the number of
# regions (region i sits on case ``cases[i % len(cases)]``, so the first
# ``n_regions - len(cases)`` nodules get two regions), the descriptor centres, and the
# relation / direction of region i (cycled).
GROUPS = {
    "beads": dict(
        cases=range(8), nodule="n1", n_regions=12,
        halo_max_hu=2600.0, structure_max_hu=2600.0, p90_hu=-700.0, std_hu=400.0,
        mass_share=0.05,
        pleura_distance_mm=(NAN, 45.0), dense_fraction=0.02, dense_elongation=NAN,
        mean_hu=-650.0, volume_mm3=16.0, offset_distance_mm=12.0,
        structure_volume_mm3=20.0, structure_gap_mm=8.0, structure_radial=0.5,
        structure_elongation=1.2,
        # 10 of 12 inside lung (83 %), all superior
        relations=["inside lung"] * 5 + ["vessel-like"],
        directions=["superior"],
    ),
    "tails": dict(
        cases=range(12), nodule="n2", n_regions=14,
        halo_max_hu=80.0, structure_max_hu=80.0, p90_hu=20.0, std_hu=60.0, mass_share=0.20,
        pleura_distance_mm=(1.0,), dense_fraction=0.6, dense_elongation=5.0,
        mean_hu=-100.0, volume_mm3=300.0, offset_distance_mm=25.0,
        structure_volume_mm3=150.0, structure_gap_mm=2.5, structure_radial=0.95,
        structure_elongation=3.0,
        # all pleura-adjacent; "lateral" 8 of 14 (57 %) -> the direction
        relations=["pleura-adjacent"],
        directions=["lateral", "lateral", "lateral", "lateral", "posterior", "anterior", "medial"],
    ),
    "calcified": dict(
        cases=range(10), nodule="n3", n_regions=11,
        halo_max_hu=600.0, structure_max_hu=600.0, p90_hu=250.0, std_hu=150.0, mass_share=0.10,
        pleura_distance_mm=(15.0,), dense_fraction=0.3, dense_elongation=1.5,
        mean_hu=-300.0, volume_mm3=40.0, offset_distance_mm=8.0,
        structure_volume_mm3=40.0, structure_gap_mm=6.0, structure_radial=0.3,
        structure_elongation=1.5,
        # 7 of 11 vessel-like (64 %); directions 3/3/3/2 of 11 -> none has half: VARIED
        relations=["vessel-like"] * 7 + ["inside lung"] * 4,
        directions=["lateral", "medial", "superior", "inferior"],
    ),
}
NAMES = list(GROUPS)
N_REGIONS = {g: spec["n_regions"] for g, spec in GROUPS.items()}
N_NODULES = {g: len(spec["cases"]) for g, spec in GROUPS.items()}
_NOISY = ("halo_max_hu", "structure_max_hu", "p90_hu", "std_hu", "mass_share", "dense_fraction", "mean_hu",
          "volume_mm3", "offset_distance_mm", "structure_volume_mm3", "structure_gap_mm",
          "structure_radial", "structure_elongation")


#: The clustering these tests of the region descriptors are about: HDBSCAN on
#: FEATURE_COLUMNS, structures from 15 mm³ (the defaults before the mixture on the attended
#: structures; tests/test_mixture.py tests that one).
REGION_KW = dict(method="hdbscan", features=tuple(FEATURE_COLUMNS), min_structure_mm3=15.0)
REGION = PatternSettings(**REGION_KW)


def _default_probability(group, case):
    return 0.8 if group == "beads" else 0.2


def _cohort(seed=0, probability=_default_probability, malignant=None):
    """Region table and the group index of each row.

    ``probability(group, case)`` and ``malignant(group, case)`` give the per-nodule
    predicted probability and (if ``malignant`` is given) the true label.
    """
    rng = np.random.default_rng(seed)
    rows, truth = [], []
    for g, (name, spec) in enumerate(GROUPS.items()):
        cases = list(spec["cases"])
        for i in range(spec["n_regions"]):
            case = f"case-{cases[i % len(cases)]:02d}"
            row = {
                "case_id": case,
                "nodule_id": spec["nodule"],
                "region_key": f"{case}/{spec['nodule']}/r{i:02d}",
                "probability": float(probability(name, case)),
                "relation": spec["relations"][i % len(spec["relations"])],
                "direction": spec["directions"][i % len(spec["directions"])],
                "pleura_distance_mm": spec["pleura_distance_mm"][i % len(spec["pleura_distance_mm"])],
                "dense_elongation": spec["dense_elongation"],
            }
            for c in _NOISY:
                row[c] = spec[c] * (1 + rng.normal(0, 0.03))
            if np.isfinite(row["pleura_distance_mm"]) and row["pleura_distance_mm"] < PLEURA_CAP_MM:
                row["pleura_distance_mm"] *= 1 + rng.normal(0, 0.03)
            if np.isfinite(row["dense_elongation"]):
                row["dense_elongation"] *= 1 + rng.normal(0, 0.03)
            if malignant is not None:
                row["malignant"] = malignant(name, case)
            rows.append(row)
            truth.append(g)
    df = pd.DataFrame(rows)
    assert set(_REQUIRED_COLUMNS) <= set(df.columns)
    assert set(df["relation"]) <= set(RELATIONS)
    return df, np.asarray(truth)


def _by_group(out, table, truth):
    """Cluster-table row of each group (the cluster holding the group's first region)."""
    t = table.set_index("cluster", drop=False)
    return {name: t.loc[int(out["cluster"][truth == g].iloc[0])] for g, name in enumerate(NAMES)}


def _robust_z(x, columns=tuple(FEATURE_COLUMNS), hu_scale=250.0):
    """Hand version of the documented standardisation: median, then IQR/1.349, std, 1; the
    HU descriptors by the fixed ``hu_scale``."""
    centre = np.median(x, axis=0)
    q75, q25 = np.percentile(x, [75, 25], axis=0)
    scale = (q75 - q25) / 1.349
    scale = np.where(scale > 0, scale, x.std(axis=0))
    scale = np.where(scale > 0, scale, 1.0)
    if hu_scale is not None:
        hu = [c in ("halo_max_hu", "structure_max_hu", "p90_hu", "std_hu") for c in columns]
        scale = np.where(hu, hu_scale, scale)
    return (x - centre) / scale


# ------------------------------------------------------------------------- clustering


def test_three_groups_recovered():
    df, truth = _cohort()
    out, table = cluster_regions(df)
    assert adjusted_rand_score(truth, out["cluster"]) == 1.0
    assert (out["cluster"] >= 0).all()
    assert list(table.columns) == CLUSTER_COLUMNS
    assert len(table) == 3
    # clusters are numbered by decreasing size: tails (14), beads (12), calcified (11)
    assert table["cluster"].tolist() == [0, 1, 2]
    assert table["n_regions"].tolist() == [14, 12, 11]
    g = _by_group(out, table, truth)
    assert [int(g[n]["cluster"]) for n in ("tails", "beads", "calcified")] == [0, 1, 2]
    assert out[["embedding_x", "embedding_y"]].notna().all().all()
    assert out["features_complete"].all()
    assert list(out.index) == list(df.index)
    assert (out[df.columns] == df).where(df.notna(), True).all().all()  # input copied as is
    for c in ("cluster", "n_regions", "n_cases", "n_nodules"):
        assert table[c].dtype == np.int64


def test_counts_regions_cases_and_distinct_nodules():
    df, truth = _cohort()
    out, table = cluster_regions(df)
    g = _by_group(out, table, truth)
    for name in NAMES:
        assert g[name]["n_regions"] == N_REGIONS[name]
        assert g[name]["n_cases"] == N_NODULES[name]  # one nodule per case
        assert g[name]["n_nodules"] == N_NODULES[name]  # fewer than regions (two on some)
    # same nodule_id in different cases are different nodules
    assert g["beads"]["n_nodules"] == 8 and g["beads"]["n_regions"] == 12

    # two nodules in one case: n_cases stays, n_nodules grows
    df2 = df.copy()
    first_two = df2.index[(truth == 0) & (df2["case_id"] == "case-00")]
    assert len(first_two) == 2  # case-00 carries two bead regions on nodule n1
    df2.loc[first_two[1], "nodule_id"] = "n1b"
    out2, table2 = cluster_regions(df2)
    g2 = _by_group(out2, table2, truth)
    assert (g2["beads"]["n_cases"], g2["beads"]["n_nodules"], g2["beads"]["n_regions"]) == (8, 9, 12)


def test_cluster_summaries():
    df, truth = _cohort()
    out, table = cluster_regions(df)
    g = _by_group(out, table, truth)
    for i, name in enumerate(NAMES):
        m = df[truth == i]
        row = g[name]
        assert row["mean_mean_hu"] == pytest.approx(m["mean_hu"].mean())
        assert row["median_halo_max_hu"] == pytest.approx(m["halo_max_hu"].median())
        assert row["mean_offset_distance_mm"] == pytest.approx(m["offset_distance_mm"].mean())
        assert row["mean_volume_mm3"] == pytest.approx(m["volume_mm3"].mean())
        assert row["mean_probability"] == pytest.approx(m["probability"].mean())
    assert g["beads"]["mean_probability"] == pytest.approx(0.8)
    assert g["tails"]["mean_probability"] == pytest.approx(0.2)


def test_relation_direction_and_description():
    df, truth = _cohort()
    out, table = cluster_regions(df)
    g = _by_group(out, table, truth)
    assert (g["beads"]["relation"], g["beads"]["direction"]) == ("inside lung", "superior")
    assert (g["tails"]["relation"], g["tails"]["direction"]) == ("pleura-adjacent", "lateral")
    assert (g["calcified"]["relation"], g["calcified"]["direction"]) == ("vessel-like", VARIED)

    assert g["beads"]["description"].startswith("inside lung (83 % of regions), about ")
    assert g["tails"]["description"].startswith("pleura-adjacent (100 % of regions), about ")
    assert g["calcified"]["description"].startswith("vessel-like (64 % of regions), about ")
    assert " mm superior of the nodule;" in g["beads"]["description"]
    assert " mm lateral of the nodule;" in g["tails"]["description"]
    assert f"mm from the nodule, {VARIED};" in g["calcified"]["description"]
    assert "densest structure metal-bright" in g["beads"]["description"]
    assert "densest structure soft-tissue" in g["tails"]["description"]
    assert "densest structure calcified" in g["calcified"]["description"]

    # the full string, from hand-computed summaries of each group
    shares = {"beads": 10 / 12, "tails": 1.0, "calcified": 7 / 11}
    for i, name in enumerate(NAMES):
        m = df[truth == i]
        expected = describe_pattern(
            relation=g[name]["relation"], relation_share=shares[name],
            direction=g[name]["direction"], distance_mm=m["offset_distance_mm"].median(),
            halo_max_hu=m["halo_max_hu"].median(), mean_hu=m["mean_hu"].mean(),
            structure_gap_mm=m["structure_gap_mm"].median(),
            structure_radial=m["structure_radial"].median(),
        )
        assert g[name]["description"] == expected
    assert g["tails"]["description"].endswith(
        f"attended structure {df['structure_gap_mm'][truth == 1].median():.0f} mm from the "
        "nodule, running radially from it")
    assert g["beads"]["description"].endswith("attended structure 8 mm from the nodule")
    d = g["beads"]["description"]
    assert f"about {df['offset_distance_mm'][truth == 0].median():.0f} mm superior" in d
    assert f"(median peak {df['halo_max_hu'][truth == 0].median():.0f} HU)" in d


def test_relation_ties_break_alphabetically_and_half_is_a_direction():
    df, truth = _cohort()
    calc = np.flatnonzero(truth == 2)  # 11 regions
    df.loc[calc, "relation"] = ["vessel-like"] * 5 + ["inside lung"] * 5 + ["outside lung"]
    tails = np.flatnonzero(truth == 1)  # 14 regions
    df.loc[tails, "direction"] = ["medial"] * 7 + ["lateral"] * 7  # exactly half each
    out, table = cluster_regions(df)
    g = _by_group(out, table, truth)
    assert g["calcified"]["relation"] == "inside lung"  # tie -> alphabetical
    assert g["calcified"]["description"].startswith("inside lung (45 % of regions), about ")
    assert g["tails"]["direction"] == "lateral"  # 50 % is enough; tie -> alphabetical
    assert " mm lateral of the nodule;" in g["tails"]["description"]


def test_deterministic_and_independent_of_row_order():
    df, _ = _cohort()
    out1, t1 = cluster_regions(df)
    out2, t2 = cluster_regions(df)
    pd.testing.assert_frame_equal(out1, out2)
    pd.testing.assert_frame_equal(t1, t2)

    shuffled = df.sample(frac=1.0, random_state=3)
    out3, t3 = cluster_regions(shuffled)
    assert list(out3.index) == list(shuffled.index)
    a = out1.set_index("region_key")
    b = out3.set_index("region_key").loc[a.index]
    assert (a["cluster"] == b["cluster"]).all()
    np.testing.assert_allclose(b[["embedding_x", "embedding_y"]], a[["embedding_x", "embedding_y"]])
    # p/q-values: see test_row_order_does_not_change_p_values_of_moderate_enrichment
    same = [c for c in CLUSTER_COLUMNS if c not in ("p_predicted", "q_predicted")]
    pd.testing.assert_frame_equal(t1[same], t3[same])
    assert t3.loc[1, "p_predicted"] == t1.loc[1, "p_predicted"] == pytest.approx(1 / 2001)


def test_row_order_does_not_change_p_values_of_moderate_enrichment():
    # p-values well inside (0, 1), where the permutation draws matter
    mal = {"beads": {f"case-{i:02d}" for i in range(5)},
           "tails": {f"case-{i:02d}" for i in range(4)},
           "calcified": {f"case-{i:02d}" for i in range(6)}}
    df, _ = _cohort(probability=lambda g, c: 0.7 if c in mal[g] else 0.3)
    _, t1 = cluster_regions(df)
    assert ((t1["p_predicted"] > 0.05) & (t1["p_predicted"] < 1)).any()
    for state in (1, 2, 3):
        _, t2 = cluster_regions(df.sample(frac=1.0, random_state=state))
        pd.testing.assert_frame_equal(t1, t2)


def test_seed_changes_only_the_permutation_p_values():
    df, _ = _cohort(probability=lambda g, c: 0.7 if c < "case-05" else 0.3)
    out1, t1 = cluster_regions(df, settings=PatternSettings(seed=0))
    out2, t2 = cluster_regions(df, settings=PatternSettings(seed=1))
    pd.testing.assert_series_equal(out1["cluster"], out2["cluster"])
    same = [c for c in CLUSTER_COLUMNS if c not in ("p_predicted", "q_predicted")]
    pd.testing.assert_frame_equal(t1[same], t2[same])


def test_fewer_regions_than_min_cluster_size():
    df, _ = _cohort()
    assert REGION.min_cluster_size == 5
    out, table = cluster_regions(df.head(4), settings=REGION)
    assert (out["cluster"] == -1).all()
    assert list(table.columns) == CLUSTER_COLUMNS and len(table) == 0
    assert table["n_regions"].dtype == np.int64
    assert table["p_predicted"].dtype == np.float64
    assert table["description"].dtype == object

    out, table = cluster_regions(df.head(2), settings=PatternSettings(**REGION_KW, min_cluster_size=3))
    assert (out["cluster"] == -1).all() and len(table) == 0
    assert list(table.columns) == CLUSTER_COLUMNS

    out, table = cluster_regions(df.head(0), settings=REGION)
    assert len(out) == 0 and "cluster" in out.columns and len(table) == 0
    assert list(table.columns) == CLUSTER_COLUMNS

    # enough rows, but too few of them complete
    bad = df.copy()
    bad.loc[bad.index[4:], "p90_hu"] = np.nan
    out, table = cluster_regions(bad, settings=REGION)
    assert (out["cluster"] == -1).all() and len(table) == 0
    assert out["features_complete"].sum() == 4


def test_incomplete_rows_are_left_out_not_imputed():
    df, truth = _cohort()
    df.loc[0, "p90_hu"] = np.nan  # a bead region
    df.loc[13, "halo_max_hu"] = np.nan  # a tail region
    df = df.astype({"dense_fraction": object})
    df.loc[14, "dense_fraction"] = "n/a"  # not a number -> missing
    drop = [0, 13, 14]
    keep = np.setdiff1d(np.arange(len(df)), drop)
    out, table = cluster_regions(df, settings=REGION)
    for i in drop:
        assert not out.loc[i, "features_complete"] and out.loc[i, "cluster"] == -1
        assert np.isnan(out.loc[i, "embedding_x"]) and np.isnan(out.loc[i, "embedding_y"])
    assert out.loc[keep, "features_complete"].all()
    assert df.loc[0, "p90_hu"] != df.loc[0, "p90_hu"]  # the input is not filled in either
    assert adjusted_rand_score(truth[keep], out["cluster"][keep]) == 1.0
    g = _by_group(out.loc[keep], table, truth[keep])
    assert g["beads"]["n_regions"] == 11 and g["tails"]["n_regions"] == 12
    assert g["beads"]["mean_mean_hu"] == pytest.approx(df.loc[keep[truth[keep] == 0], "mean_hu"].mean())

    # pleura NaN and dense_elongation NaN are meaningful, not missing: rows stay in
    assert df["pleura_distance_mm"].isna().any() and df["dense_elongation"].isna().any()


def test_agglomerative_method():
    df, truth = _cohort()
    s = PatternSettings(method="agglomerative", distance_threshold=5.0)
    out, table = cluster_regions(df, settings=s)
    assert adjusted_rand_score(truth, out["cluster"]) == 1.0
    assert table["n_regions"].tolist() == [14, 12, 11]

    # groups smaller than min_cluster_size become -1 (unclustered)
    s = PatternSettings(method="agglomerative", distance_threshold=5.0, min_cluster_size=12)
    out, table = cluster_regions(df, settings=s)
    assert (out["cluster"][truth == 2] == -1).all()  # 11 calcified regions < 12
    assert adjusted_rand_score(truth[truth < 2], out["cluster"][truth < 2]) == 1.0
    assert table["n_regions"].tolist() == [14, 12]

    # a tiny threshold splits everything into singletons: no cluster survives
    s = PatternSettings(method="agglomerative", distance_threshold=1e-9)
    out, table = cluster_regions(df, settings=s)
    assert (out["cluster"] == -1).all() and len(table) == 0


def test_spectral_method():
    df, truth = _cohort()
    s = PatternSettings(method="spectral")
    out, table = cluster_regions(df, settings=s)
    assert adjusted_rand_score(truth, out["cluster"]) == 1.0
    assert (out["cluster"] >= 0).all()
    assert table["n_regions"].tolist() == [14, 12, 11]
    out2, table2 = cluster_regions(df.sample(frac=1.0, random_state=5), settings=s)
    pd.testing.assert_series_equal(out2.loc[out.index, "cluster"], out["cluster"])
    same = [c for c in CLUSTER_COLUMNS if c not in ("p_predicted", "q_predicted")]
    pd.testing.assert_frame_equal(table[same], table2[same])


def test_hdbscan_too_few_rows_for_its_parameters():
    df, _ = _cohort()  # 37 regions
    for s in (PatternSettings(**REGION_KW, min_cluster_size=38), PatternSettings(**REGION_KW, min_samples=38)):
        out, table = cluster_regions(df, settings=s)
        assert (out["cluster"] == -1).all() and len(table) == 0
        assert out["features_complete"].all() and out["embedding_x"].notna().all()
    out, table = cluster_regions(df, settings=PatternSettings(**REGION_KW, min_samples=3))
    assert len(table) == 3


# -------------------------------------------------------------------------- statistics


def test_enrichment_of_predicted_malignancy_counts_nodules():
    # beads nodules are predicted malignant (0.8), every other nodule benign (0.2)
    df, truth = _cohort()
    # a predicted-malignant nodule whose only region is incomplete is not in the pool
    extra = df.iloc[[0]].copy()
    extra[["case_id", "nodule_id", "region_key", "p90_hu"]] = ["case-20", "n9", "case-20/n9/r00", np.nan]
    df = pd.concat([df, extra], ignore_index=True)
    truth = np.append(truth, -1)
    out, table = cluster_regions(df, settings=REGION)
    g = _by_group(out, table, truth)

    # pool: 8 + 12 + 10 = 30 nodules with a complete region, 8 predicted malignant
    # (by regions it would be 12 / 36 = 1/3; with the incomplete nodule 9 / 31)
    pool = 8 / 30
    np.testing.assert_allclose(table["pool_predicted_malignant"], pool)
    beads, tails, calc = g["beads"], g["tails"], g["calcified"]
    assert beads["share_predicted_malignant"] == 1.0
    assert tails["share_predicted_malignant"] == 0.0 and calc["share_predicted_malignant"] == 0.0
    assert beads["enrichment_predicted"] == pytest.approx(1 / pool) == pytest.approx(3.75)
    assert tails["enrichment_predicted"] == 0.0
    # P(all 8 positives among the 8 bead nodules) = 1 / C(30, 8) ~ 2e-7: no permutation
    # out of 2000 reaches it, so p = 1 / 2001
    assert beads["p_predicted"] < 0.01
    assert beads["p_predicted"] == pytest.approx(1 / 2001)
    assert (table["q_predicted"] >= table["p_predicted"]).all()
    np.testing.assert_allclose(table["q_predicted"], benjamini_hochberg(table["p_predicted"]))
    assert ((table["p_predicted"] > 0) & (table["p_predicted"] <= 1)).all()


def test_enrichment_p_is_one_at_the_pool_share():
    # beads: 8/8 malignant; calcified: 4/10; tails: 0/12 -> pool 12/30 = 0.4 = calcified share
    calc_mal = {f"case-{i:02d}" for i in (0, 3, 5, 7)}

    def prob(group, case):
        return 0.8 if group == "beads" or (group == "calcified" and case in calc_mal) else 0.2

    df, truth = _cohort(probability=prob)
    assert df.loc[truth == 2, "case_id"].nunique() == 10
    out, table = cluster_regions(df, settings=PatternSettings(n_permutations=500))
    g = _by_group(out, table, truth)
    calc = g["calcified"]
    assert calc["pool_predicted_malignant"] == pytest.approx(0.4)
    assert calc["share_predicted_malignant"] == pytest.approx(0.4)
    assert calc["enrichment_predicted"] == pytest.approx(1.0)
    assert calc["p_predicted"] == 1.0 and calc["q_predicted"] == 1.0
    assert g["beads"]["enrichment_predicted"] == pytest.approx(2.5)
    assert g["beads"]["p_predicted"] == pytest.approx(1 / 501)


def test_threshold_of_predicted_malignancy_is_one_half():
    df, truth = _cohort(probability=lambda g, c: 0.5 if g == "tails" else 0.4999)
    out, table = cluster_regions(df)
    g = _by_group(out, table, truth)
    assert g["tails"]["share_predicted_malignant"] == 1.0
    assert g["beads"]["share_predicted_malignant"] == 0.0
    assert g["tails"]["pool_predicted_malignant"] == pytest.approx(12 / 30)


def test_truth_columns_nan_without_malignant_column():
    df, _ = _cohort()
    _, table = cluster_regions(df)
    for c in ("share_truth_malignant", "pool_truth_malignant", "enrichment_truth", "p_truth"):
        assert table[c].isna().all()
        assert table[c].dtype == np.float64


def test_truth_columns_with_malignant_column():
    # truly malignant: beads cases 0-5 (6 of 8), tails cases 0-2 (3 of 12),
    # calcified cases 0-3 (4 of 10) with case 9 unknown (NaN) -> 4 of 9 known
    def malignant(group, case):
        i = int(case[-2:])
        if group == "calcified" and i == 9:
            return NAN
        return float(i < {"beads": 6, "tails": 3, "calcified": 4}[group])

    df, truth = _cohort(malignant=malignant)
    out, table = cluster_regions(df)
    g = _by_group(out, table, truth)
    pool = (6 + 3 + 4) / (8 + 12 + 9)
    np.testing.assert_allclose(table["pool_truth_malignant"], pool)
    assert g["beads"]["share_truth_malignant"] == pytest.approx(6 / 8)
    assert g["tails"]["share_truth_malignant"] == pytest.approx(3 / 12)
    assert g["calcified"]["share_truth_malignant"] == pytest.approx(4 / 9)
    assert g["beads"]["enrichment_truth"] == pytest.approx((6 / 8) / pool)
    assert ((table["p_truth"] > 0) & (table["p_truth"] <= 1)).all()
    # the predicted columns do not change
    _, plain = cluster_regions(df.drop(columns="malignant"))
    pred = ["share_predicted_malignant", "pool_predicted_malignant", "p_predicted", "q_predicted"]
    pd.testing.assert_frame_equal(table[pred], plain[pred])

    # all unknown: NaN columns
    df["malignant"] = np.nan
    _, table = cluster_regions(df)
    assert table["share_truth_malignant"].isna().all() and table["p_truth"].isna().all()


def test_exemplars_nearest_the_mean_one_per_case():
    df, truth = _cohort()
    out, table = cluster_regions(df, settings=REGION)
    z = pd.DataFrame(_robust_z(region_features(df).to_numpy()), index=df.index)
    for _, row in table.iterrows():
        ex = row["exemplars"]
        members = out[out["cluster"] == row["cluster"]]
        assert isinstance(ex, list) and all(isinstance(k, str) for k in ex)
        assert set(ex) <= set(members["region_key"])
        case_of = dict(zip(members["region_key"], members["case_id"]))
        assert len({case_of[k] for k in ex}) == len(ex)  # at most one per case
        assert len(ex) == min(N_EXEMPLARS, members["case_id"].nunique())

        zm = z.loc[members.index].to_numpy()
        dist = np.linalg.norm(zm - zm.mean(axis=0), axis=1)
        order = np.argsort(dist, kind="stable")
        keys = members["region_key"].to_numpy()
        assert ex[0] == keys[order[0]]  # the member nearest the cluster mean
        expected, seen = [], set()
        for i in order:
            if case_of[keys[i]] not in seen and len(expected) < N_EXEMPLARS:
                seen.add(case_of[keys[i]])
                expected.append(keys[i])
        assert ex == expected
    # tails touch 12 cases: capped at N_EXEMPLARS = 10; beads touch 8 cases
    g = _by_group(out, table, truth)
    assert N_EXEMPLARS == 10
    assert len(g["tails"]["exemplars"]) == 10 and len(g["beads"]["exemplars"]) == 8


# --------------------------------------------------------------------------- features


def test_features():
    df = pd.DataFrame(
        {
            "halo_max_hu": [2600.0, 80.0, 600.0, 100.0],
            "p90_hu": [-700.0, 20.0, np.nan, 0.0],
            "std_hu": [400.0, 60.0, 150.0, 10.0],
            "mass_share": [0.25, 1.0, math.e ** -2, 0.5],
            "pleura_distance_mm": [12.0, 45.0, np.nan, 30.0],
            "dense_fraction": [0.0, 0.6, 0.3, 0.1],
            "dense_elongation": [np.nan, 5.0, 1.5, 1.0],
            # a radial strand; a structure under 15 mm3; one without a main axis; none
            "structure_volume_mm3": [40.0, 14.0, 20.0, 0.0],
            "structure_radial": [0.9, 0.95, np.nan, np.nan],
        },
        index=[10, 11, 12, 13],
    )
    f = region_features(df)
    assert list(f.columns) == FEATURE_COLUMNS
    assert list(f.index) == [10, 11, 12, 13]
    np.testing.assert_allclose(f["halo_max_hu"], [2600, 80, 600, 100])
    np.testing.assert_allclose(f["std_hu"], [400, 60, 150, 10])
    np.testing.assert_allclose(f["dense_fraction"], [0, 0.6, 0.3, 0.1])
    np.testing.assert_allclose(f["log_mass_share"], [np.log(0.25), 0.0, -2.0, np.log(0.5)])
    assert f.loc[10, "log_mass_share"] == pytest.approx(-1.3862943611)
    assert PLEURA_CAP_MM == 30.0
    np.testing.assert_allclose(f["pleura_distance_mm"], [12.0, 30.0, 30.0, 30.0])  # cap, NaN -> cap
    np.testing.assert_allclose(f["dense_elongation"], [1.0, 5.0, 1.5, 1.0])  # NaN -> 1
    np.testing.assert_allclose(f["radial_alignment"], [0.9, 0.0, 0.0, 0.0])  # no structure -> 0
    np.testing.assert_allclose(region_features(df, min_structure_mm3=10.0)["radial_alignment"],
                               [0.9, 0.95, 0.0, 0.0])
    assert np.isnan(f.loc[12, "p90_hu"]) and f.drop(index=12).notna().all().all()


def test_structure_features():
    df = pd.DataFrame(
        {
            "halo_max_hu": [2600.0, 80.0, 600.0, 100.0, 90.0],
            # the structure's own densest voxel: the region's halo grazes the first one's rim
            "structure_max_hu": [3000.0, 60.0, 600.0, 100.0, np.nan],
            "pleura_distance_mm": [12.0, 45.0, np.nan, 30.0, 1.0],
            "structure_volume_mm3": [math.e**4, 150.0, 40.0, 14.9, 0.0],
            "structure_gap_mm": [8.0, 2.5, 45.0, 3.0, np.nan],
            "structure_radial": [0.5, 0.95, np.nan, 1.0, np.nan],
            "structure_elongation": [1.25, 2.0, 1.0, 1.0, np.nan],
        },
        index=[10, 11, 12, 13, 14],
    )
    f = region_features(df, features=STRUCTURE_FEATURES)
    assert list(f.columns) == STRUCTURE_FEATURES
    assert list(f.index) == [10, 11, 12, 13, 14]
    assert "halo_max_hu" not in f.columns
    np.testing.assert_allclose(f.loc[[10, 11, 12], "structure_max_hu"], [3000, 60, 600])
    assert f.loc[10, "log_structure_volume"] == pytest.approx(4.0)
    assert f.loc[11, "log_structure_volume"] == pytest.approx(math.log(150.0))
    assert PLEURA_CAP_MM == 30.0 and GAP_CAP_MM == 30.0
    np.testing.assert_allclose(f.loc[[10, 11, 12], "pleura_distance_mm"], [12.0, 30.0, 30.0])
    np.testing.assert_allclose(f.loc[[10, 11, 12], "structure_gap_mm"], [8.0, 2.5, 30.0])  # cap
    # the radial |cos| counts as far as the structure has a main axis: 1 - 1/elongation
    np.testing.assert_allclose(f.loc[[10, 11], "structure_radiality"], [0.5 * 0.2, 0.95 * 0.5])
    assert f.loc[12, "structure_radiality"] == 0.0  # no main axis: nothing oriented, as
    # radial_alignment; a region without any structure keeps NaN (row 14, below)
    # below min_structure_mm3 (15 by default) or no structure at all: not clustered
    assert f.loc[[13, 14]].isna().all().all()
    assert f.loc[[10, 11]].notna().all().all()
    g = region_features(df, features=STRUCTURE_FEATURES, min_structure_mm3=10.0)
    assert g.loc[13].notna().all() and g.loc[14].isna().all()  # 0 mm³ is never a structure
    assert g.loc[13, "structure_radiality"] == 0.0   # radial, but round: no axis to point
    # the unweighted |cos| (OTHER_FEATURES) can still be clustered on
    h = region_features(df, features=("structure_radial", "structure_gap_mm"))
    np.testing.assert_allclose(h.loc[[10, 11, 12], "structure_radial"], [0.5, 0.95, 0.0])
    with pytest.raises(ValueError, match="structure_elongation"):
        cluster_regions(_cohort()[0].drop(columns="structure_elongation"))


def test_regions_without_a_structure_are_not_clustered():
    df, truth = _cohort()
    df.loc[[0, 1, 15], "structure_volume_mm3"] = [0.0, 12.0, 0.0]
    structure = PatternSettings(features=STRUCTURE_FEATURES, min_structure_mm3=15.0)
    out, table = cluster_regions(df, settings=structure)
    assert (out.loc[[0, 1, 15], "cluster"] == -1).all()
    assert not out.loc[[0, 1, 15], "features_complete"].any()
    keep = np.setdiff1d(np.arange(len(df)), [0, 1, 15])
    assert adjusted_rand_score(truth[keep], out["cluster"][keep]) == 1.0
    out, _ = cluster_regions(df, settings=PatternSettings(features=STRUCTURE_FEATURES,
                                                          min_structure_mm3=10.0))
    assert out.loc[1, "features_complete"] and out.loc[1, "cluster"] >= 0
    # the default counts any structure (1 mm³): only the regions without one are left out
    out, _ = cluster_regions(df)
    assert out.loc[1, "features_complete"] and not out.loc[[0, 15], "features_complete"].any()
    # the region features ignore the structure: nothing is left out
    out, _ = cluster_regions(df, settings=REGION)
    assert out["features_complete"].all()
    # structure features on a table scored before they existed: a clear error
    with pytest.raises(ValueError, match="structure_gap_mm"):
        cluster_regions(df.drop(columns="structure_gap_mm"), settings=structure)
    for bad in (-1.0, float("nan"), True, "15"):
        with pytest.raises(ValueError, match="min_structure_mm3"):
            PatternSettings(min_structure_mm3=bad)
    for bad in ((), "halo_max_hu", ("halo_max_hu", "halo_max_hu"), ("mean_hu",)):
        with pytest.raises(ValueError, match="features"):
            PatternSettings(features=bad)


def test_features_of_the_cohort():
    df, truth = _cohort()
    f = region_features(df)
    beads = f[truth == 0]
    assert (beads["pleura_distance_mm"] == PLEURA_CAP_MM).all()  # NaN and 45 mm
    assert np.isfinite(f.to_numpy()).all()


@pytest.mark.parametrize(
    "hu, band",
    [(-1000, "lung/air"), (-500.001, "lung/air"), (-500, "fat"), (-100, "fat"), (-30.001, "fat"),
     (-30, "soft-tissue"), (149, "soft-tissue"), (150, "calcified"), (1199, "calcified"),
     (1200, "metal-bright"), (3000, "metal-bright"), (np.nan, "unknown density"),
     (np.inf, "unknown density")],
)
def test_density_band(hu, band):
    assert density_band(hu) == band


def test_density_band_names():
    assert [b[0] for b in DENSITY_BANDS_HU] == [
        "lung/air", "fat", "soft-tissue", "calcified", "metal-bright"]
    assert DENSITY_BANDS_HU[0][1] == -math.inf and DENSITY_BANDS_HU[-1][2] == math.inf


def test_describe_pattern():
    s = describe_pattern(relation="pleura-adjacent", relation_share=0.8, direction="lateral",
                         distance_mm=14.2, halo_max_hu=60.0, mean_hu=-700.0)
    assert s == ("pleura-adjacent (80 % of regions), about 14 mm lateral of the nodule; "
                 "densest structure soft-tissue (median peak 60 HU); region mean -700 HU")

    s = describe_pattern(relation="vessel-like", relation_share=0.5, direction=VARIED,
                         distance_mm=8.7, halo_max_hu=612.4, mean_hu=-301.2)
    assert VARIED == "in varied directions"
    assert s == ("vessel-like (50 % of regions), about 9 mm from the nodule, in varied "
                 "directions; densest structure calcified (median peak 612 HU); region mean -301 HU")

    s = describe_pattern(relation="inside lung", relation_share=1.0, direction=AT_CENTRE,
                         distance_mm=0.0, halo_max_hu=2600.0, mean_hu=-650.0)
    assert s == ("inside lung (100 % of regions), at the nodule centre; densest structure "
                 "metal-bright (median peak 2600 HU); region mean -650 HU")

    s = describe_pattern(relation="outside lung", relation_share=2 / 3, direction="posterior and superior",
                         distance_mm=31.0, halo_max_hu=-600.0, mean_hu=-850.0)
    assert s == ("outside lung (67 % of regions), about 31 mm posterior and superior of the "
                 "nodule; densest structure lung/air (median peak -600 HU); region mean -850 HU")

    base = dict(relation="pleura-adjacent", relation_share=1.0, direction="lateral",
                distance_mm=14.0, halo_max_hu=60.0, mean_hu=-700.0)
    head = ("pleura-adjacent (100 % of regions), about 14 mm lateral of the nodule; densest "
            "structure soft-tissue (median peak 60 HU); region mean -700 HU")
    assert RADIAL_COS == 0.85
    assert describe_pattern(**base, structure_gap_mm=2.4, structure_radial=0.85) == (
        head + "; attended structure 2 mm from the nodule, running radially from it")
    # a lucent structure is named; a dense one (or none measured) is described as before
    assert describe_pattern(**base, structure_gap_mm=6.2, structure_median_hu=-991.6) == (
        head + "; attended structure an air space darker than the lung (median -992 HU), "
        "6 mm from the nodule")
    assert describe_pattern(**base, structure_gap_mm=6.2, structure_median_hu=-949.0) == (
        head + "; attended structure ground glass (median -949 HU), 6 mm from the nodule")
    assert describe_pattern(**base, structure_gap_mm=6.2, structure_median_hu=-400.0) == (
        head + "; attended structure 6 mm from the nodule")
    assert describe_pattern(**base, structure_gap_mm=2.4, structure_radial=0.849) == (
        head + "; attended structure 2 mm from the nodule")
    assert describe_pattern(**base, structure_gap_mm=NAN, structure_radial=1.0) == head


def test_describe_pattern_rejects_bad_input():
    with pytest.raises(ValueError, match="relation"):
        describe_pattern(relation="near the heart", relation_share=1.0, direction="lateral",
                         distance_mm=1.0, halo_max_hu=0.0, mean_hu=0.0)
    with pytest.raises(TypeError):
        describe_pattern("inside lung", 1.0, "lateral", 1.0, 0.0, 0.0)  # keywords only


# ------------------------------------------------------------------------------ errors


@pytest.mark.parametrize("col", _REQUIRED_COLUMNS)
def test_missing_column_raises(col):
    df, _ = _cohort()
    with pytest.raises(ValueError, match=f"missing column.*'{col}'"):
        cluster_regions(df.drop(columns=[col]))


def test_invalid_input_raises():
    df, truth = _cohort()
    with pytest.raises(ValueError, match="DataFrame"):
        cluster_regions(df.to_dict("list"))
    with pytest.raises(ValueError, match="settings"):
        cluster_regions(df, settings={"method": "hdbscan"})

    dup = df.copy()
    dup.loc[1, "region_key"] = dup.loc[0, "region_key"]
    with pytest.raises(ValueError, match="unique"):
        cluster_regions(dup)
    nokey = df.copy()
    nokey.loc[3, "region_key"] = None
    with pytest.raises(ValueError, match="unique"):
        cluster_regions(nokey)

    for p in (1.5, -0.1, np.nan, "high"):
        bad = df.copy().astype({"probability": object})
        bad.loc[0, "probability"] = p
        with pytest.raises(ValueError, match="probability"):
            cluster_regions(bad)

    for col in ("mass_share", "volume_mm3"):
        for v in (0.0, -0.2, np.nan, np.inf):
            bad = df.copy()
            bad.loc[2, col] = v
            with pytest.raises(ValueError, match=col):
                cluster_regions(bad)

    bad = df.copy()
    bad.loc[truth == 0, "relation"] = "near the heart"  # not one of RELATIONS
    with pytest.raises(ValueError, match="relation"):
        cluster_regions(bad)


@pytest.mark.parametrize(
    "kwargs",
    [dict(min_cluster_size=1), dict(min_cluster_size=2.0), dict(min_cluster_size=True),
     dict(min_samples=0), dict(min_samples=1.5), dict(method="kmeans"),
     dict(method="agglomerative"), dict(method="agglomerative", distance_threshold=0.0),
     dict(method="agglomerative", distance_threshold=np.inf),
     dict(method="agglomerative", distance_threshold="5"), dict(n_permutations=0),
     dict(hu_scale=0.0), dict(hu_scale=-250.0), dict(hu_scale=np.nan), dict(hu_scale="250"),
     dict(hu_scale=True)],
)
def test_invalid_settings_raise(kwargs):
    with pytest.raises(ValueError):
        PatternSettings(**kwargs)


def test_valid_settings():
    s = PatternSettings()
    assert (s.min_cluster_size, s.min_samples, s.seed, s.method, s.n_permutations,
            s.features, s.min_structure_mm3) == (5, None, 0, "gmm", 2000,
                                                  tuple(STRUCTURE_FEATURES), 1.0)
    assert PatternSettings(features=list(FEATURE_COLUMNS)).features == tuple(FEATURE_COLUMNS)
    assert s.hu_scale == HU_SCALE == 250.0 and PatternSettings(hu_scale=None).hu_scale is None
    PatternSettings(min_cluster_size=2, min_samples=1, method="spectral")
    PatternSettings(method="agglomerative", distance_threshold=3)


def test_display_map_is_tsne_keeps_groups_apart_and_falls_back_to_pca():
    df, truth = _cohort()
    out, _ = cluster_regions(df)
    assert out.attrs["map_method"] == "tsne"
    xy = out[["embedding_x", "embedding_y"]].to_numpy()
    groups = np.asarray(truth)
    # each planted group's map centroid is nearer its own members than any other group's
    cents = {g: xy[groups == g].mean(axis=0) for g in set(groups)}
    nearest = [min(cents, key=lambda g: np.linalg.norm(p - cents[g])) for p in xy]
    assert np.mean(np.asarray(nearest) == groups) >= 0.95
    # the map never changes the clusters
    pca_out, _ = cluster_regions(df, settings=PatternSettings(map_method="pca"))
    assert pca_out.attrs["map_method"] == "pca"
    assert (pca_out["cluster"] == out["cluster"]).all()
    # too few points for t-SNE: PCA, still finite
    small, _ = cluster_regions(df.iloc[:6], settings=PatternSettings(min_cluster_size=2))
    assert small.attrs["map_method"] == "pca"
    assert np.isfinite(small[["embedding_x", "embedding_y"]].to_numpy()).all()
    with pytest.raises(ValueError, match="map_method"):
        PatternSettings(map_method="umap")


def test_spectral_settings_reach_the_clustering_and_are_validated():
    df, truth = _cohort()
    out, _ = cluster_regions(df, settings=PatternSettings(method="spectral", n_neighbors=8,
                                                          max_clusters=3, min_cluster_size=2))
    assert adjusted_rand_score(truth, out["cluster"]) > 0.9
    one, _ = cluster_regions(df, settings=PatternSettings(method="spectral", max_clusters=2,
                                                          min_cluster_size=2))
    assert one["cluster"].max() <= 1  # at most two clusters allowed
    for bad in (dict(n_neighbors=0), dict(max_clusters=1), dict(n_neighbors=2.5),
                dict(mixture_runs=0)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            PatternSettings(**bad)


def _dense_and_lung(n_dense, n_lung, seed=0):
    """Regions beside a metal-dense structure (halo 2,600 HU, in aerated lung) and two kinds
    of lung regions (next to a vessel; in air), ``n_lung`` of each, one per case."""
    rng = np.random.default_rng(seed)
    specs = {
        "dense": (n_dense, dict(halo_max_hu=2600, p90_hu=-650, std_hu=300, mass_share=0.05,
                                pleura_distance_mm=12, dense_fraction=0.03, dense_elongation=1.2)),
        "vessel": (n_lung, dict(halo_max_hu=120, p90_hu=-500, std_hu=150, mass_share=0.08,
                                pleura_distance_mm=8, dense_fraction=0.15, dense_elongation=3.0)),
        "air": (n_lung, dict(halo_max_hu=-350, p90_hu=-820, std_hu=60, mass_share=0.12,
                             pleura_distance_mm=20, dense_fraction=0.0, dense_elongation=1.0)),
    }
    rows, truth = [], []
    for name, (n, spec) in specs.items():
        for _ in range(n):
            case = f"case-{len(rows):03d}"
            row = {"case_id": case, "nodule_id": "n1", "region_key": f"{case}/n1/r00",
                   "probability": 0.5, "relation": "inside lung", "direction": "superior",
                   "mean_hu": spec["p90_hu"] - 100, "volume_mm3": 30.0,
                   "offset_distance_mm": 10.0, "structure_volume_mm3": 0.0,
                   "structure_gap_mm": NAN, "structure_radial": NAN}
            for k, v in spec.items():  # HU: +-60 HU; the others +-25 %
                sd = 60.0 if k in ("halo_max_hu", "p90_hu", "std_hu") else 0.25 * max(abs(v), 1)
                row[k] = abs(v + rng.normal(0, sd)) if k not in ("halo_max_hu", "p90_hu") \
                    else v + rng.normal(0, sd)
            row["dense_elongation"] += 1.0
            rows.append(row)
            truth.append(name)
    return pd.DataFrame(rows), np.asarray(truth)


def test_hu_descriptors_on_a_fixed_scale_keep_a_common_dense_structure_together():
    """The HU descriptors are scaled by a fixed width, so a dense structure forms one cluster
    however common it is; scaled by the cohort's IQR (``hu_scale=None``) its 2,500 HU
    difference shrinks as it becomes common and its regions mix with the lung's."""
    from discovery.patterns.stats import match_kind

    f1 = {}
    for n_dense in (8, 20, 40, 60):
        df, truth = _dense_and_lung(n_dense, 30)
        for hu_scale in (HU_SCALE, None):
            out, _ = cluster_regions(df, settings=PatternSettings(**REGION_KW, hu_scale=hu_scale,
                                                                  n_permutations=10))
            f1[n_dense, hu_scale] = match_kind(out["cluster"].to_numpy(), truth, "dense").f1
    assert all(f1[n, HU_SCALE] == 1.0 for n in (8, 20, 40, 60)), f1
    assert f1[8, None] == 1.0 and f1[40, None] < 0.9, f1


# ----------------------------------------------------- scikit-learn's answers, without it


@pytest.mark.parametrize("shape", [(2, 5), (3, 9), (7, 4), (40, 12), (6, 1)])
def test_pca_scores_equal_scikit_learn(shape):
    from sklearn.decomposition import PCA

    from discovery.patterns.clustering import pca_scores

    z = np.random.default_rng(shape[0] * 31 + shape[1]).normal(size=shape) * [3.0] + 1.5
    k = min(2, *shape)
    np.testing.assert_array_equal(pca_scores(z, k),
                                  PCA(n_components=k, svd_solver="full").fit_transform(z))


@pytest.mark.parametrize("min_cluster_size", [3, 5, 6])
@pytest.mark.parametrize("min_samples", [None, 2, 3])
def test_fewer_than_two_clusters_worth_of_rows_are_noise_as_hdbscan_says(min_cluster_size,
                                                                         min_samples):
    """cluster_regions skips HDBSCAN below 2 * min_cluster_size rows: every row is noise
    then, whatever the data (two tight groups, one, or spread)."""
    from sklearn.cluster import HDBSCAN

    from discovery.patterns.clustering import _fit_labels

    settings = PatternSettings(min_cluster_size=min_cluster_size, min_samples=min_samples)
    rng = np.random.default_rng(min_cluster_size)
    for n in range(max(min_cluster_size, min_samples or 0), 2 * min_cluster_size):
        for z in (rng.normal(size=(n, 4)),
                  np.r_[rng.normal(size=(n // 2, 4)) * 0.01,
                        rng.normal(size=(n - n // 2, 4)) * 0.01 + 50]):
            sk = HDBSCAN(min_cluster_size=min_cluster_size, min_samples=min_samples,
                         allow_single_cluster=False, copy=True).fit(z).labels_
            assert (sk == -1).all()
            assert (_fit_labels(z, settings)[0] == -1).all()
    # and at 2 * min_cluster_size two tight groups do split (the shortcut ends there)
    n = 2 * min_cluster_size
    z = np.r_[rng.normal(size=(n // 2, 4)) * 0.01, rng.normal(size=(n - n // 2, 4)) * 0.01 + 50]
    assert len(set(_fit_labels(z, settings)[0]) - {-1}) == 2
