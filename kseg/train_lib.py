"""Training: the Keras model with the E-step inside `train_step`, and the loop (DESIGN.md section 4).

`Trainer.train_step` runs, in one traced step: forward pass -> per-example
target by supervision kind (`kseg.targets.compute_targets`, E-steps on
stop-gradient scores) -> masked cross-entropy normalised by the counted
pixels of the *global* batch -> gradients with Caffe-style weight decay and
per-layer learning-rate multipliers -> SGD with momentum.

`train` is the loop around it: resume from the newest checkpoint in the
model directory, log, write TensorBoard summaries, checkpoint every N steps
and at the end, evaluate on val once per epoch.

Distribution (`make_strategy`): under `MirroredStrategy` and
`MultiWorkerMirroredStrategy` every replica takes an equal slice of the
*global* batch. Each replica's loss is its summed pixel losses divided by the
pixel count of the whole global batch (an all-reduce), and its weight decay
is divided by the number of replicas, so the gradients that the Keras
optimizer sums over replicas equal the one-device gradient of the same global
batch (tests/test_distributed.py checks it on two logical CPUs). E-steps are
per example, so splitting a batch does not change its targets (EM-Adapt's
random visiting order and dropout masks are drawn per replica, as they are
drawn per step anyway). Every worker runs the same seeded input pipeline and
keeps its replicas' slices, so a global batch does not depend on the number
of workers, at the price of each worker decoding the whole global batch.

Interruption safety: a checkpoint (network, optimizer with its step counter,
and the input iterator's position) is written every `checkpoint_every` steps,
at the end, and when SIGTERM or SIGINT arrives (the handler only sets a flag,
read between steps; then the checkpoint is written and `TrainingInterrupted`
raised). `tf.train.CheckpointManager` writes a checkpoint's files under a
temporary name (`ckpt-N_temp/`), renames them into place, and only then
rewrites the small `checkpoint` state file, itself atomically (a temporary
file renamed over it). So a run killed at any moment, even by SIGKILL in the
middle of a save, leaves the state naming the previous complete checkpoint
(a leftover `ckpt-N_temp/` is harmless and is overwritten by the next save);
running the same command again restores it, at the same step and learning
rate (the rate is a function of the optimizer's step counter). Renames are
not fsync'ed: a power cut, unlike a killed process, may lose the newest
checkpoint. Under multi-worker training the chief writes
`model_dir/checkpoints` (which must be on a file system every worker sees,
since all of them restore from it) and the other workers save to a local
temporary directory, because `tf.distribute` wants every worker in a save.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import signal
import sys
import tempfile
import threading
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
        """One SGD step on `batch` (this replica's slice of the global batch).

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
            global_counted = tf.maximum(_sum_over_replicas(counted), 1.0)
            loss = loss_sum / global_counted
        grads = tape.gradient(loss, variables)
        # The optimizer sums gradients over replicas: each adds its share of the decay.
        decay = self.optim_config.weight_decay / _num_replicas()
        grads = [lr_multiplier(v, self.optim_config)
                 * (g + decay * v if v.path.endswith("kernel") else g)
                 for g, v in zip(grads, variables)]
        self.optimizer.apply(grads, variables)

        counted_mask = tf.not_equal(targets, 255)
        correct = tf.equal(tf.argmax(scores, -1, output_type=tf.int32), targets) & counted_mask
        global_loss, global_correct = tf.unstack(_sum_over_replicas(
            tf.stack([loss, tf.reduce_sum(tf.cast(correct, tf.float32))])))
        self.trackers["loss"].update_state(global_loss)
        self.trackers["pixel_accuracy"].update_state(global_correct / global_counted)
        for name, value in stats.items():
            self.trackers[name].update_state(value)
        return {name: m.result() for name, m in self.trackers.items()}


@dataclasses.dataclass(frozen=True)
class LoopConfig:
    """How long to train and how often to log, checkpoint and evaluate.

    `checkpoint_input`: also checkpoint the input iterator (shuffle buffer,
    prefetched batches, random state), so a resumed run sees exactly the
    batches an uninterrupted one would. It costs disk: a checkpoint of the
    embedded configs (flags/strong.cfg: batch 10, 129 crops, shuffle buffer
    1000, width-0.125 network with Adam) is 17 MB with it, 3.7 MB without;
    on VOC it adds roughly the encoded size of `shuffle_buffer` images plus a
    few decoded batches (~100-150 MB). Without it a resumed run restarts the
    data order from the seed.
    """

    model_dir: str
    num_steps: int = 6000
    steps_per_epoch: int = 500  # val evaluation once per epoch
    log_every: int = 20
    image_every: int = 500  # TensorBoard image panels (0: never)
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    checkpoint_input: bool = True


STRATEGIES = ("default", "mirrored", "multi_worker")


def make_strategy(name: str | None = None) -> tf.distribute.Strategy:
    """The distribution strategy called `name` (one of STRATEGIES).

    None picks "mirrored" when more than one GPU is visible, else "default"
    (one device). "multi_worker" reads the cluster from the TF_CONFIG
    environment variable and must be created before TensorFlow runs any op.
    """
    if name is None:
        name = "mirrored" if len(tf.config.list_physical_devices("GPU")) > 1 else "default"
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        config = os.environ.get("TF_CONFIG")
        if not config:
            raise ValueError("--strategy=multi_worker needs the TF_CONFIG environment variable "
                             '(e.g. {"cluster": {"worker": ["host1:port", "host2:port"]}, '
                             '"task": {"type": "worker", "index": 0}})')
        try:
            json.loads(config)["cluster"]
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"TF_CONFIG is not JSON with a 'cluster' entry: {config!r}") from e
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise ValueError(f"strategy must be one of {STRATEGIES} or None, got {name!r}")


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes checkpoints, summaries and evaluations:
    always for one worker; under multi-worker the `chief` task, or worker 0
    when the cluster has no chief."""
    resolver = getattr(strategy, "cluster_resolver", None)
    cluster = resolver.cluster_spec().as_dict() if resolver is not None else {}
    if not cluster or resolver.task_type is None:
        return True
    if resolver.task_type == "chief":
        return True
    return resolver.task_type == "worker" and resolver.task_id == 0 and "chief" not in cluster


def distribute_batch(strategy: tf.distribute.Strategy, batch: dict):
    """Splits a global batch along its first axis into equal per-replica slices.

    Replica r of N (numbered over all workers) gets rows [r B/N, (r+1) B/N).
    Returns `batch` itself for one replica, else a PerReplica structure for
    `strategy.run`.
    """
    num = strategy.num_replicas_in_sync
    if num == 1:
        return batch

    def replica_slice(context):
        def cut(t):
            size = tf.shape(t)[0] // num
            return t[context.replica_id_in_sync_group * size:
                     (context.replica_id_in_sync_group + 1) * size]
        return tf.nest.map_structure(cut, batch)
    return strategy.experimental_distribute_values_from_function(replica_slice)


class TrainingInterrupted(Exception):
    """Training stopped on a signal after writing a checkpoint.

    `exit_code` is the shell convention 128 + signal number (143 for
    SIGTERM, 130 for SIGINT), so a job scheduler sees an unfinished run."""

    def __init__(self, signum: int, step: int, checkpoint: str | None):
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        self.exit_code = 128 + signum
        super().__init__(f"stopped by {signal.Signals(signum).name} at step {step}; "
                         f"checkpoint {checkpoint}. Run the same command again to resume.")


class _StopSignals:
    """While active, SIGTERM and SIGINT only set `signum`; the loop reads it
    between steps. A second signal gets the previous handler (Ctrl-C twice
    quits at once). Signals can only be caught in the main thread; elsewhere
    this does nothing."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.signum = None
        self._previous = {}

    def _handle(self, signum, frame):
        del frame
        if self.signum is None:
            self.signum = signum
        signal.signal(signum, self._previous[signum])

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc):
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        return False


class Checkpoints:
    """A run's checkpoints: network, optimizer (with its step counter) and,
    optionally, the input iterator, in `model_dir/checkpoints`.

    Non-chief workers save to a temporary directory (removed by `close`) and
    restore from the chief's directory.
    """

    def __init__(self, trainer: "Trainer", loop: LoopConfig, iterator=None, chief: bool = True):
        self.directory = os.path.join(loop.model_dir, "checkpoints")
        self._model = tf.train.Checkpoint(network=trainer.network, optimizer=trainer.optimizer)
        self._iterator = iterator
        objects = {"network": trainer.network, "optimizer": trainer.optimizer}
        if iterator is not None:
            objects["input"] = iterator
        self._tmp = None if chief else tempfile.mkdtemp(prefix="kseg-worker-checkpoints-")
        self._manager = tf.train.CheckpointManager(
            tf.train.Checkpoint(**objects), self._tmp or self.directory,
            max_to_keep=loop.keep_checkpoints if chief else 1)
        self.last_saved_step = None
        self.latest = tf.train.latest_checkpoint(self.directory)

    def restore(self, log: Callable[[str], None]) -> str | None:
        """Restores the newest checkpoint (if any); returns its path.

        The network and optimizer must match; the input position is restored
        when the checkpoint has one and the pipeline is unchanged, otherwise
        the data order restarts (with a log line saying so)."""
        latest = self.latest
        if latest is None:
            return None
        self._model.restore(latest).assert_existing_objects_matched().expect_partial()
        if self._iterator is not None:
            try:
                status = tf.train.Checkpoint(input=self._iterator).restore(latest)
                status.expect_partial().assert_existing_objects_matched()
            except (AssertionError, ValueError, tf.errors.OpError) as e:
                log(f"input position not restored from {latest} ({type(e).__name__}: "
                    f"{str(e).splitlines()[0][:200]}); the data order restarts from the seed")
        return latest

    def save(self, step: int) -> str:
        if self.last_saved_step != step:
            path = self._manager.save(checkpoint_number=step)
            self.last_saved_step = step
            if self._tmp is None:
                self.latest = path
        return self.latest

    def close(self) -> None:
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)


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


def _check_batch_splits(dataset: tf.data.Dataset, num_replicas: int) -> None:
    size = dataset.element_spec["image"].shape[0]
    if num_replicas > 1 and size is not None and size % num_replicas:
        raise ValueError(f"the global batch of {size} images does not split evenly over "
                         f"{num_replicas} replicas: make --batch_size (or --strong_per_batch "
                         f"+ --weak_per_batch) a multiple of {num_replicas}")


def _shown(logs: dict) -> set:
    """Log keys worth printing: E-step statistics only when weak examples exist."""
    weak = logs.get("bg_fraction", 0.0) + logs.get("fg_fraction", 0.0) > 0
    return {k for k in logs if weak or k not in ("bg_fraction", "fg_fraction", "adapt_bias")}


def estep_warning(logs: dict, threshold: float = 0.01) -> str | None:
    """A warning when the E-step labels (almost) no pixel as foreground or as
    background: the classic collapse of weak training (DESIGN.md section 10)."""
    bg, fg = logs.get("bg_fraction", 0.0), logs.get("fg_fraction", 0.0)
    if bg + fg == 0:
        return None
    if fg < threshold:
        return (f"the E-step labels only {100 * fg:.2f}% of weak pixels as foreground: "
                "training is collapsing to all-background (raise --fg_bias over --bg_bias, "
                "or use EM-Adapt / boxes)")
    if bg < threshold:
        return (f"the E-step labels only {100 * bg:.2f}% of weak pixels as background: "
                "training is collapsing to all-foreground (lower --fg_bias - --bg_bias, "
                "or use EM-Adapt / boxes)")
    return None


def train(trainer: Trainer, dataset: tf.data.Dataset, loop: LoopConfig,
          evaluate_fn: Callable[[keras.Model], dict] | None = None,
          strategy: tf.distribute.Strategy | None = None,
          log: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True)) -> dict:
    """Runs (or resumes) training; returns the final training metrics.

    `dataset` yields *global* batches; each replica trains on its slice
    (`distribute_batch`). The newest checkpoint in `loop.model_dir/checkpoints`
    is restored first, so running the same command again continues at the
    saved step. A non-finite loss raises FloatingPointError and keeps the
    last good checkpoint. SIGTERM/SIGINT: checkpoint, then raise
    `TrainingInterrupted`. Only the chief writes summaries and evaluates.
    """
    strategy = strategy or tf.distribute.get_strategy()
    chief = is_chief(strategy)
    _check_batch_splits(dataset, strategy.num_replicas_in_sync)
    os.makedirs(loop.model_dir, exist_ok=True)
    with strategy.scope():
        trainer.optimizer.build(trainer.network.trainable_variables)
    iterator = iter(dataset)
    checkpoints = Checkpoints(trainer, loop, iterator if loop.checkpoint_input else None, chief)
    restored = checkpoints.restore(log)
    step = int(trainer.optimizer.iterations.numpy())
    if restored:
        log(f"resumed from {restored} at step {step}, "
            f"learning rate {float(trainer.optimizer.learning_rate):.6g}")
    if step >= loop.num_steps:
        log(f"step {step} >= num_steps {loop.num_steps}: nothing to train")

    def replica_step(batch, stop):
        logs = trainer.train_step(batch)
        # Any worker's stop request stops all of them at the same step.
        logs["stop"] = _sum_over_replicas(tf.identity(stop)) > 0
        return logs

    @tf.function
    def train_fn(batch, stop):
        out = strategy.run(replica_step, args=(distribute_batch(strategy, batch), stop))
        stop_all = strategy.experimental_local_results(out.pop("stop"))[0]
        logs = {k: strategy.reduce(tf.distribute.ReduceOp.MEAN, v, axis=None)
                for k, v in out.items()}
        return logs, stop_all

    panel_batch = next(iter(dataset)) if loop.image_every and chief else None
    writer = (tf.summary.create_file_writer(os.path.join(loop.model_dir, "train")) if chief
              else tf.summary.create_noop_writer())
    logs: dict = {}
    start, start_step = time.time(), step
    try:
        with _StopSignals() as signals:
            while step < loop.num_steps:
                requested = tf.constant(1.0 if signals.signum else 0.0)
                out, stop = train_fn(next(iterator), requested)
                logs = {k: float(v) for k, v in out.items()}
                step += 1
                if not math.isfinite(logs["loss"]):
                    kept = (f"The last good checkpoint is kept: {checkpoints.latest}."
                            if checkpoints.latest else "No checkpoint was written yet.")
                    raise FloatingPointError(f"loss is {logs['loss']} at step {step}; "
                                             f"stopping. {kept} Lower --learning_rate?")
                if step % loop.log_every == 0 or step == loop.num_steps:
                    lr = float(trainer.optimizer.learning_rate)  # the rate of the next step
                    rate = (step - start_step) / max(time.time() - start, 1e-9)
                    log(f"step {step}/{loop.num_steps} " + " ".join(
                        f"{k}={v:.4f}" for k, v in logs.items() if k in _shown(logs))
                        + f" lr={lr:.2e} ({rate:.2f} steps/s)")
                    warning = estep_warning(logs)
                    if warning:
                        log(f"warning at step {step}: {warning}")
                    with writer.as_default(step=step):
                        for k, v in logs.items():
                            tf.summary.scalar(k, v)
                        tf.summary.scalar("learning_rate", lr)
                    for m in trainer.metrics:
                        m.reset_state()
                if bool(stop):
                    path = checkpoints.save(step)
                    signum = signals.signum or signal.SIGTERM  # another worker's signal
                    log(f"{signal.Signals(signum).name}: saved {path} at step {step}; stopping")
                    raise TrainingInterrupted(signum, step, path)
                if chief and loop.image_every and (
                        step % loop.image_every == 0 or step == loop.num_steps):
                    with writer.as_default():
                        write_panels(trainer, panel_batch, step)
                if step % loop.checkpoint_every == 0 or step == loop.num_steps:
                    checkpoints.save(step)
                if chief and evaluate_fn is not None and (
                        step % loop.steps_per_epoch == 0 or step == loop.num_steps):
                    result = evaluate_fn(trainer.network)
                    log(f"step {step}: val mIoU={100 * result['miou']:.2f}% "
                        f"pixel accuracy={100 * result['pixel_accuracy']:.2f}%")
                    with writer.as_default(step=step):
                        tf.summary.scalar("val/miou", result["miou"])
                        tf.summary.scalar("val/pixel_accuracy", result["pixel_accuracy"])
    finally:
        writer.flush()
        checkpoints.close()
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
    path = os.path.join(model_dir, "config.json")
    tmp = f"{path}.tmp{os.getpid()}"  # several workers may write it at once
    with open(tmp, "w") as f:
        json.dump(config, f, indent=1, default=str)
    os.replace(tmp, path)


def load_run_config(model_dir: str) -> dict:
    path = os.path.join(model_dir, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: is {model_dir!r} a kseg training directory?")
    with open(path) as f:
        return json.load(f)

