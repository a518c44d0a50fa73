"""Tests for kseg/em/estep.py: hand-worked tiny cases and properties on random inputs."""

import numpy as np
import pytest
import tensorflow as tf

from kseg.constants import IGNORE_LABEL
from kseg.em import estep

SEEDS = [0, 1, 2, 3]


def _pixels(rows):
    """Scores written pixel by pixel, [[[s_0, ..., s_C-1], ...], ...] -> (1, h, w, C)."""
    return tf.constant([rows], tf.float32)


def _random_case(seed, batch=3, height=7, width=6, num_labels=5, scale=3.0):
    """Random scores (B, h, w, C), image labels (B, C) with background present,
    and a valid mask (B, h, w) whose padding is a bottom/right band per image."""
    rng = np.random.default_rng(seed)
    scores = (rng.normal(size=(batch, height, width, num_labels)) * scale).astype(np.float32)
    labels = (rng.random((batch, num_labels)) < 0.4).astype(np.int32)
    labels[:, 0] = 1
    valid = np.zeros((batch, height, width), bool)
    for b in range(batch):
        valid[b, : rng.integers(2, height + 1), : rng.integers(2, width + 1)] = True
    return scores, labels, valid


def _em_adapt_reference(scores, labels, valid, order, fg_portion, bg_portion, margin):
    """Per-image loop transcription of docs/method.md, in float32.

    order: (T*P, B) label visited at each slot."""
    out = np.full(valid.shape, IGNORE_LABEL, np.int32)
    for b in range(scores.shape[0]):
        f = scores[b].astype(np.float32).copy()  # (h, w, C)
        present = labels[b] > 0
        vmask = valid[b]
        num_valid = int(vmask.sum())
        pmin = np.where(present, f, np.inf).min(axis=-1)
        ceiling = (pmin - np.float32(margin))[..., None]
        f = np.where(present, f, np.minimum(f, ceiling)).astype(np.float32)
        m = np.where(present, f, -np.inf).max(axis=-1).astype(np.float32)
        for label in order[:, b]:
            if not present[label] or num_valid == 0:
                continue
            rho = np.float32(bg_portion if label == 0 else fg_portion)
            k = min(int(np.floor(rho * np.float32(num_valid))), num_valid - 1)
            delta = np.sort((m - f[..., label])[vmask])[k]
            f[..., label] += delta
            m = np.maximum(m, f[..., label])
        f = np.where(present, f, -np.inf)
        out[b] = np.where(vmask, f.argmax(axis=-1), IGNORE_LABEL)
    return out


# ----------------------------------------------------------------------------
# Hand-worked cases.


def test_em_fixed_hand_case_absent_label_can_win():
    # Labels: 0 background (present), 1 present, 2 absent -> biases [3, 5, 0].
    scores = _pixels([
        [[0.0, -1.0, 0.0], [2.0, -1.0, 0.0]],  # [3, 4, 0] -> 1;  [5, 4, 0] -> 0
        [[0.0, 0.0, 6.0], [0.0, 0.0, 0.0]],    # [3, 5, 6] -> 2 (absent wins); [3, 5, 0] -> 1
    ])
    labels = estep.em_fixed(scores, tf.constant([[1, 1, 0]]))
    np.testing.assert_array_equal(labels.numpy(), [[[1, 0], [2, 1]]])
    assert labels.dtype == tf.int32


def test_em_fixed_no_background_bias_when_background_absent():
    # z = [0, 1, 0] -> biases [0, 5, 0]: [4, 0, 0] -> [4, 5, 0] -> 1.
    # With background present it would be [7, 5, 0] -> 0.
    scores = _pixels([[[4.0, 0.0, 0.0]]])
    assert estep.em_fixed(scores, tf.constant([[0, 1, 0]])).numpy()[0, 0, 0] == 1
    assert estep.em_fixed(scores, tf.constant([[1, 1, 0]])).numpy()[0, 0, 0] == 0


def test_em_adapt_hand_case_bias_flips_pixels():
    # C = 3, z = [1, 1, 0]; one pass; bg_portion 0.25, fg_portion 0.5, M = 4.
    # f0 = [4, 3, 2, 1], f1 = 0 everywhere, f2 (absent) = [10, -5, 10, 10].
    # 1. Suppress f2 to min(f0, f1) - margin = -1e-5 where higher:
    #    f2 = [-1e-5, -5, -1e-5, -1e-5].
    # 2. m = max(f0, f1) = [4, 3, 2, 1].
    # 3. Background: d = 0 everywhere, k = floor(0.25 * 4) = 1 -> delta 0.
    #    Label 1: d = m - f1 = [4, 3, 2, 1], k = floor(0.5 * 4) = 2,
    #    sorted d = [1, 2, 3, 4] -> delta = 3, f1 = 3.
    # 4. argmax: [4 vs 3 -> 0, 3 vs 3 tie -> 0, 2 vs 3 -> 1, 1 vs 3 -> 1].
    # Plain argmax would be 0 everywhere, and EM-Fixed would give f2 pixels.
    scores = _pixels([
        [[4.0, 0.0, 10.0], [3.0, 0.0, -5.0]],
        [[2.0, 0.0, 10.0], [1.0, 0.0, 10.0]],
    ])
    labels, mean_bias = estep.em_adapt(
        scores, tf.constant([[1, 1, 0]]), fg_portion=0.5, bg_portion=0.25,
        num_iter=1, seed=0, return_bias=True)
    np.testing.assert_array_equal(labels.numpy(), [[[0, 0], [1, 1]]])
    assert mean_bias.numpy() == pytest.approx(3.0)


def test_em_adapt_hand_case_background_bias():
    # C = 2, z = [1, 1]; one pass; bg_portion 0.5, fg_portion 0.25, M = 4.
    # f0 = 0, f1 = [4, 3, 2, 1]; m = [4, 3, 2, 1].
    # Background: d = [4, 3, 2, 1], k = 2 -> delta = 3, f0 = 3, m = [4, 3, 3, 3].
    # Label 1: d = m - f1 = [0, 0, 1, 2], k = floor(0.25 * 4) = 1 -> delta = 0.
    # argmax: [3 vs 4 -> 1, 3 vs 3 tie -> 0, 3 vs 2 -> 0, 3 vs 1 -> 0].
    scores = _pixels([
        [[0.0, 4.0], [0.0, 3.0]],
        [[0.0, 2.0], [0.0, 1.0]],
    ])
    labels, mean_bias = estep.em_adapt(
        scores, tf.constant([[1, 1]]), fg_portion=0.25, bg_portion=0.5,
        num_iter=1, seed=0, return_bias=True)
    np.testing.assert_array_equal(labels.numpy(), [[[1, 0], [0, 0]]])
    assert mean_bias.numpy() == pytest.approx(0.0)


def test_em_adapt_padding_excluded_from_percentile():
    # Same scores as the first hand case plus a padded column whose scores
    # would change the sorted d if they counted. Valid M = 4 -> same result.
    scores = _pixels([
        [[4.0, 0.0, 10.0], [3.0, 0.0, -5.0], [100.0, -100.0, 0.0]],
        [[2.0, 0.0, 10.0], [1.0, 0.0, 10.0], [100.0, -100.0, 0.0]],
    ])
    valid = tf.constant([[[True, True, False], [True, True, False]]])
    labels = estep.em_adapt(scores, tf.constant([[1, 1, 0]]), valid=valid,
                            fg_portion=0.5, bg_portion=0.25, num_iter=1, seed=0)
    np.testing.assert_array_equal(labels.numpy(), [[[0, 0, 255], [1, 1, 255]]])


def test_em_adapt_all_padding_image():
    scores = tf.random.stateless_normal([2, 3, 3, 4], seed=[1, 2])
    valid = tf.constant([np.zeros((3, 3), bool), np.ones((3, 3), bool)])
    labels, mean_bias = estep.em_adapt(scores, tf.constant([[1, 1, 0, 1], [1, 0, 1, 0]]),
                                       valid=valid, seed=0, return_bias=True)
    assert np.all(labels.numpy()[0] == IGNORE_LABEL)
    assert np.all(labels.numpy()[1] != IGNORE_LABEL)
    assert np.isfinite(mean_bias.numpy())


def test_bbox_rect_smallest_area_wins_and_half_open():
    # 4 x 5 grid. A = [0, 0, 3, 3] class 1 (area 9): rows 0-2, cols 0-2.
    # B = [1, 1, 2, 4] class 2 (area 3): row 1, cols 1-3. Overlap -> B.
    expected = [
        [1, 1, 1, 0, 0],
        [1, 2, 2, 2, 0],
        [1, 1, 1, 0, 0],
        [0, 0, 0, 0, 0],
    ]
    boxes = tf.constant([[0, 0, 3, 3], [1, 1, 2, 4]], tf.float32)
    got = estep.bbox_rect(boxes, tf.constant([1, 2]), 4, 5)
    np.testing.assert_array_equal(got.numpy(), expected)
    # Order of the boxes does not matter.
    got = estep.bbox_rect(tf.reverse(boxes, [0]), tf.constant([2, 1]), 4, 5)
    np.testing.assert_array_equal(got.numpy(), expected)
    assert got.dtype == tf.int32


def test_bbox_rect_fractional_coordinates():
    # [0.5, 0.5, 2.0, 1.5]: rows y with 0.5 <= y < 2 -> {1}; cols 0.5 <= x < 1.5 -> {1}.
    got = estep.bbox_rect(tf.constant([[0.5, 0.5, 2.0, 1.5]]), tf.constant([3]), 3, 3)
    np.testing.assert_array_equal(got.numpy(), [[0, 0, 0], [0, 3, 0], [0, 0, 0]])


def test_bbox_rect_no_boxes():
    got = estep.bbox_rect(tf.zeros([0, 4]), tf.zeros([0], tf.int32), 2, 3)
    np.testing.assert_array_equal(got.numpy(), np.zeros((2, 3)))


def test_box_mask_hand_case():
    # 3 x 4 grid, C = 4. Class 1: [0, 0, 2, 2] and [1, 2, 3, 4]; class 2: [0, 1, 1, 3];
    # a box of class 0 must not set channel 0.
    boxes = tf.constant([[0, 0, 2, 2], [1, 2, 3, 4], [0, 1, 1, 3], [0, 0, 3, 4]], tf.float32)
    mask = estep.box_mask(boxes, tf.constant([1, 1, 2, 0]), 4, 3, 4).numpy()
    assert mask.shape == (3, 4, 4) and mask.dtype == bool
    np.testing.assert_array_equal(mask[..., 1], [[1, 1, 0, 0], [1, 1, 1, 1], [0, 0, 1, 1]])
    np.testing.assert_array_equal(mask[..., 2], [[0, 1, 1, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
    assert not mask[..., 0].any() and not mask[..., 3].any()
    empty = estep.box_mask(tf.zeros([0, 4]), tf.zeros([0], tf.int32), 4, 3, 4)
    assert not empty.numpy().any()


def test_bbox_em_fixed_hand_case_both_modes():
    # C = 3, biases bg 3 everywhere, fg 5 inside own boxes.
    # (0,0) in box of 1: [0, -1, 10] -> [3, 4, 10]; hard: 2 not allowed -> 1; soft -> 2.
    # (0,1) in box of 2: [0, 0, -1]  -> [3, 0, 4];  both -> 2.
    # (1,0) in box of 1: [5, 0, -3]  -> [8, 5, -3]; both -> 0 (background may win in a box).
    # (1,1) in no box:   [0, 5, 0]   -> [3, 5, 0];  hard -> 0; soft -> 1.
    scores = _pixels([
        [[0.0, -1.0, 10.0], [0.0, 0.0, -1.0]],
        [[5.0, 0.0, -3.0], [0.0, 5.0, 0.0]],
    ])
    mask = tf.constant([[
        [[False, True, False], [False, False, True]],
        [[False, True, False], [False, False, False]],
    ]])
    hard = estep.bbox_em_fixed(scores, mask)
    soft = estep.bbox_em_fixed(scores, mask, outside="soft")
    np.testing.assert_array_equal(hard.numpy(), [[[1, 2], [0, 0]]])
    np.testing.assert_array_equal(soft.numpy(), [[[2, 2], [0, 1]]])


def test_bbox_em_fixed_rejects_unknown_mode():
    with pytest.raises(ValueError, match="outside"):
        estep.bbox_em_fixed(tf.zeros([1, 1, 1, 2]), tf.zeros([1, 1, 1, 2], tf.bool),
                            outside="hard")


def test_strong_marks_padding_and_keeps_ignore():
    labels = tf.constant([[[1, 255], [3, 0]]], tf.uint8)
    valid = tf.constant([[[True, True], [False, True]]])
    np.testing.assert_array_equal(estep.strong(labels, valid).numpy(), [[[1, 255], [255, 0]]])
    np.testing.assert_array_equal(estep.strong(labels).numpy(), [[[1, 255], [3, 0]]])
    assert estep.strong(labels).dtype == tf.int32


def test_estep_stats_hand_case():
    # Labelled pixels: 0, 0, 4 (the 255 and the padded pixel do not count).
    labels = tf.constant([[[0, 0], [4, 255]], [[7, 7], [7, 7]]])
    valid = tf.constant([[[True, True], [True, True]], [[False, False], [False, False]]])
    stats = estep.estep_stats(labels, valid)
    assert stats["bg_fraction"].numpy() == pytest.approx(2 / 3)
    assert stats["fg_fraction"].numpy() == pytest.approx(1 / 3)
    assert stats["bg_fraction"].dtype == tf.float32
    empty = estep.estep_stats(labels, tf.zeros_like(valid))
    assert empty["bg_fraction"].numpy() == 0.0 and empty["fg_fraction"].numpy() == 0.0


# ----------------------------------------------------------------------------
# Properties on random inputs.


@pytest.mark.parametrize("seed", SEEDS)
def test_em_adapt_matches_per_image_reference(seed):
    scores, labels, valid = _random_case(seed)
    got = estep.em_adapt(scores, labels, valid=valid, seed=seed).numpy()
    order = estep._visiting_order(tf.constant(labels > 0), 5, seed).numpy()
    want = _em_adapt_reference(scores, labels, valid, order, 0.2, 0.4, 1e-5)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("seed", SEEDS)
def test_em_adapt_with_one_foreground_label_matches_reference_in_its_only_order(seed):
    # Background and one foreground label per image: every pass visits 0 then
    # that label, so the reference's order is written here, not taken from
    # estep._visiting_order.
    scores, labels, valid = _random_case(seed)
    labels[:] = 0
    labels[:, 0] = 1
    fg = np.arange(labels.shape[0]) % (labels.shape[1] - 1) + 1  # (B,)
    labels[np.arange(labels.shape[0]), fg] = 1
    order = np.tile(np.stack([np.zeros_like(fg), fg]), (5, 1))  # (5 * 2, B)
    got = estep.em_adapt(scores, labels, valid=valid, seed=seed).numpy()
    np.testing.assert_array_equal(
        got, _em_adapt_reference(scores, labels, valid, order, 0.2, 0.4, 1e-5))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("margin", [0.0, 1e-5])
def test_em_adapt_never_assigns_absent_label(seed, margin):
    scores, labels, valid = _random_case(seed, scale=1e4)
    labels[0, 0] = 0  # background absent in one image
    got = estep.em_adapt(scores, labels, valid=valid, margin=margin).numpy()
    for b in range(got.shape[0]):
        assigned = np.unique(got[b][valid[b]])
        assert all(labels[b, l] for l in assigned), (b, assigned, labels[b])


@pytest.mark.parametrize("seed", SEEDS)
def test_em_adapt_single_foreground_gets_its_portion(seed):
    # Background plus one foreground label: foreground is visited last in the
    # final pass, so it keeps at least floor(fg_portion * M) valid pixels
    # (the visit guarantees k + 1 pixels; one may be lost to a tie with 0).
    scores, _, valid = _random_case(seed, batch=4)
    scores[..., 2] -= 20.0  # label 2 far behind: it would win nothing unaided
    labels = np.zeros((4, 5), np.int32)
    labels[:, 0] = 1
    labels[:, 2] = 1
    for fg_portion in (0.2, 0.5):
        got = estep.em_adapt(scores, labels, valid=valid, fg_portion=fg_portion).numpy()
        for b in range(4):
            num_valid = valid[b].sum()
            assert (got[b][valid[b]] == 2).sum() >= np.floor(fg_portion * num_valid)


@pytest.mark.parametrize("seed", SEEDS)
def test_em_adapt_single_present_label_takes_everything(seed):
    # Only background present: every valid pixel is background. Only one
    # foreground label present (no background): every valid pixel is that label.
    scores, _, valid = _random_case(seed)
    only_bg = np.zeros((3, 5), np.int32)
    only_bg[:, 0] = 1
    got = estep.em_adapt(scores, only_bg, valid=valid).numpy()
    assert np.all(got[valid] == 0)
    only_fg = np.zeros((3, 5), np.int32)
    only_fg[:, 3] = 1
    got = estep.em_adapt(scores, only_fg, valid=valid).numpy()
    assert np.all(got[valid] == 3)


@pytest.mark.parametrize("seed", SEEDS)
def test_padding_is_ignored_and_does_not_change_valid_pixels(seed):
    scores, labels, _ = _random_case(seed)
    batch, height, width, num_labels = scores.shape
    rng = np.random.default_rng(100 + seed)
    padded = (rng.normal(size=(batch, height + 3, width + 2, num_labels)) * 50).astype(np.float32)
    padded[:, :height, :width] = scores
    valid = np.zeros(padded.shape[:3], bool)
    valid[:, :height, :width] = True
    boxes = rng.random((batch, height, width, num_labels)) < 0.3
    boxes_padded = rng.random(padded.shape) < 0.3
    boxes_padded[:, :height, :width] = boxes
    pairs = [
        (estep.em_fixed(scores, labels), estep.em_fixed(padded, labels, valid)),
        (estep.em_adapt(scores, labels, seed=seed),
         estep.em_adapt(padded, labels, valid, seed=seed)),
        (estep.bbox_em_fixed(scores, boxes), estep.bbox_em_fixed(padded, boxes_padded, valid)),
        (estep.bbox_em_fixed(scores, boxes, outside="soft"),
         estep.bbox_em_fixed(padded, boxes_padded, valid, outside="soft")),
    ]
    for unpadded_out, padded_out in pairs:
        padded_out = padded_out.numpy()
        assert np.all(padded_out[~valid] == IGNORE_LABEL)
        np.testing.assert_array_equal(padded_out[:, :height, :width], unpadded_out.numpy())


@pytest.mark.parametrize("seed", SEEDS)
def test_em_fixed_is_argmax_of_biased_scores(seed):
    scores, labels, valid = _random_case(seed)
    labels[1, 0] = 0
    got = estep.em_fixed(scores, labels, valid, fg_bias=6.0, bg_bias=5.0).numpy()
    bias = labels * np.array([5.0] + [6.0] * 4, np.float32)
    want = np.where(valid, (scores + bias[:, None, None, :]).argmax(-1), IGNORE_LABEL)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("seed", SEEDS)
def test_bbox_em_fixed_hard_never_outside_boxes(seed):
    rng = np.random.default_rng(seed)
    scores = (rng.normal(size=(3, 9, 8, 4)) * 10).astype(np.float32)
    masks = []
    for num_boxes in (0, 1, 3):  # one image per box count
        corner = rng.uniform(0, 6, (num_boxes, 2))
        size = rng.uniform(1, 4, (num_boxes, 2))
        boxes = np.concatenate([corner, corner + size], axis=1).astype(np.float32)
        masks.append(estep.box_mask(boxes, rng.integers(1, 4, num_boxes), 4, 9, 8).numpy())
    mask = np.stack(masks)  # (3, 9, 8, 4)
    got = estep.bbox_em_fixed(scores, mask).numpy()
    fg = got > 0
    b, y, x = np.nonzero(fg)
    assert mask[b, y, x, got[fg]].all()
    assert np.all(got[~mask[..., 1:].any(-1)] == 0)


def test_em_adapt_int_seed_is_deterministic():
    scores, labels, valid = _random_case(7, num_labels=8)
    labels[:] = 1  # many present labels: the visiting order matters
    first = estep.em_adapt(scores, labels, valid, seed=11)
    second = estep.em_adapt(scores, labels, valid, seed=11)
    np.testing.assert_array_equal(first.numpy(), second.numpy())
    traced = tf.function(lambda s, z, v: estep.em_adapt(s, z, v, seed=11))
    np.testing.assert_array_equal(traced(scores, labels, valid).numpy(), first.numpy())


def test_outputs_carry_no_gradient():
    scores = tf.Variable(tf.random.stateless_normal([1, 3, 3, 3], seed=[0, 1]))
    with tf.GradientTape() as tape:
        _, mean_bias = estep.em_adapt(scores, tf.constant([[1, 1, 1]]), seed=0,
                                      return_bias=True)
    assert tape.gradient(mean_bias, scores) is None


def test_all_functions_trace_with_unknown_dimensions():
    score_spec = tf.TensorSpec([None, None, None, 4], tf.float32)
    label_spec = tf.TensorSpec([None, 4], tf.int32)
    valid_spec = tf.TensorSpec([None, None, None], tf.bool)
    mask_spec = tf.TensorSpec([None, None, None, 4], tf.bool)

    @tf.function(input_signature=[score_spec, label_spec, valid_spec])
    def image_level(scores, labels, valid):
        adapt, mean_bias = estep.em_adapt(scores, labels, valid, return_bias=True)
        seeded = estep.em_adapt(scores, labels, valid, seed=3)
        fixed = estep.em_fixed(scores, labels, valid)
        return adapt, seeded, fixed, mean_bias, estep.estep_stats(adapt, valid)

    @tf.function(input_signature=[score_spec, mask_spec, valid_spec])
    def box_level(scores, mask, valid):
        return (estep.bbox_em_fixed(scores, mask, valid),
                estep.bbox_em_fixed(scores, mask, valid, outside="soft"),
                estep.strong(tf.argmax(scores, -1), valid))

    @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32),
                                  tf.TensorSpec([None], tf.int32),
                                  tf.TensorSpec([], tf.int32), tf.TensorSpec([], tf.int32)])
    def rasterise(boxes, classes, height, width):
        return (estep.bbox_rect(boxes, classes, height, width),
                estep.box_mask(boxes, classes, 4, height, width))

    for batch, height, width in [(1, 3, 5), (4, 6, 2)]:
        scores, labels, valid = _random_case(batch, batch, height, width, 4)
        adapt, seeded, fixed, mean_bias, stats = image_level(scores, labels, valid)
        assert adapt.shape == seeded.shape == fixed.shape == (batch, height, width)
        assert mean_bias.shape == () and stats["bg_fraction"].shape == ()
        mask = np.random.default_rng(batch).random((batch, height, width, 4)) < 0.5
        for out in box_level(scores, mask, valid):
            assert out.shape == (batch, height, width) and out.dtype == tf.int32
    for num_boxes in (0, 2):
        boxes = tf.constant([[0, 0, 2, 2], [1, 1, 3, 3]][:num_boxes], tf.float32)
        boxes = tf.reshape(boxes, [num_boxes, 4])
        rect, mask = rasterise(boxes, tf.constant([1, 2][:num_boxes], tf.int32), 4, 3)
        assert rect.shape == (4, 3) and mask.shape == (4, 3, 4)


def test_visiting_order_background_first_then_fresh_permutation_each_pass():
    present = tf.ones([4, 8], tf.bool)
    order = estep._visiting_order(present, 5, seed=2).numpy()  # (5 * 8, 4)
    passes = order.reshape(5, 8, 4)  # (pass, slot, image)
    assert np.all(passes[:, 0, :] == 0)
    np.testing.assert_array_equal(np.sort(passes[:, 1:, :], axis=1),
                                  np.broadcast_to(np.arange(1, 8)[None, :, None], (5, 7, 4)))
    assert any(not np.array_equal(passes[0, :, b], passes[p, :, b])
               for p in range(1, 5) for b in range(4))
    assert not all(np.array_equal(passes[0, :, 0], passes[0, :, b]) for b in range(1, 4))


def test_em_adapt_traces_with_a_static_batch_of_one():
    """A replica may get a single image: static batch 1 must trace."""
    fn = tf.function(lambda s, l: estep.em_adapt(s, l, seed=1),
                     input_signature=[tf.TensorSpec([1, 5, 5, 6]), tf.TensorSpec([1, 6])])
    labels = fn(tf.random.normal([1, 5, 5, 6]), tf.constant([[1, 0, 1, 0, 0, 0]], tf.float32))
    assert labels.shape == (1, 5, 5)
    assert set(np.unique(labels.numpy())) <= {0, 2}
