"""Can the tool's network learn to see a planted kind at all, when it is the only label?

Issue 18.  A model that does not rely on a planted sign may not have been *able* to see it
(the input hides it), or may not have *learnt* to (the network, the data, the epochs).  This
script separates the two.  One synthetic cohort plants every kind independently of
malignancy (each nodule has each kind with probability ``--p``); then, for each kind, the
tool's network is trained by ``discovery.model.train.train_model`` (the code path of
``discovery train``: same augmentation, standardisation, optimiser and schedule) on the
label *this nodule has the kind*, nothing else, and its validation AUROC is read after every
epoch.  Beside it, a reference that needs no learning: the ROI's **intensity extreme**, the
largest (or the smallest) value of one input channel once smoothed by a 3-voxel box, over the
ROI's inner half; the best of these 2 x C single numbers is chosen on the training split and
its AUROC given on the validation split.  The reference is the same for every kind.

A kind the reference reads at AUROC near 1 and the network does not is one the input shows
and the network does not learn from this many examples.

Usage: ``python benchmarks/learnability.py [--cases 150] [--seed 43] [--epochs 15]
[--inputs lung,soft,dense/lung,soft,dense,lucent]
[--kinds pleural_tail,marker_bead,ground_glass_halo,bulla]
[--p 0.35] [--json FILE]``: the inputs compared are separated by "/", each as ``discovery
train --windows``.  About 1 minute of sampling per input and 1-2 minutes of training per
kind and input on 2 CPU cores (150 cases, 15 epochs).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from scipy import ndimage as ndi  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402

from data_tools.synthetic import SyntheticConfig, generate_case  # noqa: E402
from data_tools.volume import Mask, Volume  # noqa: E402
from discovery.model.card import ModelCard, default_architecture  # noqa: E402
from discovery.model.rois import nodule_sites, roi_input  # noqa: E402
from discovery.model.train import RoiDataset, TrainSettings, train_model  # noqa: E402
from discovery.model.windows import parse_windows  # noqa: E402

#: planted kind -> its probability fields' prefix in SyntheticConfig
KINDS = {"pleural_tail": "tail", "marker_bead": "bead", "ground_glass_halo": "halo",
         "bulla": "bulla", "satellite_nodule": "satellite"}
T0 = time.perf_counter()


def log(msg: str) -> None:
    sys.stderr.write(f"[{time.perf_counter() - T0:6.0f} s] {msg}\n")
    sys.stderr.flush()


def cohort(seed: int, n_cases: int, kinds: list[str], p: float, card: ModelCard):
    """``(x, has, group)``: ROIs ``(N, C, z, y, x)``, ``has[kind]`` (N,) bool, case index."""
    fields = {f"p_{KINDS[k]}_{lab}": p for k in kinds for lab in ("malignant", "benign")}
    config = replace(SyntheticConfig(), **fields)
    x, has, group = [], {k: [] for k in kinds}, []
    for i in range(n_cases):
        c = generate_case(seed, config=config, index=i)
        volume = Volume(c.hu, c.affine)
        flags = {n["label"]: n for n in c.nodules}
        for site in nodule_sites(Mask(c.mask, c.affine)):
            x.append(roi_input(volume, site.center_zyx, card))
            for k in kinds:
                has[k].append(bool(flags[site.label].get(f"has_{k}", False)))
            group.append(i)
    return np.stack(x), {k: np.asarray(v) for k, v in has.items()}, np.asarray(group)


def extremes(x: np.ndarray) -> np.ndarray:
    """``(N, 2 C)``: per channel, the largest and the negated smallest value of the ROI's
    inner half once smoothed by a 3-voxel box."""
    n, c = x.shape[:2]
    q = [s // 4 for s in x.shape[2:]]
    out = np.empty((n, 2 * c))
    for i in range(n):
        for j in range(c):
            s = ndi.uniform_filter(x[i, j], 3)[q[0]:-q[0], q[1]:-q[1], q[2]:-q[2]]
            out[i, 2 * j], out[i, 2 * j + 1] = s.max(), -s.min()
    return out


def reference_auroc(feats: np.ndarray, y: np.ndarray, train: np.ndarray, val: np.ndarray):
    """AUROC on *val* of the single feature best on *train*, and its column."""
    best = max(range(feats.shape[1]), key=lambda j: roc_auc_score(y[train], feats[train, j]))
    return float(roc_auc_score(y[val], feats[val, best])), best


def measure(kind: str, x, feats, has, group, card: ModelCard, a) -> dict:
    """Train the network on *has kind* alone and read the reference on the same split: the
    table row of *kind* (validation AUROC per epoch, the intensity extreme's AUROC);
    *feats*: :func:`extremes` of *x*."""
    y = has[kind].astype(np.int64)
    cases = [f"c{i}" for i in range(int(group.max()) + 1)]
    data = RoiDataset(x, y, group, cases, f"learnability-{kind}")
    settings = TrainSettings(epochs=a.epochs, patience=a.epochs, lr=a.lr, val_fraction=0.25,
                             test_fraction=0.0, seed=a.seed, precision=a.precision)
    history = []
    with tempfile.TemporaryDirectory() as out:
        saved = train_model(data, out, settings=settings, card=card,
                            progress=lambda e, n, h: history.append(h["val_auroc"]))
    val_cases = set(saved.training["split"]["val"]["case_ids"])
    val = np.asarray([cases[g] in val_cases for g in group])
    ref, col = reference_auroc(feats, y, ~val, val)
    ch = card.windows[col // 2]
    first = next((i + 1 for i, v in enumerate(history) if v >= 0.9), None)
    return {"kind": kind, "input": a.input, "n": int(len(y)), "n_with": int(y.sum()),
            "val_auroc_by_epoch": [round(v, 3) for v in history],
            "best_val_auroc": max(history), "first_epoch_at_0.9": first,
            "reference_auroc": ref,
            "reference": f"{'max' if col % 2 == 0 else 'min'} of {ch[0]:g}..{ch[1]:g} HU",
            "train_s": saved.training["seconds"]}


def table(rows: list[dict], a) -> str:
    epochs = sorted({1, min(5, a.epochs), a.epochs})
    lines = [f"| kind (nodules with it / all) | input | network: val AUROC at epochs "
             f"{' / '.join(map(str, epochs))} "
             "(best) | first epoch at 0.9 | intensity extreme: val AUROC (which) | training s |",
             "|---|---|---|---:|---|---:|"]
    for r in rows:
        h = r["val_auroc_by_epoch"]
        at = " / ".join(f"{h[e - 1]:.2f}" for e in epochs)
        lines.append(f"| {r['kind']} ({r['n_with']} / {r['n']}) | `{r['input']}` | {at} "
                     f"({r['best_val_auroc']:.2f}) | {r['first_epoch_at_0.9'] or '–'} | "
                     f"{r['reference_auroc']:.2f} ({r['reference']}) | {r['train_s']:.0f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=150)
    ap.add_argument("--seed", type=int, default=43)
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--inputs", default="lung,soft,dense/lung,soft,dense,lucent",
                    help="input windows compared, '/' between inputs")
    ap.add_argument("--kinds", default="pleural_tail,marker_bead,ground_glass_halo,bulla")
    ap.add_argument("--p", type=float, default=0.35, help="probability of each kind per nodule")
    ap.add_argument("--precision", default="bfloat16")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    kinds = [k.strip() for k in a.kinds.split(",")]
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        ap.error(f"unknown kind(s) {unknown}; known: {sorted(KINDS)}")
    rows = []
    for a.input in a.inputs.split("/"):
        card = ModelCard(architecture=default_architecture(),
                         gradcam_layer="layer3").with_windows(parse_windows(a.input))
        log(f"sampling {a.cases} cases (seed {a.seed}), input {a.input}")
        x, has, group = cohort(a.seed, a.cases, kinds, a.p, card)
        feats = extremes(x)     # the same for every kind: computed once per input
        for k in kinds:
            log(f"training on 'has {k}' ({int(has[k].sum())} of {len(group)} nodules)")
            rows.append(measure(k, x, feats, has, group, card, a))
    print(table(rows, a))
    if a.json:
        Path(a.json).write_text(json.dumps({"rows": rows, "settings": vars(a)}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
