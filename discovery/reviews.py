"""Agreement between reviewers, the verdicts per item, and review progress.

Pure functions over the tables of :class:`discovery.store.tables.ResultsStore` (pandas in, pandas or
plain Python out); no Streamlit, no store access, no heavy imports, so that the app's Reviews
page stays a thin layer over this module.

Rules
-----
Cohen's kappa (:func:`cohen_kappa`), unweighted::

    kappa = (p_o - p_e) / (1 - p_e)

``p_o`` is the share of items on which the two raters give the same label, ``p_e`` the
agreement expected by chance, ``sum_k p_a(k) * p_b(k)`` over the labels ``k`` with each
rater's own label frequencies.  The two label sequences are paired by position; a pair in
which either label is missing (None or NaN) is dropped.  Labels neither rater used add
nothing to ``p_e``, so *categories* only validates the labels.  Degenerate cases:

* no pair left (empty input, or every pair has a missing label): NaN, there is nothing to
  measure;
* both raters give one and the same label to every item (``p_e == 1``, hence ``p_o == 1``):
  NaN, because kappa is 0 / 0 there: with no variation at all, agreement cannot be told
  apart from chance.  This is the only way ``p_e`` can reach 1.
* one rater constant, the other not: well defined, ``p_o == p_e`` and kappa is 0 (no
  agreement beyond what the constant rater's marginal predicts).  A single item on which the
  two differ also gives 0.

Pairwise agreement (:func:`pairwise_agreement`): per item type, one row per unordered pair
of reviewers (``reviewer_a < reviewer_b``) who reviewed at least one common item; kappa and
the observed agreement use only those common items.  If a reviewer has several rows for the
same item (not so in the store, whose ``reviews`` table is unique per item and reviewer), the
last row wins.

Verdict table (:func:`verdict_table`): one row per (item_type, item_id); ``consensus`` is the
verdict given by *more than half* of the item's reviewers (so a lone reviewer's verdict is
the consensus, 2 of 3 is, 2 of 4 is not), otherwise ``"split"``.

Progress (:func:`progress`): the items to review are the scored nodules (findings rows with
a non-empty ``nodule_id``; item id ``"<case_id>/<nodule_id>"``, as the app's pages write
them) and the pattern clusters (item id ``str(cluster)``, negative cluster numbers, i.e.
noise, excluded).  Reviews of items that are no longer in the results (for example after
re-scoring) are not counted.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from itertools import combinations
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "AGREEMENT_COLUMNS",
    "ITEM_TYPES",
    "cluster_item_ids",
    "cohen_kappa",
    "nodule_item_ids",
    "pairwise_agreement",
    "progress",
    "verdict_table",
]

ITEM_TYPES = ("nodule", "cluster")
#: Columns of :func:`pairwise_agreement`.
AGREEMENT_COLUMNS = ["reviewer_a", "reviewer_b", "n_items", "observed_agreement", "kappa"]
_REVIEW_NEEDS = ("item_type", "item_id", "reviewer", "verdict")
_FIXED = ("item_type", "item_id", "n_reviewers", "consensus")
SPLIT = "split"


def _need(df: pd.DataFrame, columns: Iterable[str], what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"the {what} table lacks column(s) {missing}; received columns "
                         f"{list(df.columns)}")


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value))


def cohen_kappa(a: Iterable[Any], b: Iterable[Any], *,
                categories: Iterable[Any] | None = None) -> float:
    """Unweighted Cohen's kappa between two raters' labels of the same items.

    Parameters
    ----------
    a, b : sequence of hashable labels, length (n_items,)
        The two raters' labels, paired by position (a pandas Series is read by position,
        not aligned on its index).  Pairs with a missing label (None or NaN) are dropped.
    categories : iterable, optional
        The allowed labels; a label outside them raises ``ValueError``.  Does not change the
        value (labels nobody used add nothing to the chance agreement).

    Returns
    -------
    float
        Kappa in [-1, 1]; NaN when no pair is left or when both raters give one identical
        label to every item (kappa is 0 / 0 there; see the module docstring).

    Raises
    ------
    ValueError
        If *a* and *b* differ in length, or a label is not among *categories*.
    """
    a, b = list(a), list(b)
    if len(a) != len(b):
        raise ValueError(f"the two raters must label the same items: received {len(a)} and "
                         f"{len(b)} labels")
    pairs = [(x, y) for x, y in zip(a, b) if not (_missing(x) or _missing(y))]
    if categories is not None:
        allowed = set(categories)
        unknown = sorted({str(v) for p in pairs for v in p if v not in allowed})
        if unknown:
            raise ValueError(f"label(s) {unknown} are not among the categories "
                             f"{sorted(map(str, allowed))}")
    n = len(pairs)
    if n == 0:
        return float("nan")
    p_o = sum(x == y for x, y in pairs) / n
    count_a = pd.Series([x for x, _ in pairs]).value_counts() / n
    count_b = pd.Series([y for _, y in pairs]).value_counts() / n
    p_e = float((count_a * count_b.reindex(count_a.index, fill_value=0.0)).sum())
    if np.isclose(p_e, 1.0):  # both constant on the same label: 0 / 0
        return float("nan")
    return float((p_o - p_e) / (1.0 - p_e))


def _check_item_type(item_type: str) -> None:
    if item_type not in ITEM_TYPES:
        raise ValueError(f"item_type must be one of {ITEM_TYPES}; received {item_type!r}")


def _wide(reviews: pd.DataFrame) -> pd.DataFrame:
    """(item_type, item_id) x reviewer verdicts; the last row of a duplicate wins."""
    last = reviews.drop_duplicates(["item_type", "item_id", "reviewer"], keep="last")
    return last.pivot(index=["item_type", "item_id"], columns="reviewer", values="verdict")


def pairwise_agreement(reviews: pd.DataFrame, *, item_type: str) -> pd.DataFrame:
    """Agreement of every pair of reviewers over the items both reviewed.

    Parameters
    ----------
    reviews : DataFrame
        The store's reviews table (columns ``item_type``, ``item_id``, ``reviewer``,
        ``verdict``; more are ignored).
    item_type : {"nodule", "cluster"}
        Which reviews to compare.

    Returns
    -------
    DataFrame
        :data:`AGREEMENT_COLUMNS`: ``reviewer_a`` < ``reviewer_b`` (names), ``n_items``
        (items both reviewed, >= 1), ``observed_agreement`` (share of those with the same
        verdict), ``kappa`` (:func:`cohen_kappa` on them; NaN when undefined).  One row per
        pair with at least one common item, sorted by the names; empty when there is none.
    """
    _check_item_type(item_type)
    _need(reviews, _REVIEW_NEEDS, "reviews")
    sub = reviews[reviews["item_type"] == item_type]
    rows = []
    if not sub.empty:
        wide = _wide(sub)
        for ra, rb in combinations(sorted(wide.columns), 2):
            both = wide[[ra, rb]].dropna()
            if both.empty:
                continue
            a, b = both[ra].tolist(), both[rb].tolist()
            rows.append({"reviewer_a": ra, "reviewer_b": rb, "n_items": len(both),
                         "observed_agreement": float(np.mean([x == y for x, y in zip(a, b)])),
                         "kappa": cohen_kappa(a, b)})
    out = pd.DataFrame(rows, columns=AGREEMENT_COLUMNS)
    return out.astype({"n_items": int, "observed_agreement": float, "kappa": float})


def _natural(value: Any) -> tuple:
    """Sort key that puts "case-2" before "case-10" and cluster "2" before "10"."""
    return tuple((0, int(t), "") if t.isdigit() else (1, 0, t)
                 for t in re.split(r"(\d+)", str(value)) if t)


def _consensus(verdicts: list[str]) -> str:
    if not verdicts:
        return SPLIT
    counts = pd.Series(verdicts).value_counts()
    return str(counts.index[0]) if counts.iloc[0] * 2 > len(verdicts) else SPLIT


def verdict_table(reviews: pd.DataFrame) -> pd.DataFrame:
    """Every reviewed item with each reviewer's verdict and the consensus.

    Parameters
    ----------
    reviews : DataFrame
        The store's reviews table (``item_type``, ``item_id``, ``reviewer``, ``verdict``).

    Returns
    -------
    DataFrame
        One row per (item_type, item_id), sorted by type then id (numbers in ids compared
        as numbers).  Columns ``item_type``, ``item_id``, ``n_reviewers``, ``consensus``
        (majority verdict, or ``"split"``: see the module docstring), then one column per
        reviewer (sorted names; None where that reviewer has not reviewed the item).  A
        reviewer named like one of the four fixed columns gets the column
        ``"<name> (reviewer)"``.
    """
    _need(reviews, _REVIEW_NEEDS, "reviews")
    if reviews.empty:
        return pd.DataFrame({"item_type": pd.Series(dtype=object),
                             "item_id": pd.Series(dtype=object),
                             "n_reviewers": pd.Series(dtype=int),
                             "consensus": pd.Series(dtype=object)})
    wide = _wide(reviews)
    names = sorted(wide.columns)
    cells = {name: [None if _missing(v) else v for v in wide[name]] for name in names}
    given = [[v for v in row if v is not None] for row in zip(*cells.values())]
    out = pd.DataFrame({"item_type": wide.index.get_level_values("item_type"),
                        "item_id": wide.index.get_level_values("item_id"),
                        "n_reviewers": [len(g) for g in given],
                        "consensus": [_consensus(g) for g in given]})
    for name in names:
        column = f"{name} (reviewer)" if name in _FIXED else name
        out[column] = pd.Series(cells[name], dtype=object)
    order = sorted(range(len(out)), key=lambda i: (out["item_type"].iat[i],
                                                   _natural(out["item_id"].iat[i])))
    return out.iloc[order].reset_index(drop=True)


def nodule_item_ids(findings: pd.DataFrame) -> list[str]:
    """Review item ids (``"<case_id>/<nodule_id>"``) of the scored nodules in *findings*."""
    _need(findings, ("case_id", "nodule_id"), "findings")
    nid = findings["nodule_id"].fillna("").astype(str)
    scored = findings[nid != ""]
    return sorted({f"{c}/{n}" for c, n in zip(scored["case_id"], scored["nodule_id"])},
                  key=_natural)


def cluster_item_ids(clusters: pd.DataFrame) -> list[str]:
    """Review item ids (``str(cluster)``) of the pattern clusters (noise, < 0, excluded)."""
    _need(clusters, ("cluster",), "clusters")
    numbers = pd.to_numeric(clusters["cluster"], errors="coerce").dropna().astype(int)
    return [str(c) for c in sorted(set(numbers)) if c >= 0]


def progress(findings: pd.DataFrame, clusters: pd.DataFrame, reviews: pd.DataFrame,
             reviewer: str | None = None) -> dict[str, dict[str, int | None]]:
    """How much is reviewed, by anyone and by *reviewer*.

    Parameters
    ----------
    findings, clusters, reviews : DataFrame
        The store's tables (see the module docstring for which rows are items).
    reviewer : str, optional
        A reviewer's name (surrounding spaces ignored, as the store does).

    Returns
    -------
    dict
        ``{"nodule": {...}, "cluster": {...}, "total": {...}}``, each with the counts
        ``items`` (to review), ``reviewed`` (by anyone), ``left`` (by nobody yet),
        ``reviewed_by_reviewer`` and ``left_for_reviewer``; the last two are None when no
        reviewer is given.  ``total`` sums the two item types.
    """
    _need(reviews, _REVIEW_NEEDS, "reviews")
    name = (reviewer or "").strip() or None
    items = {"nodule": set(nodule_item_ids(findings)), "cluster": set(cluster_item_ids(clusters))}
    out: dict[str, dict[str, int | None]] = {}
    for kind, ids in items.items():
        sub = reviews[reviews["item_type"] == kind]
        done = set(sub["item_id"].astype(str)) & ids
        entry: dict[str, int | None] = {"items": len(ids), "reviewed": len(done),
                                        "left": len(ids) - len(done),
                                        "reviewed_by_reviewer": None, "left_for_reviewer": None}
        if name is not None:
            mine = set(sub.loc[sub["reviewer"] == name, "item_id"].astype(str)) & ids
            entry["reviewed_by_reviewer"] = len(mine)
            entry["left_for_reviewer"] = len(ids) - len(mine)
        out[kind] = entry
    out["total"] = {key: (None if out["nodule"][key] is None
                          else out["nodule"][key] + out["cluster"][key])
                    for key in out["nodule"]}
    return out
