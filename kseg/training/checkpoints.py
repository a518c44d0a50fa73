"""A run's files: checkpoints (with the input position) and `config.json`.

A checkpoint holds the network, the optimizer with its step counter and,
optionally, the input iterator's position: everything a step depends on, as
its random draws are seeded by the step (`trainer.step_seeds`), so a resumed
run continues bit for bit as an uninterrupted one. It is written every
`checkpoint_every` steps, at the end, and when SIGTERM or SIGINT arrives
(kseg.training.loop). `tf.train.CheckpointManager` writes a checkpoint's
files under a temporary name (`ckpt-N_temp/`), renames them into place, and
only then rewrites the small `checkpoint` state file, itself atomically (a
temporary file renamed over it). So a run killed at any moment, even by
SIGKILL in the middle of a save, leaves the state naming the previous
complete checkpoint (a leftover `ckpt-N_temp/` is harmless and is
overwritten by the next save); running the same command again restores it,
at the same step and learning rate (the rate is a function of the
optimizer's step counter). Renames are not fsync'ed: a power cut, unlike a
killed process, may lose the newest checkpoint. Under multi-worker training
the chief writes `model_dir/checkpoints` (which must be on a file system
every worker sees, since all of them restore from it) and the other workers
save to a local temporary directory, because `tf.distribute` wants every
worker in a save.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile

import keras
import tensorflow as tf
from absl import logging

from kseg.config import LoopConfig, ModelConfig
from kseg.utils import files


class Checkpoints:
    """A run's checkpoints: network, optimizer (with its step counter) and,
    optionally, the input iterator, in `model_dir/checkpoints`.

    Non-chief workers save to a temporary directory (removed by `close`) and
    restore from the chief's directory.
    """

    def __init__(self, trainer, loop: LoopConfig, iterator=None, chief: bool = True):
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

    def restore(self) -> str | None:
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
                logging.warning(f"input position not restored from {latest} ({type(e).__name__}: "
                                f"{str(e).splitlines()[0][:200]}); the data order restarts "
                                "from the seed")
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


def restore_network(network: keras.Model, model_dir: str) -> str:
    """Loads the newest checkpoint's network weights; returns its path."""
    latest = tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints"))
    if latest is None:
        raise FileNotFoundError(f"no checkpoint in {os.path.join(model_dir, 'checkpoints')}")
    tf.train.Checkpoint(network=network).restore(latest).expect_partial()
    return latest


def save_run_config(model_dir: str, config: dict, other_files: dict | None = None) -> None:
    """Writes the run's settings as `model_dir/config.json` (model, data, E-step),
    and each of `other_files` (name -> text, e.g. the flags as `flags.txt`)."""
    os.makedirs(model_dir, exist_ok=True)
    # Several workers may write it at once: each through its own temporary file.
    files.write_json(os.path.join(model_dir, "config.json"), config, default=str)
    for name, text in (other_files or {}).items():
        files.write_text(os.path.join(model_dir, name), text)


class RunMismatchError(ValueError):
    """A run directory is trained again with settings that define another
    network or other data than the run it holds."""


# Beyond the network (ModelConfig), what makes a run's checkpoints mean what
# they mean: the weights it started from and the data and labels it learns.
# Rates, steps, logging, E-step constants and dropout may change on a rerun.
_RUN_DATA = ("init", "init_from", "reset_classifier", "data.dataset", "data.train_split",
             "data.weak_split", "data.supervision", "data.num_strong", "data.strong_split",
             "class_names", "eval_class_names", "label_map", "data_dir", "joint_data_dir")


def _setting(config: dict, key: str):
    """config["a"]["b"] for key "a.b"; KeyError if absent."""
    value = config
    for part in key.split("."):
        value = value[part]
    return value


def _comparable(key: str, value):
    if key.endswith("data_dir") and isinstance(value, str):
        return os.path.realpath(value)
    return list(value) if isinstance(value, tuple) else value


def run_differences(old: dict, new: dict) -> list[str]:
    """`name: old -> new` for every setting defining the network or the data
    (see `_RUN_DATA`; ModelConfig but its TRAINING_ONLY fields) that differs
    between two run configs. A network setting that the older config lacks
    (written by a kseg before the setting existed) is compared as its
    default, the network that kseg built (e.g. `multiscale`: False); other
    settings that it lacks are not compared."""
    keys = [f"model.{name}" for name in new.get("model", {})
            if name not in ModelConfig.TRAINING_ONLY] + list(_RUN_DATA)
    defaults = {f"model.{f.name}": f.default for f in dataclasses.fields(ModelConfig)
                if f.default is not dataclasses.MISSING}
    out = []
    for key in keys:
        try:
            after = _setting(new, key)
        except (KeyError, TypeError):
            continue
        try:
            before = _setting(old, key)
        except (KeyError, TypeError):
            if key not in defaults or not isinstance(old.get("model"), dict):
                continue
            before = defaults[key]
        if _comparable(key, before) != _comparable(key, after):
            out.append(f"{key.rsplit('.', 1)[-1]}: {before!r} there, {after!r} here")
    return out


def check_same_run(model_dir: str, config: dict) -> None:
    """Raises RunMismatchError when `model_dir` already holds a run (its
    `config.json`) whose network or data differs from `config`'s, naming the
    differing settings in one line. A new directory passes."""
    path = os.path.join(model_dir, "config.json")
    if not os.path.isfile(path):
        return
    with open(path) as f:
        old = json.load(f)
    differences = run_differences(old, json.loads(json.dumps(config, default=str)))
    if differences:
        raise RunMismatchError(
            f"{model_dir} holds a run with another network or data ({'; '.join(differences)}); "
            f"train in a new --model_dir, or rerun with that run's settings "
            f"({os.path.join(model_dir, 'flags.txt')})")


def load_run_config(model_dir: str) -> dict:
    path = os.path.join(model_dir, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: is {model_dir!r} a kseg training directory?")
    with open(path) as f:
        return json.load(f)
