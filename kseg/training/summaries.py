"""TensorBoard summaries of a training run: scalars and the image panel."""

from __future__ import annotations

import tensorflow as tf

from kseg.data.palette import voc_palette
from kseg.em import targets as targets_lib
from kseg.model import deprocess


def colorize(labels: tf.Tensor) -> tf.Tensor:
    """(B, h, w) int labels -> (B, h, w, 3) uint8 in the VOC palette."""
    return tf.gather(tf.constant(voc_palette()), tf.cast(labels, tf.int32))


def write_panels(trainer, batch: dict, step: int, max_images: int = 4) -> None:
    """TensorBoard images: input crop | target (ground truth or E-step) | prediction.

    Targets and predictions are at score-map resolution, enlarged to the crop
    (nearest) so the three line up."""
    batch = {k: v[:max_images] for k, v in batch.items()}
    scores = trainer.network(batch["image"], training=False)  # (b, h, w, C)
    target, _ = targets_lib.compute_targets(scores, batch, trainer.estep_config)
    size = tf.shape(batch["image"])[1:3]
    enlarge = lambda x: tf.image.resize(colorize(x), size, "nearest")  # noqa: E731
    panel = tf.concat([deprocess(batch["image"]), enlarge(target),
                       enlarge(tf.argmax(scores, -1))], axis=2)  # (b, S, 3S, 3)
    tf.summary.image("input | target | prediction", panel, step=step, max_outputs=max_images)


def write_scalars(writer, step: int, values: dict) -> None:
    """Writes each `values[name]` as a scalar summary at `step`."""
    with writer.as_default(step=step):
        for name, value in values.items():
            tf.summary.scalar(name, value)
