"""A throw-away PostgreSQL server on loopback for the tests (Debian's ``postgresql`` package).

:func:`start_server` makes a new cluster in a temporary folder (``initdb``), starts it on a
free port of 127.0.0.1 with its socket in that folder, and returns a handle whose ``url(db)``
names a database on it.  As root the server runs as the ``postgres`` user (PostgreSQL refuses
to run as root).  Durability is switched off (``fsync``, ``synchronous_commit``,
``full_page_writes``): the data is thrown away after the tests.

``DISCOVERY_TEST_POSTGRES_URL`` (``postgresql://user@host:port``) uses an existing server
instead: each test then creates and drops a database of its own on it.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

__all__ = ["PostgresServer", "find_binaries", "start_server"]


def find_binaries() -> Path | None:
    """The folder holding ``initdb``, ``pg_ctl`` and ``postgres`` (newest version), or None."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(os.path.realpath(found)).parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    return Path(candidates[-1]).parent if candidates else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class PostgresServer:
    base_url: str  # postgresql://user@127.0.0.1:port
    folder: Path | None = None  # the cluster's folder (None: an existing server)
    bin_dir: Path | None = None
    as_user: str | None = None

    def url(self, database: str) -> str:
        return f"{self.base_url}/{database}"

    def _run(self, *args: str) -> subprocess.CompletedProcess:
        cmd = list(args)
        if self.as_user:
            cmd = ["runuser", "-u", self.as_user, "--", *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120)

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(self.url("postgres"), autocommit=True) as con:
            con.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, name: str) -> None:
        import psycopg

        with psycopg.connect(self.url("postgres"), autocommit=True) as con:
            con.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def stop(self) -> None:
        if self.folder is None:
            return
        self._run(str(self.bin_dir / "pg_ctl"), "-D", str(self.folder / "data"), "-m",
                  "immediate", "-w", "stop")
        shutil.rmtree(self.folder, ignore_errors=True)
        self.folder = None


def start_server() -> PostgresServer:
    """Start a new PostgreSQL cluster on loopback (see the module docstring).

    Raises
    ------
    FileNotFoundError
        No PostgreSQL server binaries on this machine.
    RuntimeError
        ``initdb`` or ``pg_ctl start`` failed (their output in the message).
    """
    existing = os.environ.get("DISCOVERY_TEST_POSTGRES_URL")
    if existing:
        return PostgresServer(existing.rstrip("/"))
    bin_dir = find_binaries()
    if bin_dir is None:
        raise FileNotFoundError("no PostgreSQL server (initdb, pg_ctl) on this machine; on "
                                "Debian: apt-get install postgresql")
    as_user = None
    # a short path: the socket's full name must stay under 107 bytes
    folder = Path(tempfile.mkdtemp(prefix="dpg-", dir="/tmp"))
    if os.geteuid() == 0:
        as_user = "postgres"
        shutil.chown(folder, user=as_user)
    server = PostgresServer("", folder, bin_dir, as_user)
    port = _free_port()
    user = "discovery"
    steps = [
        (str(bin_dir / "initdb"), "-D", str(folder / "data"), "-A", "trust", "-U", user,
         "-E", "UTF8", "--locale=C.UTF-8", "--no-sync"),
        (str(bin_dir / "pg_ctl"), "-D", str(folder / "data"), "-l", str(folder / "log"), "-w",
         "-t", "60", "start", "-o",
         f"-c listen_addresses=127.0.0.1 -p {port} -k {folder} -c fsync=off "
         "-c synchronous_commit=off -c full_page_writes=off -c max_connections=100"),
    ]
    for step in steps:
        done = server._run(*step)
        if done.returncode != 0:
            log = (folder / "log").read_text(errors="replace") if (folder / "log").exists() else ""
            server.stop()
            raise RuntimeError(f"{Path(step[0]).name} failed ({done.returncode}): "
                               f"{done.stdout}{done.stderr}{log}")
    server.base_url = f"postgresql://{user}@127.0.0.1:{port}"
    return server
