"""Bbox-Seg: a segmentation estimated from bounding boxes with the dense CRF (docs/method.md).

:func:`bbox_seg_unary` builds unary probabilities from the boxes (a clamped
core per box, open pixels between background and the covering classes,
background outside every box) and :func:`bbox_seg` runs
:func:`kseg.crf.dense.dense_crf` on them. Numpy only.
"""

import numpy as np

from kseg.constants import IGNORE_LABEL
from kseg.crf.dense import CRFParams, dense_crf

# Bbox-Seg CRF of the authors' released scripts (docs/departures.md): bilateral
# weight 45, position std 37, colour std 3; Gaussian weight 15, std 3;
# 10 iterations. The stds are for ~500 px VOC images: on smaller images use
# BBOX_SEG_CRF_PARAMS.for_image_size(h, w). The strong bilateral weight lets
# colour edges decide the open part of each box.
BBOX_SEG_CRF_PARAMS = CRFParams(bi_w=45.0, bi_xy_std=37.0, bi_rgb_std=3.0,
                                pos_w=15.0, pos_xy_std=3.0, num_iter=10)



def _pixel_range(low, high, size):
    """Indices of the pixels whose centres (i + 0.5) lie in [low, high), clipped."""
    start = int(np.ceil(low - 0.5))
    stop = int(np.ceil(high - 0.5))
    return max(0, start), min(size, stop)


def _shrink_hard(box, alpha):
    """The box shrunk about its centre by sqrt(alpha) per side (keeps alpha of its area)."""
    ymin, xmin, ymax, xmax = box
    keep = np.sqrt(alpha)
    cy, cx = (ymin + ymax) / 2, (xmin + xmax) / 2
    hh, hw = (ymax - ymin) * keep / 2, (xmax - xmin) * keep / 2
    return cy - hh, cx - hw, cy + hh, cx + hw


def _shrink_erosion(box, alpha):
    """The released scripts' core: 3x3 erosions (1 px off every side each)
    repeated until at most alpha of the area remains; never below one pixel
    per side, so boxes under 3 px are not eroded."""
    ymin, xmin, ymax, xmax = box
    height, width = ymax - ymin, xmax - xmin
    steps = 0
    while (height - 2 * steps) * (width - 2 * steps) > alpha * height * width:
        if min(height, width) - 2 * (steps + 1) < 1:
            break
        steps += 1
    return ymin + steps, xmin + steps, ymax - steps, xmax - steps


def _check_boxes(boxes, classes, num_classes, height, width, alpha, mode, eps):
    boxes = np.asarray(boxes, dtype=np.float64)
    if boxes.size == 0:
        boxes = boxes.reshape(0, 4)
    classes = np.asarray(classes)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"bbox_seg: boxes must have shape (N, 4) "
                         f"[ymin, xmin, ymax, xmax], got {boxes.shape}")
    if classes.shape != (boxes.shape[0],):
        raise ValueError(f"bbox_seg: classes must have shape ({boxes.shape[0]},) to match "
                         f"the boxes, got {classes.shape}")
    if classes.size and not np.issubdtype(classes.dtype, np.integer):
        raise ValueError(f"bbox_seg: classes must be integers, got {classes.dtype}")
    if not 2 <= num_classes <= IGNORE_LABEL:
        raise ValueError(f"bbox_seg: num_classes must be in [2, {IGNORE_LABEL}] (background + "
                         f"labels, {IGNORE_LABEL} is the ignore label), got {num_classes}")
    if classes.size and (classes.min() < 1 or classes.max() >= num_classes):
        raise ValueError(f"bbox_seg: box classes must be foreground labels in "
                         f"[1, {num_classes - 1}], got {sorted(set(classes.tolist()))}")
    if not np.all(np.isfinite(boxes)):
        raise ValueError("bbox_seg: boxes contain NaN or infinity")
    if np.any(boxes[:, 2] <= boxes[:, 0]) or np.any(boxes[:, 3] <= boxes[:, 1]):
        raise ValueError("bbox_seg: every box needs ymax > ymin and xmax > xmin")
    if height < 1 or width < 1:
        raise ValueError(f"bbox_seg: image size must be positive, got {height}x{width}")
    if not 0 < alpha <= 1:
        raise ValueError(f"bbox_seg: alpha (kept core area fraction) must be in (0, 1], "
                         f"got {alpha}")
    if mode not in ("hard", "soft"):
        raise ValueError(f"bbox_seg: mode must be 'hard' or 'soft', got {mode!r}")
    if not 0 < eps < 0.5:
        raise ValueError(f"bbox_seg: eps must be in (0, 0.5), got {eps}")
    return boxes, classes.astype(np.int64)


def _box_layout(boxes, classes, num_classes, height, width, alpha, mode):
    """Per-pixel facts about the boxes, painted largest box first so the
    smallest box wins where they overlap.

    Returns:
      covered: (H, W, C) bool; [..., 0] everywhere, [..., c] inside a box of class c.
      core: (H, W) int64, the class whose core holds the pixel, else -1 (in
        'soft' mode only the core of the pixel's owner box counts).
      owner: (H, W) int64, the class of the smallest box covering the pixel, else 0.
    """
    covered = np.zeros((height, width, num_classes), dtype=bool)
    covered[..., 0] = True
    core = np.full((height, width), -1, dtype=np.int64)
    owner = np.zeros((height, width), dtype=np.int64)
    shrink = _shrink_hard if mode == "hard" else _shrink_erosion
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    for i in np.argsort(-areas, kind="stable"):
        box, label = boxes[i], classes[i]
        y0, y1 = _pixel_range(box[0], box[2], height)
        x0, x1 = _pixel_range(box[1], box[3], width)
        if y0 >= y1 or x0 >= x1:
            continue  # the box covers no pixel centre of this image
        covered[y0:y1, x0:x1, label] = True
        owner[y0:y1, x0:x1] = label
        if mode == "soft":
            core[y0:y1, x0:x1] = -1  # the smaller box now decides these pixels
        cmin_y, cmin_x, cmax_y, cmax_x = shrink(box, alpha)
        cy0, cy1 = _pixel_range(cmin_y, cmax_y, height)
        cx0, cx1 = _pixel_range(cmin_x, cmax_x, width)
        # A core too small to hold a pixel centre still clamps the box's
        # central pixel, so every box keeps at least one certain pixel.
        if cy0 >= cy1:
            cy0 = int(np.clip(np.floor((box[0] + box[2]) / 2), y0, y1 - 1))
            cy1 = cy0 + 1
        if cx0 >= cx1:
            cx0 = int(np.clip(np.floor((box[1] + box[3]) / 2), x0, x1 - 1))
            cx1 = cx0 + 1
        core[max(cy0, y0):min(cy1, y1), max(cx0, x0):min(cx1, x1)] = label
    return covered, core, owner


def bbox_seg_unary(boxes, classes, num_classes, height, width, alpha=0.2,
                   mode="hard", eps=1e-4):
    """Bbox-Seg unary probabilities from bounding boxes (docs/method.md, docs/departures.md).

    Args:
      boxes: (N, 4) float [ymin, xmin, ymax, xmax], 0-based half-open pixel
        coordinates: pixel (i, j) is in the box when its centre (i + .5, j + .5)
        is. N may be 0 (all background).
      classes: (N,) int foreground label of each box, in [1, num_classes).
      num_classes: C, background included.
      height, width: image size.
      alpha: fraction of each box's area in its clamped core (0.2 was best in
        the paper).
      mode: 'hard' (the paper, default): the core — the box shrunk about its
        centre by sqrt(alpha) per side — is clamped to the box's class, pixels
        outside every box to background, and the other box pixels get equal
        probability over background and the classes of the boxes covering
        them. 'soft' (the released scripts): the core — 3x3 erosions until
        alpha of the area remains — gets 0.75 on the class and 0.25 on
        background, the rest of the box 0.5/0.5 class/background, outside all
        boxes background; each pixel follows the smallest box covering it.
      eps: every table is mixed as (1 - eps) * p + eps / C so that -log p
        stays finite ("near-hard" clamps).

    Returns:
      (H, W, C) float32 probabilities summing to 1 over C. Where cores
      overlap, the smallest box wins.
    """
    return _unary_and_allowed(boxes, classes, num_classes, height, width,
                              alpha, mode, eps)[0]


def _unary_and_allowed(boxes, classes, num_classes, height, width, alpha, mode, eps):
    """:func:`bbox_seg_unary` and the (H, W, C) bool labels each pixel may take
    under the hard constraints."""
    boxes, classes = _check_boxes(boxes, classes, num_classes, height, width,
                                  alpha, mode, eps)
    covered, core, owner = _box_layout(boxes, classes, num_classes, height, width,
                                       alpha, mode)
    allowed = covered
    in_core = core >= 0
    allowed[in_core] = np.eye(num_classes, dtype=bool)[core[in_core]]
    if mode == "hard":
        probs = allowed / allowed.sum(axis=-1, keepdims=True)  # (H, W, C)
    else:
        probs = np.zeros((height, width, num_classes))
        rows, cols = np.nonzero(owner > 0)
        in_core = core[rows, cols] == owner[rows, cols]
        share = np.where(in_core, 0.75, 0.5)
        probs[rows, cols, owner[rows, cols]] = share
        probs[rows, cols, 0] = 1.0 - share
        probs[owner == 0, 0] = 1.0
    probs = (1.0 - eps) * probs + eps / num_classes
    return probs.astype(np.float32), allowed


def bbox_seg(image, boxes, classes, num_classes, alpha=0.2, mode="hard",
             params=BBOX_SEG_CRF_PARAMS, eps=1e-4):
    """Bbox-Seg: a segmentation estimated from boxes with the dense CRF (docs/method.md).

    Runs :func:`dense_crf` on :func:`bbox_seg_unary`. In 'hard' mode the box
    constraints are then enforced exactly: pixels outside every box are 0,
    clamped cores keep their class, and any other box pixel takes the most
    probable (under the CRF) of background and the classes of the boxes
    covering it. 'soft' mode returns the CRF labels as they are, as the
    released scripts did.

    Args:
      image: (H, W, 3) uint8 RGB.
      boxes, classes, num_classes, alpha, mode, eps: see :func:`bbox_seg_unary`.
      params: :class:`CRFParams`; default :data:`BBOX_SEG_CRF_PARAMS` (the
        released scripts' values, for ~500 px images: pass
        ``BBOX_SEG_CRF_PARAMS.for_image_size(h, w)`` on smaller ones).

    Returns:
      (H, W) uint8 labels in [0, num_classes).
    """
    if not isinstance(image, np.ndarray) or image.ndim != 3:
        raise ValueError(f"bbox_seg: image must be an (H, W, 3) uint8 array, got "
                         f"{getattr(image, 'shape', type(image).__name__)}")
    height, width = image.shape[:2]
    unary, allowed = _unary_and_allowed(boxes, classes, num_classes, height, width,
                                        alpha, mode, eps)
    probs, labels = dense_crf(image, unary, params)
    if mode == "hard":
        # probs + 1 keeps every allowed label above every forbidden one.
        labels = np.where(allowed, probs + 1.0, 0.0).argmax(axis=-1)
    return labels.astype(np.uint8)
