"""Where the cases of a batch run: a local process pool, or a Dask distributed cluster.

Used by :func:`discovery.batch.score.score_folder`; both runners take the same per-case function
(``work(spec, *args) -> payload``, module level so that it can be sent to another process)
and yield ``(spec, payload)`` as cases finish, in any order.  They never write results:
the calling process alone writes the store.  A failure of one case becomes a ``failed``
payload through the caller's ``fail(spec, problem)`` (``problem``: the exception, or a
ready message) and the batch goes on.

Local pool (``workers > 1``)
    Worker processes are forked from the calling process where that is safe (Linux: they
    start at once, with torch, MONAI and the model already imported; measured on the
    2-core machine, the first case is stored 3.3 s into a batch instead of 8.7 s with
    spawned workers, which import torch and MONAI again, about 6 s of CPU each) and spawned
    elsewhere (macOS and Windows, where forking a process that has loaded native
    libraries is not safe).  ``DISCOVERY_START_METHOD`` (``fork``, ``spawn`` or
    ``forkserver``) overrides the choice.  At most ``workers`` cases are in flight.  A worker process that dies breaks the pool:
    each case it was running is retried once, alone, in a fresh pool, and recorded with
    :data:`WORKER_DIED` if that worker dies too.

Dask cluster (``scheduler``)
    Every case is submitted at once (``Client.submit(work, spec, ..., key=..., pure=False,
    retries=DASK_RETRIES)``) and results are gathered as they complete.  Only paths and
    settings are sent, not data: the workers read the inputs and the model, and write the
    arrays, through the same paths as the calling process (a shared filesystem, mounted at
    the same place, and the same installed packages).  A worker that dies while scoring a
    case (killed, out of memory, a crash in native code) makes the scheduler run the case
    again on another worker; after ``distributed.scheduler.allowed-failures`` such deaths
    (a setting of the scheduler, default 3) it gives up (``KilledWorker``) and the case is
    recorded with :data:`WORKER_KILLED`.  An exception raised outside the per-case error
    handling (the model cannot be loaded on that worker) is retried ``DASK_RETRIES`` times,
    then recorded with its safe message.  A batch that stops early (an error in the calling
    process, Ctrl-C) cancels its cases that have not finished on the cluster.  A client
    made here from an address is closed at the end; a :class:`distributed.Client` passed
    in is left open (and a :class:`distributed.LocalCluster` passed in left running).
"""

from __future__ import annotations

import contextlib
import logging
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import (
    ALL_COMPLETED,
    FIRST_COMPLETED,
    Executor,
    wait,
)
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from data_tools.layouts import CaseSpec

__all__ = ["WORKER_DIED", "WORKER_KILLED", "DASK_RETRIES", "ExecutorFactory", "run_pool",
           "run_dask", "dask_client"]

log = logging.getLogger(__name__)

Payload = dict[str, Any]
Work = Callable[..., Payload]
Fail = Callable[[CaseSpec, "BaseException | str"], Payload]
ExecutorFactory = Callable[[int], Executor]

#: the message of a case whose worker process died twice (local pool)
WORKER_DIED = ("the worker process scoring this case stopped unexpectedly, also when the case "
               "was retried alone (killed, out of memory, or a crash in native code); score "
               "it with one worker to see the error, or give the machine more memory")

#: the message of a case the Dask scheduler gave up on (``KilledWorker``)
WORKER_KILLED = ("every Dask worker that scored this case stopped unexpectedly (killed, out of "
                 "memory, or a crash in native code), and the scheduler gave up after its "
                 "allowed failures (distributed.scheduler.allowed-failures); score it with one "
                 "local worker to see the error, or give the workers more memory")

#: retries of a case whose function raised on a Dask worker (not counting worker deaths)
DASK_RETRIES = 1


# -- local process pool ------------------------------------------------------------------
def run_pool(todo: list[CaseSpec], work: Work, args: tuple, workers: int,
             factory: ExecutorFactory, fail: Fail, *, keep: list | None = None,
             first: Executor | None = None) -> Iterator[tuple[CaseSpec, Payload]]:
    """Yield ``(spec, payload)`` as cases finish in a pool of *workers* (module docstring:
    a broken pool's cases are retried alone, once).  At most *workers* cases are in flight,
    so a broken pool names at most that many suspects.  *args*: the arguments of *work*
    after the case.  *keep*: a list that receives the last pool, still running, when every
    case has finished and no worker died (the caller then shuts it down), instead of the
    pool being shut down here.  *first*: a pool already started (e.g. warming up) to use
    before any made by *factory*; it is shut down here (or kept) like those."""
    queue = deque(todo)
    while queue:
        suspects: list[CaseSpec] = []
        running: dict = {}
        pool, first = (first, None) if first is not None else (factory(workers), None)
        healthy = False
        try:
            while queue or running:
                while queue and len(running) < workers and not suspects:
                    try:
                        fut = pool.submit(work, queue[0], *args)
                    except BrokenProcessPool:
                        suspects.append(queue.popleft())
                        break
                    running[fut] = queue.popleft()
                if not running:
                    break
                done, _ = wait(running, return_when=ALL_COMPLETED if suspects else FIRST_COMPLETED)
                for fut in sorted(done, key=lambda f: running[f].case_id):
                    spec = running.pop(fut)
                    try:
                        payload = fut.result()
                    except BrokenProcessPool:  # this case's worker, or one beside it, died
                        suspects.append(spec)
                        continue
                    except Exception as exc:  # noqa: BLE001 -- e.g. a result that cannot be sent
                        payload = fail(spec, exc)
                    yield spec, payload
                if suspects and not running:
                    break
            healthy = not suspects and not queue and not running
        finally:
            if keep is not None and healthy:
                keep.append(pool)
            else:
                pool.shutdown(wait=True, cancel_futures=True)
        for spec in suspects:
            log.warning("a worker process died while scoring case %s or one beside it; "
                        "retrying the case alone", spec.case_id)
            yield spec, _run_alone(spec, work, args, factory, fail)


def _run_alone(spec: CaseSpec, work: Work, args: tuple, factory: ExecutorFactory,
               fail: Fail) -> Payload:
    pool = factory(1)
    try:
        return pool.submit(work, spec, *args).result()
    except BrokenProcessPool:
        return fail(spec, WORKER_DIED)
    except Exception as exc:  # noqa: BLE001
        return fail(spec, exc)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


# -- Dask distributed --------------------------------------------------------------------
@contextlib.contextmanager
def dask_client(scheduler) -> Iterator[Any]:
    """A :class:`distributed.Client` for *scheduler*: an address (``tcp://host:8786``), a
    cluster object (e.g. :class:`distributed.LocalCluster`) or a ``Client`` (used as is and
    left open).  An address that cannot be reached raises :class:`ConnectionError` after
    ``distributed.comm.timeouts.connect``."""
    from distributed import Client

    if isinstance(scheduler, Client):
        yield scheduler
        return
    if isinstance(scheduler, str) and not scheduler.strip():
        raise ValueError("scheduler must be a Dask scheduler address such as tcp://host:8786; "
                         "received an empty string")
    try:
        client = Client(scheduler.strip() if isinstance(scheduler, str) else scheduler,
                        set_as_default=False)
    except (OSError, TimeoutError) as exc:
        where = scheduler if isinstance(scheduler, str) else type(scheduler).__name__
        raise ConnectionError(
            f"could not reach the Dask scheduler at {where} ({type(exc).__name__}); check the "
            "address (e.g. tcp://host:8786), that `dask scheduler` runs there, and that this "
            "machine can reach its port") from None
    try:
        yield client
    finally:
        client.close()


def run_dask(todo: list[CaseSpec], work: Work, args: tuple, client, keys: dict[str, str],
             fail: Fail, *, retries: int = DASK_RETRIES) -> Iterator[tuple[CaseSpec, Payload]]:
    """Submit every case of *todo* to *client* and yield ``(spec, payload)`` as they complete
    (module docstring).  *keys*: the task key of each case, by ``case_id``."""
    from distributed import KilledWorker, as_completed

    if not client.scheduler_info().get("workers"):
        log.warning("the Dask scheduler has no workers yet; the cases wait until some join")
    futures, specs = [], {}
    try:
        for spec in todo:
            fut = client.submit(work, spec, *args, key=keys[spec.case_id], pure=False,
                                retries=retries)
            futures.append(fut)
            specs[fut.key] = spec
        for fut in as_completed(futures, loop=client.loop):
            spec = specs[fut.key]
            try:
                payload = fut.result()
            except KilledWorker:
                payload = fail(spec, WORKER_KILLED)
            except Exception as exc:  # noqa: BLE001 -- one case's failure does not stop the batch
                payload = fail(spec, exc)
            yield spec, payload
    finally:
        if futures and client.status == "running":
            client.cancel(futures)  # unfinished cases of a batch that stops early stop too
