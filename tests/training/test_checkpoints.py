"""Interruption safety of training (kseg/training/checkpoints.py, kseg/training/loop.py, scripts/train.py): SIGKILL
and resume, SIGTERM checkpoints, NaN stops, bit-identical resume."""

import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from kseg import experiment, model
from kseg.config import DataConfig, EStepConfig, Experiment, InputConfig, LoopConfig, ModelConfig, OptimConfig
from kseg.training import checkpoints
from kseg.training import trainer as trainer_lib
from kseg.training import loop

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TIMEOUT = 240


# scripts/train.py, run so that with $HOLD_AFTER_CHECKPOINT=N it sleeps once
# checkpoint N is saved: a test can then kill it at a known step, with no race
# against a run that would otherwise finish first.
HOLDING_TRAIN = r"""
import os, runpy, sys, time
from kseg.training import checkpoints
save = checkpoints.Checkpoints.save
def holding_save(self, step):
    path = save(self, step)
    if os.environ.get("HOLD_AFTER_CHECKPOINT") == str(step):
        time.sleep(3600)
    return path
checkpoints.Checkpoints.save = holding_save
sys.argv[0] = os.path.join(sys.argv[1], "scripts", "train.py")
del sys.argv[1]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def _train_command(records_dir, model_dir, num_steps):
    return [sys.executable, "-c", HOLDING_TRAIN, ROOT,
            f"--data_dir={records_dir}", "--num_classes=6", "--width=0.0625", "--crop_size=33",
            "--batch_size=2", "--optimizer=sgd", "--learning_rate=0.01", "--lr_decay_steps=4",
            f"--num_steps={num_steps}", "--checkpoint_every=5", "--log_every=1",
            "--image_every=0", "--val_split=", f"--model_dir={model_dir}"]


def _latest_step(model_dir):
    latest = tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints"))
    return None if latest is None else int(latest.rsplit("-", 1)[1])


def _start_and_wait_for_checkpoint(command, model_dir, log_path, hold_at=None):
    """Starts training; returns the process once a checkpoint is recorded
    (checkpoint `hold_at`, after which the process sleeps, if given)."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    if hold_at is not None:
        env["HOLD_AFTER_CHECKPOINT"] = str(hold_at)
    with open(log_path, "w") as log:  # the child keeps its own copy of the handle
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    deadline = time.time() + TIMEOUT
    while _latest_step(model_dir) is None or _latest_step(model_dir) < (hold_at or 0):
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            raise AssertionError(f"no checkpoint appeared:\n{open(log_path).read()[-3000:]}")
        time.sleep(0.05)
    return proc


@pytest.mark.slow
def test_sigkill_then_same_command_resumes(tiny_records, tmp_path):
    model_dir = str(tmp_path / "run")
    command = _train_command(tiny_records, model_dir, 20)
    proc = _start_and_wait_for_checkpoint(command, model_dir, tmp_path / "first.log",
                                          hold_at=10)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    killed_at = _latest_step(model_dir)
    assert killed_at == 10
    # What a kill during a later save leaves behind: files of a checkpoint the
    # state file does not name yet. The restart must ignore them.
    checkpoints = os.path.join(model_dir, "checkpoints")
    partial = os.path.join(checkpoints, f"ckpt-{killed_at + 5}")
    os.makedirs(partial + "_temp")
    for path in (partial + "_temp/part-00000-of-00001.data-00000-of-00001",
                 partial + ".data-00000-of-00001"):
        with open(path, "wb") as f:
            f.write(b"partial")

    second = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT,
                            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert second.returncode == 0, second.stderr[-3000:]
    resumed = re.search(r"resumed from (\S+) at step (\d+), learning rate (\S+)", second.stderr)
    assert resumed, second.stderr[-3000:]
    assert resumed.group(1).endswith(f"ckpt-{killed_at}")
    assert int(resumed.group(2)) == killed_at
    # The same rate as the uninterrupted run at that step (0.01, x0.1 every 4 steps).
    assert float(resumed.group(3)) == pytest.approx(0.01 * 0.1 ** (killed_at // 4), rel=1e-4)
    steps = [int(s) for s in re.findall(r"^step (\d+)/20 ", second.stderr, re.M)]
    assert steps == list(range(killed_at + 1, 21))
    assert f"done: {model_dir}" in second.stdout
    assert _latest_step(model_dir) == 20


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_exits(tiny_records, tmp_path):
    model_dir = str(tmp_path / "run")
    log_path = tmp_path / "train.log"
    proc = _start_and_wait_for_checkpoint(_train_command(tiny_records, model_dir, 400),
                                          model_dir, log_path)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    log = open(log_path).read()
    assert proc.returncode == 128 + signal.SIGTERM, log[-3000:]
    saved = re.search(r"SIGTERM: saved (\S+) at step (\d+); stopping", log)
    assert saved, log[-3000:]
    step = int(saved.group(2))
    assert _latest_step(model_dir) == step
    # Training went on to the step the signal arrived at (not only to the last
    # periodic checkpoint) and stopped there.
    assert re.findall(r"^step (\d+)/400 ", log, re.M)[-1] == str(step)
    assert "Run the same command again to resume" in log


class _Killed(Exception):
    """Stands for a kill: the process is gone, nothing more is saved."""


def _resume_experiment(records_dir, model_dir, num_steps, supervision, dropout, optimizer,
                       steps_per_epoch=1000):
    semi = {} if supervision == "strong" else dict(num_strong=8, strong_per_batch=1,
                                                   weak_per_batch=2)
    return Experiment(
        data=DataConfig(data_dir=records_dir, supervision=supervision, batch_size=3,
                        val_split="val", **semi),
        model=ModelConfig(num_classes=6, width=0.03, dropout=dropout),
        input=InputConfig(num_classes=6, crop_size=33, seed=0, shuffle_buffer=16),
        estep=EStepConfig(),
        optim=OptimConfig(optimizer=optimizer, learning_rate=0.01, lr_decay_steps=4),
        loop=LoopConfig(model_dir=model_dir, num_steps=num_steps, log_every=100,
                        image_every=0, checkpoint_every=3, steps_per_epoch=steps_per_epoch),
        seed=0)


def _final_weights(model_dir):
    network, _ = experiment.load_network(model_dir)
    return [v.numpy() for v in network.weights]


# Dropout draws its masks from seeds, EM-Adapt its visiting order, Adam and
# SGD keep moments: EM-Adapt runs without dropout so that the test sees its
# visiting order on its own.
@pytest.mark.parametrize("supervision,dropout,optimizer", [
    ("strong", 0.5, "sgd"), ("em_adapt", 0.0, "adam"), ("bbox_em_fixed", 0.5, "adam")])
def test_killed_and_resumed_run_ends_bit_identical(tiny_records, tmp_path, monkeypatch,
                                                    supervision, dropout, optimizer):
    """6 steps straight = 3 steps, checkpoint, a 4th step lost to a kill (and
    the files of a half-written checkpoint), then a fresh start to 6."""
    straight, killed = str(tmp_path / "straight"), str(tmp_path / "killed")
    config = dict(supervision=supervision, dropout=dropout, optimizer=optimizer)

    def no_evaluation(*args):
        return lambda network: {"miou": 0.0, "pixel_accuracy": 0.0}
    monkeypatch.setattr(experiment, "val_evaluator", no_evaluation)
    experiment.run_training(_resume_experiment(tiny_records, straight, 6, **config))

    def kill(*args):  # called once the 4th step has run: the kill lands after it
        def evaluate(network):
            raise _Killed
        return evaluate
    monkeypatch.setattr(experiment, "val_evaluator", kill)
    with pytest.raises(_Killed):
        experiment.run_training(_resume_experiment(tiny_records, killed, 6,
                                                   steps_per_epoch=4, **config))
    assert _latest_step(killed) == 3
    partial = os.path.join(killed, "checkpoints", "ckpt-6")
    os.makedirs(partial + "_temp")
    with open(partial + "_temp/part-00000-of-00001.data-00000-of-00001", "wb") as f:
        f.write(b"partial")

    monkeypatch.setattr(experiment, "val_evaluator", no_evaluation)
    experiment.run_training(_resume_experiment(tiny_records, killed, 6, **config))
    assert _latest_step(killed) == 6
    for a, b in zip(_final_weights(straight), _final_weights(killed), strict=True):
        np.testing.assert_array_equal(a, b)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    """A learning rate of 1e20 makes the weights overflow within a few steps."""
    size, h, num_classes = 33, 5, 3
    rng = np.random.default_rng(0)
    batch = {
        "image": rng.normal(0, 60, (2, size, size, 3)).astype("float32"),
        "label": rng.integers(0, num_classes, (2, h, h)).astype("int32"),
        "valid": np.ones((2, h, h), bool),
        "image_labels": np.ones((2, num_classes), "float32"),
        "box_mask": np.zeros((2, h, h, num_classes), bool),
        "kind": np.zeros((2,), "int32"),
    }
    network = model.build_deeplab(ModelConfig(num_classes=num_classes, width=0.0625))
    trainer = trainer_lib.Trainer(network, optim_config=OptimConfig(learning_rate=1e20))
    trainer.compile(optimizer=trainer_lib.make_optimizer(trainer.optim_config))
    model_dir = str(tmp_path / "run")
    loop_config = LoopConfig(model_dir=model_dir, num_steps=20, checkpoint_every=1,
                             log_every=1, image_every=0)
    with pytest.raises(FloatingPointError) as error:
        loop.train(trainer, tf.data.Dataset.from_tensors(batch).repeat(), loop_config)
    found = re.match(r"loss is (nan|inf) at step (\d+); stopping. The last good checkpoint "
                     r"is kept: (\S+)\.", str(error.value))
    assert found, str(error.value)
    bad_step = int(found.group(2))
    assert found.group(3).endswith(f"ckpt-{bad_step - 1}")
    assert _latest_step(model_dir) == bad_step - 1
    restored = model.build_deeplab(ModelConfig(num_classes=num_classes, width=0.0625))
    checkpoints.restore_network(restored, model_dir)
    assert all(np.isfinite(v.numpy()).all() for v in restored.weights)
