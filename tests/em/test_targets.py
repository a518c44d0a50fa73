import numpy as np
import pytest
import tensorflow as tf

from kseg import model
from kseg import constants
from kseg.config import EStepConfig, InputConfig, ModelConfig, OptimConfig
from kseg.data import pipeline, records
from kseg.em import estep, targets
from kseg.training import loop
from kseg.training import trainer as trainer_lib


def _manual_batch(seed=0):
    rng = np.random.default_rng(seed)
    b, h, w, c = 5, 4, 5, 4
    scores = rng.normal(size=(b, h, w, c)).astype(np.float32) * 3
    label = rng.integers(0, c, (b, h, w)).astype(np.int32)
    valid = np.ones((b, h, w), bool)
    valid[:, -1] = False
    box_mask = np.zeros((b, h, w, c), bool)
    box_mask[:, :2, :3, 2] = True
    image_labels = np.array([[1, 0, 1, 1]] * b, np.float32)
    kinds = [constants.KIND_ID[k] for k in
             ("strong", "em_fixed", "em_adapt", "bbox_em_fixed", "bbox_rect")]
    batch = {"kind": tf.constant(kinds), "label": tf.constant(label), "valid": tf.constant(valid),
             "image_labels": tf.constant(image_labels), "box_mask": tf.constant(box_mask)}
    return scores, batch


def test_each_example_gets_the_target_of_its_kind():
    scores, batch = _manual_batch()
    got, stats = targets.compute_targets(tf.constant(scores), batch)
    got = got.numpy()
    valid = batch["valid"].numpy()
    label = np.where(valid, batch["label"].numpy(), 255)
    np.testing.assert_array_equal(got[0], label[0])  # strong: ground truth
    np.testing.assert_array_equal(got[4], label[4])  # bbox_rect: the rasterised boxes in label
    assert set(np.unique(got[2][valid[2]])) <= {0, 2, 3}  # EM-Adapt: never an absent label
    # Bbox-EM-Fixed: foreground only inside the box of label 2.
    assert set(np.unique(got[3][valid[3] & ~batch["box_mask"].numpy()[3, ..., 2]])) == {0}
    assert (got[:, -1] == 255).all()
    # Statistics are over the weak examples' valid pixels only.
    weak = got[1:4][valid[1:4]]
    np.testing.assert_allclose(stats["bg_fraction"], np.mean(weak == 0), atol=1e-6)
    np.testing.assert_allclose(stats["fg_fraction"], np.mean(weak > 0), atol=1e-6)


def test_each_kind_gets_its_target_by_hand():
    # One row of three pixels per example, labels 0..3; the default biases:
    # background +3 when present, foreground +5 (EM-Fixed: when present;
    # Bbox-EM-Fixed: inside its box, other foreground excluded there).
    kinds = [constants.KIND_ID[k] for k in
             ("strong", "em_fixed", "em_adapt", "bbox_em_fixed", "bbox_rect")]
    scores = np.zeros((5, 1, 3, 4), np.float32)
    # EM-Fixed, background and 2 present: (3, 0, 4, 0) -> 2; (3, 0, 2, 0) -> 0; (-1, 0, 5, 0) -> 2.
    scores[1, 0] = [[0, 0, -1, 0], [0, 0, -3, 0], [-4, 0, 0, 0]]
    # EM-Adapt, only 2 present: 2 everywhere, whatever label 1 scores.
    scores[2, 0, :, 1] = 50.0
    # Bbox-EM-Fixed, a box of 3 over pixels 0-1: (3, 3+5-1) -> 3; (3, 3+5-6) -> 0;
    # pixel 2 is outside every box: background although 2 and 3 score 9.
    scores[3, 0] = [[0, 0, 0, -1], [0, 0, 0, -6], [0, 0, 9, 9]]
    label = np.full((5, 1, 3), 255, np.int32)
    label[0, 0], label[4, 0] = [1, 3, 0], [0, 2, 2]
    valid = np.ones((5, 1, 3), bool)
    valid[0, 0, 2] = False
    image_labels = np.zeros((5, 4), np.float32)
    image_labels[1, [0, 2]] = 1
    image_labels[2, 2] = 1
    box_mask = np.zeros((5, 1, 3, 4), bool)
    box_mask[3, 0, :2, 3] = True
    batch = {"kind": tf.constant(kinds), "label": tf.constant(label), "valid": tf.constant(valid),
             "image_labels": tf.constant(image_labels), "box_mask": tf.constant(box_mask)}
    got, _ = targets.compute_targets(tf.constant(scores), batch)
    np.testing.assert_array_equal(got.numpy()[:, 0], [[1, 3, 255], [2, 0, 2], [2, 2, 2],
                                                      [3, 0, 0], [0, 2, 2]])


def test_unused_esteps_do_not_change_strong_targets():
    scores, batch = _manual_batch(1)
    batch["kind"] = tf.zeros([5], tf.int32)
    got, stats = targets.compute_targets(tf.constant(scores), batch)
    np.testing.assert_array_equal(got, np.where(batch["valid"], batch["label"], 255))
    assert float(stats["fg_fraction"]) == 0.0


def test_masked_cross_entropy_ignores_255():
    scores = tf.constant([[[[0.0, 0.0], [5.0, 0.0]]]])  # (1, 1, 2, 2)
    total, count = targets.masked_cross_entropy(scores, tf.constant([[[1, 255]]]))
    np.testing.assert_allclose(total, np.log(2.0), rtol=1e-6)
    assert float(count) == 1.0


@pytest.mark.slow  # traced training steps
def test_training_steps_on_a_mixed_batch(tiny_records):
    """Strong + image-label + box examples in one batch train in one traced step,
    and each example's target is the one of its kind."""
    pattern = records.split_pattern(tiny_records, "train")
    streams = [pipeline.Stream(pattern, "strong", 2), pipeline.Stream(pattern, "em_adapt", 2),
               pipeline.Stream(pattern, "bbox_em_fixed", 2)]
    ds = pipeline.train_dataset(streams, InputConfig(num_classes=6, crop_size=41, seed=0))
    net = model.build_deeplab(ModelConfig(num_classes=6, width=0.0625, dropout=0.0))
    trainer = trainer_lib.Trainer(net, optim_config=OptimConfig(learning_rate=1e-3))
    trainer.compile(optimizer=trainer_lib.make_optimizer(trainer.optim_config))
    step = tf.function(trainer.train_step)
    before = [v.numpy().copy() for v in net.trainable_variables]
    for batch in ds.take(3):
        logs = step(batch)
    assert np.isfinite(float(logs["loss"]))
    assert any(not np.array_equal(a, v.numpy()) for a, v in zip(before, net.trainable_variables))
    scores = net(batch["image"])
    got, _ = targets.compute_targets(scores, batch)
    got = got.numpy()
    valid = batch["valid"].numpy()
    np.testing.assert_array_equal(got[:2], np.where(valid[:2], batch["label"][:2], 255))
    present = batch["image_labels"].numpy()
    for i in (2, 3):  # EM-Adapt: only present labels
        assert present[i][got[i][valid[i]]].all()
    box = batch["box_mask"].numpy()
    for i in (4, 5):  # Bbox-EM-Fixed: foreground only inside its boxes
        fg = valid[i] & (got[i] > 0)
        assert np.take_along_axis(box[i], got[i][..., None].clip(0, 5), -1)[..., 0][fg].all()


def test_collapse_warnings():
    assert loop.estep_warning({"bg_fraction": 0.0, "fg_fraction": 0.0}) is None
    assert loop.estep_warning({"bg_fraction": 0.6, "fg_fraction": 0.4}) is None
    assert "all-background" in loop.estep_warning({"bg_fraction": 0.995, "fg_fraction": 0.005})
    assert "all-foreground" in loop.estep_warning({"bg_fraction": 0.001, "fg_fraction": 0.999})


def test_box_warmup_fills_the_boxes_then_trusts_the_network():
    scores, batch = _manual_batch(2)
    batch["kind"] = tf.fill([5], constants.KIND_ID["bbox_em_fixed"])
    scores[..., 0] += 100.0  # a network sure of background everywhere
    config = EStepConfig(box_warmup_steps=10)
    early, _ = targets.compute_targets(tf.constant(scores), batch, config, step=3)
    late, _ = targets.compute_targets(tf.constant(scores), batch, config, step=10)
    inside = batch["box_mask"].numpy()[..., 2] & batch["valid"].numpy()
    assert (early.numpy()[inside] == 2).all()
    assert (late.numpy()[inside] == 0).all()


def test_weak_warmup_leaves_image_label_examples_out_then_runs_em():
    scores, batch = _manual_batch(2)
    config = targets.EStepConfig(weak_warmup_steps=10)
    plain, plain_stats = targets.compute_targets(tf.constant(scores), batch)
    warm, warm_stats = targets.compute_targets(tf.constant(scores), batch, config, step=9)
    after, _ = targets.compute_targets(tf.constant(scores), batch, config, step=10)
    warm, plain = warm.numpy(), plain.numpy()
    # Examples 1 (em_fixed) and 2 (em_adapt) are ignored while warming up ...
    assert (warm[1:3] == 255).all()
    # ... strong, box and Bbox-EM-Fixed examples are not touched ...
    np.testing.assert_array_equal(warm[[0, 3, 4]], plain[[0, 3, 4]])
    # ... the statistics still describe the E-step (no false collapse warning) ...
    np.testing.assert_allclose(warm_stats["fg_fraction"], plain_stats["fg_fraction"])
    # ... and from step 10 on, EM-Fixed gives its labels again (EM-Adapt's
    # visiting order is random, so only its valid pixels are checked).
    np.testing.assert_array_equal(after.numpy()[1], plain[1])
    assert (after.numpy()[2][batch["valid"].numpy()[2]] != 255).all()


# ------------------------------------------------------------------ Cross-Joint label spaces

def test_masked_cross_entropy_softmax_over_the_example_label_space_only():
    # One pixel per example, logits (1, 0, 5), target 0; label 2 (the top logit)
    # lies outside example 1's dataset.
    scores = tf.constant([[[[1.0, 0.0, 5.0]]], [[[1.0, 0.0, 5.0]]]])  # (2, 1, 1, 3)
    space = tf.constant([[True, True, True], [True, True, False]])
    total, count = targets.masked_cross_entropy(scores, tf.constant([[[0]], [[0]]]), space)
    full = np.log(np.e + 1.0 + np.e ** 5) - 1.0  # 4.0247
    own = np.log(np.e + 1.0) - 1.0  # 0.3133: label 2 takes no probability
    np.testing.assert_allclose(float(total), full + own, rtol=1e-6)
    assert float(count) == 2.0


def test_targets_never_leave_the_example_label_space():
    # Label 2 has the top score everywhere but lies outside both examples' datasets.
    scores = np.zeros((2, 2, 3, 3), np.float32)
    scores[..., 1] = [1.0, -1.0, 0.5]
    scores[..., 2] = 100.0
    kinds = [constants.KIND_ID["em_fixed"], constants.KIND_ID["em_adapt"]]
    batch = {"kind": tf.constant(kinds), "label": tf.fill([2, 2, 3], 255),
             "valid": tf.ones([2, 2, 3], tf.bool),
             # em_fixed: background and label 1 present, bias 3 and 5 -> (3, 6 / 4 / 5.5, 100);
             # em_adapt: no label present at all -> the plain argmax (within the space).
             "image_labels": tf.constant([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]]),
             "box_mask": tf.zeros([2, 2, 3, 3], tf.bool),
             "label_space": tf.constant([[True, True, False], [True, True, False]])}
    got, _ = targets.compute_targets(tf.constant(scores), batch)
    np.testing.assert_array_equal(got.numpy()[0], [[1, 1, 1], [1, 1, 1]])
    np.testing.assert_array_equal(got.numpy()[1], [[1, 0, 1], [1, 0, 1]])
    # Without the label space the same scores give label 2 everywhere.
    del batch["label_space"]
    np.testing.assert_array_equal(targets.compute_targets(tf.constant(scores), batch)[0], 2)


def test_em_adapt_without_present_labels_is_the_plain_argmax():
    scores = np.array([[[[0.0, 2.0, 1.0], [3.0, 2.0, 1.0], [0.0, 1.0, 4.0]]]], np.float32)
    got = estep.em_adapt(tf.constant(scores), tf.zeros([1, 3]), seed=0)
    np.testing.assert_array_equal(got, [[[1, 0, 2]]])
    # No foreground present, background present: everything is background.
    got = estep.em_adapt(tf.constant(scores), tf.constant([[1.0, 0.0, 0.0]]), seed=0)
    np.testing.assert_array_equal(got, 0)
