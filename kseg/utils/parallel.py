"""Run an independent per-item job (dense CRF, Bbox-Seg) over a process pool.

Images are independent (docs/evaluation.md), so CRF post-processing scales with the
number of cores; :func:`ordered_map` is the one place that owns a per-call pool.
The TensorFlow CRF keeps one pool for a whole split instead
(:class:`kseg.crf.evaluate.TFCRFPool`): its workers start TensorFlow, seconds each.
"""

import functools
import itertools
import multiprocessing
import os
import pickle
import traceback

from kseg.utils.progress import Progress


class WorkerError(RuntimeError):
    """A job failed on one item; ``index`` is that item's position in the input.

    ``__cause__`` holds the original exception when it could be sent back from
    the worker process; the message always includes the worker's traceback.
    """

    def __init__(self, index, message):
        super().__init__(message)
        self.index = index

    def __reduce__(self):
        return (type(self), (self.index, self.args[0]))


def _call(fn, indexed_item):
    """Runs in the worker: returns (index, ok, result or (exception, traceback))."""
    index, item = indexed_item
    try:
        return index, True, fn(item)
    except Exception as exc:  # noqa: BLE001 -- reported to the parent with the index
        tb = traceback.format_exc()
        try:
            # An exception that cannot make the round trip between processes
            # (e.g. a custom one with extra __init__ arguments) would break
            # the pool's result thread; send only its traceback text instead.
            pickle.loads(pickle.dumps(exc))
        except Exception:  # noqa: BLE001
            exc = None
        return index, False, (exc, tb)


def _unwrap(fn_name, outcome):
    index, ok, payload = outcome
    if ok:
        return payload
    exc, tb = payload
    error = WorkerError(index, f"{fn_name} failed on item {index}:\n{tb}")
    raise error from exc


def resolve_workers(workers):
    """The number of processes a `workers` setting means: None or 0, one per core."""
    return workers or os.cpu_count() or 1


def chunks(items, size):
    """Lists of `size` consecutive items (the last may be shorter), read lazily:
    a long stream goes through a pool a chunk at a time.

    >>> list(chunks(range(5), 2))
    [[0, 1], [2, 3], [4]]
    """
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def default_chunksize(num_items, workers):
    """About 4 chunks per worker: few round trips, yet balanced when items vary.

    Capped at 32 so the progress bar moves and results stream back steadily.
    """
    if not num_items:
        return 1
    return max(1, min(32, num_items // (4 * workers)))


def ordered_map(fn, items, workers=None, desc=None, chunksize=None,
                start_method=None):
    """Yields ``fn(item)`` for every item, in input order, using a process pool.

    Args:
      fn: a picklable top-level function of one argument (a module-level
        ``def``, or ``functools.partial`` of one); its results must be picklable.
      items: an iterable of picklable items; a sized one (list, tuple) gives
        the progress bar a total and a sensible default chunksize.
      workers: number of processes; None means ``os.cpu_count()``; 1 runs a
        plain loop in this process, with no pool and no pickling.
      desc: when given, a :class:`kseg.utils.progress.Progress` bar with this label
        is shown on stderr.
      chunksize: items per task sent to a worker; default
        :func:`default_chunksize`.
      start_method: 'fork', 'spawn' or 'forkserver'; None uses the platform
        default. Pass 'spawn' or 'forkserver' from a process that has already
        started TensorFlow: forking a process with live TF threads can hang.

    Yields:
      ``fn(item)`` in the order of ``items``.

    Raises:
      WorkerError: ``fn`` raised on some item; ``.index`` is its position and
        the original exception is chained as ``__cause__``. The pool is
        terminated, so the remaining items are not processed.
    """
    if workers is None:
        workers = os.cpu_count() or 1
    if workers < 1:
        raise ValueError(f"workers must be >= 1 or None, got {workers}")
    total = len(items) if hasattr(items, "__len__") else None
    if total is not None:
        workers = max(1, min(workers, total))
    fn_name = getattr(fn, "__qualname__", None) or getattr(
        getattr(fn, "func", None), "__qualname__", repr(fn))
    call = functools.partial(_call, fn)
    bar = Progress(total, desc) if desc else None
    try:
        if workers == 1:
            for indexed in enumerate(items):
                yield _unwrap(fn_name, call(indexed))
                if bar:
                    bar.update()
            return
        if chunksize is None:
            chunksize = default_chunksize(total or 0, workers)
        context = multiprocessing.get_context(start_method)
        # Leaving the with-block (also on error or when the consumer stops
        # early) terminates the workers.
        with context.Pool(workers) as pool:
            for outcome in pool.imap(call, enumerate(items), chunksize):
                yield _unwrap(fn_name, outcome)
                if bar:
                    bar.update()
    finally:
        if bar:
            bar.close()


def map_in_order(fn, items, **kwargs):
    """:func:`ordered_map` collected into a list."""
    return list(ordered_map(fn, items, **kwargs))
