"""``score_folder(..., scheduler=...)``: the cases on a Dask distributed cluster (issue 7).

One ``LocalCluster`` of two single-thread worker processes for the module, made with
``distributed.scheduler.allowed-failures = 1`` (a case is given up after its second worker
death) and ``worker-saturation = 1.0`` (a worker holds only the case it runs, so a death
makes no other case suspect).  The cohort, the untrained model and the uninterrupted
one-process reference run are the fixtures of ``test_batch_resume``; every way of scoring
on the cluster must give byte-identical ``findings.csv`` and ``patterns.csv``.  Workers are
killed by a per-case function injected with ``score_folder(_compute=...)`` that calls
``os._exit`` in the worker process, as the kernel's out-of-memory killer would.
"""

from __future__ import annotations

import functools
import logging
import multiprocessing
import multiprocessing.forkserver
import os
import shutil
import socket
import sqlite3
from pathlib import Path

import pytest

dask = pytest.importorskip("dask")
distributed = pytest.importorskip("distributed")

from data_tools.deid import pseudonymous_id  # noqa: E402
from discovery.batch.score import WORKER_KILLED, _work, score_folder  # noqa: E402
from discovery.cli import build_parser  # noqa: E402
from test_batch_resume import (N_CASES, _manifest, _tables, _temp_files,  # noqa: E402,F401
                               cohort, model_dir, reference)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster():
    # worker processes forked from a server that has imported the scoring code: a worker
    # (re)started after a death is ready in about a second instead of re-importing torch
    forkserver = multiprocessing.get_context("forkserver")
    forkserver.set_forkserver_preload(["distributed", "discovery.batch.score"])
    multiprocessing.forkserver.ensure_running()
    with dask.config.set({"distributed.scheduler.allowed-failures": 1,
                          "distributed.scheduler.worker-saturation": 1.0,
                          "distributed.worker.multiprocessing-method": "forkserver"}):
        with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                      dashboard_address=":0", silence_logs=logging.CRITICAL,
                                      env={"OMP_NUM_THREADS": "1"}) as lc:
            yield lc


@pytest.fixture(scope="module")
def client(cluster):
    with distributed.Client(cluster, set_as_default=False) as c:
        yield c


def _store_counts(out: Path) -> tuple[int, int]:
    con = sqlite3.connect(out / "discovery.sqlite")
    try:
        return con.execute("SELECT COUNT(*), COUNT(DISTINCT case_id) FROM cases").fetchone()
    finally:
        con.close()


def _kill_once(marks: str, spec, *args):
    """Per-case function: once two cases are done, the first case to start after them kills
    its worker process (once in the whole run); every call leaves a mark file."""
    marks = Path(marks)
    if len(list(marks.glob("done.*"))) >= 2:
        try:
            fd = os.open(marks / "killed", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            pass
        else:
            os.write(fd, spec.case_id.encode())
            os.close(fd)
            os._exit(1)
    payload = _work(spec, *args)
    (marks / f"done.{spec.case_id}.{os.getpid()}").touch()
    return payload


def _always_kill(victim: str, spec, *args):
    """Per-case function: case *victim* kills every worker process that runs it."""
    if spec.case_id == victim:
        os._exit(1)
    return _work(spec, *args)


def test_cluster_run_writes_the_tables_of_a_one_process_run(reference, cohort, model_dir,
                                                             cluster, tmp_path):
    out = tmp_path / "dask"
    seen = []
    summary = score_folder(cohort, out, model_dir=model_dir, scheduler=cluster.scheduler_address,
                           progress=lambda d, t, c: seen.append(c))
    assert (summary.n_ok, summary.n_no_mask, summary.n_failed) == (5, 1, 1)
    assert summary.failed == reference[1].failed  # the unreadable case, same safe message
    assert summary.n_clusters == reference[1].n_clusters
    assert sorted(seen) == sorted(_manifest(reference[0]))
    assert _tables(out) == _tables(reference[0])
    assert _temp_files(out) == []
    assert sorted(p.name for p in (out / "cases").iterdir()) == sorted(
        p.name for p in (reference[0] / "cases").iterdir())


def test_a_worker_killed_mid_run_every_case_completes_exactly_once(
        reference, cohort, model_dir, client, tmp_path):
    marks = tmp_path / "marks"
    marks.mkdir()
    out = tmp_path / "dask"
    seen = []
    summary = score_folder(cohort, out, model_dir=model_dir, scheduler=client,
                           _compute=functools.partial(_kill_once, str(marks)),
                           progress=lambda d, t, c: seen.append(c))
    victim = (marks / "killed").read_text()  # a worker did die, after two cases were done
    assert victim in seen
    assert sorted(seen) == sorted(set(seen)) == sorted(_manifest(reference[0]))  # once each
    assert _store_counts(out) == (N_CASES, N_CASES)
    assert (summary.n_ok, summary.n_no_mask, summary.n_failed) == (5, 1, 1)
    assert summary.failed == reference[1].failed  # the victim was scored on its retry
    assert len(list(marks.glob(f"done.{victim}.*"))) == 1
    assert {r[3] for c, r in _manifest(out).items() if c == victim} <= {"ok", "no-mask"}
    assert _tables(out) == _tables(reference[0])
    assert client.status == "running"  # a Client passed in is left open


def test_a_case_that_kills_every_worker_is_recorded_failed_and_the_batch_completes(
        cohort, model_dir, client, tmp_path):
    inp = tmp_path / "in"
    for name in ("CASE_0", "CASE_1", "CASE_2"):
        shutil.copytree(cohort / name, inp / name)
    victim = pseudonymous_id("CASE_2")
    summary = score_folder(inp, tmp_path / "out", model_dir=model_dir, scheduler=client,
                           _compute=functools.partial(_always_kill, victim))
    assert (summary.n_cases, summary.n_ok, summary.n_failed) == (3, 2, 1)
    assert summary.failed == [(victim, WORKER_KILLED)]
    assert "Traceback" not in WORKER_KILLED and "/" not in WORKER_KILLED
    manifest = _manifest(tmp_path / "out")
    assert {c: r[3] for c, r in manifest.items()} == {
        victim: "failed", pseudonymous_id("CASE_0"): "ok", pseudonymous_id("CASE_1"): "ok"}


def test_workers_and_scheduler_are_exclusive(tmp_path):
    with pytest.raises(ValueError, match="exclusive"):
        score_folder(tmp_path, tmp_path / "out", workers=2, scheduler="tcp://127.0.0.1:8786")
    assert not (tmp_path / "out").exists()
    with pytest.raises(SystemExit):
        build_parser().parse_args(["score", str(tmp_path), "--out", "o", "--workers", "2",
                                   "--scheduler", "tcp://127.0.0.1:8786"])
    args = build_parser().parse_args(["score", "in", "--out", "o", "--scheduler", "tcp://h:1"])
    assert (args.scheduler, args.workers) == ("tcp://h:1", 1)


def test_an_unreachable_scheduler_is_a_clear_error_before_anything_is_written(tmp_path):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"tcp://127.0.0.1:{port}"
    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):
        with pytest.raises(ConnectionError, match="could not reach the Dask scheduler") as err:
            score_folder(tmp_path, tmp_path / "out", scheduler=address)
    assert address in str(err.value)
    assert not (tmp_path / "out").exists()
