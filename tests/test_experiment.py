"""kseg/experiment.py: a run directory trained again, and the warnings about settings."""

import dataclasses
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from kseg import experiment, model
from kseg.config import (DataConfig, EStepConfig, Experiment, InputConfig, LoopConfig,
                         ModelConfig, OptimConfig)
from kseg.training import checkpoints


def _tiny(records_dir, model_dir, width=0.0625, num_steps=2, dropout=0.0, **data):
    return Experiment(
        data=DataConfig(data_dir=records_dir, batch_size=2, **data),
        model=ModelConfig(num_classes=6, width=width, dropout=dropout),
        input=InputConfig(num_classes=6, crop_size=33, seed=0),
        estep=EStepConfig(), optim=OptimConfig(optimizer="adam"),
        loop=LoopConfig(model_dir=model_dir, num_steps=num_steps, steps_per_epoch=1000,
                        checkpoint_every=1000, image_every=0, checkpoint_input=False))


def _read(path):
    with open(path, "rb") as f:
        return f.read()


@pytest.mark.slow
def test_rerun_with_another_network_refuses_and_keeps_the_run(tiny_records, tmp_path):
    """The sequence of issue 14: a finished run, the same directory trained again with
    another width -> one line naming the setting; config.json and flags.txt untouched,
    and the run still evaluates. A rerun with only training settings changed resumes."""
    model_dir = str(tmp_path / "run")
    experiment.run_training(_tiny(tiny_records, model_dir, val_split=""),
                            other_files={"flags.txt": "--width=0.0625\n"})
    config_before = _read(os.path.join(model_dir, "config.json"))
    flags_before = _read(os.path.join(model_dir, "flags.txt"))

    with pytest.raises(checkpoints.RunMismatchError) as error:
        experiment.run_training(_tiny(tiny_records, model_dir, width=0.125, val_split=""),
                                other_files={"flags.txt": "--width=0.125\n"})
    message = str(error.value)
    assert "\n" not in message
    assert "width: 0.0625 there, 0.125 here" in message
    assert "num_classes" not in message and "dropout" not in message
    assert _read(os.path.join(model_dir, "config.json")) == config_before
    assert _read(os.path.join(model_dir, "flags.txt")) == flags_before
    assert experiment.evaluate_run(model_dir, "val")["miou"] >= 0

    # Dropout and the step count are training settings: the run resumes, and its
    # files then record the new values.
    experiment.run_training(_tiny(tiny_records, model_dir, num_steps=3, dropout=0.3,
                                  val_split=""))
    saved = json.load(open(os.path.join(model_dir, "config.json")))
    assert saved["loop"]["num_steps"] == 3 and saved["model"]["dropout"] == 0.3
    assert os.path.exists(os.path.join(model_dir, "checkpoints", "ckpt-3.index"))


def test_training_on_invalid_data_writes_nothing(tiny_records, tmp_path):
    model_dir = tmp_path / "run"
    exp = _tiny(tiny_records, str(model_dir))
    with pytest.raises(ValueError, match="num_classes"):
        experiment.run_training(dataclasses.replace(
            exp, model=ModelConfig(num_classes=7, width=0.0625)))
    with pytest.raises(ValueError, match="no_such_split"):
        experiment.run_training(dataclasses.replace(
            exp, data=DataConfig(data_dir=tiny_records, train_split="no_such_split")))
    assert not model_dir.exists()


def test_run_differences_name_network_and_data_settings_only():
    old = {"model": {"num_classes": 21, "fov": "large", "width": 1.0, "dropout": 0.5},
           "init": "imagenet", "class_names": ["a", "b"], "loop": {"num_steps": 6000}}
    new = json.loads(json.dumps(old))
    new["model"].update(fov="small", dropout=0.1)
    new.update(init="random", class_names=["a", "c"], data={"strong_split": "train"})
    new["loop"]["num_steps"] = 9000
    assert checkpoints.run_differences(old, new) == [
        "fov: 'large' there, 'small' here", "init: 'imagenet' there, 'random' here",
        "class_names: ['a', 'b'] there, ['a', 'c'] here"]


def test_a_run_from_before_multiscale_is_a_single_scale_run():
    """config.json written before --multiscale existed has no such key: the run was
    single-scale, so retraining it with --multiscale is refused, without it resumes."""
    old = {"model": {"num_classes": 21, "fov": "large", "width": 1.0, "dropout": 0.5}}
    new = json.loads(json.dumps(old))
    new["model"]["multiscale"] = True
    assert checkpoints.run_differences(old, new) == ["multiscale: False there, True here"]
    new["model"]["multiscale"] = False
    assert checkpoints.run_differences(old, new) == []
    assert checkpoints.run_differences(new, old) == []


def test_warmups_that_outlast_the_run_are_warned_about(tmp_path):
    exp = _tiny(None, str(tmp_path), num_steps=100, supervision="bbox_em_fixed")
    assert experiment.setting_warnings(exp) == []
    long_warmup = dataclasses.replace(exp, estep=EStepConfig(box_warmup_steps=100,
                                                             weak_warmup_steps=500))
    warnings = experiment.setting_warnings(long_warmup)
    assert len(warnings) == 1 and "--box_warmup_steps=100" in warnings[0]
    image_labels = dataclasses.replace(long_warmup, data=DataConfig(supervision="em_adapt"))
    assert "--weak_warmup_steps=500" in experiment.setting_warnings(image_labels)[0]


def test_strong_images_from_a_split_or_all_of_them(tiny_records):
    """Semi runs take their strong images from a split of their own (VOC's `train`,
    as in the paper), the weak part being the rest; "all strong" needs no weak stream."""
    from kseg.data import records
    train_ids = records.read_split_info(tiny_records, "train")["ids"]
    val_ids = records.read_split_info(tiny_records, "val")["ids"]
    strong, weak = experiment.make_streams(
        DataConfig(data_dir=tiny_records, supervision="bbox_em_fixed", strong_split="val"),
        tiny_records, seed=0)
    assert strong.kind == "strong" and strong.ids == tuple(sorted(val_ids))
    assert strong.pattern == records.split_pattern(tiny_records, "val")
    assert weak.kind == "bbox_em_fixed" and weak.exclude_ids and weak.ids == strong.ids
    (only,) = experiment.make_streams(
        DataConfig(data_dir=tiny_records, supervision="bbox_em_fixed",
                   num_strong=len(train_ids)), tiny_records, seed=0)
    assert only.kind == "strong" and sorted(only.ids) == sorted(train_ids)
    with pytest.raises(ValueError, match="--num_strong=49"):
        experiment.make_streams(DataConfig(data_dir=tiny_records, num_strong=49),
                                tiny_records, seed=0)


@pytest.mark.slow
def test_evaluation_records_the_checkpoint_it_scored(tiny_records, tmp_path):
    model_dir = str(tmp_path / "run")
    experiment.run_training(_tiny(tiny_records, model_dir, val_split=""))
    experiment.evaluate_run(model_dir, "val")
    saved = json.load(open(os.path.join(model_dir, "eval_val.json")))
    assert saved["checkpoint"] == {"path": os.path.join(model_dir, "checkpoints", "ckpt-2"),
                                   "step": 2}


def _saved_run(model_dir, config):
    """A run directory as training leaves it (config.json, a checkpoint), untrained but
    for a random fc8 bias, so that copied classifier weights show in the scores."""
    network = model.build_deeplab(config)
    kernel, bias = network.get_layer("fc8").get_weights()
    network.get_layer("fc8").set_weights([kernel, np.linspace(-1, 1, len(bias), dtype=np.float32)])
    checkpoints.save_run_config(model_dir, {"model": dataclasses.asdict(config),
                                            "class_names": [str(c) for c in range(6)],
                                            "data_dir": None})
    tf.train.CheckpointManager(tf.train.Checkpoint(network=network),
                               os.path.join(model_dir, "checkpoints"), 1).save()
    return network


def test_init_from_a_single_scale_run_starts_multiscale_with_its_scores(tmp_path):
    single_dir, msc_dir = str(tmp_path / "single"), str(tmp_path / "msc")
    source = _saved_run(single_dir, ModelConfig(num_classes=6, width=0.0625))
    keras.utils.set_random_seed(1)
    fresh = model.build_deeplab(ModelConfig(num_classes=6, width=0.0625, multiscale=True))
    keras.utils.set_random_seed(1)
    net = model.build_deeplab(ModelConfig(num_classes=6, width=0.0625, multiscale=True))
    experiment.init_from_run(net, single_dir, reset_classifier=False)
    for name in model.BACKBONE_LAYERS:
        np.testing.assert_array_equal(net.get_layer(name).kernel, source.get_layer(name).kernel)
    for name in model.MULTISCALE_LAYERS:  # as built
        np.testing.assert_array_equal(net.get_layer(name).kernel, fresh.get_layer(name).kernel)
    fc8 = net.get_layer("fc8")
    np.testing.assert_array_equal(fc8.kernel[:, :, :64], source.get_layer("fc8").kernel)
    assert not np.any(fc8.kernel[:, :, 64:])
    images = np.random.default_rng(0).normal(0, 60, (2, 33, 33, 3)).astype(np.float32)
    np.testing.assert_allclose(net(images), source(images), rtol=1e-5, atol=1e-5)

    # A multi-scale run into a single-scale network: fc8 does not fit.
    _saved_run(msc_dir, ModelConfig(num_classes=6, width=0.0625, multiscale=True))
    single = model.build_deeplab(ModelConfig(num_classes=6, width=0.0625))
    with pytest.raises(ValueError, match="--multiscale run into a single-scale.*reset_classifier"):
        experiment.init_from_run(single, msc_dir, reset_classifier=False)
    experiment.init_from_run(single, msc_dir, reset_classifier=True)
    # Multi-scale to multi-scale copies every layer, the branches too.
    again = model.build_deeplab(ModelConfig(num_classes=6, width=0.0625, multiscale=True))
    experiment.init_from_run(again, msc_dir, reset_classifier=False)
    source_msc, _ = experiment.load_network(msc_dir)
    for name in model.MULTISCALE_LAYERS + ("fc8",):
        np.testing.assert_array_equal(again.get_layer(name).kernel,
                                      source_msc.get_layer(name).kernel)


def test_the_starting_network_does_not_depend_on_earlier_random_draws(tmp_path):
    """The first run of a flagfile makes the data and the backbone in its own process,
    drawing random numbers a later run skips: both must start from the same fc8."""
    exp = _tiny(str(tmp_path), str(tmp_path / "run"))
    exp = dataclasses.replace(exp, init="random")
    first = experiment.initial_network(exp, "random")
    np.random.rand(10)
    tf.random.uniform([10])
    keras.random.normal([10], seed=keras.random.SeedGenerator(3))
    second = experiment.initial_network(exp, "random")
    for a, b in zip(first.weights, second.weights):
        np.testing.assert_array_equal(a, b)
