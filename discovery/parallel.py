"""Local process pools, started the same way everywhere in the tool (batch scoring, training
data generation): forked on Linux, so workers start with torch and the model already loaded;
spawned elsewhere; ``DISCOVERY_START_METHOD`` overrides.  And :func:`thread_map`, for the
array steps whose libraries release the GIL (SciPy's labelling and distance transforms,
NumPy's indexing), so that one scan's analysis can use the cores its process was given."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from typing import TypeVar

_T = TypeVar("_T")
_R = TypeVar("_R")

__all__ = ["START_METHODS", "start_method", "process_pool", "ordered_map", "thread_map"]

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


def process_pool(workers: int, *, initializer: Callable | None = None,
                 initargs: tuple = ()) -> Executor:
    """A :class:`ProcessPoolExecutor` of *workers* processes started by :func:`start_method`,
    each running ``initializer(*initargs)`` first when given."""
    import multiprocessing

    return ProcessPoolExecutor(max_workers=workers,
                               mp_context=multiprocessing.get_context(start_method()),
                               initializer=initializer, initargs=initargs)


def ordered_map(fn: Callable[[_T], _R], items: Iterable[_T], *, workers: int = 1,
                chunksize: int = 1, initializer: Callable | None = None,
                initargs: tuple = ()) -> Iterator[_R]:
    """``fn(x)`` for each of *items*, yielded in their order as they are done: in this process
    when ``workers <= 1``, when there are fewer than two items or when processes do not fork
    (:func:`start_method`: a function that reads state set before the fork finds it only in a
    forked worker); otherwise on up to *workers* forked processes, each running
    ``initializer(*initargs)`` first (one torch thread each, for instance).

    Closing the generator (a loop over it left early, then ``close()``, or
    :func:`contextlib.closing`) cancels the items not started and waits for those running.
    """
    items = list(items)
    if workers <= 1 or len(items) < 2 or start_method() != "fork":
        yield from map(fn, items)
        return
    pool = process_pool(min(workers, len(items)), initializer=initializer, initargs=initargs)
    try:
        yield from pool.map(fn, items, chunksize=chunksize)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


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
