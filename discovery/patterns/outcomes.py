"""The three outcomes an explanation can have, read off a scored cohort.

An explanation *validates* a model when the attribution sits on the tumour, *diagnoses* it
when the prediction rests on an artifact, and *extracts knowledge* when the model relies on
a structure nobody annotated.  This module turns the stored findings (per nodule) and the
pattern clusters (with their causal check) into those three readings, by documented rules,
so that the app and the report show them side by side.  Pure tables in, tables out.

Rules
-----
Cluster reading (:func:`cluster_readings`), first match wins:

* ``"artifact"``: the cluster's median halo density (``median_halo_max_hu``, the densest
  voxel within 3 mm of each member region) is at least :data:`ARTIFACT_HU` = 2000 HU,
  denser than cortical bone (about 1000-1900 HU): metal, a skin marker, a clip, dense
  contrast.  No lung structure is that dense, so the model has no clinical reason to use it.
* ``"candidate sign"``: anatomical density, and the model relies on it *for* malignancy
  (``relied_upon`` with a negative ``effect_mean``: removing it lowers the probability) or
  the cluster is enriched for predicted-malignant nodules (``enrichment_predicted > 1`` and
  ``q_predicted < 0.05``), and the cluster is stable: the clusterings from other seeds find
  it again (``stability`` at least :data:`~discovery.schema.STABLE_CLUSTER` = 0.75, Hennig's
  bound; a table without the column, or a cluster not measured, passes).  A pattern worth a
  clinician's look, not a finding.
* ``"unstable"``: would be a candidate sign, but the grouping changes with the clustering's
  random start (``stability`` under 0.75): the regions are relied upon or enriched, but no
  pattern of them is reproducible.
* ``"incidental"``: everything else (attention the model does not depend on).

Nodule outcome (:func:`nodule_outcomes`), first match wins:

* ``"shortcut"``: predicted malignant (``predicted_label``; ``flagged`` where findings
  lack it) and one of the clusters whose regions alone lower its probability by at least
  :data:`~discovery.schema.MIN_EFFECT` (0.05; ``flag_clusters``) reads ``"artifact"``: the
  model uses an artifact for this call.
  It *decides* the call when the case-level flag fired as well (``flagged``: not predicted
  malignant any more once all its off-mask regions are removed); otherwise the artifact
  only inflates P(malignant).  Both are shortcuts (the model relies on something with no
  clinical meaning); the panel says how many of each.
  Also a shortcut, with no cluster behind it (``outcome_cluster`` -1): predicted malignant,
  the prediction rests on the nodule's surroundings (``rests_on_surroundings``, the voxels
  within :data:`~discovery.schema.SURROUNDINGS_MM` of the mask, which no off-mask region
  reaches) and a voxel there is metal-dense (``surroundings_max_hu`` at least
  :data:`ARTIFACT_HU`): a clip or marker beside the nodule.  It decides the call when
  ``p_without_surroundings`` is below the threshold.
* ``"candidate sign"``: the nodule has a region in a ``"candidate sign"`` cluster.
* ``"on the tumour"``: the localisation verdict is ``"aligned"`` and the prediction rests on
  the nodule (``rests_on_nodule``, :mod:`discovery.model.reliance`: replacing the nodule with
  lung parenchyma takes away at least half of the probability, beyond a volume-matched
  control's change): the map points at the nodule *and* the model's behaviour says it uses
  it.  Findings without a ``rests_on_nodule`` column are read on the verdict alone.
* ``"other"``: partial or off-mask attention without a pattern, an aligned verdict the
  model's behaviour does not bear out, no mask, failed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from discovery.align.metrics import describe_agreement, verdict_agreement
from discovery.model.rois import nodule_label
from discovery.patterns.stats import enrichment_test
from discovery.schema import DEFAULT_THRESHOLD, MIN_EFFECT, STABLE_CLUSTER, SURROUNDINGS_MM

__all__ = ["ARTIFACT_HU", "MIN_SURROUNDINGS_GROUP", "OUTCOMES", "READINGS", "SCORED_STATUSES",
           "Exemplar", "Panel", "OutcomeReadings", "agreement_reading", "cluster_readings",
           "nodule_outcomes", "outcome_panels", "outcome_reason", "read_outcomes", "rules_summary",
           "shortcut_exemplar", "surroundings_reading"]

#: Median halo density (HU) from which a cluster reads as an artifact (metal-like).
ARTIFACT_HU = 2000.0
#: Fewest predicted-malignant nodules resting on their surroundings for the cohort's
#: reading of them (:func:`surroundings_reading`) to be shown as a finding.
MIN_SURROUNDINGS_GROUP = 3
#: Significance of the predicted-malignancy enrichment that makes a candidate sign.
CANDIDATE_Q = 0.05
READINGS = ("artifact", "candidate sign", "unstable", "incidental")
OUTCOMES = ("on the tumour", "shortcut", "candidate sign", "other")

_CLUSTER_NEEDS = ("cluster", "median_halo_max_hu", "relied_upon", "effect_mean",
                  "enrichment_predicted", "q_predicted")
_FINDING_NEEDS = ("case_id", "nodule_id", "verdict", "flagged", "flag_clusters")


def rules_summary() -> str:
    """The nodule outcome rules in one plain paragraph, as the app and the reports state them
    (the module docstring has them in full)."""
    return (
        "Shortcut: predicted malignant, and removing its off-mask regions of a metal-dense "
        f"cluster (median density within 3 mm at least {ARTIFACT_HU:.0f} HU) lowers "
        f"P(malignant) by {MIN_EFFECT:g} or more; the artifact decides the call when the "
        "prediction would not survive removing all its off-mask regions. Also a shortcut: "
        f"predicted malignant, resting on what lies within {SURROUNDINGS_MM:g} mm of the "
        f"nodule (which no off-mask region reaches), with a voxel of at least {ARTIFACT_HU:.0f} "
        "HU there (a clip or marker beside it). Candidate pattern: "
        "a region in an anatomical-density cluster the model relies on for malignancy, or "
        f"that is enriched for predicted-malignant nodules (q < {CANDIDATE_Q:g}), and that "
        "the clusterings from other seeds find again (stability at least "
        f"{STABLE_CLUSTER:g}). On the "
        "tumour: verdict aligned "
        "and the prediction rests on the nodule (replacing it with lung parenchyma takes away "
        "at least half of P(malignant), beyond a volume-matched control's change).")


def agreement_reading(findings: pd.DataFrame) -> tuple[str, bool]:
    """Do the verdicts agree with the reliance on the nodule on this cohort?

    Parameters
    ----------
    findings : pandas.DataFrame
        The findings table (columns ``status``, ``verdict``, ``predicted_label`` and, when
        scored with the reliance, ``rests_on_nodule``).

    Returns
    -------
    sentence : str
        :func:`discovery.align.metrics.describe_agreement` of the scored nodules, or why it
        cannot be measured (results scored before the reliance existed).
    weak : bool
        Whether to show it as a warning.
    """
    _need(findings, ["status", "verdict", "predicted_label"], "findings")
    if "rests_on_nodule" not in findings.columns:
        return ("Whether the verdicts agree with what the model does was not measured for "
                "these results (scored before the reliance on the nodule existed); scoring "
                "them again measures it.", False)
    scored = findings[findings["status"].isin(SCORED_STATUSES)]
    agreement = verdict_agreement(
        scored["verdict"].astype(str).to_numpy(),
        pd.to_numeric(scored["rests_on_nodule"], errors="coerce").to_numpy(dtype=float),
        pd.to_numeric(scored["predicted_label"], errors="coerce").to_numpy(dtype=float))
    return describe_agreement(agreement)


def surroundings_reading(findings: pd.DataFrame, truth: pd.DataFrame | None = None,
                         *, reach_mm: float = SURROUNDINGS_MM
                         ) -> tuple[str, bool]:
    """Do this cohort's malignant calls rest on what surrounds the nodules?

    The off-mask regions, their clusters and the shortcut flag begin beyond the margin
    around the mask; a structure that hugs the nodule (a rim of ground glass, spicules, a
    strand's root) is measured only by the reliance on the surroundings
    (:mod:`discovery.model.reliance`).  This reads it over the cohort.

    Parameters
    ----------
    findings : pandas.DataFrame
        The findings table (``case_id``, ``nodule_id``, ``status``, ``predicted_label`` and,
        when scored with it, ``rests_on_surroundings``, ``rests_on_nodule`` and
        ``surroundings_median_hu``, ``surroundings_max_hu``).
    truth : pandas.DataFrame, optional
        Known true labels (``case_id``, ``nodule_id``, ``malignant``): when given for the
        nodules, the true-malignant share of the group against the other predicted-malignant
        nodules, with Fisher's exact two-sided p.
    reach_mm : float, optional
        The surroundings' reach the results were scored with (words only).

    Returns
    -------
    sentence : str
        What was measured, in words.
    notable : bool
        At least :data:`MIN_SURROUNDINGS_GROUP` predicted-malignant nodules rest on their
        surroundings (a pattern to review), or any of them has metal-dense voxels
        (:data:`ARTIFACT_HU`) there (a shortcut).
    """
    _need(findings, ["case_id", "nodule_id", "status", "predicted_label"], "findings")
    if "rests_on_surroundings" not in findings.columns:
        return ("Whether the predictions rest on the nodules' surroundings was not measured "
                "for these results (scored before that measure existed); scoring them again "
                "measures it.", False)
    scored = findings[findings["status"].isin(SCORED_STATUSES)]
    rests = pd.to_numeric(scored["rests_on_surroundings"], errors="coerce")
    pool = scored[(pd.to_numeric(scored["predicted_label"], errors="coerce") == 1)
                  & rests.notna()]
    group = pool[_truthy(pool["rests_on_surroundings"])]
    where = f"what lies within {reach_mm:g} mm of the mask (outside it, in the lung)"
    if not len(pool):
        return (f"No predicted-malignant nodule to check for a reliance on {where}.", False)
    if not len(group):
        return (f"No predicted-malignant nodule rests on {where} (0 of {len(pool)}).", False)
    rest = pool.drop(group.index)
    parts = [f"{len(group)} of {len(pool)} predicted-malignant nodules rest on {where}: "
             "replacing it with lung parenchyma takes away at least half of P(malignant)"]
    if "rests_on_nodule" in group.columns:
        alone = int((pd.to_numeric(group["rests_on_nodule"], errors="coerce") == 0).sum())
        parts[0] += f"; {alone} of them do not rest on the nodule itself"
    hu, other_hu = _numbers(group, "surroundings_median_hu"), _numbers(rest, "surroundings_median_hu")
    if hu.notna().any():
        parts.append(f"Those surroundings have a median of {hu.median():.0f} HU"
                     + (f", against {other_hu.median():.0f} HU around the other "
                        "predicted-malignant nodules" if other_hu.notna().any() else ""))
    parts.append(_truth_share(group, pool, truth))
    metal = int(_metal_beside(group).sum())
    if metal:
        parts.append(f"{metal} of them {'has' if metal == 1 else 'have'} metal-dense voxels "
                     f"(at least {ARTIFACT_HU:.0f} HU) "
                     "within those surroundings: a clip or marker beside the nodule is a "
                     "shortcut, not a sign")
    notable = len(group) >= MIN_SURROUNDINGS_GROUP or metal > 0
    if notable:
        parts.append(f"The off-mask regions begin beyond those {reach_mm:g} mm, so a "
                     "structure that hugs the nodule (a halo, spicules, a strand's root) "
                     "shows only here")
    return ". ".join(p for p in parts if p) + ".", notable


def _numbers(df: pd.DataFrame, column: str) -> pd.Series:
    """*column* of *df* as numbers (NaN where not a number, all NaN when absent)."""
    if column not in df.columns:
        return pd.Series(np.nan, index=df.index, dtype=float)
    return pd.to_numeric(df[column], errors="coerce")


def _truth_share(group: pd.DataFrame, pool: pd.DataFrame, truth: pd.DataFrame | None) -> str:
    """The true-malignant share of *group* against the rest of *pool*, with Fisher's exact
    two-sided p; ``""`` without labels for them."""
    if truth is None or not len(truth):
        return ""
    _need(truth, ["case_id", "nodule_id", "malignant"], "labels")
    keyed = pool[["case_id", "nodule_id"]].assign(in_group=pool.index.isin(group.index))
    known = keyed.merge(truth[["case_id", "nodule_id", "malignant"]],
                        on=["case_id", "nodule_id"], how="inner")
    known = known[pd.to_numeric(known["malignant"], errors="coerce").notna()]
    inside = known[known["in_group"]]
    if not len(inside):
        return ""
    positive = pd.to_numeric(known["malignant"]).to_numpy(dtype=float) >= 0.5
    test = enrichment_test(known["in_group"].to_numpy(dtype=bool), positive, n_permutations=1)
    outside = known[~known["in_group"]]
    text = (f"Truly malignant: {int(positive[known['in_group'].to_numpy()].sum())} of "
            f"{len(inside)}")
    if len(outside):
        text += (f", against {int(positive[~known['in_group'].to_numpy()].sum())} of "
                 f"{len(outside)} other predicted-malignant nodules (Fisher's exact p = "
                 f"{test.p_exact:.2g})")
    return text


def _need(df: pd.DataFrame, columns, what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{what} table lacks column(s) {missing}; received columns "
                         f"{list(df.columns)}")


def _truthy(values: pd.Series) -> np.ndarray:
    """Booleans from a column stored as bool, 0/1, '0'/'1' or None/NaN (NaN is False)."""
    num = pd.to_numeric(values, errors="coerce")
    return (num.fillna(0).to_numpy(dtype=float) != 0)


def cluster_readings(clusters: pd.DataFrame) -> pd.Series:
    """Reading of each cluster (:data:`READINGS`), indexed like ``clusters``.

    Parameters
    ----------
    clusters : pandas.DataFrame
        The cluster table with the causal check (``discovery score``'s ``clusters`` table or
        :func:`discovery.patterns.causal.pattern_effects`): needs ``cluster``, ``median_halo_max_hu``
        (HU), ``relied_upon``, ``effect_mean`` (probability change when removed),
        ``enrichment_predicted`` and ``q_predicted``; ``stability`` where measured.

    Returns
    -------
    pandas.Series of str
        ``"artifact"``, ``"candidate sign"``, ``"unstable"`` or ``"incidental"`` (module
        docstring).  A cluster with unknown halo density (NaN) is never an artifact; one
        with unknown stability (NaN, or no column) is not unstable.
    """
    _need(clusters, _CLUSTER_NEEDS, "cluster")
    halo = pd.to_numeric(clusters["median_halo_max_hu"], errors="coerce").to_numpy(dtype=float)
    effect = pd.to_numeric(clusters["effect_mean"], errors="coerce").to_numpy(dtype=float)
    enrich = pd.to_numeric(clusters["enrichment_predicted"], errors="coerce").to_numpy(dtype=float)
    q = pd.to_numeric(clusters["q_predicted"], errors="coerce").to_numpy(dtype=float)
    relied_for = _truthy(clusters["relied_upon"]) & (effect < 0)
    stability = (pd.to_numeric(clusters["stability"], errors="coerce").to_numpy(dtype=float)
                 if "stability" in clusters.columns else np.full(len(clusters), np.nan))
    with np.errstate(invalid="ignore"):
        enriched = (enrich > 1) & (q < CANDIDATE_Q)
        artifact = halo >= ARTIFACT_HU
        unstable = stability < STABLE_CLUSTER
    reading = np.where(artifact, "artifact",
                       np.where(relied_for | enriched,
                                np.where(unstable, "unstable", "candidate sign"), "incidental"))
    return pd.Series(reading, index=clusters.index, name="reading", dtype=object)


def _cluster_ids(text) -> list[int]:
    if text is None or (isinstance(text, float) and np.isnan(text)):
        return []
    return [int(t) for t in str(text).replace(";", ",").split(",") if t.strip() != ""]


def nodule_outcomes(findings: pd.DataFrame, clusters: pd.DataFrame,
                    regions: pd.DataFrame) -> pd.DataFrame:
    """The outcome of each nodule's explanation (:data:`OUTCOMES`).

    Parameters
    ----------
    findings : pandas.DataFrame
        One row per nodule: ``case_id``, ``nodule_id``, ``verdict``, ``flagged``,
        ``flag_clusters`` (comma-separated cluster ids, empty when none) and, when the
        findings have them, ``predicted_label`` (1 = predicted malignant) and
        ``rests_on_nodule`` (1 / 0 / NaN; NaN is not resting).
    clusters : pandas.DataFrame
        As for :func:`cluster_readings`.
    regions : pandas.DataFrame
        Clustered regions: ``case_id``, ``nodule_id``, ``cluster`` (-1 = none).

    Returns
    -------
    pandas.DataFrame
        ``findings`` (same index and order) plus ``outcome`` and ``outcome_cluster`` (the
        cluster behind a shortcut or candidate-sign outcome, -1 otherwise).
    """
    _need(findings, _FINDING_NEEDS, "findings")
    _need(regions, ("case_id", "nodule_id", "cluster"), "regions")
    return _outcomes(findings, _readings_by_id(clusters), regions)


def _readings_by_id(clusters: pd.DataFrame) -> dict[int, str]:
    """Cluster id -> reading (:func:`cluster_readings`); empty without clusters."""
    if not len(clusters):
        return {}
    return dict(zip(clusters["cluster"].astype(int), cluster_readings(clusters)))


def _outcomes(findings: pd.DataFrame, readings: dict[int, str],
              regions: pd.DataFrame) -> pd.DataFrame:
    """:func:`nodule_outcomes` with the cluster readings given (columns checked)."""
    candidate = {c for c, r in readings.items() if r == "candidate sign"}
    on_candidate: dict[tuple[str, str], int] = {}
    for row in regions.itertuples(index=False):
        c = int(row.cluster) if pd.notna(row.cluster) else -1
        if c in candidate:
            key = (str(row.case_id), str(row.nodule_id))
            on_candidate[key] = min(c, on_candidate.get(key, c))

    flagged = _truthy(findings["flagged"])
    predicted = (_truthy(findings["predicted_label"]) | flagged
                 if "predicted_label" in findings.columns else flagged)
    rests = (_truthy(findings["rests_on_nodule"]) if "rests_on_nodule" in findings.columns
             else np.ones(len(findings), dtype=bool))
    beside = _metal_beside(findings)
    outcome, behind = [], []
    for malignant, on_it, metal, row in zip(predicted, rests, beside,
                                            findings.itertuples(index=False)):
        artifact = [c for c in _cluster_ids(row.flag_clusters) if readings.get(c) == "artifact"]
        key = (str(row.case_id), str(row.nodule_id))
        if malignant and artifact:
            outcome.append("shortcut")
            behind.append(artifact[0])
        elif malignant and metal:
            outcome.append("shortcut")
            behind.append(-1)
        elif key in on_candidate:
            outcome.append("candidate sign")
            behind.append(on_candidate[key])
        elif row.verdict == "aligned" and on_it:
            outcome.append("on the tumour")
            behind.append(-1)
        else:
            outcome.append("other")
            behind.append(-1)
    return findings.assign(outcome=outcome, outcome_cluster=np.asarray(behind, dtype=np.int64))


def _metal_beside(findings: pd.DataFrame) -> np.ndarray:
    """Per nodule: the prediction rests on its surroundings and a voxel there is metal-dense
    (at least :data:`ARTIFACT_HU`); False where either was not measured."""
    if "rests_on_surroundings" not in findings.columns:
        return np.zeros(len(findings), dtype=bool)
    dense = (_numbers(findings, "surroundings_max_hu") >= ARTIFACT_HU).to_numpy()
    return _truthy(findings["rests_on_surroundings"]) & dense


@dataclass(frozen=True)
class Exemplar:
    """One picture of an outcome panel: an axial crop of a scored case.

    ``z`` and ``center_yx`` are voxel coordinates on the case's grid; ``region`` is the
    off-mask region label (``case_region``) to outline, ``nodule`` the nodule label.
    ``focus="densest"`` (shortcut pictures): draw the slice of the densest voxel next to the
    region, centred between it and ``center_yx`` (then the nodule's centre); see
    :func:`discovery.report.render.exemplar_image`.
    """

    case_id: str
    nodule_id: str
    z: float
    center_yx: tuple[float, float]
    region: int | None
    nodule: int | None
    caption: str
    focus: str = "centroid"


@dataclass(frozen=True)
class Panel:
    """One of the three outcomes, ready to draw: a title, one plain-language paragraph, the
    number of nodules it concerns, the cluster behind it (or -1) and a few exemplars."""

    outcome: str
    title: str
    lead: str
    n_nodules: int
    cluster: int = -1
    exemplars: list[Exemplar] = field(default_factory=list)


def outcome_reason(row) -> str:
    """One nodule's outcome and why, in words, for its own page (the app's Case page).

    Parameters
    ----------
    row : mapping or pandas.Series
        A row of :func:`nodule_outcomes` (``outcome``, ``outcome_cluster``,
        ``probability``, ``flag_score``; ``p_without_surroundings`` and
        ``surroundings_max_hu`` for metal beside the nodule).

    Returns
    -------
    str
        For example ``"shortcut: metal beside the nodule (2648 HU within 5 mm); P(malignant)
        0.72 → 0.12 without its surroundings"``, ``"candidate sign: cluster 3"``, ``"on the
        tumour: verdict aligned and the prediction rests on the nodule"`` or ``"other"``.
    """
    outcome, cluster = str(row["outcome"]), int(row["outcome_cluster"])
    one = pd.DataFrame([dict(row)])
    number = {c: float(_numbers(one, c).iloc[0])
              for c in ("probability", "flag_score", "p_without_surroundings",
                        "surroundings_max_hu")}
    p = number["probability"]
    if outcome == "shortcut" and cluster < 0:
        return (f"shortcut: metal beside the nodule ({number['surroundings_max_hu']:.0f} HU "
                f"within {SURROUNDINGS_MM:g} mm of the mask); P(malignant) {p:.2f} → "
                f"{number['p_without_surroundings']:.2f} without its surroundings")
    if outcome == "shortcut":
        return (f"shortcut: artifact cluster {cluster}; P(malignant) {p:.2f} → "
                f"{p - number['flag_score']:.2f} without its off-mask regions")
    if outcome == "candidate sign":
        return f"candidate sign: an off-mask region in cluster {cluster}"
    if outcome == "on the tumour":
        return "on the tumour: verdict aligned and the prediction rests on the nodule"
    return outcome


def _total_effect(clusters: pd.DataFrame) -> pd.Series:
    """``|effect_mean| * effect_n``: the summed change of P(malignant) over a cluster's
    nodules when it is removed (0 where unknown).  A cluster of 19 nodules at -0.11 weighs more
    than one of 8 at -0.15: more of the cohort's predictions rest on it."""
    effect = pd.to_numeric(clusters["effect_mean"], errors="coerce").abs()
    n = (pd.to_numeric(clusters["effect_n"], errors="coerce") if "effect_n" in clusters.columns
         else pd.Series(1.0, index=clusters.index))
    return (effect * n).fillna(0.0)


def _pct(x) -> str:
    return "–" if not np.isfinite(x) else f"{100 * x:.0f} %"


@dataclass(frozen=True, eq=False)
class OutcomeReadings:
    """The outcome readings of a scored cohort, computed once (:func:`read_outcomes`).

    Attributes
    ----------
    readings : dict of int to str
        Cluster id -> its reading (:func:`cluster_readings`); empty without clusters.
    outcomes : pandas.DataFrame
        The scored nodules (status ``ok`` or ``no-attribution`` where findings have a
        status) with ``outcome`` and ``outcome_cluster`` (:func:`nodule_outcomes`).
    panels : tuple of Panel
        The three panels (:func:`outcome_panels`).
    """

    readings: dict[int, str]
    outcomes: pd.DataFrame
    panels: tuple[Panel, ...]


#: Case statuses whose nodules were scored: the nodules the outcomes are read for.
SCORED_STATUSES = ("ok", "no-attribution")


def read_outcomes(findings: pd.DataFrame, clusters: pd.DataFrame, regions: pd.DataFrame,
                  *, threshold: float, n_exemplars: int = 3) -> OutcomeReadings:
    """Cluster readings, nodule outcomes and the three panels, each computed once.

    Parameters
    ----------
    findings, clusters, regions : pandas.DataFrame
        As for :func:`outcome_panels`.
    threshold : float
        The model's decision threshold (``ResultsStore.threshold()``; wording only).
    n_exemplars : int
        Pictures per panel (at most one per patient).

    Returns
    -------
    OutcomeReadings
        The same readings, outcomes and panels as :func:`cluster_readings`,
        :func:`nodule_outcomes` (of the scored nodules) and :func:`outcome_panels` give.
    """
    scored = findings[findings["status"].isin(SCORED_STATUSES)] \
        if "status" in findings.columns else findings
    _need(scored, _FINDING_NEEDS, "findings")
    _need(regions, ("case_id", "nodule_id", "cluster"), "regions")
    series = cluster_readings(clusters) if len(clusters) else pd.Series(dtype=object)
    readings = dict(zip(clusters["cluster"].astype(int), series)) if len(clusters) else {}
    out = _outcomes(scored, readings, regions)
    by_cluster = clusters.assign(reading=series).set_index(clusters["cluster"].astype(int)) \
        if len(clusters) else clusters
    artifact_ids = [int(c) for c, r in zip(clusters["cluster"], series) if r == "artifact"] \
        if len(clusters) else []
    panels = (_tumour_panel(out, n_exemplars),
              _shortcut_panel(out, by_cluster, artifact_ids, regions, threshold, n_exemplars),
              _candidate_panel(out, by_cluster, regions, n_exemplars))
    return OutcomeReadings(readings, out, panels)


def outcome_panels(findings: pd.DataFrame, clusters: pd.DataFrame, regions: pd.DataFrame,
                   *, n_exemplars: int = 3, threshold: float = DEFAULT_THRESHOLD) -> list[Panel]:
    """The three panels, in the order *on the tumour*, *shortcut*, *candidate sign*.

    Parameters
    ----------
    findings, clusters, regions : pandas.DataFrame
        The stored tables (``ResultsStore.findings()``, ``.clusters()``, ``.regions()``);
        findings need ``probability``, ``rma``, ``flag_score`` and ``center_z/y/x`` besides the
        columns of :func:`nodule_outcomes`.
    n_exemplars : int
        Pictures per panel (at most one per patient).
    threshold : float
        The model's decision threshold (wording only; ``ResultsStore.threshold()``).

    Returns
    -------
    list of Panel
        *On the tumour*: aligned nodules with the highest relevance mass in the mask.
        *Shortcut*: predicted-malignant nodules that use an artifact cluster, those whose
        call it decides (``flagged``) first, then by drop; each picture is centred between
        the nodule and the artifact, on the artifact's slice (``focus="densest"``).  *Candidate sign*: the candidate cluster that moves
        the cohort's predictions most (largest ``|effect_mean| * effect_n``, the summed change
        in probability over its nodules; then enrichment), its exemplars.

    See Also
    --------
    read_outcomes : the panels with the readings and outcomes they are built from, at once.
    """
    return list(read_outcomes(findings, clusters, regions, threshold=threshold,
                              n_exemplars=n_exemplars).panels)


def _pick(rows: pd.DataFrame, make, n_exemplars: int) -> list[Exemplar]:
    """Up to *n_exemplars* pictures ``make(row)`` of *rows* in order, one per case (a row
    whose ``make`` gives None is passed over)."""
    items, seen = [], set()
    for _, r in rows.iterrows():
        if r["case_id"] in seen:
            continue
        item = make(r)
        if item is not None:
            items.append(item)
            seen.add(r["case_id"])
        if len(items) >= n_exemplars:
            break
    return items


def _tumour_panel(out: pd.DataFrame, n_exemplars: int) -> Panel:
    aligned = out[out["outcome"] == "on the tumour"].sort_values("rma", ascending=False)
    return Panel(
        "on the tumour", "On the tumour: the model learned the right thing",
        f"{len(aligned)} of {len(out)} scored nodules: the attention sits on the annotated "
        "nodule (verdict aligned) and the prediction rests on it (replacing the nodule with "
        "lung parenchyma takes away at least half of P(malignant), beyond a volume-matched "
        "control's change). Here the explanation validates the model.",
        len(aligned), -1,
        _pick(aligned, lambda r: Exemplar(
            str(r["case_id"]), str(r["nodule_id"]), float(r["center_z"]),
            (float(r["center_y"]), float(r["center_x"])), None, nodule_label(r["nodule_id"]),
            f"{r['case_id']} · {r['nodule_id']} · p {float(r['probability']):.2f} · "
            f"RMA {float(r['rma']):.2f}"), n_exemplars))


def shortcut_exemplar(r, regions: pd.DataFrame) -> Exemplar | None:
    """A shortcut nodule's picture, on the slice of the densest voxel: for a cluster's
    shortcut, its largest region in that cluster (None when it has no region there); for
    metal beside the nodule (``outcome_cluster`` -1), the nodule and its surroundings.

    Parameters
    ----------
    r : mapping or pandas.Series
        A row of :func:`nodule_outcomes` whose ``outcome`` is ``"shortcut"``.
    regions : pandas.DataFrame
        ``ResultsStore.regions()`` (``case_id``, ``nodule_id``, ``cluster``, ``centroid_z``,
        ``case_region``, ``mass_share``).
    """
    p = float(r["probability"])
    if int(r["outcome_cluster"]) < 0:
        return Exemplar(str(r["case_id"]), str(r["nodule_id"]), float(r["center_z"]),
                        (float(r["center_y"]), float(r["center_x"])), None,
                        nodule_label(r["nodule_id"]),
                        f"{r['case_id']} · {r['nodule_id']} · p {p:.2f} → "
                        f"{float(r['p_without_surroundings']):.2f} without its surroundings "
                        f"(metal, {float(r['surroundings_max_hu']):.0f} HU)", focus="densest")
    own = regions[(regions["case_id"] == r["case_id"]) & (regions["nodule_id"] == r["nodule_id"])
                  & (regions["cluster"] == r["outcome_cluster"])]
    if own.empty:
        return None
    reg = own.sort_values("mass_share", ascending=False).iloc[0] \
        if "mass_share" in own.columns else own.iloc[0]
    return Exemplar(str(r["case_id"]), str(r["nodule_id"]), float(reg["centroid_z"]),
                    (float(r["center_y"]), float(r["center_x"])), int(reg["case_region"]),
                    nodule_label(r["nodule_id"]),
                    f"{r['case_id']} · {r['nodule_id']} · p {p:.2f} → "
                    f"{p - float(r['flag_score']):.2f} without its off-mask regions",
                    focus="densest")


def _shortcut_order(short: pd.DataFrame, threshold: float) -> pd.DataFrame:
    """The shortcut nodules, those whose call the artifact decides first, then by the drop
    in P(malignant) without it; with a boolean ``decisive`` column."""
    beside = short["outcome_cluster"].to_numpy() < 0
    without = _numbers(short, "p_without_surroundings")
    drop = np.where(beside, short["probability"].astype(float) - without,
                    pd.to_numeric(short["flag_score"], errors="coerce"))
    decisive = np.where(beside, (without < threshold).to_numpy(), _truthy(short["flagged"]))
    return short.assign(decisive=decisive.astype(bool), _drop=drop).sort_values(
        ["decisive", "_drop"], ascending=[False, False], kind="stable").drop(columns="_drop")


def _shortcut_lead(short: pd.DataFrame, by_cluster: pd.DataFrame, threshold: float) -> str:
    """The shortcut panel's paragraph for the nodules *short* (ordered, with ``decisive``)."""
    clustered = short[short["outcome_cluster"] >= 0]
    n_beside = len(short) - len(clustered)
    n_decisive = int(short["decisive"].sum())
    parts = []

    def count(n: int) -> str:
        return "all of them" if n == len(short) and n > 1 else ("it" if n == len(short) else str(n))

    if len(clustered):
        c = int(clustered["outcome_cluster"].iloc[0])
        crow = by_cluster.loc[c]
        parts.append(
            f"{count(len(clustered))} use{'s' if len(clustered) == 1 else ''} attention off "
            f"the mask on cluster {c} "
            f"({crow['description']}, median density {float(crow['median_halo_max_hu']):.0f} "
            f"HU): replacing its regions with lung parenchyma lowers their P(malignant) by "
            f"{MIN_EFFECT:g} or more")
    if n_beside:
        parts.append(
            f"{count(n_beside)} rest{'s' if n_beside == 1 else ''} on metal beside the nodule: a "
            f"voxel of at least {ARTIFACT_HU:.0f} HU lies within {SURROUNDINGS_MM:g} mm of the "
            "mask, and replacing what lies there with lung parenchyma takes away at least "
            "half of P(malignant)")
    return (f"{len(short)} nodule(s) predicted malignant rely on something denser than bone: "
            + "; ".join(parts) + f". For {n_decisive} of them it decides the call (without it "
            f"P(malignant) falls below {threshold:g}); for the others it inflates the "
            "probability. An artifact, not anatomy: a shortcut to distrust.")


def _shortcut_panel(out: pd.DataFrame, by_cluster: pd.DataFrame, artifact_ids: list[int],
                    regions: pd.DataFrame, threshold: float, n_exemplars: int) -> Panel:
    short = _shortcut_order(out[out["outcome"] == "shortcut"], threshold)
    clusters = [int(c) for c in short["outcome_cluster"] if int(c) >= 0]
    if len(short):
        lead = _shortcut_lead(short, by_cluster, threshold)
    elif artifact_ids:
        crow = by_cluster.loc[artifact_ids[0]]
        lead = (f"Cluster {artifact_ids[0]} ({crow['description']}) is metal-dense attention "
                "off the mask, but no malignant prediction depends on it "
                f"(Δp when removed {float(crow['effect_mean']):+.3f}).")
    else:
        lead = ("No malignant prediction uses an artifact-like (metal-dense) pattern off the "
                "mask or beside the nodule.")
    return Panel("shortcut", "Using an artifact: a shortcut to distrust", lead,
                 len(short), clusters[0] if clusters else (artifact_ids[0] if artifact_ids else -1),
                 _pick(short, lambda r: shortcut_exemplar(r, regions), n_exemplars))


def _stability_clause(crow: pd.Series) -> str:
    """"; found again ... at mean Jaccard J" for a cluster whose stability was measured."""
    value = pd.to_numeric(pd.Series([crow.get("stability")]), errors="coerce").iloc[0]
    if not np.isfinite(value):
        return ""
    return f"; the clusterings from other seeds find it again at mean Jaccard {value:.2f}"


def _unstable_note(by_cluster: pd.DataFrame) -> str:
    """" Set aside: cluster 3 (stability 0.47) ..." naming the clusters read ``"unstable"``
    (would be candidate signs, but not reproducible); "" when there are none."""
    if not len(by_cluster):
        return ""
    rows = by_cluster[by_cluster["reading"] == "unstable"]
    if not len(rows):
        return ""
    named = ", ".join(f"cluster {int(c)} (stability {float(r['stability']):.2f})"
                      for c, r in rows.iterrows())
    return (f" Set aside as unstable: {named}, relied upon or enriched but grouped "
            "otherwise when the clustering starts from other seeds.")


def _candidate_panel(out: pd.DataFrame, by_cluster: pd.DataFrame, regions: pd.DataFrame,
                     n_exemplars: int) -> Panel:
    title = "Off the mask, on anatomy: a candidate pattern"
    cands = by_cluster[by_cluster["reading"] == "candidate sign"] if len(by_cluster) \
        else by_cluster
    aside = _unstable_note(by_cluster)
    if not len(cands):
        return Panel("candidate sign", title,
                     "No stable anatomical cluster of off-mask attention is relied upon for "
                     "malignancy or enriched for predicted-malignant nodules." + aside, 0)
    order = cands.assign(_e=-_total_effect(cands),
                         _r=-cands["enrichment_predicted"].fillna(0)).sort_values(
        ["_e", "_r"], kind="stable")
    c = int(order.index[0])
    crow = order.iloc[0]
    relied = bool(_truthy(pd.Series([crow["relied_upon"]]))[0])
    lead = (f"Cluster {c}: {crow['description']}. {int(crow['n_cases'])} patients, "
            f"{_pct(float(crow['share_predicted_malignant']))} of its nodules predicted "
            f"malignant vs {_pct(float(crow['pool_predicted_malignant']))} in the cohort "
            f"(q = {float(crow['q_predicted']):.3f}); removing it changes P(malignant) by "
            f"{float(crow['effect_mean']):+.3f}"
            + (" — the model relies on it" if relied else "") + _stability_clause(crow) +
            ". Anatomical density, not annotated: a candidate pattern worth studying, "
            "not a finding." + aside)
    keyed = regions.set_index("region_key")
    members = keyed.loc[[k for k in crow["exemplars"] if k in keyed.index]].reset_index()
    exemplars = _pick(members, lambda r: Exemplar(
        str(r["case_id"]), str(r["nodule_id"]), float(r["centroid_z"]),
        (float(r["centroid_y"]), float(r["centroid_x"])), int(r["case_region"]), None,
        f"{r['case_id']} · {r['nodule_id']} · p {float(r['probability']):.2f}"), n_exemplars)
    n_cand = int((out["outcome"] == "candidate sign").sum())
    return Panel("candidate sign", title, lead, n_cand, c, exemplars)
