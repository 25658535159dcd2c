"""Batch throughput of ``discovery score``: scans per minute with 1 and 2 worker processes.

One synthetic cohort (``discovery sample``: DICOM series + NIfTI masks, default 6 cases,
seed 7) is scored with the demo model (or ``--model``) into a fresh results folder per row:
``workers=1`` (in the calling process, torch using every core for the network's layers),
``workers=2`` (the batch's own process pool, one torch thread per worker: forked on Linux,
spawned elsewhere or as ``DISCOVERY_START_METHOD`` says; its start-up, each worker loading
the model (and, when spawned, importing torch and MONAI), is part of the time; the causal
check's re-scoring also runs on the pool) and ``workers=1`` with one torch thread (one core: what one process
does alone, the unit that workers multiply).  A last row re-runs
``workers=1`` into the first folder, where every case is unchanged and skipped: the cost of
hashing the inputs, re-clustering and rewriting the tables.  Wall time covers the whole
``score_folder`` call (model load, case discovery, clustering and the causal check, tables).
Three more columns: seconds until the first case is stored (for the pool: worker start-up),
seconds after the last case is stored (clustering, the causal check and the tables), and
the steady rate (cases stored after the first round of one case per worker, per minute from
the end of that round to the last case).
The findings/patterns tables of all runs are compared byte for byte.

Usage: ``python benchmarks/batch.py [--cases N] [--repeat R] [--model DIR] [--json FILE]``
(``--repeat``: each configuration R times, interleaved; medians).
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

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_tools.synthetic import generate_cohort  # noqa: E402
from discovery.batch.score import score_folder  # noqa: E402
from discovery.parallel import start_method  # noqa: E402

TABLES = ("findings.csv", "patterns.csv")


def _tables(folder: Path) -> dict[str, bytes]:
    return {name: (folder / name).read_bytes() for name in TABLES}


CONFIGS = (("1 worker", 1, None), ("2 workers", 2, None), ("1 worker, 1 torch thread", 1, 1))
RERUN = "1 worker, re-run (all skipped)"


def _score(cohort: Path, out: Path, label: str, workers: int, threads: int | None,
           model_dir: str | None) -> tuple[dict, bytes]:
    stamps: list[float] = []
    t0 = time.perf_counter()
    summary = score_folder(cohort, out, model_dir=model_dir, workers=workers,
                           torch_threads=threads,
                           progress=lambda d, t, c, s=stamps: s.append(time.perf_counter()))
    seconds = time.perf_counter() - t0
    # steady state: cases stored after the first round (one per worker), per minute from the
    # end of that round (pool start-up, model load, clustering and tables left out)
    steady = stamps[summary.n_skipped:]
    k = workers - 1
    after_first = (60.0 * (len(steady) - 1 - k) / (steady[-1] - steady[k])
                   if len(steady) > k + 2 else float("nan"))
    row = {"run": label, "workers": workers, "torch_threads": threads or 0,
           "cases": summary.n_cases, "scored": summary.n_cases - summary.n_skipped,
           "skipped": summary.n_skipped, "failed": summary.n_failed, "seconds": seconds,
           "scans_per_minute": 60.0 * summary.n_cases / seconds,
           "scans_per_minute_after_first": after_first,
           "seconds_to_first_case": (steady[0] - t0) if steady else float("nan"),
           "seconds_after_last_case": (t0 + seconds - stamps[-1]) if stamps else float("nan")}
    return row, b"".join(_tables(out).values())


def run(n_cases: int, seed: int, model_dir: str | None,
        repeat: int = 1) -> tuple[list[dict], list[dict], dict]:
    """Every configuration *repeat* times, interleaved (so that a slow spell of the machine
    hits all of them); returns (median rows, every run's row, environment)."""
    runs: list[dict] = []
    tables: set[bytes] = set()
    with tempfile.TemporaryDirectory() as tmp:
        cohort = Path(tmp) / "cohort"
        t0 = time.perf_counter()
        generate_cohort(cohort, n_cases=n_cases, seed=seed)
        gen_s = time.perf_counter() - t0
        for r in range(repeat):
            for i, (label, workers, threads) in enumerate(CONFIGS):
                row, tab = _score(cohort, Path(tmp) / f"c{i}-r{r}", label, workers, threads,
                                  model_dir)
                runs.append({**row, "repeat": r})
                tables.add(tab)
        row, tab = _score(cohort, Path(tmp) / "c0-r0", RERUN, 1, None, model_dir)
        runs.append({**row, "repeat": 0})
        tables.add(tab)
    medians = []
    for label in [c[0] for c in CONFIGS] + [RERUN]:
        mine = [r for r in runs if r["run"] == label]
        med = {k: (float(np.median([r[k] for r in mine])) if isinstance(v, float) else v)
               for k, v in mine[0].items() if k != "repeat"}
        med["seconds_min"] = min(r["seconds"] for r in mine)
        med["seconds_max"] = max(r["seconds"] for r in mine)
        med["n_runs"] = len(mine)
        medians.append(med)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    env = {"python": platform.python_version(), "machine": platform.machine(),
           "cpu_count": os.cpu_count(), "load_average_1min_at_end": round(load, 2),
           "omp_num_threads": os.environ.get("OMP_NUM_THREADS", ""), "n_cases": n_cases,
           "seed": seed, "repeat": repeat, "generate_seconds": round(gen_s, 2),
           "tables_identical": len(tables) == 1, "start_method": start_method()}
    return medians, runs, env


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", type=int, default=6)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--repeat", type=int, default=1,
                   help="runs of each configuration, interleaved; medians reported (default 1)")
    p.add_argument("--model", default=None, help="model folder (default: the demo model)")
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = p.parse_args()
    rows, runs, env = run(args.cases, args.seed, args.model, args.repeat)
    print(f"{env['n_cases']} synthetic cases (seed {env['seed']}), {env['cpu_count']} CPU cores, "
          f"{env['repeat']} run(s) of each configuration (medians), workers started by "
          f"{env['start_method']}, load average "
          f"{env['load_average_1min_at_end']} at the end; tables identical across runs: "
          f"{env['tables_identical']}")
    print("| run | cases scored | skipped | seconds (median; min-max) | scans / minute | "
          "s to first case | steady scans / minute | s after the last case |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        spread = (f" ({r['seconds_min']:.1f}-{r['seconds_max']:.1f})" if r["n_runs"] > 1 else "")
        print(f"| {r['run']} | {r['scored']} | {r['skipped']} | {r['seconds']:.1f}{spread} | "
              f"{r['scans_per_minute']:.1f} | {r['seconds_to_first_case']:.1f} | "
              f"{r['scans_per_minute_after_first']:.1f} | {r['seconds_after_last_case']:.1f} |")
    one, two, one_thread = rows[0], rows[1], rows[2]
    print(f"2 workers / 1 worker: {two['scans_per_minute'] / one['scans_per_minute']:.2f}x end to "
          f"end, {two['scans_per_minute_after_first'] / one['scans_per_minute_after_first']:.2f}x "
          f"steady; 2 workers / 1 worker with 1 torch thread: "
          f"{two['scans_per_minute'] / one_thread['scans_per_minute']:.2f}x end to end")
    if args.json:
        Path(args.json).write_text(json.dumps({"environment": env, "rows": rows, "runs": runs},
                                              indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
