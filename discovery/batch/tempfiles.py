"""Temporary files an interrupted run left in a results folder, and their removal.

Every file of a results folder is written to a temporary name first and renamed when
complete (:func:`data_tools.files.atomic_path`); a run that is killed leaves those behind.
"""

from __future__ import annotations

import logging
import os
import re
import time
from pathlib import Path

__all__ = ["remove_stale_temp_files"]

log = logging.getLogger(__name__)

#: temporary files of :func:`data_tools.files.atomic_path` (``.<name>.<pid>.tmp``: the
#: tables, ``store.json``, ``cases/<case_id>.zarr.zip``) and of earlier versions
#: (``cases/.<case_id>.npz.<pid>.tmp``, ``cases/.<case_id>.<pid>.tmp.npz``, ``.patterns.csv.tmp``)
_TEMP_NAME = re.compile(r"^\..+?(?:\.(\d+))?\.tmp(?:\.npz)?$")
_TEMP_GLOBS = ("cases/.*.zarr.zip.*.tmp", "cases/.*.npz.*.tmp", "cases/.*.tmp.npz",
               ".findings.csv*.tmp",
               ".patterns.csv*.tmp", ".store.json*.tmp")
_TEMP_STALE_S = 15 * 60


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        return True
    except OSError:
        return False
    return True


def remove_stale_temp_files(results_dir: str | Path) -> int:
    """Remove temporary files a killed run left in *results_dir* (``cases/.*.zarr.zip.*.tmp``,
    ``.findings.csv.*.tmp``, ``.patterns.csv.*.tmp``, ``.store.json.*.tmp``, and the
    ``cases/.*.tmp.npz`` of earlier versions); keep those of a running process written in
    the last 15 minutes.  Return how many were removed."""
    root = Path(results_dir)
    candidates = sorted({p for pattern in _TEMP_GLOBS for p in root.glob(pattern)})
    removed = 0
    for path in candidates:
        m = _TEMP_NAME.match(path.name)
        if m is None:
            continue
        try:
            age = time.time() - path.stat().st_mtime
        except OSError:
            continue
        pid = int(m.group(1)) if m.group(1) else None
        if (pid is not None and pid != os.getpid() and _process_alive(pid)
                and age < _TEMP_STALE_S):
            continue
        path.unlink(missing_ok=True)
        removed += 1
    if removed:
        log.info("removed %d temporary file(s) left by an interrupted run", removed)
    return removed
