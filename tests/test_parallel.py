"""discovery.parallel.ordered_map: results in the items' order, here or on forked workers
(each set up by the initializer), and the items not started cancelled when the caller stops
early."""

import os
import time
from contextlib import closing

import pytest

from discovery.parallel import ordered_map, start_method

pytestmark = pytest.mark.skipif(start_method() != "fork",
                                reason="the workers are forked processes (Linux)")

_SETUP = {"threads": None}


def _set_up(threads: int) -> None:
    _SETUP["threads"] = threads


def _square(x: int) -> tuple:
    return x * x, os.getpid(), _SETUP["threads"]


def _mark(path_and_index) -> int:
    folder, i = path_and_index
    (folder / f"{i}.done").touch()
    time.sleep(0.05)
    return i


def test_results_in_order_on_workers_and_here():
    items = range(9)
    on_workers = list(ordered_map(_square, items, workers=2, chunksize=2,
                                  initializer=_set_up, initargs=(1,)))
    assert [r[0] for r in on_workers] == [x * x for x in items]
    assert os.getpid() not in {r[1] for r in on_workers}       # computed in the workers,
    assert {r[2] for r in on_workers} == {1}                   # each set up by the initializer
    assert _SETUP["threads"] is None                           # not this process
    here = list(ordered_map(_square, items, workers=1, initializer=_set_up, initargs=(1,)))
    assert [r[0] for r in here] == [x * x for x in items]
    assert {r[1] for r in here} == {os.getpid()} and {r[2] for r in here} == {None}
    one = list(ordered_map(_square, [3], workers=4))           # one item: no pool
    assert one[0][:2] == (9, os.getpid())


def test_stopping_early_cancels_the_items_not_started(tmp_path):
    items = [(tmp_path, i) for i in range(40)]
    with closing(ordered_map(_mark, items, workers=2)) as results:
        first = next(results)
    assert first == 0
    time.sleep(0.3)                    # nothing left running after close() returned
    done = len(list(tmp_path.glob("*.done")))
    assert 1 <= done < len(items)
