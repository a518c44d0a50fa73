"""Bbox-Seg training data: segmentation masks estimated from boxes by the dense CRF.

Bbox-Seg (docs/method.md) in three steps, each over a prepared TFRecord
split:

* :func:`write_masks` runs :func:`kseg.crf.bbox_seg.bbox_seg` on every image with
  boxes, in a pool of worker processes, and writes each mask as a VOC-palette
  PNG (``<masks_dir>/<id>.png``). Resumable: masks already on disk are
  skipped, and a PNG appears only once complete. The settings used are kept
  in ``<masks_dir>/bbox_seg.json``; a run with other settings stops rather
  than mixing masks (pass ``overwrite``).
* :func:`write_bbox_seg_split` writes a copy of the split (default name
  ``train_bboxseg``) whose labels are those masks, so the ordinary pipeline
  trains on them as on ground truth (``--supervision=bbox_seg
  --weak_split=train_bboxseg``).
* :func:`alpha_search` scores the estimated masks against the ground truth
  of held-out fully annotated images for several core sizes alpha, and
  Bbox-Rect for comparison (the paper: alpha = 20% best, Bbox-Seg well
  above Bbox-Rect).

CRF parameters are a :class:`kseg.crf.evaluate.CRFSetting` (position stds for
500-px images, scaled to each image), by default the released scripts'
:data:`kseg.crf.bbox_seg.BBOX_SEG_CRF_PARAMS`.

Like kseg.crf, worker processes import this module: no TensorFlow at import
time (the records readers, which need it, are imported inside the functions
that run in the parent).
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import io
import json
import os
from typing import Sequence

import numpy as np
from PIL import Image

from kseg.crf.bbox_seg import BBOX_SEG_CRF_PARAMS, bbox_seg
from kseg.crf.evaluate import START_METHOD, CRFSetting
from kseg.data.errors import DataError
from kseg.data.palette import read_label_png, write_label_png
from kseg.evaluation import metrics
from kseg.utils import files
from kseg.utils.parallel import chunks, ordered_map, resolve_workers
from kseg.utils.progress import Progress

DEFAULT_OUT_SPLIT = "train_bboxseg"
MASKS_DIRNAME = "SegmentationClassBboxSeg"
SETTINGS_FILE = "bbox_seg.json"
DEFAULT_ALPHAS = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
MODES = ("hard", "soft")
# Images read ahead per worker: jobs carry the encoded image, a few kB to 100 kB.
IMAGES_PER_WORKER = 64


@dataclasses.dataclass(frozen=True)
class BboxSegConfig:
    """How a mask is estimated from boxes (:func:`kseg.crf.bbox_seg.bbox_seg`).

    Attributes:
      alpha: fraction of each box's area in its clamped core (paper: 0.2).
      mode: 'hard' (the paper's clamps) or 'soft' (the released scripts'
        0.75 / 0.5 unaries).
      crf: CRF parameters and their scaling to the image size.
    """

    alpha: float = 0.2
    mode: str = "hard"
    crf: CRFSetting = CRFSetting(BBOX_SEG_CRF_PARAMS)

    def __post_init__(self):
        if not 0 < self.alpha <= 1:
            raise ValueError(f"Bbox-Seg alpha must be in (0, 1], got {self.alpha!r}")
        if self.mode not in MODES:
            raise ValueError(f"Bbox-Seg mode must be one of {MODES}, got {self.mode!r}")

    def as_dict(self) -> dict:
        return {"alpha": float(self.alpha), "mode": self.mode, "crf": self.crf.as_dict()}


def default_masks_dir(records_dir: str) -> str:
    """``<records_dir>/../SegmentationClassBboxSeg``: beside SegmentationClass
    when the records sit in a VOC-layout root (as the embedded dataset's do)."""
    return os.path.join(os.path.dirname(os.path.abspath(records_dir)), MASKS_DIRNAME)


def mask_path(masks_dir: str, image_id: str) -> str:
    return os.path.join(masks_dir, image_id + ".png")


def _decode_rgb(encoded: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(encoded)) as image:
        return np.array(image.convert("RGB"), dtype=np.uint8)


def _estimate(job) -> np.ndarray:
    """Pool job: (encoded image, boxes (N, 4), classes (N,), num_classes,
    BboxSegConfig) -> (H, W) uint8 mask."""
    encoded, boxes, classes, num_classes, config = job
    image = _decode_rgb(encoded)
    params = config.crf.for_image(*image.shape[:2])
    return bbox_seg(image, boxes, classes, num_classes, alpha=config.alpha,
                    mode=config.mode, params=params)


def _estimate_and_write(job) -> float:
    """Pool job: (PNG path, :func:`_estimate` job) -> writes the mask; returns
    its foreground fraction."""
    path, estimate_job = job
    mask = _estimate(estimate_job)
    with files.atomic_path(path) as tmp:  # a mask file exists only once complete
        write_label_png(tmp, mask)
    return float(np.mean(mask > 0))


def _check_settings(masks_dir: str, settings: dict, overwrite: bool) -> None:
    """Refuses to add masks made with other settings; records the settings."""
    path = os.path.join(masks_dir, SETTINGS_FILE)
    if os.path.isfile(path) and not overwrite:
        with open(path) as f:
            previous = json.load(f)
        if previous != settings:
            raise ValueError(
                f"{path}: the masks in {masks_dir} were estimated with {previous}, this run "
                f"asks for {settings}; pass overwrite (--overwrite) to redo them all, or "
                f"write to another masks directory")
    os.makedirs(masks_dir, exist_ok=True)
    files.write_json(path, settings)


@dataclasses.dataclass
class MaskSummary:
    """What :func:`write_masks` did."""

    written: int = 0
    existing: int = 0
    no_boxes: list[str] = dataclasses.field(default_factory=list)
    foreground: float = 0.0  # mean foreground fraction of the masks written

    def __str__(self):
        return (f"{self.written} masks written (mean foreground {100 * self.foreground:.1f}%), "
                f"{self.existing} already there, {len(self.no_boxes)} images without boxes "
                f"left out")


def write_masks(records_dir: str, split: str, masks_dir: str,
                config: BboxSegConfig = BboxSegConfig(), workers: int | None = None,
                chunk_size: int | None = None, overwrite: bool = False,
                start_method: str = START_METHOD) -> MaskSummary:
    """Estimates a Bbox-Seg mask for every image with boxes of a prepared split.

    Args:
      records_dir, split: the prepared records (kseg.data.records).
      masks_dir: where ``<id>.png`` palette PNGs go.
      config: :class:`BboxSegConfig`.
      workers: processes (None: all cores; 1: in this process).
      chunk_size: images read ahead and handed to one pool at a time (default
        IMAGES_PER_WORKER per worker).
      overwrite: redo masks already on disk (and accept other settings).
      start_method: multiprocessing start method of the pool.

    Returns:
      :class:`MaskSummary`. Images without boxes get no mask.

    Raises:
      ValueError: ``masks_dir`` holds masks made with other settings.
    """
    from kseg.data import records
    info = records.read_split_info(records_dir, split)
    _check_settings(masks_dir, config.as_dict(), overwrite)
    workers = resolve_workers(workers)
    chunk_size = chunk_size or IMAGES_PER_WORKER * workers
    summary = MaskSummary()
    foreground = []
    with Progress(info["num_images"], f"bbox-seg masks of {split}") as bar:
        def jobs():
            for record in records.iterate_split(records_dir, split):
                path = mask_path(masks_dir, record.image_id)
                if not len(record.boxes):
                    summary.no_boxes.append(record.image_id)
                elif os.path.isfile(path) and not overwrite:
                    summary.existing += 1
                else:
                    yield path, (record.image_encoded, record.boxes, record.box_classes,
                                 info["num_classes"], config)
                    continue
                bar.update()

        for chunk in chunks(jobs(), chunk_size):
            with contextlib.closing(ordered_map(_estimate_and_write, chunk, workers=workers,
                                                chunksize=1,
                                                start_method=start_method)) as results:
                for fraction in results:
                    foreground.append(fraction)
                    bar.update()
    summary.written = len(foreground)
    summary.foreground = float(np.mean(foreground)) if foreground else 0.0
    return summary


def _remove_split(records_dir: str, split: str) -> None:
    from kseg.data import records
    for path in glob.glob(records.split_pattern(records_dir, split) + "*"):
        os.remove(path)
    info = os.path.join(records_dir, f"{split}.json")
    if os.path.isfile(info):
        os.remove(info)


def write_bbox_seg_split(records_dir: str, split: str, masks_dir: str,
                         out_split: str = DEFAULT_OUT_SPLIT, num_shards: int | None = None,
                         rewrite: bool = False):
    """Writes ``out_split``: the records of ``split`` whose masks are in
    ``masks_dir``, with the label replaced by that mask (image bytes, boxes,
    image labels and dataset id copied).

    Complete shards of an earlier run are reused (kseg.data.records.write_split)
    unless ``rewrite`` or the set of images changed. The source split's records
    are held in memory without their labels (about their size on disk).

    Returns:
      kseg.data.records.WriteSummary.

    Raises:
      DataError: no mask found, or a mask's size differs from its image.
      ValueError: ``out_split`` is ``split``.
    """
    from kseg.data import records
    if out_split == split:
        raise ValueError(f"the Bbox-Seg split must have its own name, not {split!r}")
    info = records.read_split_info(records_dir, split)
    kept = {}
    for record in records.iterate_split(records_dir, split):
        if os.path.isfile(mask_path(masks_dir, record.image_id)):
            kept[record.image_id] = dataclasses.replace(record, class_mask=None)
    if not kept:
        raise DataError(f"{masks_dir}: no Bbox-Seg mask for any image of split {split!r} "
                        f"of {records_dir}; write the masks first (scripts/bbox_seg.py)")
    ids = sorted(kept)
    num_shards = max(1, min(num_shards or info.get("num_shards", 4), len(ids)))
    if os.path.isfile(os.path.join(records_dir, f"{out_split}.json")):
        # A complete split is kept only if it holds these images, in as many
        # shards, from unchanged masks (old shards would match the new pattern).
        previous = records.read_split_info(records_dir, out_split)
        if rewrite or previous["ids"] != ids or previous["num_shards"] != num_shards:
            _remove_split(records_dir, out_split)
    elif rewrite:
        _remove_split(records_dir, out_split)  # shards of an interrupted run hold old masks

    def load(image_id):
        path = mask_path(masks_dir, image_id)
        mask = read_label_png(path)
        record = kept[image_id]
        if mask.shape != (record.height, record.width):
            raise DataError(f"{path}: mask size {mask.shape} differs from the image's "
                            f"{(record.height, record.width)}")
        return dataclasses.replace(record, class_mask=mask)

    return records.write_split(ids, load, records_dir, out_split, info["class_names"],
                               num_shards=num_shards, strict=True)


def make_bbox_seg_split(records_dir: str, split: str = "train",
                        out_split: str = DEFAULT_OUT_SPLIT, masks_dir: str | None = None,
                        config: BboxSegConfig = BboxSegConfig(), workers: int | None = None,
                        overwrite: bool = False, num_shards: int | None = None,
                        start_method: str = START_METHOD) -> dict:
    """:func:`write_masks` then :func:`write_bbox_seg_split` (rewritten whenever
    a mask changed). Returns {'masks': MaskSummary, 'split': WriteSummary,
    'masks_dir': str}."""
    masks_dir = masks_dir or default_masks_dir(records_dir)
    masks = write_masks(records_dir, split, masks_dir, config, workers, overwrite=overwrite,
                        start_method=start_method)
    written = write_bbox_seg_split(records_dir, split, masks_dir, out_split, num_shards,
                                   rewrite=masks.written > 0)
    return {"masks": masks, "split": written, "masks_dir": masks_dir}


# ------------------------------------------------------------ alpha search


def alpha_search(records_dir: str, split: str = "train", num_images: int = 100,
                 alphas: Sequence[float] = DEFAULT_ALPHAS, mode: str = "hard",
                 crf: CRFSetting = CRFSetting(BBOX_SEG_CRF_PARAMS), workers: int | None = None,
                 start_method: str = START_METHOD) -> dict:
    """IoU of masks estimated from boxes against the ground truth (paper section 3.3).

    Uses the first ``num_images`` images of the split that have both a
    ground-truth mask and boxes. Each method gives one split-level confusion
    matrix (kseg.evaluation.metrics) over those images; label 255 is ignored.

    Returns:
      dict with split, num_images, mode, crf (setting dict), class_names and
      ``rows``: Bbox-Rect first (kseg.em.estep.bbox_rect), then Bbox-Seg for each
      alpha, each ``{'method', 'alpha', 'miou', 'pixel_accuracy',
      'per_class_iou'}``.
    """
    from kseg.data import records
    from kseg.em import estep
    info = records.read_split_info(records_dir, split)
    held_out = []
    for record in records.iterate_split(records_dir, split):
        if record.class_mask is not None and len(record.boxes):
            held_out.append(record)
            if len(held_out) == num_images:
                break
    if not held_out:
        raise DataError(f"split {split!r} of {records_dir} has no image with both a mask "
                        "and boxes to score the estimated masks on")
    num_classes = info["num_classes"]
    labels = [r.class_mask for r in held_out]
    rect = [estep.bbox_rect(r.boxes, r.box_classes, r.height, r.width).numpy()
            for r in held_out]
    rows = [{"method": "Bbox-Rect", "alpha": None,
             **metrics.evaluate(zip(labels, rect), num_classes)}]
    jobs = [(r.image_encoded, r.boxes, r.box_classes, num_classes,
             BboxSegConfig(alpha, mode, crf)) for alpha in alphas for r in held_out]
    with contextlib.closing(ordered_map(_estimate, jobs, workers=resolve_workers(workers),
                                        chunksize=1, start_method=start_method,
                                        desc=f"bbox-seg alpha search ({len(alphas)} alphas)")
                            ) as masks:
        for alpha in alphas:
            confusion = np.zeros((num_classes, num_classes), np.int64)
            for label in labels:
                confusion += metrics.confusion_matrix(label, next(masks), num_classes)
            rows.append({"method": "Bbox-Seg", "alpha": float(alpha),
                         **metrics.scores_from_confusion(confusion)})
    for row in rows:
        row.pop("confusion", None)
        row.pop("num_images", None)
    return {"split": split, "num_images": len(held_out), "mode": mode,
            "crf": crf.as_dict(), "class_names": info["class_names"], "rows": rows}


def format_alpha_table(result: dict) -> str:
    """The alpha-search rows as text: method, alpha, mIoU, pixel accuracy."""
    lines = [f"{'method':<10} {'alpha':>6} {'mIoU':>8} {'pix.acc':>8}"]
    for row in result["rows"]:
        alpha = "-" if row["alpha"] is None else f"{100 * row['alpha']:.0f}%"
        lines.append(f"{row['method']:<10} {alpha:>6} {100 * row['miou']:7.2f}% "
                     f"{100 * row['pixel_accuracy']:7.2f}%")
    return "\n".join(lines)
