"""The three outcomes: cluster readings and nodule outcomes on hand-built tables."""

import numpy as np
import pandas as pd
import pytest

from discovery.patterns.outcomes import ARTIFACT_HU, cluster_readings, nodule_outcomes

NAN = float("nan")


def _clusters():
    # 0: metal-dense, relied upon (the bead); 1: soft tissue, relied upon for malignancy (the
    # tail); 2: soft tissue, enriched but not relied upon; 3: calcified, nothing; 4: soft
    # tissue relied upon *against* malignancy (removing it raises p); 5: unknown density
    return pd.DataFrame({
        "cluster": [0, 1, 2, 3, 4, 5],
        "median_halo_max_hu": [2700.0, 60.0, 40.0, 700.0, 50.0, NAN],
        "relied_upon": [1, 1, 0, 0, 1, 0],
        "effect_mean": [-0.30, -0.12, -0.01, 0.0, 0.08, -0.2],
        "enrichment_predicted": [1.8, 1.6, 1.9, 1.0, 0.5, 2.0],
        "q_predicted": [0.01, 0.2, 0.01, 0.9, 0.5, 0.2],
    })


def test_cluster_readings_follow_the_documented_rules():
    r = cluster_readings(_clusters())
    assert list(r) == ["artifact", "candidate sign", "candidate sign", "incidental",
                       "incidental", "incidental"]
    # the density cut is inclusive at ARTIFACT_HU, and relied-upon does not matter for it
    edge = _clusters().iloc[[3]].assign(median_halo_max_hu=ARTIFACT_HU)
    assert cluster_readings(edge).iloc[0] == "artifact"
    edge = edge.assign(median_halo_max_hu=ARTIFACT_HU - 1)
    assert cluster_readings(edge).iloc[0] == "incidental"


def test_relied_upon_stored_as_text_or_none_is_read():
    c = _clusters().assign(relied_upon=["1", "1", None, "0", "1", NAN])
    assert list(cluster_readings(c))[:2] == ["artifact", "candidate sign"]


def test_nodule_outcomes_precedence():
    findings = pd.DataFrame({
        "case_id": ["a", "a", "b", "c", "d", "e"],
        "nodule_id": ["1", "2", "1", "1", "1", "1"],
        # a/1: flagged on the bead cluster though aligned -> shortcut
        # a/2: flagged on the tail cluster only -> not a shortcut; on a candidate -> sign
        # b/1: aligned with a region in the candidate cluster 2 -> candidate sign
        # c/1: aligned, region only in an incidental cluster -> on the tumour
        # d/1: off-mask, nothing -> other; e/1: flagged on "0" but not flagged -> aligned
        "verdict": ["aligned", "off-mask", "aligned", "aligned", "off-mask", "aligned"],
        "flagged": [1, 1, 0, 0, 0, 0],
        "flag_clusters": ["1,0", "1", "", None, "", "0"],
    })
    regions = pd.DataFrame({
        "case_id": ["a", "a", "b", "c", "d"],
        "nodule_id": ["1", "2", "1", "1", "1"],
        "cluster": [0, 1, 2, 3, -1],
    })
    out = nodule_outcomes(findings, _clusters(), regions)
    assert list(out["outcome"]) == ["shortcut", "candidate sign", "candidate sign",
                                    "on the tumour", "other", "on the tumour"]
    assert list(out["outcome_cluster"]) == [0, 1, 2, -1, -1, -1]
    assert list(out.index) == list(findings.index)


def test_no_clusters_means_only_verdicts():
    findings = pd.DataFrame({"case_id": ["a", "b"], "nodule_id": ["1", "1"],
                             "verdict": ["aligned", "partial"], "flagged": [0, np.nan],
                             "flag_clusters": [None, None]})
    empty = _clusters().iloc[:0]
    regions = pd.DataFrame({"case_id": [], "nodule_id": [], "cluster": []})
    out = nodule_outcomes(findings, empty, regions)
    assert list(out["outcome"]) == ["on the tumour", "other"]


def test_missing_columns_are_named():
    with pytest.raises(ValueError, match="median_halo_max_hu"):
        cluster_readings(_clusters().drop(columns="median_halo_max_hu"))
    with pytest.raises(ValueError, match="flag_clusters"):
        nodule_outcomes(pd.DataFrame({"case_id": [], "nodule_id": [], "verdict": [],
                                      "flagged": []}), _clusters(),
                        pd.DataFrame({"case_id": [], "nodule_id": [], "cluster": []}))


def test_candidate_panel_shows_the_cluster_moving_most_predictions():
    from discovery.patterns.outcomes import outcome_panels

    clusters = pd.DataFrame({
        "cluster": [0, 1, 2],
        "median_halo_max_hu": [120.0, 600.0, 80.0],
        "relied_upon": [1, 1, 0],
        "effect_mean": [-0.15, -0.11, -0.01],
        "effect_n": [8, 19, 30],
        "enrichment_predicted": [1.1, 1.4, 3.0],
        "q_predicted": [1.0, 0.1, 0.01],
        "n_cases": [7, 16, 20],
        "share_predicted_malignant": [0.5, 0.6, 0.9],
        "pool_predicted_malignant": [0.4, 0.4, 0.4],
        "description": ["small", "tail-like", "enriched"],
        "exemplars": [[], [], []],
    })
    findings = pd.DataFrame({"case_id": ["a"], "nodule_id": ["n1"], "verdict": ["partial"],
                             "flagged": [0], "flag_clusters": [""], "probability": [0.7],
                             "rma": [0.1], "flag_score": [0.0], "center_z": [1.0],
                             "center_y": [1.0], "center_x": [1.0]})
    regions = pd.DataFrame({"region_key": ["a/n1/r1"], "case_id": ["a"], "nodule_id": ["n1"],
                            "cluster": [1], "case_region": [1], "centroid_z": [1.0],
                            "centroid_y": [1.0], "centroid_x": [1.0], "probability": [0.7]})
    # all three read "candidate sign"; 19 x 0.11 = 2.09 beats 8 x 0.15 = 1.2 and 30 x 0.01
    panel = outcome_panels(findings, clusters, regions)[2]
    assert panel.cluster == 1 and panel.lead.startswith("Cluster 1: tail-like.")
    assert panel.n_nodules == 1
    # without effect_n (older tables) the largest |effect| wins
    panel = outcome_panels(findings, clusters.drop(columns="effect_n"), regions)[2]
    assert panel.cluster == 0
