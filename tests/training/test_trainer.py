"""Tests for kseg/training/trainer.py: one optimiser step checked against hand-written rules."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from kseg import model as model_lib
from kseg.benchmarks.training import synthetic_batch
from kseg.config import ModelConfig, OptimConfig
from kseg.constants import KIND_ID
from kseg.training import trainer as trainer_lib

C = 3
LR, DECAY = 0.1, 0.5  # large, so a decay applied to the wrong variables shows
# Caffe's multipliers, written out (not taken from the code under test).
MULTIPLIER = {"conv1/kernel": 1.0, "conv1/bias": 2.0, "fc8/kernel": 10.0, "fc8/bias": 20.0}
DECAYS = {"conv1/kernel": True, "conv1/bias": False, "fc8/kernel": True, "fc8/bias": False}


def _tiny_network():
    keras.utils.set_random_seed(3)
    # Non-zero biases: a decay on biases (x DECAY x bias) would move them.
    init = keras.initializers.RandomNormal(stddev=0.5)
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(4, 1, activation="tanh", bias_initializer=init, name="conv1")(inputs)
    scores = keras.layers.Conv2D(C, 1, bias_initializer=init, name="fc8")(x)
    return keras.Model(inputs, scores)


def _batch():
    rng = np.random.default_rng(0)
    label = np.array([[[0, 1], [2, 1]], [[1, 0], [0, 255]]], np.int32)  # (2, 2, 2)
    # Example 1 comes from a dataset without label 2 (Cross-Joint).
    space = np.array([[True, True, True], [True, True, False]])
    return {"image": tf.constant(rng.uniform(0, 255, (2, 2, 2, 3)), tf.float32),
            "kind": tf.fill([2], KIND_ID["strong"]), "label": tf.constant(label),
            "valid": tf.constant(label != 255),
            "image_labels": tf.ones([2, C]), "box_mask": tf.ones([2, 2, 2, C], tf.bool),
            "label_space": tf.constant(space)}


def _oracle_loss(scores, batch):
    """Mean over counted pixels of -log softmax over the example's own labels,
    one pixel at a time."""
    terms = []
    label, space = batch["label"].numpy(), batch["label_space"].numpy()
    for b, y, x in zip(*np.nonzero(label != 255)):
        allowed = np.flatnonzero(space[b])
        logits = tf.gather(scores[b, y, x], allowed)
        target = int(np.flatnonzero(allowed == label[b, y, x])[0])
        terms.append(tf.reduce_logsumexp(logits) - logits[target])
    return tf.add_n(terms) / len(terms)


def test_one_sgd_step_uses_multipliers_and_decays_kernels_only():
    network = _tiny_network()
    batch = _batch()
    with tf.GradientTape() as tape:
        oracle_loss = _oracle_loss(network(batch["image"]), batch)
    paths = [v.path for v in network.trainable_variables]
    assert sorted(paths) == sorted(MULTIPLIER)
    grads = dict(zip(paths, tape.gradient(oracle_loss, network.trainable_variables)))
    before = {v.path: v.numpy().copy() for v in network.trainable_variables}

    optim = OptimConfig(learning_rate=LR, weight_decay=DECAY, momentum=0.9)
    trainer = trainer_lib.Trainer(network, optim_config=optim)
    trainer.compile(optimizer=trainer_lib.make_optimizer(optim))
    logs = trainer.train_step(batch)

    np.testing.assert_allclose(float(logs["loss"]), float(oracle_loss), rtol=1e-5)
    for v in network.trainable_variables:
        w, g = before[v.path], grads[v.path].numpy()
        # SGD's first step (zero velocity): w - lr * multiplier * (grad + decay * w).
        step = g + DECAY * w if DECAYS[v.path] else g
        expected = w - LR * MULTIPLIER[v.path] * step
        np.testing.assert_allclose(v.numpy(), expected, rtol=1e-5, atol=1e-6,
                                   err_msg=v.path)


def test_lr_multiplier_by_path():
    config = OptimConfig()
    fake = lambda path: type("V", (), {"path": path})()  # noqa: E731
    assert [trainer_lib.lr_multiplier(fake(p), config) for p in
            ("fc8/kernel", "fc8/bias", "conv5_1/bias", "conv5_1/kernel", "fc8b/kernel")] == \
        [10.0, 20.0, 2.0, 1.0, 1.0]


@pytest.mark.parametrize("precision", ["float32", "mixed_bfloat16", "mixed_float16"])
def test_every_precision_takes_a_step_on_strong_and_em_adapt_examples(precision):
    """A DeepLab step in each precision, one strong and one EM-Adapt example in
    the batch: float32 loss and statistics, every weight moved, one step counted."""
    keras.utils.set_random_seed(0)
    net = model_lib.build_deeplab(ModelConfig(num_classes=C, width=0.0625, dropout=0.0,
                                              precision=precision))
    trainer = trainer_lib.Trainer(net, optim_config=OptimConfig(optimizer="adam"))
    trainer.compile(optimizer=trainer_lib.make_optimizer(trainer.optim_config, precision))
    assert isinstance(trainer.optimizer, keras.optimizers.LossScaleOptimizer) == (
        precision == "mixed_float16")
    batch = synthetic_batch(2, 17, C)
    batch["kind"] = tf.constant([KIND_ID["strong"], KIND_ID["em_adapt"]])
    before = [v.numpy().copy() for v in net.trainable_variables]
    logs = trainer.train_step(batch)  # eager: tracing costs more than the step here
    assert all(v.dtype == tf.float32 for v in logs.values())
    assert np.isfinite(float(logs["loss"])) and float(logs["fg_fraction"]) > 0
    assert int(trainer.optimizer.iterations.numpy()) == 1
    for v, b in zip(net.trainable_variables, before):
        assert v.dtype == "float32" and not np.array_equal(v.numpy(), b), v.path


def test_float16_loss_scaling_gives_the_unscaled_update():
    """Under mixed_float16 the loss is scaled by 2**15 before the gradients and the
    LossScaleOptimizer divides them back: the SGD step, decay and multipliers
    included, is the one of the unscaled loss (a decay left unscaled would be
    divided by 2**15 and vanish)."""
    keras.utils.set_random_seed(3)
    init = keras.initializers.RandomNormal(stddev=0.5)
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(4, 1, activation="tanh", bias_initializer=init, name="conv1",
                            dtype="mixed_float16")(inputs)
    scores = keras.layers.Conv2D(C, 1, bias_initializer=init, name="fc8", dtype="float32")(x)
    network = keras.Model(inputs, scores)
    batch = _batch()
    with tf.GradientTape() as tape:
        oracle_loss = _oracle_loss(network(batch["image"] / 255.0), batch)
    batch["image"] = batch["image"] / 255.0
    grads = dict(zip([v.path for v in network.trainable_variables],
                     tape.gradient(oracle_loss, network.trainable_variables)))
    before = {v.path: v.numpy().copy() for v in network.trainable_variables}
    optim = OptimConfig(learning_rate=LR, weight_decay=DECAY, momentum=0.9)
    trainer = trainer_lib.Trainer(network, optim_config=optim)
    trainer.compile(optimizer=trainer_lib.make_optimizer(optim, "mixed_float16"))
    trainer.train_step(batch)
    assert float(trainer.optimizer.dynamic_scale.numpy()) == 2.0 ** 15  # no overflow
    for v in network.trainable_variables:
        w, g = before[v.path], grads[v.path].numpy()
        step = g + DECAY * w if DECAYS[v.path] else g
        expected = w - LR * MULTIPLIER[v.path] * step
        # float16 gradients of the scaled loss round differently from the unscaled ones.
        np.testing.assert_allclose(v.numpy(), expected, rtol=2e-3, atol=2e-3, err_msg=v.path)


def test_fused_sgd_takes_keras_sgd_steps():
    """trainer.SGD (one fused op per variable) moves weights and momenta as Keras' SGD."""
    rng = np.random.default_rng(0)
    start = [rng.normal(size=(3, 4)).astype("float32"), rng.normal(size=(4,)).astype("float32")]
    grads = [[tf.constant(rng.normal(size=w.shape), tf.float32) for w in start] for _ in range(3)]
    out = []
    def run(optimizer):
        variables = [keras.Variable(w) for w in start]
        step = tf.function(lambda g: optimizer.apply(g, variables))
        for g in grads:
            step(g)
        return [v.numpy() for v in variables] + [m.numpy() for m in optimizer.momentums]

    out = [run(keras.optimizers.SGD(0.1, momentum=0.9)), run(trainer_lib.SGD(0.1, momentum=0.9))]
    for a, b in zip(*out):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("optimizer, precision", [
    ("sgd", "float32"), ("adam", "float32"), ("sgd", "mixed_bfloat16"), ("sgd", "mixed_float16")])
def test_frozen_backbone_stays_as_loaded_while_branches_and_fc8_train(optimizer, precision):
    """--freeze_backbone_steps >= --num_steps on a DeepLab-MSc network: the way
    Chen et al. trained the multi-scale branches on a trained single-scale network.
    SGD is the fused one (trainer.SGD); mixed_float16 steps through the
    LossScaleOptimizer; the branches compute in the policy's type."""
    def step(freeze):
        keras.utils.set_random_seed(0)
        network = model_lib.build_deeplab(ModelConfig(num_classes=C, width=0.0625,
                                                      multiscale=True, precision=precision))
        compute = {"float32": "float32", "mixed_bfloat16": "bfloat16",
                   "mixed_float16": "float16"}[precision]
        assert network.get_layer("msc_concat").output.dtype == compute
        before = {v.path: v.numpy().copy() for v in network.trainable_variables}
        optim = OptimConfig(optimizer=optimizer, learning_rate=1e-2, freeze_backbone_steps=freeze)
        trainer = trainer_lib.Trainer(network, optim_config=optim)
        trainer.compile(optimizer=trainer_lib.make_optimizer(optim, precision))
        trainer.train_step(synthetic_batch(2, 33, C))
        assert int(trainer.optimizer.iterations.numpy()) == 1  # not a skipped float16 step
        return {v.path: not np.array_equal(v.numpy(), before[v.path])
                for v in network.trainable_variables}

    moved = step(freeze=10)
    backbone = {p for p in moved if p.split("/")[0] in model_lib.BACKBONE_LAYERS}
    assert len(backbone) == 2 * len(model_lib.BACKBONE_LAYERS)
    assert not any(moved[p] for p in backbone)
    trained = set(moved) - backbone  # the branches and fc8, kernels and biases
    assert {p.split("/")[0] for p in trained} == set(model_lib.MULTISCALE_LAYERS) | {"fc8"}
    assert all(moved[p] for p in trained), sorted(p for p in trained if not moved[p])
    # Without the freeze the same step moves conv1-fc7 too.
    assert all(step(freeze=0).values())
