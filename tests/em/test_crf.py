"""The E-step's dense-CRF refinement (kseg/em/crf.py, EStepConfig.estep_crf)."""

import numpy as np
import pytest
import tensorflow as tf

from kseg.benchmarks import training as bench
from kseg.config import EStepConfig, ModelConfig
from kseg.constants import IGNORE_LABEL
from kseg.em import crf as estep_crf
from kseg.em import targets as targets_lib
from kseg.model import preprocess

RED, BLUE = [200, 30, 30], [30, 30, 200]


def _two_colour_crop(size=33, split=16):
    """(1, size, size, 3) preprocessed crop: red left of column `split`, blue from it on."""
    image = np.zeros((1, size, size, 3), np.uint8)
    image[:, :, :split] = RED
    image[:, :, split:] = BLUE
    return preprocess(image)


def _noisy_scores(size=5):
    """(1, size, size, 3) logits: label 1 on the left columns 0-1, label 2 on the right 2-4,
    background low, and two pixels whose weak margin points the wrong way."""
    scores = np.full((1, size, size, 3), -2.0, np.float32)
    scores[0, :, :2, 1], scores[0, :, :2, 2] = 2.0, 0.0
    scores[0, :, 2:, 1], scores[0, :, 2:, 2] = 0.0, 2.0
    scores[0, 2, 0, 1:] = [0.0, 0.5]  # a red pixel leaning to label 2
    scores[0, 1, 3, 1:] = [0.5, 0.0]  # a blue pixel leaning to label 1
    return tf.constant(scores)


CLEAN = np.array([[1, 1, 2, 2, 2]] * 5)


def test_score_map_colours_are_centred_on_every_eighth_pixel():
    # Score-map column 2 is crop column 16, the first blue one; its 7x7 window
    # (13..19) is 3 red + 4 blue columns; column 1 (5..11) is all red.
    small = estep_crf.score_map_images(_two_colour_crop()).numpy()
    assert small.shape == (1, 5, 5, 3) and small.dtype == np.uint8
    np.testing.assert_array_equal(small[0, :, 1], [RED] * 5)
    np.testing.assert_array_equal(small[0, :, 3], [BLUE] * 5)
    np.testing.assert_allclose(small[0, 0, 2], (3 * np.array(RED) + 4 * np.array(BLUE)) / 7,
                               atol=1)


def test_refinement_smooths_a_noisy_score_map_along_colours():
    image = _two_colour_crop(split=12)  # score-map columns 0-1 red, 2-4 blue
    scores = _noisy_scores()
    assert (np.argmax(scores.numpy()[0], -1) != CLEAN).sum() == 2
    refined = estep_crf.refine_scores(scores, image).numpy()
    assert refined.shape == (1, 5, 5, 3) and np.isfinite(refined).all()
    np.testing.assert_array_equal(np.argmax(refined[0], -1), CLEAN)
    # log marginals: each pixel's exp sums to 1
    np.testing.assert_allclose(np.exp(refined).sum(-1), 1.0, atol=1e-4)


def _batch(kinds, image, size=5):
    count = len(kinds)
    return {"image": tf.repeat(image, count, axis=0),
            "kind": tf.constant([targets_lib.kind_id(k) for k in kinds]),
            "label": tf.fill([count, size, size], 0),
            "valid": tf.ones([count, size, size], tf.bool),
            "image_labels": tf.constant([[1.0, 1.0, 1.0]] * count),
            "box_mask": tf.ones([count, size, size, 3], tf.bool)}


def test_estep_targets_follow_the_crf_for_weak_examples_only():
    """EM-Fixed on the noisy map: without the CRF the two wrong pixels stay, with it they
    follow their colour; the strong example in the same batch keeps its label."""
    batch = _batch(["em_fixed", "bbox_em_fixed", "strong"], _two_colour_crop(split=12))
    scores = tf.repeat(_noisy_scores(), 3, axis=0)
    plain, _ = targets_lib.compute_targets(scores, batch, EStepConfig())
    refined, stats = targets_lib.compute_targets(scores, batch, EStepConfig(estep_crf=True))
    plain, refined = plain.numpy(), refined.numpy()
    for i in (0, 1):
        assert (plain[i] != CLEAN).sum() == 2
        np.testing.assert_array_equal(refined[i], CLEAN)
    np.testing.assert_array_equal(refined[2], np.zeros((5, 5)))  # strong: its label
    assert float(stats["bg_fraction"]) == 0.0


def test_padding_stays_ignored():
    batch = _batch(["em_adapt"], _two_colour_crop(split=12))
    batch["valid"] = tf.constant(np.arange(5)[None, None, :] < 4) & tf.ones([1, 5, 5], tf.bool)
    targets, _ = targets_lib.compute_targets(_noisy_scores(), batch, EStepConfig(estep_crf=True))
    assert (targets.numpy()[0, :, 4] == IGNORE_LABEL).all()
    assert (targets.numpy()[0, :, :4] != IGNORE_LABEL).all()


@pytest.mark.parametrize("kind", ["em_adapt", "bbox_em_fixed"])
def test_training_step_runs_with_the_estep_crf(kind):
    trainer = bench.make_trainer(ModelConfig(num_classes=4, width=0.0625, dropout=0.0))
    trainer.estep_config = EStepConfig(estep_crf=True)
    batch = bench.with_kind(bench.synthetic_batch(2, 33, 4), kind)
    step = tf.function(trainer.train_step)  # traced, as the training loop runs it
    for _ in range(2):
        logs = step(batch)
    assert np.isfinite(float(logs["loss"])) and float(logs["loss"]) > 0
    assert int(trainer.optimizer.iterations) == 2
