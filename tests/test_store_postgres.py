"""The results store on PostgreSQL (``--store postgresql://...``, discovery.store.backends).

Against a real server started on loopback for the session (``tests/_postgres.py``; skipped
where PostgreSQL is not installed, a failure in CI where ``DISCOVERY_REQUIRE_POSTGRES=1``).
The same results written to SQLite and to PostgreSQL read back as identical DataFrames; a
scored cohort gives byte-identical CSVs; later commands and the app find the database through
``store.json``, which never holds the password.  The kill-and-resume test
(tests/test_batch_resume.py) and the eight-writer test (tests/test_store_concurrency.py) also
run on PostgreSQL.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from conftest import build_tiny_results
from discovery.store.tables import ResultsStore, StoreError
from discovery.store.backends import redact_url

REPO = Path(__file__).resolve().parents[1]


def _with_password(url: str, password: str) -> str:
    scheme, rest = url.split("://", 1)
    user, host = rest.split("@", 1)
    return f"{scheme}://{user}:{password}@{host}"


def _frames(store: ResultsStore) -> dict[str, pd.DataFrame]:
    cases = store.cases().drop(columns=["scored_at"])
    reviews = store.reviews().drop(columns=["updated_at"])
    audit = store.audit().drop(columns=["at", "id"])
    meta = {k: v for k, v in store.meta().items() if k != "results_id"}
    return {"findings": store.findings(), "regions": store.regions(), "clusters": store.clusters(),
            "cases": cases, "labels": store.labels(), "reviews": reviews, "audit": audit,
            "meta": pd.DataFrame([meta])}


def test_redact_url_drops_the_password_only():
    assert redact_url("postgresql://ann:s3cret@db:5432/res?sslmode=require&password=x") == \
        "postgresql://ann@db:5432/res?sslmode=require"
    assert redact_url("postgresql://ann@db/res") == "postgresql://ann@db/res"
    assert redact_url("postgresql:///res?host=/run/pg&password=x") == "postgresql:///res?host=/run/pg"
    assert redact_url("postgres://a:b:c@h?password=x") == "postgres://a@h"


def test_same_results_read_back_identically_from_sqlite_and_postgres(tmp_path, pg_url):
    lite = build_tiny_results(tmp_path / "sqlite")
    pg = build_tiny_results(tmp_path / "pg", url=pg_url)
    stores = [ResultsStore(lite, create=False), ResultsStore(pg, create=False)]
    assert [s.backend.kind for s in stores] == ["sqlite", "postgresql"]
    for s in stores:
        s.set_labels(pd.DataFrame({"case_id": ["case-B", "case-A"], "nodule_id": ["n1", "n1"],
                                   "malignant": [0, 1]}))
        s.set_meta(note="naïve ünïcode ✓", threshold=0.5)
        for verdict in ("partly", "on the tumour"):
            s.save_review("nodule", "case-A/n1", "dr. a", verdict, "note 'quoted' ?")
        s.save_review("cluster", "0", "dr. b", "known sign")
    a, b = (_frames(s) for s in stores)
    for name in a:
        pd.testing.assert_frame_equal(a[name], b[name], check_dtype=True, obj=name)
    # values survive exactly: doubles (not PostgreSQL's single-precision REAL), NaN as NULL
    assert b["findings"].loc[b["findings"]["case_id"] == "case-A", "probability"].item() == 0.83
    assert b["audit"]["old_verdict"].tolist()[1] == "partly"
    assert not (pg / "discovery.sqlite").exists()
    for s in stores:
        s.close()


def test_pointer_names_the_database_without_password(tmp_path, pg_url):
    url = _with_password(pg_url, "s3cret-pw")  # the test server trusts loopback: any password
    out = build_tiny_results(tmp_path / "res", url=url)
    pointer = json.loads((out / "store.json").read_text())
    assert pointer["url"] == pg_url and pointer["backend"] == "postgresql"
    assert "s3cret-pw" not in (out / "store.json").read_text()
    store = ResultsStore(out, create=False)  # found through store.json
    assert store.location == pg_url and len(store.findings()) == 3
    store.close()
    # the same URL again is fine, another one is refused before anything is written
    ResultsStore(out, url=url).close()
    with pytest.raises(StoreError, match="keeps its tables in postgresql://"):
        ResultsStore(out, url=pg_url.rsplit("/", 1)[0] + "/elsewhere")


def test_a_database_holding_another_folders_results_is_refused(tmp_path, pg_url):
    build_tiny_results(tmp_path / "first", url=pg_url)
    with pytest.raises(StoreError, match="holds the tables of another results folder"):
        ResultsStore(tmp_path / "second", url=pg_url)
    assert not (tmp_path / "second" / "store.json").exists()


def test_clear_errors_for_wrong_urls_and_unreachable_servers(tmp_path, tiny_results):
    with pytest.raises(StoreError, match="takes a PostgreSQL URL.*mysql://u@h/db"):
        ResultsStore(tmp_path / "a", url="mysql://u:pw@h/db")
    with pytest.raises(StoreError, match="keeps its tables in discovery.sqlite"):
        ResultsStore(tiny_results, url="postgresql://u@127.0.0.1/db")
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"postgresql://ann:topsecret@127.0.0.1:{port}/results"
    with pytest.raises(StoreError) as excinfo:
        ResultsStore(tmp_path / "b", url=url)
    message = str(excinfo.value)
    assert f"cannot connect to the results database postgresql://ann@127.0.0.1:{port}/results" \
        in message and "topsecret" not in message
    assert not (tmp_path / "b" / "store.json").exists()


def test_missing_tables_on_an_empty_database_are_reported(tmp_path, pg_url):
    from discovery.store.backends import write_pointer, Backend

    (tmp_path / "res").mkdir()
    write_pointer(tmp_path / "res", Backend("postgresql", pg_url, pg_url), "abc", 7)
    with pytest.raises(StoreError, match="holds no results tables"):
        ResultsStore(tmp_path / "res", create=False)


@pytest.mark.slow
def test_scoring_into_postgres_writes_the_same_tables_as_sqlite(tmp_path, pg_url):
    """The CLI end to end: score, re-run (all skipped, from the manifest on the server),
    report and the app page, all with the tables on PostgreSQL."""
    from test_batch_resume import N_CASES, _case, _save_model

    cohort = tmp_path / "cohort"
    for i in range(4):
        _case(cohort / f"CASE_{i}", i)
    model = _save_model(tmp_path / "model", 3)
    url = _with_password(pg_url, "pw-in-url")

    def score(out: Path, *extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "discovery.cli", "score", str(cohort),
                               "--out", str(out), "--model", str(model), *extra],
                              cwd=REPO, capture_output=True, text=True, timeout=600)

    lite, pg = tmp_path / "lite", tmp_path / "pg"
    first = [score(lite), score(pg, "--store", url)]
    assert [r.returncode for r in first] == [0, 0], first[1].stderr
    compact = "".join(first[1].stdout.split())  # rich wraps long lines
    assert f"tablesin{pg_url}" in compact and "pw-in-url" not in compact + first[1].stderr
    for name in ("findings.csv", "patterns.csv"):
        assert (pg / name).read_bytes() == (lite / name).read_bytes(), name
    assert not (pg / "discovery.sqlite").exists()

    again = score(pg)  # no --store: store.json says where the tables are
    assert again.returncode == 0, again.stderr
    assert "4 skipped" in " ".join(again.stdout.split())

    report = subprocess.run([sys.executable, "-m", "discovery.cli", "report", str(pg),
                             "--format", "csv", "--out", str(tmp_path / "export.csv")],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert report.returncode == 0, report.stderr
    exported = pd.read_csv(tmp_path / "export.csv")
    assert len(exported) == len(pd.read_csv(lite / "findings.csv")) and N_CASES > 4

    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(REPO / "app" / "views" / "cases.py"), default_timeout=60)
    at.session_state["results_dir"] = str(pg)
    at.run(timeout=60)
    assert not at.exception and not at.error
    shown = at.dataframe[0].value
    assert len(shown) == len(exported)
