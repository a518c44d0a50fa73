"""Input-pipeline, training-step and E-step throughput (BENCHMARKS.md, scripts/benchmark.py).

Figures on a shared CPU machine are noisy, so every comparison is made in
one process, alternating the things compared, and reported as a ratio.
"""

from __future__ import annotations

import time

import numpy as np
import tensorflow as tf

from kseg import model as model_lib
from kseg.config import EStepConfig, InputConfig, ModelConfig, OptimConfig
from kseg.crf import tf_dense
from kseg.crf.dense import REFERENCE_IMAGE_SIZE
from kseg.data import pipeline
from kseg.em import crf as estep_crf
from kseg.em import targets
from kseg.inference.segment import resize_aligned
from kseg.training.trainer import Trainer, make_optimizer


def pipeline_images_per_second(streams, config: InputConfig, num_batches: int = 50,
                               warmup: int = 5) -> float:
    """Images/s the input pipeline delivers (decode, crop, flip, boxes, batch)."""
    iterator = iter(pipeline.train_dataset(streams, config))
    for _ in range(warmup):
        batch = next(iterator)
    size = int(batch["image"].shape[0])
    start = time.perf_counter()
    for _ in range(num_batches):
        next(iterator)
    return num_batches * size / (time.perf_counter() - start)


def jpeg_decode_seconds(encoded: list[bytes], rounds: int = 9) -> dict:
    """Median seconds to decode `encoded` JPEGs in a tf.data map, with
    TensorFlow's default DCT and with the accurate one the pipeline uses
    (kseg.data.records.decode_rgb), alternating round after round."""
    dataset = tf.data.Dataset.from_tensor_slices(encoded)
    methods = {"default": "", "accurate": "INTEGER_ACCURATE"}
    times = {name: [] for name in methods}
    for _ in range(rounds):
        for name, method in methods.items():
            decoded = dataset.map(lambda e, m=method: tf.io.decode_jpeg(e, 3, dct_method=m),
                                  num_parallel_calls=tf.data.AUTOTUNE)
            start = time.perf_counter()
            for _ in decoded:
                pass
            times[name].append(time.perf_counter() - start)
    return {name: float(np.median(t)) for name, t in times.items()}


def make_trainer(model_config: ModelConfig, optim: OptimConfig | None = None,
                 estep: EStepConfig | None = None):
    net = model_lib.build_deeplab(model_config)
    trainer = Trainer(net, estep_config=estep or EStepConfig(),
                      optim_config=optim or OptimConfig())
    trainer.compile(optimizer=make_optimizer(trainer.optim_config))
    return trainer


def alternating_seconds(calls: dict, rounds: int = 5, warmup: int = 2) -> dict:
    """Median seconds of each named call (a function of no arguments that
    returns when its work is done), measured in turn, round after round, so
    load changes hit them alike; each is first called `warmup` times (tracing)."""
    for call in calls.values():
        for _ in range(warmup):
            call()
    times = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    return {name: float(np.median(t)) for name, t in times.items()}


def train_step_seconds(trainer, batches: dict, rounds: int = 5, warmup: int = 2) -> dict:
    """Median seconds of one training step for each named batch.

    `batches` maps a name to a batch dict; the names are measured in turn,
    round after round, so load changes hit them alike."""
    step = tf.function(trainer.train_step)
    return alternating_seconds({name: lambda b=batch: step(b)["loss"].numpy()
                                for name, batch in batches.items()}, rounds, warmup)


def multiscale_seconds(width: float = 1.0, crop_size: int = 321, batch_size: int = 1,
                       num_classes: int = 21, fov: str = "large", rounds: int = 5,
                       warmup: int = 2) -> dict:
    """The cost of DeepLab-MSc's branches (`ModelConfig.multiscale`): median
    seconds of a training step (strong targets, SGD, the paper's settings) and
    of inference (`kseg.inference.segment.segment` on uint8 images, the path of
    evaluation, export and prediction), single-scale and multi-scale networks
    alternating round after round in this process.

    Returns {"train": {"single", "msc"}, "inference": {"single", "msc"},
    "params": {"single", "msc"}} (seconds; parameter counts)."""
    from kseg.inference.segment import segment
    batch = synthetic_batch(batch_size, crop_size, num_classes)
    images = tf.constant(np.random.default_rng(1).integers(
        0, 256, (batch_size, crop_size, crop_size, 3), np.uint8))
    train, infer, params = {}, {}, {}
    for name, multiscale in (("single", False), ("msc", True)):
        trainer = make_trainer(ModelConfig(num_classes, fov=fov, width=width,
                                           multiscale=multiscale))
        step = tf.function(trainer.train_step)
        train[name] = lambda s=step: s(batch)["loss"].numpy()
        run = tf.function(lambda x, n=trainer.network: segment(n, x))
        infer[name] = lambda r=run: r(images).numpy()
        params[name] = trainer.network.count_params()
    return {"train": alternating_seconds(train, rounds, warmup),
            "inference": alternating_seconds(infer, rounds, warmup), "params": params}


def steps_seconds(runs: dict, rounds: int = 5, warmup: int = 2) -> dict:
    """Median seconds of one training step for each named (trainer, batch),
    alternating (:func:`alternating_seconds`); each trainer's step is traced once."""
    steps = {}
    for trainer, _ in runs.values():
        steps.setdefault(id(trainer), tf.function(trainer.train_step))
    return alternating_seconds(
        {name: lambda t=trainer, b=batch: steps[id(t)](b)["loss"].numpy()
         for name, (trainer, batch) in runs.items()}, rounds, warmup)


def estep_crf_alone_seconds(batch: dict, num_classes: int, rounds: int = 5) -> dict:
    """Median seconds of the E-step's dense CRF on a whole batch, traced, by resolution
    (alternating, :func:`alternating_seconds`).

    'score_map': `kseg.em.crf.refine_scores` as `--estep_crf` runs it, on the
    (B, h, w) score map. 'input': the same CRF on the (B, S, S) crops with the
    scores upsampled to them (what an input-resolution E-step CRF would cost
    before downsampling its result again; not an option of kseg).
    """
    images = batch["image"]  # (B, S, S, 3) preprocessed crops
    size = batch["label"].shape[1]
    scores = tf.random.normal([images.shape[0], size, size, num_classes])
    crop = images.shape[1]

    def input_resolution(s, im):
        big = resize_aligned(s, tf.constant([crop, crop]))  # (B, S, S, C)
        unary = -tf.nn.log_softmax(big, axis=-1)  # (B, S, S, C)
        return tf_dense.mean_field(model_lib.deprocess(im), unary, estep_crf.ESTEP_CRF_PARAMS,
                                   reference_size=REFERENCE_IMAGE_SIZE)

    runs = {"score_map": tf.function(estep_crf.refine_scores),
            "input": tf.function(input_resolution)}
    return alternating_seconds({name: lambda r=run: r(scores, images).numpy()
                                for name, run in runs.items()}, rounds, warmup=1)


def with_kind(batch: dict, kind: str) -> dict:
    """The same batch with every example set to one supervision kind."""
    size = tf.shape(batch["kind"])[0]
    return {**batch, "kind": tf.fill([size], targets.kind_id(kind))}


def synthetic_batch(batch_size: int, crop_size: int, num_classes: int, seed: int = 0) -> dict:
    """A training batch of random content with realistic labels and boxes."""
    rng = np.random.default_rng(seed)
    size = model_lib.score_map_size(crop_size)
    label = rng.integers(0, num_classes, (batch_size, size, size)).astype(np.int32)
    image_labels = np.zeros((batch_size, num_classes), np.float32)
    image_labels[:, 0] = 1
    image_labels[np.arange(batch_size), rng.integers(1, num_classes, batch_size)] = 1
    box_mask = np.zeros((batch_size, size, size, num_classes), bool)
    box_mask[:, size // 4: 3 * size // 4, size // 4: 3 * size // 4, 1] = True
    return {
        "image": tf.constant(rng.normal(0, 60, (batch_size, crop_size, crop_size, 3)), tf.float32),
        "label": tf.constant(label), "valid": tf.ones_like(label, tf.bool),
        "image_labels": tf.constant(image_labels), "box_mask": tf.constant(box_mask),
        "kind": tf.zeros([batch_size], tf.int32),
    }


def estep_seconds(batch: dict, num_classes: int, kinds, rounds: int = 20) -> dict:
    """Median seconds of `compute_targets` alone (the E-step work a training
    step adds) per kind, on random scores of the batch's score-map size."""
    size = batch["label"].shape[1]
    scores = tf.random.normal([batch["label"].shape[0], size, size, num_classes])
    run = tf.function(lambda s, b: targets.compute_targets(s, b)[0])
    times = {}
    for kind in kinds:
        b = with_kind(batch, kind)
        run(scores, b).numpy()
        samples = []
        for _ in range(rounds):
            start = time.perf_counter()
            run(scores, b).numpy()
            samples.append(time.perf_counter() - start)
        times[kind] = float(np.median(samples))
    return times
