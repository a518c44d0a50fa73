"""Distributed training gives the one-device result (kseg/training/distribute.py).

Logical devices and multi-worker clusters must be set up before TensorFlow
starts, so each case runs in fresh Python processes (small scripts below)
and the test compares the weights they write.
"""

import json
import os
import re
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from kseg.training import distribute

TIMEOUT = 300  # seconds for any one process

# Two logical CPUs; one step of `loop.train` with the default strategy
# and with MirroredStrategy on the same global batch, for each batch kind.
MIRRORED_SCRIPT = r'''
import os, sys
import numpy as np
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
from kseg import model as model_lib
from kseg.config import LoopConfig, ModelConfig, OptimConfig
from kseg.em import targets
from kseg.training import loop, trainer as trainer_lib

out_dir = sys.argv[1]
B, S, C = 4, 33, 4
h = (S + 7) // 8


def make_batch(kind):
    rng = np.random.default_rng(0)
    valid = np.ones((B, h, h), bool)
    valid[0, 2:] = False  # padding: the replicas count different numbers of pixels
    label = rng.integers(0, C, (B, h, h)).astype("int32")
    label[1, :3] = 255  # void pixels
    image_labels = np.zeros((B, C), "float32")
    image_labels[:, 0] = 1.0
    # One present foreground label per image: EM-Adapt's random visiting
    # order of the foreground labels cannot change its result.
    image_labels[np.arange(B), [1, 2, 3, 1]] = 1.0
    if kind != "strong":
        label[:] = 255
    label[~valid] = 255
    return {"image": rng.normal(0.0, 60.0, (B, S, S, 3)).astype("float32"),
            "label": label, "valid": valid, "image_labels": image_labels,
            "box_mask": np.zeros((B, h, h, C), bool),
            "kind": np.full([B], targets.kind_id(kind), "int32")}


def one_step(strategy, batch, name):
    keras.utils.set_random_seed(1)
    with strategy.scope():
        net = model_lib.build_deeplab(
            ModelConfig(num_classes=C, width=0.0625, dropout=0.0))
        # A large decay and rate: a decay counted once per replica would show.
        optim = OptimConfig(learning_rate=0.05, weight_decay=0.5)
        trainer = trainer_lib.Trainer(net, optim_config=optim)
        trainer.compile(optimizer=trainer_lib.make_optimizer(optim))
    dataset = tf.data.Dataset.from_tensors(batch).repeat()
    loop_config = LoopConfig(model_dir=os.path.join(out_dir, name), num_steps=1,
                             log_every=1, image_every=0, checkpoint_input=False)
    initial = [v.numpy() for v in net.trainable_variables]
    logs = loop.train(trainer, dataset, loop_config, strategy=strategy)
    final = [v.numpy() for v in net.trainable_variables]
    np.savez(os.path.join(out_dir, name + ".npz"), *final, loss=logs["loss"],
             pixel_accuracy=logs["pixel_accuracy"],
             steps=int(trainer.optimizer.iterations.numpy()),
             moved=max(float(np.abs(a - b).max()) for a, b in zip(initial, final)))


for kind in ("strong", "em_adapt"):
    batch = make_batch(kind)
    one_step(tf.distribute.get_strategy(), batch, f"{kind}_single")
    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    assert mirrored.num_replicas_in_sync == 2
    one_step(mirrored, batch, f"{kind}_mirrored")
'''

# One worker of a cluster (or a lone process when TF_CONFIG is unset):
# a few steps of `loop.train` on the tiny records, then its weights.
WORKER_SCRIPT = r'''
import os, sys
import numpy as np
from kseg.cli.app import log_to_terminal
from kseg.training import distribute
log_to_terminal()  # the step lines the test reads
strategy = distribute.make_strategy(sys.argv[1])  # before any other TensorFlow op
import keras
from kseg import model as model_lib
from kseg.config import InputConfig, LoopConfig, ModelConfig, OptimConfig
from kseg.data import pipeline, records
from kseg.training import loop, trainer as trainer_lib

records_dir, model_dir, out = sys.argv[2:5]
keras.utils.set_random_seed(0)
with strategy.scope():
    net = model_lib.build_deeplab(ModelConfig(num_classes=6, width=0.0625, dropout=0.0))
    optim = OptimConfig(learning_rate=0.01)
    trainer = trainer_lib.Trainer(net, optim_config=optim)
    trainer.compile(optimizer=trainer_lib.make_optimizer(optim))
config = InputConfig(num_classes=6, crop_size=33, seed=0, shuffle_buffer=16)
stream = pipeline.Stream(records.split_pattern(records_dir, "train"), "strong", 4)
dataset = pipeline.train_dataset([stream], config)
loop_config = LoopConfig(model_dir=model_dir, num_steps=3, log_every=1, image_every=0,
                         checkpoint_every=2)
logs = loop.train(trainer, dataset, loop_config, strategy=strategy)
np.savez(out, replicas=strategy.num_replicas_in_sync, chief=distribute.is_chief(strategy),
         loss=logs["loss"], *[v.numpy() for v in net.trainable_variables])
'''


def _weights(path):
    """The positional arrays of an .npz written by the scripts: the weights, in order."""
    data = np.load(path)
    return [data[f"arr_{i}"] for i in range(sum(k.startswith("arr_") for k in data.files))]


def _env(**extra):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("TF_CONFIG", None)
    env.update(extra)
    return env


def _assert_same_weights(a, b, atol=2e-6):
    assert len(a) == len(b) > 0
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=atol)


@pytest.mark.slow
def test_mirrored_step_equals_single_device_step(tmp_path):
    script = tmp_path / "mirrored.py"
    script.write_text(MIRRORED_SCRIPT)
    run = subprocess.run([sys.executable, str(script), str(tmp_path)], env=_env(),
                         capture_output=True, text=True, timeout=TIMEOUT)
    assert run.returncode == 0, run.stderr[-3000:]
    for kind in ("strong", "em_adapt"):
        single = np.load(tmp_path / f"{kind}_single.npz")
        mirrored = np.load(tmp_path / f"{kind}_mirrored.npz")
        assert int(single["steps"]) == int(mirrored["steps"]) == 1
        # The step moved the weights, and both runs moved them alike.
        assert float(single["moved"]) > 1e-3
        _assert_same_weights(_weights(tmp_path / f"{kind}_single.npz"),
                             _weights(tmp_path / f"{kind}_mirrored.npz"))
        # Loss and accuracy are the global batch's, not an average of replicas'.
        assert float(mirrored["loss"]) == pytest.approx(float(single["loss"]), rel=1e-5)
        assert float(mirrored["pixel_accuracy"]) == pytest.approx(
            float(single["pixel_accuracy"]), abs=1e-6)


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


# What a worker says when another process took its port between _free_ports
# closing it and the worker's gRPC server binding it.
PORT_TAKEN = re.compile(r"address already in use|could not start grpc server|failed to bind",
                        re.IGNORECASE)


def _communicate(procs, logs):
    """Waits for the processes, whose output goes to the files `logs`
    [(stdout, stderr)]; once one fails the others are killed (a worker whose
    peer is gone would wait for it). Returns [(stdout, stderr)] as text."""
    deadline = time.time() + TIMEOUT
    try:
        while any(proc.poll() is None for proc in procs) and time.time() < deadline:
            if any(proc.poll() not in (None, 0) for proc in procs):
                break
            time.sleep(0.2)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    return [(open(out).read(), open(err).read()) for out, err in logs]


def _start(command, env, log_prefix):
    logs = (f"{log_prefix}.out", f"{log_prefix}.err")
    with open(logs[0], "w") as out, open(logs[1], "w") as err:
        return subprocess.Popen(command, env=env, stdout=out, stderr=err, text=True), logs


def _run_cluster(script, records_dir, run_dir, attempts=3):
    """Runs two workers on free loopback ports; the ports are only free when
    chosen, so a worker that finds its port taken means another try with new
    ports (and a fresh model directory). Returns (model_dir, [(stdout, stderr)])."""
    for attempt in range(attempts):
        cluster = {"worker": [f"127.0.0.1:{port}" for port in _free_ports(2)]}
        model_dir = str(run_dir / f"cluster_run{attempt}")
        procs, logs = [], []
        for index in range(2):
            tf_config = json.dumps({"cluster": cluster,
                                    "task": {"type": "worker", "index": index}})
            proc, log = _start(
                [sys.executable, str(script), "multi_worker", records_dir, model_dir,
                 str(run_dir / f"worker{index}.npz")],
                _env(TF_CONFIG=tf_config), run_dir / f"worker{index}_{attempt}")
            procs.append(proc)
            logs.append(log)
        outputs = _communicate(procs, logs)
        taken = any(proc.returncode != 0 and PORT_TAKEN.search(err)
                    for proc, (_, err) in zip(procs, outputs))
        if not taken:
            break
    for proc, (_, err) in zip(procs, outputs):
        assert proc.returncode == 0, err[-3000:]
    return model_dir, outputs


@pytest.mark.slow
def test_two_workers_end_with_equal_weights(tiny_records, tmp_path):
    """Two MultiWorkerMirroredStrategy workers on loopback ports train 3 steps;
    both end with the weights of one process training on the same global batches."""
    script = tmp_path / "worker.py"
    script.write_text(WORKER_SCRIPT)
    reference, log = _start(
        [sys.executable, str(script), "default", tiny_records, str(tmp_path / "single_run"),
         str(tmp_path / "single.npz")], _env(), tmp_path / "single")
    try:
        model_dir, outputs = _run_cluster(script, tiny_records, tmp_path)
    finally:
        [(_, err)] = _communicate([reference], [log])
    assert reference.returncode == 0, err[-3000:]
    worker0, worker1 = np.load(tmp_path / "worker0.npz"), np.load(tmp_path / "worker1.npz")
    assert int(worker0["replicas"]) == int(worker1["replicas"]) == 2
    assert bool(worker0["chief"]) and not bool(worker1["chief"])
    _assert_same_weights(_weights(tmp_path / "worker0.npz"), _weights(tmp_path / "worker1.npz"),
                         atol=0)
    _assert_same_weights(_weights(tmp_path / "worker0.npz"), _weights(tmp_path / "single.npz"))
    # Only the chief wrote checkpoints, in the shared model directory.
    assert sorted(f for f in os.listdir(os.path.join(model_dir, "checkpoints"))
                  if f.endswith(".index")) == ["ckpt-2.index", "ckpt-3.index"]
    assert "step 3/3" in outputs[0][1] and "step 3/3" in outputs[1][1]


def test_make_strategy_by_name(monkeypatch):
    # No GPU here: None is the one-device default strategy.
    assert distribute.make_strategy(None) is tf.distribute.get_strategy()
    assert distribute.make_strategy("default") is tf.distribute.get_strategy()
    mirrored = distribute.make_strategy("mirrored")
    assert isinstance(mirrored, tf.distribute.MirroredStrategy)
    assert mirrored.num_replicas_in_sync == 1 and distribute.is_chief(mirrored)
    with pytest.raises(ValueError, match="strategy must be one of .* got 'mirored'"):
        distribute.make_strategy("mirored")
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ValueError, match="needs the TF_CONFIG"):
        distribute.make_strategy("multi_worker")
    monkeypatch.setenv("TF_CONFIG", '{"task": {}}')
    with pytest.raises(ValueError, match="'cluster' entry"):
        distribute.make_strategy("multi_worker")
