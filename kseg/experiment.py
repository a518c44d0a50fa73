"""A whole run put together from its configs (kseg.config): training and evaluation.

The command line turns flags into an `Experiment` and calls `run_training`,
`evaluate_run` or `evaluate_run_with_crf`; the run's settings are written to
`model_dir/config.json` so evaluation, export and prediction rebuild the
same network (`load_network`).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from kseg import model as model_lib
from kseg.config import DataConfig, Experiment, ModelConfig
from kseg.constants import CLASSIFIER
from kseg.crf import evaluate as crf_eval
from kseg.data import pipeline, prepare, records
from kseg.data.errors import DataError
from kseg.training import pretrain
from kseg.data.palette import write_label_png
from kseg.em import targets
from kseg.evaluation import metrics
from kseg.inference import segment as segment_lib
from kseg.training import checkpoints, loop, trainer as trainer_lib
from kseg.utils import files
from kseg.utils.progress import Progress


def resolve_data_dir(data: DataConfig) -> str:
    """The records directory of `data`: `data_dir`, or the built-in
    `dataset`'s, generated on first use."""
    if data.data_dir:
        return data.data_dir
    makers = {"embedded": prepare.ensure_embedded_records,
              "embedded_coco": prepare.ensure_embedded_coco_records}
    if data.dataset not in makers:
        raise ValueError(f"dataset {data.dataset!r} needs --data_dir (prepared records); "
                         f"built in: {sorted(makers)}")
    return makers[data.dataset]()


def make_streams(data: DataConfig, data_dir: str, seed: int,
                 label_map: tuple[int, ...] | None = None) -> list[pipeline.Stream]:
    """The training streams of a DataConfig (one, or strong + weak), their
    labels renamed by `label_map` (see pipeline.Stream)."""
    targets.kind_id(data.supervision)
    weak_split = data.weak_split or data.train_split
    records.read_split_info(data_dir, data.train_split)  # a clear error if missing
    try:
        records.read_split_info(data_dir, weak_split)
    except DataError as e:
        if data.supervision == "bbox_seg":  # the records are there: only the masks are missing
            raise DataError(f"{data_dir} has no split {weak_split!r} of Bbox-Seg masks "
                            "(estimated from the boxes): run scripts/bbox_seg.py first") from e
        raise
    weak_pattern = records.split_pattern(data_dir, weak_split)
    if not data.semi:
        return [pipeline.Stream(weak_pattern, data.supervision, data.batch_size,
                                label_map=label_map)]
    ids = records.read_split_info(data_dir, data.train_split)["ids"]
    if data.strong_split:  # the strong images are a split of their own (VOC's `train`)
        strong = tuple(sorted(records.read_split_info(data_dir, data.strong_split)["ids"]))
        strong_pattern = records.split_pattern(data_dir, data.strong_split)
        all_strong = set(ids) <= set(strong)
    else:
        if not 0 < data.num_strong <= len(ids):
            raise ValueError(f"--num_strong={data.num_strong} must be in (0, {len(ids)}] "
                             f"for split {data.train_split!r} of {data_dir}")
        strong = tuple(np.random.default_rng(seed).permutation(sorted(ids))[:data.num_strong])
        strong_pattern = records.split_pattern(data_dir, data.train_split)
        all_strong = data.num_strong == len(ids)
    streams = [pipeline.Stream(strong_pattern, "strong", data.strong_per_batch, ids=strong,
                               label_map=label_map)]
    # No weak part when every image is strong, or with --weak_per_batch=0 (the
    # strong subset alone: the paper's "Strong 1,464" row).
    if data.weak_per_batch > 0 and not all_strong:
        streams.append(pipeline.Stream(weak_pattern, data.supervision, data.weak_per_batch,
                                       ids=strong, exclude_ids=True, label_map=label_map))
    return streams


def class_label_map(source: list[str], target: list[str]) -> tuple[int, ...]:
    """Label of every source class among the target classes, by name (VOC
    names are renamed to COCO's first)."""
    from kseg.data import coco
    return coco.label_map(source, target, names=coco.VOC_TO_COCO)


def training_setup(data: DataConfig, seed: int):
    """The streams of a run and what describes its labels.

    Returns (streams, info) with info = {data_dir, class_names (the model's
    labels), eval_class_names (the labels of the validated dataset),
    label_map (validated dataset -> model labels, or None)}."""
    data_dir = resolve_data_dir(data)
    names = records.read_split_info(data_dir, data.train_split)["class_names"]
    info = {"data_dir": data_dir, "class_names": names, "eval_class_names": names,
            "label_map": None}
    if data.joint is None:
        return make_streams(data, data_dir, seed), info
    joint_dir = resolve_data_dir(data.joint)
    joint_names = records.read_split_info(joint_dir, data.joint.train_split)["class_names"]
    label_map = class_label_map(names, joint_names)
    info.update(class_names=joint_names, label_map=list(label_map), joint_data_dir=joint_dir)
    streams = make_streams(data, data_dir, seed, label_map) + make_streams(
        data.joint, joint_dir, seed)
    return streams, info


def val_evaluator(data_dir: str, split: str, num_classes: int,
                  label_map: list[int] | None = None) -> Callable:
    """network -> evaluation dict on a prepared split (no CRF); with a
    label_map the network's labels are read back in the split's labels."""
    dataset = pipeline.eval_dataset(records.split_pattern(data_dir, split))

    def run(network):
        return metrics.evaluate(segment_lib.network_predictions(network, dataset,
                                                                label_map=label_map), num_classes)
    return run


def check_settings(exp: Experiment) -> None:
    """Raises ValueError for settings that cannot run together."""
    if exp.loop.jit_compile and exp.estep.estep_crf:
        raise ValueError("--jit_compile with --estep_crf: XLA cannot compile the E-step's "
                         "dense CRF (its lattice has data-dependent shapes); drop one of them")


def setting_warnings(exp: Experiment) -> list[str]:
    """Settings that are valid but make part of the run do nothing."""
    kinds = {exp.data.supervision} | ({exp.data.joint.supervision} if exp.data.joint else set())
    out = []
    if "bbox_em_fixed" in kinds and 0 < exp.loop.num_steps <= exp.estep.box_warmup_steps:
        out.append(f"--num_steps={exp.loop.num_steps} <= --box_warmup_steps="
                   f"{exp.estep.box_warmup_steps}: Bbox-EM-Fixed never runs its E-step")
    if kinds & {"em_fixed", "em_adapt"} and (
            0 < exp.loop.num_steps <= exp.estep.weak_warmup_steps):
        out.append(f"--num_steps={exp.loop.num_steps} <= --weak_warmup_steps="
                   f"{exp.estep.weak_warmup_steps}: the image-label examples never train")
    return out


def run_training(exp: Experiment, strategy: tf.distribute.Strategy | None = None,
                 other_files: dict[str, str] | None = None) -> dict:
    """Trains (or resumes) the experiment in `exp.loop.model_dir`.

    A directory that already holds a run must hold this run: a network or
    data setting that differs from its `config.json` raises
    checkpoints.RunMismatchError before anything is written. `config.json`
    (and `other_files`, name -> text, e.g. the command's flags) are written
    once the newest checkpoint is restored, or when there is none; invalid
    data fails before that, leaving the directory as it was.
    """
    keras.utils.set_random_seed(exp.seed)
    check_settings(exp)
    for warning in setting_warnings(exp):
        logging.warning(f"warning: {warning}")
    streams, info = training_setup(exp.data, exp.seed)
    if len(info["class_names"]) != exp.model.num_classes:
        raise ValueError(f"the model has {exp.model.num_classes} classes but the data has "
                         f"{len(info['class_names'])} ({info['class_names']}); set --num_classes")
    run_config = {**dataclasses.asdict(exp), **info}
    checkpoints.check_same_run(exp.loop.model_dir, run_config)
    init = resolve_init(exp.init, exp.model)
    if init != exp.init:
        run_config.update(init_weights=init,
                          init_val_top1=pretrain.backbone_info(init)["val_top1"])
    strategy = strategy or tf.distribute.get_strategy()
    with strategy.scope():
        network = initial_network(exp, init)
        trainer = trainer_lib.Trainer(network, exp.estep, exp.optim, seed=exp.seed)
        trainer.compile(optimizer=trainer_lib.make_optimizer(exp.optim, exp.model.precision))
    dataset = pipeline.train_dataset(streams, exp.input)
    evaluate_fn = None
    if exp.data.val_split:
        evaluate_fn = val_evaluator(info["data_dir"], exp.data.val_split,
                                    len(info["eval_class_names"]), info["label_map"])
    return loop.train(trainer, dataset, exp.loop, evaluate_fn, strategy, on_restored=lambda: (
        checkpoints.save_run_config(exp.loop.model_dir, run_config, other_files)))


def initial_network(exp: Experiment, init: str) -> keras.Model:
    """The network a run of `exp` starts from: built, `init` (as
    `resolve_init` returns it) applied, then `exp.init_from`'s weights.

    Seeded here with `exp.seed`, so that a run's fresh layers (fc8) start the
    same whether or not this process has just drawn random numbers for
    something else (making the embedded data or pretraining the backbone on
    first use, which a later run of the same flagfile skips)."""
    keras.utils.set_random_seed(exp.seed)
    network = model_lib.build_deeplab(exp.model)
    model_lib.initialise(network, exp.model.fov, init)
    if exp.init_from:
        init_from_run(network, exp.init_from, exp.reset_classifier)
    return network


EMBEDDED_IMAGENET = "embedded_imagenet"


def resolve_init(init: str, model: ModelConfig) -> str:
    """The `--init` value as model.initialise takes it: "embedded_imagenet"
    becomes the backbone pretrained on the ImageNet stand-in for this width
    and FOV (made once, then cached); other values pass through."""
    if init != EMBEDDED_IMAGENET:
        return init
    return pretrain.ensure_backbone(pretrain.PretrainConfig(width=model.width, fov=model.fov))


def init_from_run(network, run_dir: str, reset_classifier: bool) -> None:
    """Copies the weights of another run's newest checkpoint into `network`,
    all but the classifier with `reset_classifier` (Cross-Pretrain: COCO
    weights, then a fresh fc8 for VOC).

    Into a multi-scale network (`--multiscale`) from a single-scale run, the
    way DeepLab-MSc is trained (docs/network.md): conv1-fc7 are copied, the
    branches stay as built, and fc8 keeps the run's weights on fc7's channels
    and zeros on the branches' (`model.widen_classifier`), so the network
    starts with exactly the run's scores."""
    source, _ = load_network(run_dir)
    source_layers = {layer.name for layer in source.layers}
    widen = model_lib.is_multiscale(network) and not model_lib.is_multiscale(source)
    for layer in network.layers:
        if not layer.weights or (reset_classifier and layer.name == CLASSIFIER):
            continue
        if layer.name not in source_layers and layer.name in model_lib.MULTISCALE_LAYERS:
            continue  # a single-scale run has no branches: they start as built
        weights = source.get_layer(layer.name).get_weights()
        if widen and layer.name == CLASSIFIER and weights[0].shape[-1] == layer.kernel.shape[-1]:
            weights = model_lib.widen_classifier(weights, network)
        if [w.shape for w in weights] != [tuple(w.shape) for w in layer.weights]:
            raise ValueError(
                f"--init_from={run_dir}: layer {layer.name} has shapes "
                f"{[w.shape for w in weights]} there but {[tuple(w.shape) for w in layer.weights]}"
                " here (other classes, or a --multiscale run into a single-scale network? "
                "add --reset_classifier)")
        layer.set_weights(weights)


def load_network(model_dir: str, precision: str | None = None):
    """Rebuilds a run's network from `config.json` and its newest checkpoint.

    `precision` (kseg.constants.PRECISIONS) overrides the run's: the
    checkpoint's weights are float32 whatever the run computed in, so any
    run loads in any precision. Returns (network, run config dict with
    "checkpoint": {path, step} of the checkpoint loaded; its
    model.precision is the one built)."""
    config = checkpoints.load_run_config(model_dir)
    model_config = ModelConfig(**config["model"])  # a run before --precision: float32
    if precision is not None:
        model_config = dataclasses.replace(model_config, precision=precision)
    config["model"] = dataclasses.asdict(model_config)
    network = model_lib.build_deeplab(model_config)
    checkpoint = checkpoints.restore_network(network, model_dir)
    logging.info(f"loaded {checkpoint}")
    step = checkpoint.rsplit("-", 1)[-1]
    config["checkpoint"] = {"path": checkpoint, "step": int(step) if step.isdigit() else None}
    return network, config


def split_size(model_dir: str, split: str = "val", data_dir: str | None = None) -> int:
    """Images in a prepared split of a run's data (or of `data_dir`)."""
    data_dir = data_dir or checkpoints.load_run_config(model_dir)["data_dir"]
    return records.read_split_info(data_dir, split)["num_images"]


def evaluate_run(model_dir: str, split: str = "val", data_dir: str | None = None,
                 on_image: Callable | None = None, precision: str | None = None,
                 jit_compile: bool = False) -> dict:
    """Evaluates a run's newest checkpoint on a split; writes eval_<split>.json.

    `precision`: the network's (default the run's, `load_network`), recorded
    in the result; `jit_compile`: XLA (`segment.make_segmenter`)."""
    network, config = load_network(model_dir, precision)
    data_dir = data_dir or config["data_dir"]
    names = config.get("eval_class_names", config["class_names"])
    dataset = pipeline.eval_dataset(records.split_pattern(data_dir, split))
    result = metrics.evaluate(segment_lib.network_predictions(
        network, dataset, on_image, label_map=config.get("label_map"),
        jit_compile=jit_compile), len(names))
    result.update(split=split, data_dir=data_dir, class_names=names,
                  checkpoint=config["checkpoint"], precision=config["model"]["precision"])
    files.write_json(os.path.join(model_dir, f"eval_{split}.json"), result)
    return result


# --- With the dense CRF -----------------------------------------------------------


def _open_run(model_dir: str, split: str, data_dir: str | None, num_images: int | None,
              precision: str | None = None):
    """(network, run config, data_dir, dataset of the first num_images, image count)."""
    network, config = load_network(model_dir, precision)
    data_dir = data_dir or config["data_dir"]
    total = records.read_split_info(data_dir, split)["num_images"]
    dataset = pipeline.eval_dataset(records.split_pattern(data_dir, split))
    if num_images is not None and num_images < total:
        dataset, total = dataset.take(num_images), num_images
    return network, config, data_dir, dataset, total


def evaluate_run_with_crf(model_dir: str, split: str = "val", data_dir: str | None = None,
                          setting: crf_eval.CRFSetting = crf_eval.CRFSetting(),
                          workers: int | None = None, chunk_size: int | None = None,
                          masks_dir: str | None = None,
                          start_method: str = crf_eval.START_METHOD,
                          impl: str = crf_eval.CRF_IMPLEMENTATIONS[0],
                          precision: str | None = None,
                          jit_compile: bool = False) -> tuple[dict, dict]:
    """Evaluates a run's newest checkpoint with and without the CRF (docs/evaluation.md).

    The network runs once over the split; the CRF runs on every image in a
    pool of `workers` processes (`kseg.crf.evaluate.evaluate_with_crf`), or
    in this process with `impl='tf'` (`kseg.crf.tf_dense`).
    Writes ``model_dir/eval_<split>.json`` and ``eval_<split>_crf.json`` (the
    latter records the CRF setting under ``crf``, as flag lines under
    ``crf_flags`` and the implementation under ``crf_impl``) and, with ``masks_dir``, the CRF masks as palette PNGs.
    Returns (plain, crf) result dicts, each with split, data_dir, class_names.
    `precision` and `jit_compile`: as in `evaluate_run`.
    """
    network, config, data_dir, dataset, total = _open_run(model_dir, split, data_dir, None,
                                                          precision)
    if masks_dir:
        os.makedirs(masks_dir, exist_ok=True)
    with Progress(total, f"network + crf on {split}") as bar:
        def on_image(sample, prediction, crf_labels):
            if masks_dir:
                write_label_png(os.path.join(masks_dir, sample.image_id + ".png"), crf_labels)
            bar.update()
        plain, crf = crf_eval.evaluate_with_crf(
            segment_lib.network_samples(network, dataset, jit_compile), network.output_shape[-1],
            setting, workers, chunk_size, on_image, start_method, impl)
    for result in (plain, crf):
        result.update(split=split, data_dir=data_dir, class_names=config["class_names"],
                      checkpoint=config["checkpoint"], precision=config["model"]["precision"])
    crf.update(crf=setting.as_dict(), crf_flags=setting.to_flags(), crf_impl=impl)
    files.write_json(os.path.join(model_dir, f"eval_{split}.json"), plain)
    files.write_json(os.path.join(model_dir, f"eval_{split}_crf.json"), crf)
    return plain, crf


def load_crf_samples(model_dir: str, split: str = "val", data_dir: str | None = None,
                     num_images: int | None = 100) -> tuple[list, dict]:
    """The network's probabilities on the first ``num_images`` images of a split,
    kept in memory for the CRF search (about 16 MB per VOC image).

    Returns (a list of kseg.crf.evaluate.CRFSample, the run config with
    ``data_dir`` resolved)."""
    network, config, data_dir, dataset, total = _open_run(model_dir, split, data_dir,
                                                          num_images)
    samples = []
    with Progress(total, f"network on {split}") as bar:
        for sample in segment_lib.network_samples(network, dataset):
            samples.append(sample)
            bar.update()
    return samples, {**config, "data_dir": data_dir}
