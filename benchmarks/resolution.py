"""Maps fine enough for the job? The resolution study of issue 18.

Every map the product uses is Grad-CAM at ``layer3`` of the demo model: 8^3 cells of 6 mm over
a 48 mm ROI.  An off-mask region must be able to separate a 4 mm structure whose edge is 5 mm
from the nodule from the nodule itself.  This script measures, on the demo model and the
40-case demo cohort (``discovery sample --seed 7`` with ``sample_data/demo_model/cohort.json``,
the folder ``make demo`` writes), for each option of :data:`OPTIONS` (a method at a layer):

(a) **faithfulness**: the ROAD MoRF-LeRF gap (:func:`discovery.explain.faithfulness.road_curves`,
    removed voxels imputed, 20 steps, 20 HU noise, 2 random maps per nodule as the control)
    and its pass rule (:func:`discovery.explain.faithfulness_rule.faithfulness_verdict`) on the
    predicted-malignant nodules of the seeded sample ``discovery sanity --max-nodules 50``
    draws; and the **randomisation** Spearman of the fully randomised model (the cascade of
    ``discovery sanity``, :func:`discovery.batch.sanity._randomisation_rows`);
(b) **region precision** on the planted kinds: the cohort is analysed as ``discovery score
    --method M --layer L`` does (:func:`discovery.pipeline.analyze_scan`) and each off-mask
    region is matched to the planted structures within ``HALO_MM`` = 3 mm of it (the primary
    one: :func:`benchmarks.discovery._region_kinds`); with the share of planted tails and beads
    that any region reaches;
(c) **separation**: planted structures whose edge lies 5-8 mm from their nodule's mask (voxel
    centre distance), how many an off-mask region reaches, and how many of those regions are
    *separate* from the nodule: its above-threshold attention (half the nodule's peak, before
    the 5 mm margin is cut away) does not run on into the nodule mask; also, over all regions,
    the share that is merely the nodule's own blob cut off by the margin;
(d) the **verdict agreement**: balanced accuracy of ``verdict == "aligned"`` against
    ``rests_on_nodule`` on the predicted-malignant nodules
    (:func:`discovery.align.metrics.verdict_agreement`);
(e) the **cost** of one ROI's map in CPU ms (median over the ROIs of (a), one ROI per call,
    one thread).

The reliance on the nodule does not depend on the map, so it is computed once per case and
reused for every option (``analyze_scan`` would recompute the same numbers).  Occlusion at
stride 2 (2198 forward passes per ROI) runs on fewer nodules and cases (``--slow-nodules``,
``--slow-cases``); Integrated Gradients keeps its 32 steps and Occlusion its 8-voxel window:
nothing is changed in a method to make it cheaper, only the samples are smaller, and the
table says so.  Nothing is tuned per planted kind.

Usage: ``OMP_NUM_THREADS=1 python benchmarks/resolution.py [--cohort /tmp/demo18/cohort]
[--options a,b] [--json FILE]``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from scipy import ndimage  # noqa: E402

from benchmarks.discovery import _region_kinds  # noqa: E402
from data_tools.cases import discover_cases, load_case  # noqa: E402
from data_tools.deid import pseudonymous_id  # noqa: E402
from data_tools.nifti import load_nifti_mask  # noqa: E402
from discovery import pipeline  # noqa: E402
from discovery.align.metrics import verdict_agreement  # noqa: E402
from discovery.batch.sanity import (  # noqa: E402
    BASELINE_HU,
    NOISE_HU,
    _nodule_rois,
    _randomisation_rows,
)
from discovery.explain import methods as ex  # noqa: E402
from discovery.explain.faithfulness import road_curves  # noqa: E402
from discovery.explain.faithfulness_rule import faithfulness_verdict  # noqa: E402
from discovery.model.card import load_model  # noqa: E402
from discovery.model.rois import network_input  # noqa: E402
from discovery.pipeline import HALO_MM, ScoreSettings, analyze_scan  # noqa: E402

DEFAULT_COHORT = Path("/tmp/demo18/cohort")
#: the band of structure-to-nodule gaps (mm) the separation check looks at
NEAR_GAP_MM = (5.0, 8.0)
TRACKED = ("pleural_tail", "marker_bead", "granuloma")
#: gap bands (mm, [lo, hi)) of the per-kind separation counts in the JSON
GAP_BINS = {"<5": (0.0, 5.0), "5-8": (5.0, 8.0 + 1e-9), "8-12": (8.0 + 1e-9, 12.0),
            ">=12": (12.0, np.inf)}


@dataclass(frozen=True)
class Option:
    """One map: *method* at *layer* (None: the card's), Occlusion at *stride*; ``slow``
    options run on the smaller samples; ``rand_nodules`` / ``rand_draws`` size the
    randomisation test (0: not measured)."""

    name: str
    method: str
    layer: str | None = None
    stride: int | None = None
    slow: bool = False
    rand_nodules: int = 50
    rand_draws: int = 5


OPTIONS = (
    Option("gradcam@layer3 (baseline)", "gradcam"),
    Option("gradcam@layer2", "gradcam", "layer2"),
    Option("hirescam@layer2", "hirescam", "layer2"),
    Option("layercam@layer2", "layercam", "layer2"),
    Option("layercam-fused (layer2+layer3)", "layercam-fused"),
    Option("gradcam-refined (layer2+layer3)", "gradcam-refined"),
    Option("integrated_gradients", "integrated_gradients", rand_nodules=5, rand_draws=1),
    Option("occlusion stride 4", "occlusion", stride=4, rand_nodules=0),
    Option("occlusion stride 2", "occlusion", stride=2, slow=True, rand_nodules=0),
)


class _Clock:
    """CPU seconds (this process, all threads) spent per option."""

    def __init__(self):
        self.spent: dict[str, float] = {}

    def add(self, key: str, t0: float) -> None:
        self.spent[key] = self.spent.get(key, 0.0) + time.process_time() - t0


def _occlusion_stride(option: Option):
    """Set Occlusion's stride for *option* (a module constant; restored by the caller)."""
    if option.stride is not None:
        ex.OCCLUSION_STRIDE = option.stride


def load_cohort(cohort: Path, n_cases: int | None):
    """``[(case_id, volume, mask, planted Mask, {label: kind}, {planted label: nodule label})]``."""
    truth = {pseudonymous_id(c["case_dir"]): c
             for c in json.loads((cohort / "truth.json").read_text())["cases"]}
    out = []
    for spec in discover_cases(cohort)[:n_cases]:
        volume, mask = load_case(spec)
        rec = truth[spec.case_id]
        planted = load_nifti_mask(cohort / "_truth" / f"{rec['case_dir']}_planted.nii.gz")
        if planted.array.shape != volume.shape or not np.allclose(planted.affine, volume.affine,
                                                                  atol=1e-3):
            raise ValueError(f"planted labels of {rec['case_dir']} are not on the CT grid")
        kinds = {int(p["label"]): p["kind"] for p in rec["planted"]}
        owner = {int(p["label"]): int(p["nodule_label"]) for p in rec["planted"]}
        out.append((spec.case_id, volume, mask, planted.array, kinds, owner))
    return out


def _memo_reliance(cases):
    """Replace the pipeline's reliance by a per-case memo (it does not depend on the map)."""
    original, memo = pipeline.nodule_reliance, {}

    def cached(model, card, volume, mask, **kw):
        key = id(volume)
        if key not in memo:
            memo[key] = original(model, card, volume, mask, **kw)
        return memo[key]

    pipeline.nodule_reliance = cached
    return original


def _structure_gaps(planted_box: np.ndarray, own: np.ndarray, spacing) -> dict[int, float]:
    """Gap (mm, voxel centres) from each planted structure in the box to the nodule mask."""
    if not own.any():
        return {}
    dist = ndimage.distance_transform_edt(~own, sampling=spacing)
    return {int(lab): float(dist[planted_box == lab].min())
            for lab in np.unique(planted_box[planted_box > 0])}


def _nodule_regions(nod, planted: np.ndarray, kinds: dict, owner: dict, mask_arr, spacing, rel):
    """Region rows and near-structure rows of one nodule result."""
    box, labels = nod.box, nod.region_labels
    planted_box = planted[box]
    own = mask_arr[box] == nod.site.label
    hot = nod.attribution >= rel * float(nod.attribution.max()) if nod.attribution.max() > 0 \
        else np.zeros(own.shape, bool)
    comp, _ = ndimage.label(hot, structure=np.ones((3, 3, 3), bool))
    nodule_comps = set(np.unique(comp[own & hot]).tolist()) - {0}
    regions, reached = [], {}
    for r in nod.regions:
        inside = labels == r.region_index
        primary, _, labs = _region_kinds(inside, planted_box, kinds, spacing)
        attached = bool(set(np.unique(comp[inside]).tolist()) & nodule_comps)
        regions.append({"kind": primary, "attached": attached, "labels": labs})
        for lab in labs:
            reached[lab] = reached.get(lab, False) or not attached
    near = []
    for lab, gap in _structure_gaps(planted_box, own, spacing).items():
        if owner.get(lab) != nod.site.label:
            continue
        near.append({"label": lab, "kind": kinds[lab], "gap_mm": gap,
                     "reached": lab in reached, "separate": reached.get(lab, False)})
    return regions, near


def region_part(option: Option, cases, model, card, clock: _Clock) -> dict:
    """(b) region precision, (c) separation and (d) verdict agreement of one option."""
    settings = ScoreSettings(method=option.method, layer=option.layer)
    rel = settings.offmask.rel_threshold
    regions, near, verdicts, rests, predicted = [], [], [], [], []
    planted_total = {k: 0 for k in TRACKED}
    planted_reached = {k: 0 for k in TRACKED}
    for case_id, volume, mask, planted, kinds, owner in cases:
        t0 = time.process_time()
        result = analyze_scan(volume, mask, model, card, case_id=case_id, settings=settings)
        clock.add(option.name + " regions", t0)
        spacing = volume.spacing_mm
        touched = set()
        for nod in result.nodules:
            rows, near_rows = _nodule_regions(nod, planted, kinds, owner, mask.array, spacing,
                                              rel)
            regions += rows
            near += near_rows
            touched |= {lab for r in rows for lab in r["labels"]}
            verdicts.append(nod.alignment.verdict)
            rests.append(nod.reliance.rests_on_nodule)
            predicted.append(nod.predicted_label)
        for lab, kind in kinds.items():
            if kind in planted_total:
                planted_total[kind] += 1
                planted_reached[kind] += lab in touched
    agreement = verdict_agreement(verdicts, rests, predicted)
    lo, hi = NEAR_GAP_MM
    band = [r for r in near if lo <= r["gap_mm"] <= hi]
    bins = {}
    for name, (b0, b1) in GAP_BINS.items():
        sel = [r for r in near if b0 <= r["gap_mm"] < b1]
        bins[name] = {k: {"n": sum(r["kind"] == k for r in sel),
                          "reached": sum(r["kind"] == k and r["reached"] for r in sel),
                          "separate": sum(r["kind"] == k and r["separate"] for r in sel)}
                      for k in TRACKED}
    return {
        "cases": len(cases), "nodules": len(verdicts), "regions": len(regions),
        "regions_by_kind": {k: sum(r["kind"] == k for r in regions)
                            for k in (*TRACKED, "none")},
        "regions_attached_to_nodule_blob": sum(r["attached"] for r in regions),
        "planted": planted_total, "planted_reached": planted_reached,
        "near_structures": len(band),
        "near_by_kind": {k: sum(r["kind"] == k for r in band) for k in TRACKED},
        "near_reached": sum(r["reached"] for r in band),
        "near_separate": sum(r["separate"] for r in band),
        "by_gap": bins,
        "verdicts": {v: verdicts.count(v) for v in sorted(set(verdicts))},
        "agreement": {"balanced_accuracy": agreement.balanced_accuracy,
                      "sensitivity": agreement.sensitivity,
                      "specificity": agreement.specificity, "n": agreement.n,
                      "n_rests": agreement.n_rests},
    }


def sample_rois(cases, card, *, max_nodules: int = 50, seed: int = 0):
    """The nodules ``discovery sanity --max-nodules 50 --seed 0`` checks on this cohort (the
    same seeded draw over the nodules in case order): keys and network inputs."""
    pairs = [pair for case_id, volume, mask, *_ in cases
             for pair in _nodule_rois(volume, mask, card, case_id)]
    if len(pairs) > max_nodules:
        keep = np.sort(np.random.default_rng(seed).choice(len(pairs), max_nodules, replace=False))
        pairs = [pairs[i] for i in keep]
    return [k for k, _ in pairs], torch.from_numpy(np.stack([r for _, r in pairs]).astype(np.float32))


def _maps_one_by_one(model, rois, option: Option):
    """Raw maps (as ``discovery sanity`` ranks them: signed for IG / Occlusion), P(malignant)
    and the CPU ms of each ROI's call (one ROI per call)."""
    maps, probs, cost, info = [], [], [], None
    for i in range(len(rois)):
        t0 = time.process_time()
        p, a, info = ex.predict_and_explain(model, rois[i:i + 1], method=option.method,
                                            layer=option.layer, target=1)
        cost.append((time.process_time() - t0) * 1000.0)
        maps.append(a)
        probs.append(float(p[0, 1]))
    return np.concatenate(maps), np.array(probs), np.array(cost), info


def faithfulness_part(option: Option, model, card, rois, malignant, road_random, clock,
                      *, limit: int | None, seed: int = 0) -> dict:
    """(a) ROAD gap with its verdict, randomisation Spearman, and (e) cost per ROI."""
    idx = np.flatnonzero(malignant)[:limit]
    x = rois[idx]
    t0 = time.process_time()
    maps, probs, cost, info = _maps_one_by_one(model, x, option)
    base = network_input(np.array(BASELINE_HU), card)
    noise = [NOISE_HU / (hi - lo) for lo, hi in card.windows]
    # the random control depends only on the ROIs (per ROI index) and the seed: measured once
    # and shared, as ``discovery sanity`` does; a shorter sample uses its first rows
    known = road_random.get("gap")
    first = known is None or len(known) < len(idx)
    road = road_curves(model, x, maps, fill=base.ravel().tolist(), noise=noise, target=1,
                       steps=20, n_random=2 if first else 0, seed=seed)
    if first:
        road_random["gap"] = road.gap_random
    gap_random = road_random["gap"][:len(idx)]
    verdict = faithfulness_verdict(road.gap, gap_random, (probs >= card.threshold).astype(int))
    clock.add(option.name + " faithfulness", t0)
    out = {"layer": info.layer, "native_shape": list(info.native_shape),
           "road_nodules": len(idx), "gap_median": float(np.median(road.gap)),
           "gap_min": float(np.min(road.gap)), "gap_p10": float(np.percentile(road.gap, 10)),
           "gap_random_median": float(np.median(gap_random)),
           "gap_positive": int((road.gap > 0).sum()),
           "morf_median": float(np.median(road.morf_auc)),
           "lerf_median": float(np.median(road.lerf_auc)),
           "verdict": verdict.status, "verdict_sentence": verdict.sentence,
           "cost_ms_median": float(np.median(cost)), "cost_rois": len(cost),
           "spearman_full": None, "rand_nodules": 0, "rand_draws": 0}
    if option.rand_nodules:
        t0 = time.process_time()
        rows = _randomisation_rows(model, rois[:option.rand_nodules], option.method,
                                   option.rand_draws, seed, None, layer=option.layer)
        clock.add(option.name + " randomisation", t0)
        out.update(spearman_full=float(rows[-1]["mean_spearman"]),
                   spearman_module=rows[-1]["module"], rand_nodules=min(option.rand_nodules,
                                                                        len(rois)),
                   rand_draws=option.rand_draws, rand_constant=int(rows[-1]["n_constant"]))
    return out


def run(args) -> dict:
    torch.set_num_threads(1)
    t_start = time.perf_counter()
    model, card = load_model(args.model)
    cases = load_cohort(Path(args.cohort), args.cases)
    original_reliance = _memo_reliance(cases)
    keys, rois = sample_rois(cases, card, max_nodules=args.max_nodules, seed=0)
    with torch.no_grad():
        p1 = torch.softmax(model(rois), dim=1)[:, 1].numpy()
    malignant = p1 >= card.threshold
    wanted = set(args.options.split(",")) if args.options else None
    clock, road_random, rows = _Clock(), {}, []
    stride = ex.OCCLUSION_STRIDE
    try:
        for k, option in enumerate(OPTIONS):
            if wanted is not None and str(k) not in wanted and option.name not in wanted:
                continue
            _occlusion_stride(option)
            try:
                row = {"option": option.name, "method": option.method,
                       "layer_option": option.layer, "stride": option.stride}
                row.update(faithfulness_part(
                    option, model, card, rois, malignant, road_random, clock,
                    limit=args.slow_nodules if option.slow else None))
                row.update(region_part(option, cases[:args.slow_cases] if option.slow else cases,
                                       model, card, clock))
            finally:
                ex.OCCLUSION_STRIDE = stride
            row["cpu_s"] = {k2.split(" ")[-1]: round(v, 1) for k2, v in clock.spent.items()
                            if k2.startswith(option.name + " ")}
            rows.append(row)
            print(f"[{time.perf_counter() - t_start:7.0f} s] {option.name}: "
                  f"{json.dumps(row['cpu_s'])}", file=sys.stderr, flush=True)
            if args.json:
                Path(args.json).write_text(json.dumps(_result(rows, args, keys, malignant),
                                                      indent=1, default=float))
    finally:
        pipeline.nodule_reliance = original_reliance
    out = _result(rows, args, keys, malignant)
    out["wall_s"] = time.perf_counter() - t_start
    out["cpu_s"] = time.process_time()
    return out


def _result(rows, args, keys, malignant) -> dict:
    return {"cohort": str(args.cohort), "cases": args.cases, "max_nodules": args.max_nodules,
            "sampled_nodules": len(keys), "predicted_malignant": int(malignant.sum()),
            "slow_nodules": args.slow_nodules, "slow_cases": args.slow_cases,
            "near_gap_mm": list(NEAR_GAP_MM), "halo_mm": HALO_MM, "threads": 1, "rows": rows}


def _f(v, d=2):
    return "–" if v is None or (isinstance(v, float) and not np.isfinite(v)) else f"{v:.{d}f}"


def markdown(r: dict) -> str:
    head = ("| option | cells | ROAD gap, median (random) | gap > 0 | faithfulness | Spearman, "
            "fully randomised | regions: tail / bead / granuloma / nothing | planted reached: "
            "tails / beads | regions that are the nodule's blob | near (5–8 mm): reached / "
            "separate | verdict agreement (BA) | CPU ms / ROI |")
    lines = [head, "|" + "---|" * 12]
    for row in r["rows"]:
        cells = "×".join(str(v) for v in row["native_shape"][:1]) + "³"
        rk, pl, pr = row["regions_by_kind"], row["planted"], row["planted_reached"]
        sp = (f"{_f(row['spearman_full'])} ({row['rand_nodules']} × {row['rand_draws']})"
              if row["spearman_full"] is not None else "not measured")
        lines.append(
            f"| {row['option']} | {cells} | {_f(row['gap_median'], 3)} "
            f"({_f(row['gap_random_median'], 3)}) | {row['gap_positive']}/{row['road_nodules']} "
            f"| {row['verdict']} | {sp} | {row['regions']}: {rk['pleural_tail']} / "
            f"{rk['marker_bead']} / {rk['granuloma']} / {rk['none']} "
            f"| {pr['pleural_tail']}/{pl['pleural_tail']} / {pr['marker_bead']}/{pl['marker_bead']} "
            f"| {row['regions_attached_to_nodule_blob']} | {row['near_structures']}: "
            f"{row['near_reached']} / {row['near_separate']} "
            f"| {_f(row['agreement']['balanced_accuracy'])} (n {row['agreement']['n']}) "
            f"| {row['cost_ms_median']:.0f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cohort", default=str(DEFAULT_COHORT))
    ap.add_argument("--model", default=None, help="model folder (default: the demo model)")
    ap.add_argument("--cases", type=int, default=None, help="first N cases only (default all)")
    ap.add_argument("--max-nodules", type=int, default=50)
    ap.add_argument("--slow-nodules", type=int, default=8,
                    help="predicted-malignant nodules for the slow options' ROAD (default 8)")
    ap.add_argument("--slow-cases", type=int, default=4,
                    help="cases for the slow options' regions (default 4)")
    ap.add_argument("--options", default=None,
                    help="comma-separated option indices or names (default all)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    r = run(args)
    print(markdown(r))
    print(f"\n{r['sampled_nodules']} sampled nodules, {r['predicted_malignant']} predicted "
          f"malignant; {r['wall_s']:.0f} s wall, {r['cpu_s']:.0f} s CPU")
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=1, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
