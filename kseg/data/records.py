"""The one on-disk format: sharded TFRecords of `tf.train.Example` (docs/data.md).

Every record holds the encoded image and whichever annotations exist; which
of them a run trains on (pixels, image labels, boxes) is chosen per example
at training time, never baked in here.

| key | type | meaning |
| --- | --- | --- |
| image/id | bytes | the image id |
| image/encoded | bytes | JPEG or PNG as read from disk |
| image/height, image/width | int64 | size of the image |
| label/encoded | bytes | class mask as a grayscale PNG of label indices, b"" if none |
| image/labels | int64 list | labels present (0 = background, 1..L objects) |
| boxes/ymin, xmin, ymax, xmax | float list | boxes, pixel units, half-open |
| boxes/class | int64 list | the class of each box |
| dataset | int64 | dataset id (0 = the run's primary dataset) |

A split is written as `<out_dir>/<split>-SSSSS-of-NNNNN.tfrecord` plus
`<out_dir>/<split>.json` (class names, ids, counts). Shards are written to a
temporary name and renamed, so an interrupted run leaves no half shard and a
re-run only writes the missing ones.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
from typing import Callable, Iterable, Sequence

import numpy as np
import tensorflow as tf
from absl import logging
from PIL import Image

from kseg.constants import IGNORE_LABEL
from kseg.data.errors import DataError
from kseg.utils import files


@dataclasses.dataclass(frozen=True)
class Record:
    """One example in memory, as written to and read from a TFRecord."""

    image_id: str
    image_encoded: bytes  # JPEG or PNG bytes.
    height: int
    width: int
    class_mask: np.ndarray | None = None  # (H, W) uint8, 255 = ignore.
    image_labels: tuple[int, ...] = ()  # Labels present, background included.
    boxes: np.ndarray = dataclasses.field(
        default_factory=lambda: np.zeros((0, 4), np.float32))  # (N, 4) ymin, xmin, ymax, xmax.
    box_classes: np.ndarray = dataclasses.field(
        default_factory=lambda: np.zeros((0,), np.int64))  # (N,)
    dataset: int = 0


def labels_present(class_mask: np.ndarray) -> tuple[int, ...]:
    """The sorted labels of a class mask, 255 excluded."""
    values = np.unique(class_mask)
    return tuple(int(v) for v in values if v != IGNORE_LABEL)


def encode_png(label: np.ndarray) -> bytes:
    """(H, W) uint8 -> grayscale PNG bytes (indices, not colours)."""
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(label, np.uint8), mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def encode_image(image: np.ndarray, fmt: str = "JPEG") -> bytes:
    """(H, W, 3) uint8 -> encoded bytes."""
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(image, np.uint8)).save(buffer, format=fmt, quality=95)
    return buffer.getvalue()


def _bytes(values):
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=values))


def _ints(values):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v) for v in values]))


def _floats(values):
    return tf.train.Feature(float_list=tf.train.FloatList(value=[float(v) for v in values]))


def to_example(record: Record) -> bytes:
    """Serialises a Record as a `tf.train.Example`."""
    boxes = np.asarray(record.boxes, np.float32).reshape(-1, 4)
    label = b"" if record.class_mask is None else encode_png(record.class_mask)
    feature = {
        "image/id": _bytes([record.image_id.encode()]),
        "image/encoded": _bytes([record.image_encoded]),
        "image/height": _ints([record.height]),
        "image/width": _ints([record.width]),
        "label/encoded": _bytes([label]),
        "image/labels": _ints(record.image_labels),
        "boxes/ymin": _floats(boxes[:, 0]),
        "boxes/xmin": _floats(boxes[:, 1]),
        "boxes/ymax": _floats(boxes[:, 2]),
        "boxes/xmax": _floats(boxes[:, 3]),
        "boxes/class": _ints(record.box_classes),
        "dataset": _ints([record.dataset]),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


FEATURES = {
    "image/id": tf.io.FixedLenFeature([], tf.string),
    "image/encoded": tf.io.FixedLenFeature([], tf.string),
    "image/height": tf.io.FixedLenFeature([], tf.int64),
    "image/width": tf.io.FixedLenFeature([], tf.int64),
    "label/encoded": tf.io.FixedLenFeature([], tf.string, default_value=b""),
    "image/labels": tf.io.VarLenFeature(tf.int64),
    "boxes/ymin": tf.io.VarLenFeature(tf.float32),
    "boxes/xmin": tf.io.VarLenFeature(tf.float32),
    "boxes/ymax": tf.io.VarLenFeature(tf.float32),
    "boxes/xmax": tf.io.VarLenFeature(tf.float32),
    "boxes/class": tf.io.VarLenFeature(tf.int64),
    "dataset": tf.io.FixedLenFeature([], tf.int64, default_value=0),
}


def decode_rgb(encoded: tf.Tensor) -> tf.Tensor:
    """Encoded JPEG, PNG, BMP or GIF bytes -> (H, W, 3) uint8 RGB.

    JPEGs are decoded with libjpeg's accurate integer DCT, as PIL, OpenCV and
    Caffe decode them: TensorFlow's default fast DCT differs from that by a
    few grey levels (docs/departures.md)."""
    return tf.cond(
        tf.io.is_jpeg(encoded),
        lambda: tf.io.decode_jpeg(encoded, channels=3, dct_method="INTEGER_ACCURATE"),
        lambda: tf.io.decode_image(encoded, channels=3, expand_animations=False))


def parse_example(serialized: tf.Tensor) -> dict[str, tf.Tensor]:
    """A serialised Example -> decoded tensors (pure; used inside tf.data.map).

    Returns image (H, W, 3) uint8, label (H, W) uint8 (all 255 when the
    record has no mask), has_label bool, image_labels (K,) int32,
    boxes (N, 4) float32, box_classes (N,) int32, dataset int32, id string.
    """
    f = tf.io.parse_single_example(serialized, FEATURES)
    image = decode_rgb(f["image/encoded"])  # (H, W, 3) uint8
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    has_label = tf.strings.length(f["label/encoded"]) > 0
    label = tf.cond(
        has_label,
        lambda: tf.io.decode_png(f["label/encoded"], channels=1)[..., 0],
        lambda: tf.fill([height, width], tf.constant(IGNORE_LABEL, tf.uint8)))  # (H, W)
    dense = lambda key: tf.sparse.to_dense(f[key])  # noqa: E731
    boxes = tf.stack([dense("boxes/ymin"), dense("boxes/xmin"),
                      dense("boxes/ymax"), dense("boxes/xmax")], axis=-1)  # (N, 4)
    return {
        "id": f["image/id"],
        "image": tf.ensure_shape(image, [None, None, 3]),
        "label": label,
        "has_label": has_label,
        "image_labels": tf.cast(dense("image/labels"), tf.int32),
        "boxes": boxes,
        "box_classes": tf.cast(dense("boxes/class"), tf.int32),
        "dataset": tf.cast(f["dataset"], tf.int32),
    }


def from_example(serialized: bytes) -> Record:
    """Reads a serialised Example back into a Record (for tests and tools)."""
    example = tf.train.Example.FromString(serialized)
    f = example.features.feature
    label = f["label/encoded"].bytes_list.value[0]
    boxes = np.stack([np.asarray(f[k].float_list.value, np.float32)
                      for k in ("boxes/ymin", "boxes/xmin", "boxes/ymax", "boxes/xmax")], -1)
    return Record(
        image_id=f["image/id"].bytes_list.value[0].decode(),
        image_encoded=f["image/encoded"].bytes_list.value[0],
        height=f["image/height"].int64_list.value[0],
        width=f["image/width"].int64_list.value[0],
        class_mask=np.asarray(Image.open(io.BytesIO(label))) if label else None,
        image_labels=tuple(f["image/labels"].int64_list.value),
        boxes=boxes.reshape(-1, 4),
        box_classes=np.asarray(f["boxes/class"].int64_list.value, np.int64),
        dataset=f["dataset"].int64_list.value[0],
    )


# --- Writing a split ------------------------------------------------------------


def shard_path(out_dir: str, split: str, index: int, num_shards: int) -> str:
    return os.path.join(out_dir, f"{split}-{index:05d}-of-{num_shards:05d}.tfrecord")


def split_pattern(out_dir: str, split: str) -> str:
    return os.path.join(out_dir, f"{split}-*-of-*.tfrecord")


def read_split_info(out_dir: str, split: str) -> dict:
    """The `<split>.json` written with the shards; DataError if absent."""
    path = os.path.join(out_dir, f"{split}.json")
    if not os.path.isdir(out_dir):
        raise DataError(f"{out_dir}: no such directory of prepared records "
                        "(scripts/prepare_data.py writes one)")
    if not os.path.isfile(path):
        raise DataError(f"{path}: no prepared split {split!r} here "
                        "(run scripts/prepare_data.py first)")
    with open(path) as f:
        return json.load(f)


@dataclasses.dataclass
class WriteSummary:
    """What a split conversion did: counts and the reason of every skip."""

    written: int = 0
    skipped: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    shards_reused: int = 0

    def __str__(self):
        lines = [f"{self.written} images written, {len(self.skipped)} skipped, "
                 f"{self.shards_reused} shards already complete"]
        lines += [f"  skipped {image_id}: {why}" for image_id, why in self.skipped]
        return "\n".join(lines)


def write_split(ids: Sequence[str], load: Callable[[str], Record], out_dir: str, split: str,
                class_names: Sequence[str], num_shards: int = 4,
                strict: bool = False) -> WriteSummary:
    """Converts the examples `ids` of a split into sharded TFRecords.

    `load(id)` returns a Record or raises DataError naming the bad file: with
    `strict` that error propagates, otherwise the example is skipped and
    counted. Shard i holds ids[i::num_shards]; complete shards are kept, so
    an interrupted conversion resumes where it stopped.
    """
    if not ids:
        raise DataError(f"split {split!r}: the list of images is empty")
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if list(ids).count(i) > 1})[:5]
        raise DataError(f"split {split!r}: duplicate image ids {dup}")
    os.makedirs(out_dir, exist_ok=True)
    num_shards = max(1, min(num_shards, len(ids)))
    summary = WriteSummary()
    kept_ids: list[str] = []
    for index in range(num_shards):
        path = shard_path(out_dir, split, index, num_shards)
        shard_ids = list(ids[index::num_shards])
        done_path = path + ".ids"
        if os.path.isfile(path) and os.path.isfile(done_path):
            with open(done_path) as f:
                kept_ids += f.read().split()
            summary.shards_reused += 1
            continue
        written: list[str] = []
        with files.atomic_path(path) as tmp:
            with tf.io.TFRecordWriter(tmp) as writer:
                for image_id in shard_ids:
                    try:
                        record = load(image_id)
                    except DataError as e:
                        if strict:
                            raise
                        summary.skipped.append((image_id, str(e)))
                        logging.warning(f"skipping {image_id}: {e}")
                        continue
                    writer.write(to_example(record))
                    written.append(image_id)
            files.write_text(done_path, "\n".join(written) + "\n")
        kept_ids += written
        summary.written += len(written)
        logging.info(f"{split}: shard {index + 1}/{num_shards} written ({len(written)} images)")
    info = {"split": split, "class_names": list(class_names), "num_classes": len(class_names),
            "num_images": len(kept_ids), "num_shards": num_shards, "ids": sorted(kept_ids)}
    files.write_json(os.path.join(out_dir, f"{split}.json"), info)
    return summary


def iterate_split(out_dir: str, split: str) -> Iterable[Record]:
    """Reads every Record of a prepared split (eagerly; for tests and tools)."""
    for path in sorted(tf.io.gfile.glob(split_pattern(out_dir, split))):
        for serialized in tf.data.TFRecordDataset(path):
            yield from_example(serialized.numpy())
