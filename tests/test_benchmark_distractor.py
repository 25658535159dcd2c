"""The discovery benchmark's distractor check: only a cluster *enriched* for the true label
(more truly malignant nodules than the pool) reports the distractor; a depleted one does not."""

import importlib.util
from pathlib import Path

import pandas as pd

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "discovery.py"
_SPEC = importlib.util.spec_from_file_location("bench_discovery", _PATH)
bench = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(bench)

ROLES = {"marker_bead": "shortcut", "pleural_tail": "sign", "granuloma": "distractor"}


def _tables(ratio_granuloma_cluster):
    clustered = pd.DataFrame({
        "cluster": [0, 0, 0, 1, 1, 1],
        "near_marker_bead": [False] * 6,
        "near_pleural_tail": [True, True, True, False, False, False],
        "near_granuloma": [False, False, False, True, False, False],
    })
    clusters = pd.DataFrame({"cluster": [0, 1], "p_truth": [0.001, 0.01],
                             "enrichment_truth": [1.6, ratio_granuloma_cluster]})
    return clustered, clusters


def test_a_depleted_cluster_does_not_report_the_distractor():
    clustered, clusters = _tables(0.4)      # one granuloma among vessels, depleted, p 0.01
    assert not bench.truth_enriched(clusters.iloc[1])
    assert bench.truth_enriched(clusters.iloc[0])
    assert not bench.distractor_reported(clustered, clusters, ROLES)


def test_an_enriched_cluster_of_the_distractor_reports_it():
    clustered, clusters = _tables(1.8)
    assert bench.distractor_reported(clustered, clusters, ROLES)
    clusters.loc[1, "p_truth"] = 0.2        # not significant: not reported
    assert not bench.distractor_reported(clustered, clusters, ROLES)
