import numpy as np
import pytest
from kseg.evaluation import metrics



def test_confusion_and_miou_by_hand():
    gt = np.array([[0, 0, 1, 1], [2, 2, 255, 1]])
    pred = np.array([[0, 1, 1, 1], [2, 0, 0, 1]])
    cm = metrics.confusion_matrix(gt, pred, 3)
    np.testing.assert_array_equal(cm, [[1, 1, 0], [0, 3, 0], [1, 0, 1]])
    r = metrics.scores_from_confusion(cm)
    # IoU0 = 1/(2+2-1) = 1/3, IoU1 = 3/(3+4-3) = 3/4, IoU2 = 1/(2+1-1) = 1/2.
    np.testing.assert_allclose(r["per_class_iou"], [1 / 3, 3 / 4, 1 / 2])
    np.testing.assert_allclose(r["miou"], (1 / 3 + 3 / 4 + 1 / 2) / 3)
    np.testing.assert_allclose(r["pixel_accuracy"], 5 / 7)


def test_split_level_not_per_image_average():
    # Image 1 perfect on class 1 (1 px); image 2 misses class 1 on 3 px.
    pairs = [(np.array([1]), np.array([1])), (np.array([1, 1, 1]), np.array([0, 0, 0]))]
    r = metrics.evaluate(pairs, 2)
    assert r["num_images"] == 2
    np.testing.assert_allclose(r["per_class_iou"][1], 1 / 4)
    assert r["per_class_iou"][0] == 0.0


def test_absent_classes_do_not_count():
    r = metrics.evaluate([(np.array([0, 0]), np.array([0, 0]))], 3)
    assert r["per_class_iou"] == [1.0, None, None] and r["miou"] == 1.0


def test_bad_ground_truth_value():
    with pytest.raises(ValueError, match="outside"):
        metrics.confusion_matrix(np.array([7]), np.array([0]), 3)


def test_format_table():
    r = metrics.scores_from_confusion(np.array([[3, 1], [0, 0]]))
    text = metrics.format_table(r, ["background", "cat"])
    assert "background" in text and "mIoU" in text and "cat" in text
