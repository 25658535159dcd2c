"""Cost of each attribution method relative to one bare forward + backward pass.

For one model (default: the committed demo model) and one batch of ROIs, every method of
``discovery.explain.methods.METHODS`` is timed in the same process and reported as a ratio to

* **F+B**: one forward pass with gradients enabled plus one backward pass of the summed
  target logit to the parameters (``loss.backward()`` as in training), and
* a forward pass alone (no gradients) for scale, and
* **MONAI**: ``monai.visualize.GradCAM`` on a copy of the same model and the same batch, with
  identity post-processing (so it computes the same raw map as ours).

Each time is the median of ``--repeat`` runs after one warm-up run; the ratios are what to
compare across machines, not the seconds.  The ROIs are seeded uniform noise in [0, 1]: the
cost of these networks does not depend on the content.

Usage: ``python benchmarks/explain.py [--model DIR] [--batch N] [--repeat R] [--json FILE]``
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from discovery.explain.methods import IG_STEPS, METHODS, OCCLUSION_STRIDE, OCCLUSION_WINDOW, explain  # noqa: E402
from discovery.model.card import load_model  # noqa: E402


def _median_seconds(fn, repeat: int) -> float:
    fn()  # warm-up (allocator, MKL-DNN kernels)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _passes(method: str, roi: int) -> str:
    if method == "integrated_gradients":
        return f"{IG_STEPS} F + {IG_STEPS} B"
    if method == "occlusion":
        n = ((roi - OCCLUSION_WINDOW) // OCCLUSION_STRIDE + 1) ** 3
        return f"1 + {n} F"
    return "1 F + B to the layer"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model folder (default: the demo model)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--slow-repeat", type=int, default=1,
                    help="repeats for integrated_gradients and occlusion (default 1)")
    ap.add_argument("--json", default=None, help="also write the rows as JSON")
    args = ap.parse_args(argv)

    model, card = load_model(args.model)
    shape = (args.batch, 1, *card.roi_size_vox)
    x = torch.rand(shape, generator=torch.Generator().manual_seed(0))

    def bare():
        model.zero_grad(set_to_none=True)
        with torch.enable_grad():
            model(x)[:, 1].sum().backward()
        model.zero_grad(set_to_none=True)

    from monai.visualize import GradCAM

    monai_cam = GradCAM(nn_module=copy.deepcopy(model), target_layers=card.gradcam_layer,
                        postprocessing=lambda t: t)

    def forward_only():
        with torch.no_grad():
            model(x)

    base = _median_seconds(bare, args.repeat)
    fwd = _median_seconds(forward_only, args.repeat)
    monai = _median_seconds(lambda: monai_cam(x, class_idx=1), args.repeat)
    rows = [{"method": "bare forward + backward", "layer": "-", "passes": "1 F + 1 B",
             "seconds": base, "x_fb": 1.0, "x_monai": base / monai},
            {"method": "forward only (no gradients)", "layer": "-", "passes": "1 F",
             "seconds": fwd, "x_fb": fwd / base, "x_monai": fwd / monai},
            {"method": "MONAI GradCAM", "layer": card.gradcam_layer, "passes": "1 F + 1 B (to every parameter)",
             "seconds": monai, "x_fb": monai / base, "x_monai": 1.0}]
    configs = [(m, None) for m in METHODS] + [("layercam", "layer2")]
    for method, layer in configs:
        slow = method in ("integrated_gradients", "occlusion")
        sec = _median_seconds(lambda: explain(model, x, method=method, layer=layer, target=1),
                              args.slow_repeat if slow else args.repeat)
        rows.append({"method": method, "layer": layer or (card.gradcam_layer if not slow else "input"),
                     "passes": _passes(method, card.roi_size_vox[0]), "seconds": sec,
                     "x_fb": sec / base, "x_monai": sec / monai})

    env = (f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
           f"{torch.get_num_threads()} threads, batch {args.batch} ROIs of {card.roi_size_vox}")
    print(f"Explain benchmark ({env})\n")
    print("| method | layer | passes per ROI | seconds per batch | × F+B | × MONAI GradCAM |")
    print("|---|---|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['method']} | {r['layer']} | {r['passes']} | {r['seconds']:.3f} | "
              f"{r['x_fb']:.2f} | {r['x_monai']:.2f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"environment": env, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
