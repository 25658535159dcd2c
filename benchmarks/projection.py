"""A hospital-sized batch: 1,000 standard scans, projected from a measured run of 50 or more.

Standard scan: 512 x 512 x 300 voxels at 0.7 x 0.7 x 1.0 mm, three nodules, a DICOM series
and a NIfTI mask (the synthetic phantom of ``benchmarks/pipeline.py``).  ``--scans N`` of them
(default 50; generated once into ``--work``, reused) are scored with the demo model by
``score_folder`` twice, into fresh results folders:

* **local pool**: ``workers=2`` processes on this machine (``discovery score --workers 2``);
* **Dask**: a ``distributed.LocalCluster`` of 2 single-threaded worker processes on this
  machine (``discovery score --dask ADDRESS`` against a cluster; the same code path).

Measured per run: wall time, seconds until the first case is stored, the steady rate (cases
stored after the first round, per hour), seconds after the last case (clustering, the causal
check, the tables), the results folder's size on disk, and the peak resident memory of the
whole process tree (this process and every descendant, sampled every 0.2 s from ``/proc``).

Projection to 1,000 scans (``--project``): start-up and first round as measured, the rest at
the steady rate, and the step after the last case scaled linearly with the number of scans
(the causal check re-scores case by case; clustering 50 x 20 regions is a small part of it):
an estimate, stated as one.  Disk scales with the scans; the memory peak does not (each
worker holds one scan at a time).

Usage: ``python benchmarks/projection.py [--scans 50] [--work DIR] [--project 1000]
[--json FILE] [--skip-dask]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_tools.synthetic import BENCHMARK_GEOMETRY, SyntheticConfig, generate_cohort  # noqa: E402
from discovery.batch.score import score_folder  # noqa: E402


def _tree_rss_mib(root: int) -> float:
    """Resident memory (MiB) of *root* and all its descendants, from /proc."""
    parents: dict[int, int] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as fh:
                fields = dict(line.split(":", 1) for line in fh if ":" in line)
        except OSError:
            continue
        pid = int(entry)
        parents[pid] = int(fields.get("PPid", "0").strip())
        rss[pid] = int(fields.get("VmRSS", "0 kB").split()[0]) if "VmRSS" in fields else 0
    tree, todo = {root}, [root]
    while todo:
        p = todo.pop()
        for child, parent in parents.items():
            if parent == p and child not in tree:
                tree.add(child)
                todo.append(child)
    return sum(rss.get(p, 0) for p in tree) / 1024.0


class _PeakSampler:
    def __init__(self):
        self.peak, self._stop = 0.0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, _tree_rss_mib(os.getpid()))
            self._stop.wait(0.2)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def _folder_mib(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2 ** 20


def _cohort(work: Path, n: int) -> tuple[Path, float]:
    cohort = work / f"standard-{n}"
    if (cohort / "truth.json").is_file():
        return cohort, float("nan")
    shutil.rmtree(cohort, ignore_errors=True)
    cfg = SyntheticConfig(fixed_geometry=BENCHMARK_GEOMETRY, nodules_per_case=(3, 3))
    t0 = time.perf_counter()
    generate_cohort(cohort, n_cases=n, seed=21, config=cfg, workers=2)
    return cohort, time.perf_counter() - t0


def _run(label: str, cohort: Path, out: Path, **options) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    stamps: list[float] = []
    t0 = time.perf_counter()
    with _PeakSampler() as peak:
        summary = score_folder(cohort, out, labels=cohort / "truth.csv",
                               progress=lambda d, t, c, s=stamps: s.append(time.perf_counter()),
                               **options)
    wall = time.perf_counter() - t0
    first_round = 2                      # one case per worker
    steady = stamps[first_round - 1:]
    rate_h = (3600.0 * (len(steady) - 1) / (steady[-1] - steady[0])
              if len(steady) > 2 else float("nan"))
    return {"run": label, "scans": summary.n_cases, "failed": summary.n_failed,
            "wall_s": wall, "to_first_s": stamps[0] - t0,
            "first_round_s": stamps[first_round - 1] - t0,
            "after_last_s": t0 + wall - stamps[-1],
            "scans_per_hour_steady": rate_h, "scans_per_hour": 3600.0 * summary.n_cases / wall,
            "disk_mib": _folder_mib(out), "peak_rss_mib": peak.peak}


def _project(row: dict, n: int) -> dict:
    measured = row["scans"]
    rest = (n - 2) / row["scans_per_hour_steady"] * 3600.0
    after = row["after_last_s"] * n / measured
    hours = (row["first_round_s"] + rest + after) / 3600.0
    return {"run": row["run"], "scans": n, "hours": hours, "scans_per_hour": n / hours,
            "disk_gib": row["disk_mib"] / measured * n / 1024.0,
            "peak_rss_mib": row["peak_rss_mib"]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scans", type=int, default=50)
    p.add_argument("--work", default=str(Path(__file__).resolve().parent / ".cache" / "projection"))
    p.add_argument("--project", type=int, default=1000)
    p.add_argument("--skip-dask", action="store_true")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    cohort, gen_s = _cohort(work, args.scans)
    rows = [_run("local pool, 2 workers", cohort, work / "results-pool", workers=2)]
    if not args.skip_dask:
        from distributed import LocalCluster

        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                          dashboard_address=None) as cluster:
            rows.append(_run("Dask LocalCluster, 2 workers x 1 thread", cohort,
                             work / "results-dask", scheduler=cluster))
    projected = [_project(r, args.project) for r in rows]
    print(f"{args.scans} standard scans (512 x 512 x 300, 3 nodules), {os.cpu_count()} cores, "
          f"Python {platform.python_version()}; generated in {gen_s:.0f} s (nan: reused)\n")
    print("| run | scans | wall s | s to first case | steady scans / hour | s after the last "
          "case | results on disk (MiB) | MiB per scan | peak RSS, process tree (MiB) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['run']} | {r['scans']} | {r['wall_s']:.0f} | {r['to_first_s']:.1f} | "
              f"{r['scans_per_hour_steady']:.0f} | {r['after_last_s']:.1f} | {r['disk_mib']:.0f} | "
              f"{r['disk_mib'] / r['scans']:.1f} | {r['peak_rss_mib']:.0f} |")
    print(f"\nProjected to {args.project} standard scans on this machine:\n")
    print("| run | hours | scans / hour | disk (GiB) | peak RSS (MiB) |\n|---|---:|---:|---:|---:|")
    for q in projected:
        print(f"| {q['run']} | {q['hours']:.1f} | {q['scans_per_hour']:.0f} | "
              f"{q['disk_gib']:.1f} | {q['peak_rss_mib']:.0f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"measured": rows, "projected": projected,
                                               "generate_s": gen_s}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
