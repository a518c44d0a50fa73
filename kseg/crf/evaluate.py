"""Dense-CRF post-processing of a whole split in a process pool (docs/evaluation.md).

The network runs once over the split (:func:`kseg.inference.segment.network_samples`
yields a :class:`CRFSample` per image); the CRF then runs on every image in
a pool of worker processes (:func:`crf_predictions`, over
:func:`kseg.utils.parallel.ordered_map`) and one pass gives the split-level
mIoU with and without the CRF (:func:`evaluate_with_crf`). The parameter
search is in :mod:`kseg.crf.search`.

Position stds: a :class:`CRFSetting` holds :class:`kseg.crf.dense.CRFParams` whose
position stds are in pixels of an image whose long side is
``reference_size`` (500, about VOC's, so DeepLab's published values apply
as they are); each image scales them by its own long side / reference_size
(:meth:`kseg.crf.dense.CRFParams.for_image_size`). ``reference_size=0`` takes the
stds as pixels of every image. Searched values, flag fragments and the
parameters recorded next to scores all use this convention.

Two implementations of the same CRF (``impl``, the ``--crf_impl`` flag):
``'pydensecrf'`` (the default), pydensecrf's C++ in the process pool, and
``'tf'``, :mod:`kseg.crf.tf_dense`, in this process with one worker and
otherwise in a pool of processes that each run TensorFlow on one thread
(:class:`TFCRFPool`), as the pydensecrf pool runs its processes. They agree on >= 99% of pixels
(tests); pydensecrf stays the default until BENCHMARKS.md shows the TF one
at least as fast on an idle machine.

Worker processes import this module, so it imports no TensorFlow, directly
or through another module (``'tf'`` imports it when it runs): the pool starts workers with 'spawn' (forking a
process that runs TensorFlow can hang), and a spawned worker that imported
TensorFlow would spend seconds and hundreds of MB on it for nothing.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import multiprocessing
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from kseg.config import setting
from kseg.crf.dense import REFERENCE_IMAGE_SIZE, CRFParams, dense_crf
from kseg.evaluation import metrics
from kseg.utils.parallel import chunks, ordered_map, resolve_workers

# Forking a parent that runs TensorFlow can hang; workers start fresh.
START_METHOD = "spawn"
# Images held at once per worker while streaming a split through the pool.
IMAGES_PER_WORKER = 8
# The dense-CRF implementations (module docstring); the first is the default.
CRF_IMPLEMENTATIONS = ("pydensecrf", "tf")

@dataclasses.dataclass(frozen=True)
class CRFSetting:
    """CRF parameters and how their position stds scale to each image (module doc)."""

    params: CRFParams = CRFParams()
    reference_size: int = setting(
        REFERENCE_IMAGE_SIZE, "The CRF position stds are for images whose long side is this "
        "many pixels; each image scales them by its long side / this. 0: the stds are pixels "
        "of every image.")

    def __post_init__(self):
        if not isinstance(self.params, CRFParams):
            raise TypeError(f"CRFSetting.params must be a CRFParams, got {self.params!r}")
        if self.reference_size < 0 or int(self.reference_size) != self.reference_size:
            raise ValueError(f"CRFSetting.reference_size must be an integer >= 0, "
                             f"got {self.reference_size!r}")

    def for_image(self, height: int, width: int) -> CRFParams:
        """The parameters in pixels of a height x width image."""
        if not self.reference_size:
            return self.params
        return self.params.for_image_size(height, width, self.reference_size)

    def as_dict(self) -> dict:
        return {**self.params.as_dict(), "reference_size": int(self.reference_size)}

    def to_flags(self) -> list[str]:
        """absl flag lines (``--crf_bi_w=4.0`` ... ``--crf_reference_size=500``)."""
        return self.params.to_flags() + [f"--crf_reference_size={int(self.reference_size)}"]

    @classmethod
    def from_dict(cls, values: dict, prefix: str = "crf_") -> "CRFSetting":
        """From ``{prefix + name: value}``, e.g. absl ``FLAGS.flag_values_dict()``."""
        return cls(CRFParams.from_dict(values, prefix),
                   int(values.get(prefix + "reference_size", REFERENCE_IMAGE_SIZE)))


@dataclasses.dataclass(frozen=True)
class CRFSample:
    """One image as the network saw it.

    Attributes:
      image_id: the record's id.
      image: (H, W, 3) uint8 RGB.
      label: (H, W) uint8 ground truth, 255 ignored.
      probs: (H, W, C) float32 softmax probabilities at the image's size.
    """

    image_id: str
    image: np.ndarray
    label: np.ndarray
    probs: np.ndarray


def crf_labels(job) -> np.ndarray:
    """Pool job: (image, probs, CRFSetting) -> (H, W) uint8 CRF labels."""
    image, probs, setting = job
    params = setting.for_image(*image.shape[:2])
    return dense_crf(image, probs, params)[1].astype(np.uint8)


@functools.lru_cache(maxsize=8)
def _tf_crf_function(setting: CRFSetting, num_labels: int):
    """:func:`kseg.crf.tf_dense.dense_crf_function` for ``setting``, traced once per process.

    One traced function serves every image size: the position stds are
    scaled in the graph by each image's long side / ``setting.reference_size``
    (0: as given), as :meth:`CRFSetting.for_image` does for pydensecrf.
    """
    from kseg.crf import tf_dense  # TensorFlow, only when asked (module docstring)
    return tf_dense.dense_crf_function(setting.params, num_labels,
                                       setting.reference_size or None)


def _tf_worker_start() -> None:
    """Pool initializer: TensorFlow runs each op on one thread (this process
    runs one image at a time; the pool's processes share the cores)."""
    import tensorflow as tf  # in the worker only (module docstring)
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)


def _tf_crf_labels(job) -> np.ndarray:
    """Pool job: (image, probs, CRFSetting) -> (H, W) uint8 labels of :mod:`kseg.crf.tf_dense`."""
    image, probs, setting = job
    crf = _tf_crf_function(setting, probs.shape[-1])
    _, labels = crf(image[None], probs[None].astype(np.float32))
    return labels[0].numpy().astype(np.uint8)


class TFCRFPool:
    """``workers`` processes that run :mod:`kseg.crf.tf_dense`, one image each at a time.

    Each process runs TensorFlow with one intra- and one inter-op thread, so
    ``workers`` images proceed side by side, one per core, as the pydensecrf
    pool runs them. Measured on 2 cores (BENCHMARKS.md): faster than
    ``workers`` images in flight on threads of one process whose ops split
    over both cores, and than one image with its products cut in row blocks.
    The pool lives for a whole split (each process imports TensorFlow and
    traces the CRF once, a few seconds), and holds at most 2 images per
    process at once however long the split. Use as a context manager.
    """

    def __init__(self, workers: int, start_method: str = START_METHOD):
        context = multiprocessing.get_context(start_method)
        self.workers = workers
        self._pool = context.Pool(workers, initializer=_tf_worker_start)

    def predictions(self, samples: Iterable[CRFSample], setting: CRFSetting
                    ) -> Iterator[tuple[CRFSample, np.ndarray]]:
        """(sample, (H, W) uint8 labels) for every sample, in order."""
        pending = collections.deque()  # (sample, AsyncResult), oldest first
        for sample in samples:
            job = (sample.image, sample.probs, setting)
            pending.append((sample, self._pool.apply_async(_tf_crf_labels, (job,))))
            if len(pending) >= 2 * self.workers:
                oldest, result = pending.popleft()
                yield oldest, result.get()
        while pending:
            oldest, result = pending.popleft()
            yield oldest, result.get()

    @property
    def pids(self) -> list[int]:
        """The worker processes' ids (e.g. to read their CPU time)."""
        return [process.pid for process in self._pool._pool]

    def close(self) -> None:
        self._pool.terminate()
        self._pool.join()

    def __enter__(self) -> "TFCRFPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _tf_predictions(samples: Iterable[CRFSample], setting: CRFSetting,
                    workers: int) -> Iterator[tuple[CRFSample, np.ndarray]]:
    """(sample, (H, W) uint8 labels) with :mod:`kseg.crf.tf_dense`, in order:
    one worker in this process, more in a :class:`TFCRFPool`. Results do not
    depend on ``workers``."""
    if workers == 1:
        for sample in samples:
            yield sample, _tf_crf_labels((sample.image, sample.probs, setting))
        return
    with TFCRFPool(workers) as pool:
        yield from pool.predictions(samples, setting)


def crf_predictions(samples: Iterable[CRFSample], setting: CRFSetting,
                    workers: int | None = None, chunk_size: int | None = None,
                    start_method: str = START_METHOD,
                    impl: str = CRF_IMPLEMENTATIONS[0]) -> Iterator[tuple[CRFSample, np.ndarray]]:
    """Yields (sample, (H, W) uint8 CRF labels) for every sample, in order.

    With ``impl='pydensecrf'`` samples are taken ``chunk_size`` at a time
    (default IMAGES_PER_WORKER per worker) and each chunk runs over a process
    pool, so only that many probability maps are in memory however long the
    split (a VOC image's 500x375x21 float32 map is 16 MB). ``workers=1`` runs
    in this process. With ``impl='tf'`` every image runs through
    :mod:`kseg.crf.tf_dense`, in one :class:`TFCRFPool` of ``workers``
    processes for the whole split (``workers=1``: in this process).
    """
    if impl not in CRF_IMPLEMENTATIONS:
        raise ValueError(f"--crf_impl must be one of {', '.join(CRF_IMPLEMENTATIONS)}, "
                         f"got {impl!r}")
    workers = resolve_workers(workers)
    if impl == "tf":
        yield from _tf_predictions(samples, setting, workers)
        return
    chunk_size = chunk_size or IMAGES_PER_WORKER * workers
    for chunk in chunks(samples, chunk_size):
        jobs = [(s.image, s.probs, setting) for s in chunk]
        # closing() ends the chunk's pool as soon as its last result is in.
        with contextlib.closing(ordered_map(crf_labels, jobs, workers=workers, chunksize=1,
                                            start_method=start_method)) as labels:
            yield from zip(chunk, labels)


def evaluate_with_crf(samples: Iterable[CRFSample], num_classes: int, setting: CRFSetting,
                      workers: int | None = None, chunk_size: int | None = None,
                      on_image: Callable[[CRFSample, np.ndarray, np.ndarray], None] | None = None,
                      start_method: str = START_METHOD,
                      impl: str = CRF_IMPLEMENTATIONS[0]) -> tuple[dict, dict]:
    """Split-level scores without and with the CRF, from one pass over ``samples``.

    ``on_image(sample, prediction, crf_labels)`` sees every image (both (H, W)
    uint8) in order. Returns (plain, crf), each the dict of
    :func:`kseg.evaluation.metrics.evaluate` (miou, pixel_accuracy, per_class_iou,
    confusion, num_images). The result does not depend on ``workers``;
    ``impl`` picks the CRF implementation (:func:`crf_predictions`).
    """
    plain = np.zeros((num_classes, num_classes), np.int64)
    crf = np.zeros_like(plain)
    count = 0
    for sample, crf_labels in crf_predictions(samples, setting, workers, chunk_size,
                                              start_method, impl):
        prediction = sample.probs.argmax(-1).astype(np.uint8)
        plain += metrics.confusion_matrix(sample.label, prediction, num_classes)
        crf += metrics.confusion_matrix(sample.label, crf_labels, num_classes)
        count += 1
        if on_image is not None:
            on_image(sample, prediction, crf_labels)
    return metrics.split_result(plain, count), metrics.split_result(crf, count)


def format_side_by_side(plain: dict, crf: dict, class_names: Sequence[str]) -> str:
    """Per-class IoU, mIoU and pixel accuracy without and with the CRF, as text."""
    def cell(value):
        return "-" if value is None else f"{100 * value:6.2f}%"
    lines = [f"{'class':<16} {'IoU':>8} {'IoU+CRF':>8}"]
    for name, a, b in zip(class_names, plain["per_class_iou"], crf["per_class_iou"]):
        lines.append(f"{name:<16} {cell(a):>8} {cell(b):>8}")
    for key, title in (("miou", "mIoU"), ("pixel_accuracy", "pixel accuracy")):
        lines.append(f"{title:<16} {cell(plain[key]):>8} {cell(crf[key]):>8}")
    return "\n".join(lines)
