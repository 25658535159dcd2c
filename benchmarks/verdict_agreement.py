"""Do the verdicts agree with the model's behaviour?  Calibrate and measure.

The truth is the reliance measure (:mod:`discovery.model.reliance`: the nodule replaced by
parenchyma and re-scored, against volume-matched controls): ``rests_on_nodule``.  The figure
is the balanced accuracy between ``verdict == "aligned"`` and ``rests_on_nodule`` on the
predicted-malignant nodules (:func:`discovery.align.metrics.verdict_agreement`).

``collect`` scores an in-memory synthetic cohort (``analyze_scan``, the pipeline itself) and
keeps per nodule what the verdict is made of (the attribution crop, the nodule's mask, the
spacing) with the probability and the reliance.  ``fit`` searches the verdict rule's
parameters (:class:`discovery.align.metrics.AlignThresholds`: near margin, pointing
tolerance, near-mass cut-off of ``aligned``) for the largest balanced accuracy over the
*calibration* cohorts' nodules pooled, then reports it on the *evaluation* cohorts with the thresholds as they
were (``--before``) and as fitted, and the best any parameters of that rule could do on each
evaluation cohort (a ceiling, fitted on the cohort itself).

Usage::

    python benchmarks/verdict_agreement.py collect --config demo --seed 101 --cases 40 --out A.pkl
    python benchmarks/verdict_agreement.py collect --config bench --bench-seed 2 --seed 20002 \\
        --cases 40 --out B.pkl            # the benchmark's model of seed 2 (cached, or trained)
    python benchmarks/verdict_agreement.py fit --calibration A.pkl,B.pkl --evaluate C.pkl D.pkl
    python benchmarks/verdict_agreement.py diagnose RESULTS   # a folder scored with the demo model
    python benchmarks/verdict_agreement.py rules A.pkl B.pkl C.pkl  # richer rules, leave-one-out

``rules`` asks whether a verdict made of more than the pointing game and the near mass could
agree: per nodule, a few map features that any attribution map has (the map's mass on the
nodule, in map units times mm³; its mean on the nodule over its mean within 20 mm around it,
the *contrast*; the near share within 5 mm; the peak's distance) and the prediction's logit
(how far P must fall before it halves), combined by a class-balanced logistic regression
fitted on all cohorts but one and scored on the one left out, for each cohort in turn.

``diagnose`` asks how much any map-at-``layer3`` rule could agree: this network pools
``layer3`` globally into its last layer, so the class-contrast CAM (``fc`` weights of class 1
minus class 0 times the layer's activations) decomposes the logit difference exactly over the
8³ cells.  It reports how well the decomposition over the cells the nodule covers (and their
neighbours) predicts the measured logit drop, and how well it and the map's shares rank the
nodules that rest on the nodule (ROC AUC).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import pickle
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np
import torch
from scipy import ndimage

from data_tools.synthetic import SyntheticConfig, generate_case
from data_tools.volume import Mask, Volume
from discovery.align.metrics import AlignThresholds, align, verdict_agreement
from discovery.align.rule import VerdictRule, fit_verdict_rule, verdict_features
from discovery.model.card import default_model_dir, load_model
from discovery.pipeline import ScoreSettings, analyze_scan

MARGINS_MM = (0.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 12.0, 15.0)
TOLERANCES_MM = (0.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 12.0, 15.0, 1000.0)
BEFORE = AlignThresholds(pointing_tolerance_mm=4.0, near_margin_mm=5.0, aligned_near_mass=0.5,
                         offmask_near_mass=0.25)


def _bench():
    spec = importlib.util.spec_from_file_location("bench_discovery",
                                                  ROOT / "benchmarks" / "discovery.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def collect(args) -> None:
    torch.set_num_threads(2)
    if args.config == "demo":
        model, card = load_model(default_model_dir())
        config = SyntheticConfig.read(ROOT / "sample_data" / "demo_model" / "cohort.json")
    else:
        bench = _bench()
        ns = argparse.Namespace(seed=args.bench_seed, train_cases=200, epochs=12, cache=args.cache,
                                condition="shortcut")
        model, card = bench._model(ns, lambda m: print(m, file=sys.stderr, flush=True))
        config = bench.TEST_CONFIG
    model.eval()
    rows, t0 = [], time.perf_counter()
    for i in range(args.cases):
        c = generate_case(args.seed, config=config, index=i)
        vol, mask = Volume(c.hu, c.affine), Mask(c.mask, c.affine)
        res = analyze_scan(vol, mask, model, card, case_id=f"s{args.seed}-{i:04d}",
                           settings=ScoreSettings(method=args.method, layer=args.layer))
        for nod in res.nodules:
            rel = nod.reliance
            rows.append({"case": res.case_id, "nodule": nod.nodule_id,
                         "attr": nod.attribution.astype(np.float32),
                         "own": mask.array[nod.box] == nod.site.label, "spacing": vol.spacing_mm,
                         "p": nod.probability, "pred": nod.predicted_label,
                         "rests": rel.rests_on_nodule, "p_without_nodule": rel.p_without_nodule,
                         "p_without_control": rel.p_without_control})
        print(f"[{time.perf_counter() - t0:5.0f} s] case {i + 1}/{args.cases}", file=sys.stderr,
              flush=True)
    with open(args.out, "wb") as fh:
        pickle.dump(rows, fh)


def _features(rows: list[dict]) -> dict[str, np.ndarray]:
    """Per nodule (predicted malignant, reliance measured): the peak's distance to the mask
    and the near mass at every margin of MARGINS_MM, as align() computes them."""
    rows = [r for r in rows if r["pred"] == 1 and np.isfinite(r["rests"])
            and r["own"].any() and r["attr"].sum() > 0]
    peak = np.zeros(len(rows))
    near = np.zeros((len(rows), len(MARGINS_MM)))
    for i, r in enumerate(rows):
        attr = r["attr"].astype(np.float64)
        dist = ndimage.distance_transform_edt(~r["own"], sampling=r["spacing"])
        peak[i] = dist[np.unravel_index(int(np.argmax(attr)), attr.shape)]
        near[i] = [attr[dist <= m + 1e-6].sum() / attr.sum() for m in MARGINS_MM]
    return {"peak": peak, "near": near, "rests": np.array([r["rests"] for r in rows]),
            "rows": rows}


def _bacc(aligned: np.ndarray, rests: np.ndarray) -> float:
    """Balanced accuracy; NaN when one class is empty."""
    truth = rests >= 0.5
    if truth.all() or not truth.any():
        return float("nan")
    return 0.5 * (aligned[truth].mean() + (~aligned[~truth]).mean())


#: Settings whose balanced accuracy is within this of the best count as tied (the landscape
#: is flat: differences below it are noise of a few nodules).
TIE = 0.005


def _grid(cohorts: list[dict]):
    """(balanced accuracy over the nodules of all *cohorts* pooled, margin, tolerance,
    cut-off) for the whole grid, best first.  Pooled, so that a cohort where no prediction
    rests on its nodule (one class only) still counts, through the specificity.  Settings
    within :data:`TIE` of the best are ordered by the margin nearest the former 5 mm, then the
    smaller tolerance and cut-off (the smallest change that does as well)."""
    peak = np.concatenate([f["peak"] for f in cohorts])
    near = np.concatenate([f["near"] for f in cohorts])
    rests = np.concatenate([f["rests"] for f in cohorts])
    cuts = np.round(np.arange(0.0, 1.0001, 0.01), 2)
    out = []
    for j, margin in enumerate(MARGINS_MM):
        for tol in TOLERANCES_MM:
            hit = peak <= tol + 1e-6
            out += [(_bacc(hit & (near[:, j] >= a - 1e-9), rests), margin, tol, float(a))
                    for a in cuts]
    top = max(np.nan_to_num(t[0], nan=-1.0) for t in out)
    return sorted(out, key=lambda t: (np.nan_to_num(t[0], nan=-1.0) < top - TIE,
                                      -np.nan_to_num(t[0], nan=-1.0) if
                                      np.nan_to_num(t[0], nan=-1.0) < top - TIE else 0.0,
                                      abs(t[1] - 5.0), t[2], t[3]))


def _agreement(rows: list[dict], thresholds: AlignThresholds):
    """verdict_agreement of the verdicts align() gives with *thresholds*."""
    verdicts = [align(r["attr"], r["own"], spacing_mm=r["spacing"], thresholds=thresholds).verdict
                for r in rows]
    return verdict_agreement(verdicts, [r["rests"] for r in rows], [r["pred"] for r in rows])


def fit(args) -> None:
    def load(path):
        with open(path, "rb") as fh:
            return pickle.load(fh)

    cal = [_features(load(p)) for p in args.calibration.split(",")]
    best = _grid(cal)[0]
    print(f"calibration ({args.calibration}): {sum(len(f['rests']) for f in cal)} "
          f"predicted-malignant nodules, {int(sum((f['rests'] >= 0.5).sum() for f in cal))} "
          f"resting on the nodule; best pooled balanced accuracy {best[0]:.3f} at "
          f"near margin {best[1]} mm, pointing tolerance {best[2]} mm, aligned near mass "
          f">= {best[3]:.2f}")
    fitted = AlignThresholds(pointing_tolerance_mm=min(best[2], 100.0), near_margin_mm=best[1],
                             aligned_near_mass=best[3],
                             offmask_near_mass=round(best[3] / 2, 2))  # the former ratio
    for path in args.evaluate:
        rows = load(path)
        before, after = _agreement(rows, BEFORE), _agreement(rows, fitted)
        ceiling = _grid([_features(rows)])[0]
        print(f"{path}: {before.n} predicted malignant, {before.n_rests} rest on the nodule; "
              f"balanced accuracy before {before.balanced_accuracy:.3f} "
              f"(sens {before.sensitivity:.2f}, spec {before.specificity:.2f}), after "
              f"{after.balanced_accuracy:.3f} (sens {after.sensitivity:.2f}, spec "
              f"{after.specificity:.2f}); ceiling of the rule on this cohort {ceiling[0]:.3f} "
              f"(margin {ceiling[1]}, tolerance {ceiling[2]}, cut-off {ceiling[3]:.2f})")


def _cam_rows(results: str, model, card):
    """Per scored nodule of *results*: the logit difference, the CAM decomposition's drop
    over the nodule's cells (0) and with their neighbours (1), the map's shares there."""
    import pandas as pd

    from discovery.model.rois import extract_roi, network_input
    from discovery.store.tables import ResultsStore, load_case_arrays

    w = (model.fc.weight[1] - model.fc.weight[0]).detach().numpy()
    w1 = model.fc.weight[1].detach().numpy()
    found, rows = {}, []
    hook = model.layer3.register_forward_hook(lambda m, i, o: found.__setitem__("a", o))
    findings = ResultsStore(results, create=False).findings().query("status == 'ok'")
    for case_id, group in findings.groupby("case_id"):
        arrays = load_case_arrays(results, case_id)
        vol = Volume(np.asarray(arrays["ct"], np.float32), arrays["affine"])
        for r in group.itertuples():
            centre, size = (r.center_z, r.center_y, r.center_x), card.roi_size_vox
            own = Volume((np.asarray(arrays["mask"]) == int(r.nodule_id[1:])).astype(np.float32),
                         arrays["affine"])
            roi = extract_roi(vol, centre, size_vox=size, spacing_mm=card.roi_spacing_mm)
            inside = extract_roi(own, centre, size_vox=size,
                                 spacing_mm=card.roi_spacing_mm).hu > 0.5
            with torch.no_grad():
                z = model(torch.from_numpy(network_input(roi.hu, card)[None])).numpy()[0]
            act = found["a"].detach().numpy()[0]
            diff, one = np.tensordot(w, act, axes=1), np.maximum(np.tensordot(w1, act, axes=1), 0)
            k = inside.shape[0] // diff.shape[0]
            cells = inside.reshape(diff.shape[0], k, diff.shape[1], k, diff.shape[2], k).any(
                axis=(1, 3, 5))
            row = {"p": r.probability, "pred": r.predicted_label, "rests": r.rests_on_nodule,
                   "z": float(z[1] - z[0]), "p_without": r.p_without_nodule}
            for grow, near in ((0, cells), (1, ndimage.binary_dilation(cells))):
                row[f"drop{grow}"] = float((diff[near] - np.median(diff[~cells])).sum() / diff.size)
                row[f"share{grow}"] = float(one[near].sum() / max(one.sum(), 1e-12))
            rows.append(row)
    hook.remove()
    return pd.DataFrame(rows)


def diagnose(args) -> None:
    from sklearn.metrics import roc_auc_score

    model, card = load_model(args.model or default_model_dir())
    model.eval()
    d = _cam_rows(args.results, model, card)
    d = d[(d["pred"] == 1) & d["rests"].notna()]
    drop = d["z"] - np.log(d["p_without"] / (1 - d["p_without"]))  # measured logit drop
    y = d["rests"] >= 0.5
    print(f"{args.results}: {len(d)} predicted malignant, {int(y.sum())} rest on the nodule; "
          f"measured logit drop {drop.mean():.2f} on average")
    for grow in (0, 1):
        est = d[f"drop{grow}"]
        print(f"  cells {'and neighbours ' if grow else ''}of the nodule: CAM drop "
              f"{est.mean():.2f} on average (measured / CAM {drop.mean() / est.mean():.1f}), "
              f"correlation {np.corrcoef(drop, est)[0, 1]:.2f}; AUC for resting: CAM drop / "
              f"logit {roc_auc_score(y, est / d['z'].clip(lower=1e-3)):.2f}, Grad-CAM share "
              f"{roc_auc_score(y, d[f'share{grow}']):.2f}")


#: The feature sets ``rules`` compares (names of :data:`discovery.align.rule.RULE_FEATURES`);
#: ``fit-rule`` writes the one named by ``--features`` (default: the last, chosen before the
#: fresh cohorts 103 and 104 were drawn).
RULE_SETS = (("log_contrast",), ("log_contrast", "logit"), ("log_mass_on_nodule", "logit"),
             ("log_mass_on_nodule", "logit", "log_contrast"),
             ("log_mass_on_nodule", "logit", "log_contrast", "near_share_5mm"),
             ("log_mass_on_nodule", "logit", "log_contrast", "near_share_5mm", "peak_within_6mm",
              "log_nodule_volume"),
             ("log_mass_on_nodule", "log_mass_beyond_5mm", "logit"))


def _rule_cohort(path: str) -> tuple[str, list[dict], np.ndarray]:
    """(name, verdict_features of each nodule, rests) of one collect output: the
    predicted-malignant nodules with a measured reliance and a map."""
    with open(path, "rb") as fh:
        rows = [r for r in pickle.load(fh) if r["pred"] == 1 and np.isfinite(r["rests"])
                and r["own"].any() and r["attr"].sum() > 0]
    values = [verdict_features(r["attr"], r["own"], spacing_mm=r["spacing"], probability=r["p"])
              for r in rows]
    return Path(path).stem, values, np.array([r["rests"] >= 0.5 for r in rows])


def _rule_bacc(rule: VerdictRule, values: list[dict], rests: np.ndarray) -> float:
    return _bacc(np.array([rule.aligned(v) for v in values]), rests)


def _rule_table(cohorts: list[tuple], fit_on) -> None:
    """A Markdown table: per feature set, the balanced accuracy on each cohort of the rule
    ``fit_on(k, features)`` fits for cohort *k*."""
    print("| features | " + " | ".join(f"{name} ({len(y)}, {int(y.sum())} rest)"
                                         for name, _, y in cohorts) + " |")
    print("|---|" + "---:|" * len(cohorts))
    for names in RULE_SETS:
        scores = [_rule_bacc(fit_on(k, names), values, y) for k, (_, values, y) in enumerate(cohorts)]
        print(f"| {', '.join(names)} | " + " | ".join(f"{b:.3f}" for b in scores) + " |")


def rules(args) -> None:
    cohorts = [_rule_cohort(p) for p in args.collected]
    method, layer = args.method, args.layer

    def pooled(parts, names):
        return fit_verdict_rule([v for _, vs, _ in parts for v in vs],
                                np.concatenate([y for _, _, y in parts]), features=names,
                                method=method, layer=layer)

    if args.calibration:
        cal = [_rule_cohort(p) for p in args.calibration.split(",")]
        n = sum(len(y) for _, _, y in cal)
        print(f"fitted on {args.calibration} ({n} nodules), balanced accuracy on each cohort:\n")
        _rule_table(cohorts, lambda k, names: pooled(cal, names))
    else:
        _rule_table(cohorts, lambda k, names: pooled(
            [c for j, c in enumerate(cohorts) if j != k], names))


def fit_rule(args) -> None:
    """Fit the rule of *--features* on the calibration cohorts and write it into the card."""
    cal = [_rule_cohort(p) for p in args.calibration.split(",")]
    values = [v for _, vs, _ in cal for v in vs]
    rests = np.concatenate([y for _, _, y in cal])
    names = tuple(args.features.split(",")) if args.features else RULE_SETS[-1]
    rule = fit_verdict_rule(values, rests, features=names, method=args.method, layer=args.layer)
    bacc = _rule_bacc(rule, values, rests)
    rule = dataclasses.replace(rule, provenance={
        "fitted_on": [Path(p).stem for p in args.calibration.split(",")], "cohorts": args.cohorts,
        "nodules": len(rests), "resting_on_nodule": int(rests.sum()),
        "balanced_accuracy": round(bacc, 4), "how": "benchmarks/verdict_agreement.py fit-rule"})
    card_path = Path(args.card)
    data = json.loads(card_path.read_text())
    data["verdict_rule"] = rule.to_dict()
    card_path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    print(f"wrote the verdict rule into {card_path}: {', '.join(names)}; fitted on {len(rests)} "
          f"nodules ({int(rests.sum())} resting on the nodule), balanced accuracy there {bacc:.3f}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("collect")
    c.add_argument("--config", choices=["demo", "bench"], default="demo")
    c.add_argument("--bench-seed", type=int, default=2, help="the benchmark model's seed")
    c.add_argument("--seed", type=int, required=True, help="the cohort's seed")
    c.add_argument("--cases", type=int, default=40)
    c.add_argument("--method", default=ScoreSettings.method, help="attribution method")
    c.add_argument("--layer", default=None, help="its layer (default: the model card's)")
    c.add_argument("--out", required=True)
    c.add_argument("--cache", default=str(ROOT / "benchmarks" / ".cache" / "discovery"))
    f = sub.add_parser("fit")
    f.add_argument("--calibration", required=True, help="comma-separated collect outputs")
    f.add_argument("--evaluate", nargs="*", default=[])
    r = sub.add_parser("rules")
    r.add_argument("collected", nargs="+", help="collect outputs, one per cohort (at least 2)")
    r.add_argument("--calibration", default=None,
                   help="comma-separated collect outputs to fit on once, instead of leaving "
                        "each cohort out in turn; the cohorts given are then all scored")
    r.add_argument("--method", default="layercam", help="the map the collects hold")
    r.add_argument("--layer", default="layer2")
    w = sub.add_parser("fit-rule")
    w.add_argument("--calibration", required=True, help="comma-separated collect outputs")
    w.add_argument("--cohorts", default="", help="how they were drawn, for the provenance")
    w.add_argument("--features", default=None, help="comma-separated names (default: the "
                   "last of RULE_SETS)")
    w.add_argument("--method", default="layercam")
    w.add_argument("--layer", default="layer2")
    w.add_argument("--card", required=True, help="the model card (model.json) to write it into")
    g = sub.add_parser("diagnose")
    g.add_argument("results", help="a results folder (discovery score)")
    g.add_argument("--model", default=None, help="its model (default: the demo model)")
    args = ap.parse_args(argv)
    {"collect": collect, "fit": fit, "diagnose": diagnose, "rules": rules,
     "fit-rule": fit_rule}[args.cmd](args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
