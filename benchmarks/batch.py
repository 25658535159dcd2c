"""Batch throughput of ``discovery score``: scans per minute with 1 and 2 worker processes.

One synthetic cohort (``discovery sample``: DICOM series + NIfTI masks, default 6 cases,
seed 7) is scored with the demo model (or ``--model``) into a fresh results folder per row:
``workers=1`` (in the calling process) and ``workers=2`` (a ``spawn`` pool; its start-up,
each worker importing torch and loading the model, is part of the time).  A last row re-runs
``workers=1`` into the first folder, where every case is unchanged and skipped: the cost of
hashing the inputs, re-clustering and rewriting the tables.  Wall time covers the whole
``score_folder`` call (model load, case discovery, clustering and the causal check, tables).
Two more columns: seconds until the first case is stored (for the pool: worker start-up), and
the steady rate (cases stored after the first round of one case per worker, per minute from
the end of that round to the last case).
The findings/patterns tables of all runs are compared byte for byte.

Usage: ``python benchmarks/batch.py [--cases N] [--model DIR] [--json FILE]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_tools.synthetic import generate_cohort  # noqa: E402
from discovery.batch import score_folder  # noqa: E402

TABLES = ("findings.csv", "patterns.csv")


def _tables(folder: Path) -> dict[str, bytes]:
    return {name: (folder / name).read_bytes() for name in TABLES}


def run(n_cases: int, seed: int, model_dir: str | None) -> tuple[list[dict], dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cohort = Path(tmp) / "cohort"
        t0 = time.perf_counter()
        generate_cohort(cohort, n_cases=n_cases, seed=seed)
        gen_s = time.perf_counter() - t0
        tables = {}
        for label, workers, out in (("1 worker", 1, "w1"), ("2 workers", 2, "w2"),
                                    ("1 worker, re-run (all skipped)", 1, "w1")):
            stamps: list[float] = []
            t0 = time.perf_counter()
            summary = score_folder(cohort, Path(tmp) / out, model_dir=model_dir,
                                   workers=workers,
                                   progress=lambda d, t, c, s=stamps: s.append(time.perf_counter()))
            seconds = time.perf_counter() - t0
            scored = summary.n_cases - summary.n_skipped
            # steady state: cases stored after the first round (one per worker), per minute
            # from the end of that round (pool start-up, model load, clustering and tables
            # left out)
            steady = stamps[summary.n_skipped:]
            k = workers - 1
            after_first = (60.0 * (len(steady) - 1 - k) / (steady[-1] - steady[k])
                           if len(steady) > k + 2 else float("nan"))
            rows.append({"run": label, "workers": workers, "cases": summary.n_cases,
                         "scored": scored, "skipped": summary.n_skipped,
                         "failed": summary.n_failed, "seconds": seconds,
                         "scans_per_minute": 60.0 * summary.n_cases / seconds,
                         "scans_per_minute_after_first": after_first,
                         "seconds_to_first_case": (steady[0] - t0) if steady else float("nan")})
            tables[label] = _tables(Path(tmp) / out)
    identical = len({tuple(t.values()) for t in tables.values()}) == 1
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    env = {"python": platform.python_version(), "machine": platform.machine(),
           "cpu_count": os.cpu_count(), "load_average_1min_at_end": round(load, 2),
           "omp_num_threads": os.environ.get("OMP_NUM_THREADS", ""), "n_cases": n_cases,
           "seed": seed, "generate_seconds": round(gen_s, 2),
           "tables_identical": identical}
    return rows, env


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", type=int, default=6)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--model", default=None, help="model folder (default: the demo model)")
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = p.parse_args()
    rows, env = run(args.cases, args.seed, args.model)
    print(f"{env['n_cases']} synthetic cases (seed {env['seed']}), {env['cpu_count']} CPU cores, "
          f"load average {env['load_average_1min_at_end']} at the end; tables identical across "
          f"runs: {env['tables_identical']}")
    print("| run | cases scored | skipped | seconds | scans / minute | s to first case | "
          "steady scans / minute |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['run']} | {r['scored']} | {r['skipped']} | {r['seconds']:.1f} | "
              f"{r['scans_per_minute']:.1f} | {r['seconds_to_first_case']:.1f} | "
              f"{r['scans_per_minute_after_first']:.1f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"environment": env, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
