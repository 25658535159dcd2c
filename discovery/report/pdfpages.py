"""The nodule pages of the PDF report (:mod:`discovery.report.pdf`) and their index.

One page per nodule that :func:`discovery.report.data.select_nodule_pages` picks: the
shortcut-flagged nodules and the other *shortcut* outcomes (metal beside a nodule whose call
rests on its surroundings), or, when there are none, the fallback nodules.  A page has the
nodule's key axial slice (plain and with the overlay), a colour bar in raw units, the whole
slice, the picture of what the call rests on off the nodule (its main off-mask region, or
the densest voxel beside it) and the metrics.  Drawn on the :class:`~discovery.report.pdflayout.Doc`
of the report; matplotlib is imported inside the functions only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from discovery.align.metrics import AlignThresholds
from discovery.model.reliance import reliance_text, surroundings_text
from discovery.model.rois import nodule_label
from discovery.patterns.outcomes import Exemplar, shortcut_exemplar
from discovery.report import render
from discovery.report.data import MAX_FALLBACK
from discovery.report.pdflayout import (
    CONTENT_W,
    GRAY,
    INK,
    MARGIN,
    PAGE_H,
    PAGE_W,
    TOP,
    Doc,
    heading,
    image_height,
    name_value_columns,
    scale_bar,
    text_height,
    wrap,
)
from discovery.schema import SURROUNDINGS_MM
from discovery.report.style import (
    CROP_HALF_PX,
    DISPLAY_THRESHOLD,
    VERDICT_COLOURS,
    fmt,
    pct,
    sentence,
)

__all__ = ["page_index", "nodule_page"]

_REGION_HALF_PX = 36


#: What each kind of shortcut page is (``page_kind`` of
#: :func:`discovery.report.data.select_nodule_pages`), as the page index says it.
_KIND_TEXT = {
    "flagged": "shortcut-flagged: predicted malignant only because of off-mask attention the "
               "model relies on (P(malignant) with → without those regions)",
    "cluster": "a shortcut through an artifact cluster whose regions lower P(malignant) "
               "without flipping the call (P with → without all its off-mask regions)",
    "metal": f"a shortcut through metal beside the nodule, within {SURROUNDINGS_MM:g} mm of "
             "its mask (P with → without its surroundings)"}


def page_index(doc: Doc, ctx: dict, first_page: int) -> None:
    rows, fallback = ctx["pages"], ctx["fallback"]
    off = ctx["offmask_pages"]
    heading(doc, ("Nodules with the most off-mask attention" if off else "Nodule pages")
            if fallback else "Shortcut nodules", keep=0.6 + 0.19 * min(len(rows), 5))
    if off:
        doc.text(f"No nodule is shortcut-flagged in these results. The pages after the summary "
                 f"show instead the {len(rows)} nodule(s) with the highest share of attribution "
                 f"off the mask (at most {MAX_FALLBACK}).", color="#c53030")
    elif fallback and rows.empty:
        doc.text("No scored nodule in these results: no nodule pages follow.")
    elif fallback:
        doc.text(f"No nodule is shortcut-flagged and none has attention off its mask. The "
                 f"pages after the summary show the {len(rows)} nodule(s) with the highest "
                 f"P(malignant) (at most {MAX_FALLBACK}).")
    else:
        kinds = list(rows["page_kind"])
        parts: list[str] = []
        for k, text in _KIND_TEXT.items():
            if k in kinds:
                parts.append(f"{kinds.count(k)}{'' if parts else ' nodule(s)'} {text}")
        doc.text("; ".join(parts) + ". One page each, largest drop first.")
    if rows.empty:
        return
    cols = [("case", 0.0), ("nodule", 1.75), ("verdict", 2.55), ("P(malignant)", 3.45),
            ("off-mask share", 4.65), ("page", 6.1)]
    doc.y += 0.06
    doc.need(0.25)
    for name, dx in cols:
        doc.text(name, x=MARGIN + dx, weight="bold", advance=False)
    doc.y += 0.22
    for k, r in enumerate(rows.itertuples()):
        doc.need(0.2)
        p = fmt(r.probability)
        if not fallback and np.isfinite(getattr(r, "page_drop", np.nan)):
            p += f" → {fmt(r.probability - r.page_drop)}"
        for (_, dx), val in zip(cols, (r.case_id, r.nodule_id, r.verdict, p,
                                       fmt(r.offmask_mass_share), str(first_page + k))):
            doc.text(val, x=MARGIN + dx, advance=False)
        doc.y += 0.19


# -- nodule pages ----------------------------------------------------------------------------

def _colorbar(doc: Doc, x: float, top: float, w: float, attr_max: float) -> None:
    ax = doc.fig.add_axes(doc.rect(x, top, w, 0.16))
    bar = render.colorbar_image(attr_max=attr_max, height=256, width=4, horizontal=True)
    ax.imshow(bar, extent=(0.0, attr_max, 0.0, 1.0), aspect="auto", interpolation="nearest")
    ticks = render.colorbar_ticks(attr_max, 5)
    ax.set_xticks([f * attr_max for f, _ in ticks], [lab for _, lab in ticks])
    ax.set_yticks([])
    ax.axvline(DISPLAY_THRESHOLD * attr_max, color="white", lw=1.0)
    ax.set_xlabel(f"Grad-CAM, raw units (0 to this case's maximum, {fmt(attr_max)}); overlay "
                  f"drawn from {DISPLAY_THRESHOLD:.0%} (white line)", fontsize=8)


def _crop_half(box_mm: float, px_mm: float) -> int:
    """Half size (pixels) of the nodule crop: the model's analysis box (where the heat map
    lives) plus 30 %, i.e. ``0.65 * box_mm``; the HTML report's 48 pixels when unknown."""
    if not (np.isfinite(box_mm) and np.isfinite(px_mm) and px_mm > 0):
        return CROP_HALF_PX
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


def _nodule_head(doc: Doc, ctx: dict, row, k: int, n: int) -> None:
    off = ctx["offmask_pages"]
    page_kind = "" if ctx["fallback"] else row.page_kind
    kind = ("Nodule with off-mask attention" if off else "Nodule") if ctx["fallback"] \
        else ("Flagged nodule" if page_kind == "flagged" else "Shortcut nodule")
    doc.text(f"{kind} {k} of {n}: {row.case_id} · {row.nodule_id}", size=15, weight="bold",
             color=INK, width=CONTENT_W - 1.2)
    verdict = row.verdict or "-"
    doc.fig.text(1.0 - MARGIN / PAGE_W, 1.0 - (TOP + 0.03) / PAGE_H, f" {verdict} ",
                 ha="right", va="top", fontsize=10, color="white", weight="bold",
                 bbox=dict(boxstyle="round,pad=0.3", ec="none",
                           fc=VERDICT_COLOURS.get(verdict, GRAY)))
    outcome = ctx["outcome_of"].get((row.case_id, row.nodule_id), "other")
    p = float(row.probability)
    if off:
        line = (f"Not flagged (no nodule in these results is); shown for its off-mask share of "
                f"{pct(row.offmask_mass_share)}. P(malignant) {fmt(p)}; outcome: {outcome}.")
    elif ctx["fallback"]:
        line = (f"Not flagged, no attention off its mask (none in these results has); shown "
                f"for its P(malignant), {fmt(p)}. Outcome: {outcome}.")
    elif page_kind == "metal":
        line = (f"Not flagged (its off-mask regions do not decide the call), but P(malignant) "
                f"{fmt(p)} → {fmt(row.p_without_surroundings)} once its surroundings, within "
                f"{SURROUNDINGS_MM:g} mm of the mask, are replaced by lung parenchyma "
                f"(decision threshold {ctx['threshold']:g}), and a voxel there is metal-dense "
                f"({fmt(row.surroundings_max_hu)} HU): the call rests on metal beside the "
                f"nodule. Outcome: {outcome}.")
    else:
        survives = "; not flagged: the call survives" if page_kind == "cluster" else ""
        named = (f"; the clusters that alone lower it: {row.flag_clusters}"
                 if str(row.flag_clusters or "").strip() else "")
        line = (f"P(malignant) {fmt(p)} → {fmt(p - float(row.flag_score))} once all its "
                f"off-mask regions are replaced by lung parenchyma (decision threshold "
                f"{ctx['threshold']:g}{survives}){named}. Outcome: {outcome}.")
    doc.text(line, size=9.5, color=INK)
    doc.y += 0.1


@dataclass(frozen=True)
class _View:
    """Where a nodule page looks: the case's arrays, the nodule's label and key slice ``z``,
    its centre (y, x), the case's attribution maximum, the pixel width ``px`` (mm), the pixel
    aspect (height / width), the half size of the crop (pixels) and the rule that chose
    ``z``."""

    arrays: dict
    label: int | None
    z: int
    center: tuple[float, float]
    attr_max: float
    px: float
    aspect: float
    half: int
    rule: str

    @property
    def side(self) -> int:
        return 2 * self.half + 1


def _view(ctx: dict, row) -> _View:
    arrays = ctx["arrays"](row.case_id)
    ct, mask, attr = arrays["ct"], arrays["mask"], arrays["attribution"]
    label = nodule_label(row.nodule_id)
    try:
        z, rule = render.key_slice_choice(mask, label, attribution=attr)
    except ValueError:
        z = int(np.clip(round(float(row.center_z)), 0, ct.shape[0] - 1))
        rule = "the nodule's centre: its label is not in the mask"
    _, py, px = ctx["spacing"].get(row.case_id, (np.nan,) * 3)
    return _View(arrays, label, z, (float(row.center_y), float(row.center_x)),
                 float(attr.max()) if attr.size else 0.0, px,
                 py / px if px > 0 and py > 0 else 1.0,  # NaN compares False
                 _crop_half(ctx["box_mm"], px), rule)


def _key_slice_row(doc: Doc, v: _View, scale: float = 1.0) -> None:
    """Row 1: the key slice around the nodule, plain and with the overlay, each *scale* times
    half the text column wide; the colour bar."""
    a, z = v.arrays, v.z
    ct, mask = a["ct"], a["mask"]
    own = (mask[z] == v.label) if v.label is not None else (mask[z] > 0)
    crop = lambda x: render.crop_around(x, v.center, v.half)  # noqa: E731
    plain = render.overlay_slice(crop(ct[z]).astype(np.float32), mask2d=crop(own), window="lung")
    over = render.overlay_slice(crop(ct[z]).astype(np.float32),
                                attribution2d=crop(a["attribution"][z]), mask2d=crop(own),
                                regions2d=crop(a["region_map"][z]), window="lung", opacity=0.5,
                                attr_max=v.attr_max or None, threshold=DISPLAY_THRESHOLD)
    fov = f", {v.side * v.px:.0f} mm across" if v.px > 0 else ""
    doc.text(f"Key slice {z + 1} of {ct.shape[0]} ({v.rule}): {v.side} × {v.side} "
             f"pixels{fov}", weight="bold")
    top, w, gap = doc.y + 0.04, scale * (CONTENT_W - 0.2) / 2, 0.2
    x = MARGIN + (CONTENT_W - 2 * w - gap) / 2           # the pair centred
    scale_bar(doc.image(plain, x, top, w, aspect=v.aspect), plain.shape[1], v.px)
    doc.image(over, x + w + gap, top, w, aspect=v.aspect)
    h = image_height(plain, w, v.aspect)
    doc.text("plain, lung window (W1500/L-600); green: mask contour", x=x, top=top + h + 0.03,
             size=8, width=w, advance=False, color=GRAY)
    doc.text("Grad-CAM overlay; cyan: off-mask regions; the heat map ends at the nodule's "
             "analysis box", x=x + w + gap, top=top + h + 0.03, size=8, width=w,
             advance=False, color=GRAY)
    doc.y = top + h + 0.42
    if v.attr_max > 0:
        _colorbar(doc, MARGIN + 0.5, doc.y, CONTENT_W - 1.0, v.attr_max)
        doc.y += 0.72
    else:
        doc.text("No attribution for this case (all zero): no colour scale.")


def _whole_slice(doc: Doc, v: _View, top: float, w: float) -> float:
    """The whole key slice with the crop's outline, *w* inches wide; returns its height,
    caption included."""
    from matplotlib.patches import Rectangle

    a, z = v.arrays, v.z
    full = render.overlay_slice(a["ct"][z].astype(np.float32), attribution2d=a["attribution"][z],
                                mask2d=a["mask"][z] > 0, window="lung", opacity=0.45,
                                attr_max=v.attr_max or None, threshold=DISPLAY_THRESHOLD)
    ax = doc.image(full, MARGIN, top, w, aspect=v.aspect)
    ax.add_patch(Rectangle((v.center[1] - v.half - 0.5, v.center[0] - v.half - 0.5),
                           v.side, v.side, fill=False, ec="white", lw=0.8, ls="--"))
    ax.set_xlim(-0.5, full.shape[1] - 0.5)
    ax.set_ylim(full.shape[0] - 0.5, -0.5)
    h = image_height(full, w, v.aspect)
    cap = doc.text(f"whole slice {z + 1}; dashed: the crop above", top=top + h + 0.03,
                   size=8, width=w, advance=False, color=GRAY)
    return h + 0.03 + cap


def _region_picture(doc: Doc, ctx: dict, row, v: _View, x: float, top: float,
                    w: float) -> float:
    """The nodule's main off-mask region (plain | overlay) at (x, top), *w* inches wide, with
    its caption (for metal beside the nodule: the densest voxel within the surroundings
    instead); returns their height (0.3 when the nodule has no region)."""
    if not ctx["fallback"] and row.page_kind == "metal":
        return _metal_picture(doc, ctx, row, v, x, top, w)
    reg = _main_region(row, ctx["regions"], ctx["fallback"])
    if reg is None:
        doc.text("No off-mask region for this nodule.", x=x, top=top + 0.1, advance=False)
        return 0.3
    cl = int(reg["cluster"]) if pd.notna(reg["cluster"]) else -1
    reading = ctx["readings"].get(cl, "")
    dense = reading == "artifact"
    ex = Exemplar(row.case_id, row.nodule_id, float(reg["centroid_z"]),
                  v.center if dense else (float(reg["centroid_y"]), float(reg["centroid_x"])),
                  int(reg["case_region"]), v.label, "", focus="densest" if dense else "centroid")
    pic = render.exemplar_image(v.arrays, ex, half_size=_REGION_HALF_PX,
                                threshold=DISPLAY_THRESHOLD, attr_max=v.attr_max)
    doc.image(pic, x, top, w, aspect=v.aspect)
    h = image_height(pic, w, v.aspect)
    where = ("on the slice of the densest voxel next to it, centred between nodule and region"
             if dense else f"on slice {int(round(float(reg['centroid_z']))) + 1}, centred on "
             "the region")
    cl_txt = f"cluster {cl}, {reading}" if cl >= 0 else "in no cluster"
    cap = doc.text(f"Main off-mask region, plain and overlay, {where}: "
                   f"{pct(reg['mass_share'])} of the attribution, "
                   f"{fmt(reg['distance_to_mask_mm'])} mm from the mask ({cl_txt}). "
                   f"{sentence(reg.get('description'))}", x=x, top=top + h + 0.03, size=8,
                   width=w, advance=False, color=GRAY)
    return h + 0.03 + cap


def _metal_picture(doc: Doc, ctx: dict, row, v: _View, x: float, top: float,
                   w: float) -> float:
    """What a shortcut through metal beside the nodule rests on: the slice of the densest
    voxel within its surroundings, plain | overlay, centred between it and the nodule
    (:func:`discovery.patterns.outcomes.shortcut_exemplar`); returns the height."""
    ex = shortcut_exemplar(row._asdict(), ctx["regions"])
    pic = render.exemplar_image(v.arrays, ex, half_size=_REGION_HALF_PX,
                                threshold=DISPLAY_THRESHOLD, attr_max=v.attr_max)
    doc.image(pic, x, top, w, aspect=v.aspect)
    h = image_height(pic, w, v.aspect)
    cap = doc.text(f"What the call rests on, plain and overlay: the densest voxel within "
                   f"{SURROUNDINGS_MM:g} mm of the mask ({fmt(row.surroundings_max_hu)} HU), "
                   "on its slice, centred between it and the nodule. No off-mask region holds "
                   "it (they begin beyond that margin); replacing the surroundings showed it.",
                   x=x, top=top + h + 0.03, size=8, width=w, advance=False, color=GRAY)
    return h + 0.03 + cap


#: Width (inches) of the metrics' names in each column of a nodule page (one line at 9 pt).
_METRIC_NAME_W = (1.9, 2.25)


def _metrics(doc: Doc, row) -> None:
    """The nodule's metrics in two columns of short names (each on one line), then the
    applicability verdict on a line of its own (its flags can be long)."""
    left = [
        ("probability of malignancy", fmt(row.probability)),
        ("predicted", "malignant" if row.predicted_label == 1 else "benign"),
        ("rests on it (P w/o it / control)",
         reliance_text(row.rests_on_nodule, row.p_without_nodule, row.p_without_control,
                       row.reliance_status)),
        ("rests on surroundings (P w/o)",
         surroundings_text(getattr(row, "rests_on_surroundings", None),
                           getattr(row, "p_without_surroundings", None))),
        ("flag score (drop in P)", fmt(row.flag_score)),
        ("off-mask regions / share",
         f"{int(row.n_offmask_regions or 0)} / {fmt(row.offmask_mass_share)}")]
    right = [
        ("nodule volume (mm³)", fmt(row.volume_mm3)),
        ("relevance mass in mask (RMA)", fmt(row.rma)),
        ("relevance rank accuracy (RRA)", fmt(row.rra)),
        ("pointing game hit", fmt(row.pointing_hit)),
        ("attribution peak to mask (mm)", fmt(row.peak_distance_mm)),
        (f"attribution within {AlignThresholds().near_margin_mm:g} mm of mask",
         fmt(row.near_mass))]
    applicability = ("applicability (ok, or why the model is out of its depth): "
                     + str(getattr(row, "applicability", "") or "–"))
    pitch = 0.175
    doc.need(text_height(1, 10) + 0.02 + pitch * max(len(left), len(right))
             + text_height(len(wrap(applicability, CONTENT_W, 9)), 9))
    doc.text("Metrics", size=10, weight="bold", color=INK)
    name_value_columns(doc, (left, right), name_widths=_METRIC_NAME_W, pitch=pitch)
    doc.text(applicability, color=GRAY)


#: Sizes of the key slice row tried, largest first, until a nodule's page fits on one page.
_KEY_SCALES = (1.0, 0.85, 0.7, 0.55)


def nodule_page(doc: Doc, ctx: dict, row, k: int, n: int) -> None:
    """The page of nodule *row* (the *k*-th of *n*): heading, key slice, whole slice and main
    off-mask region, metrics.  One page, as the index counts them: where the heading and
    the captions are long (a shortcut's explanation), the key slice row is drawn smaller
    until the metrics fit (:data:`_KEY_SCALES`)."""
    first = len(doc.pages)
    for scale in _KEY_SCALES:
        del doc.pages[first:]
        _draw_nodule_page(doc, ctx, row, k, n, scale)
        if len(doc.pages) == first + 1:
            return


def _draw_nodule_page(doc: Doc, ctx: dict, row, k: int, n: int, scale: float) -> None:
    v = _view(ctx, row)
    doc.new_page()
    _nodule_head(doc, ctx, row, k, n)
    _key_slice_row(doc, v, scale)
    small, top = (CONTENT_W - 0.3) / 3, doc.y  # row 2: the whole slice | the main region
    row_h = _whole_slice(doc, v, top, small)
    row_h = max(row_h, _region_picture(doc, ctx, row, v, MARGIN + small + 0.15, top,
                                       2 * small + 0.15))
    doc.y = top + row_h + 0.25
    _metrics(doc, row)
