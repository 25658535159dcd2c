"""Which of the three outcomes does a model give on a demo cohort, and why (not)?

Scores a synthetic cohort (``discovery sample``'s distribution, or the one ``--config``
describes) with a model, exactly as ``discovery score`` does, then measures against the
truth of the planted structures what the overview's three panels depend on:

* per planted kind (``marker_bead``, ``pleural_tail``, ``satellite_nodule``, ``granuloma``):
  the **oracle** Δp (each true structure replaced by parenchyma, its nodule re-scored; mean
  change of P(malignant), all and malignant nodules only: does the model rely on it?), the
  **reach** (Grad-CAM's largest value on the structure divided by the peak of its nodule's
  map, median and the share of structures at >= 0.5, the region threshold: does the map
  point at it?) and the regions **touching** it (a structure of that kind within 3 mm);
* the clusters with their reading (artifact, candidate sign, unstable, incidental), causal effect and
  enrichment; the outcome and verdict counts.

This is the measurement behind the demo-model variants table of docs/benchmarks/discovery.md (issue 4's
third panel).

Usage: ``python benchmarks/demo_outcomes.py [--model DIR] [--config JSON] [--cases 40]
[--seed 7] [--workers 2] [--work DIR] [--json FILE]``; ``--config`` holds
:class:`data_tools.synthetic.SyntheticConfig` fields that replace the defaults, e.g.
``{"p_satellite_malignant": 0.8, "p_satellite_benign": 0.03}`` (default: the demo cohort's,
``sample_data/demo_model/cohort.json``; ``{}`` for the plain defaults).  The cohort and results
are kept in ``--work`` (default ``benchmarks/.cache/demo_outcomes/<settings hash>``) and
reused when present.  About 2 minutes for 40 cases on 2 cores, plus 2 minutes for the oracle.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from data_tools.deid import pseudonymous_id  # noqa: E402
from data_tools.synthetic import SyntheticConfig, generate_case, generate_cohort  # noqa: E402
from data_tools.volume import Mask, Volume  # noqa: E402
from discovery.align.metrics import grow_mm  # noqa: E402
from discovery.align.metrics import AlignThresholds  # noqa: E402
from discovery.batch.score import score_folder  # noqa: E402
from discovery.pipeline import ScoreSettings  # noqa: E402
from discovery.patterns.causal import rescore_without  # noqa: E402
from discovery.patterns.clustering import (STRUCTURE_FEATURES, FEATURE_COLUMNS,  # noqa: E402
                                           PatternSettings)
from discovery.model.card import load_model  # noqa: E402
from discovery.patterns.outcomes import cluster_readings, nodule_outcomes  # noqa: E402
from discovery.pipeline import HALO_MM  # noqa: E402
from discovery.model.rois import nodule_sites  # noqa: E402
from discovery.store.tables import ResultsStore, load_case_arrays  # noqa: E402

KINDS = ("marker_bead", "pleural_tail", "satellite_nodule", "granuloma")
#: the box around a nodule's mask in which its map's peak is looked for (voxels)
PEAK_BOX_VOX = 20


#: the demo model's cohort settings (``make demo`` samples with them)
DEMO_COHORT = Path(__file__).resolve().parents[1] / "sample_data" / "demo_model" / "cohort.json"


def _structures(cohort: Path, results: Path, cfg: SyntheticConfig, seed: int, model, card,
                regions: pd.DataFrame):
    """Per planted structure (oracle Δp, reach) and per region (kinds within HALO_MM)."""
    truth = json.loads((cohort / "truth.json").read_text())
    rows, touching = [], {}
    for index, case in enumerate(truth["cases"]):
        cid = pseudonymous_id(case["case_dir"])
        c = generate_case(seed, config=cfg, index=index)
        volume = Volume(c.hu, c.affine)
        sites = {s.label: s for s in nodule_sites(Mask(c.mask, c.affine))}
        arrays = load_case_arrays(results, cid)
        attribution = np.asarray(arrays["attribution"])
        spacing = tuple(np.linalg.norm(np.asarray(arrays["affine"])[:3, :3], axis=0))
        region_map = np.asarray(arrays["region_map"])
        kind_of = {it["label"]: it["kind"] for it in c.planted_items}
        for _, r in regions[regions["case_id"] == cid].iterrows():
            near = c.planted[grow_mm(region_map == int(r["case_region"]), HALO_MM, spacing)]
            touching[r["region_key"]] = sorted({kind_of[int(v)] for v in np.unique(near[near > 0])})
        protect = c.mask > 0
        for it in c.planted_items:
            label = it["nodule_label"]
            nz = np.argwhere(c.mask == label)
            box = tuple(slice(max(int(a) - PEAK_BOX_VOX, 0), int(b) + PEAK_BOX_VOX + 1)
                        for a, b in zip(nz.min(0), nz.max(0)))
            peak = float(attribution[box].max())
            structure = c.planted == it["label"]
            on_it = float(attribution[structure].max())
            p_before, p_after = rescore_without(model, card, volume, sites[label].center_zyx,
                                                structure, protect=protect, seed=seed)
            rows.append({"kind": it["kind"], "case_id": cid, "nodule_id": f"n{label}",
                         "malignant": int(next(n["malignant"] for n in c.nodules
                                               if n["label"] == label)),
                         "delta_p": p_after - p_before,
                         "reach": on_it / peak if peak > 0 else float("nan")})
    return pd.DataFrame(rows), touching


def _settings(args) -> ScoreSettings:
    """The analysis settings: the map (--method, --layer) and the verdict thresholds."""
    align = AlignThresholds()
    if args.thresholds:
        tol, margin, aligned, offmask = (float(v) for v in args.thresholds.split(","))
        align = AlignThresholds(pointing_tolerance_mm=tol, near_margin_mm=margin,
                                aligned_near_mass=aligned, offmask_near_mass=offmask)
    return ScoreSettings(method=args.method, layer=args.layer, align=align)


def run(args) -> dict:
    t0 = time.perf_counter()
    cfg = SyntheticConfig.read(args.config)
    key = hashlib.sha256(json.dumps([cfg.to_dict(), args.seed, args.cases, str(args.model or "demo")],
                                    sort_keys=True).encode()).hexdigest()[:12]
    settings = _settings(args)
    if settings != ScoreSettings():
        key += "-" + hashlib.sha256(repr(settings).encode()).hexdigest()[:8]
    work = Path(args.work) if args.work else (Path(__file__).resolve().parent / ".cache"
                                              / "demo_outcomes" / key)
    cohort, results = work / "cohort", work / "results"
    if not (cohort / "truth.json").is_file():
        generate_cohort(cohort, n_cases=args.cases, seed=args.seed, config=cfg, overwrite=True)
    patterns = PatternSettings(method=args.cluster_method, features=tuple(
        STRUCTURE_FEATURES if args.cluster_features == "structure" else FEATURE_COLUMNS),
        min_structure_mm3=args.min_structure_mm3)
    summary = score_folder(cohort, results, model_dir=args.model, labels=cohort / "truth.csv",
                           workers=args.workers, settings=settings, pattern_settings=patterns)
    store = ResultsStore(results, create=False)
    try:
        findings, clusters, regions = store.findings(), store.clusters(), store.regions()
    finally:
        store.close()
    model, card = load_model(args.model)
    structures, touching = _structures(cohort, results, cfg, args.seed, model, card, regions)
    clusters = clusters.assign(reading=cluster_readings(clusters),
                               exemplars_on=[_exemplar_kinds(keys, touching)
                                             for keys in clusters["exemplars"]])
    outcomes = nodule_outcomes(findings, clusters, regions)["outcome"].value_counts()
    kinds = []
    for kind in KINDS:
        s = structures[structures["kind"] == kind]
        touch = [k for k, v in touching.items() if kind in v]
        in_cluster = regions.set_index("region_key").loc[touch, "cluster"] if touch else []
        kinds.append({
            "kind": kind, "planted": len(s),
            "oracle_delta_p": float(s["delta_p"].mean()) if len(s) else None,
            "oracle_delta_p_malignant": (float(s.loc[s["malignant"] == 1, "delta_p"].mean())
                                         if (s["malignant"] == 1).any() else None),
            "reach_median": float(s["reach"].median()) if len(s) else None,
            "reach_at_least_half": float((s["reach"] >= 0.5).mean()) if len(s) else None,
            "regions_touching": len(touch),
            "touching_by_cluster": {int(k): int(v) for k, v in
                                    pd.Series(in_cluster).value_counts().items()},
        })
    return {
        "settings": {"cases": args.cases, "seed": args.seed, "model": str(args.model or "demo"),
                     "method": settings.method, "layer": settings.layer,
                     "cluster_method": patterns.method, "cluster_features": list(patterns.features),
                     "min_structure_mm3": patterns.min_structure_mm3,
                     "thresholds": list(dataclasses.astuple(settings.align)),
                     "config": cfg.to_dict(), "work": str(work)},
        "n_nodules": int(summary.n_nodules), "n_regions": int(len(regions)),
        "regions_touching_nothing": int(sum(1 for v in touching.values() if not v)),
        "kinds": kinds,
        "clusters": clusters[["cluster", "n_regions", "stability", "median_halo_max_hu",
                              "effect_mean", "relied_upon", "enrichment_predicted", "q_predicted",
                              "reading", "exemplars_on"]].to_dict("records"),
        "outcomes": {str(k): int(v) for k, v in outcomes.items()},
        "verdicts": {str(k): int(v) for k, v in findings["verdict"].value_counts().items()},
        "seconds": round(time.perf_counter() - t0, 1),
    }


def _exemplar_kinds(keys, touching: dict) -> dict:
    """How many of a cluster's exemplars (region keys) touch each planted kind, and how
    many touch none (``"none"``); ``"n"``: the exemplars."""
    keys = list(keys) if keys is not None else []
    out = {"n": len(keys)}
    for key in keys:
        for kind in touching.get(key) or ["none"]:
            out[kind] = out.get(kind, 0) + 1
    return out


def _fmt(v, nd=2):
    return "–" if v is None or (isinstance(v, float) and not np.isfinite(v)) else f"{v:.{nd}f}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model folder (default: the demo model)")
    ap.add_argument("--config", default=str(DEMO_COHORT),
                    help="JSON file of SyntheticConfig overrides (default: the demo cohort's)")
    ap.add_argument("--cases", type=int, default=40)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--work", default=None, help="folder for the cohort and the results")
    ap.add_argument("--json", default=None, help="also write the figures to this file")
    ap.add_argument("--method", default=ScoreSettings.method, help="attribution method")
    ap.add_argument("--layer", default=None, help="its layer (default: the model card's)")
    ap.add_argument("--cluster-method", default=PatternSettings.method,
                    choices=["hdbscan", "spectral", "gmm"], help="the regions' clustering")
    ap.add_argument("--cluster-features", default="structure", choices=["region", "structure"],
                    help="clustering descriptors: STRUCTURE_FEATURES (default, the product's) "
                         "or FEATURE_COLUMNS")
    ap.add_argument("--min-structure-mm3", type=float, default=PatternSettings.min_structure_mm3,
                    help="regions whose attended structure is smaller (mm^3) are not clustered")
    ap.add_argument("--thresholds", default=None, metavar="TOL,MARGIN,ALIGNED,OFFMASK",
                    help="verdict thresholds (pointing tolerance mm, near margin mm, aligned "
                         "and off-mask near mass; default: AlignThresholds())")
    args = ap.parse_args(argv)
    out = run(args)
    print(f"{out['n_nodules']} nodules, {out['n_regions']} off-mask regions "
          f"({out['regions_touching_nothing']} touch no planted structure); "
          f"{out['seconds']} s")
    print("| kind | planted | oracle Δp (malignant) | reach median | reach >= 0.5 | regions touching | by cluster |")
    print("|---|---:|---|---:|---:|---:|---|")
    for k in out["kinds"]:
        print(f"| {k['kind']} | {k['planted']} | {_fmt(k['oracle_delta_p'], 3)} "
              f"({_fmt(k['oracle_delta_p_malignant'], 3)}) | {_fmt(k['reach_median'])} | "
              f"{_fmt(k['reach_at_least_half'])} | {k['regions_touching']} | "
              f"{k['touching_by_cluster'] or '–'} |")
    print("| cluster | regions | stability | median halo HU | Δp | relied upon | enrichment (pred.) | q | reading | exemplars touching |")
    print("|---:|---:|---:|---:|---:|---|---:|---:|---|---|")
    for c in out["clusters"]:
        ex = dict(c["exemplars_on"])
        n = ex.pop("n")
        print(f"| {c['cluster']} | {c['n_regions']} | {_fmt(c['stability'])} | "
              f"{_fmt(c['median_halo_max_hu'], 0)} | "
              f"{_fmt(c['effect_mean'], 3)} | {bool(c['relied_upon'])} | "
              f"{_fmt(c['enrichment_predicted'])} | {_fmt(c['q_predicted'], 4)} | {c['reading']} | "
              f"{', '.join(f'{k} {v}' for k, v in sorted(ex.items()))} (of {n}) |")
    print(f"outcomes: {out['outcomes']}; verdicts: {out['verdicts']}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
