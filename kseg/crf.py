"""Fully connected CRF (Krähenbühl & Koltun 2011) for post-processing and Bbox-Seg.

Two uses (DESIGN §3, §6, §9):
  * test-time post-processing: :func:`dense_crf` on the network's upsampled
    softmax probabilities;
  * Bbox-Seg pre-processing: :func:`bbox_seg` turns bounding boxes into a
    segmentation by running the same CRF on unaries built from the boxes
    (:func:`bbox_seg_unary`).

The CRF is pydensecrf's ``DenseCRF2D`` (installed from the ``pydensecrf2``
package) with a Potts compatibility, diagonal kernels and symmetric
normalisation, the same model as DeepLab's C++ densecrf:

  E(x) = sum_i -log p_i(x_i)
       + sum_{i<j} [x_i != x_j] * (bi_w  * exp(-|p_i-p_j|^2 / 2 bi_xy_std^2
                                              -|I_i-I_j|^2 / 2 bi_rgb_std^2)
                                  + pos_w * exp(-|p_i-p_j|^2 / 2 pos_xy_std^2))

with p pixel positions and I RGB colours. Images are independent: run many
through :func:`kseg.parallel.ordered_map`.
"""

import dataclasses
from dataclasses import dataclass

import numpy as np
import pydensecrf.densecrf as dcrf

# Probabilities are floored here before -log so the unary stays finite.
MIN_PROB = 1e-8
# Probabilities must sum to 1 over labels within this tolerance.
SUM_TOLERANCE = 1e-3
# VOC images are about 500 px on the long side; the published CRF position
# stds are in pixels of images that size.
REFERENCE_IMAGE_SIZE = 500


@dataclass(frozen=True)
class CRFParams:
    """Dense-CRF kernel parameters; defaults are DeepLab-v1 LargeFOV on VOC.

    Attributes:
      bi_w: weight of the bilateral (position + colour) kernel.
      bi_xy_std: position std of the bilateral kernel, in pixels.
      bi_rgb_std: colour std of the bilateral kernel, in 0..255 intensity units.
      pos_w: weight of the Gaussian (position only) smoothness kernel.
      pos_xy_std: position std of the Gaussian kernel, in pixels.
      num_iter: mean-field iterations.

    The position stds are in pixels of ~500 px images (VOC); use
    :meth:`scaled` or :meth:`for_image_size` on other data.
    """

    bi_w: float = 4.0
    bi_xy_std: float = 121.0
    bi_rgb_std: float = 5.0
    pos_w: float = 3.0
    pos_xy_std: float = 3.0
    num_iter: int = 10

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
                raise ValueError(f"CRFParams.{field.name} must be a number, got {value!r}")
            if not np.isfinite(value) or value <= 0:
                raise ValueError(f"CRFParams.{field.name} must be positive, got {value!r}")
        if int(self.num_iter) != self.num_iter:
            raise ValueError(f"CRFParams.num_iter must be an integer, got {self.num_iter!r}")
        # Normalise types so flag lines and equality do not depend on the caller.
        for field in dataclasses.fields(self):
            cast = int if field.name == "num_iter" else float
            object.__setattr__(self, field.name, cast(getattr(self, field.name)))

    def scaled(self, factor):
        """The same parameters with both position stds multiplied by ``factor``."""
        if not factor > 0:
            raise ValueError(f"CRF scale factor must be positive, got {factor!r}")
        return dataclasses.replace(self, bi_xy_std=self.bi_xy_std * factor,
                                   pos_xy_std=self.pos_xy_std * factor)

    def for_image_size(self, height, width, reference_size=REFERENCE_IMAGE_SIZE):
        """:meth:`scaled` by (long side of the image) / ``reference_size``."""
        return self.scaled(max(height, width) / reference_size)

    def as_dict(self, prefix=""):
        """``{prefix + field: value}``; with ``prefix='crf_'`` these are flag names."""
        return {prefix + f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def to_flags(self, prefix="crf_"):
        """absl flag lines, e.g. ``['--crf_bi_w=4.0', ..., '--crf_num_iter=10']``.

        Written next to results so every score records the CRF that made it.
        """
        return [f"--{name}={value!r}" for name, value in self.as_dict(prefix).items()]

    @classmethod
    def from_dict(cls, values, prefix="crf_"):
        """Builds params from ``{prefix + field: value}`` (e.g. absl
        ``FLAGS.flag_values_dict()``); other keys are ignored, missing fields
        keep their defaults."""
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {}
        for key, value in values.items():
            if key.startswith(prefix) and key[len(prefix):] in names:
                kwargs[key[len(prefix):]] = value
        return cls(**kwargs)

    @classmethod
    def from_flags(cls, lines, prefix="crf_"):
        """Parses lines written by :meth:`to_flags` (other lines are ignored)."""
        values = {}
        for line in lines:
            line = line.strip()
            if not line.startswith("--" + prefix) or "=" not in line:
                continue
            key, value = line[2:].split("=", 1)
            try:
                values[key] = float(value) if key != prefix + "num_iter" else int(value)
            except ValueError:
                raise ValueError(f"CRF flag line {line!r}: expected a number") from None
        return cls.from_dict(values, prefix)


# Bbox-Seg CRF of the authors' released scripts (DESIGN §9): bilateral
# weight 45, position std 37, colour std 3; Gaussian weight 15, std 3;
# 10 iterations. The stds are for ~500 px VOC images: on smaller images use
# BBOX_SEG_CRF_PARAMS.for_image_size(h, w). The strong bilateral weight lets
# colour edges decide the open part of each box.
BBOX_SEG_CRF_PARAMS = CRFParams(bi_w=45.0, bi_xy_std=37.0, bi_rgb_std=3.0,
                                pos_w=15.0, pos_xy_std=3.0, num_iter=10)


def _check_image_and_probs(image, probs):
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        raise ValueError(f"dense_crf: image must be a uint8 numpy array, got "
                         f"{getattr(image, 'dtype', type(image).__name__)}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"dense_crf: image must have shape (H, W, 3) RGB, got {image.shape}")
    if not isinstance(probs, np.ndarray) or not np.issubdtype(probs.dtype, np.floating):
        raise ValueError(f"dense_crf: probs must be a float numpy array, got "
                         f"{getattr(probs, 'dtype', type(probs).__name__)}")
    if probs.ndim != 3:
        raise ValueError(f"dense_crf: probs must have shape (H, W, C), got {probs.shape}")
    if probs.shape[:2] != image.shape[:2]:
        raise ValueError(f"dense_crf: probs height/width {probs.shape[:2]} differ from "
                         f"the image's {image.shape[:2]}")
    if probs.shape[2] < 1:
        raise ValueError("dense_crf: probs has no label channel")
    if not np.all(np.isfinite(probs)):
        raise ValueError("dense_crf: probs contains NaN or infinity")
    if probs.min() < 0:
        raise ValueError(f"dense_crf: probs must be non-negative, min is {probs.min():g}")
    sums = probs.sum(axis=-1, dtype=np.float64)
    worst = np.abs(sums - 1.0).max()
    if worst > SUM_TOLERANCE:
        raise ValueError(f"dense_crf: probs must sum to 1 over the label axis "
                         f"(softmax probabilities, not logits); off by up to {worst:g}")


def dense_crf(image, probs, params=CRFParams()):
    """Mean-field inference in the fully connected CRF (DESIGN §6).

    Args:
      image: (H, W, 3) uint8 RGB image.
      probs: (H, W, C) float softmax probabilities at the image's size, summing
        to 1 over C. The unary is -log(max(probs, MIN_PROB)).
      params: :class:`CRFParams`.

    Returns:
      probs_out: (H, W, C) float32 CRF marginals (each pixel sums to 1).
      labels: (H, W) int32, the argmax of ``probs_out``.

    Raises:
      ValueError: on a bad dtype, shape or probability table (message says which).
      TypeError: ``params`` is not a :class:`CRFParams`.
    """
    if not isinstance(params, CRFParams):
        raise TypeError(f"dense_crf: params must be a CRFParams, got {type(params).__name__}")
    _check_image_and_probs(image, probs)
    height, width, num_labels = probs.shape
    # pydensecrf wants the unary as (C, H*W) float32 and the image as a
    # C-contiguous (H, W, 3) uint8 buffer.
    unary = -np.log(np.maximum(probs, MIN_PROB), dtype=np.float32)
    unary = np.ascontiguousarray(unary.reshape(height * width, num_labels).T)
    crf = dcrf.DenseCRF2D(width, height, num_labels)
    crf.setUnaryEnergy(unary)
    crf.addPairwiseGaussian(sxy=params.pos_xy_std, compat=params.pos_w)
    # pydensecrf takes a writable buffer: images decoded by PIL through
    # np.asarray are read-only, so copy those.
    rgbim = np.require(image, np.uint8, ["C_CONTIGUOUS", "WRITEABLE"])
    crf.addPairwiseBilateral(sxy=params.bi_xy_std, srgb=params.bi_rgb_std,
                             rgbim=rgbim, compat=params.bi_w)
    marginals = np.asarray(crf.inference(params.num_iter), dtype=np.float32)  # (C, H*W)
    probs_out = np.ascontiguousarray(marginals.T.reshape(height, width, num_labels))
    labels = probs_out.argmax(axis=-1).astype(np.int32)
    return probs_out, labels


# ---------------------------------------------------------------- Bbox-Seg


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
    if not 2 <= num_classes <= 255:
        raise ValueError(f"bbox_seg: num_classes must be in [2, 255] (background + "
                         f"labels, 255 is the ignore label), got {num_classes}")
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
    """Bbox-Seg unary probabilities from bounding boxes (DESIGN §3, §9).

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
    """Bbox-Seg: a segmentation estimated from boxes with the dense CRF (DESIGN §3).

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
