"""Can a model trained by ``discovery train`` see a sign that lives in the lung's density range?

Issue 18.  Synthetic cohorts in which one planted structure carries most of the label (the
nodules' own cues made weak: same diameters for both labels, margins only a little more
often irregular when malignant, no tails or beads but the one planted):

* ``halo``: a ground-glass halo (``ground_glass_halo``, about -700..-500 HU, 3-6 mm beyond
  the nodule's surface) around 80 % of malignant and 5 % of benign nodules;
* ``bulla``: an air space darker than the lung (``bulla``, -1000..-980 HU, 6-10 mm across,
  its centre 5-10 mm beyond the nodule's edge), with the same probabilities;
* the references, dense structures with the same probabilities: ``tail``, a pleural tail
  (soft tissue, 4-6 mm wide), and ``bead``, a metal-bright marker bead (2500-2900 HU,
  3.5-5 mm).

For each cohort, models are trained by ``discovery train`` with the same seed, epochs and
learning rate, differing only in their input (``--inputs``): by default ``--windows wide``
(the demo model's single -1000..3000 HU window), ``--windows lung,soft,dense`` (the default
before: three channels side by side, -1000..-300, -160..240 and 240..3000 HU) and
``--windows lung,soft,dense,lucent`` (the default now: the same and -1000..-900 HU); each
channel standardised by the network with its training-split mean and spread, as
``discovery train`` does for every model.
Each is then measured on a held-out cohort sampled from the same settings with another seed:

* **oracle Δp**: every true structure (its planted label, grown by 1.5 mm where the HU is
  below -300 so that its partial-volume fringe goes too, the nodule masks protected) is
  replaced with local lung parenchyma
  (``inpaint_parenchyma``) and its nodule re-scored; the mean change of P(malignant) over
  the nodules that have one, with a 95 % bootstrap interval (``summarize_effects``);
* **AUROC** on all of the held-out cohort's nodules, and the test split's AUROC from the card.

Usage: ``python benchmarks/input_windows.py [--work DIR] [--cases 64] [--test-cases 24]
[--epochs 40] [--seed 18] [--train-seed 0] [--lr 0.002] [--kinds halo,bulla,tail,bead]
[--inputs wide/lung,soft,dense/lung,soft,dense,lucent] [--json FILE]``.  Cohorts and models are kept in ``--work`` (default
``benchmarks/.cache/input_windows``) and reused when present; the printed commands
re-create them.  With the defaults, about 22 minutes per cohort on 2 CPU cores shared with
other jobs (load average about 5): sampling 2-4 minutes, each training about 9.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from data_tools.cases import discover_cases, load_case  # noqa: E402
from data_tools.deid import pseudonymous_id  # noqa: E402
from data_tools.nifti import load_nifti_mask  # noqa: E402
from data_tools.synthetic import load_truth  # noqa: E402
from data_tools.volume import Volume  # noqa: E402
from discovery.align.metrics import grow_mm  # noqa: E402
from discovery.model.card import load_model  # noqa: E402
from discovery.model.rois import nodule_sites, roi_input  # noqa: E402
from discovery.model.train import collect_rois, evaluate, predict_probabilities  # noqa: E402
from discovery.patterns.causal import summarize_effects  # noqa: E402

try:  # moved by issue 18's edit helpers; either place is the same function
    from discovery.model.edit import inpaint_parenchyma  # noqa: E402
except ImportError:  # pragma: no cover - older tree
    from discovery.patterns.causal import inpaint_parenchyma  # noqa: E402

#: the nodules' own cues made weak (docs/guide/models.md, "The network's input")
WEAK_NODULE_CUES = {
    "p_irregular_malignant": 0.6, "p_round_benign": 0.6,
    "malignant_diameter_mm": [6.0, 18.0], "benign_diameter_mm": [6.0, 18.0],
    "p_tail_malignant": 0.0, "p_tail_benign": 0.0, "p_bead_malignant": 0.0, "p_bead_benign": 0.0,
}
#: per cohort: the planted kind that carries the label, and the settings that plant it
COHORTS = {
    "halo": ("ground_glass_halo", {"p_halo_malignant": 0.8, "p_halo_benign": 0.05}),
    "tail": ("pleural_tail", {"p_tail_malignant": 0.8, "p_tail_benign": 0.05,
                              "tail_width_mm": [4.0, 6.0]}),
    "bead": ("marker_bead", {"p_bead_malignant": 0.8, "p_bead_benign": 0.05}),
    "bulla": ("bulla", {"p_bulla_malignant": 0.8, "p_bulla_benign": 0.05}),
}
#: the inputs compared (``--inputs``, separated by "/"): today's single window, and sets of
#: several (names of :data:`discovery.model.rois.HU_WINDOWS`)
INPUTS = "wide/lung,soft,dense/lung,soft,dense,lucent"
#: removal: the structure's label grown by this much (mm) where the HU is below FRINGE_HU
GROW_MM, FRINGE_HU = 1.5, -300.0

DISCOVERY = str(Path(sys.executable).with_name("discovery"))
T0 = time.perf_counter()


def log(msg: str) -> None:
    sys.stderr.write(f"[{time.perf_counter() - T0:6.0f} s] {msg}\n")
    sys.stderr.flush()


def run_cli(args: list[str], commands: list[str]) -> None:
    """Run ``discovery ARGS`` (output kept quiet), recording the command line."""
    cmd = [DISCOVERY, *args]
    commands.append(" ".join(shlex.quote(str(a)) for a in ["discovery", *args]))
    log(commands[-1])
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        sys.stderr.write(done.stdout[-3000:] + done.stderr[-3000:])
        raise SystemExit(f"command failed ({done.returncode}): {commands[-1]}")


def sample(work: Path, name: str, settings: dict, *, cases: int, seed: int,
           commands: list[str]) -> Path:
    """The cohort ``WORK/NAME`` sampled with *settings* (reused when its truth exists)."""
    out = work / name
    cfg = work / f"{name.split('/')[0]}.json"
    cfg.parent.mkdir(parents=True, exist_ok=True)
    cfg.write_text(json.dumps(settings, sort_keys=True) + "\n")
    args = ["sample", str(out), "--cases", str(cases), "--seed", str(seed), "--config", str(cfg)]
    if (out / "truth.json").is_file() and load_truth(out)["seed"] == seed:
        commands.append("discovery " + " ".join(shlex.quote(a) for a in args) + "   # reused")
    else:
        run_cli(args, commands)
    return out


def train(cohort: Path, out: Path, windows: str, a, commands: list[str]) -> Path:
    """``discovery train`` with the given input windows (reused when the model exists)."""
    args = ["train", str(cohort), "--out", str(out), f"--windows={windows}",
            "--epochs", str(a.epochs), "--patience", str(a.epochs), "--seed", str(a.train_seed),
            "--lr", str(a.lr)]
    if (out / "model.json").is_file():
        commands.append("discovery " + " ".join(shlex.quote(x) for x in args) + "   # reused")
    else:
        run_cli(args, commands)
    return out


def removal(hu: np.ndarray, planted: np.ndarray, label: int, nodules: np.ndarray,
            spacing) -> np.ndarray:
    """The voxels removed for one structure: its label, plus its fringe (the label grown by
    :data:`GROW_MM` where the HU is below :data:`FRINGE_HU`), never a nodule's voxels."""
    own = planted == label
    return (own | (grow_mm(own, GROW_MM, spacing) & (hu < FRINGE_HU))) & ~nodules


def oracle(test: Path, kind: str, models: dict) -> dict[str, list[float]]:
    """Per model name: ``p_after - p_before`` of every held-out nodule with a *kind*."""
    truth = load_truth(test)
    specs = {s.case_id: s for s in discover_cases(test)}
    deltas: dict[str, list[float]] = {name: [] for name in models}
    for rec in truth["cases"]:
        items = [p for p in rec["planted"] if p["kind"] == kind]
        if not items:
            continue
        volume, mask = load_case(specs[pseudonymous_id(rec["case_dir"])])
        planted = load_nifti_mask(test / "_truth" / f"{rec['case_dir']}_planted.nii.gz").array
        sites = {s.label: s for s in nodule_sites(mask)}
        nodules = mask.array > 0
        for k, it in enumerate(items):
            remove = removal(volume.array, planted, it["label"], nodules, volume.spacing_mm)
            edited = inpaint_parenchyma(volume.array, remove, spacing_mm=volume.spacing_mm,
                                        protect=nodules, seed=k)
            centre = sites[it["nodule_label"]].center_zyx
            for name, (model, card) in models.items():
                x = np.stack([roi_input(Volume(arr, volume.affine), centre, card)
                              for arr in (volume.array, edited)])
                p = predict_probabilities(model, x)
                deltas[name].append(float(p[1] - p[0]))
    return deltas


def measure(kind_name: str, a, work: Path, commands: list[str]) -> list[dict]:
    """Sample, train both inputs, and measure them on the held-out cohort of one cohort kind."""
    kind, planted = COHORTS[kind_name]
    settings = {**WEAK_NODULE_CUES, **planted}
    cohort = sample(work, f"{kind_name}/train", settings, cases=a.cases, seed=a.seed,
                    commands=commands)
    test = sample(work, f"{kind_name}/test", settings, cases=a.test_cases, seed=a.seed + 1000,
                  commands=commands)
    models = {}
    for windows in a.inputs.split("/"):
        name = windows
        folder = work / kind_name / f"model-{windows.replace(',', '-')}-s{a.train_seed}"
        folder = train(cohort, folder, windows, a, commands)
        models[name] = load_model(folder)
    log(f"{kind_name}: oracle on the held-out cohort")
    deltas = oracle(test, kind, models)
    rows = []
    for name, (model, card) in models.items():
        data = collect_rois(test, card)
        heldout = evaluate(data.y, predict_probabilities(model, data.x))
        eff = summarize_effects(deltas[name])
        rows.append({
            "cohort": kind_name, "structure": kind, "input": name, "channels": card.in_channels,
            "n_with": eff.n, "oracle_dp": eff.mean_delta, "ci_low": eff.ci_low,
            "ci_high": eff.ci_high, "relied_upon": eff.relied_upon,
            "heldout_auroc": heldout["auroc"], "n_heldout": heldout["n"],
            "split_test_auroc": card.metrics["test"]["auroc"],
            "best_epoch": card.training["best_epoch"], "train_s": card.training["seconds"],
        })
    return rows


def table(rows: list[dict]) -> str:
    head = ("| cohort (informative structure) | input | oracle Δp (95 % CI), n | held-out AUROC "
            "(n) | test-split AUROC | best epoch | training s |\n|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        lines.append(
            f"| {r['cohort']} ({r['structure']}) | `{r['input']}` ({r['channels']} ch) | "
            f"{r['oracle_dp']:+.3f} ({r['ci_low']:+.3f}, {r['ci_high']:+.3f}), {r['n_with']} | "
            f"{r['heldout_auroc']:.3f} ({r['n_heldout']}) | {r['split_test_auroc']:.3f} | "
            f"{r['best_epoch']} | {r['train_s']:.0f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default=str(Path(__file__).resolve().parent / ".cache" / "input_windows"))
    ap.add_argument("--cases", type=int, default=64, help="training cohort size")
    ap.add_argument("--test-cases", type=int, default=24, help="held-out cohort size")
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--seed", type=int, default=18, help="cohort seed (held-out: +1000)")
    ap.add_argument("--train-seed", type=int, default=0)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--kinds", default="halo,bulla,tail,bead")
    ap.add_argument("--inputs", default=INPUTS, help="input windows compared, '/' between "
                    f"inputs (default {INPUTS})")
    ap.add_argument("--json", default=None, help="write the rows and commands here")
    a = ap.parse_args(argv)
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    work = Path(a.work)
    commands: list[str] = []
    rows = [r for k in a.kinds.split(",") for r in measure(k.strip(), a, work, commands)]
    print(table(rows))
    print("\ncommands:\n" + "\n".join(commands))
    if a.json:
        Path(a.json).write_text(json.dumps({"rows": rows, "commands": commands,
                                            "settings": vars(a)}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
