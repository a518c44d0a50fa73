"""The training loop around `Trainer.train_step` (docs/training.md).

`train` resumes from the newest checkpoint in the model directory, logs,
writes TensorBoard summaries, checkpoints every N steps and at the end, and
evaluates on val once per epoch.

Interruption safety: the SIGTERM / SIGINT handler only sets a flag, read
between steps; then a checkpoint is written (kseg.training.checkpoints) and
`TrainingInterrupted` raised. A non-finite loss stops the run and keeps the
last good checkpoint.
"""

from __future__ import annotations

import math
import os
import signal
import threading
import time
from typing import Callable

import keras
import tensorflow as tf
from absl import logging

from kseg.config import LoopConfig
from kseg.training.checkpoints import Checkpoints
from kseg.training.distribute import (check_batch_splits, distribute_batch, is_chief,
                                      sum_over_replicas)
from kseg.training.summaries import write_panels, write_scalars
from kseg.training.trainer import Trainer


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


def _shown(logs: dict) -> set:
    """Log keys worth printing: E-step statistics only when weak examples exist."""
    weak = logs.get("bg_fraction", 0.0) + logs.get("fg_fraction", 0.0) > 0
    return {k for k in logs if weak or k not in ("bg_fraction", "fg_fraction", "adapt_bias")}


def format_eta(seconds: float) -> str:
    """'h:mm:ss' of a remaining time, e.g. format_eta(3725) == '1:02:05'."""
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}"


def estep_warning(logs: dict, threshold: float = 0.01) -> str | None:
    """A warning when the E-step labels (almost) no pixel as foreground or as
    background: the classic collapse of weak training (docs/training.md)."""
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
          on_restored: Callable[[], None] | None = None) -> dict:
    """Runs (or resumes) training; returns the final training metrics.

    `dataset` yields *global* batches; each replica trains on its slice
    (`distribute_batch`). The newest checkpoint in `loop.model_dir/checkpoints`
    is restored first, so running the same command again continues at the
    saved step. A non-finite loss raises FloatingPointError and keeps the
    last good checkpoint. SIGTERM/SIGINT: checkpoint, then raise
    `TrainingInterrupted`. Only the chief writes summaries and evaluates.
    Progress goes to absl.logging: a line every `loop.log_every` steps.
    The chief calls `on_restored` once the checkpoint is restored (or there
    is none), before the first step: the run's own files are written then.
    """
    strategy = strategy or tf.distribute.get_strategy()
    chief = is_chief(strategy)
    check_batch_splits(dataset, strategy.num_replicas_in_sync)
    os.makedirs(loop.model_dir, exist_ok=True)
    with strategy.scope():
        trainer.optimizer.build(trainer.network.trainable_variables)
    iterator = iter(dataset)
    checkpoints = Checkpoints(trainer, loop, iterator if loop.checkpoint_input else None, chief)
    restored = checkpoints.restore()
    step = int(trainer.optimizer.iterations.numpy())
    if restored:
        logging.info(f"resumed from {restored} at step {step}, "
                     f"learning rate {float(trainer.optimizer.learning_rate):.6g}")
    if step >= loop.num_steps:
        logging.info(f"step {step} >= num_steps {loop.num_steps}: nothing to train")
    if chief and on_restored is not None:
        on_restored()

    def replica_step(batch, stop):
        logs = trainer.train_step(batch)
        # Any worker's stop request stops all of them at the same step.
        logs["stop"] = sum_over_replicas(tf.identity(stop)) > 0
        return logs

    if loop.jit_compile:
        # XLA compiles each replica's step (as Keras' own fit does), not the
        # distribution around it; one compilation per batch shape.
        replica_step = tf.function(replica_step, jit_compile=True)

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
                # The optimizer's counter, not a count of calls: under float16
                # a step whose scaled gradients overflowed is skipped (the loss
                # scale halves) and the same step is taken on the next batch.
                taken = int(trainer.optimizer.iterations.numpy())
                if taken == step and math.isfinite(logs["loss"]) and not bool(stop):
                    continue
                step = taken
                if not math.isfinite(logs["loss"]):
                    kept = (f"The last good checkpoint is kept: {checkpoints.latest}."
                            if checkpoints.latest else "No checkpoint was written yet.")
                    raise FloatingPointError(f"loss is {logs['loss']} at step {step}; "
                                             f"stopping. {kept} Lower --learning_rate?")
                if step % loop.log_every == 0 or step == loop.num_steps:
                    lr = float(trainer.optimizer.learning_rate)  # the rate of the next step
                    rate = (step - start_step) / max(time.time() - start, 1e-9)
                    shown = {k: v for k, v in logs.items() if k in _shown(logs)}
                    logging.info(f"step {step}/{loop.num_steps} " + " ".join(
                        f"{k}={v:.4f}" for k, v in shown.items())
                        + f" lr={lr:.2e} ({rate:.2f} steps/s, "
                        f"ETA {format_eta((loop.num_steps - step) / max(rate, 1e-9))})")
                    warning = estep_warning(logs)
                    if warning:
                        logging.warning(f"warning at step {step}: {warning}")
                    # Runs without weak examples have no E-step statistics to plot.
                    write_scalars(writer, step, {**shown, "learning_rate": lr})
                    for m in trainer.metrics:
                        m.reset_state()
                if bool(stop):
                    path = checkpoints.save(step)
                    signum = signals.signum or signal.SIGTERM  # another worker's signal
                    logging.warning(f"{signal.Signals(signum).name}: saved {path} at step {step}; "
                                    "stopping")
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
                    logging.info(f"step {step}: val mIoU={100 * result['miou']:.2f}% "
                                 f"pixel accuracy={100 * result['pixel_accuracy']:.2f}%")
                    write_scalars(writer, step, {"val/miou": result["miou"],
                                                 "val/pixel_accuracy": result["pixel_accuracy"]})
    finally:
        writer.flush()
        checkpoints.close()
    return logs
