"""Several reviewers saving verdicts into one ResultsStore at the same time: eight writer
processes (independent interpreters, released together by a start file once all have opened
the store), and eight threads sharing one store object.

Each writer is one reviewer and saves N_WRITES verdicts over N_ITEMS items that every writer
also writes (so reviewers overlap on every item, and each reviewer resubmits each item 2-3
times).  Afterwards: no writer failed, one reviews row per (item, reviewer) holding that
reviewer's last verdict, one audit row per write with a consistent old -> new chain, WAL.
The eight processes run against SQLite and against a PostgreSQL server on loopback
(``tests/_postgres.py``), the store of groups whose reviewers work from several machines.

The writer processes import :mod:`discovery.store.tables` (light: its column lists come from
:mod:`discovery.schema`, so no torch or scikit-learn is imported in the writers).
"""

from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path
import sqlite3
import threading
import time
import traceback

import pytest

N_WRITERS = 8
N_WRITES = 25
N_ITEMS = 10
PAUSE_S = 0.005
CHOICES = ("on the tumour", "partly", "elsewhere", "can't tell")  # store.NODULE_REVIEW_CHOICES


def _plan(writer: int) -> list[tuple[str, str, str]]:
    """The (item_id, verdict, note) writes of one writer, in order."""
    return [(f"case-{(writer + j) % N_ITEMS:02d}/n1", CHOICES[(3 * writer + j) % len(CHOICES)],
             f"w{writer} j{j}") for j in range(N_WRITES)]


def _reviewer(writer: int) -> str:
    return f"reviewer {writer}"


def _write_all(store, writer: int) -> None:
    for item_id, verdict, note in _plan(writer):
        store.save_review("nodule", item_id, _reviewer(writer), verdict, note)
        time.sleep(PAUSE_S)  # no writer finishes all its writes within one time slice


_CHILD = """
import sys, time
from pathlib import Path
sys.path[:0] = [{repo!r}, {tests!r}]
from test_store_concurrency import _write_all
from discovery.store.tables import ResultsStore

store = ResultsStore({root!r}, create=False)
(Path({root!r}) / "ready-{writer}").touch()
go = Path({root!r}) / "go"
deadline = time.monotonic() + 120
while not go.exists():  # every writer starts at the same moment
    if time.monotonic() > deadline:
        sys.exit("no start signal")
    time.sleep(0.002)
_write_all(store, {writer})
store.close()
"""


def _check_store(root) -> None:
    import pandas as pd

    from discovery.store.tables import DB_NAME, ResultsStore

    store = ResultsStore(root, create=False)
    reviews = store.reviews("nodule")
    audit = store.audit()
    # one row per (item, reviewer): resubmissions updated the row
    assert len(reviews) == N_WRITERS * N_ITEMS
    assert not reviews.duplicated(["item_id", "reviewer"]).any()
    # the stored verdict is each reviewer's last one for the item
    expected = {}
    for w in range(N_WRITERS):
        for item_id, verdict, note in _plan(w):
            expected[(item_id, _reviewer(w))] = (verdict, note)
    got = {(r.item_id, r.reviewer): (r.verdict, r.note) for r in reviews.itertuples()}
    assert got == expected
    # the audit trail has exactly every write, each once
    assert len(audit) == N_WRITERS * N_WRITES
    writes = sorted((_reviewer(w), i, v, n) for w in range(N_WRITERS) for i, v, n in _plan(w))
    assert sorted(zip(audit["reviewer"], audit["item_id"], audit["new_verdict"],
                      audit["note"])) == writes
    # per reviewer, the audit keeps the writer's order and a consistent old -> new chain
    for w in range(N_WRITERS):
        mine = audit[audit["reviewer"] == _reviewer(w)].sort_values("id")
        assert mine["note"].tolist() == [n for _, _, n in _plan(w)]
        for _, chain in mine.groupby("item_id"):
            olds = [None if pd.isna(o) else o for o in chain["old_verdict"]]
            assert olds == [None] + chain["new_verdict"].tolist()[:-1]
    # the writers really overlapped: not one writer after the other (7 switches) but interleaved
    order = audit.sort_values("id")["reviewer"].tolist()
    assert sum(a != b for a, b in itertools.pairwise(order)) > N_WRITERS - 1
    kind = store.backend.kind
    store.close()
    if kind == "sqlite":
        con = sqlite3.connect(root / DB_NAME)
        try:
            assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        finally:
            con.close()


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_eight_writer_processes_at_once(backend, tmp_path, request):
    """On PostgreSQL the writers find the database through the folder's store.json."""
    from discovery.store import tables as store

    url = request.getfixturevalue("pg_url") if backend == "postgresql" else None
    store.ResultsStore(tmp_path, url=url).close()  # an empty results store, schema written once
    assert (tmp_path / "store.json").exists() == (backend == "postgresql")
    assert tuple(CHOICES) == store.NODULE_REVIEW_CHOICES
    repo, tests = Path(__file__).resolve().parents[1], Path(__file__).resolve().parent
    procs = [subprocess.Popen(
        [sys.executable, "-c", _CHILD.format(repo=str(repo), tests=str(tests),
                                             root=str(tmp_path), writer=w)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for w in range(N_WRITERS)]
    try:
        deadline = time.monotonic() + 120
        while (sum((tmp_path / f"ready-{w}").exists() for w in range(N_WRITERS)) < N_WRITERS
               and time.monotonic() < deadline and all(p.poll() is None for p in procs)):
            time.sleep(0.01)
        (tmp_path / "go").touch()
        outs = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    failures = {w: err for w, (p, (_, err)) in enumerate(zip(procs, outs)) if p.returncode}
    assert not failures, "\n".join(f"writer {w}:\n{e}" for w, e in failures.items())
    _check_store(tmp_path)


def test_eight_threads_sharing_one_store(tmp_path):
    from discovery.store.tables import ResultsStore

    store = ResultsStore(tmp_path)  # one object; it opens one SQLite connection per thread
    barrier = threading.Barrier(N_WRITERS)
    errors: dict[int, str] = {}

    def run(w: int) -> None:
        try:
            barrier.wait(timeout=60)
            _write_all(store, w)
        except BaseException:  # noqa: BLE001 - collected and asserted below
            errors[w] = traceback.format_exc()
        finally:
            store.close()  # this thread's connection

    threads = [threading.Thread(target=run, args=(w,)) for w in range(N_WRITERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads)
    assert not errors, "\n".join(f"thread {w}:\n{e}" for w, e in errors.items())
    store.close()
    _check_store(tmp_path)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_version_changes_with_every_write_seen_from_another_connection(backend, tmp_path,
                                                                        request):
    """``version()``: the app's cheap "has anything changed?" (a counter in ``meta`` bumped in
    the transaction of every write); reads, opening a store and a rolled-back write leave it."""
    import pandas as pd

    from conftest import build_tiny_results
    from discovery.store.tables import ResultsStore

    url = request.getfixturevalue("pg_url") if backend == "postgresql" else None
    root = build_tiny_results(tmp_path / "results", url=url)
    store, other = ResultsStore(root, create=False), ResultsStore(root, create=False)
    try:
        v0 = other.version()
        assert v0 > 0 and store.version() == v0
        assert "write_count" not in store.meta()
        store.findings(), store.regions(), store.clusters(), store.reviews()
        ResultsStore(root, create=False).close()  # another session opens the store
        assert other.version() == v0
        with pytest.raises(RuntimeError):
            with store.write() as con:
                con.execute("DELETE FROM labels")
                raise RuntimeError("rolled back")
        assert other.version() == v0
        seen = [v0]
        writes = [
            lambda: store.save_review("nodule", "case-A/n1", "ann", "partly"),
            lambda: store.save_review("nodule", "case-A/n1", "ann", "elsewhere"),
            lambda: store.set_meta(note="x"),
            lambda: store.put_case({"case_id": "case-D", "status": "failed", "error": "e"}, [], []),
            lambda: store.set_labels(pd.DataFrame({"case_id": ["case-A"], "nodule_id": ["n1"],
                                                   "malignant": [1]})),
            lambda: store.set_sanity([], []),
        ]
        for write in writes:
            write()
            seen.append(other.version())
        assert seen == sorted(set(seen)), seen  # every write moved it on
    finally:
        store.close()
        other.close()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_regions_of_one_case_or_one_nodule(backend, tmp_path, request):
    import pandas as pd

    from conftest import build_tiny_results
    from discovery.store.tables import REGION_COLUMNS, ResultsStore

    url = request.getfixturevalue("pg_url") if backend == "postgresql" else None
    store = ResultsStore(build_tiny_results(tmp_path / "results", url=url), create=False)
    try:
        every = store.regions()
        assert sorted(every["case_id"]) == ["case-A", "case-B"]
        case_a = store.regions(case_id="case-A")
        assert list(case_a.columns) == REGION_COLUMNS
        assert case_a["region_key"].tolist() == [k for k in every["region_key"]
                                                 if k.startswith("case-A/")]
        one = store.regions(case_id="case-A", nodule_id="n1")
        pd.testing.assert_frame_equal(one, case_a)
        assert store.regions(case_id="case-A", nodule_id="n2").empty
        assert list(store.regions(case_id="case-Z").columns) == REGION_COLUMNS
        with pytest.raises(ValueError, match="case_id"):
            store.regions(nodule_id="n1")
    finally:
        store.close()
