"""How fast is dense-CRF post-processing, in one process and over a pool?

    python scripts/benchmark.py --what=crf
"""

import os
import resource
import time

import numpy as np

from kseg.crf.dense import CRFParams
from kseg.crf.evaluate import CRFSetting, crf_labels
from kseg.utils.parallel import ordered_map


def _box_blur(x, size, axis):
    """Moving average of ``size`` along ``axis`` (edges replicated), same shape."""
    pad = [(0, 0)] * x.ndim
    pad[axis] = (size // 2, size - 1 - size // 2)
    padded = np.pad(x, pad, mode="edge")
    sums = np.cumsum(padded, axis=axis)
    sums = np.insert(sums, 0, 0.0, axis=axis)
    n = x.shape[axis]
    upper = np.take(sums, np.arange(size, size + n), axis=axis)
    lower = np.take(sums, np.arange(0, n), axis=axis)
    return (upper - lower) / size


def synthetic_crf_input(height, width, num_labels, seed):
    """A smooth random RGB image and smooth random probabilities (upsampled scores).

    The image is blurred noise with its contrast stretched: pixel-wise noise
    is the worst case for the CRF's permutohedral lattice (every pixel a new
    lattice vertex, about twice as slow as this) and unlike a photo.

    Returns (image (H, W, 3) uint8, probs (H, W, C) float32 summing to 1 over C).
    """
    rng = np.random.default_rng(seed)
    noise = rng.uniform(0, 255, size=(height, width, 3))
    blurred = _box_blur(_box_blur(noise, 9, 0), 9, 1)
    image = np.clip((blurred - 127.5) * 4 + 127.5, 0, 255).astype(np.uint8)
    # Logits on a coarse 1/8 grid (the score map's stride), upsampled by
    # repetition and box-smoothed, then a softmax.
    coarse = rng.normal(scale=3.0, size=(-(-height // 8), -(-width // 8), num_labels))
    logits = np.repeat(np.repeat(coarse, 8, axis=0), 8, axis=1)[:height, :width]
    for axis in (0, 1):
        logits = _box_blur(logits, 8, axis)
    logits -= logits.max(axis=-1, keepdims=True)
    probs = np.exp(logits)
    probs /= probs.sum(axis=-1, keepdims=True)
    return image, probs.astype(np.float32)


def _cpu_seconds():
    """CPU time of this process and of its finished children (pool workers)."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


def benchmark_crf(height=375, width=500, num_labels=21, num_images=8,
                  workers=(1, None), params=CRFParams()):
    """Measures CRF images/s at VOC size for each worker count.

    The pool timing is end to end: pool start-up, sending each image and its
    (H, W, C) probabilities to a worker, and the labels back.

    Args:
      height, width, num_labels, num_images: synthetic workload.
      workers: worker counts to time (None = os.cpu_count()); the first is the
        baseline for the speed-up.
      params: :class:`kseg.crf.dense.CRFParams`, in pixels of every image.

    Returns:
      dict: the workload, ``'runs'`` — a list of ``{'workers', 'seconds',
      'images_per_second', 'cpu_seconds_per_image', 'load_average_before'}`` —
      and ``'speedup'``, images/s of the last run over the first. Wall-clock
      figures are only meaningful on an otherwise idle machine: a 1-minute
      load average well above 0 before a run means other work shared the
      cores (CPU seconds per image are less affected).
    """
    setting = CRFSetting(params, reference_size=0)  # the stds as given, on every image
    jobs = [synthetic_crf_input(height, width, num_labels, seed) + (setting,)
            for seed in range(num_images)]
    runs = []
    reference = None
    for count in workers:
        resolved = count or os.cpu_count() or 1
        load = os.getloadavg()[0]
        cpu_start = _cpu_seconds()
        start = time.perf_counter()
        labels = list(ordered_map(crf_labels, jobs, workers=resolved))
        seconds = time.perf_counter() - start
        cpu = _cpu_seconds() - cpu_start
        if reference is None:
            reference = labels
        elif not all(np.array_equal(a, b) for a, b in zip(reference, labels)):
            raise AssertionError("pool and serial CRF results differ")
        runs.append({"workers": resolved, "seconds": round(seconds, 3),
                     "images_per_second": round(num_images / seconds, 3),
                     "cpu_seconds_per_image": round(cpu / num_images, 3),
                     "load_average_before": round(load, 2)})
    return {
        "height": height, "width": width, "num_labels": num_labels,
        "num_images": num_images, "num_iter": params.num_iter,
        "runs": runs,
        "speedup": round(runs[-1]["images_per_second"] / runs[0]["images_per_second"], 3),
    }
