"""Tests for kseg/utils/parallel.py (and the progress line it shows)."""

import multiprocessing
import os
import time

import pytest

from kseg.utils import parallel
from kseg.utils.parallel import WorkerError, map_in_order, ordered_map


# Pool jobs must be top-level functions so that workers can unpickle them.
def _square_after_delay(x):
    # Later items finish first, so order must come from the map, not timing.
    time.sleep(0.002 * (x % 5 == 0) * (10 - x % 10))
    return x * x


def _fail_on_seven(x):
    if x == 7:
        raise ValueError(f"bad item {x}")
    return x


class _UnpicklableError(Exception):
    def __init__(self, code, detail):  # extra args: the default pickling fails
        super().__init__(f"{code}: {detail}")


def _raise_unpicklable(x):
    raise _UnpicklableError(x, "detail")


def _worker_pid(_):
    return os.getpid()


@pytest.mark.parametrize("workers, chunksize", [(2, None), (2, 3), (3, 1), (None, None)])
def test_pool_matches_serial_in_input_order(workers, chunksize):
    items = list(range(40))
    serial = map_in_order(_square_after_delay, items, workers=1)
    pooled = map_in_order(_square_after_delay, items, workers=workers, chunksize=chunksize)
    assert serial == [x * x for x in items]
    assert pooled == serial


def test_pool_works_with_spawn_and_generators():
    items = (x for x in range(12))  # no len(): no total, chunksize 1
    assert map_in_order(_square_after_delay, items, workers=2,
                        start_method="spawn") == [x * x for x in range(12)]


def test_pool_really_uses_other_processes():
    pids = set(map_in_order(_worker_pid, range(8), workers=2, chunksize=1))
    assert os.getpid() not in pids


@pytest.mark.parametrize("workers", [1, 2])
def test_worker_exception_names_the_item_index(workers):
    items = list(range(20))
    results = []
    with pytest.raises(WorkerError, match="item 7") as info:
        for result in ordered_map(_fail_on_seven, items, workers=workers, chunksize=2):
            results.append(result)
    assert info.value.index == 7
    assert isinstance(info.value.__cause__, ValueError)
    assert "bad item 7" in str(info.value)  # the worker's traceback is in the message
    assert results == list(range(7))  # everything before the failing item came through


def test_unpicklable_worker_exception_still_reports_index():
    with pytest.raises(WorkerError, match="_UnpicklableError") as info:
        map_in_order(_raise_unpicklable, [0, 1, 2], workers=2)
    assert info.value.index == 0


def test_workers_1_runs_in_process_without_pool(monkeypatch):
    def no_pool(*args, **kwargs):
        raise AssertionError("workers=1 must not create a pool")

    monkeypatch.setattr(multiprocessing, "get_context", no_pool)
    monkeypatch.setattr(parallel.multiprocessing, "get_context", no_pool)
    # A lambda cannot be pickled, so this also shows nothing crosses a process.
    assert map_in_order(lambda x: (x, os.getpid()), range(3), workers=1) == [
        (0, os.getpid()), (1, os.getpid()), (2, os.getpid())]


def test_single_item_does_not_start_a_pool(monkeypatch):
    monkeypatch.setattr(parallel.multiprocessing, "get_context", None)
    assert map_in_order(_square_after_delay, [3], workers=4) == [9]


def test_invalid_workers():
    with pytest.raises(ValueError, match="workers"):
        map_in_order(_square_after_delay, [1, 2], workers=0)


def test_default_chunksize():
    assert parallel.default_chunksize(0, 2) == 1
    assert parallel.default_chunksize(7, 2) == 1
    assert parallel.default_chunksize(80, 2) == 10
    assert parallel.default_chunksize(100000, 2) == 32


def test_map_shows_progress(capsys):
    map_in_order(_square_after_delay, list(range(10)), workers=2, desc="squares")
    err = capsys.readouterr().err
    assert "squares: 10/10 [" in err
