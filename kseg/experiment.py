"""A whole run put together from small configs: data, model, E-step, optimiser, loop.

Scripts turn flags into an `Experiment` and call `run_training` or
`evaluate_run`; the run's settings are written to `model_dir/config.json`
so evaluation, export and prediction rebuild the same network.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from typing import Callable

import keras
import numpy as np
import tensorflow as tf

from kseg import evaluate as eval_lib
from kseg import model as model_lib
from kseg import targets, train_lib
from kseg.data import pipeline, prepare, records
from kseg.data.errors import DataError
from kseg.training import pretrain


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Which records train and validate, and how examples are supervised.

    `supervision` is the kind of every training example, or, when
    `num_strong` >= 0, of the weak part: the first `num_strong` images of a
    seeded permutation of the training list are strong, the rest weak, and
    each batch holds `strong_per_batch` + `weak_per_batch` of them. With
    `weak_per_batch` = 0 the run trains on the strong subset alone.
    """

    dataset: str = "embedded"  # "embedded" or "embedded_coco" when data_dir is None
    data_dir: str | None = None  # prepared records; None: `dataset`, made on first use
    train_split: str = "train"
    weak_split: str | None = None  # records of the --supervision examples (default train_split)
    val_split: str = "val"
    supervision: str = "strong"
    batch_size: int = 20
    num_strong: int = -1
    strong_per_batch: int = 10
    weak_per_batch: int = 10
    # Cross-Joint: a second dataset trained in the same batches. The model's
    # labels are then the joint dataset's; this dataset's labels map into
    # them by class name (VOC names through kseg.data.coco.VOC_TO_COCO) and
    # its examples' loss runs over their own labels only.
    joint: "DataConfig | None" = None

    def resolved_dir(self) -> str:
        if self.data_dir:
            return self.data_dir
        makers = {"embedded": prepare.ensure_embedded_records,
                  "embedded_coco": prepare.ensure_embedded_coco_records}
        if self.dataset not in makers:
            raise ValueError(f"dataset {self.dataset!r} needs --data_dir (prepared records); "
                             f"built in: {sorted(makers)}")
        return makers[self.dataset]()


@dataclasses.dataclass(frozen=True)
class Experiment:
    data: DataConfig
    model: model_lib.ModelConfig
    input: pipeline.InputConfig
    estep: targets.EStepConfig
    optim: train_lib.OptimConfig
    loop: train_lib.LoopConfig
    init: str = "random"
    init_from: str | None = None  # a run directory to start from (Cross-Pretrain)
    reset_classifier: bool = False  # with init_from: a fresh fc8
    seed: int = 0


def make_streams(data: DataConfig, data_dir: str, seed: int,
                 label_map: tuple[int, ...] | None = None) -> list[pipeline.Stream]:
    """The training streams of a DataConfig (one, or strong + weak), their
    labels renamed by `label_map` (see pipeline.Stream)."""
    targets.kind_id(data.supervision)
    weak_split = data.weak_split or data.train_split
    try:
        records.read_split_info(data_dir, weak_split)  # a clear error if missing
    except DataError as e:
        if data.supervision == "bbox_seg":
            raise DataError(f"{e}. Bbox-Seg trains on masks estimated from the boxes: "
                            f"run scripts/bbox_seg.py to write the split {weak_split!r}") from e
        raise
    weak_pattern = records.split_pattern(data_dir, weak_split)
    if data.num_strong < 0:
        return [pipeline.Stream(weak_pattern, data.supervision, data.batch_size,
                                label_map=label_map)]
    ids = records.read_split_info(data_dir, data.train_split)["ids"]
    if not 0 < data.num_strong < len(ids):
        raise ValueError(f"num_strong={data.num_strong} must be in (0, {len(ids)}) "
                         f"for split {data.train_split!r} of {data_dir}")
    strong = tuple(np.random.default_rng(seed).permutation(sorted(ids))[:data.num_strong])
    streams = [pipeline.Stream(records.split_pattern(data_dir, data.train_split), "strong",
                               data.strong_per_batch, ids=strong, label_map=label_map)]
    if data.weak_per_batch > 0:  # 0: the strong subset alone (the paper's "Strong 1,464" row)
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
    data_dir = data.resolved_dir()
    names = records.read_split_info(data_dir, data.train_split)["class_names"]
    info = {"data_dir": data_dir, "class_names": names, "eval_class_names": names,
            "label_map": None}
    if data.joint is None:
        return make_streams(data, data_dir, seed), info
    joint_dir = data.joint.resolved_dir()
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
        return eval_lib.evaluate(eval_lib.network_predictions(network, dataset,
                                                              label_map=label_map), num_classes)
    return run


def run_training(exp: Experiment, strategy: tf.distribute.Strategy | None = None) -> dict:
    """Trains (or resumes) the experiment in `exp.loop.model_dir`."""
    keras.utils.set_random_seed(exp.seed)
    streams, info = training_setup(exp.data, exp.seed)
    if len(info["class_names"]) != exp.model.num_classes:
        raise ValueError(f"the model has {exp.model.num_classes} classes but the data has "
                         f"{len(info['class_names'])} ({info['class_names']}); set --num_classes")
    init = resolve_init(exp.init, exp.model)
    if init != exp.init:
        info.update(init_weights=init, init_val_top1=pretrain.backbone_info(init)["val_top1"])
    train_lib.save_run_config(exp.loop.model_dir, {**dataclasses.asdict(exp), **info})
    strategy = strategy or tf.distribute.get_strategy()
    with strategy.scope():
        network = model_lib.build_deeplab(exp.model)
        model_lib.initialise(network, exp.model.fov, init)
        if exp.init_from:
            init_from_run(network, exp.init_from, exp.reset_classifier)
        trainer = train_lib.Trainer(network, exp.estep, exp.optim)
        trainer.compile(optimizer=train_lib.make_optimizer(exp.optim))
    dataset = pipeline.train_dataset(streams, exp.input)
    evaluate_fn = None
    if exp.data.val_split:
        evaluate_fn = val_evaluator(info["data_dir"], exp.data.val_split,
                                    len(info["eval_class_names"]), info["label_map"])
    return train_lib.train(trainer, dataset, exp.loop, evaluate_fn, strategy)


EMBEDDED_IMAGENET = "embedded_imagenet"


def resolve_init(init: str, model: model_lib.ModelConfig) -> str:
    """The `--init` value as model.initialise takes it: "embedded_imagenet"
    becomes the backbone pretrained on the ImageNet stand-in for this width
    and FOV (made once, then cached); other values pass through."""
    if init != EMBEDDED_IMAGENET:
        return init
    return pretrain.ensure_backbone(pretrain.PretrainConfig(width=model.width, fov=model.fov))


def init_from_run(network, run_dir: str, reset_classifier: bool) -> None:
    """Copies the weights of another run's newest checkpoint into `network`,
    all but the classifier with `reset_classifier` (Cross-Pretrain: COCO
    weights, then a fresh fc8 for VOC)."""
    source, _ = load_network(run_dir)
    for layer in network.layers:
        if not layer.weights or (reset_classifier and layer.name == model_lib.CLASSIFIER):
            continue
        weights = source.get_layer(layer.name).get_weights()
        if [w.shape for w in weights] != [tuple(w.shape) for w in layer.weights]:
            raise ValueError(
                f"--init_from={run_dir}: layer {layer.name} has shapes "
                f"{[w.shape for w in weights]} there but {[tuple(w.shape) for w in layer.weights]}"
                " here (other classes? add --reset_classifier)")
        layer.set_weights(weights)


def load_network(model_dir: str):
    """Rebuilds a run's network from `config.json` and its newest checkpoint.

    Returns (network, run config dict)."""
    config = train_lib.load_run_config(model_dir)
    network = model_lib.build_deeplab(model_lib.ModelConfig(**config["model"]))
    checkpoint = train_lib.restore_network(network, model_dir)
    print(f"loaded {checkpoint}", file=sys.stderr)
    return network, config


def evaluate_run(model_dir: str, split: str = "val", data_dir: str | None = None,
                 on_image: Callable | None = None) -> dict:
    """Evaluates a run's newest checkpoint on a split; writes eval_<split>.json."""
    network, config = load_network(model_dir)
    data_dir = data_dir or config["data_dir"]
    names = config.get("eval_class_names", config["class_names"])
    dataset = pipeline.eval_dataset(records.split_pattern(data_dir, split))
    result = eval_lib.evaluate(eval_lib.network_predictions(
        network, dataset, on_image, label_map=config.get("label_map")), len(names))
    result.update(split=split, data_dir=data_dir, class_names=names)
    eval_lib.write_json(result, os.path.join(model_dir, f"eval_{split}.json"))
    return result
