"""Two revisions of the tool timed in one run: ``discovery score`` on a cohort and the review
app's slice step, interleaved, medians; and whether their tables are byte-identical.

The old revision is checked out with ``git worktree`` (detached, in a temporary folder) and
run from there through ``PYTHONPATH``, with the same interpreter and packages as the current
working tree, so only the project's code differs.

* ``score``: wall seconds of ``discovery score COHORT --labels LABELS`` into a fresh results
  folder, start-up included, each revision ``--repeat`` times, alternating which goes first;
  then ``cmp`` of the two revisions' ``findings.csv`` and ``patterns.csv``.
* ``slice step``: the Case page under Streamlit's ``AppTest`` (the real page script, the real
  store of ``--results``): after the first view, the axial slice slider is moved ``--steps``
  times and each rerun is timed (the whole script rerun before ``st.fragment``; the fragment
  after).  Not included: the browser's websocket round trip and image download.

Usage::

    python benchmarks/revisions.py --old ecf7ee7 --cohort demo/cohort \
        --labels demo/cohort/truth.csv --results demo/results --repeat 2 --json out.json
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_SLICE_STEP = r"""
import glob, json, statistics, sys, time
from streamlit.testing.v1 import AppTest
root, results, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
at = AppTest.from_file(root + "/app/views/case.py", default_timeout=120)
at.session_state["results_dir"] = results
t0 = time.perf_counter(); at.run(timeout=120); first = time.perf_counter() - t0
if at.exception:
    raise SystemExit(f"page failed: {at.exception}")
slider = next(s for s in at.slider if str(s.key).startswith("slice_") and str(s.key).endswith("_axial"))
lo, hi, v = slider.min, slider.max, slider.value
times = []
for k in range(steps):
    v = v + 1 if v < hi else lo
    s = next(s for s in at.slider if s.key == slider.key)
    t0 = time.perf_counter(); s.set_value(v).run(timeout=120); times.append(time.perf_counter() - t0)
    if at.exception:
        raise SystemExit(f"page failed: {at.exception}")
print(json.dumps({"first_view_s": first, "step_s": times}))
"""


def _worktree(rev: str, where: Path) -> Path:
    subprocess.run(["git", "worktree", "add", "--detach", str(where), rev], cwd=ROOT,
                   check=True, capture_output=True)
    return where


def _env(root: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(root)}


def _score(root: Path, cohort: Path, labels: Path | None, out: Path) -> float:
    cmd = [sys.executable, "-m", "discovery.cli", "score", str(cohort), "--out", str(out)]
    if labels is not None:
        cmd += ["--labels", str(labels)]
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=root, env=_env(root), check=True, capture_output=True)
    return time.perf_counter() - t0


def _slice_steps(root: Path, results: Path, steps: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:  # the page may write nothing, but copy anyway
        copy = Path(tmp) / "results"
        shutil.copytree(results, copy)
        run = subprocess.run([sys.executable, "-c", _SLICE_STEP, str(root), str(copy), str(steps)],
                             cwd=root, env=_env(root), check=True, capture_output=True, text=True)
    return json.loads(run.stdout.strip().splitlines()[-1])


def _identical(a: Path, b: Path) -> dict[str, bool]:
    return {name: filecmp.cmp(a / name, b / name, shallow=False)
            for name in ("findings.csv", "patterns.csv")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old", required=True, help="git revision to compare with the working tree")
    ap.add_argument("--cohort", type=Path, required=True, help="cohort folder to score")
    ap.add_argument("--labels", type=Path, default=None, help="labels CSV (truth.csv)")
    ap.add_argument("--results", type=Path, required=True, help="scored results for the app")
    ap.add_argument("--repeat", type=int, default=2, help="score runs per revision (default 2)")
    ap.add_argument("--app-repeat", type=int, default=3, help="app runs per revision (default 3)")
    ap.add_argument("--steps", type=int, default=10, help="slider moves per app run (default 10)")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="revisions-"))
    old = _worktree(args.old, tmp / "old")
    revs = {"old": old, "new": ROOT}
    score = {"old": [], "new": []}
    app = {"old": {"first": [], "step": []}, "new": {"first": [], "step": []}}
    try:
        for k in range(args.app_repeat):
            for name in (("old", "new") if k % 2 == 0 else ("new", "old")):
                r = _slice_steps(revs[name], args.results, args.steps)
                app[name]["first"].append(r["first_view_s"])
                app[name]["step"] += r["step_s"]
        for k in range(args.repeat):
            for name in (("old", "new") if k % 2 == 0 else ("new", "old")):
                score[name].append(_score(revs[name], args.cohort, args.labels,
                                          tmp / f"{name}-{k}"))
        same = _identical(tmp / "old-0", tmp / "new-0")
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(old)], cwd=ROOT,
                       capture_output=True)
    med = statistics.median
    print(f"| measure | {args.old} (median) | working tree (median) | new / old |")
    print("|---|---:|---:|---:|")
    rows = [("discovery score, s", med(score["old"]), med(score["new"])),
            ("Case page first view (AppTest), s", med(app["old"]["first"]), med(app["new"]["first"])),
            ("Case page slice step (AppTest rerun), s", med(app["old"]["step"]), med(app["new"]["step"]))]
    for label, a, b in rows:
        print(f"| {label} | {a:.3f} | {b:.3f} | {b / a:.2f} |")
    print(f"score runs: old {[round(x, 1) for x in score['old']]}, "
          f"new {[round(x, 1) for x in score['new']]}; tables byte-identical: {same}")
    if args.json:
        args.json.write_text(json.dumps({"score": score, "app": app, "identical": same,
                                         "old": args.old}, indent=2))
    shutil.rmtree(tmp, ignore_errors=True)
    return 0 if all(same.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
