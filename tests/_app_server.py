"""Start the review app as a real server for browser tests, and stop it without orphans.

:func:`running_app` starts ``discovery app RESULTS --port P`` (the CLI entry point itself, so
the Streamlit flags are the ones users get: ``--server.headless true``, localhost only) on a
free port, in its own process group, waits until ``/_stcore/health`` answers ``ok`` and
yields the base URL.  On exit it ends the whole process group (the CLI and the Streamlit
server it starts), first with SIGTERM, then SIGKILL.  The server's output goes to a log file
whose tail is put in the error message when the server does not come up.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as resp:
            return resp.status == 200 and resp.read().strip() == b"ok"
    except (urllib.error.URLError, OSError):
        return False


def _stop(proc: subprocess.Popen, *, grace_s: float = 10.0) -> None:
    """SIGTERM, then SIGKILL, to the process group of *proc* (its own session)."""
    if proc.poll() is not None and not _group_alive(proc.pid):
        return
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if proc.poll() is not None and not _group_alive(proc.pid):
                return
            time.sleep(0.1)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def running_app(results: Path, *, log_path: Path, timeout_s: float = 60.0) -> Iterator[str]:
    """Run ``discovery app RESULTS --port P`` until the block ends; yields ``http://127.0.0.1:P``.

    Parameters
    ----------
    results : Path
        Results folder (must hold ``discovery.sqlite``).
    log_path : Path
        File that receives the server's stdout and stderr.
    timeout_s : float
        Seconds to wait for ``/_stcore/health``; raises ``RuntimeError`` with the log tail
        when the server does not answer in time or exits early.
    """
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = dict(os.environ)
    env.pop("DISCOVERY_RESULTS", None)  # the CLI argument, not the shell, says where results are
    env.setdefault("OMP_NUM_THREADS", "1")
    cmd = [sys.executable, "-m", "discovery.cli", "app", str(results), "--port", str(port),
           "--host", "127.0.0.1"]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout_s
        while not _healthy(url):
            if proc.poll() is not None:
                raise RuntimeError(f"the app exited with code {proc.returncode} before answering; "
                                   f"log tail:\n{_tail(log_path)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the app did not answer {url}/_stcore/health within "
                                   f"{timeout_s:.0f} s; log tail:\n{_tail(log_path)}")
            time.sleep(0.25)
        yield url
    finally:
        _stop(proc)


def _tail(path: Path, n: int = 2000) -> str:
    try:
        return path.read_bytes()[-n:].decode("utf-8", "replace")
    except OSError:
        return "(no log)"
