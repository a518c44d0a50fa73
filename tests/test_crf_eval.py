"""Tests for kseg/crf_eval.py: CRF evaluation over a pool, the parameter search,
and the scripts that use them."""

import dataclasses
import io
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from absl import flags
from PIL import Image

from kseg import crf_eval
from kseg import evaluate as eval_lib
from kseg.crf import CRFParams, dense_crf
from kseg.crf_eval import CRFSample, CRFSetting
from kseg.data import pipeline, records

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST = CRFParams(bi_w=6.0, bi_xy_std=60.0, bi_rgb_std=10.0, pos_w=3.0, pos_xy_std=3.0,
                 num_iter=3)


def _box_blur(x, size):
    """Moving average over the two spatial axes, edges replicated."""
    for axis in (0, 1):
        pad = [(0, 0)] * x.ndim
        pad[axis] = (size // 2, size - 1 - size // 2)
        sums = np.cumsum(np.pad(x, pad, mode="edge"), axis=axis)
        sums = np.insert(sums, 0, 0.0, axis=axis)
        n = x.shape[axis]
        x = (np.take(sums, np.arange(size, size + n), axis=axis)
             - np.take(sums, np.arange(n), axis=axis)) / size
    return x


def _samples(records_dir, split="val", num_classes=6, seed=0):
    """Real images and labels with blurry, noisy 'network' probabilities."""
    rng = np.random.default_rng(seed)
    samples = []
    for record in records.iterate_split(records_dir, split):
        image = np.array(Image.open(io.BytesIO(record.image_encoded)).convert("RGB"))
        label = record.class_mask
        target = np.where(label == 255, 0, label)
        logits = 4.0 * np.eye(num_classes)[target] + rng.normal(size=label.shape + (num_classes,))
        logits = _box_blur(logits, 9)
        probs = np.exp(logits - logits.max(-1, keepdims=True))
        samples.append(CRFSample(record.image_id, image, label,
                                 (probs / probs.sum(-1, keepdims=True)).astype(np.float32)))
    return samples


@pytest.fixture(scope="module")
def samples(tiny_records):
    return _samples(tiny_records)


# ------------------------------------------------------------------ CRFSetting

def test_setting_scales_position_stds_to_each_image():
    setting = CRFSetting(CRFParams(), reference_size=500)
    assert setting.for_image(128, 100) == CRFParams().for_image_size(128, 100)
    assert setting.for_image(100, 250).bi_xy_std == pytest.approx(121 / 2)
    assert CRFSetting(FAST, reference_size=0).for_image(64, 64) == FAST
    with pytest.raises(ValueError, match="reference_size"):
        CRFSetting(FAST, reference_size=-1)


def _crf_flag_values():
    """A fresh FlagValues with the --crf_* flags defined as the scripts define them."""
    values = flags.FlagValues()
    for name, default, help_text in crf_eval.crf_flag_specs():
        define = flags.DEFINE_integer if isinstance(default, int) else flags.DEFINE_float
        define(name, default, help_text, flag_values=values)
    return values


def test_flag_defaults_are_deeplab_values_scaled_to_500_px():
    values = _crf_flag_values()
    values(["prog"])
    assert CRFSetting.from_dict(values.flag_values_dict()) == CRFSetting(CRFParams(), 500)


@pytest.mark.parametrize("name, bi", [("crf_deeplab_largefov.cfg", (4.0, 121.0, 5.0)),
                                      ("crf_released_test.cfg", (5.0, 50.0, 10.0))])
def test_flagfile_fragments_parse(name, bi):
    values = _crf_flag_values()
    values(["prog", f"--flagfile={os.path.join(ROOT, 'flags', name)}"])
    setting = CRFSetting.from_dict(values.flag_values_dict())
    params = setting.params
    assert (params.bi_w, params.bi_xy_std, params.bi_rgb_std) == bi
    assert setting.reference_size == 500 and params.num_iter == 10


def test_dense_crf_accepts_read_only_images():
    # Images decoded through np.asarray(PIL image) are read-only buffers.
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(9, 11, 3), dtype=np.uint8)
    image.flags.writeable = False
    probs = np.full((9, 11, 2), 0.5, np.float32)
    assert dense_crf(image, probs, FAST)[1].shape == (9, 11)


# ------------------------------------------------------------------ evaluation

def test_parallel_confusion_equals_serial(samples):
    setting = CRFSetting(FAST)
    seen = []
    serial = crf_eval.evaluate_with_crf(samples, 6, setting, workers=1)
    # Chunks of 5 split the 16 images unevenly over several pools.
    pooled = crf_eval.evaluate_with_crf(
        samples, 6, setting, workers=2, chunk_size=5,
        on_image=lambda sample, prediction, crf_labels: seen.append(sample.image_id))
    assert seen == [s.image_id for s in samples]
    for a, b in zip(serial, pooled):
        np.testing.assert_array_equal(a["confusion"], b["confusion"])
        assert a["miou"] == b["miou"] and a["num_images"] == b["num_images"] == len(samples)
    plain, crf = pooled
    # The CRF really changed predictions, and the plain scores are those of the argmax.
    assert plain["confusion"] != crf["confusion"]
    expected = eval_lib.evaluate(((s.label, s.probs.argmax(-1)) for s in samples), 6)
    assert plain["confusion"] == expected["confusion"]


def test_network_samples_pair_images_labels_and_probs(tiny_records):
    inputs = keras.Input((None, None, 3))
    net = keras.Model(inputs, keras.layers.Lambda(lambda x: x[:, ::8, ::8, :3])(inputs))
    dataset = pipeline.eval_dataset(records.split_pattern(tiny_records, "val")).take(3)
    got = list(crf_eval.network_samples(net, dataset))
    expected = list(records.iterate_split(tiny_records, "val"))[:3]
    assert [s.image_id for s in got] == [r.image_id for r in expected]
    for sample, record in zip(got, expected):
        np.testing.assert_array_equal(sample.label, record.class_mask)
        assert sample.image.shape == (record.height, record.width, 3)
        assert sample.probs.shape == (record.height, record.width, 3)
        np.testing.assert_allclose(sample.probs.sum(-1), 1.0, atol=1e-5)


def test_side_by_side_table():
    plain = {"per_class_iou": [0.9, None], "miou": 0.9, "pixel_accuracy": 0.95}
    crf = {"per_class_iou": [0.92, 0.1], "miou": 0.51, "pixel_accuracy": 0.96}
    text = crf_eval.format_side_by_side(plain, crf, ["background", "cat"])
    assert "IoU+CRF" in text
    assert " 90.00%" in text and " 92.00%" in text and "cat" in text


# ------------------------------------------------------------------ search

def test_coordinate_search_improves_and_writes_a_parsable_fragment(samples, tmp_path):
    start = CRFSetting(dataclasses.replace(FAST, bi_w=1.0), reference_size=500)
    grid = {"bi_w": [1.0, 6.0, 20.0], "bi_rgb_std": [5.0, 20.0], "pos_w": []}
    lines = []
    search = crf_eval.search_crf(samples[:6], 6, start, grid, "coordinate", rounds=2,
                                 workers=2, log=lines.append)
    best = search["best"]
    assert search["best_result"]["miou"] >= search["start_result"]["miou"]
    assert best.params.num_iter == 3 and best.reference_size == 500  # not searched
    assert best.params.pos_w == start.params.pos_w
    # Every tried setting once; the best is the top row of the table.
    keys = [tuple(sorted(r.items())) for r in search["tried"]]
    assert len(keys) == len(set(keys)) and 4 <= len(keys) <= 1 + 3 + 2 + 3 + 2
    assert max(r["miou"] for r in search["tried"]) == search["best_result"]["miou"]
    assert lines and lines[0].startswith("round 1, bi_w")
    table = crf_eval.format_search_table(search)
    assert table.splitlines()[1].endswith("*") and "without CRF" in table

    path = str(tmp_path / "crf_best.cfg")
    crf_eval.write_flagfile(path, best, ["found on 6 images"])
    values = _crf_flag_values()
    values(["prog", f"--flagfile={path}"])
    assert CRFSetting.from_dict(values.flag_values_dict()) == best


def test_grid_search_tries_every_combination(samples):
    grid = {"bi_w": [2.0, 6.0], "bi_xy_std": [30.0, 60.0]}
    search = crf_eval.search_crf(samples[:3], 6, CRFSetting(FAST), grid, "grid", workers=1)
    combos = {(r["bi_w"], r["bi_xy_std"]) for r in search["tried"]}
    assert {(2.0, 30.0), (2.0, 60.0), (6.0, 30.0), (6.0, 60.0)} <= combos
    with pytest.raises(ValueError, match="unknown CRF parameters"):
        crf_eval.search_crf(samples[:1], 6, CRFSetting(FAST), {"bogus": [1.0]})


# ------------------------------------------------------------------ scripts

@pytest.mark.parametrize("script", ["evaluate.py", "crf_search.py", "bbox_seg.py"])
def test_scripts_import_without_tensorflow(script):
    """The pool's 'spawn' workers re-import the main script: it must stay light."""
    code = ("import runpy, sys; sys.argv = ['x']; "
            f"runpy.run_path({os.path.join(ROOT, 'scripts', script)!r}, run_name='__mp_main__'); "
            "print('tensorflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                         text=True, cwd=ROOT)
    assert out.stdout.strip() == "False"


@pytest.mark.slow
def test_search_then_evaluate_scripts_on_a_trained_run(tiny_records, tmp_path):
    """crf_search.py writes crf_best.cfg; evaluate.py --crf --flagfile uses it and
    records it in eval_val_crf.json next to eval_val.json."""
    import json
    from kseg import experiment, model, targets, train_lib
    model_dir = str(tmp_path / "run")
    experiment.run_training(experiment.Experiment(
        data=experiment.DataConfig(data_dir=tiny_records, batch_size=2, val_split=""),
        model=model.ModelConfig(num_classes=6, width=0.0625, dropout=0.1),
        input=pipeline.InputConfig(num_classes=6, crop_size=33, seed=0),
        estep=targets.EStepConfig(), optim=train_lib.OptimConfig(optimizer="adam"),
        loop=train_lib.LoopConfig(model_dir=model_dir, num_steps=2, steps_per_epoch=2,
                                  checkpoint_every=2, image_every=0, checkpoint_input=False)))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    script = lambda name: os.path.join(ROOT, "scripts", name)  # noqa: E731
    subprocess.run([sys.executable, script("crf_search.py"), f"--model_dir={model_dir}",
                    "--num_images=4", "--workers=1", "--rounds=1", "--crf_num_iter=2",
                    "--bi_w_values=3,8",
                    "--bi_xy_std_values=", "--bi_rgb_std_values=5,13", "--pos_w_values=",
                    "--pos_xy_std_values="], check=True, env=env, capture_output=True)
    best_file = os.path.join(model_dir, "crf_best.cfg")
    best = CRFSetting.from_dict({
        line.split("=")[0][2:]: float(line.split("=")[1])
        for line in open(best_file).read().splitlines() if line.startswith("--")})
    out = subprocess.run([sys.executable, script("evaluate.py"), f"--model_dir={model_dir}",
                          "--crf", f"--flagfile={best_file}", "--workers=2"],
                         check=True, env=env, capture_output=True, text=True)
    assert "IoU+CRF" in out.stdout and "mIoU" in out.stdout
    plain = json.load(open(os.path.join(model_dir, "eval_val.json")))
    crf = json.load(open(os.path.join(model_dir, "eval_val_crf.json")))
    assert plain["num_images"] == crf["num_images"] == 16
    assert crf["crf"] == best.as_dict() and crf["crf_flags"] == best.to_flags()
    assert 0 <= crf["miou"] <= 1 and "crf" not in plain
