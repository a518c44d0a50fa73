"""Whole-image inference and split-level mIoU (DESIGN.md section 6).

`segment` is the one inference path (evaluation, prediction and the
exported SavedModel all use it): pad the image to 8k+1, run the network,
upsample the stride-8 scores bilinearly with aligned corners (score-map
pixel i sits on image pixel 8i, as in DeepLab), crop, softmax.

mIoU comes from one confusion matrix accumulated over the whole split, IoU
per class = TP / (TP + FP + FN), averaged over the classes present in the
ground truth or the prediction; label 255 is ignored.
"""

from __future__ import annotations

import json
import os
from typing import Callable, Iterable, Sequence

import keras
import numpy as np
import tensorflow as tf

from kseg.data.records import IGNORE_LABEL
from kseg.model import preprocess


def segment(network: keras.Model, images: tf.Tensor) -> tf.Tensor:
    """Class probabilities at the input size.

    images (B, H, W, 3) uint8 RGB, any size -> (B, H, W, C) float32.
    """
    height, width = tf.shape(images)[1], tf.shape(images)[2]
    # Pad bottom/right to 8k+1 so the score map's corners land on pixels.
    padded_h = (height + 6) // 8 * 8 + 1
    padded_w = (width + 6) // 8 * 8 + 1
    x = preprocess(images)  # (B, H, W, 3)
    x = tf.pad(x, [[0, 0], [0, padded_h - height], [0, padded_w - width], [0, 0]])
    scores = network(x, training=False)  # (B, k+1, l+1, C)
    scores = tf.compat.v1.image.resize_bilinear(scores, tf.stack([padded_h, padded_w]),
                                                align_corners=True)
    return tf.nn.softmax(scores[:, :height, :width], axis=-1)  # (B, H, W, C)


def make_segmenter(network: keras.Model) -> Callable[[tf.Tensor], tf.Tensor]:
    """A traced `segment` for one uint8 image (H, W, 3) -> probs (H, W, C)."""
    @tf.function(input_signature=[tf.TensorSpec([None, None, 3], tf.uint8)])
    def run(image):
        return segment(network, image[None])[0]
    return run


def confusion_matrix(label: np.ndarray, prediction: np.ndarray, num_classes: int) -> np.ndarray:
    """(C, C) int64 counts, rows = ground truth, columns = prediction; 255 ignored.

    Ground-truth values outside [0, C) other than 255 raise ValueError.
    """
    label = np.asarray(label).ravel().astype(np.int64)
    prediction = np.asarray(prediction).ravel().astype(np.int64)
    keep = label != IGNORE_LABEL
    label, prediction = label[keep], prediction[keep]
    if label.size and (label.min() < 0 or label.max() >= num_classes):
        raise ValueError(f"ground-truth label {label.max()} outside [0, {num_classes})")
    return np.bincount(label * num_classes + prediction,
                       minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def scores_from_confusion(confusion: np.ndarray) -> dict:
    """mIoU, pixel accuracy and per-class IoU (None for a class absent from
    both ground truth and prediction) of a confusion matrix."""
    confusion = np.asarray(confusion, np.float64)
    tp = np.diag(confusion)
    union = confusion.sum(0) + confusion.sum(1) - tp
    present = union > 0
    iou = np.where(present, tp / np.maximum(union, 1), np.nan)
    total = confusion.sum()
    return {
        "miou": float(np.nanmean(iou)) if present.any() else 0.0,
        "pixel_accuracy": float(tp.sum() / total) if total else 0.0,
        "per_class_iou": [None if np.isnan(v) else float(v) for v in iou],
    }


def evaluate(predictions: Iterable[tuple[np.ndarray, np.ndarray]], num_classes: int) -> dict:
    """Scores of (label (H, W), prediction (H, W)) pairs over a whole split.

    Returns the dict of `scores_from_confusion` plus `confusion` (list of
    lists) and `num_images`."""
    confusion = np.zeros((num_classes, num_classes), np.int64)
    count = 0
    for label, prediction in predictions:
        confusion += confusion_matrix(label, prediction, num_classes)
        count += 1
    result = scores_from_confusion(confusion)
    result.update(confusion=confusion.tolist(), num_images=count)
    return result


def network_predictions(network: keras.Model, dataset: tf.data.Dataset,
                        on_image: Callable[[str, np.ndarray, np.ndarray, np.ndarray], None] | None = None,
                        label_map: Sequence[int] | None = None):
    """Yields (label, prediction) per image of an `eval_dataset`.

    `on_image(id, image, probs, prediction)` sees every image (to write
    masks or run a CRF) before its pair is yielded. With `label_map` (the
    network's label of each dataset label, Cross-Joint) the probabilities
    are those of the mapped labels, renormalised, in the dataset's order."""
    run = make_segmenter(network)
    for example in dataset:
        probs = run(example["image"]).numpy()  # (H, W, C)
        if label_map is not None:
            probs = probs[..., list(label_map)]
            probs /= probs.sum(-1, keepdims=True)
        prediction = probs.argmax(-1).astype(np.uint8)
        if on_image is not None:
            on_image(example["id"].numpy().decode(), example["image"].numpy(), probs, prediction)
        yield example["label"].numpy(), prediction


def format_table(result: dict, class_names: Sequence[str]) -> str:
    """The per-class IoU table, then mIoU and pixel accuracy, as text."""
    lines = [f"{'class':<16} {'IoU':>7}"]
    for name, iou in zip(class_names, result["per_class_iou"]):
        lines.append(f"{name:<16} {'-' if iou is None else f'{100 * iou:6.2f}%':>7}")
    lines.append(f"{'mIoU':<16} {100 * result['miou']:6.2f}%")
    lines.append(f"{'pixel accuracy':<16} {100 * result['pixel_accuracy']:6.2f}%")
    return "\n".join(lines)


def write_json(result: dict, path: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(result, f, indent=1)
    os.replace(tmp, path)
