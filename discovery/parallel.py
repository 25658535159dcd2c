"""Local process pools, started the same way everywhere in the tool (batch scoring, training
data generation): forked on Linux, so workers start with torch and the model already loaded;
spawned elsewhere; ``DISCOVERY_START_METHOD`` overrides.  And :func:`thread_map`, for the
array steps whose libraries release the GIL (SciPy's labelling and distance transforms,
NumPy's indexing), so that one scan's analysis can use the cores its process was given."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from typing import TypeVar

_T = TypeVar("_T")
_R = TypeVar("_R")

__all__ = ["START_METHODS", "start_method", "process_pool", "thread_map"]

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


def thread_map(fn: Callable[[_T], _R], items: Iterable[_T], *, threads: int = 1) -> list[_R]:
    """``[fn(x) for x in items]``, on up to *threads* threads (in this thread when
    ``threads <= 1`` or there is at most one item); the results in the order of *items*.

    Only worth it where *fn* spends its time in code that releases the GIL.  An exception
    of *fn* is raised here, after the other items have finished.
    """
    items = list(items)
    n = min(int(threads), len(items))
    if n <= 1:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(max_workers=n) as pool:
        return list(pool.map(fn, items))
