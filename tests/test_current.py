"""`python -m discovery.batch.current`: when `make demo` scores again."""

import sqlite3

import pytest

from discovery.batch.current import main, stale_reason
from discovery.model.card import default_model_dir, load_card
from discovery.patterns.clustering import PatternSettings
from discovery.store.backends import SchemaMismatch
from discovery.store.tables import ResultsStore


def _store(tmp_path, sha, patterns=repr(PatternSettings()), rule=None):
    store = ResultsStore(tmp_path / "res")
    rule = load_card(default_model_dir()).verdict_rule_sha256 if rule is None else rule
    store.set_meta(model_sha256=sha, verdict_rule_sha256=rule)
    if patterns is not None:
        store.set_meta(pattern_settings=patterns)
    store.close()
    return tmp_path / "res"


def test_current_results_pass_and_other_weights_do_not(tmp_path, capsys):
    sha = load_card(default_model_dir()).weights_sha256
    res = _store(tmp_path, sha)
    assert stale_reason(res) is None and main([str(res)]) == 0
    other = _store(tmp_path / "b", "0" * 64)
    assert "scored with model weights 000000000000" in stale_reason(other)
    assert main([str(other)]) == 1 and "not current" in capsys.readouterr().err


def test_an_old_schema_is_stale_and_the_store_refuses_it_by_type(tmp_path):
    res = _store(tmp_path, "0" * 64)
    con = sqlite3.connect(res / "discovery.sqlite")
    con.execute("UPDATE meta SET value = '8' WHERE key = 'schema_version'")
    con.commit()
    con.close()
    with pytest.raises(SchemaMismatch, match="schema version 8"):
        ResultsStore(res, create=False)
    assert "schema version 8" in stale_reason(res)


def test_a_folder_without_results_is_stale(tmp_path):
    assert stale_reason(tmp_path).startswith("no results")


def test_patterns_clustered_otherwise_or_unrecorded_are_stale(tmp_path):
    """The patterns must come from this version's clustering: other settings, or a folder
    clustered before the settings were recorded, mean scoring again."""
    sha = load_card(default_model_dir()).weights_sha256
    assert stale_reason(_store(tmp_path / "a", sha)) is None
    old = _store(tmp_path / "b", sha, patterns=None)
    assert "clustered with other settings or by an older version" in stale_reason(old)
    other = _store(tmp_path / "c", sha, patterns=repr(PatternSettings(hu_scale=None)))
    assert stale_reason(other) is not None and main([str(other)]) == 1
    assert stale_reason(other, pattern_settings=PatternSettings(hu_scale=None)) is None


def test_clusters_without_their_stability_are_stale(tmp_path):
    """Clusters written before each cluster's stability was measured (an older version's
    mixture with the same settings) mean clustering again; clusters that have it do not."""
    from tests.conftest import build_tiny_results

    sha = load_card(default_model_dir()).weights_sha256
    res = build_tiny_results(tmp_path / "res")          # one cluster, stability 0.92
    store = ResultsStore(res)
    rule = load_card(default_model_dir()).verdict_rule_sha256
    store.set_meta(model_sha256=sha, verdict_rule_sha256=rule,
                   pattern_settings=repr(PatternSettings()))
    store.close()
    assert stale_reason(res) is None
    con = sqlite3.connect(res / "discovery.sqlite")
    con.execute("UPDATE clusters SET stability = NULL")
    con.commit()
    con.close()
    assert "measures each cluster's stability" in stale_reason(res)
    # a clustering that measures none (one selection) is current without it
    store = ResultsStore(res)
    store.set_meta(pattern_settings=repr(PatternSettings(mixture_runs=1)))
    store.close()
    assert stale_reason(res, pattern_settings=PatternSettings(mixture_runs=1)) is None


def test_scoring_records_the_pattern_settings(tmp_path):
    from discovery.batch.score import recluster

    store = ResultsStore(tmp_path / "res")
    try:
        recluster(store, PatternSettings(min_cluster_size=3))
        assert store.meta()["pattern_settings"] == repr(PatternSettings(min_cluster_size=3))
    finally:
        store.close()


def test_results_scored_with_another_verdict_rule_or_none_are_stale(tmp_path):
    """The demo card's verdict rule decides the verdicts: results without it (scored before
    the rule, or with another) are scored again."""
    card = load_card(default_model_dir())
    assert card.verdict_rule_sha256                       # the demo model has a rule
    sha = card.weights_sha256
    assert stale_reason(_store(tmp_path / "a", sha)) is None
    for rule in ("", "f" * 64):
        reason = stale_reason(_store(tmp_path / f"b{len(rule)}", sha, rule=rule))
        assert "another verdict rule" in reason
