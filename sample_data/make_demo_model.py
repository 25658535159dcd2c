"""Re-create the committed demo model (``sample_data/demo_model``).

The demo model is trained on a synthetic cohort drawn from the same distribution as the
demo's sample cohort (``SyntheticConfig`` with the overrides in
``sample_data/demo_model/cohort.json``: a pleural tail in 70 % of malignant and 3 % of benign
nodules, 4-6 mm wide; ``make demo`` samples with the same file) but from a different seed,
generated in memory (no DICOM written).  Its card records the cohort hash, the
training seed and settings, and the held-out test AUROC.

Usage: ``python sample_data/make_demo_model.py [--cases 400] [--seed 2026] [--epochs 40]
[--out sample_data/demo_model] [--rois-cache FILE.npz] [--config JSON] [--stages 3]
[--widths 8,16,32] [--workers 2]``
(about 25 minutes on 2 CPU cores: 3 minutes generating the cases in 2 processes, about 30 s
an epoch).  ``--config`` names a JSON file of :class:`data_tools.synthetic.SyntheticConfig`
fields that replace the defaults (default: ``sample_data/demo_model/cohort.json``, the
committed model's); the other variants measured in docs/benchmarks/discovery.md are in
``sample_data/demo_variants/``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from data_tools.synthetic import SyntheticConfig  # noqa: E402
from discovery.model.card import ModelCard, default_architecture  # noqa: E402
from discovery.model.train import RoiDataset, TrainSettings, synthetic_rois, train_model  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=400)
    ap.add_argument("--seed", type=int, default=2026, help="cohort seed (not the sample's 7)")
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--rois-cache", default=None,
                    help="keep the generated ROIs in this .npz and reuse them when it exists")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "demo_model"))
    ap.add_argument("--config", default=str(Path(__file__).resolve().parent / "demo_model" / "cohort.json"),
                    help="JSON file of SyntheticConfig fields replacing the defaults")
    ap.add_argument("--stages", type=int, default=3, choices=(2, 3, 4),
                    help="ResNet stages kept (the CAM layer is the last: layer2 gives 16^3 cells "
                         "of 3 mm; default 3, the committed model's layer3)")
    ap.add_argument("--widths", default=None,
                    help="comma-separated channels of the stages (block_inplanes), e.g. 8,32 "
                         "for a 2-stage network with a wider layer2; default: the card's")
    ap.add_argument("--context", type=int, default=0, metavar="N",
                    help="a coarse context branch of N channels whose per-channel gains scale "
                         "the last stage's features (the CAM layer becomes 'gate'); default 0: "
                         "none (experimental)")
    ap.add_argument("--pointwise", type=int, default=0, metavar="N",
                    help="N 1x1x1 convolution layers (each doubling the channels) after the "
                         "last stage, more depth without a larger receptive field (the CAM "
                         "layer becomes 'head'); default 0 (experimental)")
    ap.add_argument("--precision", choices=("float32", "bfloat16"), default="float32",
                    help="arithmetic of the training passes (TrainSettings.precision)")
    ap.add_argument("--workers", type=int, default=2,
                    help="processes generating the cases (the ROIs do not depend on it)")
    ap.add_argument("--domain-only", action="store_true",
                    help="keep the trained model; regenerate its training cohort's ROIs and "
                         "write only their training domain into OUT/model.json (what the "
                         "card of a model trained before the domain existed lacks)")
    args = ap.parse_args(argv)
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    t0 = time.perf_counter()

    def log(msg: str) -> None:
        sys.stderr.write(f"[{time.perf_counter() - t0:6.0f} s] {msg}\n")

    architecture = dict(default_architecture(), stages=args.stages)
    if args.widths:
        widths = [int(w) for w in args.widths.split(",")]
        inplanes = list(architecture["kwargs"]["block_inplanes"])
        inplanes[: len(widths)] = widths
        architecture["kwargs"] = dict(architecture["kwargs"], block_inplanes=inplanes)
    if args.context:
        architecture["context"] = args.context
    if args.pointwise:
        architecture["pointwise"] = args.pointwise
    card = ModelCard(architecture=architecture,
                     gradcam_layer=("head" if args.pointwise else "gate" if args.context
                                    else f"layer{args.stages}"),
                     # the map the demo is explained with (docs/method/resolution.md): LayerCAM
                     # at the stage before the last, 3 mm cells on the committed network
                     default_map=("" if args.pointwise or args.context or args.stages < 3
                                  else f"layercam@layer{args.stages - 1}"))
    config = SyntheticConfig.read(args.config) if args.config else None
    cache = Path(args.rois_cache) if args.rois_cache else None
    if cache is not None and cache.is_file():
        z = np.load(cache)
        data = RoiDataset(z["x"], z["y"], z["group"], [str(c) for c in z["case_ids"]],
                          str(z["cohort_hash"]))
        log(f"ROIs read from {cache.name}")
    else:
        data = synthetic_rois(args.seed, args.cases, card, config=config, workers=args.workers,
                              progress=lambda i, n: log(f"case {i}/{n}") if i % 50 == 0 else None)
        if cache is not None:
            np.savez(cache, x=data.x, y=data.y, group=data.group,
                     case_ids=np.asarray(data.case_ids), cohort_hash=data.cohort_hash)
    log(f"{args.cases} cases, {len(data.y)} nodules ({int(data.y.sum())} malignant)")
    if args.domain_only:
        return _write_domain(Path(args.out), data, log)
    settings = TrainSettings(epochs=args.epochs, patience=10, lr=2e-3, seed=0,
                             precision=args.precision)
    card = train_model(data, args.out, settings=settings, card=card,
                       progress=lambda e, n, h: log(f"epoch {e}/{n} loss {h['loss']:.3f} "
                                                    f"val AUROC {h['val_auroc']:.3f}"))
    test = card.metrics["test"]
    log(f"held-out test AUROC {test['auroc']:.3f} on {test['n']} nodules; written to {args.out}")
    return 0


def _write_domain(out: Path, data: RoiDataset, log) -> int:
    """Write the training split's domain into the committed card (the weights untouched)."""
    import dataclasses
    import json

    from discovery.model.card import CARD_NAME
    from discovery.model.card import load_model as load

    _, card = load(out)
    train_ids = set(card.training["split"]["train"]["case_ids"])
    rows = [i for i, g in enumerate(data.group) if data.case_ids[g] in train_ids]
    if data.spacing_mm is None:
        raise SystemExit("the ROIs cache predates spacings and volumes; run without --rois-cache")
    domain = data.domain(rows, source="make_demo_model.py --domain-only: the training split's "
                                      "ROIs, regenerated from the cohort seed")
    card = dataclasses.replace(card, training_domain=domain.to_dict())
    (out / CARD_NAME).write_text(card.to_json() + "\n")
    log(f"training domain of {domain.n_rois} ROIs written to {out / CARD_NAME}: "
        f"{json.dumps(domain.to_dict())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
