"""The three outcomes: cluster readings and nodule outcomes on hand-built tables."""

import dataclasses

import numpy as np
import pandas as pd
import pytest

from discovery.patterns.outcomes import ARTIFACT_HU, cluster_readings, nodule_outcomes
from discovery.schema import STABLE_CLUSTER

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


def test_only_a_stable_cluster_is_a_candidate_sign():
    # the two candidate signs at stabilities on both sides of STABLE_CLUSTER; the artifact
    # and the incidental clusters do not depend on it
    c = _clusters().assign(stability=[0.2, STABLE_CLUSTER, STABLE_CLUSTER - 0.01, 0.1, 0.1, NAN])
    assert list(cluster_readings(c)) == ["artifact", "candidate sign", "unstable", "incidental",
                                         "incidental", "incidental"]
    # not measured (NaN, or a table without the column): not unstable
    assert list(cluster_readings(c.assign(stability=NAN))) == list(cluster_readings(_clusters()))
    # a nodule in an unstable cluster is no candidate sign
    findings = pd.DataFrame({"case_id": ["a", "b"], "nodule_id": ["n1", "n1"],
                             "verdict": ["off-mask", "off-mask"], "flagged": [False, False],
                             "flag_clusters": ["", ""]})
    regions = pd.DataFrame({"case_id": ["a", "b"], "nodule_id": ["n1", "n1"], "cluster": [1, 2]})
    out = nodule_outcomes(findings, c, regions)
    assert list(out["outcome"]) == ["candidate sign", "other"]


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


def test_on_the_tumour_needs_the_prediction_to_rest_on_the_nodule():
    findings = pd.DataFrame({"case_id": ["a", "b", "c", "d"], "nodule_id": ["1"] * 4,
                             "verdict": ["aligned", "aligned", "aligned", "partial"],
                             "rests_on_nodule": [1.0, 0.0, NAN, 1.0],
                             "flagged": [0] * 4, "flag_clusters": [None] * 4})
    regions = pd.DataFrame({"case_id": [], "nodule_id": [], "cluster": []})
    out = nodule_outcomes(findings, _clusters().iloc[:0], regions)
    # aligned and resting; aligned but the behaviour disagrees; not measured; not aligned
    assert list(out["outcome"]) == ["on the tumour", "other", "other", "other"]


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
    assert "Jaccard" not in panel.lead                     # stability not measured
    # without effect_n (older tables) the largest |effect| wins
    panel = outcome_panels(findings, clusters.drop(columns="effect_n"), regions)[2]
    assert panel.cluster == 0
    # an unstable cluster is not shown, however strong; a stable one says how stable
    panel = outcome_panels(findings, clusters.assign(stability=[0.9, 0.5, 0.8]), regions)[2]
    assert panel.cluster == 0 and "find it again at mean Jaccard 0.90" in panel.lead
    assert panel.n_nodules == 0          # the nodule's region is in the unstable cluster 1
    assert "Set aside as unstable: cluster 1 (stability 0.50)" in panel.lead
    panel = outcome_panels(findings, clusters.assign(stability=0.4), regions)[2]
    assert panel.lead.startswith("No stable anatomical cluster")
    assert "cluster 0 (stability 0.40), cluster 1 (stability 0.40), cluster 2" in panel.lead


def _cohort():
    """Findings (one failed case), clusters and regions with every column the panels use."""
    clusters = _clusters().assign(
        effect_n=[4, 3, 0, 0, 2, 0], n_cases=[4, 3, 5, 2, 2, 1],
        share_predicted_malignant=[0.9, 0.8, 0.9, 0.3, 0.1, 0.5],
        pool_predicted_malignant=0.4, description=[f"pattern {i}" for i in range(6)],
        exemplars=[["a/1/r1"], ["a/2/r1"], ["b/1/r1"], ["c/1/r1"], [], []])
    findings = pd.DataFrame({
        "case_id": ["a", "a", "b", "c", "d", "f"], "nodule_id": ["1", "2", "1", "1", "1", ""],
        "verdict": ["aligned", "off-mask", "aligned", "aligned", "off-mask", ""],
        "flagged": [1, 1, 0, 0, 0, 0], "flag_clusters": ["1,0", "1", "", None, "", ""],
        "status": ["ok", "ok", "ok", "no-attribution", "ok", "failed"],
        "probability": [0.9, 0.8, 0.6, 0.3, 0.2, NAN], "rma": [0.7, 0.1, 0.6, 0.8, 0.0, NAN],
        "flag_score": [0.6, 0.4, 0.0, 0.0, 0.0, NAN], "center_z": 5.0, "center_y": 6.0,
        "center_x": 7.0})
    regions = pd.DataFrame({
        "region_key": ["a/1/r1", "a/2/r1", "b/1/r1", "c/1/r1", "d/1/r1"],
        "case_id": ["a", "a", "b", "c", "d"], "nodule_id": ["1", "2", "1", "1", "1"],
        "cluster": [0, 1, 2, 3, -1], "case_region": [1, 2, 1, 1, 1],
        "mass_share": [0.2, 0.1, 0.3, 0.1, 0.1], "centroid_z": 4.0, "centroid_y": 3.0,
        "centroid_x": 2.0, "probability": [0.9, 0.8, 0.6, 0.3, 0.2]})
    return findings, clusters, regions


def test_read_outcomes_computes_the_readings_once_and_matches_the_functions(monkeypatch):
    """read_outcomes: the cluster readings, the scored nodules' outcomes and the panels in
    one pass (the readings computed once), equal to what the separate functions give."""
    from discovery.patterns import outcomes as mod

    findings, clusters, regions = _cohort()
    scored = findings[findings["status"].isin(mod.SCORED_STATUSES)]
    panels = mod.outcome_panels(findings, clusters, regions, threshold=0.6)
    calls = []
    real = mod.cluster_readings
    monkeypatch.setattr(mod, "cluster_readings", lambda c: calls.append(1) or real(c))
    got = mod.read_outcomes(findings, clusters, regions, threshold=0.6)
    assert len(calls) == 1
    assert got.readings == dict(zip(clusters["cluster"], real(clusters)))
    pd.testing.assert_frame_equal(got.outcomes, nodule_outcomes(scored, clusters, regions))
    assert list(got.panels) == panels and isinstance(got.panels, tuple)
    assert [p.outcome for p in panels] == ["on the tumour", "shortcut", "candidate sign"]
    short = panels[1]
    assert short.cluster == 0 and short.n_nodules == 1 and "below 0.6" in short.lead
    assert short.exemplars[0].focus == "densest" and short.exemplars[0].region == 1
    assert panels[0].n_nodules == 1 and panels[0].exemplars[0].case_id == "c"
    with pytest.raises(dataclasses.FrozenInstanceError):
        got.panels = ()


def test_read_outcomes_without_clusters():
    from discovery.patterns.outcomes import read_outcomes

    findings, clusters, regions = _cohort()
    got = read_outcomes(findings, clusters.iloc[:0], regions.assign(cluster=-1), threshold=0.5)
    assert got.readings == {}
    assert [p.n_nodules for p in got.panels] == [3, 0, 0] and got.panels[1].cluster == -1
    assert got.panels[2].lead.startswith("No stable anatomical cluster")


def test_a_shortcut_that_only_inflates_the_probability_counts_and_is_told_apart():
    """Predicted malignant with an artifact cluster among the clusters that alone lower its
    probability: a shortcut, whether or not it decides the call (``flagged``); a nodule
    predicted benign is not one, however its artifact regions move it."""
    from discovery.patterns.outcomes import outcome_panels

    findings, clusters, regions = _cohort()
    findings["predicted_label"] = [1, 1, 1, 0, 0, 0]
    # b/1: predicted malignant, not flagged, the bead cluster 0 lowers it -> shortcut
    # d/1: predicted benign, the bead cluster 0 lowers it -> not a shortcut
    findings.loc[2, ["flag_clusters", "flag_score"]] = ["0", 0.2]
    findings.loc[4, ["flag_clusters", "flag_score"]] = ["0", 0.1]
    regions.loc[2, "cluster"] = 0
    regions.loc[4, "cluster"] = 0
    out = nodule_outcomes(findings, clusters, regions)
    assert list(out["outcome"])[:5] == ["shortcut", "candidate sign", "shortcut",
                                       "on the tumour", "other"]
    assert list(out["outcome_cluster"])[:3] == [0, 1, 0]
    short = outcome_panels(findings, clusters, regions, threshold=0.5)[1]
    assert short.n_nodules == 2 and short.title.startswith("Using an artifact")
    assert "For 1 of them it decides the call" in short.lead and "below 0.5" in short.lead
    # the nodule whose call the artifact decides comes first, then by drop
    assert [e.case_id for e in short.exemplars] == ["a", "b"]
    # without predicted_label the flag alone says malignant (older findings)
    older = nodule_outcomes(findings.drop(columns="predicted_label"), clusters, regions)
    assert list(older["outcome"])[2] == "on the tumour"


def _surroundings_findings():
    """Eight nodules: six scored predicted-malignant (three rest on their surroundings, one of
    them on the nodule too), one benign call, one failed case."""
    return pd.DataFrame({
        "case_id": [f"c{i}" for i in range(8)], "nodule_id": ["n1"] * 8,
        "status": ["ok"] * 7 + ["failed"],
        "predicted_label": [1, 1, 1, 1, 1, 1, 0, 1],
        "rests_on_surroundings": [1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 1.0],
        "rests_on_nodule": [0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0],
        "surroundings_median_hu": [-600.0, -620.0, -580.0, -850.0, -860.0, -840.0, -500.0, -1.0],
        "surroundings_max_hu": [-100.0, 40.0, 60.0, 2600.0, 80.0, 70.0, 2700.0, 2800.0],
    })


def test_surroundings_reading_counts_describes_and_compares_with_the_truth():
    from discovery.patterns.outcomes import MIN_SURROUNDINGS_GROUP, surroundings_reading

    findings = _surroundings_findings()
    text, notable = surroundings_reading(findings)
    assert notable and MIN_SURROUNDINGS_GROUP == 3 and "shows only here" in text
    assert text.startswith("3 of 6 predicted-malignant nodules rest on what lies within 5 mm")
    assert "2 of them do not rest on the nodule itself" in text
    assert "median of -600 HU, against -850 HU around the other" in text
    assert "Truly malignant" not in text and "metal" not in text    # the metal is elsewhere
    truth = pd.DataFrame({"case_id": [f"c{i}" for i in range(6)], "nodule_id": ["n1"] * 6,
                          "malignant": [1, 1, 1, 0, 0, 1]})
    text, _ = surroundings_reading(findings, truth)
    # Fisher's exact two-sided p for [[3, 0], [1, 2]]: (1 + 3) / 20 = 0.4
    assert ("Truly malignant: 3 of 3, against 1 of 3 other predicted-malignant "
            "nodules (Fisher's exact p = 0.4)") in text


def test_surroundings_reading_when_none_rest_or_it_was_not_measured():
    from discovery.patterns.outcomes import surroundings_reading

    findings = _surroundings_findings()
    findings["rests_on_surroundings"] = 0.0
    text, notable = surroundings_reading(findings)
    assert not notable and text.startswith("No predicted-malignant nodule rests on") and "(0 of 6)" in text
    findings.loc[0, "rests_on_surroundings"] = 1.0
    text, notable = surroundings_reading(findings)      # one: said, not a pattern
    assert not notable and text.startswith("1 of 6") and "hugs the nodule" not in text
    text, notable = surroundings_reading(findings.drop(columns="rests_on_surroundings"))
    assert not notable and "not measured for these results" in text
    findings["rests_on_surroundings"] = float("nan")
    text, notable = surroundings_reading(findings)
    assert not notable and text.startswith("No predicted-malignant nodule to check")
    with pytest.raises(ValueError, match="predicted_label"):
        surroundings_reading(findings.drop(columns="predicted_label"))


def test_metal_beside_a_nodule_that_rests_on_its_surroundings_is_called_a_shortcut():
    from discovery.patterns.outcomes import surroundings_reading

    findings = _surroundings_findings()
    findings["rests_on_surroundings"] = [1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0]
    findings.loc[0, "surroundings_max_hu"] = 2400.0      # a clip beside the one that rests
    text, notable = surroundings_reading(findings)
    assert notable and text.startswith("1 of 6")          # one nodule, but metal: shown
    assert ("1 of them has metal-dense voxels (at least 2000 HU) within those surroundings: "
            "a clip or marker beside the nodule is a shortcut, not a sign") in text
    text, notable = surroundings_reading(findings.drop(columns="surroundings_max_hu"))
    assert not notable and "metal" not in text and "median of -600 HU" in text


def test_metal_beside_the_nodule_is_a_shortcut_outcome_without_a_cluster():
    """Predicted malignant, resting on its surroundings, a metal-dense voxel there: a shortcut
    (cluster -1), before the candidate and tumour outcomes; not without any of the three."""
    from discovery.patterns.outcomes import outcome_panels

    findings, clusters, regions = _cohort()
    findings["predicted_label"] = [1, 1, 1, 1, 0, 0]
    findings["rests_on_surroundings"] = [0.0, 1.0, 1.0, 1.0, 1.0, NAN]
    findings["surroundings_max_hu"] = [3000.0, 2500.0, ARTIFACT_HU, ARTIFACT_HU - 1, 2900.0, NAN]
    findings["p_without_surroundings"] = [0.9, 0.1, 0.55, 0.1, 0.0, NAN]
    out = nodule_outcomes(findings, clusters, regions)
    # a/1: the bead cluster (as before); a/2: metal beside it, though on the tail's candidate
    # cluster; b/1: exactly ARTIFACT_HU beside it; c/1: bone-dense only -> on the tumour;
    # d/1: metal, resting, but predicted benign -> other
    assert list(out["outcome"])[:5] == ["shortcut", "shortcut", "shortcut", "on the tumour",
                                       "other"]
    assert list(out["outcome_cluster"])[:3] == [0, -1, -1]
    short = outcome_panels(findings, clusters, regions, threshold=0.5)[1]
    assert short.n_nodules == 3 and short.cluster == 0
    assert "3 nodule(s) predicted malignant rely on something denser than bone" in short.lead
    assert "bone: 1 uses attention off the mask on cluster 0 (pattern 0, median density 2700 HU)" \
        in short.lead
    assert "2 rest on metal beside the nodule: a voxel of at least 2000 HU lies within 5 mm" \
        in short.lead
    # decided: a/1 (flagged) and a/2 (0.1 < 0.5 without its surroundings); b/1 only inflated
    assert "For 2 of them it decides the call" in short.lead
    # the decided ones first, by their drop (a/2: 0.8 - 0.1 = 0.7 > a/1's flag score 0.6)
    assert [(e.case_id, e.nodule_id) for e in short.exemplars] == [("a", "2"), ("b", "1")]
    beside = short.exemplars[0]
    assert beside.region is None and beside.nodule == 2 and beside.focus == "densest"
    assert "p 0.80 → 0.10 without its surroundings (metal, 2500 HU)" in beside.caption
    # results scored before the surroundings were measured: the rule cannot fire
    older = nodule_outcomes(findings.drop(columns="rests_on_surroundings"), clusters, regions)
    assert list(older["outcome"])[:3] == ["shortcut", "candidate sign", "candidate sign"]


def test_the_shortcut_panel_with_metal_beside_a_nodule_only():
    from discovery.patterns.outcomes import outcome_panels

    findings, clusters, regions = _cohort()
    findings["flag_clusters"] = ""                      # no cluster-borne shortcut at all
    findings["flagged"] = 0
    findings["predicted_label"] = [1, 0, 0, 0, 0, 0]
    findings["rests_on_surroundings"] = [1.0, 0, 0, 0, 0, NAN]
    findings["surroundings_max_hu"] = [2200.0, 0, 0, 0, 0, NAN]
    findings["p_without_surroundings"] = [0.7, 0, 0, 0, 0, NAN]
    short = outcome_panels(findings, clusters, regions, threshold=0.5)[1]
    assert short.n_nodules == 1 and short.cluster == 0   # the artifact cluster, for reference
    assert short.lead.startswith("1 nodule(s) predicted malignant rely on something denser "
                                 "than bone: it rests on metal beside the nodule")
    assert "For 0 of them it decides the call" in short.lead


def test_outcome_reason_says_each_outcome_and_why():
    from discovery.patterns.outcomes import outcome_reason

    base = {"probability": 0.72, "flag_score": float("nan"), "p_without_surroundings": 0.12,
            "surroundings_max_hu": 2648.0}
    assert outcome_reason({**base, "outcome": "shortcut", "outcome_cluster": -1}) == (
        "shortcut: metal beside the nodule (2648 HU within 5 mm of the mask); P(malignant) "
        "0.72 → 0.12 without its surroundings")
    assert outcome_reason({**base, "outcome": "shortcut", "outcome_cluster": 4,
                           "flag_score": 0.5}) == (
        "shortcut: artifact cluster 4; P(malignant) 0.72 → 0.22 without its off-mask regions")
    assert outcome_reason(pd.Series({**base, "outcome": "candidate sign", "outcome_cluster": 3})
                          ) == "candidate sign: an off-mask region in cluster 3"
    assert outcome_reason({**base, "outcome": "on the tumour", "outcome_cluster": -1}).startswith(
        "on the tumour: verdict aligned")
    assert outcome_reason({**base, "outcome": "other", "outcome_cluster": -1}) == "other"
