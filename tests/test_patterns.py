"""Cohort clustering of off-mask regions on synthetic, well-separated groups."""

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import adjusted_rand_score

from discovery.offmask import REGION_COLUMNS
from discovery.patterns import (
    CLUSTER_COLUMNS,
    FEATURE_COLUMNS,
    PatternSettings,
    cluster_regions,
    density_band,
    describe_pattern,
    region_features,
)

# name: (mean_hu, max_hu, volume_mm3, offset_distance_mm, distance_to_mask_mm, mass_share, direction)
GROUPS = {
    "beads": (2400.0, 3000.0, 16.0, 12.0, 7.0, 0.05, (0.0, 0.0, 1.0)),
    "pleura": (40.0, 120.0, 300.0, 25.0, 15.0, 0.20, (0.0, 1.0, 0.0)),
    "calcified": (500.0, 900.0, 40.0, 8.0, 5.5, 0.10, (1.0, 0.0, 0.0)),
}


def _cohort(seed=0, per_group=12, n_cases=10):
    """``per_group`` regions per group spread over ``n_cases`` cases (cases 0 and 1 get two)."""
    rng = np.random.default_rng(seed)
    rows, truth = [], []
    for g, (hu, hu_max, vol, dist, d2m, share, direction) in enumerate(GROUPS.values()):
        for i in range(per_group):
            case = f"case-{i % n_cases:02d}"
            d = np.asarray(direction) + rng.normal(0, 0.05, 3)
            d /= np.linalg.norm(d)
            r = dist * (1 + rng.normal(0, 0.04))
            off = d * r
            rows.append(
                {
                    "case_id": case,
                    "nodule_id": "n1",
                    "region_index": g + 1 + 3 * (i // n_cases),
                    "n_voxels": int(vol / 2),
                    "volume_mm3": vol * (1 + rng.normal(0, 0.05)),
                    "mass_share": share * (1 + rng.normal(0, 0.05)),
                    "peak_value": 1.0,
                    "centroid_z": 0.0,
                    "centroid_y": 0.0,
                    "centroid_x": 0.0,
                    "offset_z_mm": off[0],
                    "offset_y_mm": off[1],
                    "offset_x_mm": off[2],
                    "offset_distance_mm": r,
                    "distance_to_mask_mm": d2m * (1 + rng.normal(0, 0.04)),
                    "mean_hu": hu + rng.normal(0, 15),
                    "max_hu": hu_max + rng.normal(0, 15),
                    "std_hu": 10.0,
                    "probability": float(rng.uniform(0.6, 0.9) if g == 0 else rng.uniform(0.1, 0.4)),
                }
            )
            truth.append(g)
    df = pd.DataFrame(rows)
    df["region_key"] = [
        f"{c}/{n}/r{k}" for c, n, k in zip(df["case_id"], df["nodule_id"], df["region_index"])
    ]
    assert set(REGION_COLUMNS) <= set(df.columns)
    return df, np.asarray(truth)


def test_three_groups_recovered():
    df, truth = _cohort()
    out, table = cluster_regions(df)
    assert adjusted_rand_score(truth, out["cluster"]) == 1.0
    assert (out["cluster"] >= 0).all()
    assert list(table.columns) == CLUSTER_COLUMNS
    assert len(table) == 3
    assert table["n_regions"].tolist() == [12, 12, 12]
    assert table["n_cases"].tolist() == [10, 10, 10]
    assert table["n_nodules"].tolist() == [10, 10, 10]
    assert out[["embedding_x", "embedding_y"]].notna().all().all()
    assert out["features_complete"].all()
    assert list(out.index) == list(df.index)


def test_cluster_summaries_and_descriptions():
    df, truth = _cohort()
    out, table = cluster_regions(df)
    by_group = {}
    for g, name in enumerate(GROUPS):
        c = int(out["cluster"][truth == g].iloc[0])
        by_group[name] = table.set_index("cluster").loc[c]
    beads, pleura, calc = by_group["beads"], by_group["pleura"], by_group["calcified"]
    assert "metal-like" in beads["description"] and "HU" in beads["description"]
    assert "soft tissue" in pleura["description"]
    assert "calcified" in calc["description"]
    assert beads["mean_mean_hu"] == pytest.approx(df["mean_hu"][truth == 0].mean())
    assert beads["mean_volume_mm3"] == pytest.approx(df["volume_mm3"][truth == 0].mean())
    assert beads["share_predicted_malignant"] == 1.0 and pleura["share_predicted_malignant"] == 0.0
    assert beads["mean_probability"] == pytest.approx(df["probability"][truth == 0].mean())


def test_exemplars_come_from_different_cases_of_the_cluster():
    df, _ = _cohort()
    out, table = cluster_regions(df)
    case_of = dict(zip(out["region_key"], out["case_id"]))
    cluster_of = dict(zip(out["region_key"], out["cluster"]))
    for _, row in table.iterrows():
        ex = row["exemplars"]
        assert isinstance(ex, list) and len(ex) == 5
        assert len({case_of[k] for k in ex}) == 5
        assert all(cluster_of[k] == row["cluster"] for k in ex)


def test_deterministic_and_independent_of_row_order():
    df, _ = _cohort()
    out1, t1 = cluster_regions(df)
    out2, t2 = cluster_regions(df)
    pd.testing.assert_frame_equal(out1, out2)
    pd.testing.assert_frame_equal(t1, t2)

    shuffled = df.sample(frac=1.0, random_state=3)
    out3, t3 = cluster_regions(shuffled)
    a = out1.set_index("region_key")["cluster"]
    b = out3.set_index("region_key")["cluster"].loc[a.index]
    assert (a == b).all()
    pd.testing.assert_frame_equal(t1, t3)


def test_fewer_regions_than_min_cluster_size():
    df, _ = _cohort()
    out, table = cluster_regions(df.head(2), settings=PatternSettings(min_cluster_size=3))
    assert (out["cluster"] == -1).all()
    assert list(table.columns) == CLUSTER_COLUMNS and len(table) == 0
    assert table["n_regions"].dtype == np.int64

    out, table = cluster_regions(df.head(0))
    assert len(out) == 0 and "cluster" in out.columns and len(table) == 0


def test_incomplete_rows_are_left_out_not_imputed():
    df, truth = _cohort()
    df.loc[0, "distance_to_mask_mm"] = np.nan  # e.g. a nodule whose mask was empty
    out, table = cluster_regions(df)
    assert not out.loc[0, "features_complete"] and out.loc[0, "cluster"] == -1
    assert np.isnan(out.loc[0, "embedding_x"])
    assert adjusted_rand_score(truth[1:], out["cluster"][1:]) == 1.0


def test_agglomerative_method():
    df, truth = _cohort()
    s = PatternSettings(method="agglomerative", distance_threshold=5.0)
    out, table = cluster_regions(df, settings=s)
    assert adjusted_rand_score(truth, out["cluster"]) == 1.0
    assert len(table) == 3


def test_features():
    df, _ = _cohort()
    f = region_features(df)
    assert list(f.columns) == FEATURE_COLUMNS
    d = f[["direction_z", "direction_y", "direction_x"]].to_numpy()
    assert np.allclose(np.linalg.norm(d, axis=1), 1.0)
    assert np.allclose(f["log_volume_mm3"], np.log(df["volume_mm3"]))


@pytest.mark.parametrize(
    "hu, band",
    [(-900, "air/lung"), (-500, "fat"), (-100, "fat"), (-30, "soft tissue"), (149, "soft tissue"),
     (150, "calcified"), (1199, "calcified"), (1201, "metal-like"), (3000, "metal-like")],
)
def test_density_band(hu, band):
    assert density_band(hu) == band


def test_describe_pattern():
    s = describe_pattern(2400.0, 14.0, 12.0)
    assert s == "metal-like density (mean 2400 HU), small (14 mm³), about 12 mm from the nodule centre"


def test_invalid_input_raises():
    df, _ = _cohort()
    with pytest.raises(ValueError, match="missing"):
        cluster_regions(df.drop(columns=["probability"]))
    dup = df.copy()
    dup.loc[1, "region_key"] = dup.loc[0, "region_key"]
    with pytest.raises(ValueError, match="unique"):
        cluster_regions(dup)
    bad = df.copy()
    bad.loc[0, "probability"] = 1.5
    with pytest.raises(ValueError, match="probability"):
        cluster_regions(bad)
    with pytest.raises(ValueError):
        PatternSettings(min_cluster_size=1)
    with pytest.raises(ValueError):
        PatternSettings(method="kmeans")
    with pytest.raises(ValueError):
        PatternSettings(method="agglomerative")
