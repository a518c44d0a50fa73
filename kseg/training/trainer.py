"""The Keras model with the E-step inside `train_step`, the optimiser and the
per-layer learning-rate multipliers (docs/training.md).

`Trainer.train_step` runs, in one traced step: forward pass -> per-example
target by supervision kind (`kseg.em.targets.compute_targets`, E-steps on
stop-gradient scores) -> masked cross-entropy normalised by the counted
pixels of the *global* batch -> gradients with Caffe-style weight decay and
per-layer learning-rate multipliers -> the optimiser (SGD with momentum, the
paper's, or Adam).

Every random draw of a step (the dropout masks, EM-Adapt's visiting order)
is stateless, seeded by (run seed, step, replica): `step_seeds`. So a step
depends only on the weights, the optimiser's slots and step counter (all in
the checkpoint) and its batch (whose position the checkpoint also holds),
and a run resumed from a checkpoint continues bit for bit as the
uninterrupted run would (docs/training.md).
"""

from __future__ import annotations

import keras
import tensorflow as tf

from kseg.config import EStepConfig, OptimConfig
from kseg.constants import CLASSIFIER, IGNORE_LABEL
from kseg.em import targets as targets_lib
from kseg.model import BACKBONE_LAYERS
from kseg.training.distribute import num_replicas, sum_over_replicas


def learning_rate_schedule(config: OptimConfig):
    """Step decay: the rate times `lr_decay` every `lr_decay_steps` steps."""
    return keras.optimizers.schedules.ExponentialDecay(
        config.learning_rate, decay_steps=config.lr_decay_steps,
        decay_rate=config.lr_decay, staircase=True)


class SGD(keras.optimizers.SGD):
    """Keras' SGD with momentum, its update as one fused op per variable.

    Keras updates a variable with momentum m as m <- momentum m - lr g, then
    w <- w + m: five element-wise passes over the variable, ~46 ms a step for
    the 20.5M parameters of the width-1 network on 2 cores (loaded machine).
    TensorFlow's ResourceApplyKerasMomentum computes the same in one pass
    (~25 ms). Nesterov and sparse gradients keep Keras' own update.
    """

    def update_step(self, gradient, variable, learning_rate):
        if self.momentum == 0 or self.nesterov or isinstance(gradient, tf.IndexedSlices):
            return super().update_step(gradient, variable, learning_rate)
        momentum = self.momentums[self._get_variable_index(variable)]
        variable = variable.value if isinstance(variable, keras.Variable) else variable
        momentum = momentum.value if isinstance(momentum, keras.Variable) else momentum
        tf.raw_ops.ResourceApplyKerasMomentum(
            var=variable.handle, accum=momentum.handle,
            lr=tf.cast(learning_rate, variable.dtype), grad=tf.cast(gradient, variable.dtype),
            momentum=tf.cast(self.momentum, variable.dtype), use_locking=False,
            use_nesterov=False)


def make_optimizer(config: OptimConfig, precision: str = "float32") -> keras.optimizers.Optimizer:
    """SGD with momentum (the paper), or Adam. The per-layer multipliers of
    `lr_multiplier` scale gradients, which is an exact learning-rate
    multiplier for SGD only (Adam is invariant to gradient scale).

    Under `precision="mixed_float16"` the optimizer is wrapped in Keras'
    `LossScaleOptimizer` (dynamic loss scaling: float16 gradients underflow
    without it; a step whose scaled gradients overflow is skipped and the
    scale halved). bfloat16 has float32's range and needs no scaling."""
    if config.optimizer == "sgd":
        optimizer = SGD(learning_rate=learning_rate_schedule(config), momentum=config.momentum)
    elif config.optimizer == "adam":
        optimizer = keras.optimizers.Adam(learning_rate=learning_rate_schedule(config))
    else:
        raise ValueError(f"optimizer must be 'sgd' or 'adam', got {config.optimizer!r}")
    if precision == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


def loss_scale(optimizer) -> tf.Tensor | float:
    """The factor `optimizer.scale_loss` multiplies a loss by (1 without loss scaling)."""
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        return optimizer.scale_loss(tf.constant(1.0))
    return 1.0


def lr_multiplier(variable, config: OptimConfig) -> float:
    """Caffe-style learning-rate multiplier of a variable (by its path)."""
    is_bias = variable.path.endswith("bias")
    mult = config.classifier_lr_mult if variable.path.startswith(CLASSIFIER + "/") else 1.0
    return mult * (config.bias_lr_mult if is_bias else 1.0)


def _times(factor: float, gradient: tf.Tensor) -> tf.Tensor:
    return gradient if factor == 1.0 else factor * gradient


def is_backbone(variable) -> bool:
    """Whether `variable` belongs to conv1-fc7 (what a pretrained backbone provides)."""
    return variable.path.split("/")[0] in BACKBONE_LAYERS


def step_seeds(run_seed: int, step, num: int) -> tf.Tensor:
    """`num` stateless seeds for this replica's random draws at `step`.

    A pure function of (run_seed, step, replica id): nothing random is
    carried from step to step, so nothing but the step counter needs to be
    checkpointed for the draws to continue where they stopped. Each replica
    folds in its id and draws for its own slice of the global batch, so the
    draws (unlike the gradient of a step without them) depend on how a batch
    is split over replicas: a run is reproducible for a given number of
    replicas.

    Returns (num, 2) int64, one seed per row for `tf.random.stateless_*`.
    """
    seed = tf.random.experimental.stateless_fold_in(
        tf.constant([run_seed, 0], tf.int64), tf.cast(step, tf.int64))
    context = tf.distribute.get_replica_context()
    replica = 0 if context is None else context.replica_id_in_sync_group
    seed = tf.random.experimental.stateless_fold_in(seed, replica)
    return tf.random.experimental.stateless_split(seed, num)  # (num, 2)


def seed_generators(model: keras.Model) -> list:
    """The Keras seed generators of `model`'s layers (those of Dropout), in layer order."""
    found = []
    for layer in model.layers:
        generator = getattr(layer, "seed_generator", None)
        if isinstance(generator, keras.random.SeedGenerator):
            found.append(generator)
        if isinstance(layer, keras.Model):
            found.extend(seed_generators(layer))
    return found


class Trainer(keras.Model):
    """Wraps a DeepLab network with the EM training step.

    Input batches are dicts from `kseg.data.pipeline.train_dataset`. The
    network itself is `trainer.network` (what gets evaluated and exported).
    `seed` (the run's) seeds every random draw of a step, with the step
    number (`step_seeds`).
    """

    def __init__(self, network: keras.Model, estep_config: EStepConfig = EStepConfig(),
                 optim_config: OptimConfig = OptimConfig(), seed: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.network = network
        self.estep_config = estep_config
        self.optim_config = optim_config
        self.seed = seed
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
        if not self.optimizer.built:
            # Before the loss scale is read below: a traced step must read the
            # loss-scale variable, not the initial scale as a constant.
            self.optimizer.build(variables)
        step = self.optimizer.iterations  # the step being taken, from 0
        generators = seed_generators(self.network)
        seeds = step_seeds(self.seed, step, 1 + len(generators))  # (1 + G, 2)
        # Keras draws dropout masks from a generator's state (and then counts
        # it up); the state is not checkpointed, so it is set afresh each step.
        for generator, seed in zip(generators, tf.unstack(seeds[1:])):
            generator.state.assign(seed)
        with tf.GradientTape() as tape:
            scores = self.network(batch["image"], training=True)  # (B, h, w, C)
            targets, stats = targets_lib.compute_targets(scores, batch, self.estep_config,
                                                         step, seed=seeds[0])
            loss_sum, counted = targets_lib.masked_cross_entropy(
                scores, targets, batch.get("label_space"))
            # Normalise by the global batch's pixel count so that replica
            # gradients add up to the single-device gradient.
            global_counted = tf.maximum(sum_over_replicas(counted), 1.0)
            loss = loss_sum / global_counted
            # float16: the loss scaled up so that small gradients survive;
            # the LossScaleOptimizer divides the gradients back (and skips a
            # step whose scaled gradients overflowed). Otherwise unchanged.
            scaled_loss = self.optimizer.scale_loss(loss)
        grads = tape.gradient(scaled_loss, variables)
        # The optimizer sums gradients over replicas: each adds its share of the
        # decay, scaled like the gradients, which the optimizer divides back.
        decay = self.optim_config.weight_decay / num_replicas() * loss_scale(self.optimizer)
        # A multiplier of 1 (most variables) or no decay is no op at all: each is
        # a pass over the variable (20.5M parameters at width 1), and x 1.0 is exact.
        grads = [_times(lr_multiplier(v, self.optim_config),
                        g + decay * v if self.optim_config.weight_decay
                        and v.path.endswith("kernel") else g)
                 for g, v in zip(grads, variables)]
        if self.optim_config.freeze_backbone_steps:
            # A zero gradient from the first step on is an exact freeze for SGD
            # (momentum 0) and Adam (moments 0): the frozen weights do not move.
            # tf.where, not a product: an overflowed (inf) float16 gradient of
            # a frozen layer must not turn into NaN and skip the whole step.
            open_ = step >= self.optim_config.freeze_backbone_steps
            grads = [tf.where(open_, g, tf.zeros_like(g)) if is_backbone(v) else g
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
