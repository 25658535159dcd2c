"""Local process pools, started the same way everywhere in the tool (batch scoring, training
data generation): forked on Linux, so workers start with torch and the model already loaded;
spawned elsewhere; ``DISCOVERY_START_METHOD`` overrides."""

from __future__ import annotations

import os
import sys
from concurrent.futures import Executor, ProcessPoolExecutor

__all__ = ["START_METHODS", "start_method", "process_pool"]

#: the start methods ``DISCOVERY_START_METHOD`` may name
START_METHODS = ("fork", "spawn", "forkserver")


def start_method() -> str:
    """How the local pool starts its workers (module docstring): ``DISCOVERY_START_METHOD``
    when set, else ``"fork"`` on Linux and ``"spawn"`` elsewhere."""
    chosen = os.environ.get("DISCOVERY_START_METHOD", "").strip().lower()
    if chosen:
        if chosen not in START_METHODS:
            raise ValueError(f"DISCOVERY_START_METHOD must be one of {', '.join(START_METHODS)}; "
                             f"received {chosen!r}")
        return chosen
    return "fork" if sys.platform.startswith("linux") else "spawn"


def process_pool(workers: int) -> Executor:
    """A :class:`ProcessPoolExecutor` of *workers* processes started by :func:`start_method`."""
    import multiprocessing

    return ProcessPoolExecutor(max_workers=workers,
                               mp_context=multiprocessing.get_context(start_method()))
