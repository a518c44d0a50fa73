"""Serving throughput: the exported SavedModel against the in-process Keras model."""

from __future__ import annotations

import os
import tempfile
import time

import numpy as np
import tensorflow as tf

from kseg.config import ModelConfig
from kseg.inference.export import export_saved_model
from kseg.inference.segment import segment
from kseg.model import build_deeplab


def benchmark_inference(width: float = 0.125, num_classes: int = 21, height: int = 375,
                        image_width: int = 500, batch_size: int = 1, rounds: int = 5,
                        calls_per_round: int = 4, export_dir: str | None = None) -> dict:
    """Images/s of the SavedModel against the in-process Keras model, same run.

    A random-init network of the given width (throughput does not depend on
    the weights) is exported; each round times `calls_per_round` calls of
    (a) `segment` on the Keras model inside a tf.function, (b) the loaded
    SavedModel's `serve_images`, (c) its `serving_default` on PNG bytes
    (decoding included), alternating so load changes hit all alike. Returns
    a dict of medians over rounds and the SavedModel/Keras ratio.
    """
    network = build_deeplab(ModelConfig(num_classes, width=width))
    names = [f"class{i}" for i in range(num_classes)]
    with tempfile.TemporaryDirectory() as tmp:
        path = export_saved_model(network, export_dir or os.path.join(tmp, "model"), names,
                                  overwrite=True)
        loaded = tf.saved_model.load(path)
        rng = np.random.default_rng(0)
        images = tf.constant(rng.integers(0, 256, (batch_size, height, image_width, 3), np.uint8))
        encoded = tf.stack([tf.io.encode_png(image) for image in images])
        keras_fn = tf.function(lambda x: segment(network, x))
        runs = {"keras": lambda: keras_fn(images),
                "saved_model": lambda: loaded.signatures["serve_images"](images=images),
                "saved_model_encoded": lambda: loaded.signatures["serving_default"](
                    images=encoded)}
        for run in runs.values():  # trace and warm up
            for _ in range(2):
                tf.nest.map_structure(lambda t: t.numpy(), run())
        times = {name: [] for name in runs}
        for _ in range(rounds):
            for name, run in runs.items():
                start = time.perf_counter()
                for _ in range(calls_per_round):
                    out = run()
                    out = out["labels"] if isinstance(out, dict) else out
                    out.numpy()
                times[name].append(time.perf_counter() - start)
    per_second = {name: calls_per_round * batch_size / float(np.median(t))
                  for name, t in times.items()}
    return {"width": width, "image_size": f"{image_width}x{height}", "batch_size": batch_size,
            "num_classes": num_classes,
            **{f"{name}_images_per_s": value for name, value in per_second.items()},
            "saved_model_over_keras": per_second["saved_model"] / per_second["keras"]}
