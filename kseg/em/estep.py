"""E-steps: turn weak annotations and network scores into per-pixel targets.

Papandreou, Chen, Murphy, Yuille, "Weakly- and Semi-Supervised Learning of a
Deep Convolutional Network for Semantic Image Segmentation", ICCV 2015:

* `strong`          -- pixel-level annotations (Section 3.1).
* `em_fixed`        -- image-level labels, fixed biases (Section 3.2, Algorithm 1).
* `em_adapt`        -- image-level labels, adaptive biases (Section 3.2).
* `bbox_rect`       -- boxes, Bbox-Rect pre-processing (Section 3.3).
* `box_mask`        -- boxes rasterised per class, the input of `bbox_em_fixed`.
* `bbox_em_fixed`   -- boxes, online Bbox-EM-Fixed (Section 3.3).
* `estep_stats`     -- background / foreground share of a target, for logging.

Every function is pure TensorFlow: no Python loop over pixels or images, and
each one traces inside `tf.function` with unknown batch size, height and width.
Batched E-steps take scores `f` of shape (B, h, w, C) at score-map resolution,
C = L + 1 labels with 0 = background, and an optional `valid` mask (B, h, w)
bool that is False on crop padding. They return int32 targets (B, h, w) with
`IGNORE_LABEL` wherever `valid` is False, computed from
`tf.stop_gradient(scores)` so no gradient ever flows into a target.
"""

import tensorflow as tf

from kseg.constants import BBOX_OUTSIDE_MODES, IGNORE_LABEL


def _prepare(scores, valid):
    """Detached float32 scores and a bool validity mask.

    Args:
      scores: (B, h, w, C) float, any float dtype (mixed precision included).
      valid: (B, h, w) bool or None (None means every pixel is real).

    Returns:
      f: (B, h, w, C) float32, gradient stopped.
      valid: (B, h, w) bool.
    """
    f = tf.stop_gradient(tf.cast(scores, tf.float32))  # (B, h, w, C)
    if valid is None:
        valid = tf.ones(tf.shape(f)[:3], dtype=tf.bool)  # (B, h, w)
    else:
        valid = tf.cast(valid, tf.bool)  # (B, h, w)
    return f, valid


def _present(image_labels):
    """Multi-hot image labels (any dtype) as bool (B, C)."""
    return tf.cast(image_labels, tf.float32) > 0.0  # (B, C)


def _finalize(labels, valid):
    """int32 targets with IGNORE_LABEL on padding, detached.

    Args:
      labels: (B, h, w) integer.
      valid: (B, h, w) bool.

    Returns:
      (B, h, w) int32.
    """
    labels = tf.cast(labels, tf.int32)  # (B, h, w)
    ignore = tf.fill(tf.shape(labels), tf.constant(IGNORE_LABEL, tf.int32))  # (B, h, w)
    return tf.stop_gradient(tf.where(valid, labels, ignore))  # (B, h, w)


def strong(labels, valid=None):
    """Pixel-level supervision: the ground truth is the target (Section 3.1).

    Args:
      labels: (B, h, w) integer ground truth already at score-map resolution
        (nearest / every-8th-pixel sampling done by the data pipeline), with
        IGNORE_LABEL on unlabelled pixels.
      valid: (B, h, w) bool, False on crop padding; None means all valid.

    Returns:
      (B, h, w) int32 labels, IGNORE_LABEL where `valid` is False.
    """
    labels = tf.cast(labels, tf.int32)  # (B, h, w)
    if valid is None:
        valid = tf.ones(tf.shape(labels), dtype=tf.bool)  # (B, h, w)
    return _finalize(labels, tf.cast(valid, tf.bool))  # (B, h, w)


def em_fixed(scores, image_labels, valid=None, fg_bias=5.0, bg_bias=3.0):
    """EM-Fixed E-step for image-level labels (Section 3.2, Algorithm 1).

    Adds `bg_bias` to the background score when image_labels[:, 0] is set and
    `fg_bias` to every present foreground label, then takes the per-pixel
    argmax. Absent labels get no bias but are *not* suppressed (the paper's
    phi is 0 for them), so an absent label can still win a pixel whose score
    for it is high enough. Only fg_bias - bg_bias matters much; the paper uses
    5 / 3, the released Bbox-EM-Fixed config 6 / 5.

    Args:
      scores: (B, h, w, C) float logits at score-map resolution.
      image_labels: (B, C) multi-hot (bool, int or float), label 0 =
        background.
      valid: (B, h, w) bool, False on crop padding; None means all valid.
      fg_bias: float, bias added to each present foreground label.
      bg_bias: float, bias added to background when present.

    Returns:
      (B, h, w) int32 labels, IGNORE_LABEL where `valid` is False.

    Example: one image of two pixels, background and label 1 present; the
    network prefers background by 1 on the first pixel, by 3 on the second,
    and the bias difference of 2 flips only the first:
      >>> scores = tf.constant([[[[1.0, 0.0, 0.0], [3.0, 0.0, 0.0]]]])  # (1, 1, 2, 3)
      >>> em_fixed(scores, [[1, 1, 0]]).numpy()
      array([[[1, 0]]], dtype=int32)
    """
    f, valid = _prepare(scores, valid)  # (B, h, w, C), (B, h, w)
    present = tf.cast(_present(image_labels), tf.float32)  # (B, C)
    num_labels = tf.shape(present)[1]
    is_bg = tf.one_hot(0, num_labels, dtype=tf.float32)  # (C,)
    per_label = is_bg * bg_bias + (1.0 - is_bg) * fg_bias  # (C,)
    bias = present * per_label[tf.newaxis, :]  # (B, C)
    biased = f + bias[:, tf.newaxis, tf.newaxis, :]  # (B, h, w, C)
    labels = tf.argmax(biased, axis=-1, output_type=tf.int32)  # (B, h, w)
    return _finalize(labels, valid)  # (B, h, w)


def _visiting_order(present, num_iter, seed):
    """Label visited at each slot of EM-Adapt, per image.

    Each of the `num_iter` passes has P slots, P = 1 + the largest number of
    present foreground labels of any image of the batch: slot 0 is
    background, the next slots hold the image's present foreground labels in
    a fresh random order (absent labels are sorted behind them). Slots past
    an image's own labels hold absent labels and are skipped later (no-ops),
    which keeps the loop length the same for the whole batch but as short as
    the batch allows.

    Args:
      present: (B, C) bool.
      num_iter: int, number of passes.
      seed: None for stateful random ops, or a stateless seed (see `em_adapt`).

    Returns:
      (num_iter * P, B) int32 label index per slot and image.
    """
    batch = tf.shape(present)[0]
    num_labels = tf.shape(present)[1]
    shape = tf.stack([num_iter, batch, num_labels - 1])  # [T, B, C-1]
    if seed is None:
        keys = tf.random.uniform(shape)  # (T, B, C-1)
    else:
        if isinstance(seed, int):
            seed = [seed, 0]
        keys = tf.random.stateless_uniform(shape, seed=seed)  # (T, B, C-1)
    keys = tf.where(present[tf.newaxis, :, 1:], keys, 2.0)  # absent labels last
    fg_order = tf.argsort(keys, axis=-1) + 1  # (T, B, C-1) int32
    bg_first = tf.zeros(tf.stack([num_iter, batch, 1]), tf.int32)  # (T, B, 1)
    order = tf.concat([bg_first, fg_order], axis=-1)  # (T, B, C)
    num_fg = tf.reduce_sum(tf.cast(present[:, 1:], tf.int32), axis=1)  # (B,)
    slots = 1 + tf.reduce_max(tf.concat([num_fg, [0]], axis=0))  # P
    order = tf.transpose(order[:, :, :slots], [0, 2, 1])  # (T, P, B)
    return tf.reshape(order, tf.stack([-1, batch]))  # (T * P, B)


def em_adapt(scores, image_labels, valid=None, fg_portion=0.2, bg_portion=0.4,
             num_iter=5, margin=1e-5, seed=None, return_bias=False):
    """EM-Adapt E-step for image-level labels (Section 3.2, adaptive biases).

    Chooses image- and label-dependent biases so that, when visited, each
    present label wins at least its portion of the valid pixels (background
    `bg_portion`, each present foreground label `fg_portion`), and absent
    labels never win. Per image (docs/method.md):

      1. Suppress: each absent label's score is lowered to (min over present
         labels' scores at that pixel) - margin wherever it is higher.
      2. m = pixelwise max over present labels.
      3. `num_iter` passes; each visits background, then the present
         foreground labels in a random order reshuffled every pass. For label
         l: d = m - f_l, k = floor(rho_l * M) capped at M - 1 (M = valid pixels
         of the image), delta = the k-th smallest d (0-based) over valid
         pixels; f_l += delta; m = max(m, f_l).
      4. argmax over labels.

    Defaults num_iter=5 and margin=1e-5 are the authors' released settings
    (the paper's text leaves them open). Because absent labels enter neither
    m nor delta, step 1 only matters in step 4; the argmax here also considers
    present labels only, so a tie left by margin=0 or lost to float rounding
    can never go to an absent label. An image with no present label at all
    falls back to the plain argmax. Padding (valid False) counts neither in M
    nor in the percentile. Batched: the loop runs over num_iter * P visiting
    slots (P = 1 + most present foreground labels in an image of the batch)
    with a per-image random permutation; slots past an image's own labels
    are no-ops.

    Args:
      scores: (B, h, w, C) float logits at score-map resolution.
      image_labels: (B, C) multi-hot (bool, int or float), label 0 =
        background.
      valid: (B, h, w) bool, False on crop padding; None means all valid.
      fg_portion: float rho_fg, share each present foreground label wins.
      bg_portion: float rho_bg, share background wins.
      num_iter: Python int >= 0, number of passes.
      margin: float >= 0, how far below the present labels absent ones go.
      seed: None (fresh randomness per call from a stateful op, works inside
        tf.function), a Python int, or a (2,) int32/int64 tensor (stateless
        random ops: the same inputs and seed give the same output; training
        passes a seed derived from the run's seed and the step, so that a
        resumed run draws the orders an uninterrupted one draws).
      return_bias: if True also return the mean adaptive bias.

    Returns:
      labels: (B, h, w) int32, IGNORE_LABEL where `valid` is False.
      mean_bias (only if return_bias): () float32, the total bias added to a
        present foreground label, averaged over all present foreground labels
        of the batch (0 when there is none).
    """
    f, valid = _prepare(scores, valid)  # (B, h, w, C), (B, h, w)
    present = _present(image_labels)  # (B, C)
    num_labels = tf.shape(f)[3]
    present_map = present[:, tf.newaxis, tf.newaxis, :]  # (B, 1, 1, C)
    inf = tf.constant(float("inf"), tf.float32)

    # 1. Suppress absent labels.
    present_min = tf.reduce_min(tf.where(present_map, f, inf), axis=-1)  # (B, h, w)
    ceiling = present_min[..., tf.newaxis] - margin  # (B, h, w, 1)
    f = tf.where(present_map, f, tf.minimum(f, ceiling))  # (B, h, w, C)

    # 2. Running max over present labels.
    m = tf.reduce_max(tf.where(present_map, f, -inf), axis=-1)  # (B, h, w)

    # 3. Adaptive biases, one visiting slot per loop step.
    batch = tf.shape(f)[0]
    valid_flat = tf.reshape(valid, tf.stack([batch, -1]))  # (B, h*w)
    num_valid = tf.reduce_sum(tf.cast(valid_flat, tf.int32), axis=1)  # (B,)
    order = _visiting_order(present, num_iter, seed)  # (T*P, B)
    bias0 = tf.zeros(tf.shape(present), tf.float32)  # (B, C)

    def visit(t, f, m, bias):
        label = order[t]  # (B,)
        active = tf.gather(present, label, axis=1, batch_dims=1)  # (B,)
        active = active & (num_valid > 0)  # (B,)
        f_l = tf.gather(f, label, axis=3, batch_dims=1)  # (B, h, w)
        d = tf.reshape(m - f_l, tf.stack([batch, -1]))  # (B, h*w)
        d = tf.where(valid_flat, d, inf)  # (B, h*w) padding sorts last
        d_sorted = tf.sort(d, axis=1)  # (B, h*w)
        portion = tf.where(label == 0, bg_portion, fg_portion)  # (B,)
        k = tf.cast(tf.floor(portion * tf.cast(num_valid, tf.float32)), tf.int32)  # (B,)
        k = tf.maximum(tf.minimum(k, num_valid - 1), 0)  # (B,)
        delta = tf.gather(d_sorted, k, axis=1, batch_dims=1)  # (B,)
        delta = tf.where(active, delta, 0.0)  # (B,)
        onehot = tf.one_hot(label, num_labels, dtype=tf.float32)  # (B, C)
        step = onehot * delta[:, tf.newaxis]  # (B, C)
        f = f + step[:, tf.newaxis, tf.newaxis, :]  # (B, h, w, C)
        raised = tf.maximum(m, f_l + delta[:, tf.newaxis, tf.newaxis])  # (B, h, w)
        m = tf.where(active[:, tf.newaxis, tf.newaxis], raised, m)  # (B, h, w)
        # Dynamic reshapes above lose static dims; the loop needs them back.
        return t + 1, tf.ensure_shape(f, f_shape), tf.ensure_shape(m, m_shape), \
            tf.ensure_shape(bias + step, bias0.shape)

    num_slots = tf.shape(order)[0]
    f_shape, m_shape = f.shape, m.shape
    _, f, m, bias = tf.while_loop(
        lambda t, *_: t < num_slots, visit,
        (tf.constant(0), f, m, bias0))  # f (B, h, w, C), bias (B, C)

    # 4. Argmax over present labels (all labels if none is present).
    any_present = tf.reduce_any(present, axis=1)  # (B,)
    allowed = present | ~any_present[:, tf.newaxis]  # (B, C)
    f = tf.where(allowed[:, tf.newaxis, tf.newaxis, :], f, -inf)  # (B, h, w, C)
    labels = _finalize(tf.argmax(f, axis=-1, output_type=tf.int32), valid)  # (B, h, w)
    if not return_bias:
        return labels
    is_fg = tf.cast(tf.range(num_labels) > 0, tf.float32)  # (C,)
    present_fg = tf.cast(present, tf.float32) * is_fg[tf.newaxis, :]  # (B, C)
    total = tf.reduce_sum(bias * present_fg)  # ()
    count = tf.reduce_sum(present_fg)  # ()
    mean_bias = tf.math.divide_no_nan(total, count)  # ()
    return labels, tf.stop_gradient(mean_bias)


def _inside(boxes, height, width):
    """Which pixels of a height x width grid lie inside each box.

    Pixel (y, x) is inside box [ymin, xmin, ymax, xmax] when
    ymin <= y < ymax and xmin <= x < xmax: the integer pixel index is compared
    with the coordinates directly (half-open, in units of this grid).

    Args:
      boxes: (N, 4) float (or int) [ymin, xmin, ymax, xmax]; N may be 0.
      height, width: int or scalar int tensor, size of the grid.

    Returns:
      (N, height, width) bool.
    """
    boxes = tf.reshape(tf.cast(boxes, tf.float32), [-1, 4])  # (N, 4)
    ys = tf.cast(tf.range(height), tf.float32)  # (H,)
    xs = tf.cast(tf.range(width), tf.float32)  # (W,)
    ymin = boxes[:, 0, tf.newaxis]  # (N, 1)
    xmin = boxes[:, 1, tf.newaxis]  # (N, 1)
    ymax = boxes[:, 2, tf.newaxis]  # (N, 1)
    xmax = boxes[:, 3, tf.newaxis]  # (N, 1)
    in_y = (ys[tf.newaxis, :] >= ymin) & (ys[tf.newaxis, :] < ymax)  # (N, H)
    in_x = (xs[tf.newaxis, :] >= xmin) & (xs[tf.newaxis, :] < xmax)  # (N, W)
    return in_y[:, :, tf.newaxis] & in_x[:, tf.newaxis, :]  # (N, H, W)


def bbox_rect(boxes, classes, height, width):
    """Bbox-Rect targets for one image (Section 3.3).

    Every pixel inside a box takes the box's class; where boxes overlap the
    box of smallest area wins (on equal areas, the earlier box); pixels
    outside every box are background (0). Inside rule: see `_inside`.

    Args:
      boxes: (N, 4) float [ymin, xmin, ymax, xmax] in pixel units of the
        height x width grid; N may be 0.
      classes: (N,) integer class of each box (1..L).
      height, width: int or scalar int tensor.

    Returns:
      (height, width) int32 label map.

    Example: a 2x2 box of class 3 inside a 3x3 box of class 1:
      >>> bbox_rect([[0, 0, 3, 3], [1, 1, 3, 3]], [1, 3], 3, 4).numpy()
      array([[1, 1, 1, 0],
             [1, 3, 3, 0],
             [1, 3, 3, 0]], dtype=int32)
    """
    boxes = tf.reshape(tf.cast(boxes, tf.float32), [-1, 4])  # (N, 4)
    classes = tf.reshape(tf.cast(classes, tf.int32), [-1])  # (N,)
    inside = _inside(boxes, height, width)  # (N, H, W)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])  # (N,)
    inf = tf.constant(float("inf"), tf.float32)
    # A sentinel "box" of class 0 and infinite area in slot 0 is the argmin
    # wherever no real box covers the pixel, and makes N = 0 need no branch.
    area = tf.concat([[inf], area], axis=0)  # (N+1,)
    classes = tf.concat([[0], classes], axis=0)  # (N+1,)
    no_box = tf.zeros(tf.stack([1, height, width]), tf.bool)  # (1, H, W)
    inside = tf.concat([no_box, inside], axis=0)  # (N+1, H, W)
    covering_area = tf.where(inside, area[:, tf.newaxis, tf.newaxis], inf)  # (N+1, H, W)
    winner = tf.argmin(covering_area, axis=0, output_type=tf.int32)  # (H, W)
    return tf.gather(classes, winner)  # (H, W)


def box_mask(boxes, classes, num_classes, height, width):
    """Per-class box coverage for one image, the input of `bbox_em_fixed`.

    Args:
      boxes: (N, 4) float [ymin, xmin, ymax, xmax] in pixel units of the
        height x width grid; N may be 0. Inside rule: see `_inside`.
      classes: (N,) integer class of each box (1..num_classes-1).
      num_classes: int C, labels including background.
      height, width: int or scalar int tensor.

    Returns:
      (height, width, num_classes) bool, True where the pixel lies inside a
      box of class c. Channel 0 (background) is never set.
    """
    classes = tf.reshape(tf.cast(classes, tf.int32), [-1])  # (N,)
    inside = tf.cast(_inside(boxes, height, width), tf.float32)  # (N, H, W)
    onehot = tf.one_hot(classes, num_classes, dtype=tf.float32)  # (N, C)
    not_bg = tf.cast(tf.range(num_classes) > 0, tf.float32)  # (C,)
    onehot = onehot * not_bg[tf.newaxis, :]  # (N, C)
    counts = tf.einsum("nhw,nc->hwc", inside, onehot)  # (H, W, C)
    return counts > 0.0  # (H, W, C)


def bbox_em_fixed(scores, box_mask, valid=None, fg_bias=5.0, bg_bias=3.0,
                  outside="background"):
    """Bbox-EM-Fixed E-step for box annotations (Section 3.3).

    Background gets `bg_bias` everywhere; foreground label c gets `fg_bias`
    only inside boxes of class c; then per-pixel argmax.

    outside="background" (default, the paper): a hard constraint -- label c
      cannot win outside boxes of class c (its score is set to -inf there), so
      a pixel in no box is background.
    outside="soft" (the authors' released config, docs/departures.md): the
      same biases with a plain argmax, so a foreground label may win outside
      its boxes when its score is high enough.

    Args:
      scores: (B, h, w, C) float logits at score-map resolution.
      box_mask: (B, h, w, C) bool from `box_mask` (channel 0 ignored).
      valid: (B, h, w) bool, False on crop padding; None means all valid.
      fg_bias: float, bias for a foreground label inside its boxes.
      bg_bias: float, bias for background.
      outside: "background" or "soft", see above.

    Returns:
      (B, h, w) int32 labels, IGNORE_LABEL where `valid` is False.

    Raises:
      ValueError: if `outside` is not one of the two modes.
    """
    if outside not in BBOX_OUTSIDE_MODES:
        raise ValueError(
            f"bbox_em_fixed: outside={outside!r}, expected one of {BBOX_OUTSIDE_MODES}")
    f, valid = _prepare(scores, valid)  # (B, h, w, C), (B, h, w)
    num_labels = tf.shape(f)[3]
    is_bg = tf.range(num_labels) == 0  # (C,)
    in_box = tf.cast(box_mask, tf.bool) & ~is_bg  # (B, h, w, C)
    bias = (tf.cast(in_box, tf.float32) * fg_bias
            + tf.cast(is_bg, tf.float32) * bg_bias)  # (B, h, w, C)
    biased = f + bias  # (B, h, w, C)
    if outside == "background":
        allowed = in_box | is_bg  # (B, h, w, C)
        biased = tf.where(allowed, biased, float("-inf"))  # (B, h, w, C)
    labels = tf.argmax(biased, axis=-1, output_type=tf.int32)  # (B, h, w)
    return _finalize(labels, valid)  # (B, h, w)


def estep_stats(labels, valid=None):
    """Background / foreground share of a target, for TensorBoard.

    Fractions are over labelled pixels: `valid` and not IGNORE_LABEL (for
    E-step outputs the two coincide), so bg_fraction + fg_fraction = 1
    unless nothing is labelled, when both are 0.

    Args:
      labels: (B, h, w) integer target.
      valid: (B, h, w) bool or None (all valid).

    Returns:
      dict with scalar float32 "bg_fraction" and "fg_fraction".
    """
    labels = tf.cast(labels, tf.int32)  # (B, h, w)
    labelled = labels != IGNORE_LABEL  # (B, h, w)
    if valid is not None:
        labelled = labelled & tf.cast(valid, tf.bool)  # (B, h, w)
    total = tf.reduce_sum(tf.cast(labelled, tf.float32))  # ()
    bg = tf.reduce_sum(tf.cast(labelled & (labels == 0), tf.float32))  # ()
    fg = tf.reduce_sum(tf.cast(labelled & (labels != 0), tf.float32))  # ()
    return {
        "bg_fraction": tf.math.divide_no_nan(bg, total),
        "fg_fraction": tf.math.divide_no_nan(fg, total),
    }
