"""Classification pretraining of the DeepLab backbone on the ImageNet stand-in.

The paper fine-tunes a VGG-16 trained on ImageNet; on the embedded data we
make that starting point ourselves (docs/pretraining.md): conv1-fc7 of the
*same* DeepLab-VGG16 (same width and field of view, atrous layers included)
are trained to classify the images of `kseg.data.standin` with a
classification head in VGG's fc8 role (global average pooling of fc7 + a
dense layer). The head is then thrown away; conv1-fc7 are written to a
backbone file that `kseg.model.initialise` loads exactly as it loads real
VGG-16 weights (conv1-fc7 copied, fc8 fresh).

`ensure_backbone` makes the file once per (settings, stand-in data) and
caches it next to the stand-in set; the held-out top-1 accuracy is stored
beside it (`<file>.json`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from kseg import model as model_lib
from kseg.config import PretrainConfig
from kseg.data import embedded, standin
from kseg.utils import files

# Bump when the pretraining recipe changes, so cached backbones are rebuilt.
RECIPE_VERSION = 3


def classifier(config: PretrainConfig, num_classes: int) -> tuple[keras.Model, keras.Model]:
    """(classifier, backbone network): the DeepLab network of `config` and a
    model sharing its layers that maps (B, S, S, 3) preprocessed images to
    (B, num_classes) logits through fc7 -> global average pool -> dense."""
    net = model_lib.build_deeplab(model_lib.ModelConfig(
        num_classes=2, fov=config.fov, width=config.width, dropout=config.dropout),
        batch_norm=True)
    features = net.get_layer("drop7").output  # (B, h, w, fc7 channels)
    pooled = keras.layers.GlobalAveragePooling2D(name="pool")(features)
    logits = keras.layers.Dense(num_classes, name="standin_classifier")(pooled)
    return keras.Model(net.input, logits, name="standin_classifier"), net


def top1_present(targets, logits):
    """(B,) 1 where the highest-scoring class is one of the image's classes.
    targets: (B, K), > 0 on the present classes; logits: (B, K)."""
    best = tf.argmax(logits, axis=-1, output_type=tf.int32)  # (B,)
    return tf.cast(tf.gather(targets, best, batch_dims=1) > 0, tf.float32)


def _dataset(images: np.ndarray, labels: np.ndarray, batch_size: int, seed: int,
             train: bool) -> tf.data.Dataset:
    data = tf.data.Dataset.from_tensor_slices((images, labels))
    if train:
        data = data.shuffle(len(images), seed=seed, reshuffle_each_iteration=True).repeat()
    # A running draw number: each draw of an image gets its own flip.
    data = data.enumerate()

    def prepare(draw, example):
        image, label = example
        if train:
            image = tf.image.stateless_random_flip_left_right(
                image, tf.stack([draw, tf.constant(seed, tf.int64)]))
        # Softmax cross-entropy against the present classes, equally weighted
        # (stronger gradients than per-class sigmoids at 2 classes of 48).
        target = tf.cast(label, tf.float32)
        return model_lib.preprocess(image), target / tf.reduce_sum(target)
    return data.map(prepare, num_parallel_calls=tf.data.AUTOTUNE).batch(
        batch_size, drop_remainder=train).prefetch(tf.data.AUTOTUNE)


def pretrain(config: PretrainConfig, data_root: str, log=None) -> tuple[dict, float]:
    """Trains the stand-in classifier; returns (backbone weights, val top-1).

    The backbone weights are {layer name: [kernel, bias]} of conv1-fc7."""
    log = log or logging.info
    keras.utils.set_random_seed(config.seed)
    train_images, train_labels = standin.load_split(data_root, "train")
    val_images, val_labels = standin.load_split(data_root, "val")
    model, net = classifier(config, len(standin.CLASSES))
    schedule = keras.optimizers.schedules.ExponentialDecay(
        config.learning_rate, config.lr_decay_steps, 0.1, staircase=True)
    model.compile(optimizer=keras.optimizers.Adam(schedule),
                  loss=keras.losses.CategoricalCrossentropy(from_logits=True),
                  metrics=[top1_present])
    train = _dataset(train_images, train_labels, config.batch_size, config.seed, True)
    val = _dataset(val_images, val_labels, 100, config.seed, False)
    epochs = 6
    steps = -(-config.num_steps // epochs)
    start = time.time()

    class Progress(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            done = (epoch + 1) * steps
            log(f"pretrain step {done}/{steps * epochs}: loss={logs['loss']:.3f} "
                f"train accuracy={100 * logs['top1_present']:.1f}% "
                f"({done / (time.time() - start):.1f} steps/s)")

    model.fit(train, epochs=epochs, steps_per_epoch=steps, verbose=0, callbacks=[Progress()])
    _, accuracy = model.evaluate(val, verbose=0)
    log(f"pretrain: held-out top-1 accuracy {100 * accuracy:.2f}% "
        f"({len(val_labels)} images, {len(standin.CLASSES)} classes, {time.time() - start:.0f} s)")
    return model_lib.fold_batch_norm(net), float(accuracy)


def backbone_path(config: PretrainConfig, cache_dir: str | None = None) -> str:
    """Where the backbone of `config` is cached (hash of the settings)."""
    key = json.dumps({"recipe": RECIPE_VERSION, "standin": standin.FORMAT_VERSION,
                      **dataclasses.asdict(config)}, sort_keys=True)
    name = "backbone-" + hashlib.sha256(key.encode()).hexdigest()[:12] + ".npz"
    cache_dir = cache_dir or embedded.default_cache_dir()
    return os.path.join(os.path.abspath(cache_dir), "pretrained", name)


def save_backbone(path: str, weights: dict, info: dict) -> None:
    """Writes {layer: [kernel, bias]} as `path` (npz) and `info` as
    `path`.json, each atomically."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    arrays = {f"{name}/{i}": w for name, ws in weights.items() for i, w in enumerate(ws)}
    with files.atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)
    files.write_json(path + ".json", info)


def ensure_backbone(config: PretrainConfig, cache_dir: str | None = None, log=None) -> str:
    """The path of the pretrained backbone of `config`, made on first use."""
    path = backbone_path(config, cache_dir)
    if os.path.isfile(path) and os.path.isfile(path + ".json"):
        return path
    log = log or logging.info
    log(f"pretraining the backbone on the ImageNet stand-in (once; cached as {path})")
    root = standin.ensure_standin(cache_dir, num_train=config.num_train,
                                  num_val=config.num_val, image_size=config.image_size)
    start = time.time()
    weights, accuracy = pretrain(config, root, log)
    save_backbone(path, weights, {"val_top1": accuracy, "seconds": time.time() - start,
                                  "num_classes": len(standin.CLASSES), "standin_root": root,
                                  "config": dataclasses.asdict(config)})
    return path


def backbone_info(path: str) -> dict:
    """The record written beside a backbone file (held-out accuracy, settings)."""
    with open(path + ".json") as f:
        return json.load(f)
