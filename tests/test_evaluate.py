import numpy as np
import keras
import pytest
import tensorflow as tf

from kseg import evaluate


def test_confusion_and_miou_by_hand():
    gt = np.array([[0, 0, 1, 1], [2, 2, 255, 1]])
    pred = np.array([[0, 1, 1, 1], [2, 0, 0, 1]])
    cm = evaluate.confusion_matrix(gt, pred, 3)
    np.testing.assert_array_equal(cm, [[1, 1, 0], [0, 3, 0], [1, 0, 1]])
    r = evaluate.scores_from_confusion(cm)
    # IoU0 = 1/(2+2-1) = 1/3, IoU1 = 3/(3+4-3) = 3/4, IoU2 = 1/(2+1-1) = 1/2.
    np.testing.assert_allclose(r["per_class_iou"], [1 / 3, 3 / 4, 1 / 2])
    np.testing.assert_allclose(r["miou"], (1 / 3 + 3 / 4 + 1 / 2) / 3)
    np.testing.assert_allclose(r["pixel_accuracy"], 5 / 7)


def test_split_level_not_per_image_average():
    # Image 1 perfect on class 1 (1 px); image 2 misses class 1 on 3 px.
    pairs = [(np.array([1]), np.array([1])), (np.array([1, 1, 1]), np.array([0, 0, 0]))]
    r = evaluate.evaluate(pairs, 2)
    assert r["num_images"] == 2
    np.testing.assert_allclose(r["per_class_iou"][1], 1 / 4)
    assert r["per_class_iou"][0] == 0.0


def test_absent_classes_do_not_count():
    r = evaluate.evaluate([(np.array([0, 0]), np.array([0, 0]))], 3)
    assert r["per_class_iou"] == [1.0, None, None] and r["miou"] == 1.0


def test_bad_ground_truth_value():
    with pytest.raises(ValueError, match="outside"):
        evaluate.confusion_matrix(np.array([7]), np.array([0]), 3)


def test_segment_aligns_score_pixels_with_image_pixels():
    # A "network" that subsamples by 8 (pixel 8i -> score i): upsampling must
    # put score i back on pixel 8i and interpolate linearly in between, so a
    # linear ramp comes back exactly wherever no padding is involved.
    inputs = keras.Input((None, None, 3))
    net = keras.Model(inputs, keras.layers.Lambda(lambda x: x[:, ::8, ::8, :2])(inputs))
    for h, w in ((17, 17), (9, 33), (20, 13)):
        image = np.zeros((h, w, 3), np.uint8)
        image[..., 2] = 100 + np.arange(w)[None, :]  # R: becomes BGR channel 0
        image[..., 1] = 117
        probs = evaluate.segment(net, tf.constant(image[None])).numpy()
        assert probs.shape == (1, h, w, 2)
        logit_diff = np.log(probs[0, ..., 0] / probs[0, ..., 1])  # x0 - x1
        expected = (100 + np.arange(w) - 104.008) - (117 - 116.669)
        # Rows/columns up to the last score sample (beyond it the padding counts).
        rows, last = (h - 1) // 8 * 8 + 1, (w - 1) // 8 * 8 + 1
        np.testing.assert_allclose(logit_diff[:rows, :last], np.broadcast_to(
            expected[:last], (rows, last)), atol=2e-3)


def test_format_table():
    r = evaluate.scores_from_confusion(np.array([[3, 1], [0, 0]]))
    text = evaluate.format_table(r, ["background", "cat"])
    assert "background" in text and "mIoU" in text and "cat" in text
