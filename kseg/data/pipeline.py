"""The tf.data input pipeline: shards -> decoded, augmented, batched examples (docs/data.md).

One path for every supervision kind: a `Stream` names the shards, the kind
of supervision its examples train with and how many of them go in each
mini-batch; `train_dataset` zips the streams, so a batch always holds a fixed
number of each (the semi-supervised mix). Every batch element is a dict:

| key | shape, dtype | meaning |
| --- | --- | --- |
| image | (B, S, S, 3) float32 | crop, BGR minus the mean, padded with the mean |
| label | (B, h, w) int32 | target labels at score-map resolution, 255 ignored |
| valid | (B, h, w) bool | False on crop padding |
| image_labels | (B, C) float32 | multi-hot image-level labels, background = 0 |
| box_mask | (B, h, w, C) bool | inside a box of class c |
| kind | (B,) int32 | supervision kind (`kseg.constants.KINDS`) |
| label_space | (B, C) bool | the model labels of the example's dataset (Cross-Joint) |

with S the crop size and h = w = ceil(S / 8).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import tensorflow as tf

from kseg.config import InputConfig
from kseg.constants import IGNORE_LABEL, LABEL_SOURCE, STRIDE
from kseg.data.records import parse_example
from kseg.em import estep, targets
from kseg.model import preprocess, score_map_size


@dataclasses.dataclass(frozen=True)
class Stream:
    """Examples of one supervision kind, `per_batch` of them in every batch.

    `ids` restricts the stream to those image ids (`exclude_ids` to all
    others): how a training list is split into strong and weak parts.
    """

    pattern: str
    kind: str
    per_batch: int
    ids: tuple[str, ...] | None = None
    exclude_ids: bool = False
    # label_map[l] = the model label of the records' label l (Cross-Joint: a
    # VOC stream in an 81-label COCO model); None: the same labels.
    label_map: tuple[int, ...] | None = None

    def __post_init__(self):
        targets.kind_id(self.kind)
        if self.per_batch < 1:
            raise ValueError(f"per_batch must be >= 1, got {self.per_batch}")
        if self.label_map is not None and len(set(self.label_map)) != len(self.label_map):
            raise ValueError(f"label_map must map labels one to one, got {self.label_map}")


def multi_hot(labels: tf.Tensor, num_classes: int) -> tf.Tensor:
    """(K,) int labels -> (C,) float32 multi-hot; out-of-range values dropped."""
    one_hot = tf.one_hot(labels, num_classes, dtype=tf.float32)  # (K, C), zero rows if out of range
    return tf.minimum(tf.reduce_sum(one_hot, axis=0), 1.0)  # (C,)


def remap_labels(features: dict, label_map: Sequence[int]) -> dict:
    """Renames a parsed record's labels (mask, image labels, box classes) by
    `label_map`; 255 stays 255. Labels outside the map raise at run time."""
    table = tf.constant(list(label_map) + [IGNORE_LABEL] * (256 - len(label_map)), tf.int32)
    mask_table = tf.where(tf.range(256) == IGNORE_LABEL, IGNORE_LABEL, table)
    label = tf.gather(mask_table, tf.cast(features["label"], tf.int32))
    return {**features, "label": label,
            "image_labels": tf.gather(table[:len(label_map)], features["image_labels"]),
            "box_classes": tf.gather(table[:len(label_map)], features["box_classes"])}


def random_crop_flip(features: dict, crop_size: int, flip: bool, seed: tf.Tensor) -> dict:
    """Crops (padding first when the image is smaller) and mirrors one example.

    Padding goes to the bottom and right: the mean in the image (0 after
    `preprocess`), 255 in the label and False in `valid`. Boxes follow the
    crop and the flip and are clipped to the crop.
    Returns image (S, S, 3) float32, label (S, S) int32, valid (S, S) bool,
    boxes (N, 4) float32, box_classes (N,) int32.
    """
    image = preprocess(features["image"])  # (H, W, 3)
    label = tf.cast(features["label"], tf.int32)  # (H, W)
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    pad_h, pad_w = tf.maximum(crop_size - height, 0), tf.maximum(crop_size - width, 0)
    paddings = [[0, pad_h], [0, pad_w]]
    image = tf.pad(image, paddings + [[0, 0]])
    label = tf.pad(label, paddings, constant_values=IGNORE_LABEL)
    valid = tf.pad(tf.ones([height, width], tf.bool), paddings, constant_values=False)
    seeds = tf.random.experimental.stateless_split(seed, 3)
    max_y = height + pad_h - crop_size
    max_x = width + pad_w - crop_size
    oy = tf.random.stateless_uniform([], seeds[0], 0, max_y + 1, tf.int32)
    ox = tf.random.stateless_uniform([], seeds[1], 0, max_x + 1, tf.int32)
    image = image[oy:oy + crop_size, ox:ox + crop_size]  # (S, S, 3)
    label = label[oy:oy + crop_size, ox:ox + crop_size]  # (S, S)
    valid = valid[oy:oy + crop_size, ox:ox + crop_size]  # (S, S)
    offset = tf.cast(tf.stack([oy, ox, oy, ox]), tf.float32)
    boxes = tf.clip_by_value(features["boxes"] - offset, 0.0, float(crop_size))  # (N, 4)
    if flip:
        mirror = tf.random.stateless_uniform([], seeds[2]) < 0.5
        image = tf.where(mirror, image[:, ::-1], image)
        label = tf.where(mirror, label[:, ::-1], label)
        valid = tf.where(mirror, valid[:, ::-1], valid)
        mirrored = tf.stack([boxes[:, 0], crop_size - boxes[:, 3],
                             boxes[:, 2], crop_size - boxes[:, 1]], axis=-1)
        boxes = tf.where(mirror, mirrored, boxes)
    return {"image": tf.ensure_shape(image, [crop_size, crop_size, 3]), "label": label,
            "valid": valid, "boxes": boxes, "box_classes": features["box_classes"]}


def training_example(features: dict, seed: tf.Tensor, kind: str, config: InputConfig,
                     label_map: Sequence[int] | None = None) -> dict:
    """A parsed record -> one training example of the given kind (see module table)."""
    if label_map is None:
        label_space = tf.ones([config.num_classes], tf.bool)
    else:
        features = remap_labels(features, label_map)
        label_space = multi_hot(tf.constant(label_map), config.num_classes) > 0
    crop = random_crop_flip(features, config.crop_size, config.flip, seed)
    size = score_map_size(config.crop_size)
    label = crop["label"][::STRIDE, ::STRIDE]  # (h, w)
    valid = crop["valid"][::STRIDE, ::STRIDE]  # (h, w)
    grid_boxes = crop["boxes"] / STRIDE  # score-map pixel (i, j) is crop pixel (8i, 8j).
    if config.image_labels_from == "crop":
        present = tf.boolean_mask(crop["label"], crop["label"] != IGNORE_LABEL)
        image_labels = multi_hot(present, config.num_classes)
    else:
        image_labels = multi_hot(features["image_labels"], config.num_classes)
    source = LABEL_SOURCE[kind]
    if source == "boxes":
        label = estep.bbox_rect(grid_boxes, crop["box_classes"], size, size)
    if source is None:
        label = tf.fill([size, size], IGNORE_LABEL)
    label = tf.where(valid, label, IGNORE_LABEL)
    box_mask = estep.box_mask(grid_boxes, crop["box_classes"], config.num_classes, size, size)
    return {
        "image": crop["image"],
        "label": tf.ensure_shape(label, [size, size]),
        "valid": tf.ensure_shape(valid, [size, size]),
        "image_labels": tf.ensure_shape(image_labels, [config.num_classes]),
        "box_mask": tf.ensure_shape(box_mask, [size, size, config.num_classes]),
        "kind": tf.constant(targets.kind_id(kind), tf.int32),
        "label_space": label_space,
    }


def _records(pattern: str, seed: int | None) -> tf.data.Dataset:
    files = tf.io.gfile.glob(pattern)
    if not files:
        raise FileNotFoundError(f"no TFRecord shards match {pattern!r}")
    ds = tf.data.Dataset.from_tensor_slices(sorted(files))
    ds = ds.shuffle(len(files), seed=seed)
    return ds.interleave(tf.data.TFRecordDataset, cycle_length=min(len(files), 8),
                         num_parallel_calls=tf.data.AUTOTUNE, deterministic=seed is not None)


def _id_filter(ids: Sequence[str], exclude: bool):
    table = tf.constant(sorted(ids))

    def keep(serialized):
        image_id = tf.io.parse_single_example(
            serialized, {"image/id": tf.io.FixedLenFeature([], tf.string)})["image/id"]
        found = tf.reduce_any(tf.equal(table, image_id))
        return tf.logical_not(found) if exclude else found
    return keep


def stream_dataset(stream: Stream, config: InputConfig) -> tf.data.Dataset:
    """Endless batches of `stream.per_batch` examples of one stream."""
    ds = _records(stream.pattern, config.seed)
    if stream.ids is not None:
        ds = ds.filter(_id_filter(stream.ids, stream.exclude_ids))
    ds = ds.shuffle(config.shuffle_buffer, seed=config.seed).repeat()
    ds = tf.data.Dataset.zip(ds, tf.data.Dataset.random(seed=config.seed).batch(2))
    ds = ds.map(lambda s, seed: training_example(parse_example(s), seed, stream.kind, config,
                                                 stream.label_map),
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=config.seed is not None)
    return ds.batch(stream.per_batch, drop_remainder=True)


def train_dataset(streams: Sequence[Stream], config: InputConfig) -> tf.data.Dataset:
    """Endless mini-batches with `per_batch` examples of each stream, concatenated."""
    if not streams:
        raise ValueError("train_dataset needs at least one stream")
    parts = tuple(stream_dataset(s, config) for s in streams)
    if len(parts) == 1:
        ds = parts[0]
    else:
        ds = tf.data.Dataset.zip(parts).map(
            lambda *batches: {k: tf.concat([b[k] for b in batches], 0) for k in batches[0]},
            num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def eval_dataset(pattern: str) -> tf.data.Dataset:
    """Whole images for evaluation, in shard order: dicts of id, image (H, W, 3)
    uint8 and label (H, W) uint8, unbatched."""
    files = sorted(tf.io.gfile.glob(pattern))
    if not files:
        raise FileNotFoundError(f"no TFRecord shards match {pattern!r}")
    ds = tf.data.TFRecordDataset(files)
    ds = ds.map(parse_example, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.map(lambda f: {"id": f["id"], "image": f["image"], "label": f["label"]})
    return ds.prefetch(tf.data.AUTOTUNE)
