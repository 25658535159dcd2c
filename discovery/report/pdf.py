"""Findings report as a PDF: cohort summary, then one page per shortcut nodule.

The PDF shows what the HTML report (:mod:`discovery.report.html`) shows, laid out for print:

* **Summary** (flowing over as many pages as it needs): counts by verdict and by outcome,
  the three outcomes of :func:`discovery.patterns.outcomes.outcome_panels` with their pictures, the
  distributions of the localisation metrics (histograms stacked by verdict), the pattern
  clusters (2-D map, statistics, exemplar crops), the faithfulness of each method's maps
  (``discovery sanity``: old and new measure, the verdict) and an index of the nodule pages.
  A warning stands above the three outcomes when the method the results were scored with
  did not pass that check (or was not checked).
* **Nodule pages** (:mod:`discovery.report.pdfpages`), one per shortcut nodule: flagged
  (findings ``flagged == 1``) or with a *shortcut* outcome (metal beside a nodule whose call
  rests on its surroundings), largest drop in P(malignant) first
  (:func:`select_nodule_pages`).  When there are none, the pages
  show instead the nodules with the highest ``offmask_mass_share`` (up to
  :data:`MAX_FALLBACK`), or, when no nodule has attention off its mask, those with the
  highest P(malignant); the summary and each page say which.  A page has the nodule's key
  axial slice (:func:`~discovery.report.render.key_slice_choice`, its rule named) in lung window, plain with the mask contour and with the
  attribution overlay, a colour bar in its raw units (0 to the case maximum, one scale per
  case), the whole slice, the nodule's main off-mask region and the metrics.

Rules
-----
* matplotlib only, imported inside the functions (never at import time), drawn on
  ``matplotlib.figure.Figure`` objects with the Agg canvas (no pyplot, no global backend
  switch, settings in an ``rc_context``) and written with
  ``matplotlib.backends.backend_pdf.PdfPages``.
* A4 portrait pages; no text under :data:`MIN_PT` = 8 pt; DejaVu Sans as subset Type 3
  fonts with a Unicode map (searchable; Type 42 subsets a second slower).  Text is wrapped
  with the font's glyph widths, one baseline per line (:mod:`discovery.report.pdflayout`).
* Every page has a footer: the model weights' SHA-256 prefix (12 hex digits), the date of
  the results (store meta ``results_date`` / ``scored_at`` when present, else the latest
  ``scored_at`` of the cases table; the date only) and "page i of n".
* Only pseudonymous case ids and nodule ids are printed, never the results folder or a path.
  Errors of failed cases are printed as stored (they name files by base name only, see
  :mod:`data_tools.errors`).
* Metadata: Title, Author and Creator ``ct-nodule-discovery``, no creation date, so the same
  results give a byte-identical file.  The file is written under a temporary name beside
  *out* and moved into place (:func:`data_tools.files.atomic_path`).
* The tables and the outcome readings are read and computed once per report
  (:class:`discovery.report.data.ReportData`) and passed down in a context dict.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from data_tools.files import atomic_path
from discovery.explain.catalog import map_label, map_title
from discovery.explain.faithfulness_rule import RULE
from discovery.align.metrics import AlignThresholds
from discovery.patterns.outcomes import rules_summary
from discovery.report import render
from discovery.report.data import (  # noqa: F401 -- MAX_FALLBACK, select_nodule_pages re-exported
    MAX_FALLBACK,
    ReportData,
    any_offmask,
    select_nodule_pages,
)
from discovery.report.pdfpages import nodule_page, page_index
from discovery.report.pdflayout import (
    CONTENT_W,
    DPI,
    FONT,
    GRAY,
    INK,
    MARGIN,
    MIN_PT,
    PAGE_H,
    PAGE_W,
    Doc,
    heading,
    image_height,
    text_height,
    wrap,
)
from discovery.report.style import (
    DISPLAY_THRESHOLD,
    OUTCOME_COLOURS,
    VERDICT_COLOURS,
    fmt,
    pct,
    sentence,
    stability_in_words,
    verdicts_in_words,
)

__all__ = ["write_pdf", "select_nodule_pages", "MAX_FALLBACK", "AUTHOR", "TITLE", "MIN_PT"]

log = logging.getLogger(__name__)

#: Title and author written into the PDF metadata.
TITLE = "Nodule discovery findings"
AUTHOR = "ct-nodule-discovery"

_RC = {"pdf.fonttype": 3, "font.family": FONT, "font.size": 9, "text.parse_math": False,
       "svg.hashsalt": AUTHOR, "axes.titlesize": 9, "axes.labelsize": 8.5, "xtick.labelsize": 8,
       "ytick.labelsize": 8, "legend.fontsize": 8, "image.interpolation": "nearest",
       "savefig.dpi": DPI}
_METRICS = [("probability", "P(malignant)", (0.0, 1.0)),
            ("rma", "relevance mass in mask (RMA)", (0.0, 1.0)),
            ("rra", "relevance rank accuracy (RRA)", (0.0, 1.0)),
            ("near_mass", f"attribution within {AlignThresholds().near_margin_mm:g} mm of the mask",
             (0.0, 1.0)),
            ("peak_distance_mm", "attribution peak to mask (mm)", None),
            ("offmask_mass_share", "off-mask share of the attribution", (0.0, 1.0))]
_STATUS_COLOURS = {"passes": "#1b7f3b", "fails": "#c53030"}
_CLUSTER_COLOURS = ["#2b6cb0", "#c53030", "#1b7f3b", "#b7791f", "#6b46c1", "#d53f8c", "#319795",
                    "#dd6b20"]


# -- data ------------------------------------------------------------------------------------

def _results_date(meta: dict, cases: pd.DataFrame) -> str:
    for key in ("results_date", "scored_at", "created_at"):
        if meta.get(key):
            return str(meta[key])[:10]
    stamps = cases["scored_at"].dropna().astype(str) if "scored_at" in cases.columns else []
    return max(stamps)[:10] if len(stamps) else "unknown date"


def _case_spacing(cases: pd.DataFrame) -> dict[str, tuple[float, float, float]]:
    """Voxel spacing (z, y, x) in mm per case; cases without a readable one are left out."""
    out = {}
    for r in cases.itertuples():
        try:
            sp = json.loads(r.spacing_mm) if isinstance(r.spacing_mm, str) else r.spacing_mm
            z, y, x = (float(v) for v in sp)
        except (AttributeError, TypeError, ValueError):
            continue
        out[r.case_id] = (z, y, x)
    return out


def _box_mm(meta: dict) -> float:
    """Edge of the model's analysis box (mm) from the store meta; NaN when unknown."""
    try:
        return float(np.max(np.multiply(meta["roi_size_vox"], meta["roi_spacing_mm"])))
    except (KeyError, TypeError, ValueError):
        return float("nan")


def _context(results_dir: Path) -> dict:
    """Everything the pages show, read and computed once: the tables, the threshold, the
    outcome readings (nodule outcomes, cluster readings, panels) and the arrays cache."""
    data = ReportData(results_dir)
    findings, meta, outcomes = data.findings, data.meta, data.outcomes
    pages, fallback = select_nodule_pages(findings, outcomes=outcomes)
    failed = findings[findings["status"] == "failed"]
    return {
        "findings": findings, "scored": data.scored, "clusters": data.clusters,
        "regions": data.regions, "threshold": data.threshold, "outcomes": outcomes,
        "arrays": data.arrays,
        "outcome_of": {(r.case_id, r.nodule_id): r.outcome for r in outcomes.itertuples()},
        "readings": data.readings, "panels": data.panels, "pages": pages, "fallback": fallback,
        "offmask_pages": fallback and any_offmask(pages),
        "failed": [f"{r.case_id}: {str(r.error)[:240]}" for r in failed.itertuples()],
        "n_cases": int(findings["case_id"].nunique()), "n_scored": int(len(data.scored)),
        "sha": (f"{str(meta['model_sha256'])[:12]}…" if meta.get("model_sha256") else "unknown"),
        "layer": str(meta.get("gradcam_layer", "") or "-"),
        "map": map_title(meta.get("method"), meta.get("gradcam_layer")),
        "method": map_title(meta.get("method")),
        "date": _results_date(meta, data.cases), "spacing": _case_spacing(data.cases),
        "box_mm": _box_mm(meta), "verdicts": verdicts_in_words(meta),
        "sanity": data.sanity, "checks": data.outcome_checks,
        "surroundings": data.surroundings,
    }


# -- summary -----------------------------------------------------------------------------------

def _title_block(doc: Doc, ctx: dict) -> None:
    doc.new_page()
    doc.text(TITLE, size=20, weight="bold", color=INK)
    doc.y += 0.04
    doc.text(f"{ctx['n_cases']} cases, {ctx['n_scored']} nodules scored · model weights "
             f"{ctx['sha']} · {ctx['map']} · results of {ctx['date']}",
             size=9.5, color=GRAY)
    doc.y += 0.1
    note = (f"Case ids are pseudonymous. {ctx['method']} values are raw magnitudes (after ReLU), shown on "
            "one scale per case (0 to the case maximum); overlays show values of at least "
            f"{DISPLAY_THRESHOLD:.0%} of that maximum. A verdict says where the model's attention "
            f"lies relative to the annotated nodule: {ctx['verdicts']}; beside it, whether "
            "the prediction rests on the nodule (P(malignant) without it / without a "
            "volume-matched control). Off-mask attention is a question for a reviewer, not "
            "automatically an error. Pictures: axial slices in lung window (W1500/L-600); green "
            "the nodule mask contour, cyan the off-mask regions.")
    h = text_height(len(wrap(note, CONTENT_W - 0.24, 8.5)), 8.5)
    doc.box(doc.y, h + 0.1, "#f7fafc", edge="#a0aec0")
    doc.text(note, x=MARGIN + 0.12, top=doc.y + 0.05, size=8.5, width=CONTENT_W - 0.24)
    doc.y += 0.12


def _counts(doc: Doc, ctx: dict) -> None:
    verdicts = ctx["findings"]["verdict"].fillna("").replace("", "failed").value_counts()
    order = ([v for v in VERDICT_COLOURS if v in verdicts.index]
             + sorted(set(verdicts.index) - set(VERDICT_COLOURS)))
    outc = ctx["outcomes"]["outcome"].value_counts()
    columns = (("by localisation verdict", [(v, int(verdicts[v]), VERDICT_COLOURS.get(v, GRAY))
                                            for v in order]),
               ("by outcome", [("candidate pattern" if o == "candidate sign" else o,
                                int(outc.get(o, 0)), OUTCOME_COLOURS.get(o, GRAY))
                               for o in ("on the tumour", "shortcut", "candidate sign", "other")]))
    n_rows = max(len(order), 4)
    heading(doc, "Counts", keep=0.25 + 0.19 * n_rows)
    top = doc.y
    for col, (title, items) in enumerate(columns):
        x = MARGIN + col * CONTENT_W / 2
        doc.text(title, x=x, top=top, weight="bold", advance=False)
        for i, (name, n, colour) in enumerate(items):
            y = top + 0.22 + i * 0.19
            doc.box(y + 0.035, 0.12, colour, x=x, w=0.12)
            doc.text(name, x=x + 0.2, top=y, advance=False)
            doc.text(str(n), x=x + 2.1, top=y, weight="bold", advance=False)
    doc.y = top + 0.22 + 0.19 * n_rows + 0.05
    if ctx["failed"]:
        doc.text("Cases that could not be scored: " + "; ".join(ctx["failed"]), size=8.5,
                 color="#c53030")


def _warning(doc: Doc, ctx: dict) -> None:
    """The warnings above the three outcomes (:attr:`ReportData.outcome_checks`), the
    verdicts' agreement as plain text when it is not one of them, then the reliance on the
    nodules' surroundings (:attr:`ReportData.surroundings`), boxed when it is a pattern."""
    warnings, note = ctx["checks"]
    for text in warnings:
        text = "Warning. " + text
        h = text_height(len(wrap(text, CONTENT_W - 0.24, 9, "bold")), 9)
        doc.need(h + 0.2)
        doc.box(doc.y, h + 0.1, "#fff5f5", edge="#c53030")
        doc.text(text, x=MARGIN + 0.12, top=doc.y + 0.05, size=9, weight="bold",
                 width=CONTENT_W - 0.24, color="#c53030")
        doc.y += 0.16
    if note:
        doc.text(note, size=8.5, color=GRAY)
    around, notable = ctx["surroundings"]
    if notable:
        text = "The nodules' surroundings. " + around
        h = text_height(len(wrap(text, CONTENT_W - 0.24, 9)), 9)
        doc.need(h + 0.2)
        doc.y += 0.06
        doc.box(doc.y, h + 0.1, "#ebf8ff", edge="#2b6cb0")
        doc.text(text, x=MARGIN + 0.12, top=doc.y + 0.05, size=9, width=CONTENT_W - 0.24,
                 color="#2b6cb0")
        doc.y += 0.16
    else:
        doc.text(around, size=8.5, color=GRAY)


def _faithfulness(doc: Doc, ctx: dict) -> None:
    """Per method: the old and the new faithfulness measure side by side, and the verdict."""
    table = ctx["sanity"]
    heading(doc, "Are the maps faithful? (discovery sanity)", keep=1.2)
    if table.empty:
        doc.text("Not run for these results: discovery sanity RESULTS measures it.", size=8.5)
        return
    doc.text(f"The rule: {RULE}. Old measure (kept for comparison): removed voxels set to "
             "-850 HU, deletion area against random voxel orders; scattered holes can be a "
             "signal to the network themselves, so random orders tend to delete fast and insert "
             "slowly whatever the map. New measure (ROAD): removed voxels imputed from their "
             "neighbours plus noise; gap = area between the least- and most-relevant-first "
             "deletion curves of P(malignant), over the predicted-malignant nodules. Old gap: "
             "insertion minus deletion area with the constant eraser; where it and the new gap "
             "disagree, the eraser is deciding.", size=8.5, color=GRAY)
    num = lambda v, d=2: fmt(v) if pd.isna(v) else f"{v:.{d}f}"  # noqa: E731
    cols = [("method", 0.0), ("nodules", 1.4), ("del. / random", 2.0), ("beats rand.", 3.05),
            ("gap", 3.95), ("MoRF / LeRF", 4.4), ("gap", 5.3), ("rand. gap", 5.75),
            ("gap > 0", 6.45)]
    doc.need(0.45 + 0.19 * (len(table) + 1))
    doc.text("old: constant eraser (-850 HU)", x=MARGIN + 2.0, size=8, color=GRAY, advance=False)
    doc.text("new: imputed (ROAD), predicted malignant", x=MARGIN + 4.4, size=8, color=GRAY)
    top = doc.y
    for name, dx in cols:
        doc.text(name, x=MARGIN + dx, top=top, size=8, weight="bold", advance=False)
    for i, r in enumerate(table.itertuples(), start=1):
        cells = [map_label(r.method, r.layer), f"{r.n} ({r.n_malignant})",
                 f"{num(r.deletion_auc, 3)} / {num(r.deletion_auc_random, 3)}",
                 f"{pct(r.beats_random, 2)} ({pct(r.beats_random_malignant, 2)})",
                 num(r.fill_gap), f"{num(r.road_morf_auc)} / {num(r.road_lerf_auc)}",
                 num(r.road_gap), num(r.road_gap_random, 3), pct(r.road_gap_positive, 2)]
        for k, ((_, dx), cell) in enumerate(zip(cols, cells)):   # method@layer: 7 pt, fits
            doc.text(cell, x=MARGIN + dx, top=top + 0.19 * i, size=7 if k == 0 else 8,
                     advance=False)
    doc.y = top + 0.19 * (len(table) + 1) + 0.05
    for r in table.itertuples():
        doc.text(f"{map_label(r.method, r.layer)} {r.verdict}.", size=8.5, color=_STATUS_COLOURS.get(r.status, GRAY))


def _outcomes(doc: Doc, ctx: dict) -> None:
    heading(doc, "What the explanations say: three outcomes", keep=1.9)
    _warning(doc, ctx)
    doc.text("Each scored nodule is read by the rules in discovery/patterns/outcomes.py. "
             + rules_summary() + " "
             "Each picture: the plain crop, then the same crop with the overlay; the heat "
             "map exists only inside each nodule's analysis box, so it can end in a straight edge.",
             size=8.5, color=GRAY)
    doc.y += 0.08
    gap, inner = 0.15, CONTENT_W - 0.15
    img_w = (inner - 2 * gap) / 3
    for p in ctx["panels"]:
        colour = OUTCOME_COLOURS.get(p.outcome, GRAY)
        pics = [(render.exemplar_image(ctx["arrays"](ex.case_id), ex,
                                       threshold=DISPLAY_THRESHOLD), ex.caption)
                for ex in p.exemplars]
        img_h = max((image_height(rgb, img_w) for rgb, _ in pics), default=0.0)
        cap_h = max((text_height(len(wrap(c, img_w, 8)), 8) for _, c in pics), default=0.0)
        title = f"{p.title}  ·  {p.n_nodules} nodule{'s' if p.n_nodules != 1 else ''}"
        block = (text_height(len(wrap(title, inner, 10.5, "bold")), 10.5)
                 + text_height(len(wrap(p.lead, inner, 8.5)), 8.5)
                 + (0.08 + img_h + cap_h if pics else 0.0) + 0.2)
        doc.need(block)
        top = doc.y
        doc.box(top, block - 0.12, colour, w=0.06)
        doc.text(title, x=MARGIN + 0.15, size=10.5, weight="bold", color=colour, width=inner)
        doc.text(p.lead, x=MARGIN + 0.15, size=8.5, width=inner)
        doc.y += 0.08
        for i, (rgb, cap) in enumerate(pics):
            x = MARGIN + 0.15 + i * (img_w + gap)
            doc.image(rgb, x, doc.y, img_w)
            doc.text(cap, x=x, top=doc.y + img_h + 0.03, size=8, width=img_w, advance=False,
                     color=GRAY)
        doc.y = top + block


def _distributions(doc: Doc, ctx: dict) -> None:
    scored = ctx["scored"]
    left, hgap, vgap, plot_h = 0.5, 0.7, 0.62, 1.55
    plot_w = (CONTENT_W - left - hgap) / 2
    if scored.empty:
        heading(doc, "Metric distributions", keep=0.6)
        doc.text("No scored nodule in these results: nothing to plot.")
        return
    heading(doc, "Metric distributions", keep=plot_h + 1.0)
    doc.text(f"Histograms over the {len(scored)} scored nodules, stacked by verdict. The dashed "
             f"line on P(malignant) is the decision threshold ({ctx['threshold']:g}).",
             size=8.5, color=GRAY)
    verdicts = [v for v in VERDICT_COLOURS if (scored["verdict"] == v).any()]
    if verdicts and not doc.dry:
        from matplotlib.patches import Patch

        doc.fig.legend(handles=[Patch(color=VERDICT_COLOURS[v], label=v) for v in verdicts],
                       loc="upper left", ncol=len(verdicts), frameon=False,
                       bbox_to_anchor=(MARGIN / PAGE_W, 1.0 - (doc.y + 0.02) / PAGE_H))
    doc.y += 0.35
    for i, (col, label, rng) in enumerate(_METRICS):
        c = i % 2
        if c == 0:
            doc.need(plot_h + vgap)
            row_top = doc.y
        ax = doc.fig.add_axes(doc.rect(MARGIN + left + c * (plot_w + hgap), row_top, plot_w,
                                       plot_h))
        values = pd.to_numeric(scored[col], errors="coerce")
        ok = np.isfinite(values)
        if not ok.any():
            ax.text(0.5, 0.5, "no values", ha="center", va="center", fontsize=9, color=GRAY,
                    transform=ax.transAxes)
        else:
            lo, hi = rng if rng else (0.0, max(float(values[ok].max()), 1.0))
            data = [np.clip(values[ok & (scored["verdict"] == v)], lo, hi) for v in verdicts]
            ax.hist(data, bins=np.linspace(lo, hi, 21), stacked=True, edgecolor="white",
                    color=[VERDICT_COLOURS[v] for v in verdicts], linewidth=0.4)
            ax.set_xlim(lo, hi)
            if col == "probability":
                ax.axvline(ctx["threshold"], color=INK, ls="--", lw=0.8)
            if (~ok).sum():
                ax.text(0.98, 0.95, f"{int((~ok).sum())} not defined", ha="right", va="top",
                        fontsize=8, color=GRAY, transform=ax.transAxes)
        ax.set_xlabel(label)
        ax.set_ylabel("nodules")
        ax.yaxis.get_major_locator().set_params(integer=True)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
        if c == 1 or i == len(_METRICS) - 1:
            doc.y = row_top + plot_h + vgap


def _cluster_text(c, reading: str) -> tuple[str, str]:
    truth = ""
    if np.isfinite(getattr(c, "p_truth", np.nan)):
        truth = (f"; truly malignant {pct(c.share_truth_malignant)} vs "
                 f"{pct(c.pool_truth_malignant)} (p = {fmt(c.p_truth)})")
    if np.isfinite(getattr(c, "effect_mean", np.nan)):
        causal = (f"Causal check: replacing the regions with lung parenchyma changes P(malignant) "
                  f"by {c.effect_mean:+.3f} on average over {int(c.effect_n)} nodules (95 % "
                  f"interval {fmt(c.effect_ci_low)} to {fmt(c.effect_ci_high)}): "
                  + ("the model relies on this pattern." if bool(c.relied_upon)
                     else "no measurable reliance."))
    else:
        causal = "Causal check: not run (needs the model; run discovery score)."
    body = (f"{int(c.n_regions)} regions from {int(c.n_cases)} patients ({int(c.n_nodules)} "
            f"nodules); median density near the regions {fmt(c.median_halo_max_hu)} HU. "
            f"Predicted malignant: {pct(c.share_predicted_malignant)} of its nodules vs "
            f"{pct(c.pool_predicted_malignant)} in the cohort (enrichment "
            f"{fmt(c.enrichment_predicted)}×, p = {fmt(c.p_predicted)}, q = "
            f"{fmt(c.q_predicted)}){truth}. "
            f"{sentence(stability_in_words(getattr(c, 'stability', None)))} {causal}")
    return f"Cluster {int(c.cluster)} ({reading}): {c.description}", body


def _clusters(doc: Doc, ctx: dict) -> None:
    clusters, regions = ctx["clusters"], ctx["regions"]
    heading(doc, "Off-mask attention patterns", keep=2.7)
    if clusters.empty:
        doc.text("No pattern clusters: too few off-mask regions, or none that group together.")
        return
    emb = regions.dropna(subset=["embedding_x", "embedding_y"])
    if len(emb):
        ax = doc.fig.add_axes(doc.rect(MARGIN, doc.y + 0.05, 3.0, 2.2))
        for c in sorted(emb["cluster"].astype(int).unique()):
            pts = emb[emb["cluster"].astype(int) == c]
            ax.scatter(pts["embedding_x"], pts["embedding_y"], s=10, linewidths=0,
                       color="#a0aec0" if c < 0 else _CLUSTER_COLOURS[c % len(_CLUSTER_COLOURS)],
                       label="no cluster" if c < 0 else f"cluster {c}")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.legend(loc="upper left", bbox_to_anchor=(1.03, 1.0), frameon=False)
        doc.text("Map of the off-mask regions: one dot per region, placed so that regions with "
                 "similar descriptors (position relative to the nodule, density, size, shape) lie "
                 "close together; the colour is the pattern cluster.", x=MARGIN + 4.3,
                 top=doc.y + 1.2, width=CONTENT_W - 4.3, size=8.5, color=GRAY, advance=False)
        doc.y += 2.5
    by_key = regions.set_index("region_key")
    n_pics, gap = 4, 0.15
    img_w = (CONTENT_W - (n_pics - 1) * gap) / n_pics
    for c in clusters.itertuples():
        title, body = _cluster_text(c, ctx["readings"].get(int(c.cluster), ""))
        pics = []
        for key in [k for k in c.exemplars if k in by_key.index][:n_pics]:
            reg = by_key.loc[key]
            pics.append((render.thumbnail(ctx["arrays"](reg["case_id"]), z=reg["centroid_z"],
                                          center_yx=(reg["centroid_y"], reg["centroid_x"]),
                                          region=int(reg["case_region"]),
                                          threshold=DISPLAY_THRESHOLD),
                         f"{reg['case_id']} · {reg['nodule_id']}"))
        block = (text_height(len(wrap(title, CONTENT_W, 10, "bold")), 10)
                 + text_height(len(wrap(body, CONTENT_W, 8.5)), 8.5)
                 + (img_w + 0.4 if pics else 0.0) + 0.25)
        doc.need(block)
        top = doc.y
        doc.text(title, size=10, weight="bold", color=INK)
        doc.text(body, size=8.5)
        doc.y += 0.05
        for i, (rgb, cap) in enumerate(pics):
            x = MARGIN + i * (img_w + gap)
            doc.image(rgb, x, doc.y, img_w)
            doc.text(cap, x=x, top=doc.y + img_w + 0.03, size=8, width=img_w, advance=False,
                     color=GRAY)
        doc.y = top + block


# -- document ------------------------------------------------------------------------------------

def _footer(fig, ctx: dict, i: int, n: int) -> None:
    y = 0.42 / PAGE_H
    fig.text(MARGIN / PAGE_W, y, f"{TITLE} · model weights SHA-256 {ctx['sha']} · results of "
             f"{ctx['date']}", fontsize=8, color=GRAY, ha="left", va="center")
    fig.text(1.0 - MARGIN / PAGE_W, y, f"page {i} of {n}", fontsize=8, color=GRAY,
             ha="right", va="center")


def write_pdf(results_dir: str | Path, out: str | Path) -> Path:
    """Write the PDF report of a results folder to *out*; return *out* as a Path.

    Parameters
    ----------
    results_dir : str or Path
        A results folder written by ``discovery score`` (``discovery.sqlite`` + ``cases/``).
    out : str or Path
        Output file; its folder is created.  Written under a temporary name beside it, then
        moved into place (:func:`data_tools.files.atomic_path`), so a reader never sees half
        a file.

    Returns
    -------
    Path
        *out*.  The same results give the same bytes (no creation date in the file).
    """
    import matplotlib
    from matplotlib.backends.backend_pdf import PdfPages

    results_dir, out = Path(results_dir), Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with matplotlib.rc_context(_RC):
        ctx = _context(results_dir)
        doc = Doc()
        _title_block(doc, ctx)
        _counts(doc, ctx)
        _outcomes(doc, ctx)
        _distributions(doc, ctx)
        _clusters(doc, ctx)
        _faithfulness(doc, ctx)
        dry = Doc(dry=True)  # the index lists page numbers: count the pages it takes first
        dry.pages, dry.y = [None] * len(doc.pages), doc.y
        page_index(dry, ctx, 0)
        page_index(doc, ctx, len(dry.pages) + 1)
        rows = list(ctx["pages"].itertuples())
        for k, row in enumerate(rows, start=1):
            nodule_page(doc, ctx, row, k, len(rows))
        n = len(doc.pages)
        for i, fig in enumerate(doc.pages, start=1):
            _footer(fig, ctx, i, n)
        meta = {"Title": TITLE, "Author": AUTHOR, "Creator": AUTHOR, "CreationDate": None,
                "Subject": "Where a lung-nodule classifier looks: localisation, shortcuts, patterns"}
        with atomic_path(out) as tmp, PdfPages(tmp, metadata=meta) as pdf:
            for fig in doc.pages:
                pdf.savefig(fig)
    log.info("wrote a %d-page PDF report (%d nodule pages)", n, len(rows))
    return out
