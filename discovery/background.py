"""Work that runs after the review app is up: a results folder's sanity checks, then its report.

The faithfulness checks (``discovery sanity``) take minutes, and a reviewer does not need them
to open the app.  ``discovery app RESULTS --sanity METHODS`` therefore starts them in a
background process (:func:`start`) when the results have none for those methods, and the app
shows their progress (:func:`read_progress`) and then their verdicts without a restart.  When
the checks are done the HTML report is written again, so that it holds them too.

The background process reports through one small JSON file in the results folder,
:data:`PROGRESS_FILE`, written atomically::

    {"state": "running", "stage": "MoRF/LeRF, imputed (gradcam)", "done": 12, "total": 50,
     "methods": ["gradcam", ...], "pid": 4242, "started": 1796470326.0, "updated": ...}

``state`` is ``running``, ``done`` or ``failed`` (with ``message``: the error, which names no
source path -- the checks read only the results folder's own arrays).  A ``running`` file
whose process is gone (the app was stopped with Ctrl-C, say) reads as ``interrupted``; the
next ``discovery app --sanity`` starts the checks again.  The process runs at a lower CPU
priority (``nice`` 10), so the app stays responsive on a small machine.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

from data_tools.files import atomic_path

__all__ = ["PROGRESS_FILE", "read_progress", "write_progress", "needs_sanity", "start", "main"]

log = logging.getLogger(__name__)

#: The progress file of the background checks, in the results folder.
PROGRESS_FILE = "sanity-progress.json"
#: Seconds between two progress writes (the last one is always written).
WRITE_EVERY_S = 1.0


def read_progress(results_dir: str | Path) -> dict | None:
    """The background checks' progress in *results_dir*, or None when none was started.

    Returns
    -------
    dict or None
        The :data:`PROGRESS_FILE` contents; ``state`` is ``"interrupted"`` when the file says
        ``running`` but its process no longer exists.  An unreadable file reads as
        ``{"state": "failed", "message": ...}``.
    """
    path = Path(results_dir) / PROGRESS_FILE
    try:
        progress = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        return {"state": "failed", "message": f"{PROGRESS_FILE} is unreadable ({type(exc).__name__})"}
    if not isinstance(progress, dict):
        return {"state": "failed", "message": f"{PROGRESS_FILE} does not hold a JSON object"}
    if progress.get("state") == "running" and not _alive(progress.get("pid")):
        progress["state"] = "interrupted"
    return progress


def write_progress(results_dir: str | Path, **state) -> None:
    """Write *state* (JSON-serialisable values) as :data:`PROGRESS_FILE`, atomically, with
    ``updated`` set to now (seconds since the epoch)."""
    with atomic_path(Path(results_dir) / PROGRESS_FILE, fsync=False) as tmp:
        tmp.write_text(json.dumps({**state, "updated": time.time()}))


def needs_sanity(results_dir: str | Path, methods: Sequence[str]) -> bool:
    """Whether the background checks should run: some of *methods* has no stored deletion
    rows, and no background process is running on *results_dir* already."""
    from discovery.store.tables import ResultsStore

    progress = read_progress(results_dir)
    if (progress is not None and progress.get("state") == "running"
            and progress.get("pid") != os.getpid()):     # another process runs them
        return False
    store = ResultsStore(results_dir, create=False)
    try:
        have = set(store.sanity()[1]["method"].astype(str))
    finally:
        store.close()
    return not set(methods) <= have


def start(results_dir: str | Path, *, methods: Sequence[str], max_nodules: int | None = 50,
          model_dir: str | Path | None = None,
          report: str | Path | None = None) -> subprocess.Popen | None:
    """Start the sanity checks of *results_dir* in a background process, unless they are
    stored already or running (:func:`needs_sanity`) and the *report* exists.

    The process writes a missing *report* first (a few seconds), then runs the checks that
    are needed, then writes the report again so that it holds them.

    Parameters
    ----------
    results_dir : path
        A results folder written by ``discovery score``.
    methods : sequence of str
        The methods whose maps are checked (``discovery sanity --methods``).
    max_nodules : int or None
        Check a seeded sample of at most this many nodules (None: all).
    model_dir : path, optional
        The tool's model folder the results were scored with (default: the demo model); a
        different model is refused by the checks, and the app shows why.
    report : path, optional
        The HTML report: written first when it is missing, and again when the checks are done.

    Returns
    -------
    subprocess.Popen or None
        The process (its output goes to ``logs/sanity.log`` in the results folder), or None
        when nothing needed to run.
    """
    results_dir = Path(results_dir).resolve()
    report_missing = report is not None and not Path(report).exists()
    if not needs_sanity(results_dir, methods) and not report_missing:
        return None
    cmd = [sys.executable, "-m", "discovery.background", str(results_dir), "--nice",
           "--if-needed", "--methods", ",".join(methods)]
    if max_nodules is not None:
        cmd += ["--max-nodules", str(int(max_nodules))]
    if model_dir is not None:
        cmd += ["--model", str(Path(model_dir).resolve())]
    if report is not None:
        cmd += ["--report", str(Path(report).resolve())]
    logs = results_dir / "logs"
    logs.mkdir(exist_ok=True)
    with open(logs / "sanity.log", "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
    write_progress(results_dir, state="running", stage="starting", done=0, total=0,
                   methods=list(methods), pid=proc.pid, started=time.time())
    return proc


def _alive(pid) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:       # someone else's process: it exists
        return True
    return True


class _Reporter:
    """The ``progress(stage, done, total)`` of :func:`~discovery.batch.sanity.run_sanity`,
    written to the progress file at most every :data:`WRITE_EVERY_S` seconds."""

    def __init__(self, results_dir: Path, methods: list[str]):
        self.results_dir, self.methods = results_dir, methods
        self.started, self.last = time.time(), 0.0

    def __call__(self, stage: str, done: int, total: int, *, force: bool = False,
                 state: str = "running", **extra) -> None:
        now = time.time()
        if force or now - self.last >= WRITE_EVERY_S:
            write_progress(self.results_dir, state=state, stage=stage, done=int(done),
                           total=int(total), methods=self.methods, pid=os.getpid(),
                           started=self.started, **extra)
            self.last = now


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m discovery.background RESULTS --methods M1,M2 [--max-nodules N] [--model DIR]
    [--report FILE]``: the sanity checks with progress in :data:`PROGRESS_FILE`, then the
    report."""
    p = argparse.ArgumentParser(prog="python -m discovery.background", description=main.__doc__)
    p.add_argument("results")
    p.add_argument("--methods", required=True)
    p.add_argument("--max-nodules", type=int, default=None)
    p.add_argument("--report", default=None)
    p.add_argument("--model", default=None)
    p.add_argument("--nice", action="store_true", help="run at a lower CPU priority (nice 10)")
    p.add_argument("--if-needed", action="store_true",
                   help="do nothing when the results hold the checks of every method already")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    results, methods = Path(args.results), [m for m in args.methods.split(",") if m]
    needed = not args.if_needed or needs_sanity(results, methods)
    missing = args.report is not None and not Path(args.report).exists()
    if not needed and not missing:
        log.info("the faithfulness checks of %s are stored already", ", ".join(methods))
        return 0
    if args.nice and hasattr(os, "nice"):
        os.nice(10)                                   # the app first
    report = _Reporter(results, methods)
    try:
        if missing:
            report("writing the report (before the checks)", 0, 0, force=True)
            _write_report(results, args.report)
        n_nodules = 0
        if needed:
            report("loading the model", 0, 0, force=True)
            from discovery.batch.sanity import run_sanity

            n_nodules = run_sanity(results, methods=methods, max_nodules=args.max_nodules,
                                   model_dir=args.model, progress=report).n_nodules
            if args.report:
                report("writing the report", 0, 0, force=True)
                _write_report(results, args.report)
    except Exception as exc:  # noqa: BLE001 -- any failure is recorded for the app to show
        log.exception("background sanity checks failed")
        report("failed", 0, 0, force=True, state="failed",
               message=f"{type(exc).__name__}: {exc}")
        return 1
    report("done", n_nodules, n_nodules, force=True, state="done")
    return 0


def _write_report(results: Path, path: str) -> None:
    from discovery.report.write import write_report

    write_report(results, path, fmt="html")


if __name__ == "__main__":
    raise SystemExit(main())
