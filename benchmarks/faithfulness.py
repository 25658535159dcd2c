"""Why the old deletion / insertion measure and the maps disagreed: small, decisive experiments.

On the nodules ``discovery sanity`` checks (the same seeded sample of a results folder), for
the predicted-malignant ones (P(malignant) >= the model card's threshold):

A. **Eraser x order.**  Deletion and insertion with the old constant eraser (-850 HU) and
   MoRF / LeRF deletion with ROAD's noisy linear imputation, for: Grad-CAM; Integrated
   Gradients (voxel level); the same IG map averaged over Grad-CAM's 4^3-voxel cells (6 mm);
   a random voxel order; a random order of 4^3-voxel blocks.  If the IG map averaged to
   Grad-CAM's cells deletes as slowly as Grad-CAM under the constant eraser, resolution, not
   ranking, explains Grad-CAM's deletion area; if random voxels delete fast only under the
   constant eraser, the eraser's speckle, not the removed evidence, does it.
B. **Speckle alone.**  10 % of the voxels farther than 15 mm from the ROI centre (off the
   nodule: the largest demo nodule has an equivalent radius of 12 mm) removed as scattered
   single voxels with the constant eraser, the same voxels imputed, and the same number of
   voxels removed as whole random 4^3 blocks with the constant eraser; and 10 % of the voxels
   within 4 mm of the centre (on the nodule) scattered, constant vs imputed.  Mean P(malignant).
C. **Cost** of the imputation: one ROI's 19 intermediate MoRF steps at once (conjugate
   gradients on the voxel grid) against ``scipy.sparse.linalg.spsolve`` on the 50 % and 95 %
   steps (median of 3, CPU seconds).
D. **Where a map's ends lie**: the share of dense voxels (> -400 HU) among the 5 % highest and
   the 5 % lowest voxels of Grad-CAM and of Integrated Gradients, against all voxels.

Usage: ``python benchmarks/faithfulness.py RESULTS [--model DIR] [--max-nodules 50]
[--seed 0] [--json FILE]`` (``RESULTS`` a folder written by ``discovery score``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import scipy.sparse as sp  # noqa: E402
import scipy.sparse.linalg as spla  # noqa: E402
import torch  # noqa: E402

from data_tools.volume import Mask, Volume  # noqa: E402
from discovery.batch.sanity import BASELINE_HU, NOISE_HU  # noqa: E402
from discovery.explain.faithfulness import perturbation_curves, road_curves  # noqa: E402
from discovery.explain.imputation import linear_imputation  # noqa: E402
from discovery.explain.methods import predict_and_explain  # noqa: E402
from discovery.model.card import load_model  # noqa: E402
from discovery.model.rois import extract_roi, network_input, nodule_sites  # noqa: E402
from discovery.store.tables import ResultsStore, load_case_arrays  # noqa: E402

CELL = 4   # Grad-CAM's cell on layer3 of the demo model, in ROI voxels (6 mm)


def sample_rois(results: Path, card, max_nodules: int, seed: int) -> np.ndarray:
    """The ROIs ``discovery sanity RESULTS --max-nodules N --seed S`` checks, same order."""
    store = ResultsStore(results, create=False)
    cases = store.query("SELECT case_id FROM cases WHERE status = 'ok' ORDER BY case_id")
    store.close()
    rois = []
    for case_id in cases["case_id"]:
        a = load_case_arrays(results, case_id)
        volume = Volume(a["ct"].astype(np.float32), a["affine"])
        for site in nodule_sites(Mask(a["mask"], a["affine"])):
            roi = extract_roi(volume, site.center_zyx, size_vox=card.roi_size_vox,
                              spacing_mm=card.roi_spacing_mm)
            rois.append(network_input(roi.hu, card))
    if len(rois) > max_nodules:
        keep = np.sort(np.random.default_rng(seed).choice(len(rois), max_nodules, replace=False))
        rois = [rois[i] for i in keep]
    return np.stack(rois).astype(np.float32)


def cells(maps: np.ndarray, k: int = CELL) -> np.ndarray:
    """Each map averaged over k^3 blocks (the ROI edge must be a multiple of k)."""
    n, z, y, x = maps.shape
    m = maps.reshape(n, z // k, k, y // k, k, x // k, k).mean(axis=(2, 4, 6))
    return m.repeat(k, 1).repeat(k, 2).repeat(k, 3)


def experiment_a(model, rois, maps: dict, fill: float, noise: float) -> list[dict]:
    rows = []
    for name, m in maps.items():
        old = perturbation_curves(model, rois, m, baseline=fill, steps=20, n_random=0)
        new = road_curves(model, rois, m, fill=fill, noise=noise, steps=20, n_random=0)
        rows.append({
            "order": name, "old_deletion": float(np.median(old.deletion_auc)),
            "old_insertion": float(np.median(old.insertion_auc)),
            "old_gap": float(np.median(old.insertion_auc - old.deletion_auc)),
            "morf": float(np.median(new.morf_auc)), "lerf": float(np.median(new.lerf_auc)),
            "gap": float(np.median(new.gap)), "gap_positive": float(np.mean(new.gap > 0)),
            "old_curve": old.deletion.mean(0).round(3).tolist(),
            "morf_curve": new.morf.mean(0).round(3).tolist()})
        print(f"  {name:<24} old: deletion {rows[-1]['old_deletion']:.3f} insertion "
              f"{rows[-1]['old_insertion']:.3f} gap {rows[-1]['old_gap']:+.3f} | imputed: MoRF "
              f"{rows[-1]['morf']:.3f} LeRF {rows[-1]['lerf']:.3f} gap {rows[-1]['gap']:+.3f} "
              f"(> 0 on {rows[-1]['gap_positive']:.0%}); mean imputed MoRF curve at 5 % "
              f"{rows[-1]['morf_curve'][1]:.2f}, 95 % {rows[-1]['morf_curve'][-2]:.2f}", flush=True)
    return rows


def experiment_d(hu: np.ndarray, maps: dict) -> dict:
    """Share of dense voxels (> -400 HU) among each map's 5 % highest and 5 % lowest voxels."""
    dense = (hu > -400).reshape(len(hu), -1)
    out = {"all voxels": float(dense.mean())}
    for name in ("gradcam", "integrated_gradients"):
        order = np.argsort(-maps[name].reshape(len(hu), -1), axis=1, kind="stable")
        k = order.shape[1] // 20
        out[f"{name}, top 5 %"] = float(np.take_along_axis(dense, order[:, :k], 1).mean())
        out[f"{name}, bottom 5 %"] = float(np.take_along_axis(dense, order[:, -k:], 1).mean())
    for key, v in out.items():
        print(f"  {key:<36} dense (> -400 HU) share {v:.3f}")
    return out


def _prob(model, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return torch.softmax(model(torch.from_numpy(x.astype(np.float32))).double(), 1)[:, 1].numpy()


def experiment_b(model, rois, fill: float, noise: float, spacing_mm: float, seed: int) -> dict:
    n, _, *spatial = rois.shape
    centre = (np.array(spatial) - 1) / 2
    dist = np.sqrt(sum((g - c) ** 2 for g, c in zip(np.indices(spatial), centre))) * spacing_mm
    rng = np.random.default_rng(seed)
    out = {"intact": float(_prob(model, rois).mean())}
    for where, region in (("off the nodule (> 15 mm)", dist > 15), ("on the nodule (< 4 mm)",
                                                                     dist < 4)):
        idx = np.flatnonzero(region)
        removed = np.zeros((n, *spatial), bool)
        for i in range(n):
            removed[i].flat[rng.choice(idx, idx.size // 10, replace=False)] = True
        const = np.where(removed[:, None], fill, rois)
        imputed = linear_imputation(rois[:, 0], removed, fill=fill)[:, None]
        imputed += np.where(removed[:, None], noise * rng.standard_normal(imputed.shape), 0)
        out[f"scattered, constant, {where}"] = float(_prob(model, const).mean())
        out[f"scattered, imputed, {where}"] = float(_prob(model, imputed).mean())
        if where.startswith("off"):
            blocks = np.zeros((n, *spatial), bool)
            grid = np.indices([s // CELL for s in spatial]).reshape(3, -1).T
            outside = [g for g in grid if region[tuple(g * CELL + CELL // 2)]]
            for i in range(n):
                for j in rng.choice(len(outside), max(1, idx.size // 10 // CELL ** 3), replace=False):
                    z, y, x = outside[j] * CELL
                    blocks[i, z:z + CELL, y:y + CELL, x:x + CELL] = True
            out[f"whole {CELL}^3 blocks, constant, {where}"] = float(
                _prob(model, np.where(blocks[:, None], fill, rois)).mean())
    for k, v in out.items():
        print(f"  {k:<48} mean P(malignant) {v:.3f}")
    return out


def _spsolve(values: np.ndarray, removed: np.ndarray) -> np.ndarray:
    """The imputation system assembled with scipy.sparse and solved directly."""
    shape, idx = values.shape, np.flatnonzero(removed)
    var = np.full(values.size, -1)
    var[idx] = np.arange(idx.size)
    coords, diag, rhs, rows, cols = np.unravel_index(idx, shape), np.zeros(idx.size), np.zeros(idx.size), [], []
    for axis in range(3):
        for step in (-1, 1):
            c = coords[axis] + step
            ok = (c >= 0) & (c < shape[axis])
            nb = np.ravel_multi_index(tuple(c[ok] if k == axis else coords[k][ok] for k in range(3)), shape)
            src = np.flatnonzero(ok)
            diag[src] += 1
            inner = var[nb] >= 0
            rows.append(src[inner])
            cols.append(var[nb][inner])
            np.add.at(rhs, src[~inner], values.flat[nb[~inner]])
    r, c = np.concatenate(rows), np.concatenate(cols)
    a = sp.csc_matrix((np.full(r.size, -1.0), (r, c)), shape=(idx.size,) * 2) + sp.diags(diag)
    return spla.spsolve(a.tocsc(), rhs)


def experiment_c(roi: np.ndarray, cam: np.ndarray) -> dict:
    order = np.argsort(-cam.ravel(), kind="stable")
    ranks = np.empty(order.size, np.int64)
    ranks[order] = np.arange(order.size)
    removed = (ranks[None] < (np.arange(1, 20)[:, None] * order.size) // 20).reshape(19, *roi.shape)

    def median_time(fn) -> float:       # CPU seconds: robust to other work on the machine
        times = []
        for _ in range(3):
            t0 = time.process_time()
            fn()
            times.append(time.process_time() - t0)
        return statistics.median(times)

    out = {"cg_19_steps_s": median_time(lambda: linear_imputation(
        np.broadcast_to(roi, removed.shape), removed, fill=0.0))}
    for k, frac in ((9, "50%"), (18, "95%")):
        out[f"spsolve_{frac}_s"] = median_time(lambda: _spsolve(roi.astype(np.float64), removed[k]))
    print(f"  imputation of one ROI's 19 MoRF steps at once: {out['cg_19_steps_s']:.2f} CPU s; "
          f"spsolve, one step: {out['spsolve_50%_s']:.2f} CPU s at 50 %, "
          f"{out['spsolve_95%_s']:.2f} CPU s at 95 % removed")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", help="results folder written by `discovery score`")
    ap.add_argument("--model", default=None, help="model folder (default: the demo model)")
    ap.add_argument("--max-nodules", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="write the figures to this file")
    args = ap.parse_args(argv)
    model, card = load_model(args.model)
    if len(card.windows) != 1:
        ap.error("this benchmark expects a one-channel model (such as the demo model)")
    rois = sample_rois(Path(args.results), card, args.max_nodules, args.seed)
    fill = float(network_input(np.array(BASELINE_HU), card).ravel()[0])
    noise = NOISE_HU / (card.windows[0][1] - card.windows[0][0])
    p, cam, _ = predict_and_explain(model, torch.from_numpy(rois), method="gradcam", target=1)
    mal = p[:, 1] >= card.threshold
    rois, cam = torch.from_numpy(rois[mal]), cam[mal]
    print(f"{int(mal.sum())} of {len(mal)} nodules predicted malignant")
    if not mal.any():
        ap.error("no predicted-malignant nodule in the sample: raise --max-nodules")
    ig = np.concatenate([predict_and_explain(model, rois[i:i + 8], method="integrated_gradients",
                                             target=1)[1] for i in range(0, len(rois), 8)])
    rng = np.random.default_rng(args.seed)
    blocks = rng.random((len(rois), *(s // CELL for s in cam.shape[1:])))
    maps = {"gradcam": cam, "integrated_gradients": ig, f"IG averaged on {CELL}^3 cells": cells(ig),
            "random voxels": rng.random(cam.shape),
            f"random {CELL}^3 blocks": blocks.repeat(CELL, 1).repeat(CELL, 2).repeat(CELL, 3)}
    print("A. eraser x order (medians over the predicted-malignant nodules)")
    a = experiment_a(model, rois, maps, fill, noise)
    print("B. speckle alone")
    b = experiment_b(model, rois.numpy(), fill, noise, float(card.roi_spacing_mm[0]), args.seed)
    print("C. cost of the imputation")
    c = experiment_c(rois.numpy()[0, 0], cam[0])
    print("D. where the maps' ends lie")
    lo, hi = card.windows[0]
    d = experiment_d(lo + rois.numpy()[:, 0] * (hi - lo), maps)
    if args.json:
        Path(args.json).write_text(json.dumps({"n_malignant": int(mal.sum()), "n": len(mal),
                                               "A": a, "B": b, "C": c, "D": d}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
