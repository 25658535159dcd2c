"""Where a results store keeps its tables: SQLite in the results folder, or PostgreSQL.

The default is one SQLite file, ``RESULTS/discovery.sqlite``.  ``discovery score --store
postgresql://user@host:port/database`` keeps the same tables on a PostgreSQL server instead
(for groups whose reviewers work from several machines); the per-case arrays, CSVs and
reports stay in the results folder either way.  Scoring into PostgreSQL writes
``RESULTS/store.json``, which names the database (the URL **without its password**) and the
results' identity, so that every later command given the results folder (``report``,
``sanity``, ``app``) finds the same tables.  A password comes from the URL given to
``score`` (used, never written), or from libpq's usual places for the later commands:
``PGPASSWORD``, ``~/.pgpass`` or a service file.

One database (or one schema, chosen with libpq's ``options=-csearch_path=NAME`` URL
parameter) holds one results folder's tables: the store refuses a database that already
holds another folder's results (``meta.results_id`` against ``store.json``).

This module hides the differences between the two: parameter marks (``?`` here, ``%s`` for
psycopg), column types (PostgreSQL's ``REAL`` is single precision, so ``DOUBLE PRECISION``;
text compared byte-wise with ``COLLATE "C"`` so that ``ORDER BY`` agrees with SQLite), the
write lock (SQLite's ``BEGIN IMMEDIATE``; a transaction-scoped advisory lock on PostgreSQL,
so that writers queue as they do on SQLite) and how a table's existence is checked.
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable
from urllib.parse import urlsplit

import pandas as pd

from data_tools.files import atomic_path

__all__ = ["Backend", "StoreError", "SchemaMismatch", "resolve_backend", "redact_url", "store_exists",
           "POINTER_NAME", "SQLITE_NAME"]

SQLITE_NAME = "discovery.sqlite"
POINTER_NAME = "store.json"
_PG_SCHEMES = ("postgresql", "postgres")
#: Key of the advisory lock that serialises writers on PostgreSQL (any fixed 64-bit number).
_WRITE_LOCK = 0x6469736376727931


class StoreError(ValueError):
    """The results store cannot be opened as asked; the message says what was found and what
    to do."""


class SchemaMismatch(StoreError):
    """The results store was written by a version of the tool with another table schema:
    score the same input into a new results folder."""


def redact_url(url: str) -> str:
    """*url* without its password (in the authority or as a ``password`` query parameter);
    everything else kept as written.

    >>> redact_url("postgresql://ann:secret@db.example:5432/results?sslmode=require")
    'postgresql://ann@db.example:5432/results?sslmode=require'
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    cut = min([i for i in (rest.find("/"), rest.find("?"), rest.find("#")) if i >= 0],
              default=len(rest))
    authority, tail = rest[:cut], rest[cut:]
    if "@" in authority:
        userinfo, host = authority.rsplit("@", 1)
        authority = f"{userinfo.split(':', 1)[0]}@{host}"
    path, qmark, query = tail.partition("?")
    query, hash_, fragment = query.partition("#")
    if qmark:
        kept = [p for p in query.split("&") if p.split("=", 1)[0].lower() != "password"]
        query = "&".join(kept)
        qmark = "?" if query else ""
    return f"{scheme}://{authority}{path}{qmark}{query}{hash_}{fragment}"


class Connection:
    """One database connection with the few operations the store uses, in SQLite's
    dialect (``?`` parameter marks) whatever the backend."""

    def __init__(self, raw: Any, kind: str):
        self.raw = raw
        self.kind = kind

    def _sql(self, sql: str) -> str:
        return sql.replace("?", "%s") if self.kind == "postgresql" else sql

    def execute(self, sql: str, params: Iterable[Any] = ()):
        params = tuple(params)
        if self.kind == "postgresql":
            return self.raw.execute(self._sql(sql), params or None)
        return self.raw.execute(sql, params)

    def executemany(self, sql: str, rows: Iterable[Iterable[Any]]) -> None:
        rows = [tuple(r) for r in rows]
        if not rows:
            return
        if self.kind == "postgresql":
            with self.raw.cursor() as cur:
                cur.executemany(self._sql(sql), rows)
        else:
            self.raw.executemany(sql, rows)

    def frame(self, sql: str, params: Iterable[Any] = ()) -> pd.DataFrame:
        """The rows of a query as a DataFrame (what ``pandas.read_sql_query`` returns)."""
        cur = self.execute(sql, params)
        columns = [d[0] for d in cur.description]
        return pd.DataFrame.from_records(cur.fetchall(), columns=columns, coerce_float=True)

    def begin_write(self) -> None:
        """Start a write transaction that waits for (and then excludes) other writers."""
        if self.kind == "postgresql":
            self.raw.execute("BEGIN")
            self.raw.execute("SELECT pg_advisory_xact_lock(%s)", (_WRITE_LOCK,))
        else:
            self.raw.execute("BEGIN IMMEDIATE")

    def commit(self) -> None:
        self.raw.execute("COMMIT")

    def rollback(self) -> None:
        self.raw.execute("ROLLBACK")

    def has_table(self, name: str) -> bool:
        if self.kind == "postgresql":
            return self.raw.execute("SELECT to_regclass(%s) IS NOT NULL", (name,)).fetchone()[0]
        return self.raw.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                                (name,)).fetchone() is not None

    def script(self, sql: str) -> None:
        """Run several ``;``-separated statements without parameters, in one transaction."""
        if self.kind == "postgresql":
            self.begin_write()  # concurrent CREATE TABLE IF NOT EXISTS can collide otherwise
            try:
                self.raw.execute(sql)
            except BaseException:
                self.rollback()
                raise
            self.commit()
        else:
            self.raw.executescript(sql)

    def close(self) -> None:
        self.raw.close()


@dataclass(frozen=True)
class Backend:
    """Where the tables are: ``kind`` ``"sqlite"`` (``target`` the file) or ``"postgresql"``
    (``target`` the URL as given, password included: kept in memory only); ``label`` is what
    messages show (the file name, or the URL without password)."""

    kind: str
    target: str
    label: str

    # -- dialect -----------------------------------------------------------------------
    @property
    def text(self) -> str:
        return 'TEXT COLLATE "C"' if self.kind == "postgresql" else "TEXT"

    @property
    def real(self) -> str:
        return "DOUBLE PRECISION" if self.kind == "postgresql" else "REAL"

    @property
    def integer(self) -> str:
        return "BIGINT" if self.kind == "postgresql" else "INTEGER"

    @property
    def serial_key(self) -> str:
        """An auto-numbered integer primary key column type."""
        return ("BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY" if self.kind == "postgresql"
                else "INTEGER PRIMARY KEY AUTOINCREMENT")

    def connect(self) -> Connection:
        if self.kind == "sqlite":
            con = sqlite3.connect(self.target, timeout=30.0, isolation_level=None)
            con.execute("PRAGMA journal_mode=WAL")
            con.execute("PRAGMA busy_timeout=30000")
            con.execute("PRAGMA foreign_keys=ON")
            return Connection(con, "sqlite")
        try:
            import psycopg
        except ImportError as exc:  # a dependency; only a broken install lacks it
            raise StoreError(
                f"the results store is on PostgreSQL ({self.label}) but the psycopg package is "
                "not installed; install it with `pip install 'psycopg[binary]'`") from exc
        try:
            con = psycopg.connect(self.target, autocommit=True, connect_timeout=10,
                                  application_name="discovery")
        except psycopg.OperationalError as exc:
            detail = " ".join(str(exc).split())
            raise StoreError(
                f"cannot connect to the results database {self.label}: {detail}. Check that "
                "the server is running and reachable; a password is read from the URL given "
                "to `discovery score --store`, PGPASSWORD or ~/.pgpass (it is never written "
                "into the results folder)") from None
        return Connection(con, "postgresql")


def _pointer(results_dir: Path) -> dict[str, Any] | None:
    path = results_dir / POINTER_NAME
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("backend") != "postgresql" or not str(data.get("url", "")).strip():
            raise ValueError("no PostgreSQL URL in it")
    except (ValueError, OSError) as exc:
        raise StoreError(f"the results folder's {POINTER_NAME} cannot be read ({exc}); it "
                         "should name the PostgreSQL database that holds the results") from None
    return data


def resolve_backend(results_dir: str | Path, url: str | None = None, *,
                    create: bool = True) -> tuple[Backend, dict[str, Any] | None]:
    """Which backend holds the tables of *results_dir*, and its ``store.json`` (or None).

    Parameters
    ----------
    results_dir : path
        The results folder.
    url : str, optional
        A PostgreSQL URL (``postgresql://user[:password]@host[:port]/database[?...]``) to keep
        the tables in; None: what the folder already uses (``store.json``), else SQLite.
    create : bool
        False: the store must exist already.

    Raises
    ------
    StoreError
        An URL that is not PostgreSQL's, or one that disagrees with what the folder uses.
    FileNotFoundError
        ``create=False`` and the folder holds no results store.
    """
    root = Path(results_dir)
    sqlite_path = root / SQLITE_NAME
    pointer = _pointer(root)
    if url is not None:
        url = str(url).strip()
        scheme = urlsplit(url).scheme.lower()
        if scheme not in _PG_SCHEMES:
            raise StoreError(
                "--store takes a PostgreSQL URL such as postgresql://user@host:5432/database; "
                f"received {redact_url(url)!r}. Without --store the results go to "
                f"{SQLITE_NAME} in the results folder")
        label = redact_url(url)
        if sqlite_path.is_file():
            raise StoreError(
                f"this results folder keeps its tables in {SQLITE_NAME}; received --store "
                f"{label}. Score into a new results folder to use PostgreSQL")
        if pointer is not None and redact_url(pointer["url"]) != label:
            raise StoreError(
                f"this results folder keeps its tables in {redact_url(pointer['url'])}; received "
                f"--store {label}. Give the same URL, or score into a new results folder")
        return Backend("postgresql", url, label), pointer
    if pointer is not None:
        if sqlite_path.is_file():
            raise StoreError(f"the results folder has both {SQLITE_NAME} and {POINTER_NAME}; "
                             f"remove the one that is not in use")
        return Backend("postgresql", str(pointer["url"]), redact_url(str(pointer["url"]))), pointer
    if not create and not sqlite_path.is_file():
        raise FileNotFoundError(
            f"no results store ({SQLITE_NAME} or {POINTER_NAME}) in the results folder; run "
            "`discovery score` first")
    return Backend("sqlite", str(sqlite_path), SQLITE_NAME), None


def store_exists(results_dir: str | Path) -> bool:
    """Whether *results_dir* holds a results store (SQLite file or ``store.json``)."""
    root = Path(results_dir)
    return (root / SQLITE_NAME).is_file() or (root / POINTER_NAME).is_file()


def write_pointer(results_dir: str | Path, backend: Backend, results_id: str,
                  schema_version: int) -> None:
    """Write ``store.json`` (atomically, :func:`data_tools.files.atomic_path`): the database
    URL without password and the results' identity."""
    root = Path(results_dir)
    data = {"backend": backend.kind, "url": backend.label, "results_id": results_id,
            "schema_version": schema_version}
    with atomic_path(root / POINTER_NAME) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def new_results_id() -> str:
    return uuid.uuid4().hex
