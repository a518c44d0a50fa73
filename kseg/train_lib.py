"""Training: the Keras model with the E-step inside `train_step`, and the loop (DESIGN.md section 4).

`Trainer.train_step` runs, in one traced step: forward pass -> per-example
target by supervision kind (`kseg.targets.compute_targets`, E-steps on
stop-gradient scores) -> masked cross-entropy normalised by the counted
pixels of the *global* batch -> gradients with Caffe-style weight decay and
per-layer learning-rate multipliers -> SGD with momentum.

`train` is the loop around it: resume from the newest checkpoint in the
model directory, log, write TensorBoard summaries, checkpoint every N steps
and at the end, evaluate on val once per epoch.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from typing import Callable

import keras
import tensorflow as tf

from kseg import targets as targets_lib
from kseg.model import CLASSIFIER, deprocess


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """SGD settings (paper values as defaults, DESIGN.md section 4)."""

    optimizer: str = "sgd"  # or "adam": not the paper's, for short runs from random init
    learning_rate: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_decay_steps: int = 2000  # multiply the rate by lr_decay every this many steps
    lr_decay: float = 0.1
    classifier_lr_mult: float = 10.0  # fc8 weights; its bias gets twice this
    bias_lr_mult: float = 2.0  # every other bias


def learning_rate_schedule(config: OptimConfig):
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


def _sum_over_replicas(value: tf.Tensor) -> tf.Tensor:
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return value
    return context.all_reduce(tf.distribute.ReduceOp.SUM, value)


def _num_replicas() -> int:
    context = tf.distribute.get_replica_context()
    return 1 if context is None else context.num_replicas_in_sync


class Trainer(keras.Model):
    """Wraps a DeepLab network with the EM training step.

    Input batches are dicts from `kseg.data.pipeline.train_dataset`. The
    network itself is `trainer.network` (what gets evaluated and exported).
    """

    def __init__(self, network: keras.Model, estep_config=targets_lib.EStepConfig(),
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
        variables = self.network.trainable_variables
        with tf.GradientTape() as tape:
            scores = self.network(batch["image"], training=True)  # (B, h, w, C)
            targets, stats = targets_lib.compute_targets(scores, batch, self.estep_config)
            loss_sum, counted = targets_lib.masked_cross_entropy(
                scores, targets, batch.get("label_space"))
            # Normalise by the global batch's pixel count so that replica
            # gradients add up to the single-device gradient.
            loss = loss_sum / tf.maximum(_sum_over_replicas(counted), 1.0)
        grads = tape.gradient(loss, variables)
        decay = self.optim_config.weight_decay / _num_replicas()
        grads = [lr_multiplier(v, self.optim_config)
                 * (g + decay * v if v.path.endswith("kernel") else g)
                 for g, v in zip(grads, variables)]
        self.optimizer.apply(grads, variables)

        counted_mask = tf.not_equal(targets, 255)
        correct = tf.equal(tf.argmax(scores, -1, output_type=tf.int32), targets) & counted_mask
        self.trackers["loss"].update_state(loss_sum / tf.maximum(counted, 1.0))
        self.trackers["pixel_accuracy"].update_state(
            tf.reduce_sum(tf.cast(correct, tf.float32)) / tf.maximum(counted, 1.0))
        for name, value in stats.items():
            self.trackers[name].update_state(value)
        return {name: m.result() for name, m in self.trackers.items()}


@dataclasses.dataclass(frozen=True)
class LoopConfig:
    """How long to train and how often to log, checkpoint and evaluate."""

    model_dir: str
    num_steps: int = 6000
    steps_per_epoch: int = 500  # val evaluation once per epoch
    log_every: int = 20
    image_every: int = 500  # TensorBoard image panels (0: never)
    checkpoint_every: int = 500
    keep_checkpoints: int = 3


def colorize(labels: tf.Tensor) -> tf.Tensor:
    """(B, h, w) int labels -> (B, h, w, 3) uint8 in the VOC palette."""
    from kseg.data.palette import voc_palette
    return tf.gather(tf.constant(voc_palette()), tf.cast(labels, tf.int32))


def write_panels(trainer: Trainer, batch: dict, step: int, max_images: int = 4) -> None:
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


def train(trainer: Trainer, dataset: tf.data.Dataset, loop: LoopConfig,
          evaluate_fn: Callable[[keras.Model], dict] | None = None,
          strategy: tf.distribute.Strategy | None = None,
          log: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True)) -> dict:
    """Runs (or resumes) training; returns the final training metrics.

    The newest checkpoint in `loop.model_dir/checkpoints` is restored first,
    so running the same command again continues at the saved step. A
    non-finite loss stops the run with an error and keeps the last good
    checkpoint.
    """
    strategy = strategy or tf.distribute.get_strategy()
    os.makedirs(loop.model_dir, exist_ok=True)
    with strategy.scope():
        trainer.optimizer.build(trainer.network.trainable_variables)
        checkpoint = tf.train.Checkpoint(network=trainer.network, optimizer=trainer.optimizer)
    manager = tf.train.CheckpointManager(checkpoint, os.path.join(loop.model_dir, "checkpoints"),
                                         max_to_keep=loop.keep_checkpoints)
    if manager.latest_checkpoint:
        checkpoint.restore(manager.latest_checkpoint).assert_existing_objects_matched()
        log(f"resumed from {manager.latest_checkpoint} at step {int(trainer.optimizer.iterations)}")
    step = int(trainer.optimizer.iterations.numpy())

    @tf.function
    def train_fn(batch):
        out = strategy.run(trainer.train_step, args=(batch,))
        return {k: strategy.reduce(tf.distribute.ReduceOp.MEAN, v, axis=None) for k, v in out.items()}

    panel_batch = next(iter(dataset)) if loop.image_every else None
    iterator = iter(strategy.experimental_distribute_dataset(dataset))
    writer = tf.summary.create_file_writer(os.path.join(loop.model_dir, "train"))
    logs: dict = {}
    start, start_step = time.time(), step
    while step < loop.num_steps:
        logs = {k: float(v) for k, v in train_fn(next(iterator)).items()}
        step += 1
        if not math.isfinite(logs["loss"]):
            raise FloatingPointError(
                f"loss is {logs['loss']} at step {step}; stopping. The last good checkpoint "
                f"is kept: {manager.latest_checkpoint}. Lower --learning_rate?")
        if step % loop.log_every == 0 or step == loop.num_steps:
            lr = float(trainer.optimizer.learning_rate)  # the rate of the next step
            rate = (step - start_step) / max(time.time() - start, 1e-9)
            log(f"step {step}/{loop.num_steps} " + " ".join(
                f"{k}={v:.4f}" for k, v in logs.items()) + f" lr={lr:.2e} ({rate:.2f} steps/s)")
            with writer.as_default(step=step):
                for k, v in logs.items():
                    tf.summary.scalar(k, v)
                tf.summary.scalar("learning_rate", lr)
            for m in trainer.metrics:
                m.reset_state()
        if loop.image_every and (step % loop.image_every == 0 or step == loop.num_steps):
            with writer.as_default():
                write_panels(trainer, panel_batch, step)
        if step % loop.checkpoint_every == 0 or step == loop.num_steps:
            manager.save(checkpoint_number=step)
        if evaluate_fn is not None and (step % loop.steps_per_epoch == 0 or step == loop.num_steps):
            result = evaluate_fn(trainer.network)
            log(f"step {step}: val mIoU={100 * result['miou']:.2f}% "
                f"pixel accuracy={100 * result['pixel_accuracy']:.2f}%")
            with writer.as_default(step=step):
                tf.summary.scalar("val/miou", result["miou"])
                tf.summary.scalar("val/pixel_accuracy", result["pixel_accuracy"])
    writer.flush()
    return logs


def restore_network(network: keras.Model, model_dir: str) -> str:
    """Loads the newest checkpoint's network weights; returns its path."""
    latest = tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints"))
    if latest is None:
        raise FileNotFoundError(f"no checkpoint in {os.path.join(model_dir, 'checkpoints')}")
    tf.train.Checkpoint(network=network).restore(latest).expect_partial()
    return latest


def save_run_config(model_dir: str, config: dict) -> None:
    """Writes the run's settings as `model_dir/config.json` (model, data, E-step)."""
    os.makedirs(model_dir, exist_ok=True)
    with open(os.path.join(model_dir, "config.json"), "w") as f:
        json.dump(config, f, indent=1, default=str)


def load_run_config(model_dir: str) -> dict:
    path = os.path.join(model_dir, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: is {model_dir!r} a kseg training directory?")
    with open(path) as f:
        return json.load(f)

