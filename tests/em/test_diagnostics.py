"""kseg/em/diagnostics.py and scripts/em_start.py: can EM start, has a run collapsed."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from kseg import model as model_lib
from kseg.config import EStepConfig
from kseg.em import diagnostics

from tests import ROOT


def _images(values):
    """(N, P) values of one channel -> (N, 1, P, 1) activations."""
    return np.asarray(values, np.float64)[:, None, :, None]


@pytest.mark.parametrize("values, expected", [
    ([[0, 2], [2, 0]], 1.0),   # no spatial pattern common to the images
    ([[0, 2], [0, 2]], 0.0),   # the same map for every image
    ([[0, 2], [2, 4]], 0.5),   # across images: var 1 at each position; in all: var 2
    ([[0, 0], [0, 0]], 0.0),   # a dead layer carries nothing about the input
])
def test_input_dependence_by_hand(values, expected):
    assert diagnostics.input_dependence(_images(values)) == pytest.approx(expected)


def test_input_dependence_sums_over_channels():
    """Channels weigh by their variance: a loud input-free channel dominates a quiet
    input-driven one."""
    driven = _images([[0, 2], [2, 0]])  # var 1, all of it across images
    fixed = 10 * _images([[0, 2], [0, 2]])  # var 100, none across images
    both = np.concatenate([driven, fixed], axis=-1)
    assert diagnostics.input_dependence(both) == pytest.approx(1 / 101)


def test_target_quality_ignores_255_in_either():
    targets = [np.array([[1, 1, 255], [0, 2, 2]])]
    labels = [np.array([[1, 255, 1], [0, 0, 2]])]
    q = diagnostics.target_quality(targets, labels, 3)
    # counted: (0,0) t1 y1, (1,0) t0 y0, (1,1) t2 y0, (1,2) t2 y2
    assert q["fg_share"] == 0.5
    assert q["fg_precision"] == round(2 / 3, 3) and q["class_precision"] == round(2 / 3, 3)
    # IoU: background 1/2, class 1 1/1, class 2 1/2
    assert q["miou"] == pytest.approx((0.5 + 1 + 0.5) / 3)


def test_error_sources_by_hand():
    """Each kind of error counted once; 255 not counted; the image's classes are its mask's."""
    labels = [np.array([[0, 0, 1, 1, 2, 255]]), np.array([[3, 3, 0, 0, 0, 0]])]
    predictions = [np.array([[0, 3, 0, 2, 2, 1]]),   # right, absent 3, missed, swapped, right, -
                   np.array([[3, 1, 3, 0, 0, 0]])]   # right, absent 1, spill, right x3
    sources = diagnostics.error_sources(predictions, labels)
    assert sources["error"] == pytest.approx(5 / 11, abs=1e-4)
    assert sources["absent"] == 0.4  # the only errors the image labels can correct
    assert (sources["missed"], sources["spill"], sources["swapped"]) == (0.2, 0.2, 0.2)


def test_error_sources_without_errors():
    assert diagnostics.error_sources([np.array([[0, 1]])], [np.array([[0, 1]])]) == {
        "error": 0.0, "absent": 0.0, "missed": 0.0, "spill": 0.0, "swapped": 0.0}


def _tiny_network(num_classes=4):
    return model_lib.build_deeplab(model_lib.ModelConfig(num_classes=num_classes, width=0.0625))


def test_estep_targets_use_only_the_images_labels():
    rng = np.random.default_rng(0)
    network = _tiny_network()
    images = [rng.integers(0, 255, (33, 33, 3), np.uint8) for _ in range(3)]
    labels = [np.zeros((33, 33), np.uint8) for _ in range(3)]
    labels[0][:16, :16] = 2
    labels[1][20:, 20:] = 3
    labels[2][:, :] = 255  # no label: nothing valid
    labels[2][0, 0] = 1
    for kind in ("em_fixed", "em_adapt"):
        out = diagnostics.estep_targets(network, images, labels, kind, EStepConfig())
        assert [t.shape for t in out] == [(5, 5)] * 3
        assert set(np.unique(out[0])) <= {0, 2} and set(np.unique(out[1])) <= {0, 3}
        assert set(np.unique(out[2])) == {1, 255}  # only score pixel (0, 0) is valid


def test_estep_targets_reject_other_kinds():
    with pytest.raises(ValueError, match="image-label E-steps"):
        diagnostics.estep_targets(_tiny_network(), [], [], "bbox_em_fixed", EStepConfig())


def test_a_zeroed_layer_makes_it_and_every_later_one_input_free():
    keras.utils.set_random_seed(0)  # the earlier layer's dependence varies with the init
    network = _tiny_network()
    layer = network.get_layer("block3_conv1")
    kernel, bias = layer.get_weights()
    layer.set_weights([np.zeros_like(kernel), np.full_like(bias, 0.5)])
    images = np.random.default_rng(1).integers(0, 255, (4, 33, 33, 3), np.uint8)
    names = ["block2_conv2", "block3_conv1", "fc7", "fc8"]
    dependence = [diagnostics.input_dependence(a)
                  for a in diagnostics.layer_activations(network, images, names)]
    assert dependence[0] > 0.1  # measured 0.41-0.49 over inits; the later ones are 0
    assert dependence[1:] == pytest.approx([0, 0, 0], abs=1e-6)


@pytest.mark.slow
def test_em_start_script(tiny_records):
    out = subprocess.run(
        [sys.executable, os.path.join(ROOT, "scripts", "em_start.py"), "--supervision=em_adapt",
         f"--data_dir={tiny_records}", "--num_classes=6", "--width=0.0625", "--init=random",
         "--num_images=4", "--fg_portion=0.1", "--num_train_images=4", "--frozen_steps=3"],
        check=True, capture_output=True, text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert "em_adapt E-step (fg_portion 0.1, bg_portion 0.4) from --init=random" in out.stdout
    assert "foreground precision" in out.stdout and "fc8" in out.stdout
    assert "fc8 alone on the frozen features, fitted on 4 train images" in out.stdout
    assert "errors the image labels can correct" in out.stdout
    failed = subprocess.run(
        [sys.executable, os.path.join(ROOT, "scripts", "em_start.py"), "--supervision=strong",
         f"--data_dir={tiny_records}", "--num_classes=6"], capture_output=True, text=True)
    assert failed.returncode != 0 and "image-label E-steps" in failed.stderr


def _objects(num_images=60, size=8, num_classes=4, seed=0):
    """(N, size, size) masks: background and 1-2 rectangles of distinct classes."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((num_images, size, size), np.int64)
    for mask in masks:
        for cls in rng.choice(np.arange(1, num_classes), size=rng.integers(1, 3), replace=False):
            y, x = rng.integers(0, size - 3, size=2)
            mask[y:y + 3, x:x + 3] = cls
    return masks


def _features(masks, num_classes=4, informative=True, seed=0):
    """(N, h, w, 8): the class one-hot plus noise (or noise alone) and 4 noise channels."""
    rng = np.random.default_rng(seed)
    signal = np.eye(num_classes)[masks] if informative else np.zeros(masks.shape + (num_classes,))
    noise = rng.normal(0, 0.3, size=masks.shape + (8,))
    return (np.concatenate([signal, np.zeros(masks.shape + (4,))], -1) + noise).astype(np.float32)


def test_linear_probe_reads_the_classes_the_features_carry():
    masks = _objects()
    masks[0, 0, 0] = 255  # ignored
    features = _features(masks.clip(0, 3))
    kernel, bias = diagnostics.linear_probe(features, masks, 4)
    assert kernel.shape == (8, 4) and bias.shape == (4,)
    assert diagnostics.classifier_miou(features, masks, kernel, bias) > 0.85  # measured 0.90
    noise = _features(masks.clip(0, 3), informative=False)
    kernel, bias = diagnostics.linear_probe(noise, masks, 4)
    assert diagnostics.classifier_miou(noise, masks, kernel, bias) < 0.5


def test_frozen_em_learns_from_image_labels_only_what_the_features_carry():
    # Features that name the classes: fc8 trained by EM-Adapt from image
    # labels alone finds them (measured 0.93). Features that do not: it does
    # not beat calling everything background (measured 0.20 against 0.20).
    masks = _objects()
    config = EStepConfig(fg_portion=0.15)
    kind = "em_adapt"
    features = _features(masks)
    kernel, bias = diagnostics.frozen_em(features, masks, 4, kind, config, num_steps=300,
                                         learning_rate=1e-2)
    learned = diagnostics.classifier_miou(features, masks, kernel, bias)
    noise = _features(masks, informative=False)
    kernel, bias = diagnostics.frozen_em(noise, masks, 4, kind, config, num_steps=300,
                                         learning_rate=1e-2)
    blind = diagnostics.classifier_miou(noise, masks, kernel, bias)
    background = diagnostics.classifier_miou(noise, masks, np.zeros((8, 4)), np.eye(4)[0])
    assert learned > 0.8
    assert blind < background + 0.1
    with pytest.raises(ValueError, match="image-label E-steps"):
        diagnostics.frozen_em(noise, masks, 4, "bbox_rect", config)
