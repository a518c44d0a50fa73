"""Datasets on disk -> prepared TFRecord splits (the readers feed `records.write_split`).

Validation happens here, at preparation time, and ends in a summary per
split (`PrepareSummary`): images written, images skipped with the reason
(naming the file), and repairs counted:

| bad input | what happens |
| --- | --- |
| unreadable or truncated image, image listed but missing | image skipped |
| mask of another size than the image, unknown label value | image skipped |
| unknown class name (XML) or category id (COCO), malformed annotation | image skipped |
| id repeated in a list / in the COCO JSON | first kept, repeats skipped |
| VOC val id in a given train_aug list | skipped (held out) |
| box partly outside the image | clipped, counted |
| box of zero area (after clipping) | dropped, counted |
| image neither RGB/grey JPEG nor PNG (e.g. CMYK) | re-encoded as PNG, counted |
| COCO annotation of an image not listed | ignored, counted |

With `strict`, every skip is an error instead (the first one stops the run,
naming the file); repairs are never errors. Shards are written atomically and
a re-run resumes (records.write_split): counts are of this run's shards. Each
run appends its summary to `<out_dir>/<split>.prepare.log`.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import os
import re
import time
from typing import Callable, Sequence

import numpy as np
from absl import logging

from kseg.data import coco, embedded, embedded_coco, records, sbd, voc
from kseg.data.errors import DataError

EMBEDDED = "embedded"

# Record.dataset of each source (the cross-dataset runs tell them apart).
VOC_DATASET = 0
COCO_DATASET = 1

BOX_CLIPPED = "boxes clipped to the image"
BOX_DROPPED = "boxes of zero area dropped"
IMAGE_REENCODED = "images re-encoded as PNG (not an RGB/grey JPEG or PNG)"
ORPHAN_ANNOTATIONS = "annotations of images the JSON does not list, ignored"

IMAGES_PER_SHARD = 1000


@dataclasses.dataclass
class PrepareSummary(records.WriteSummary):
    """A WriteSummary plus the repairs made while reading (`repairs[what]` = count)."""

    repairs: collections.Counter = dataclasses.field(default_factory=collections.Counter)

    @property
    def boxes_clipped(self) -> int:
        return self.repairs[BOX_CLIPPED]

    @property
    def boxes_dropped(self) -> int:
        return self.repairs[BOX_DROPPED]

    def __str__(self):
        lines = [super().__str__()]
        lines += [f"  repaired: {count} {what}"
                  for what, count in sorted(self.repairs.items()) if count]
        return "\n".join(lines)


def clip_boxes(boxes: np.ndarray, box_classes: np.ndarray, height: int, width: int):
    """Clips boxes to the image and drops those left without area.

    Args:
      boxes: (N, 4) [ymin, xmin, ymax, xmax], 0-based half-open pixels.
      box_classes: (N,) classes.
      height, width: image size.

    Returns:
      boxes (M, 4) float32, box_classes (M,) int32, the number of kept boxes
      that were clipped, the number dropped (zero area or not finite).
    """
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    box_classes = np.asarray(box_classes, np.int32).reshape(-1)
    limits = np.array([height, width, height, width], np.float32)
    clipped = np.clip(boxes, 0.0, limits)  # (N, 4)
    keep = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
    changed = np.any(clipped != boxes, axis=1)
    return (clipped[keep], box_classes[keep], int((changed & keep).sum()),
            int((~keep).sum()))


def _record(image_id: str, encoded: bytes, reencoded: bool, class_mask: np.ndarray | None,
            height: int, width: int, boxes, box_classes, dataset: int,
            repairs: collections.Counter, image_labels=None) -> records.Record:
    """A Record with its boxes clipped; repairs counted into `repairs`."""
    boxes, box_classes, clipped, dropped = clip_boxes(boxes, box_classes, height, width)
    repairs[BOX_CLIPPED] += clipped
    repairs[BOX_DROPPED] += dropped
    repairs[IMAGE_REENCODED] += int(reencoded)
    if image_labels is None:
        image_labels = records.labels_present(class_mask) if class_mask is not None else ()
    return records.Record(
        image_id=image_id, image_encoded=encoded, height=height, width=width,
        class_mask=class_mask, image_labels=tuple(image_labels), boxes=boxes,
        box_classes=box_classes.astype(np.int64), dataset=dataset)


def _voc_example_record(example: voc.VocExample, dataset: int,
                        repairs: collections.Counter) -> records.Record:
    height, width = example.image.shape[:2]
    return _record(example.image_id, example.image_encoded, example.image_reencoded,
                   example.class_mask, height, width, example.boxes, example.box_classes,
                   dataset, repairs)


def voc_record(root: str, image_id: str, class_names: Sequence[str],
               require_mask: bool = True, dataset: int = VOC_DATASET,
               repairs: collections.Counter | None = None) -> records.Record:
    """One example of a VOC-layout directory as a Record (validated by `voc.load_example`).

    The image bytes are stored as they are on disk (unless TensorFlow could
    not decode them, see voc.read_encoded_image); boxes are clipped to the
    image, repairs counted into `repairs`."""
    example = voc.load_example(root, image_id, len(class_names), class_names,
                               require_mask=require_mask)
    return _voc_example_record(example, dataset,
                               collections.Counter() if repairs is None else repairs)


def _num_shards(num_shards: int | None, num_images: int, images_per_shard: int) -> int:
    if num_shards:
        return num_shards
    return max(1, math.ceil(num_images / max(1, images_per_shard)))


def _write(ids: Sequence[str], load: Callable[[str, collections.Counter], records.Record],
           out_dir: str, split: str, class_names: Sequence[str], num_shards: int,
           strict: bool,
           rejected: Sequence[tuple[str, str]] = (),
           repairs: collections.Counter | None = None) -> PrepareSummary:
    """write_split with the reader's repairs counted and the ids rejected
    before reading (repeats, held-out ids) added to the skips."""
    if strict and rejected:
        raise DataError(rejected[0][1])
    for image_id, why in rejected:
        logging.warning(f"skipping {image_id}: {why}")
    repairs = collections.Counter() if repairs is None else repairs
    written = records.write_split(ids, lambda image_id: load(image_id, repairs), out_dir,
                                  split, class_names, num_shards=num_shards, strict=strict)
    summary = PrepareSummary(written=written.written,
                             skipped=list(rejected) + written.skipped,
                             shards_reused=written.shards_reused, repairs=repairs)
    logging.info(f"{split}: {summary}")
    with open(os.path.join(out_dir, f"{split}.prepare.log"), "a", encoding="utf-8") as f:
        f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {split}: {summary}\n")
    return summary


def _list_ids(path: str, what: str) -> tuple[list[str], list[tuple[str, str]]]:
    """Ids of a list file, repeats removed and returned as rejections."""
    ids, repeats = voc.split_duplicates(voc.read_id_list(path, what))
    return ids, [(i, f"{path}: id {i!r} listed more than once; the first is kept")
                 for i in repeats]


def prepare_voc_layout(root: str, out_dir: str, splits: Sequence[str], class_names: Sequence[str],
                       num_shards: int = 4, strict: bool = False,
                       dataset: int = VOC_DATASET) -> dict[str, PrepareSummary]:
    """Writes every split of a VOC-layout directory; returns {split: PrepareSummary}."""
    summaries = {}
    for split in splits:
        ids, rejected = _list_ids(voc.split_path(root, split), f"the {split!r} image list")
        summaries[split] = _write(
            ids, lambda i, repairs: voc_record(root, i, class_names, dataset=dataset,
                                               repairs=repairs),
            out_dir, split, class_names, num_shards, strict, rejected)
    return summaries


def prepare_voc(voc_root: str, out_dir: str, sbd_root: str | None = None,
                splits: Sequence[str] | None = None, num_shards: int | None = None,
                images_per_shard: int = IMAGES_PER_SHARD, strict: bool = False) -> dict[str, PrepareSummary]:
    """PASCAL VOC 2012 (+ SBD's augmented set) -> records of train, val, train_aug.

    Args:
      voc_root: VOCdevkit/VOC2012 (VOCdevkit/ is accepted too).
      out_dir: where the shards go.
      sbd_root: the augmented set (kseg/data/sbd.py), or None; a
        SegmentationClassAug/ under voc_root is found too.
      splits: default train, val and, when SegmentationClassAug exists,
        train_aug.
      num_shards: shards per split; default ceil(images / images_per_shard).
      strict: stop at the first bad example.

    Returns:
      {split: PrepareSummary}. Records have dataset id VOC_DATASET and the
      21 VOC classes.

    Raises:
      DataError: a list is missing or unreadable, train_aug is asked for
        without SegmentationClassAug, or (strict) any bad example.
    """
    nested = os.path.join(voc_root, "VOC2012")
    if not os.path.isdir(os.path.join(voc_root, "ImageSets")) and os.path.isdir(nested):
        voc_root = nested  # given VOCdevkit/ rather than VOCdevkit/VOC2012/
    aug_dir = sbd.find_aug_dir(voc_root, sbd_root)
    if sbd_root and aug_dir is None:
        raise DataError(f"{sbd_root}: no {sbd.AUG_DIRNAME}/ directory here, in its "
                        "dataset/ or under the VOC root; expected the augmented set's "
                        "label PNGs")
    if splits is None:
        splits = ["train", "val"] + (["train_aug"] if aug_dir else [])
    classes = voc.VOC_CLASSES
    summaries = {}
    for split in splits:
        if split == "train_aug":
            if aug_dir is None:
                raise DataError(
                    f"{sbd_root or voc_root}: no {sbd.AUG_DIRNAME}/ directory; "
                    "train_aug needs the augmented set's label PNGs (--sbd_root)")
            aug = sbd.train_aug_ids(voc_root, sbd_root)
            logging.info(f"train_aug: {len(aug.ids)} images, list {aug.source}, masks {aug_dir}")
            if len(aug.ids) != sbd.TRAIN_AUG_SIZE:
                logging.info(f"note: the paper's train_aug has {sbd.TRAIN_AUG_SIZE} images, "
                    f"this one {len(aug.ids)}")
            ids = aug.ids
            rejected = [(i, f"{aug.source}: id {i!r} listed more than once; the first "
                            "is kept") for i in aug.duplicates]
            rejected += [(i, f"{aug.source}: {i!r} is a VOC val image; held out of "
                             "train_aug") for i in aug.held_out]

            def load(image_id, repairs):
                example = sbd.load_example(voc_root, image_id, len(classes), classes,
                                           aug_dir, sbd_root)
                return _voc_example_record(example, VOC_DATASET, repairs)
        else:
            ids, rejected = _list_ids(voc.split_path(voc_root, split),
                                      f"the {split!r} image list")

            def load(image_id, repairs):
                return voc_record(voc_root, image_id, classes, repairs=repairs)
        summaries[split] = _write(
            ids, load, out_dir, split, classes,
            _num_shards(num_shards, len(ids), images_per_shard), strict, rejected)
    return summaries


def default_record_split(coco_split: str) -> str:
    """Record split name of a COCO split: 'train2014' -> 'train', 'val2014' -> 'val'."""
    return re.sub(r"\d{4}$", "", coco_split) or coco_split


def prepare_coco(coco_root: str, out_dir: str, coco_split: str = "train2014",
                 record_split: str | None = None,
                 categories: Sequence[tuple[int, str]] | None = coco.COCO_CATEGORIES,
                 dataset: int = COCO_DATASET, num_shards: int | None = None,
                 images_per_shard: int = IMAGES_PER_SHARD, strict: bool = False) -> PrepareSummary:
    """MS-COCO instances (<root>/annotations/instances_<split>.json and
    <root>/<split>/) -> records of one split (see kseg/data/coco.py).

    Args:
      coco_root: the COCO root.
      out_dir: where the shards go.
      coco_split: e.g. 'train2014', 'val2014'.
      record_split: the records' split name; default `default_record_split`.
      categories: the label table ((id, name), ...), default COCO's 80
        (labels 1..80, class names coco.COCO_CLASSES); None: the JSON's.
      dataset: Record.dataset (COCO_DATASET).
      num_shards: default ceil(images / images_per_shard).
      strict: stop at the first bad example.

    Returns:
      PrepareSummary.
    """
    json_path = coco.instances_path(coco_root, coco_split)
    index = coco.read_instances(json_path, categories)
    images_dir = coco.image_dir(coco_root, coco_split)
    ids = list(index.images)
    if not ids:
        raise DataError(f"{json_path}: lists no usable image")
    split = record_split or default_record_split(coco_split)
    logging.info(f"{split}: {len(ids)} images from {json_path}")
    repairs = collections.Counter({ORPHAN_ANNOTATIONS: index.orphan_annotations})

    def load(image_id, repairs):
        example = coco.load_example(index, images_dir, image_id)
        return _record(image_id, example.image_encoded, example.image_reencoded,
                       example.class_mask, example.height, example.width, example.boxes,
                       example.box_classes, dataset, repairs,
                       image_labels=example.image_labels)

    return _write(ids, load, out_dir, split, index.classes,
                  _num_shards(num_shards, len(ids), images_per_shard), strict,
                  index.rejected, repairs)


def ensure_embedded_records(cache_dir: str | None = None, num_shards: int = 4) -> str:
    """The records directory of the embedded dataset, generating and converting
    it on first use (each step is atomic and resumable). Returns the path."""
    root = embedded.ensure_embedded(cache_dir)
    out_dir = os.path.join(root, "records")
    splits = [s for s in ("train", "val")
              if not os.path.isfile(os.path.join(out_dir, f"{s}.json"))]
    if splits:
        prepare_voc_layout(root, out_dir, splits, embedded.EMBEDDED_CLASSES,
                           num_shards=num_shards, strict=True)
    return out_dir


def ensure_embedded_coco_records(cache_dir: str | None = None, num_shards: int = 4,
                                 **generate_kwargs) -> str:
    """The records directory (splits train and val, dataset id COCO_DATASET,
    classes embedded_coco.EMBEDDED_COCO_CLASSES) of the embedded COCO-like
    companion, generated and converted on first use. Returns the path."""
    root = embedded_coco.ensure_embedded_coco(cache_dir, **generate_kwargs)
    out_dir = os.path.join(root, "records")
    for split in ("train", "val"):
        if not os.path.isfile(os.path.join(out_dir, f"{split}.json")):
            prepare_coco(root, out_dir, split, categories=embedded_coco.EMBEDDED_COCO_CATEGORIES,
                         dataset=COCO_DATASET, num_shards=num_shards, strict=True)
    return out_dir
