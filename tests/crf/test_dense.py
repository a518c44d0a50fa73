"""Tests for kseg/crf/dense.py: the CRF parameters and the dense CRF wrapper."""

import dataclasses

import numpy as np
import pydensecrf.densecrf as dcrf
import pytest

from kseg.crf import dense
from kseg.crf.dense import CRFParams, dense_crf


def _random_probs(rng, height, width, num_labels):
    logits = rng.normal(scale=2.0, size=(height, width, num_labels))
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    return (probs / probs.sum(-1, keepdims=True)).astype(np.float32)


# ------------------------------------------------------------------ CRFParams

def test_params_defaults_are_deeplab_v1_largefov():
    params = CRFParams()
    assert (params.bi_w, params.bi_xy_std, params.bi_rgb_std) == (4.0, 121.0, 5.0)
    assert (params.pos_w, params.pos_xy_std, params.num_iter) == (3.0, 3.0, 10)


def test_params_flag_lines_round_trip():
    params = CRFParams(bi_w=45, bi_xy_std=37.5, bi_rgb_std=3, pos_w=15, num_iter=5)
    lines = params.to_flags()
    assert lines[0] == "--crf_bi_w=45.0"
    assert "--crf_num_iter=5" in lines
    assert CRFParams.from_flags(lines + ["--other_flag=1", "# comment"]) == params
    flag_values = {"crf_bi_w": 45.0, "crf_bi_xy_std": 37.5, "crf_bi_rgb_std": 3.0,
                   "crf_pos_w": 15.0, "crf_num_iter": 5, "model_dir": "runs/x"}
    assert CRFParams.from_dict(flag_values) == params


def test_params_scaled_changes_only_position_stds():
    params = CRFParams().scaled(0.5)
    assert params == CRFParams(bi_xy_std=60.5, pos_xy_std=1.5)
    assert CRFParams().for_image_size(100, 250) == params


@pytest.mark.parametrize("field, value", [("bi_w", 0), ("bi_xy_std", -1.0), ("bi_rgb_std", 0.0),
                                          ("pos_w", -3), ("pos_xy_std", float("nan")),
                                          ("num_iter", 0), ("num_iter", 2.5)])
def test_params_must_be_positive(field, value):
    with pytest.raises(ValueError, match=field):
        CRFParams(**{field: value})


# ------------------------------------------------------------------ dense_crf

def test_dense_crf_matches_direct_pydensecrf_call():
    rng = np.random.default_rng(0)
    height, width, num_labels = 24, 31, 4
    image = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    probs = _random_probs(rng, height, width, num_labels)
    # Every parameter distinct, so a weight passed as a std (or the reverse) shows.
    params = CRFParams(bi_w=5, bi_xy_std=20, bi_rgb_std=7, pos_w=6, pos_xy_std=1.5, num_iter=4)

    direct = dcrf.DenseCRF2D(width, height, num_labels)
    unary = -np.log(np.maximum(probs, dense.MIN_PROB)).transpose(2, 0, 1).reshape(num_labels, -1)
    direct.setUnaryEnergy(np.ascontiguousarray(unary, dtype=np.float32))
    direct.addPairwiseGaussian(sxy=1.5, compat=6)
    direct.addPairwiseBilateral(sxy=20, srgb=7, rgbim=image, compat=5)
    expected = np.array(direct.inference(4)).reshape(num_labels, height, width).transpose(1, 2, 0)

    probs_out, labels = dense_crf(image, probs, params)
    assert probs_out.shape == (height, width, num_labels) and probs_out.dtype == np.float32
    assert labels.shape == (height, width) and labels.dtype == np.int32
    np.testing.assert_allclose(probs_out, expected, atol=1e-5)
    np.testing.assert_array_equal(labels, expected.argmax(-1))
    np.testing.assert_allclose(probs_out.sum(-1), 1.0, atol=1e-4)
    # The CRF really did something: it is not the input argmax everywhere.
    assert (labels != probs.argmax(-1)).any()


def _isolated_pixel(height=9, width=9, p=0.7):
    """Label 0 with probability p everywhere but the centre, which has label 1 with p."""
    probs = np.empty((height, width, 2), np.float32)
    probs[...] = (p, 1 - p)
    probs[height // 2, width // 2] = (1 - p, p)
    return np.zeros((height, width, 3), np.uint8), probs


def test_dense_crf_with_zero_weights_returns_the_input():
    # Pairwise weights ~0: the mean-field update is softmax(-unary) = softmax(log p) = p,
    # whatever the stds. Large stds make a std passed as a weight obvious.
    image, probs = _isolated_pixel()
    params = CRFParams(bi_w=1e-6, bi_xy_std=50.0, bi_rgb_std=50.0, pos_w=1e-6,
                       pos_xy_std=50.0, num_iter=5)
    probs_out, labels = dense_crf(image, probs, params)
    np.testing.assert_allclose(probs_out, probs, atol=1e-4)
    assert labels[4, 4] == 1 and labels.sum() == 1


def test_dense_crf_gaussian_kernel_smooths_an_isolated_pixel():
    # Gaussian weight 0 -> the centre keeps its own label; weight 3 over a std of
    # 3 px -> its 8 neighbours (all label 0 at p = 0.7) outvote its own unary
    # log(0.7 / 0.3) = 0.85, so it flips to 0. The bilateral kernel is off (~0).
    image, probs = _isolated_pixel()
    off = CRFParams(bi_w=1e-6, pos_w=1e-6, pos_xy_std=3.0, num_iter=5)
    on = dataclasses.replace(off, pos_w=3.0)
    _, labels_off = dense_crf(image, probs, off)
    probs_on, labels_on = dense_crf(image, probs, on)
    assert labels_off[4, 4] == 1
    np.testing.assert_array_equal(labels_on, 0)
    # Every pixel ends surer of label 0 than any input pixel was (0.7).
    assert (probs_on[..., 0] > 0.7).all()


def test_dense_crf_accepts_non_contiguous_inputs():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, size=(20, 16, 3), dtype=np.uint8)
    probs = _random_probs(rng, 16, 20, 3)
    # Transposed views are not C-contiguous.
    out_view, labels_view = dense_crf(image.transpose(1, 0, 2), probs.astype(np.float64))
    out_copy, labels_copy = dense_crf(image.transpose(1, 0, 2).copy(), probs)
    np.testing.assert_allclose(out_view, out_copy, atol=1e-5)
    np.testing.assert_array_equal(labels_view, labels_copy)


def test_dense_crf_snaps_blurry_boundary_onto_colour_edge():
    height, width, edge, offset = 12, 48, 24, 5
    image = np.zeros((height, width, 3), dtype=np.uint8)
    image[:, :edge] = (200, 40, 40)
    image[:, edge:] = (40, 40, 200)
    # Label 1's probability rises smoothly and crosses 1/2 at edge + offset.
    x = np.arange(width) + 0.5
    p1 = 1.0 / (1.0 + np.exp(-(x - (edge + offset)) / 4.0))
    probs = np.stack([1.0 - p1, p1], axis=-1)[None].repeat(height, axis=0)
    before = probs.argmax(-1)
    assert (before[:, edge:edge + offset] == 0).all()  # the unaries alone miss the edge

    _, labels = dense_crf(image, probs, CRFParams(bi_xy_std=30.0, bi_rgb_std=10.0))
    expected = np.zeros((height, width), dtype=np.int32)
    expected[:, edge:] = 1
    np.testing.assert_array_equal(labels, expected)


def _image_and_probs(height=6, width=5, num_labels=3):
    image = np.zeros((height, width, 3), dtype=np.uint8)
    probs = np.full((height, width, num_labels), 1.0 / num_labels, dtype=np.float32)
    return image, probs


@pytest.mark.parametrize("make, message", [
    (lambda im, p: (im.astype(np.float32), p), "uint8"),
    (lambda im, p: (im.tolist(), p), "uint8"),
    (lambda im, p: (im[..., :1], p), r"\(H, W, 3\)"),
    (lambda im, p: (im[..., 0], p), r"\(H, W, 3\)"),
    (lambda im, p: (im, p[..., 0]), r"\(H, W, C\)"),
    (lambda im, p: (im, (p * 3).astype(np.int32)), "float"),
    (lambda im, p: (im, p[:5]), "height/width"),
    (lambda im, p: (im, p * 2), "sum to 1"),
    (lambda im, p: (im, np.log(p)), "non-negative"),
    (lambda im, p: (im, np.full_like(p, np.nan)), "NaN"),
])
def test_dense_crf_input_validation(make, message):
    image, probs = make(*_image_and_probs())
    with pytest.raises(ValueError, match=message):
        dense_crf(image, probs)


def test_dense_crf_tolerates_rounding_in_probabilities():
    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, size=(6, 5, 3), dtype=np.uint8)
    probs = _random_probs(rng, 6, 5, 3)
    # Off by 5e-4 (within SUM_TOLERANCE): accepted, and -log of the scaled
    # probabilities shifts every unary of a pixel equally, so nothing changes.
    rounded, labels_rounded = dense_crf(image, probs * (1 + 5e-4))
    exact, labels_exact = dense_crf(image, probs)
    np.testing.assert_allclose(rounded, exact, atol=1e-5)
    np.testing.assert_array_equal(labels_rounded, labels_exact)


def test_dense_crf_rejects_params_of_wrong_type():
    image, probs = _image_and_probs()
    with pytest.raises(TypeError, match="CRFParams"):
        dense_crf(image, probs, {"bi_w": 4.0})
