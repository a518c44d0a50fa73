"""The Keras model with the E-step inside `train_step`, the optimiser and the
per-layer learning-rate multipliers (docs/training.md).

`Trainer.train_step` runs, in one traced step: forward pass -> per-example
target by supervision kind (`kseg.em.targets.compute_targets`, E-steps on
stop-gradient scores) -> masked cross-entropy normalised by the counted
pixels of the *global* batch -> gradients with Caffe-style weight decay and
per-layer learning-rate multipliers -> the optimiser (SGD with momentum, the
paper's, or Adam).
"""

from __future__ import annotations

import keras
import tensorflow as tf

from kseg.config import EStepConfig, OptimConfig
from kseg.constants import CLASSIFIER, IGNORE_LABEL
from kseg.em import targets as targets_lib
from kseg.training.distribute import num_replicas, sum_over_replicas


def learning_rate_schedule(config: OptimConfig):
    """Step decay: the rate times `lr_decay` every `lr_decay_steps` steps."""
    return keras.optimizers.schedules.ExponentialDecay(
        config.learning_rate, decay_steps=config.lr_decay_steps,
        decay_rate=config.lr_decay, staircase=True)


def make_optimizer(config: OptimConfig) -> keras.optimizers.Optimizer:
    """SGD with momentum (the paper), or Adam. The per-layer multipliers of
    `lr_multiplier` scale gradients, which is an exact learning-rate
    multiplier for SGD only (Adam is invariant to gradient scale)."""
    if config.optimizer == "sgd":
        return keras.optimizers.SGD(learning_rate=learning_rate_schedule(config),
                                    momentum=config.momentum)
    if config.optimizer == "adam":
        return keras.optimizers.Adam(learning_rate=learning_rate_schedule(config))
    raise ValueError(f"optimizer must be 'sgd' or 'adam', got {config.optimizer!r}")


def lr_multiplier(variable, config: OptimConfig) -> float:
    """Caffe-style learning-rate multiplier of a variable (by its path)."""
    is_bias = variable.path.endswith("bias")
    mult = config.classifier_lr_mult if variable.path.startswith(CLASSIFIER + "/") else 1.0
    return mult * (config.bias_lr_mult if is_bias else 1.0)


class Trainer(keras.Model):
    """Wraps a DeepLab network with the EM training step.

    Input batches are dicts from `kseg.data.pipeline.train_dataset`. The
    network itself is `trainer.network` (what gets evaluated and exported).
    """

    def __init__(self, network: keras.Model, estep_config: EStepConfig = EStepConfig(),
                 optim_config: OptimConfig = OptimConfig(), **kwargs):
        super().__init__(**kwargs)
        self.network = network
        self.estep_config = estep_config
        self.optim_config = optim_config
        self.trackers = {name: keras.metrics.Mean(name=name) for name in
                         ("loss", "pixel_accuracy", "bg_fraction", "fg_fraction", "adapt_bias")}

    def call(self, images, training=False):
        return self.network(images, training=training)

    @property
    def metrics(self):
        return list(self.trackers.values())

    def train_step(self, batch):
        """One optimiser step on `batch` (this replica's slice of the global batch).

        Returns the running metrics: `loss` (mean cross-entropy per counted
        pixel) and `pixel_accuracy` are those of the global batch, the same
        on every replica; the E-step statistics are this replica's (the loop
        averages them over replicas).
        """
        variables = self.network.trainable_variables
        with tf.GradientTape() as tape:
            scores = self.network(batch["image"], training=True)  # (B, h, w, C)
            targets, stats = targets_lib.compute_targets(scores, batch, self.estep_config,
                                                         self.optimizer.iterations)
            loss_sum, counted = targets_lib.masked_cross_entropy(
                scores, targets, batch.get("label_space"))
            # Normalise by the global batch's pixel count so that replica
            # gradients add up to the single-device gradient.
            global_counted = tf.maximum(sum_over_replicas(counted), 1.0)
            loss = loss_sum / global_counted
        grads = tape.gradient(loss, variables)
        # The optimizer sums gradients over replicas: each adds its share of the decay.
        decay = self.optim_config.weight_decay / num_replicas()
        grads = [lr_multiplier(v, self.optim_config)
                 * (g + decay * v if v.path.endswith("kernel") else g)
                 for g, v in zip(grads, variables)]
        self.optimizer.apply(grads, variables)

        counted_mask = tf.not_equal(targets, IGNORE_LABEL)
        correct = tf.equal(tf.argmax(scores, -1, output_type=tf.int32), targets) & counted_mask
        global_loss, global_correct = tf.unstack(sum_over_replicas(
            tf.stack([loss, tf.reduce_sum(tf.cast(correct, tf.float32))])))
        self.trackers["loss"].update_state(global_loss)
        self.trackers["pixel_accuracy"].update_state(global_correct / global_counted)
        for name, value in stats.items():
            self.trackers[name].update_state(value)
        return {name: m.result() for name, m in self.trackers.items()}
