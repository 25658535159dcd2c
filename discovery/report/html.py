"""The findings report as one self-contained HTML file (images inlined, no external URL).

The HTML report has a cohort summary, one section per nodule (key axial slice in lung window:
image with the mask contour, the same slice with the attribution overlay (the method the
results were scored with), a colour bar in its raw units, the metrics and the verdict), then the pattern clusters with exemplar crops
from different patients.  Only pseudonymous case ids appear.
"""

from __future__ import annotations

import base64
import html
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from discovery.align.metrics import AlignThresholds
from discovery.model.reliance import reliance_text, surroundings_text
from discovery.model.rois import nodule_label
from discovery.patterns.outcomes import outcome_reason, rules_summary
from discovery.report import render
from discovery.report.data import ReportData
from discovery.report.style import (
    CROP_HALF_PX,
    DISPLAY_THRESHOLD,
    OUTCOME_COLOURS,
    VERDICT_COLOURS,
    CaseArrayCache,
    applicability_warning,
    fmt,
    pct,
    sentence,
    stability_in_words,
    verdicts_in_words,
)
from discovery.explain.catalog import map_label, map_title
from discovery.explain.faithfulness_rule import RULE
from discovery.store.tables import sanity_summary

__all__ = ["build_html"]

_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:24px auto;max-width:1180px;color:#1a202c}
h1{font-size:1.6em;margin-bottom:0} h2{border-bottom:2px solid #2d3748;padding-bottom:4px;margin-top:2em}
.sub{color:#4a5568;margin-top:4px} table{border-collapse:collapse;font-size:0.9em}
td,th{border:1px solid #cbd5e0;padding:3px 8px;text-align:right} th{background:#edf2f7}
td.l,th.l{text-align:left} .nodule{border:1px solid #cbd5e0;border-radius:6px;padding:10px 14px;margin:14px 0;page-break-inside:avoid}
.imgs{display:flex;gap:10px;align-items:flex-start;flex-wrap:wrap} .imgs figure{margin:0;text-align:center;font-size:0.8em;color:#4a5568}
.imgs img{image-rendering:pixelated;border:1px solid #2d3748} .badge{color:#fff;border-radius:4px;padding:2px 8px;font-weight:600}
.note{background:#f7fafc;border-left:4px solid #a0aec0;padding:6px 10px;font-size:0.9em}
.warn{background:#fff5f5;border-left:4px solid #c53030;padding:6px 10px;font-size:0.95em}
.finding{background:#ebf8ff;border-left:4px solid #2b6cb0;padding:6px 10px;font-size:0.95em}
.outcomes{display:grid;grid-template-columns:repeat(3,1fr);gap:12px;page-break-inside:avoid}
.outcome{border:1px solid #cbd5e0;border-top:6px solid #4a5568;border-radius:6px;padding:8px 12px;font-size:0.9em}
.outcome h3{margin:4px 0 6px 0;font-size:1.05em} .outcome .n{font-size:1.8em;font-weight:700;margin:0}
.outcome figure{margin:4px 0;font-size:0.8em;color:#4a5568;text-align:center} .outcome img{image-rendering:pixelated;border:1px solid #2d3748;max-width:100%}
"""


def _img(rgb: np.ndarray, *, width: int | None = None, alt: str = "") -> str:
    data = base64.b64encode(render.to_png_bytes(rgb)).decode("ascii")
    w = f' width="{width}"' if width else ""
    return f'<img src="data:image/png;base64,{data}"{w} alt="{html.escape(alt)}">'


def _badge(verdict: str) -> str:
    colour = VERDICT_COLOURS.get(verdict, "#4a5568")
    return f'<span class="badge" style="background:{colour}">{html.escape(verdict or "-")}</span>'


def _zoom(rgb: np.ndarray, factor: int = 3) -> np.ndarray:
    return np.repeat(np.repeat(rgb, factor, axis=0), factor, axis=1)


def _nodule_section(row: pd.Series, arrays: dict[str, np.ndarray], title: str) -> str:
    label = nodule_label(row["nodule_id"])
    ct, mask, attr, regions = arrays["ct"], arrays["mask"], arrays["attribution"], arrays["region_map"]
    z, rule = render.key_slice_choice(mask, label, attribution=attr)
    center = (float(row["center_y"]), float(row["center_x"]))
    attr_max = float(attr.max()) or 1.0
    own = (mask[z] == label)
    crop = lambda a: render.crop_around(a, center, CROP_HALF_PX)  # noqa: E731
    plain = render.overlay_slice(crop(ct[z]).astype(np.float32), mask2d=crop(own), window="lung")
    over = render.overlay_slice(crop(ct[z]).astype(np.float32), attribution2d=crop(attr[z]),
                                mask2d=crop(own), regions2d=crop(regions[z]), window="lung",
                                opacity=0.5, attr_max=attr_max, threshold=DISPLAY_THRESHOLD)
    full = render.overlay_slice(ct[z].astype(np.float32), attribution2d=attr[z], mask2d=mask[z] > 0,
                                window="lung", opacity=0.45, attr_max=attr_max, threshold=DISPLAY_THRESHOLD)
    bar = render.colorbar_image(attr_max=attr_max, height=3 * 2 * CROP_HALF_PX, width=18)
    metrics = [
        ("outcome, and why", html.escape(outcome_reason(row))),
        ("probability of malignancy", fmt(row["probability"])),
        ("predicted", "malignant" if row["predicted_label"] == 1 else "benign"),
        ("rests on the nodule (P without it / without a control)",
         reliance_text(row["rests_on_nodule"], row["p_without_nodule"],
                       row["p_without_control"], row["reliance_status"])),
        ("rests on its surroundings, within 5 mm (P without them; their median density)",
         surroundings_text(row.get("rests_on_surroundings"), row.get("p_without_surroundings"),
                           row.get("surroundings_median_hu"))),
        ("relevance mass in mask (RMA)", fmt(row["rma"])),
        ("relevance rank accuracy (RRA)", fmt(row["rra"])),
        ("pointing game hit", fmt(row["pointing_hit"])),
        ("attribution peak to mask (mm)", fmt(row["peak_distance_mm"])),
        (f"attribution within {AlignThresholds().near_margin_mm:g} mm of mask",
         fmt(row["near_mass"])),
        ("off-mask regions / their share", f"{int(row['n_offmask_regions'] or 0)} / {fmt(row['offmask_mass_share'])}"),
        ("nodule volume (mm³)", fmt(row["volume_mm3"])),
    ]
    table = "".join(f'<tr><th class="l">{k}</th><td>{v}</td></tr>' for k, v in metrics)
    warning = applicability_warning(row.get("applicability"), row.get("applicability_detail"))
    caution = f'<p class="warn">{html.escape(warning)}</p>' if warning else ""
    return f"""
<div class="nodule"><h3>{html.escape(row['case_id'])} · {html.escape(row['nodule_id'])} {_badge(row['verdict'])}</h3>{caution}
<div class="imgs">
<figure>{_img(_zoom(plain), alt='lung window with mask contour')}<figcaption>axial slice {z + 1} ({html.escape(rule)}), lung window (W1500/L-600); green: mask contour</figcaption></figure>
<figure>{_img(_zoom(over), alt=f'{title} overlay')}<figcaption>{html.escape(title)} overlay; cyan: off-mask regions</figcaption></figure>
<figure>{_img(bar, alt='colour bar')}<figcaption>{fmt(attr_max)}<br>…<br>0<br>(raw {html.escape(title)})</figcaption></figure>
<figure>{_img(full, width=200, alt='whole slice')}<figcaption>whole slice</figcaption></figure>
<table>{table}</table></div></div>"""


def _truth(c) -> str:
    if not np.isfinite(getattr(c, "p_truth", np.nan)):
        return ""
    return (f"; truly malignant {pct(c.share_truth_malignant)} vs {pct(c.pool_truth_malignant)}"
            f" (p = {fmt(c.p_truth)})")


def _effect(c) -> str:
    if not np.isfinite(getattr(c, "effect_mean", np.nan)):
        return "not run (needs the model; run <code>discovery score</code>)."
    verdict = ("<b>the model relies on this pattern</b>" if bool(c.relied_upon)
               else "no measurable reliance")
    return (f"replacing the regions with local lung parenchyma changes P(malignant) by "
            f"{c.effect_mean:+.3f} on average over {int(c.effect_n)} nodules (95 % bootstrap "
            f"interval {fmt(c.effect_ci_low)} to {fmt(c.effect_ci_high)}): {verdict}.")


def _cluster_section(clusters: pd.DataFrame, regions: pd.DataFrame,
                     arrays_of: CaseArrayCache) -> str:
    if clusters.empty:
        return "<p>No pattern clusters: too few off-mask regions, or none that group together.</p>"
    parts = []
    by_key = regions.set_index("region_key")
    for c in clusters.itertuples():
        figs = []
        for key in c.exemplars:
            if key not in by_key.index:
                continue
            reg = by_key.loc[key]
            rgb = render.thumbnail(arrays_of(reg["case_id"]), z=reg["centroid_z"],
                                   center_yx=(reg["centroid_y"], reg["centroid_x"]),
                                   region=int(reg["case_region"]), threshold=DISPLAY_THRESHOLD)
            figs.append(f"<figure>{_img(_zoom(rgb, 3), alt=key)}<figcaption>{html.escape(reg['case_id'])}</figcaption></figure>")
        parts.append(f"""
<div class="nodule"><h3>Cluster {int(c.cluster)}: {html.escape(str(c.description))}</h3>
<p>{int(c.n_regions)} regions from {int(c.n_cases)} patients ({int(c.n_nodules)} nodules).
Predicted malignant: {pct(c.share_predicted_malignant)} of its nodules vs
{pct(c.pool_predicted_malignant)} in the cohort (enrichment {fmt(c.enrichment_predicted)}×,
permutation p = {fmt(c.p_predicted)}, q = {fmt(c.q_predicted)}){_truth(c)}.
{sentence(stability_in_words(getattr(c, "stability", None)))}</p>
<p><b>Causal check:</b> {_effect(c)}</p>
<div class="imgs">{''.join(figs)}</div></div>""")
    return "".join(parts)


def _outcomes_section(data: ReportData) -> str:
    cells = []
    for p in data.panels:
        figs = []
        for ex in p.exemplars:
            rgb = render.exemplar_image(data.arrays(ex.case_id), ex, threshold=DISPLAY_THRESHOLD)
            figs.append(f"<figure>{_img(_zoom(rgb, 2), alt=ex.caption)}"
                        f"<figcaption>{html.escape(ex.caption)}</figcaption></figure>")
        colour = OUTCOME_COLOURS.get(p.outcome, "#4a5568")
        cells.append(f"""<div class="outcome" style="border-top-color:{colour}">
<h3>{html.escape(p.title)}</h3><p class="n" style="color:{colour}">{p.n_nodules} nodule{'s' if p.n_nodules != 1 else ''}</p>
<p>{html.escape(p.lead)}</p>{''.join(figs)}</div>""")
    return f"""<p class="note">Each scored nodule is read by the rules in <code>discovery/patterns/outcomes.py</code>.
{html.escape(rules_summary())} Pictures: axial crops in lung window, plain and with the
{html.escape(map_title(data.meta.get("method")))} overlay (from {DISPLAY_THRESHOLD:.0%} of the case maximum); green the nodule mask, cyan the off-mask region; shortcut
pictures are on the slice of the densest voxel next to the region (or, for metal beside the
nodule, within its surroundings), between nodule and artifact.
The heat map exists only inside each nodule's 48 mm analysis box, so it can end in a straight edge.</p>
<div class="outcomes">{''.join(cells)}</div>"""


def _faithfulness_warning(data: ReportData) -> str:
    """The warnings above the three outcomes (:attr:`ReportData.outcome_checks`), the
    verdicts' agreement as a plain note when it is not one of them, then the reliance on the
    nodules' surroundings (:attr:`ReportData.surroundings`), highlighted when a pattern."""
    warnings, note = data.outcome_checks
    out = "".join(f'<p class="warn"><b>Warning.</b> {html.escape(t)}</p>' for t in warnings)
    out += f'<p class="note">{html.escape(note)}</p>' if note else ""
    around, notable = data.surroundings
    if notable:
        return out + (f'<p class="finding"><b>The nodules\' surroundings.</b> '
                      f'{html.escape(around)}</p>')
    return out + f'<p class="note">{html.escape(around)}</p>'



def _sanity_section(randomization: pd.DataFrame, perturbation: pd.DataFrame) -> str:
    if not len(randomization) and not len(perturbation):
        return ("<p>Not run for these results. <code>discovery sanity RESULTS</code> runs the "
                "randomisation test and the faithfulness measures and stores them here.</p>")

    table = sanity_summary(randomization, perturbation)
    def num(v) -> str:                 # areas and gaps to 3 decimals (NaN shows as missing)
        return fmt(round(float(v), 3)) if pd.notna(v) else fmt(v)

    rows = "".join(
        f"<tr><th class='l'>{html.escape(map_label(r.method, r.layer))}</th><td>{'not run' if pd.isna(r.spearman_fully_randomised) else fmt(r.spearman_fully_randomised)}</td>"
        f"<td>{r.n} ({r.n_malignant})</td><td>{num(r.deletion_auc)} / {num(r.deletion_auc_random)}</td>"
        f"<td>{pct(r.beats_random, 2)} ({pct(r.beats_random_malignant, 2)})</td>"
        f"<td>{num(r.insertion_auc)} / {num(r.insertion_auc_random)}</td><td>{num(r.fill_gap)}</td>"
        f"<td>{num(r.road_morf_auc)} / {num(r.road_lerf_auc)}</td><td>{num(r.road_gap)}</td>"
        f"<td>{num(r.road_gap_random)}</td><td>{pct(r.road_gap_positive, 2)}</td>"
        f"<td class='l'><b>{html.escape(r.status)}</b></td></tr>"
        for r in table.itertuples())
    verdicts = "".join(f"<li><b>{html.escape(map_label(r.method, r.layer))}</b> "
                       f"{html.escape(r.verdict)}.</li>"
                       for r in table.itertuples())
    steps = ""
    for method, grp in randomization.groupby("method", sort=False):
        cells = " → ".join(f"{html.escape(str(g.module))} {fmt(g.mean_spearman)}"
                           for g in grp.sort_values("step").itertuples())
        steps += f"<li>{html.escape(str(method))}: {cells}</li>"
    return f"""<p class="note"><b>Do the maps point at what the model uses?</b> The rule: {html.escape(RULE)}.
The gap is measured ROAD's way (Rong et al. 2022): voxels are removed in the map's order, most relevant
first (MoRF) and least relevant first (LeRF), each removed voxel imputed from its neighbours plus a little
noise, and the gap is the area between the two curves of P(malignant) (positive = faithful; a random map
gives about 0). The old measure, kept for comparison, sets removed voxels to lung parenchyma (-850 HU) and
compares the map's deletion area with random voxel orders; it can mislead, because scattered single-voxel
holes are themselves a signal to a CNN (on the demo model speckle alone lowers P(malignant): docs/method/faithfulness.md), so a random order tends to look like a good deletion and a bad insertion whatever the
map. Its own gap (insertion minus deletion area, which is LeRF minus MoRF with that eraser) is shown beside
the new one: where the two disagree, the eraser, not the map, is deciding.
Randomisation: Spearman rank correlation between the maps of the trained model and of the model whose
weights were re-drawn module by module from the output end (a map that depends on the weights falls toward 0).</p>
<ul>{verdicts}</ul>
<table><tr><th class="l" rowspan="2">method</th><th rowspan="2">Spearman, fully randomised</th><th rowspan="2">nodules (predicted malignant)</th>
<th colspan="4">old: constant eraser (-850 HU)</th><th colspan="5">new: imputation (ROAD), predicted-malignant nodules</th></tr>
<tr><th>deletion AUC / random</th><th>beating random (malignant)</th><th>insertion AUC / random</th><th>gap, malignant</th>
<th>MoRF / LeRF AUC</th><th>gap (median)</th><th>random maps' gap</th><th>gap &gt; 0</th><th class="l">verdict</th></tr>{rows}</table>
{f'<p>Cascading randomisation, mean Spearman after each module:</p><ul>{steps}</ul>' if steps else ''}"""


def build_html(results_dir: str | Path) -> str:
    """The findings report as one HTML string (every image inlined as a data URI).

    Parameters
    ----------
    results_dir : str or Path
        A results folder written by ``discovery score``.

    Returns
    -------
    str
        The whole document (``discovery.report.write.write_report`` puts it in a file).
    """
    data = ReportData(results_dir)
    findings, scored, meta = data.findings, data.scored, data.meta
    title = map_title(meta.get("method"))
    counts = findings["verdict"].replace("", "failed").value_counts()
    summary_rows = "".join(f"<tr><th class='l'>{html.escape(str(k))}</th><td>{int(v)}</td></tr>"
                           for k, v in counts.items())
    failed = findings[findings["status"] == "failed"]
    failed_html = "".join(f"<li>{html.escape(r.case_id)}: {html.escape(r.error)}</li>"
                          for r in failed.itertuples())
    nodules_html = [
        _nodule_section(row, data.arrays(row["case_id"]), title)
        for _, row in data.outcomes.sort_values(["verdict", "probability"],
                                                ascending=[True, False]).iterrows()]
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    sha = str(meta.get("model_sha256", ""))[:12]
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Nodule discovery findings</title>
<style>{_CSS}</style></head><body>
<h1>Nodule discovery findings</h1>
<p class="sub">{findings['case_id'].nunique()} cases, {len(scored)} nodules scored · model weights {sha}… ·
{html.escape(map_title(meta.get('method'), meta.get('gradcam_layer')))} · generated {now}</p>
<p class="note">Case ids are pseudonymous. {html.escape(title)} values are raw magnitudes (after ReLU), shown on one
scale per case (0 to the case maximum); the overlay shows values of at least {DISPLAY_THRESHOLD:.0%} of that maximum. A verdict says where the model's attention lies relative to the
annotated nodule: {html.escape(verdicts_in_words(meta))}; beside it, whether the prediction rests on the nodule
(P(malignant) without it / without a volume-matched control). Off-mask attention
is a question for a reviewer, not automatically an error.</p>
<h2>What the explanations say: three outcomes</h2>
{_faithfulness_warning(data)}{_outcomes_section(data)}
<h2>Summary</h2><table><tr><th class="l">verdict</th><th>nodules</th></tr>{summary_rows}</table>
{f'<h3>Cases that could not be scored</h3><ul>{failed_html}</ul>' if failed_html else ''}
<h2>Nodules</h2>{''.join(nodules_html) or '<p>No nodules were scored.</p>'}
<h2>Off-mask attention patterns</h2>{_cluster_section(data.clusters, data.regions, data.arrays)}
<h2>Are the maps faithful? (sanity checks)</h2>{_sanity_section(data.randomization, data.perturbation)}
</body></html>"""
