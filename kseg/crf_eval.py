"""Dense-CRF post-processing of a whole split, and the search for its parameters.

DESIGN.md section 6 and issue 4. The network runs once over the split
(:func:`network_samples`); the CRF then runs on every image in a pool of
worker processes (:func:`crf_predictions`, over :func:`kseg.parallel.ordered_map`)
and one pass gives the split-level mIoU with and without the CRF
(:func:`evaluate_with_crf`, :func:`evaluate_run_with_crf`). The search
(:func:`search_crf`) runs the network once on a held-out subset, keeps its
probabilities, and scores many CRF settings on them.

Position stds: a :class:`CRFSetting` holds :class:`kseg.crf.CRFParams` whose
position stds are in pixels of an image whose long side is
``reference_size`` (500, about VOC's, so DeepLab's published values apply
as they are); each image scales them by its own long side / reference_size
(:meth:`kseg.crf.CRFParams.for_image_size`). ``reference_size=0`` takes the
stds as pixels of every image. Searched values, flag fragments and the
parameters recorded next to scores all use this convention.

Worker processes import this module, so it must not import TensorFlow: the
pool starts workers with 'spawn' (forking a process that runs TensorFlow can
hang), and a spawned worker that imported TensorFlow would spend seconds and
hundreds of MB on it for nothing. Functions that run the network or read
records import those modules where they are called, in the parent only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import os
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from kseg.crf import REFERENCE_IMAGE_SIZE, CRFParams, dense_crf
from kseg.data.palette import write_label_png
from kseg.parallel import ordered_map
from kseg.progress import Progress

# Forking a parent that runs TensorFlow can hang; workers start fresh.
START_METHOD = "spawn"
# Images held at once per worker while streaming a split through the pool.
IMAGES_PER_WORKER = 8

CRF_FLAG_HELP = {
    "bi_w": "Weight of the CRF's bilateral (position + colour) kernel.",
    "bi_xy_std": "Position std of the bilateral kernel, in pixels of a "
                 "--crf_reference_size image.",
    "bi_rgb_std": "Colour std of the bilateral kernel, in 0..255 units.",
    "pos_w": "Weight of the CRF's Gaussian (position) kernel.",
    "pos_xy_std": "Position std of the Gaussian kernel, in pixels of a "
                  "--crf_reference_size image.",
    "num_iter": "Mean-field iterations.",
    "reference_size": "The CRF position stds are for images whose long side is this many "
                      "pixels; each image scales them by its long side / this. 0: the stds "
                      "are pixels of every image.",
}


@dataclasses.dataclass(frozen=True)
class CRFSetting:
    """CRF parameters and how their position stds scale to each image (module doc)."""

    params: CRFParams = CRFParams()
    reference_size: int = REFERENCE_IMAGE_SIZE

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


def crf_flag_specs(defaults: CRFSetting = CRFSetting()) -> list[tuple[str, int | float, str]]:
    """(flag name, default, help) of the ``--crf_*`` flags; scripts define
    them (DEFINE_integer for int defaults, DEFINE_float otherwise)."""
    return [(f"crf_{name}", value, CRF_FLAG_HELP[name])
            for name, value in defaults.as_dict().items()]


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


def _crf_labels(job) -> np.ndarray:
    """Pool job: (image, probs, CRFSetting) -> (H, W) uint8 CRF labels."""
    image, probs, setting = job
    params = setting.for_image(*image.shape[:2])
    return dense_crf(image, probs, params)[1].astype(np.uint8)


def _chunks(items: Iterable, size: int) -> Iterator[list]:
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def _resolve_workers(workers: int | None) -> int:
    return workers or os.cpu_count() or 1


def crf_predictions(samples: Iterable[CRFSample], setting: CRFSetting,
                    workers: int | None = None, chunk_size: int | None = None,
                    start_method: str = START_METHOD) -> Iterator[tuple[CRFSample, np.ndarray]]:
    """Yields (sample, (H, W) uint8 CRF labels) for every sample, in order.

    Samples are taken ``chunk_size`` at a time (default IMAGES_PER_WORKER per
    worker) and each chunk runs over a process pool, so only that many
    probability maps are in memory however long the split (a VOC image's
    500x375x21 float32 map is 16 MB). ``workers=1`` runs in this process.
    """
    workers = _resolve_workers(workers)
    chunk_size = chunk_size or IMAGES_PER_WORKER * workers
    for chunk in _chunks(samples, chunk_size):
        jobs = [(s.image, s.probs, setting) for s in chunk]
        # closing() ends the chunk's pool as soon as its last result is in.
        with contextlib.closing(ordered_map(_crf_labels, jobs, workers=workers, chunksize=1,
                                            start_method=start_method)) as labels:
            yield from zip(chunk, labels)


def _scores(confusion: np.ndarray, count: int) -> dict:
    """The dict of kseg.evaluate.evaluate for an accumulated confusion matrix."""
    from kseg import evaluate as eval_lib
    result = eval_lib.scores_from_confusion(confusion)
    result.update(confusion=confusion.tolist(), num_images=count)
    return result


def evaluate_with_crf(samples: Iterable[CRFSample], num_classes: int, setting: CRFSetting,
                      workers: int | None = None, chunk_size: int | None = None,
                      on_image: Callable[[CRFSample, np.ndarray, np.ndarray], None] | None = None,
                      start_method: str = START_METHOD) -> tuple[dict, dict]:
    """Split-level scores without and with the CRF, from one pass over ``samples``.

    ``on_image(sample, prediction, crf_labels)`` sees every image (both (H, W)
    uint8) in order. Returns (plain, crf), each the dict of
    :func:`kseg.evaluate.evaluate` (miou, pixel_accuracy, per_class_iou,
    confusion, num_images). The result does not depend on ``workers``.
    """
    from kseg import evaluate as eval_lib
    plain = np.zeros((num_classes, num_classes), np.int64)
    crf = np.zeros_like(plain)
    count = 0
    for sample, crf_labels in crf_predictions(samples, setting, workers, chunk_size,
                                              start_method):
        prediction = sample.probs.argmax(-1).astype(np.uint8)
        plain += eval_lib.confusion_matrix(sample.label, prediction, num_classes)
        crf += eval_lib.confusion_matrix(sample.label, crf_labels, num_classes)
        count += 1
        if on_image is not None:
            on_image(sample, prediction, crf_labels)
    return _scores(plain, count), _scores(crf, count)


def network_samples(network, dataset) -> Iterator[CRFSample]:
    """Runs ``network`` once over an eval dataset (kseg.data.pipeline.eval_dataset),
    through :func:`kseg.evaluate.network_predictions`; yields a CRFSample per image."""
    from kseg import evaluate as eval_lib
    seen = []

    def keep(image_id, image, probs, prediction):
        seen.append((image_id, image, probs))

    for label, _ in eval_lib.network_predictions(network, dataset, keep):
        image_id, image, probs = seen.pop()
        yield CRFSample(image_id, image, label, probs)


def _open_run(model_dir: str, split: str, data_dir: str | None, num_images: int | None):
    """(network, run config, data_dir, dataset of the first num_images, image count)."""
    from kseg import experiment
    from kseg.data import pipeline, records
    network, config = experiment.load_network(model_dir)
    data_dir = data_dir or config["data_dir"]
    total = records.read_split_info(data_dir, split)["num_images"]
    dataset = pipeline.eval_dataset(records.split_pattern(data_dir, split))
    if num_images is not None and num_images < total:
        dataset, total = dataset.take(num_images), num_images
    return network, config, data_dir, dataset, total


def evaluate_run_with_crf(model_dir: str, split: str = "val", data_dir: str | None = None,
                          setting: CRFSetting = CRFSetting(), workers: int | None = None,
                          chunk_size: int | None = None, masks_dir: str | None = None,
                          start_method: str = START_METHOD) -> tuple[dict, dict]:
    """Evaluates a run's newest checkpoint with and without the CRF (DESIGN section 8).

    Writes ``model_dir/eval_<split>.json`` and ``eval_<split>_crf.json`` (the
    latter records the CRF setting under ``crf`` and as flag lines under
    ``crf_flags``) and, with ``masks_dir``, the CRF masks as palette PNGs.
    Returns (plain, crf) result dicts, each with split, data_dir, class_names.
    """
    from kseg import evaluate as eval_lib
    network, config, data_dir, dataset, total = _open_run(model_dir, split, data_dir, None)
    if masks_dir:
        os.makedirs(masks_dir, exist_ok=True)
    with Progress(total, f"network + crf on {split}") as bar:
        def on_image(sample, prediction, crf_labels):
            if masks_dir:
                write_label_png(os.path.join(masks_dir, sample.image_id + ".png"), crf_labels)
            bar.update()
        plain, crf = evaluate_with_crf(network_samples(network, dataset),
                                       network.output_shape[-1], setting, workers,
                                       chunk_size, on_image, start_method)
    for result in (plain, crf):
        result.update(split=split, data_dir=data_dir, class_names=config["class_names"])
    crf.update(crf=setting.as_dict(), crf_flags=setting.to_flags())
    eval_lib.write_json(plain, os.path.join(model_dir, f"eval_{split}.json"))
    eval_lib.write_json(crf, os.path.join(model_dir, f"eval_{split}_crf.json"))
    return plain, crf


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


# ------------------------------------------------------------------ search

SEARCH_METHODS = ("coordinate", "grid")

# Values tried for each parameter by default (position stds in pixels of a
# reference_size image): around DeepLab-v1's LargeFOV values (4 / 121 / 5,
# Gaussian 3 / 3) and the per-experiment ones the authors' configs used
# (e.g. 5 / 50 / 10, 35 / 61 / 10; DESIGN section 9).
DEFAULT_GRID = {
    "bi_w": (2.0, 3.0, 4.0, 5.0, 6.0, 10.0, 20.0, 35.0),
    "bi_xy_std": (20.0, 30.0, 50.0, 70.0, 90.0, 121.0, 160.0),
    "bi_rgb_std": (3.0, 4.0, 5.0, 7.0, 10.0, 13.0),
    "pos_w": (1.0, 2.0, 3.0, 5.0),
    "pos_xy_std": (1.0, 2.0, 3.0, 5.0),
}


def load_samples(model_dir: str, split: str = "val", data_dir: str | None = None,
                 num_images: int | None = 100) -> tuple[list[CRFSample], dict]:
    """The network's probabilities on the first ``num_images`` images of a split,
    kept in memory for the search (about 16 MB per VOC image).

    Returns (samples, run config with ``data_dir`` resolved)."""
    network, config, data_dir, dataset, total = _open_run(model_dir, split, data_dir,
                                                          num_images)
    samples = []
    with Progress(total, f"network on {split}") as bar:
        for sample in network_samples(network, dataset):
            samples.append(sample)
            bar.update()
    return samples, {**config, "data_dir": data_dir}


def score_settings(samples: Sequence[CRFSample], settings: Sequence[CRFSetting],
                   num_classes: int, workers: int | None = None,
                   start_method: str = START_METHOD, desc: str | None = None) -> list[dict]:
    """The scores (as :func:`kseg.evaluate.evaluate`) of the CRF with each setting
    on the same samples; all (setting, image) pairs go through one pool."""
    from kseg import evaluate as eval_lib
    jobs = [(s.image, s.probs, setting) for setting in settings for s in samples]
    results = []
    with contextlib.closing(ordered_map(_crf_labels, jobs, workers=_resolve_workers(workers),
                                        chunksize=1, start_method=start_method,
                                        desc=desc)) as labels:
        for _ in settings:
            confusion = np.zeros((num_classes, num_classes), np.int64)
            for sample in samples:
                confusion += eval_lib.confusion_matrix(sample.label, next(labels), num_classes)
            results.append(_scores(confusion, len(samples)))
    return results


def _no_crf_score(samples: Sequence[CRFSample], num_classes: int) -> dict:
    from kseg import evaluate as eval_lib
    return eval_lib.evaluate(((s.label, s.probs.argmax(-1)) for s in samples), num_classes)


def search_crf(samples: Sequence[CRFSample], num_classes: int,
               start: CRFSetting = CRFSetting(), grid: dict | None = None,
               method: str = "coordinate", rounds: int = 2, workers: int | None = None,
               start_method: str = START_METHOD,
               log: Callable[[str], None] = lambda line: None) -> dict:
    """Searches the CRF parameters that maximise split-level mIoU on ``samples``.

    Args:
      samples: the held-out images with the network's probabilities
        (:func:`load_samples`).
      num_classes: C.
      start: the first setting; parameters absent from ``grid`` (or with an
        empty list) keep its values, and so does ``reference_size``.
      grid: {CRFParams field: values}; default :data:`DEFAULT_GRID`.
      method: 'coordinate' — starting from ``start``, try every value of one
        parameter with the others fixed and keep the best, parameter after
        parameter, for up to ``rounds`` passes (stops early when a pass changes
        nothing); 'grid' — every combination of the values.
      rounds: passes of the coordinate search.
      workers, start_method: the process pool (:func:`kseg.parallel.ordered_map`).
      log: called with a line after each parameter sweep.

    Returns:
      dict: ``best`` (CRFSetting); ``best_result``, ``start_result`` and
      ``no_crf`` (score dicts of the best setting, of ``start`` and of the
      network's argmax);
      ``tried``: one row per distinct setting scored, in the order tried —
      ``{**setting.as_dict(), 'miou', 'pixel_accuracy'}``.
    """
    grid = dict(DEFAULT_GRID if grid is None else grid)
    unknown = set(grid) - set(CRFParams().as_dict())
    if unknown:
        raise ValueError(f"search_crf: unknown CRF parameters {sorted(unknown)} in the grid")
    if method not in SEARCH_METHODS:
        raise ValueError(f"search_crf: method must be one of {SEARCH_METHODS}, got {method!r}")
    if not samples:
        raise ValueError("search_crf: no samples to search on")
    grid = {name: tuple(values) for name, values in grid.items() if len(values)}
    scored: dict[CRFSetting, dict] = {}

    def score(settings, desc):
        new = [s for s in dict.fromkeys(settings) if s not in scored]
        if new:
            scored.update(zip(new, score_settings(samples, new, num_classes, workers,
                                                  start_method, desc)))

    def with_values(setting, **values):
        return dataclasses.replace(setting, params=dataclasses.replace(setting.params, **values))

    score([start], "crf start")
    best = start
    if method == "grid":
        names = list(grid)
        candidates = [with_values(start, **dict(zip(names, combo)))
                      for combo in itertools.product(*grid.values())]
        score(candidates, f"crf grid ({len(candidates)} settings)")
        # Ties keep the earliest setting (the start first), so the result is deterministic.
        best = max([start] + candidates, key=lambda s: scored[s]["miou"])
    else:
        for round_index in range(rounds):
            changed = False
            for name, values in grid.items():
                candidates = [with_values(best, **{name: v}) for v in values]
                score(candidates, f"crf {name} (round {round_index + 1})")
                # Ties keep the current setting, so the search is deterministic.
                winner = max(candidates, key=lambda s: scored[s]["miou"])
                if scored[winner]["miou"] > scored[best]["miou"]:
                    best, changed = winner, True
                log(f"round {round_index + 1}, {name}: best {getattr(best.params, name):g} "
                    f"(mIoU {100 * scored[best]['miou']:.2f}%)")
            if not changed:
                break
    tried = [{**s.as_dict(), "miou": r["miou"], "pixel_accuracy": r["pixel_accuracy"]}
             for s, r in scored.items()]
    return {"best": best, "best_result": scored[best], "start_result": scored[start],
            "tried": tried, "no_crf": _no_crf_score(samples, num_classes)}


def format_search_table(search: dict, limit: int | None = None) -> str:
    """The tried settings as text, best mIoU first (the best row marked with *)."""
    names = list(CRFParams().as_dict())
    rows = sorted(search["tried"], key=lambda r: -r["miou"])[:limit]
    lines = [" ".join(f"{n:>10}" for n in names) + f" {'mIoU':>8} {'pix.acc':>8}"]
    best = search["best"].as_dict()
    for row in rows:
        mark = " *" if all(row[n] == best[n] for n in best) else ""
        lines.append(" ".join(f"{row[n]:>10g}" for n in names)
                     + f" {100 * row['miou']:7.2f}% {100 * row['pixel_accuracy']:7.2f}%{mark}")
    lines.append(f"without CRF: mIoU {100 * search['no_crf']['miou']:.2f}%, "
                 f"pixel accuracy {100 * search['no_crf']['pixel_accuracy']:.2f}%")
    return "\n".join(lines)


def write_flagfile(path: str, setting: CRFSetting, comments: Sequence[str] = ()) -> None:
    """Writes ``setting`` as an absl flagfile fragment (``#`` comment lines first)."""
    lines = [f"# {c}" for c in comments] + setting.to_flags()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(tmp, path)
