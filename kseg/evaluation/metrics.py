"""Split-level mIoU from one confusion matrix (docs/evaluation.md). Numpy only.

mIoU comes from one confusion matrix accumulated over the whole split, IoU
per class = TP / (TP + FP + FN), averaged over the classes present in the
ground truth or the prediction; label 255 is ignored.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

from kseg.constants import IGNORE_LABEL


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
    both ground truth and prediction) of a confusion matrix.

    >>> confusion = confusion_matrix([0, 0, 1, 1, 255], [0, 1, 1, 1, 0], num_classes=3)
    >>> scores_from_confusion(confusion)
    {'miou': 0.5833333333333333, 'pixel_accuracy': 0.75, 'per_class_iou': [0.5, 0.6666666666666666, None]}
    """
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


def split_result(confusion: np.ndarray, num_images: int) -> dict:
    """The scores of a split's accumulated confusion matrix, with the matrix
    itself (`confusion`, list of lists) and `num_images`."""
    result = scores_from_confusion(confusion)
    result.update(confusion=np.asarray(confusion).tolist(), num_images=num_images)
    return result


def evaluate(predictions: Iterable[tuple[np.ndarray, np.ndarray]], num_classes: int) -> dict:
    """Scores of (label (H, W), prediction (H, W)) pairs over a whole split.

    Returns the dict of `scores_from_confusion` plus `confusion` (list of
    lists) and `num_images`."""
    confusion = np.zeros((num_classes, num_classes), np.int64)
    count = 0
    for label, prediction in predictions:
        confusion += confusion_matrix(label, prediction, num_classes)
        count += 1
    return split_result(confusion, count)


def format_table(result: dict, class_names: Sequence[str]) -> str:
    """The per-class IoU table, then mIoU and pixel accuracy, as text."""
    lines = [f"{'class':<16} {'IoU':>7}"]
    for name, iou in zip(class_names, result["per_class_iou"]):
        lines.append(f"{name:<16} {'-' if iou is None else f'{100 * iou:6.2f}%':>7}")
    lines.append(f"{'mIoU':<16} {100 * result['miou']:6.2f}%")
    lines.append(f"{'pixel accuracy':<16} {100 * result['pixel_accuracy']:6.2f}%")
    return "\n".join(lines)

