"""Training speed of the demo network by arithmetic and memory layout.

``python benchmarks/training_step.py [--rois N] [--repeat R] [--threads T]``

Times ``discovery.model.train.train_model`` itself on a random cohort of ``N`` ROIs of the
demo card's size (32^3, one channel), for float32 and bfloat16 each in the contiguous layout
(before) and the channels-last 3-D layout (``TrainSettings.memory_format``, the default).
One epoch is the time between the first and second epoch's progress calls: the training
passes over 70 % of the ROIs (batches of 16) plus the validation pass.  The four settings
run in turn, ``R`` rounds, so a change of the machine's pace touches all of them; medians
are printed with the CPU's name, as a Markdown table (docs/benchmarks/discovery.md#channels-last).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from discovery.model.card import ModelCard, default_architecture  # noqa: E402
from discovery.model.train import RoiDataset, TrainSettings, train_model  # noqa: E402

SETTINGS = [(p, m) for p in ("float32", "bfloat16") for m in ("contiguous", "channels_last")]


def _cohort(n: int, seed: int = 0) -> RoiDataset:
    """*n* random ROIs, two per case, half of them with a brighter centre (learnable)."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    x = rng.normal(0.2, 0.05, (n, 1, 32, 32, 32)).astype(np.float32)
    x[:, :, 12:20, 12:20, 12:20] += np.where(y == 1, 0.5, 0.2)[:, None, None, None, None]
    groups = np.arange(n) // 2
    return RoiDataset(x, y.astype(np.int64), groups, [f"case-{i}" for i in range(groups[-1] + 1)],
                      "benchmark")


def epoch_seconds(data: RoiDataset, precision: str, memory_format: str) -> float:
    """Seconds of the second epoch of :func:`train_model` with these settings."""
    stamps = []
    settings = TrainSettings(epochs=2, patience=5, seed=0, val_fraction=0.15, test_fraction=0.15,
                             precision=precision, memory_format=memory_format)
    card = ModelCard(architecture=default_architecture(), gradcam_layer="layer3")
    with tempfile.TemporaryDirectory() as out:
        train_model(data, out, settings=settings, card=card,
                    progress=lambda e, n, h: stamps.append(time.perf_counter()))
    return stamps[1] - stamps[0]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rois", type=int, default=400)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = _cohort(args.rois)
    times = {s: [] for s in SETTINGS}
    for _ in range(args.repeat):
        for s in SETTINGS:
            times[s].append(epoch_seconds(data, *s))
    base = statistics.median(times[("float32", "contiguous")])
    print(f"{platform.processor() or platform.machine()}, {_cpu_name()}, torch "
          f"{torch.__version__}, {args.threads} threads, {args.rois} ROIs, {args.repeat} rounds\n")
    print("| arithmetic | layout | one epoch, s (median; all) | against float32, contiguous |")
    print("|---|---|---:|---:|")
    for (precision, layout), t in times.items():
        med = statistics.median(t)
        runs = ", ".join(f"{v:.2f}" for v in t)
        print(f"| {precision} | {layout} | {med:.2f} ({runs}) | {base / med:.2f}x |")
    return 0


def _cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), or 'unknown CPU'."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


if __name__ == "__main__":
    raise SystemExit(main())
