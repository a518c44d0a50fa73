"""Tests for kseg/crf/tf_dense.py: the dense CRF in TensorFlow against pydensecrf."""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from kseg.crf import dense as crf
from kseg.crf import tf_dense as crf_tf
from kseg.crf.bbox_seg import BBOX_SEG_CRF_PARAMS
from kseg.crf.dense import CRFParams
from kseg.data.embedded import render_example

# Observed: labels agree on every pixel and marginals within 6e-5 (float
# summation order); the bounds leave room for other CPUs and TensorFlow builds.
MIN_LABEL_AGREEMENT = 0.99
MAX_MARGINAL_DIFF = 1e-3

# Distinct values everywhere, so a swapped pair of parameters shows.
DISTINCT = CRFParams(bi_w=7.0, bi_xy_std=13.0, bi_rgb_std=9.0, pos_w=2.5, pos_xy_std=1.7,
                     num_iter=10)
WEAK_POSITION = CRFParams(bi_w=1.5, bi_xy_std=30.0, bi_rgb_std=11.0, pos_w=0.01,
                          pos_xy_std=1.5, num_iter=8)
STRONG_POSITION = CRFParams(bi_w=0.5, bi_xy_std=10.0, bi_rgb_std=13.0, pos_w=20.0,
                            pos_xy_std=4.0, num_iter=5)


def _random_probs(rng, height, width, num_labels, cell=1):
    """Softmax of random logits, constant on cell x cell blocks."""
    coarse = rng.normal(scale=2.0, size=(-(-height // cell), -(-width // cell), num_labels))
    logits = coarse.repeat(cell, 0).repeat(cell, 1)[:height, :width]
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    return (probs / probs.sum(-1, keepdims=True)).astype(np.float32)


def _random_case(seed, height=24, width=31, num_labels=4):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    return image, _random_probs(rng, height, width, num_labels)


def _embedded_case(seed, size=64):
    image = render_example(np.random.default_rng(seed), size)[0]
    probs = _random_probs(np.random.default_rng(100 + seed), size, size, 6, cell=8)
    return image, probs


def _agreement(image, probs, params):
    """(fraction of equal labels, max |marginal difference|) of TF vs pydensecrf."""
    expected, expected_labels = crf.dense_crf(image, probs, params)
    marginals, labels = crf_tf.dense_crf(image[None], probs[None], params)
    return ((labels.numpy()[0] == expected_labels).mean(),
            np.abs(marginals.numpy()[0] - expected).max())


# ------------------------------------------------------------------ agreement

@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("params", [DISTINCT, WEAK_POSITION, STRONG_POSITION],
                         ids=["distinct", "weak_position", "strong_position"])
def test_matches_pydensecrf_on_random_images(seed, params):
    image, probs = _random_case(seed)
    agreement, diff = _agreement(image, probs, params)
    assert agreement >= MIN_LABEL_AGREEMENT and diff <= MAX_MARGINAL_DIFF, (agreement, diff)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("params", [CRFParams().for_image_size(64, 64),
                                    BBOX_SEG_CRF_PARAMS.for_image_size(64, 64), DISTINCT],
                         ids=["deeplab", "bbox_seg", "distinct"])
def test_matches_pydensecrf_on_embedded_images(seed, params):
    image, probs = _embedded_case(seed)
    agreement, diff = _agreement(image, probs, params)
    assert agreement >= MIN_LABEL_AGREEMENT and diff <= MAX_MARGINAL_DIFF, (agreement, diff)


def test_matches_pydensecrf_with_many_labels():
    # 40 labels: the sparse products go in column groups of at most 31.
    image, probs = _random_case(2, 12, 20, num_labels=40)
    agreement, diff = _agreement(image, probs, DISTINCT)
    assert agreement >= MIN_LABEL_AGREEMENT and diff <= MAX_MARGINAL_DIFF, (agreement, diff)


def test_agrees_when_pixel_count_is_not_a_multiple_of_4():
    # pydensecrf's SSE lattice also inserts the vertices of 1-3 padding
    # points at the feature origin (module docstring); the TF lattice does
    # not, so dark pixels near the top-left corner differ slightly.
    image, probs = _random_case(0, 23, 31)
    expected, expected_labels = crf.dense_crf(image, probs, WEAK_POSITION)
    marginals, labels = crf_tf.dense_crf(image[None], probs[None], WEAK_POSITION)
    diff = np.abs(marginals.numpy()[0] - expected).max(-1)  # (H, W)
    assert (labels.numpy()[0] == expected_labels).mean() >= MIN_LABEL_AGREEMENT
    assert diff.max() <= 2e-2
    assert (diff > MAX_MARGINAL_DIFF).mean() < 0.01  # a few pixels only


@pytest.mark.parametrize("swap", [("pos_w", "pos_xy_std"), ("bi_w", "bi_rgb_std"),
                                  ("bi_xy_std", "pos_xy_std"), ("bi_w", "pos_w")])
def test_agreement_would_catch_swapped_parameters(swap):
    image, probs = _embedded_case(0)
    expected, _ = crf.dense_crf(image, probs, DISTINCT)
    a, b = swap
    values = DISTINCT.as_dict()
    values[a], values[b] = values[b], values[a]
    marginals, _ = crf_tf.dense_crf(image[None], probs[None], CRFParams(**values))
    assert np.abs(marginals.numpy()[0] - expected).max() > 20 * MAX_MARGINAL_DIFF


def test_crf_changes_the_unary_labels():
    image, probs = _embedded_case(1)
    _, labels = crf_tf.dense_crf(image[None], probs[None], CRFParams().for_image_size(64, 64))
    assert (labels.numpy()[0] != probs.argmax(-1)).mean() > 0.01


# ------------------------------------------------------------------ batches, tracing

def test_batch_is_filtered_image_by_image():
    cases = [_random_case(seed, 17, 19) for seed in (3, 4)]
    images = np.stack([c[0] for c in cases])
    probs = np.stack([c[1] for c in cases])
    batched, labels = crf_tf.dense_crf(images, probs, DISTINCT)
    for i, (image, p) in enumerate(cases):
        single, _ = crf_tf.dense_crf(image[None], p[None], DISTINCT)
        np.testing.assert_allclose(batched.numpy()[i], single.numpy()[0], atol=1e-5)
    np.testing.assert_array_equal(labels.numpy(), batched.numpy().argmax(-1))


def test_traced_once_for_unknown_sizes_and_deterministic():
    params = dataclasses.replace(DISTINCT, num_iter=3)
    fn = crf_tf.dense_crf_function(params, num_labels=4)
    for height, width in [(9, 14), (16, 11)]:
        image, probs = _random_case(5, height, width)
        marginals, labels = fn(image[None], probs[None])
        assert marginals.shape == (1, height, width, 4) and labels.dtype == tf.int32
        again, _ = fn(image[None], probs[None])
        np.testing.assert_array_equal(marginals.numpy(), again.numpy())
    eager, _ = crf_tf.dense_crf(image[None], probs[None], params)
    # Graph rewrites may round differently from eager execution.
    np.testing.assert_allclose(marginals.numpy(), eager.numpy(), atol=1e-5)
    assert fn.experimental_get_tracing_count() == 1


def test_saved_model_round_trip(tmp_path):
    module = tf.Module()
    module.crf = crf_tf.dense_crf_function(CRFParams(num_iter=1), num_labels=4)
    tf.saved_model.save(module, str(tmp_path))
    loaded = tf.saved_model.load(str(tmp_path))
    image, probs = _random_case(13, 10, 12)
    expected, _ = module.crf(image[None], probs[None])
    marginals, _ = loaded.crf(image[None], probs[None])
    np.testing.assert_array_equal(marginals.numpy(), expected.numpy())


def test_row_blocks_give_the_same_result():
    image, probs = _random_case(6)
    one, _ = crf_tf.dense_crf(image[None], probs[None], DISTINCT, num_blocks=1)
    three, _ = crf_tf.dense_crf(image[None], probs[None], DISTINCT, num_blocks=3)
    np.testing.assert_allclose(one.numpy(), three.numpy(), atol=1e-5)


def test_reference_size_scales_like_for_image_size():
    image, probs = _random_case(7, 20, 25)
    params = CRFParams(bi_xy_std=60.0, pos_xy_std=20.0)
    expected, _ = crf_tf.dense_crf(image[None], probs[None], params.for_image_size(20, 25))
    scaled, _ = crf_tf.dense_crf(image[None], probs[None], params, reference_size=500)
    np.testing.assert_allclose(scaled.numpy(), expected.numpy(), atol=1e-4)


# ------------------------------------------------------------------ lattice

def test_lattice_weights_are_barycentric_and_vertices_distinct():
    rng = np.random.default_rng(8)
    features = rng.normal(scale=3.0, size=(200, 5)).astype(np.float32)
    lattice = crf_tf.build_lattice(features)
    weights = lattice.weights.numpy()
    assert (weights >= -1e-6).all()
    np.testing.assert_allclose(weights.sum(1), 1.0, atol=1e-5)
    ids = lattice.vertex_ids.numpy()
    assert all(len(set(row)) == 6 for row in ids)
    assert ids.min() == 0 and ids.max() == lattice.num_vertices.numpy() - 1


def test_lattice_too_wide_for_int64_codes_is_rejected():
    features = np.array([[0.0] * 5, [1e5] * 5], np.float32)  # stds far too small
    with pytest.raises(tf.errors.InvalidArgumentError, match="too many lattice cells"):
        crf_tf.build_lattice(features)


def test_filter_of_identical_points_is_their_mean():
    # Points with equal features share every vertex, so A is constant, D = 4 A
    # and D^{-1/2} A D^{-1/2} averages.
    features = np.full((4, 2), 0.3, np.float32)
    values = np.array([[1.0], [2.0], [3.0], [6.0]], np.float32)
    out = crf_tf.gaussian_filter(features)(values).numpy()
    np.testing.assert_allclose(out, np.full((4, 1), 3.0), rtol=1e-5)


# ------------------------------------------------------------------ gradients

def test_gradient_wrt_unary_matches_finite_differences():
    rng = np.random.default_rng(9)
    image = rng.integers(0, 256, size=(1, 3, 4, 3), dtype=np.uint8)
    unary = tf.constant(rng.normal(size=(1, 3, 4, 3)).astype(np.float32))
    params = CRFParams(bi_w=2.0, bi_xy_std=3.0, bi_rgb_std=40.0, pos_w=1.5, pos_xy_std=1.0,
                       num_iter=3)
    readout = tf.constant(rng.normal(size=(1, 3, 4, 3)).astype(np.float32))

    @tf.function(autograph=False)
    def loss(u):
        return tf.reduce_sum(crf_tf.mean_field(image, u, params) * readout)

    theoretical, numerical = tf.test.compute_gradient(loss, [unary], delta=1e-2)
    assert np.abs(theoretical[0]).max() > 1e-2  # a real gradient, not zeros
    np.testing.assert_allclose(theoretical[0], numerical[0], atol=2e-3)


def test_gradient_wrt_kernel_weights():
    rng = np.random.default_rng(10)
    image = rng.integers(0, 256, size=(1, 4, 5, 3), dtype=np.uint8)
    unary = tf.constant(rng.normal(size=(1, 4, 5, 3)).astype(np.float32))
    params = CRFParams(bi_xy_std=3.0, bi_rgb_std=40.0, pos_xy_std=1.0, num_iter=2)
    bi_w, pos_w = tf.Variable(2.0), tf.Variable(1.5)

    @tf.function(autograph=False)
    def loss():
        q = crf_tf.mean_field(image, unary, params, bi_w=bi_w, pos_w=pos_w)
        return tf.reduce_sum(q[..., 0] * tf.range(20, dtype=tf.float32)[None, :, None][:, :4])

    with tf.GradientTape() as tape:
        value = loss()
    grads = tape.gradient(value, [bi_w, pos_w])
    for variable, grad in zip([bi_w, pos_w], grads):
        eps = 1e-2
        variable.assign_add(eps)
        up = loss()
        variable.assign_sub(2 * eps)
        down = loss()
        variable.assign_add(eps)
        np.testing.assert_allclose(grad.numpy(), (up - down).numpy() / (2 * eps),
                                   rtol=2e-2, atol=2e-3)


def test_dense_crf_module_trains_its_kernel_weights():
    rng = np.random.default_rng(12)
    image = rng.integers(0, 256, size=(1, 5, 6, 3), dtype=np.uint8)
    unary = tf.constant(rng.normal(size=(1, 5, 6, 3)).astype(np.float32))
    module = crf_tf.DenseCRF(CRFParams(bi_xy_std=3.0, bi_rgb_std=40.0, pos_xy_std=1.0,
                                       num_iter=2))
    with tf.GradientTape() as tape:
        loss = -tf.reduce_sum(module(image, unary)[..., 0])
    grads = tape.gradient(loss, module.trainable_variables)
    assert len(grads) == 2 and all(np.isfinite(g.numpy()) and g.numpy() != 0 for g in grads)


# ------------------------------------------------------------------ bad input

@pytest.fixture(scope="module")
def one_iteration_crf():
    """Traced once: every size unknown until run time."""
    return crf_tf.dense_crf_function(CRFParams(num_iter=1))


def _small_inputs():
    image, probs = _random_case(11, 6, 5, 3)
    return image[None], probs[None]


@pytest.mark.parametrize("make, message", [
    (lambda im, p: (im.astype(np.float32), p), "uint8"),
    (lambda im, p: (im, (p * 3).astype(np.int32)), "float"),
    (lambda im, p: (im[..., :2], p), "3 \\(RGB\\) channels"),
    (lambda im, p: (im[0], p), r"\(B, H, W, 3\)"),
    (lambda im, p: (im, p[:, :4]), "height/width"),
    (lambda im, p: (np.concatenate([im, im]), p), "batch/height/width"),
    (lambda im, p: (im, p[..., :0]), "no label channel"),
])
def test_bad_input_rejected_while_tracing(make, message):
    image, probs = make(*_small_inputs())
    with pytest.raises(ValueError, match=message):
        crf_tf.dense_crf(image, probs)


@pytest.mark.parametrize("make, message", [
    (lambda im, p: (im, p[:, :4]), "height/width"),
    (lambda im, p: (im, np.where(np.arange(3) == 1, np.nan, p).astype(np.float32)), "NaN"),
    (lambda im, p: (im, 2 * p), "sum to 1"),
    (lambda im, p: (im, p - 0.5), "non-negative"),
    (lambda im, p: (im, np.where(np.arange(3) == 0, np.inf, p).astype(np.float32)), "infinity"),
    (lambda im, p: (np.concatenate([im, im]), p), "batch/height/width"),
    (lambda im, p: (im[:, :0], p[:, :0]), "at least one pixel"),
])
def test_bad_input_rejected_at_run_time(make, message, one_iteration_crf):
    image, probs = make(*_small_inputs())
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        one_iteration_crf(image, probs)


def test_nan_unary_rejected_by_mean_field():
    image, probs = _small_inputs()
    unary = np.where(np.arange(3) == 2, np.nan, -np.log(probs)).astype(np.float32)
    with pytest.raises(tf.errors.InvalidArgumentError, match="unary has NaN"):
        crf_tf.mean_field(image, unary, CRFParams(num_iter=1))
    with pytest.raises(ValueError, match="mean_field: unary must be float"):
        crf_tf.mean_field(image, np.zeros(unary.shape, np.int32), CRFParams(num_iter=1))


@pytest.mark.parametrize("kwargs, message", [
    ({"reference_size": 0}, "reference_size must be a positive"),
    ({"reference_size": -500}, "reference_size must be a positive"),
    ({"num_blocks": 0}, "num_blocks must be an integer >= 1"),
    ({"num_blocks": 1.5}, "num_blocks must be an integer >= 1"),
])
def test_bad_arguments_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        crf_tf.dense_crf(*_small_inputs(), CRFParams(num_iter=1), **kwargs)


def test_params_must_be_crf_params():
    with pytest.raises(TypeError, match="CRFParams"):
        crf_tf.dense_crf(*_small_inputs(), {"bi_w": 4.0})


def test_docstring_examples_run():
    import doctest
    result = doctest.testmod(crf_tf)
    assert result.attempted > 0 and result.failed == 0
