"""The per-example choice of training target by supervision kind (docs/method.md, docs/training.md).

The kind of supervision is data: every example of a batch carries a `kind`
id, and `compute_targets` gives each example the target of its kind, so one
traced step serves strong, image-label and box examples mixed in one batch.

| kind | what the pipeline puts in `label` | target |
| --- | --- | --- |
| strong | the ground-truth mask | the mask (downsampled) |
| bbox_seg | the Bbox-Seg mask estimated offline | that mask |
| bbox_rect | the boxes rasterised (`estep.bbox_rect`) | that mask |
| em_fixed | 255 | `estep.em_fixed` on image labels |
| em_adapt | 255 | `estep.em_adapt` on image labels |
| bbox_em_fixed | 255 | `estep.bbox_em_fixed` on the box mask |
"""

from __future__ import annotations

import tensorflow as tf

from kseg.config import EStepConfig
from kseg.constants import IGNORE_LABEL, KIND_ID, KINDS, WEAK_KINDS
from kseg.em import crf as estep_crf
from kseg.em import estep


def kind_id(name: str) -> int:
    if name not in KIND_ID:
        raise ValueError(f"unknown supervision kind {name!r}; expected one of {KINDS}")
    return KIND_ID[name]


def compute_targets(scores: tf.Tensor, batch: dict, config: EStepConfig = EStepConfig(),
                    step=None, seed=None):
    """The target ŷ of every example of a batch, by its kind.

    Args:
      scores: (B, h, w, C) float logits; no gradient flows into the targets.
      batch: dict with kind (B,) int32, image (B, S, S, 3) float32 crops
        (read with `config.estep_crf` only), label (B, h, w) int32, valid (B, h, w)
        bool, image_labels (B, C) float multi-hot, box_mask (B, h, w, C) bool,
        optionally label_space (B, C) bool: E-steps only choose among the
        labels of the example's own dataset.
      config: the E-step settings.
      step: the training step (scalar), for `config.box_warmup_steps` and
        `config.weak_warmup_steps` (the statistics are those of the E-step
        even while warming up); None: no warm-up.
      seed: the stateless seed of EM-Adapt's random visiting order, a (2,)
        int tensor (the trainer derives it from the run's seed and the step);
        None: a stateful draw.

    Returns:
      targets (B, h, w) int32 with 255 = ignored, and a dict of scalar
      statistics of the weak examples' E-step (`bg_fraction`,
      `fg_fraction`, `adapt_bias`).
    """
    scores = tf.stop_gradient(scores)  # (B, h, w, C)
    if "label_space" in batch:
        scores = tf.where(batch["label_space"][:, None, None, :], scores, -1e9)
    kind, valid = batch["kind"], batch["valid"]  # (B,), (B, h, w)
    if config.estep_crf:
        # The weak examples' scores through the dense CRF first (kseg.em.crf).
        weak = tf.reduce_any(tf.equal(kind[:, None], [KIND_ID[k] for k in WEAK_KINDS]), axis=1)
        scores = estep_crf.refine_where(scores, batch["image"], weak)  # (B, h, w, C)
        if "label_space" in batch:
            scores = tf.where(batch["label_space"][:, None, None, :], scores, -1e9)
    targets = estep.strong(batch["label"], valid)  # (B, h, w)
    adapt_bias = tf.constant(0.0)

    def em_adapt():
        labels, bias = estep.em_adapt(
            scores, batch["image_labels"], valid, fg_portion=config.fg_portion,
            bg_portion=config.bg_portion, num_iter=config.adapt_iters,
            margin=config.adapt_margin, seed=seed, return_bias=True)
        return labels, bias

    box_boost = 0.0
    if config.box_warmup_steps and step is not None:
        # A bias no score overcomes: every box pixel goes to a covering class.
        box_boost = tf.where(tf.cast(step, tf.int64) < config.box_warmup_steps, 1e4, 0.0)
    esteps = {
        "em_fixed": lambda: (estep.em_fixed(scores, batch["image_labels"], valid,
                                            config.fg_bias, config.bg_bias), 0.0),
        "em_adapt": em_adapt,
        "bbox_em_fixed": lambda: (estep.bbox_em_fixed(
            scores, batch["box_mask"], valid, config.fg_bias + box_boost, config.bg_bias,
            outside=config.bbox_outside), 0.0),
    }
    for name, run in esteps.items():
        mask = tf.equal(kind, KIND_ID[name])  # (B,)
        # Only run an E-step when some example of the batch needs it.
        labels, bias = tf.cond(tf.reduce_any(mask),
                               lambda run=run: tuple(tf.convert_to_tensor(t) for t in run()),
                               lambda: (targets, tf.constant(0.0)))
        targets = tf.where(mask[:, None, None], labels, targets)  # (B, h, w)
        if name == "em_adapt":
            adapt_bias = tf.cast(bias, tf.float32)
    weak = tf.zeros_like(kind, tf.bool)
    for name in WEAK_KINDS:
        weak |= tf.equal(kind, KIND_ID[name])
    weak_valid = valid & weak[:, None, None]  # (B, h, w)
    stats = estep.estep_stats(tf.where(weak_valid, targets, IGNORE_LABEL), weak_valid)
    stats["adapt_bias"] = adapt_bias
    if config.weak_warmup_steps and step is not None:
        image_label = tf.equal(kind, KIND_ID["em_fixed"]) | tf.equal(kind, KIND_ID["em_adapt"])
        warming = tf.cast(step, tf.int64) < config.weak_warmup_steps
        targets = tf.where((image_label & warming)[:, None, None], IGNORE_LABEL, targets)
    return tf.stop_gradient(targets), stats


def masked_cross_entropy(scores: tf.Tensor, targets: tf.Tensor, label_space=None):
    """Softmax cross-entropy summed over non-ignored pixels.

    scores (B, h, w, C) logits, targets (B, h, w) int32 with 255 ignored;
    label_space (B, C) bool, optional: the labels of each example's dataset
    (Cross-Joint training): the softmax runs over those labels only.
    Returns (sum of losses, number of counted pixels), both float32 scalars,
    so the caller can normalise by the pixel count of the global batch.
    """
    counted = tf.not_equal(targets, IGNORE_LABEL)  # (B, h, w)
    safe = tf.where(counted, targets, 0)
    if label_space is not None:
        scores = tf.where(label_space[:, None, None, :], scores, -1e9)  # (B, h, w, C)
    losses = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=safe, logits=scores)
    losses = tf.where(counted, losses, 0.0)  # (B, h, w)
    return tf.reduce_sum(losses), tf.reduce_sum(tf.cast(counted, tf.float32))
