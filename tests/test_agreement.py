"""discovery.reviews: Cohen's kappa with hand-computed values, reviewer pairs, the verdict
table and review progress."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import cohen_kappa_score

from discovery.reviews import (
    AGREEMENT_COLUMNS,
    cohen_kappa,
    pairwise_agreement,
    progress,
    verdict_table,
)


def _pairs(counts: dict[tuple[str, str], int]) -> tuple[list[str], list[str]]:
    """Two raters' label lists from a contingency table {(label_a, label_b): count}."""
    a, b = [], []
    for (x, y), n in counts.items():
        a += [x] * n
        b += [y] * n
    return a, b


def _reviews(rows, item_type="nodule") -> pd.DataFrame:
    """A reviews table as the store returns it, from (item_id, reviewer, verdict) rows."""
    return pd.DataFrame([{"item_type": item_type, "item_id": i, "reviewer": r, "verdict": v,
                          "note": "", "updated_at": "2024-01-01T00:00:00+00:00"}
                         for i, r, v in rows],
                        columns=["item_type", "item_id", "reviewer", "verdict", "note",
                                 "updated_at"])


# -- cohen_kappa -----------------------------------------------------------------------------
def test_kappa_2x2_twenty_items_hand_value_and_sklearn():
    # yes/yes 9, yes/no 3, no/yes 2, no/no 6: p_o = 15/20 = 0.75;
    # p_e = 0.60 * 0.55 + 0.40 * 0.45 = 0.51; kappa = 0.24 / 0.49 = 24/49
    a, b = _pairs({("yes", "yes"): 9, ("yes", "no"): 3, ("no", "yes"): 2, ("no", "no"): 6})
    assert len(a) == 20
    assert cohen_kappa(a, b) == pytest.approx(24 / 49)
    assert cohen_kappa(a, b) == pytest.approx(cohen_kappa_score(a, b))
    assert cohen_kappa(b, a) == pytest.approx(24 / 49)  # symmetric


def test_kappa_textbook_fifty_items_is_0_4():
    # the classic table: 20 both yes, 15 both no, 5 + 10 disagreements:
    # p_o = 0.7, p_e = 0.5 * 0.6 + 0.5 * 0.4 = 0.5, kappa = 0.4
    a, b = _pairs({("yes", "yes"): 20, ("yes", "no"): 5, ("no", "yes"): 10, ("no", "no"): 15})
    assert cohen_kappa(a, b) == pytest.approx(0.4)


def test_kappa_three_categories_matches_sklearn():
    rng = np.random.default_rng(7)
    labels = ["on the tumour", "partly", "elsewhere"]
    a = list(rng.choice(labels, size=40))
    b = [x if rng.random() < 0.6 else rng.choice(labels) for x in a]
    assert cohen_kappa(a, b) == pytest.approx(cohen_kappa_score(a, b))
    # categories nobody used do not change the value
    assert cohen_kappa(a, b, categories=labels + ["can't tell"]) == pytest.approx(
        cohen_kappa_score(a, b))


def test_kappa_perfect_agreement_is_one():
    a = ["x", "y", "z", "x", "y"]
    assert cohen_kappa(a, list(a)) == 1.0


def test_kappa_systematic_disagreement_is_negative():
    # p_o = 0, p_e = 0.5: kappa = -1
    assert cohen_kappa(["x", "y", "x", "y"], ["y", "x", "y", "x"]) == pytest.approx(-1.0)
    # mostly swapped, one agreement: p_o = 1/6, p_e = 0.5: kappa = -2/3
    a = ["x", "x", "x", "y", "y", "y"]
    b = ["y", "y", "x", "x", "x", "x"]
    assert cohen_kappa(a, b) == pytest.approx(-2 / 3)


def test_kappa_degenerate_cases():
    # nothing to compare
    assert math.isnan(cohen_kappa([], []))
    assert math.isnan(cohen_kappa(["x", None], [np.nan, "y"]))
    # both raters give one identical label to everything: p_e = p_o = 1, kappa = 0/0
    assert math.isnan(cohen_kappa(["x"] * 5, ["x"] * 5))
    assert math.isnan(cohen_kappa(["x"], ["x"]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert math.isnan(cohen_kappa_score(["x"] * 5, ["x"] * 5))  # sklearn agrees
    # one rater constant, the other not: p_o = p_e = 0.5, kappa = 0 (defined)
    assert cohen_kappa(["x"] * 4, ["x", "y", "x", "y"]) == pytest.approx(0.0)
    assert cohen_kappa(["x"] * 4, ["x", "y", "x", "y"]) == pytest.approx(
        cohen_kappa_score(["x"] * 4, ["x", "y", "x", "y"]))
    # one item, different labels: p_o = 0, p_e = 0, kappa = 0
    assert cohen_kappa(["x"], ["y"]) == 0.0


def test_kappa_drops_pairs_with_a_missing_label():
    a = ["x", "y", None, "x", "y", np.nan]
    b = ["x", "y", "x", "y", "y", "y"]
    assert cohen_kappa(a, b) == pytest.approx(cohen_kappa(["x", "y", "x", "y"], ["x", "y", "y", "y"]))


def test_kappa_rejects_bad_input():
    with pytest.raises(ValueError, match="3 and 2"):
        cohen_kappa(["x", "y", "x"], ["x", "y"])
    with pytest.raises(ValueError, match="'maybe'"):
        cohen_kappa(["x", "maybe"], ["x", "x"], categories=["x", "y"])


# -- pairwise_agreement --------------------------------------------------------------------------
def test_pairs_use_only_common_items():
    rows = [
        # ann and bob share items 1-4: agree on 1, 2, 3, differ on 4
        ("c/1", "ann", "partly"), ("c/2", "ann", "elsewhere"), ("c/3", "ann", "partly"),
        ("c/4", "ann", "partly"), ("c/5", "ann", "partly"),
        ("c/1", "bob", "partly"), ("c/2", "bob", "elsewhere"), ("c/3", "bob", "partly"),
        ("c/4", "bob", "elsewhere"),
        # cy shares only c/5 with ann and nothing with bob
        ("c/5", "cy", "elsewhere"), ("c/9", "cy", "partly"),
    ]
    reviews = pd.concat([_reviews(rows), _reviews([("0", "bob", "noise"), ("0", "cy", "noise")],
                                                  item_type="cluster")], ignore_index=True)
    pairs = pairwise_agreement(reviews, item_type="nodule")
    assert list(pairs.columns) == AGREEMENT_COLUMNS
    assert list(zip(pairs["reviewer_a"], pairs["reviewer_b"])) == [("ann", "bob"), ("ann", "cy")]
    ab = pairs.iloc[0]
    assert ab["n_items"] == 4 and ab["observed_agreement"] == pytest.approx(0.75)
    # ann: partly x3, elsewhere x1; bob: partly x2, elsewhere x2:
    # p_e = 0.75 * 0.5 + 0.25 * 0.5 = 0.5, kappa = (0.75 - 0.5) / 0.5 = 0.5
    assert ab["kappa"] == pytest.approx(0.5)
    ac = pairs.iloc[1]
    assert ac["n_items"] == 1 and ac["observed_agreement"] == 0.0 and ac["kappa"] == 0.0
    # cluster reviews are separate: bob and cy agree on the single cluster -> kappa undefined
    clusters = pairwise_agreement(reviews, item_type="cluster")
    assert clusters[["reviewer_a", "reviewer_b", "n_items"]].values.tolist() == [["bob", "cy", 1]]
    assert clusters["observed_agreement"].iloc[0] == 1.0 and math.isnan(clusters["kappa"].iloc[0])


def test_pairs_empty_and_single_reviewer():
    assert pairwise_agreement(_reviews([]), item_type="nodule").empty
    one = pairwise_agreement(_reviews([("c/1", "ann", "partly"), ("c/2", "ann", "partly")]),
                             item_type="nodule")
    assert one.empty and list(one.columns) == AGREEMENT_COLUMNS
    with pytest.raises(ValueError, match="item_type"):
        pairwise_agreement(_reviews([]), item_type="case")
    with pytest.raises(ValueError, match="verdict"):
        pairwise_agreement(pd.DataFrame({"item_type": [], "item_id": [], "reviewer": []}),
                           item_type="nodule")


# -- verdict_table ---------------------------------------------------------------------------------
def test_verdict_table_majority_and_split():
    reviews = pd.concat([
        _reviews([("c/10", "ann", "partly"), ("c/10", "bob", "partly"), ("c/10", "cy", "elsewhere"),
                  ("c/2", "ann", "partly"), ("c/2", "bob", "elsewhere"),
                  ("c/3", "cy", "can't tell")]),
        _reviews([("10", "ann", "noise"), ("2", "bob", "known sign")], item_type="cluster"),
    ], ignore_index=True)
    table = verdict_table(reviews)
    assert list(table.columns) == ["item_type", "item_id", "n_reviewers", "consensus",
                                   "ann", "bob", "cy"]
    # natural order: c/2 before c/10, cluster 2 before 10; clusters before nodules
    assert list(zip(table["item_type"], table["item_id"])) == [
        ("cluster", "2"), ("cluster", "10"), ("nodule", "c/2"), ("nodule", "c/3"),
        ("nodule", "c/10")]
    t = table.set_index(["item_type", "item_id"])
    assert t.loc[("nodule", "c/10"), "consensus"] == "partly"       # 2 of 3
    assert t.loc[("nodule", "c/2"), "consensus"] == "split"         # 1 of 2 each
    assert t.loc[("nodule", "c/3"), "consensus"] == "can't tell"    # lone reviewer
    assert t.loc[("nodule", "c/10"), "n_reviewers"] == 3
    assert t.loc[("nodule", "c/3"), "n_reviewers"] == 1
    assert t.loc[("nodule", "c/3"), "ann"] is None
    assert t.loc[("cluster", "2"), "bob"] == "known sign"


def test_verdict_table_two_of_four_is_split_and_name_clash():
    reviews = _reviews([("c/1", "a", "partly"), ("c/1", "b", "partly"),
                        ("c/1", "c", "elsewhere"), ("c/1", "consensus", "can't tell")])
    table = verdict_table(reviews)
    assert table["consensus"].tolist() == ["split"]
    assert table["consensus (reviewer)"].tolist() == ["can't tell"]
    empty = verdict_table(_reviews([]))
    assert empty.empty and list(empty.columns) == ["item_type", "item_id", "n_reviewers",
                                                   "consensus"]


# -- progress --------------------------------------------------------------------------------------
def test_progress_counts_items_by_anyone_and_by_reviewer():
    findings = pd.DataFrame({"case_id": ["A", "A", "B", "C"],
                             "nodule_id": ["n1", "n2", "n1", ""]})   # C failed: not an item
    clusters = pd.DataFrame({"cluster": [0, 1, 2]})
    reviews = pd.concat([
        _reviews([("A/n1", "ann", "partly"), ("A/n1", "bob", "partly"),
                  ("B/n1", "bob", "elsewhere"), ("Z/n9", "ann", "partly")]),  # Z: stale item
        _reviews([("1", "ann", "noise")], item_type="cluster"),
    ], ignore_index=True)
    p = progress(findings, clusters, reviews, " ann ")
    assert p["nodule"] == {"items": 3, "reviewed": 2, "left": 1, "reviewed_by_reviewer": 1,
                           "left_for_reviewer": 2}
    assert p["cluster"] == {"items": 3, "reviewed": 1, "left": 2, "reviewed_by_reviewer": 1,
                            "left_for_reviewer": 2}
    assert p["total"] == {"items": 6, "reviewed": 3, "left": 3, "reviewed_by_reviewer": 2,
                          "left_for_reviewer": 4}
    anon = progress(findings, clusters, reviews)
    assert anon["nodule"]["reviewed_by_reviewer"] is None
    assert anon["total"]["left_for_reviewer"] is None and anon["total"]["left"] == 3
    none = progress(findings.iloc[:0], clusters.iloc[:0], _reviews([]), "ann")
    assert none["total"] == {"items": 0, "reviewed": 0, "left": 0, "reviewed_by_reviewer": 0,
                             "left_for_reviewer": 0}
