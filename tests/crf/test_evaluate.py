"""Tests for kseg/crf/evaluate.py: CRF evaluation over a pool, and the scripts that use it."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from kseg.crf import evaluate as crf_eval
from kseg.crf.dense import CRFParams, dense_crf
from kseg.crf.evaluate import CRFSetting
from kseg.data import pipeline, records
from kseg.evaluation import metrics
from kseg.inference import segment as segment_lib

from tests import ROOT
from tests.crf.conftest import FAST, crf_flag_values

# ------------------------------------------------------------------ CRFSetting

def test_setting_scales_position_stds_to_each_image():
    setting = CRFSetting(CRFParams(), reference_size=500)
    assert setting.for_image(128, 100) == CRFParams().for_image_size(128, 100)
    assert setting.for_image(100, 250).bi_xy_std == pytest.approx(121 / 2)
    assert CRFSetting(FAST, reference_size=0).for_image(64, 64) == FAST
    with pytest.raises(ValueError, match="reference_size"):
        CRFSetting(FAST, reference_size=-1)


def test_flag_defaults_are_deeplab_values_scaled_to_500_px():
    values = crf_flag_values()
    values(["prog"])
    assert CRFSetting.from_dict(values.flag_values_dict()) == CRFSetting(CRFParams(), 500)


@pytest.mark.parametrize("name, bi", [("crf_deeplab_largefov.cfg", (4.0, 121.0, 5.0)),
                                      ("crf_released_test.cfg", (5.0, 50.0, 10.0))])
def test_flagfile_fragments_parse(name, bi):
    values = crf_flag_values()
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
    expected = metrics.evaluate(((s.label, s.probs.argmax(-1)) for s in samples), 6)
    assert plain["confusion"] == expected["confusion"]


def test_tf_implementation_scores_as_pydensecrf(samples):
    """--crf_impl=tf: the same labels as pydensecrf on >= 99% of pixels, mIoU within 0.3 points."""
    setting = CRFSetting()  # DeepLab's values, stds scaled from 500 px to the 64 px images
    per_impl = {}
    for impl in crf_eval.CRF_IMPLEMENTATIONS:
        labels = []
        scores = crf_eval.evaluate_with_crf(
            samples, 6, setting, workers=1, impl=impl,
            on_image=lambda sample, prediction, crf_labels: labels.append(crf_labels))
        per_impl[impl] = scores[1], np.stack(labels)
    (py_crf, py_labels), (tf_crf, tf_labels) = per_impl["pydensecrf"], per_impl["tf"]
    assert tf_labels.dtype == np.uint8 and tf_labels.shape == py_labels.shape
    assert (tf_labels == py_labels).mean() >= 0.99
    assert abs(tf_crf["miou"] - py_crf["miou"]) <= 0.003
    assert (tf_labels != np.stack([s.probs.argmax(-1) for s in samples])).mean() > 0.001


@pytest.mark.slow  # two processes that start TensorFlow
def test_tf_pool_keeps_the_order_and_the_labels(samples):
    """--crf_impl=tf --workers=2: a pool of two single-threaded TensorFlow processes
    yields every image in order with the labels of one at a time in this process
    (16 images from an iterator, at most 4 held at once)."""
    setting = CRFSetting(FAST)
    one = list(crf_eval.crf_predictions(samples, setting, workers=1, impl="tf"))
    two = list(crf_eval.crf_predictions(iter(samples), setting, workers=2, impl="tf"))
    assert [s.image_id for s, _ in two] == [s.image_id for s in samples]
    for (_, a), (_, b) in zip(one, two):
        np.testing.assert_array_equal(a, b)


def test_unknown_implementation_is_rejected(samples):
    with pytest.raises(ValueError, match="--crf_impl must be one of pydensecrf, tf"):
        next(crf_eval.crf_predictions(samples, CRFSetting(FAST), impl="cuda"))


def test_network_samples_pair_images_labels_and_probs(tiny_records):
    inputs = keras.Input((None, None, 3))
    net = keras.Model(inputs, keras.layers.Lambda(lambda x: x[:, ::8, ::8, :3])(inputs))
    dataset = pipeline.eval_dataset(records.split_pattern(tiny_records, "val")).take(3)
    got = list(segment_lib.network_samples(net, dataset))
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


def test_crf_modules_and_metrics_import_without_tensorflow():
    """The CRF pool's workers import these: TensorFlow would cost them seconds each."""
    code = ("import sys; import kseg.crf.dense, kseg.crf.bbox_seg, kseg.crf.evaluate, "
            "kseg.crf.search, kseg.evaluation.metrics, kseg.data.bbox_seg, kseg.config; "
            "print('tensorflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                         text=True, cwd=ROOT)
    assert out.stdout.strip() == "False"
