"""Findings report as a PDF: cohort summary, then one page per flagged nodule.

The PDF shows what the HTML report (:mod:`discovery.report.html`) shows, laid out for print:

* **Summary** (flowing over as many pages as it needs): counts by verdict and by outcome,
  the three outcomes of :func:`discovery.patterns.outcomes.outcome_panels` with their pictures, the
  distributions of the localisation metrics (histograms stacked by verdict), the pattern
  clusters (2-D map, statistics, exemplar crops) and an index of the nodule pages.
* **Nodule pages**, one per shortcut-flagged nodule (findings ``flagged == 1``, largest
  ``flag_score`` first; :func:`select_nodule_pages`).  When no nodule is flagged, the pages
  show instead the nodules with the highest ``offmask_mass_share`` (up to
  :data:`MAX_FALLBACK`), and the summary and each page say so.  A page has the nodule's key
  axial slice (most mask voxels) in lung window, plain with the mask contour and with the
  Grad-CAM overlay, a colour bar in raw Grad-CAM units (0 to the case maximum, one scale per
  case), the whole slice, the nodule's main off-mask region and the metrics.

Rules
-----
* matplotlib only, imported inside the functions (never at import time), drawn on
  ``matplotlib.figure.Figure`` objects with the Agg canvas (no pyplot, no global backend
  switch, settings in an ``rc_context``) and written with
  ``matplotlib.backends.backend_pdf.PdfPages``.
* A4 portrait pages; no text smaller than :data:`MIN_PT` = 8 pt; DejaVu Sans (shipped with
  matplotlib: the same glyphs everywhere), embedded as subset Type 3 fonts with a Unicode
  map, so text can be searched and copied (Type 42 reads the same but its subsetting takes
  a second more per file).  Text is wrapped with the font's own glyph widths, one line per
  text object on its own baseline (so table rows line up whatever their glyphs).
* Every page has a footer: the model weights' SHA-256 prefix (12 hex digits), the date of
  the results (store meta ``results_date`` / ``scored_at`` when present, else the latest
  ``scored_at`` of the cases table; the date only) and "page i of n".
* Only pseudonymous case ids and nodule ids are printed, never the results folder or a path.
  Errors of failed cases are printed as stored (they name files by base name only, see
  :mod:`data_tools.errors`).
* Metadata: Title, Author and Creator ``ct-nodule-discovery``, no creation date, so the same
  results give a byte-identical file.  The file is written to ``.<name>.tmp`` beside *out*
  and moved into place with :func:`os.replace`.
"""

from __future__ import annotations

import json
import logging
import os
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from discovery.model.rois import nodule_label
from discovery.patterns.outcomes import (
    ARTIFACT_HU,
    Exemplar,
    cluster_readings,
    nodule_outcomes,
    outcome_panels,
)
from discovery.report import render
from discovery.report.html import (
    _CROP_HALF_PX,
    _OUTCOME_COLOURS,
    _VERDICT_COLOURS,
    DISPLAY_THRESHOLD,
    _cached,
)
from discovery.store.tables import ResultsStore

__all__ = ["write_pdf", "select_nodule_pages", "MAX_FALLBACK", "AUTHOR", "TITLE", "MIN_PT"]

log = logging.getLogger(__name__)

#: Title and author written into the PDF metadata.
TITLE = "Nodule discovery findings"
AUTHOR = "ct-nodule-discovery"
#: Smallest font size used anywhere (points).
MIN_PT = 8
#: Nodule pages shown when nothing is flagged (highest off-mask share first).
MAX_FALLBACK = 10

_PAGE_W, _PAGE_H = 8.27, 11.69           # A4 portrait, inches
_MARGIN, _TOP, _BOTTOM = 0.6, 0.55, 0.75  # side margins; space above content / for the footer
_CONTENT_W = _PAGE_W - 2 * _MARGIN
_DPI = 200                                # raster resolution of the embedded images
_GRAY, _INK = "#4a5568", "#1a202c"
_REGION_HALF_PX = 36
_FONT = "DejaVu Sans"
_RC = {"pdf.fonttype": 3, "font.family": _FONT, "font.size": 9, "text.parse_math": False,
       "svg.hashsalt": AUTHOR, "axes.titlesize": 9, "axes.labelsize": 8.5, "xtick.labelsize": 8,
       "ytick.labelsize": 8, "legend.fontsize": 8, "image.interpolation": "nearest",
       "savefig.dpi": _DPI}
_METRICS = [("probability", "P(malignant)", (0.0, 1.0)),
            ("rma", "relevance mass in mask (RMA)", (0.0, 1.0)),
            ("rra", "relevance rank accuracy (RRA)", (0.0, 1.0)),
            ("near_mass", "attribution within 5 mm of the mask", (0.0, 1.0)),
            ("peak_distance_mm", "attribution peak to mask (mm)", None),
            ("offmask_mass_share", "off-mask share of the attribution", (0.0, 1.0))]
_CLUSTER_COLOURS = ["#2b6cb0", "#c53030", "#1b7f3b", "#b7791f", "#6b46c1", "#d53f8c", "#319795",
                    "#dd6b20"]


# -- layout ---------------------------------------------------------------------------------

class _Doc:
    """Pages (``Figure`` objects) and a cursor ``y`` (inches from the top of the last page).
    With ``dry=True`` nothing is drawn: only the cursor moves (to count pages ahead)."""

    def __init__(self, *, dry: bool = False):
        self.pages: list = []
        self.y = 0.0
        self.dry = dry

    def new_page(self) -> None:
        self.y = _TOP
        if self.dry:
            self.pages.append(None)
            return
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        fig = Figure(figsize=(_PAGE_W, _PAGE_H), dpi=_DPI)
        FigureCanvasAgg(fig)
        self.pages.append(fig)

    @property
    def fig(self):
        return self.pages[-1]

    def need(self, height: float) -> None:
        """Start a new page unless *height* inches still fit on this one."""
        if not self.pages or self.y + height > _PAGE_H - _BOTTOM:
            self.new_page()

    @staticmethod
    def rect(x: float, top: float, w: float, h: float) -> list[float]:
        """Figure-fraction rectangle of a box given in inches from the top-left corner."""
        return [x / _PAGE_W, 1.0 - (top + h) / _PAGE_H, w / _PAGE_W, h / _PAGE_H]

    def text(self, s: str, *, x: float = _MARGIN, top: float | None = None, size: float = 9,
             width: float = _CONTENT_W, advance: bool = True, weight: str = "normal",
             **kw) -> float:
        """Text wrapped to *width* inches at (x, top); returns its height in inches and,
        with *advance*, moves the cursor below it."""
        size = max(float(size), MIN_PT)
        lines = _wrap(str(s), width, size, weight)
        top = self.y if top is None else top
        if not self.dry:  # one Text per line on its own baseline: rows line up whatever the glyphs
            for i, line in enumerate(lines):
                base = top + size * (0.8 + 1.3 * i) / 72.0
                self.fig.text(x / _PAGE_W, 1.0 - base / _PAGE_H, line, fontsize=size,
                              va="baseline", ha="left", weight=weight, **kw)
        h = _text_height(len(lines), size)
        if advance:
            self.y = top + h
        return h

    def box(self, top: float, h: float, face: str, *, edge: str | None = None,
            x: float = _MARGIN, w: float = _CONTENT_W) -> None:
        if self.dry:
            return
        from matplotlib.patches import Rectangle

        r = self.rect(x, top, w, h)
        self.fig.add_artist(Rectangle((r[0], r[1]), r[2], r[3], transform=self.fig.transFigure,
                                      facecolor=face, edgecolor=edge or face, lw=0.6, zorder=-1))

    def image(self, rgb: np.ndarray, x: float, top: float, w: float, *, aspect: float = 1.0):
        """An RGB image *w* inches wide at (x, top); *aspect* = pixel height / pixel width
        (mm).  Returns the axes."""
        ax = self.fig.add_axes(self.rect(x, top, w, _img_h(rgb, w, aspect)))
        ax.imshow(rgb, interpolation="nearest", aspect="auto")
        ax.set_xticks([])
        ax.set_yticks([])
        for s in ax.spines.values():
            s.set_edgecolor("#2d3748")
            s.set_linewidth(0.6)
        return ax


def _img_h(rgb: np.ndarray, w: float, aspect: float = 1.0) -> float:
    return w * rgb.shape[0] * aspect / rgb.shape[1]


@lru_cache(maxsize=20000)
def _width_pt(s: str, size: float, weight: str) -> float:
    from matplotlib.font_manager import FontProperties
    from matplotlib.textpath import text_to_path

    prop = FontProperties(family=_FONT, size=size, weight=weight)
    return float(text_to_path.get_text_width_height_descent(s, prop, ismath=False)[0])


def _wrap(s: str, width_in: float, size: float, weight: str = "normal") -> list[str]:
    """Greedy word wrap measured with the font's glyph widths (a word longer than the line
    stays whole)."""
    limit = width_in * 72.0
    out: list[str] = []
    for para in s.split("\n"):
        line = ""
        for word in para.split():
            trial = f"{line} {word}" if line else word
            if line and _width_pt(trial, size, weight) > limit:
                out.append(line)
                line = word
            else:
                line = trial
        out.append(line)
    return out


def _text_height(n_lines: int, size: float) -> float:
    return n_lines * size * 1.3 / 72.0 + 0.04


def _heading(doc: _Doc, s: str, *, keep: float = 1.5) -> None:
    """A section heading with a rule, kept together with the next *keep* inches."""
    doc.need(0.5 + keep)
    doc.y += 0.12
    doc.text(s, size=13, weight="bold", color=_INK)
    doc.box(doc.y + 0.02, 0.014, "#2d3748")  # the rule
    doc.y += 0.14


def _fmt(value, digits: int = 3) -> str:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return "–" if value in (None, "") else str(value)
    return f"{v:.{digits}f}" if np.isfinite(v) else "–"


def _sentence(s) -> str:
    s = "" if s is None or (isinstance(s, float) and np.isnan(s)) else str(s).strip()
    return (s[:1].upper() + s[1:] + ("" if s.endswith(".") else ".")) if s else ""


# -- data ------------------------------------------------------------------------------------

def _results_date(meta: dict, cases: pd.DataFrame) -> str:
    for key in ("results_date", "scored_at", "created_at"):
        if meta.get(key):
            return str(meta[key])[:10]
    stamps = cases["scored_at"].dropna().astype(str) if "scored_at" in cases.columns else []
    return max(stamps)[:10] if len(stamps) else "unknown date"


def _spacing(cases: pd.DataFrame) -> dict[str, tuple[float, float, float]]:
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


def select_nodule_pages(findings: pd.DataFrame, *,
                        limit: int = MAX_FALLBACK) -> tuple[pd.DataFrame, bool]:
    """The nodules that get a page, and whether they are the fallback.

    Parameters
    ----------
    findings : pandas.DataFrame
        ``ResultsStore.findings()``.
    limit : int
        Most nodules the fallback shows.

    Returns
    -------
    (pandas.DataFrame, bool)
        Scored nodules with ``flagged == 1`` (largest ``flag_score`` first, then case and
        nodule id) and ``False``; when none is flagged, the scored nodules with the highest
        positive ``offmask_mass_share`` (up to *limit*, same tie order) and ``True``.
    """
    scored = findings[findings["status"].isin(["ok", "no-attribution"])]
    flagged = pd.to_numeric(scored["flagged"], errors="coerce").fillna(0) == 1
    if flagged.any():
        return scored[flagged].sort_values(["flag_score", "case_id", "nodule_id"],
                                           ascending=[False, True, True], kind="stable"), False
    share = pd.to_numeric(scored["offmask_mass_share"], errors="coerce")
    rows = scored[share > 0]
    rows = rows.assign(_s=share.loc[rows.index]).sort_values(
        ["_s", "case_id", "nodule_id"], ascending=[False, True, True], kind="stable")
    return rows.drop(columns="_s").head(int(limit)), True


def _context(results_dir: Path) -> dict:
    store = ResultsStore(results_dir, create=False)
    try:
        findings, clusters, regions = store.findings(), store.clusters(), store.regions()
        meta, cases = store.meta(), store.cases()
    finally:
        store.close()
    scored = findings[findings["status"].isin(["ok", "no-attribution"])]
    threshold = float(meta.get("threshold", 0.5) or 0.5)
    outcomes = nodule_outcomes(scored, clusters, regions)
    pages, fallback = select_nodule_pages(findings)
    failed = findings[findings["status"] == "failed"]
    return {
        "results_dir": results_dir, "findings": findings, "scored": scored, "clusters": clusters,
        "regions": regions, "threshold": threshold, "outcomes": outcomes, "cache": {},
        "outcome_of": {(r.case_id, r.nodule_id): r.outcome for r in outcomes.itertuples()},
        "readings": (dict(zip(clusters["cluster"].astype(int), cluster_readings(clusters)))
                     if len(clusters) else {}),
        "panels": outcome_panels(findings, clusters, regions, threshold=threshold),
        "pages": pages, "fallback": fallback,
        "failed": [f"{r.case_id}: {str(r.error)[:240]}" for r in failed.itertuples()],
        "n_cases": int(findings["case_id"].nunique()), "n_scored": int(len(scored)),
        "sha": (f"{str(meta['model_sha256'])[:12]}…" if meta.get("model_sha256") else "unknown"),
        "layer": str(meta.get("gradcam_layer", "") or "-"), "date": _results_date(meta, cases),
        "spacing": _spacing(cases), "box_mm": _box_mm(meta),
    }


# -- summary -----------------------------------------------------------------------------------

def _title_block(doc: _Doc, ctx: dict) -> None:
    doc.new_page()
    doc.text(TITLE, size=20, weight="bold", color=_INK)
    doc.y += 0.04
    doc.text(f"{ctx['n_cases']} cases, {ctx['n_scored']} nodules scored · model weights "
             f"{ctx['sha']} · Grad-CAM on {ctx['layer']} · results of {ctx['date']}",
             size=9.5, color=_GRAY)
    doc.y += 0.1
    note = ("Case ids are pseudonymous. Grad-CAM values are raw magnitudes (after ReLU), shown on "
            "one scale per case (0 to the case maximum); overlays show values of at least "
            f"{DISPLAY_THRESHOLD:.0%} of that maximum. A verdict says where the model's attention "
            "lies relative to the annotated nodule: aligned (peak within tolerance and at least "
            "half the attention near the mask), off-mask (peak away and less than a quarter near "
            "the mask), partial otherwise. Off-mask attention is a question for a reviewer, not "
            "automatically an error. Pictures: axial slices in lung window (W1500/L-600); green "
            "the nodule mask contour, cyan the off-mask regions.")
    h = _text_height(len(_wrap(note, _CONTENT_W - 0.24, 8.5)), 8.5)
    doc.box(doc.y, h + 0.1, "#f7fafc", edge="#a0aec0")
    doc.text(note, x=_MARGIN + 0.12, top=doc.y + 0.05, size=8.5, width=_CONTENT_W - 0.24)
    doc.y += 0.12


def _counts(doc: _Doc, ctx: dict) -> None:
    verdicts = ctx["findings"]["verdict"].fillna("").replace("", "failed").value_counts()
    order = ([v for v in _VERDICT_COLOURS if v in verdicts.index]
             + sorted(set(verdicts.index) - set(_VERDICT_COLOURS)))
    outc = ctx["outcomes"]["outcome"].value_counts()
    columns = (("by localisation verdict", [(v, int(verdicts[v]), _VERDICT_COLOURS.get(v, _GRAY))
                                            for v in order]),
               ("by outcome", [("candidate pattern" if o == "candidate sign" else o,
                                int(outc.get(o, 0)), _OUTCOME_COLOURS.get(o, _GRAY))
                               for o in ("on the tumour", "shortcut", "candidate sign", "other")]))
    n_rows = max(len(order), 4)
    _heading(doc, "Counts", keep=0.25 + 0.19 * n_rows)
    top = doc.y
    for col, (title, items) in enumerate(columns):
        x = _MARGIN + col * _CONTENT_W / 2
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


def _outcomes(doc: _Doc, ctx: dict) -> None:
    _heading(doc, "What the explanations say: three outcomes", keep=1.9)
    doc.text("Each scored nodule is read by the rules in discovery/outcomes.py: shortcut when its "
             "malignant prediction would not survive removing off-mask regions of a cluster the "
             "model relies on and that cluster is metal-dense (median density within 3 mm at "
             f"least {ARTIFACT_HU:.0f} HU); candidate pattern when it has a region in an "
             "anatomical-density cluster the model relies on for malignancy or that is enriched "
             "for predicted-malignant nodules (q < 0.05); on the tumour when its verdict is "
             "aligned. Each picture: the plain crop, then the same crop with the overlay; the heat "
             "map exists only inside each nodule's analysis box, so it can end in a straight edge.",
             size=8.5, color=_GRAY)
    doc.y += 0.08
    gap, inner = 0.15, _CONTENT_W - 0.15
    img_w = (inner - 2 * gap) / 3
    for p in ctx["panels"]:
        colour = _OUTCOME_COLOURS.get(p.outcome, _GRAY)
        pics = [(render.exemplar_image(_cached(ctx["cache"], ctx["results_dir"], ex.case_id), ex,
                                       threshold=DISPLAY_THRESHOLD), ex.caption)
                for ex in p.exemplars]
        img_h = max((_img_h(rgb, img_w) for rgb, _ in pics), default=0.0)
        cap_h = max((_text_height(len(_wrap(c, img_w, 8)), 8) for _, c in pics), default=0.0)
        title = f"{p.title}  ·  {p.n_nodules} nodule{'s' if p.n_nodules != 1 else ''}"
        block = (_text_height(len(_wrap(title, inner, 10.5, "bold")), 10.5)
                 + _text_height(len(_wrap(p.lead, inner, 8.5)), 8.5)
                 + (0.08 + img_h + cap_h if pics else 0.0) + 0.2)
        doc.need(block)
        top = doc.y
        doc.box(top, block - 0.12, colour, w=0.06)
        doc.text(title, x=_MARGIN + 0.15, size=10.5, weight="bold", color=colour, width=inner)
        doc.text(p.lead, x=_MARGIN + 0.15, size=8.5, width=inner)
        doc.y += 0.08
        for i, (rgb, cap) in enumerate(pics):
            x = _MARGIN + 0.15 + i * (img_w + gap)
            doc.image(rgb, x, doc.y, img_w)
            doc.text(cap, x=x, top=doc.y + img_h + 0.03, size=8, width=img_w, advance=False,
                     color=_GRAY)
        doc.y = top + block


def _distributions(doc: _Doc, ctx: dict) -> None:
    scored = ctx["scored"]
    left, hgap, vgap, plot_h = 0.5, 0.7, 0.62, 1.55
    plot_w = (_CONTENT_W - left - hgap) / 2
    _heading(doc, "Metric distributions", keep=plot_h + 1.0)
    doc.text(f"Histograms over the {len(scored)} scored nodules, stacked by verdict. The dashed "
             f"line on P(malignant) is the decision threshold ({ctx['threshold']:g}).",
             size=8.5, color=_GRAY)
    verdicts = [v for v in _VERDICT_COLOURS if (scored["verdict"] == v).any()]
    if verdicts and not doc.dry:
        from matplotlib.patches import Patch

        doc.fig.legend(handles=[Patch(color=_VERDICT_COLOURS[v], label=v) for v in verdicts],
                       loc="upper left", ncol=len(verdicts), frameon=False,
                       bbox_to_anchor=(_MARGIN / _PAGE_W, 1.0 - (doc.y + 0.02) / _PAGE_H))
    doc.y += 0.35
    for i, (col, label, rng) in enumerate(_METRICS):
        c = i % 2
        if c == 0:
            doc.need(plot_h + vgap)
            row_top = doc.y
        ax = doc.fig.add_axes(doc.rect(_MARGIN + left + c * (plot_w + hgap), row_top, plot_w,
                                       plot_h))
        values = pd.to_numeric(scored[col], errors="coerce")
        ok = np.isfinite(values)
        if not ok.any():
            ax.text(0.5, 0.5, "no values", ha="center", va="center", fontsize=9, color=_GRAY,
                    transform=ax.transAxes)
        else:
            lo, hi = rng if rng else (0.0, max(float(values[ok].max()), 1.0))
            data = [np.clip(values[ok & (scored["verdict"] == v)], lo, hi) for v in verdicts]
            ax.hist(data, bins=np.linspace(lo, hi, 21), stacked=True, edgecolor="white",
                    color=[_VERDICT_COLOURS[v] for v in verdicts], linewidth=0.4)
            ax.set_xlim(lo, hi)
            if col == "probability":
                ax.axvline(ctx["threshold"], color=_INK, ls="--", lw=0.8)
            if (~ok).sum():
                ax.text(0.98, 0.95, f"{int((~ok).sum())} not defined", ha="right", va="top",
                        fontsize=8, color=_GRAY, transform=ax.transAxes)
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
        truth = (f"; truly malignant {_fmt(c.share_truth_malignant, 2)} vs "
                 f"{_fmt(c.pool_truth_malignant, 2)} (p = {_fmt(c.p_truth)})")
    if np.isfinite(getattr(c, "effect_mean", np.nan)):
        causal = (f"Causal check: replacing the regions with lung parenchyma changes P(malignant) "
                  f"by {c.effect_mean:+.3f} on average over {int(c.effect_n)} nodules (95 % "
                  f"interval {_fmt(c.effect_ci_low)} to {_fmt(c.effect_ci_high)}): "
                  + ("the model relies on this pattern." if bool(c.relied_upon)
                     else "no measurable reliance."))
    else:
        causal = "Causal check: not run (needs the model; run discovery score)."
    body = (f"{int(c.n_regions)} regions from {int(c.n_cases)} patients ({int(c.n_nodules)} "
            f"nodules); median density near the regions {_fmt(c.median_halo_max_hu, 0)} HU. "
            f"Predicted malignant: {_fmt(c.share_predicted_malignant, 2)} of its nodules vs "
            f"{_fmt(c.pool_predicted_malignant, 2)} in the cohort (enrichment "
            f"{_fmt(c.enrichment_predicted, 2)}×, p = {_fmt(c.p_predicted)}, q = "
            f"{_fmt(c.q_predicted)}){truth}. {causal}")
    return f"Cluster {int(c.cluster)} ({reading}): {c.description}", body


def _clusters(doc: _Doc, ctx: dict) -> None:
    clusters, regions = ctx["clusters"], ctx["regions"]
    _heading(doc, "Off-mask attention patterns", keep=2.7)
    if clusters.empty:
        doc.text("No pattern clusters: too few off-mask regions, or none that group together.")
        return
    emb = regions.dropna(subset=["embedding_x", "embedding_y"])
    if len(emb):
        ax = doc.fig.add_axes(doc.rect(_MARGIN, doc.y + 0.05, 3.0, 2.2))
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
                 "close together; the colour is the pattern cluster.", x=_MARGIN + 4.3,
                 top=doc.y + 1.2, width=_CONTENT_W - 4.3, size=8.5, color=_GRAY, advance=False)
        doc.y += 2.5
    by_key = regions.set_index("region_key")
    n_pics, gap = 4, 0.15
    img_w = (_CONTENT_W - (n_pics - 1) * gap) / n_pics
    for c, reading in zip(clusters.itertuples(), cluster_readings(clusters)):
        title, body = _cluster_text(c, reading)
        pics = []
        for key in [k for k in c.exemplars if k in by_key.index][:n_pics]:
            reg = by_key.loc[key]
            arrays = _cached(ctx["cache"], ctx["results_dir"], reg["case_id"])
            pics.append((render.thumbnail(arrays, z=reg["centroid_z"],
                                          center_yx=(reg["centroid_y"], reg["centroid_x"]),
                                          region=int(reg["case_region"]),
                                          threshold=DISPLAY_THRESHOLD),
                         f"{reg['case_id']} · {reg['nodule_id']}"))
        block = (_text_height(len(_wrap(title, _CONTENT_W, 10, "bold")), 10)
                 + _text_height(len(_wrap(body, _CONTENT_W, 8.5)), 8.5)
                 + (img_w + 0.4 if pics else 0.0) + 0.25)
        doc.need(block)
        top = doc.y
        doc.text(title, size=10, weight="bold", color=_INK)
        doc.text(body, size=8.5)
        doc.y += 0.05
        for i, (rgb, cap) in enumerate(pics):
            x = _MARGIN + i * (img_w + gap)
            doc.image(rgb, x, doc.y, img_w)
            doc.text(cap, x=x, top=doc.y + img_w + 0.03, size=8, width=img_w, advance=False,
                     color=_GRAY)
        doc.y = top + block


def _page_index(doc: _Doc, ctx: dict, first_page: int) -> None:
    rows, fallback = ctx["pages"], ctx["fallback"]
    _heading(doc, "Nodules with the most off-mask attention" if fallback
             else "Shortcut-flagged nodules", keep=0.6 + 0.19 * min(len(rows), 5))
    if fallback:
        doc.text(f"No nodule is shortcut-flagged in these results. The pages after the summary "
                 f"show instead the {len(rows)} nodule(s) with the highest share of attribution "
                 f"off the mask (at most {MAX_FALLBACK}).", color="#c53030")
    else:
        doc.text(f"{len(rows)} nodule(s) predicted malignant only because of off-mask attention "
                 "the model relies on (P(malignant) with → without those regions); one page "
                 "each, largest drop first.")
    if rows.empty:
        return
    cols = [("case", 0.0), ("nodule", 1.75), ("verdict", 2.55), ("P(malignant)", 3.45),
            ("off-mask share", 4.65), ("page", 6.1)]
    doc.y += 0.06
    doc.need(0.25)
    for name, dx in cols:
        doc.text(name, x=_MARGIN + dx, weight="bold", advance=False)
    doc.y += 0.22
    for k, r in enumerate(rows.itertuples()):
        doc.need(0.2)
        p = _fmt(r.probability, 2)
        if not fallback and np.isfinite(r.flag_score):
            p += f" → {_fmt(r.probability - r.flag_score, 2)}"
        for (_, dx), val in zip(cols, (r.case_id, r.nodule_id, r.verdict, p,
                                       _fmt(r.offmask_mass_share, 2), str(first_page + k))):
            doc.text(val, x=_MARGIN + dx, advance=False)
        doc.y += 0.19


# -- nodule pages ----------------------------------------------------------------------------

def _scale_bar(ax, n_px: int, px_mm: float, *, mm: float = 10.0) -> None:
    """A white *mm* bar with its label on a dark translucent box, lower left."""
    from matplotlib.font_manager import FontProperties
    from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar

    if not (np.isfinite(px_mm) and px_mm > 0) or mm / px_mm > 0.6 * n_px:
        return
    bar = AnchoredSizeBar(ax.transData, mm / px_mm, f"{mm:g} mm", "lower left", color="white",
                          pad=0.3, borderpad=0.6, sep=3, frameon=True, size_vertical=n_px / 120,
                          fontproperties=FontProperties(family=_FONT, size=8))
    bar.patch.set(facecolor="black", alpha=0.55, edgecolor="none")
    ax.add_artist(bar)


def _colorbar(doc: _Doc, x: float, top: float, w: float, attr_max: float) -> None:
    ax = doc.fig.add_axes(doc.rect(x, top, w, 0.16))
    bar = render.colorbar_image(attr_max=attr_max, height=256, width=4, horizontal=True)
    ax.imshow(bar, extent=(0.0, attr_max, 0.0, 1.0), aspect="auto", interpolation="nearest")
    ticks = render.colorbar_ticks(attr_max, 5)
    ax.set_xticks([f * attr_max for f, _ in ticks], [lab for _, lab in ticks])
    ax.set_yticks([])
    ax.axvline(DISPLAY_THRESHOLD * attr_max, color="white", lw=1.0)
    ax.set_xlabel(f"Grad-CAM, raw units (0 to this case's maximum, {attr_max:.3g}); overlay "
                  f"drawn from {DISPLAY_THRESHOLD:.0%} (white line)", fontsize=8)


def _crop_half(box_mm: float, px_mm: float) -> int:
    """Half size (pixels) of the nodule crop: the model's analysis box (where the heat map
    lives) plus 30 %, i.e. ``0.65 * box_mm``; the HTML report's 48 pixels when unknown."""
    if not (np.isfinite(box_mm) and np.isfinite(px_mm) and px_mm > 0):
        return _CROP_HALF_PX
    return int(np.clip(np.ceil(0.65 * box_mm / px_mm), 16, 96))


def _main_region(row, regions: pd.DataFrame, fallback: bool):
    """The nodule's off-mask region with the largest share (for a flagged nodule: among those
    in its flag clusters); None when it has none."""
    own = regions[(regions["case_id"] == row.case_id) & (regions["nodule_id"] == row.nodule_id)]
    if own.empty:
        return None
    if not fallback:
        ids = {int(t) for t in str(row.flag_clusters or "").replace(";", ",").split(",")
               if t.strip().lstrip("-").isdigit()}
        own = own[own["cluster"].isin(ids)] if own["cluster"].isin(ids).any() else own
    return own.sort_values(["mass_share", "region_key"], ascending=[False, True]).iloc[0]


def _nodule_head(doc: _Doc, ctx: dict, row, k: int, n: int) -> None:
    kind = "Nodule with off-mask attention" if ctx["fallback"] else "Flagged nodule"
    doc.text(f"{kind} {k} of {n}: {row.case_id} · {row.nodule_id}", size=15, weight="bold",
             color=_INK, width=_CONTENT_W - 1.2)
    verdict = row.verdict or "-"
    doc.fig.text(1.0 - _MARGIN / _PAGE_W, 1.0 - (_TOP + 0.03) / _PAGE_H, f" {verdict} ",
                 ha="right", va="top", fontsize=10, color="white", weight="bold",
                 bbox=dict(boxstyle="round,pad=0.3", ec="none",
                           fc=_VERDICT_COLOURS.get(verdict, _GRAY)))
    outcome = ctx["outcome_of"].get((row.case_id, row.nodule_id), "other")
    p = float(row.probability)
    if ctx["fallback"]:
        line = (f"Not flagged (no nodule in these results is); shown for its off-mask share of "
                f"{_fmt(row.offmask_mass_share, 2)}. P(malignant) {p:.2f}; outcome: {outcome}.")
    else:
        line = (f"P(malignant) {p:.2f} → {p - float(row.flag_score):.2f} once its off-mask "
                f"regions in cluster(s) {row.flag_clusters} are replaced by lung parenchyma "
                f"(decision threshold {ctx['threshold']:g}). Outcome: {outcome}.")
    doc.text(line, size=9.5, color=_INK)
    doc.y += 0.1


def _nodule_page(doc: _Doc, ctx: dict, row, k: int, n: int) -> None:
    from matplotlib.patches import Rectangle

    arrays = _cached(ctx["cache"], ctx["results_dir"], row.case_id)
    ct, mask, attr, regmap = arrays["ct"], arrays["mask"], arrays["attribution"], arrays["region_map"]
    label = nodule_label(row.nodule_id)
    try:
        z = render.key_slice(mask, label)
    except ValueError:
        z = int(np.clip(round(float(row.center_z)), 0, ct.shape[0] - 1))
    center = (float(row.center_y), float(row.center_x))
    attr_max = float(attr.max()) if attr.size else 0.0
    _, py, px = ctx["spacing"].get(row.case_id, (np.nan,) * 3)
    aspect = py / px if px > 0 and py > 0 else 1.0  # NaN compares False
    doc.new_page()
    _nodule_head(doc, ctx, row, k, n)
    # row 1: the key slice around the nodule, plain and with the overlay, and the colour bar
    own = (mask[z] == label) if label is not None else (mask[z] > 0)
    half = _crop_half(ctx["box_mm"], px)
    crop = lambda a: render.crop_around(a, center, half)  # noqa: E731
    plain = render.overlay_slice(crop(ct[z]).astype(np.float32), mask2d=crop(own), window="lung")
    over = render.overlay_slice(crop(ct[z]).astype(np.float32), attribution2d=crop(attr[z]),
                                mask2d=crop(own), regions2d=crop(regmap[z]), window="lung",
                                opacity=0.5, attr_max=attr_max or None, threshold=DISPLAY_THRESHOLD)
    side = 2 * half + 1
    fov = f", {side * px:.0f} mm across" if px > 0 else ""
    doc.text(f"Key slice {z + 1} of {ct.shape[0]} (most mask voxels): {side} × {side} pixels "
             f"around the nodule{fov}", weight="bold")
    top, w, gap = doc.y + 0.04, (_CONTENT_W - 0.2) / 2, 0.2
    _scale_bar(doc.image(plain, _MARGIN, top, w, aspect=aspect), plain.shape[1], px)
    doc.image(over, _MARGIN + w + gap, top, w, aspect=aspect)
    h = _img_h(plain, w, aspect)
    doc.text("plain, lung window (W1500/L-600); green: mask contour", top=top + h + 0.03,
             size=8, width=w, advance=False, color=_GRAY)
    doc.text("Grad-CAM overlay; cyan: off-mask regions; the heat map ends at the nodule's "
             "analysis box", x=_MARGIN + w + gap, top=top + h + 0.03, size=8, width=w,
             advance=False, color=_GRAY)
    doc.y = top + h + 0.42
    if attr_max > 0:
        _colorbar(doc, _MARGIN + 0.5, doc.y, _CONTENT_W - 1.0, attr_max)
        doc.y += 0.72
    else:
        doc.text("No attribution for this case (all zero): no colour scale.")
    # row 2: the whole slice, the main off-mask region (plain | overlay)
    small, top = (_CONTENT_W - 0.3) / 3, doc.y
    full = render.overlay_slice(ct[z].astype(np.float32), attribution2d=attr[z],
                                mask2d=mask[z] > 0, window="lung", opacity=0.45,
                                attr_max=attr_max or None, threshold=DISPLAY_THRESHOLD)
    ax = doc.image(full, _MARGIN, top, small, aspect=aspect)
    ax.add_patch(Rectangle((center[1] - half - 0.5, center[0] - half - 0.5),
                           side, side, fill=False, ec="white", lw=0.8, ls="--"))
    ax.set_xlim(-0.5, full.shape[1] - 0.5)
    ax.set_ylim(full.shape[0] - 0.5, -0.5)
    row_h = _img_h(full, small, aspect)
    doc.text(f"whole slice {z + 1}; dashed: the crop above", top=top + row_h + 0.03, size=8,
             width=small, advance=False, color=_GRAY)
    reg = _main_region(row, ctx["regions"], ctx["fallback"])
    x0, pw = _MARGIN + small + 0.15, 2 * small + 0.15
    if reg is not None:
        cl = int(reg["cluster"]) if pd.notna(reg["cluster"]) else -1
        reading = ctx["readings"].get(cl, "")
        dense = reading == "artifact"
        ex = Exemplar(row.case_id, row.nodule_id, float(reg["centroid_z"]),
                      center if dense else (float(reg["centroid_y"]), float(reg["centroid_x"])),
                      int(reg["case_region"]), label, "", focus="densest" if dense else "centroid")
        pic = render.exemplar_image(arrays, ex, half_size=_REGION_HALF_PX,
                                    threshold=DISPLAY_THRESHOLD, attr_max=attr_max)
        doc.image(pic, x0, top, pw, aspect=aspect)
        row_h = max(row_h, _img_h(pic, pw, aspect))
        where = ("on the slice of the densest voxel next to it, centred between nodule and region"
                 if dense else f"on slice {int(round(float(reg['centroid_z']))) + 1}, centred on "
                 "the region")
        cl_txt = f"cluster {cl}, {reading}" if cl >= 0 else "in no cluster"
        doc.text(f"Main off-mask region, plain and overlay, {where}: "
                 f"{_fmt(reg['mass_share'], 2)} of the attribution, "
                 f"{_fmt(reg['distance_to_mask_mm'], 1)} mm from the mask ({cl_txt}). "
                 f"{_sentence(reg.get('description'))}", x=x0, top=top + row_h + 0.03, size=8,
                 width=pw, advance=False, color=_GRAY)
    else:
        doc.text("No off-mask region for this nodule.", x=x0, top=top + 0.1, advance=False)
    doc.y = top + row_h + 0.8
    # the metrics, two columns
    metrics = [
        ("probability of malignancy", _fmt(row.probability)),
        ("predicted", "malignant" if row.predicted_label == 1 else "benign"),
        ("flag score (drop in P)", _fmt(row.flag_score)), ("relevance mass in mask (RMA)", _fmt(row.rma)),
        ("relevance rank accuracy (RRA)", _fmt(row.rra)), ("pointing game hit", _fmt(row.pointing_hit, 0)),
        ("attribution peak to mask (mm)", _fmt(row.peak_distance_mm, 1)),
        ("attribution within 5 mm of mask", _fmt(row.near_mass)),
        ("off-mask regions / their share",
         f"{int(row.n_offmask_regions or 0)} / {_fmt(row.offmask_mass_share)}"),
        ("nodule volume (mm³)", _fmt(row.volume_mm3, 0))]
    doc.need(0.3 + 0.19 * 5)
    doc.text("Metrics", size=10, weight="bold", color=_INK)
    for i, (name, val) in enumerate(metrics):
        c, r = divmod(i, 5)
        x, y = _MARGIN + c * _CONTENT_W / 2, doc.y + 0.02 + r * 0.19
        doc.text(name, x=x, top=y, advance=False, color=_GRAY)
        doc.text(val, x=x + 2.45, top=y, advance=False, weight="bold")


# -- document ------------------------------------------------------------------------------------

def _footer(fig, ctx: dict, i: int, n: int) -> None:
    y = 0.42 / _PAGE_H
    fig.text(_MARGIN / _PAGE_W, y, f"{TITLE} · model weights SHA-256 {ctx['sha']} · results of "
             f"{ctx['date']}", fontsize=8, color=_GRAY, ha="left", va="center")
    fig.text(1.0 - _MARGIN / _PAGE_W, y, f"page {i} of {n}", fontsize=8, color=_GRAY,
             ha="right", va="center")


def write_pdf(results_dir: str | Path, out: str | Path) -> Path:
    """Write the PDF report of a results folder to *out*; return *out* as a Path.

    Parameters
    ----------
    results_dir : str or Path
        A results folder written by ``discovery score`` (``discovery.sqlite`` + ``cases/``).
    out : str or Path
        Output file; its folder is created.  Written to ``.<name>.tmp`` beside it, then moved
        into place (:func:`os.replace`), so a reader never sees half a file.

    Returns
    -------
    Path
        *out*.  The same results give the same bytes (no creation date in the file).
    """
    import matplotlib
    from matplotlib.backends.backend_pdf import PdfPages

    results_dir, out = Path(results_dir), Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    with matplotlib.rc_context(_RC):
        ctx = _context(results_dir)
        doc = _Doc()
        _title_block(doc, ctx)
        _counts(doc, ctx)
        _outcomes(doc, ctx)
        _distributions(doc, ctx)
        _clusters(doc, ctx)
        dry = _Doc(dry=True)  # the index lists page numbers: count the pages it takes first
        dry.pages, dry.y = [None] * len(doc.pages), doc.y
        _page_index(dry, ctx, 0)
        _page_index(doc, ctx, len(dry.pages) + 1)
        rows = list(ctx["pages"].itertuples())
        for k, row in enumerate(rows, start=1):
            _nodule_page(doc, ctx, row, k, len(rows))
        n = len(doc.pages)
        for i, fig in enumerate(doc.pages, start=1):
            _footer(fig, ctx, i, n)
        meta = {"Title": TITLE, "Author": AUTHOR, "Creator": AUTHOR, "CreationDate": None,
                "Subject": "Where a lung-nodule classifier looks: localisation, shortcuts, patterns"}
        try:
            with PdfPages(tmp, metadata=meta) as pdf:
                for fig in doc.pages:
                    pdf.savefig(fig)
            os.replace(tmp, out)
        finally:
            tmp.unlink(missing_ok=True)
    log.info("wrote a %d-page PDF report (%d nodule pages)", n, len(rows))
    return out
