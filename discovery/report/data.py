"""What a report reads from a results folder, read once per report: the stored tables, the
decision threshold, the outcome readings (:mod:`discovery.patterns.outcomes`) and a cache of
the case arrays.  Shared by the HTML (:mod:`discovery.report.html`) and PDF
(:mod:`discovery.report.pdf`) reports."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from discovery.explain.faithfulness_rule import faithfulness_warning
from discovery.model.domain import applicability_summary
from discovery.patterns.outcomes import (
    SCORED_STATUSES,
    OutcomeReadings,
    Panel,
    agreement_reading,
    read_outcomes,
    surroundings_reading,
)
from discovery.report.style import CaseArrayCache
from discovery.store.tables import ResultsStore, sanity_summary

__all__ = ["SCORED_STATUSES", "MAX_FALLBACK", "ReportData", "select_nodule_pages", "any_offmask"]

#: Nodule pages a report shows when nothing is flagged (:func:`select_nodule_pages`).
MAX_FALLBACK = 10


class ReportData:
    """The tables of one results folder and what the reports derive from them.

    The tables are read when the object is made (one connection, closed at once); the
    outcome readings are computed on first use and then kept, so a report that shows them
    in several places computes them once.

    Parameters
    ----------
    results_dir : path
        A results folder written by ``discovery score``.

    Attributes
    ----------
    results_dir : Path
    findings, clusters, regions, cases : pandas.DataFrame
        ``ResultsStore.findings()``, ``.clusters()``, ``.regions()``, ``.cases()``.
    randomization, perturbation : pandas.DataFrame
        ``ResultsStore.sanity()``.
    meta : dict
        ``ResultsStore.meta()``.
    threshold : float
        The decision threshold the results were scored with (``ResultsStore.threshold()``).
    arrays : CaseArrayCache
        Each case's stored arrays, read once.
    """

    def __init__(self, results_dir: str | Path):
        self.results_dir = Path(results_dir)
        store = ResultsStore(self.results_dir, create=False)
        try:
            self.findings = store.findings()
            self.clusters = store.clusters()
            self.regions = store.regions()
            self.cases = store.cases()
            self.meta = store.meta()
            self.threshold = store.threshold()
            self.randomization, self.perturbation = store.sanity()
            self.labels = store.labels()
        finally:
            store.close()
        self.arrays = CaseArrayCache(self.results_dir)

    @cached_property
    def scored(self) -> pd.DataFrame:
        """The findings of scored nodules (status in :data:`SCORED_STATUSES`)."""
        return self.findings[self.findings["status"].isin(SCORED_STATUSES)]

    @cached_property
    def sanity(self) -> pd.DataFrame:
        """Each checked method's faithfulness verdict
        (:func:`discovery.store.tables.sanity_summary`)."""
        return sanity_summary(self.randomization, self.perturbation)

    @cached_property
    def outcome_checks(self) -> tuple[tuple[str, ...], str]:
        """What both reports state above the three outcomes.

        Returns
        -------
        warnings : tuple of str
            In order, those that apply: the scoring method's maps did not pass the
            faithfulness check; the verdicts agree poorly with the reliance on the nodule
            (:func:`discovery.patterns.outcomes.agreement_reading`); nodules outside what the
            model knows.
        note : str
            The verdicts' agreement when it is not a warning, else ``""``.
        """
        scored = self.scored
        agreement, weak = agreement_reading(scored)
        texts = (faithfulness_warning(self.sanity, self.meta.get("method"),
                                      self.meta.get("gradcam_layer")),
                 agreement if weak else "",
                 applicability_summary(scored["applicability"] if "applicability" in scored
                                       else ()))
        return tuple(t for t in texts if t), "" if weak else agreement

    @cached_property
    def surroundings(self) -> tuple[str, bool]:
        """The cohort's reliance on the nodules' surroundings in words, and whether it is a
        pattern to review (:func:`discovery.patterns.outcomes.surroundings_reading`)."""
        return surroundings_reading(self.findings, self.labels)

    @cached_property
    def outcome_readings(self) -> OutcomeReadings:
        """Cluster readings, nodule outcomes and panels, computed once
        (:func:`discovery.patterns.outcomes.read_outcomes`)."""
        return read_outcomes(self.findings, self.clusters, self.regions,
                             threshold=self.threshold)

    @property
    def readings(self) -> dict[int, str]:
        """Cluster id -> its reading (:func:`discovery.patterns.outcomes.cluster_readings`)."""
        return self.outcome_readings.readings

    @property
    def outcomes(self) -> pd.DataFrame:
        """:attr:`scored` with each nodule's ``outcome`` and ``outcome_cluster``
        (:func:`discovery.patterns.outcomes.nodule_outcomes`)."""
        return self.outcome_readings.outcomes

    @property
    def panels(self) -> list[Panel]:
        """The three outcome panels (:func:`discovery.patterns.outcomes.outcome_panels`)."""
        return list(self.outcome_readings.panels)


def select_nodule_pages(findings: pd.DataFrame, *, outcomes: pd.DataFrame | None = None,
                        limit: int = MAX_FALLBACK) -> tuple[pd.DataFrame, bool]:
    """The nodules that get a page, and whether they are the fallback.

    Parameters
    ----------
    findings : pandas.DataFrame
        ``ResultsStore.findings()``.
    outcomes : pandas.DataFrame, optional
        :func:`discovery.patterns.outcomes.nodule_outcomes` of these findings
        (:attr:`ReportData.outcomes`): every *shortcut* outcome then gets a page too, also
        one that is not flagged (metal beside a nodule whose call rests on its
        surroundings, ``outcome_cluster`` -1), and the rows carry ``outcome`` and
        ``outcome_cluster``.
    limit : int
        Most nodules the fallback shows.

    Returns
    -------
    (pandas.DataFrame, bool)
        The scored nodules with ``flagged == 1`` or a *shortcut* outcome, largest
        ``page_drop`` first (the drop in P(malignant) without what the call rests on off
        the nodule: P without its surroundings for metal beside it, else ``flag_score``,
        the drop without all its off-mask regions), then case and nodule id, with
        ``page_kind`` (``"flagged"``: the call flips without its off-mask regions;
        ``"metal"``: a shortcut through metal beside it, ``outcome_cluster`` -1;
        ``"cluster"``: a shortcut through an artifact cluster that lowers P without
        flipping the call), and ``False``; when there are none, the
        scored nodules with the highest positive ``offmask_mass_share`` (up to *limit*,
        same tie order) and ``True``; when no nodule has attention off its mask either, the
        scored nodules with the highest ``probability`` (up to *limit*, same tie order)
        and ``True``, so that a report of a few clean cases still shows their nodules.
    """
    scored = findings[findings["status"].isin(SCORED_STATUSES)]
    if outcomes is not None:
        scored = scored.merge(outcomes[["case_id", "nodule_id", "outcome", "outcome_cluster"]],
                              on=["case_id", "nodule_id"], how="left")
    flagged = pd.to_numeric(scored["flagged"], errors="coerce").fillna(0) == 1
    shortcut = (scored["outcome"] == "shortcut") if outcomes is not None else flagged
    if (flagged | shortcut).any():
        rows = scored[flagged | shortcut]
        kind = pd.Series("flagged", index=rows.index)
        if outcomes is not None:
            kind = kind.where(flagged[rows.index], np.where(rows["outcome_cluster"] < 0,
                                                            "metal", "cluster"))
        drop = pd.to_numeric(rows["flag_score"], errors="coerce")
        if "p_without_surroundings" in rows.columns:
            drop = drop.mask(kind == "metal",
                             pd.to_numeric(rows["probability"], errors="coerce")
                             - pd.to_numeric(rows["p_without_surroundings"], errors="coerce"))
        return rows.assign(page_drop=drop, page_kind=kind).sort_values(
            ["page_drop", "case_id", "nodule_id"], ascending=[False, True, True],
            kind="stable", na_position="last"), False
    share = pd.to_numeric(scored["offmask_mass_share"], errors="coerce")
    if (share > 0).any():
        rank, rows = share, scored[share > 0]
    else:                                           # no off-mask attention: by P(malignant)
        rank = pd.to_numeric(scored["probability"], errors="coerce")
        rows = scored[rank.notna()]
    rows = rows.assign(_s=rank.loc[rows.index]).sort_values(
        ["_s", "case_id", "nodule_id"], ascending=[False, True, True], kind="stable")
    return rows.drop(columns="_s").head(int(limit)), True


def any_offmask(rows: pd.DataFrame) -> bool:
    """Whether any of the fallback pages' nodules has attention off its mask (else they
    were chosen by P(malignant))."""
    return bool((pd.to_numeric(rows["offmask_mass_share"], errors="coerce") > 0).any())
