"""Tests for kseg/crf/bbox_seg.py: Bbox-Seg unaries and masks from boxes."""

import numpy as np
import pytest

from kseg.crf.bbox_seg import BBOX_SEG_CRF_PARAMS, bbox_seg, bbox_seg_unary


def test_bbox_seg_unary_hand_example():
    # One 5x5 box of class 2 at rows/cols 2..6 in a 10x10 image, alpha 0.2:
    # the core is centred at 4.5 with half-side 2.5 * sqrt(0.2) = 1.118, i.e.
    # [3.38, 5.62) which holds the pixel centres of rows/cols 3, 4, 5.
    eps = 1e-4
    probs = bbox_seg_unary([[2, 2, 7, 7]], [2], num_classes=3, height=10, width=10,
                           alpha=0.2, eps=eps)
    assert probs.shape == (10, 10, 3) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-6)
    low = eps / 3
    np.testing.assert_allclose(probs[0, 0], [1 - eps + low, low, low], rtol=1e-5)
    np.testing.assert_allclose(probs[4, 4], [low, low, 1 - eps + low], rtol=1e-5)
    np.testing.assert_allclose(probs[2, 2], [(1 - eps) / 2 + low, low, (1 - eps) / 2 + low],
                               rtol=1e-5)
    core = probs[..., 2] > 0.9
    expected = np.zeros((10, 10), dtype=bool)
    expected[3:6, 3:6] = True
    np.testing.assert_array_equal(core, expected)
    box = probs[..., 0] < 0.9
    expected[2:7, 2:7] = True
    np.testing.assert_array_equal(box, expected)


def test_bbox_seg_unary_overlaps():
    # A big box of class 1 and a small one of class 2 whose core lies inside
    # the big box's core: the smaller box's core wins; pixels covered by both
    # boxes but in no core are open between 0, 1 and 2.
    probs = bbox_seg_unary([[0, 0, 20, 20], [8, 8, 12, 12]], [1, 2], num_classes=4,
                           height=20, width=20, alpha=0.4, eps=1e-6)
    assert probs[10, 10].argmax() == 2 and probs[10, 10, 2] > 0.99
    assert probs[6, 6].argmax() == 1 and probs[6, 6, 1] > 0.99  # big core only
    np.testing.assert_allclose(probs[1, 1], [0.5, 0.5, 0, 0], atol=1e-5)
    # Small box covers (8, 8) but its core (about 9.4..10.6) does not; the big
    # box's core (about 3.7..16.3) does, and stays.
    assert probs[8, 8].argmax() == 1 and probs[8, 8, 1] > 0.99
    # Give the small box a core outside the big core to see a 3-way open pixel.
    probs = bbox_seg_unary([[0, 0, 20, 20], [0, 0, 6, 6]], [1, 2], num_classes=4,
                           height=20, width=20, alpha=0.1, eps=1e-6)
    np.testing.assert_allclose(probs[0, 0], [1 / 3, 1 / 3, 1 / 3, 0], atol=1e-5)


def test_bbox_seg_unary_tiny_box_keeps_its_centre_pixel():
    probs = bbox_seg_unary([[3, 4, 5, 5]], [1], num_classes=2, height=8, width=8, alpha=0.2)
    assert probs[4, 4, 1] > 0.99  # floor of the centre (4.0, 4.5)
    assert probs[3, 4, 1] == pytest.approx(0.5, abs=1e-3)


def test_bbox_seg_unary_soft_mode_released_scripts():
    # 5x5 box: one 3x3 erosion leaves 9/25 = 36% > 20%, two leave 1 pixel.
    probs = bbox_seg_unary([[2, 2, 7, 7]], [1], num_classes=2, height=10, width=10,
                           alpha=0.2, mode="soft", eps=1e-6)
    np.testing.assert_allclose(probs[4, 4], [0.25, 0.75], atol=1e-5)
    np.testing.assert_allclose(probs[3, 3], [0.5, 0.5], atol=1e-5)
    np.testing.assert_allclose(probs[0, 0], [1.0, 0.0], atol=1e-5)
    assert (probs[..., 1] > 0.7).sum() == 1
    # 2-pixel-wide box: not eroded, all of it is core.
    probs = bbox_seg_unary([[0, 0, 2, 8]], [1], num_classes=2, height=10, width=10,
                           alpha=0.2, mode="soft")
    assert (probs[:2, :8, 1] > 0.7).all()


def test_bbox_seg_unary_no_boxes_is_background():
    probs = bbox_seg_unary(np.zeros((0, 4)), np.zeros((0,), int), 5, 4, 6)
    assert (probs.argmax(-1) == 0).all()
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-6)


@pytest.mark.parametrize("kwargs, message", [
    (dict(boxes=[[0, 0, 4]]), r"\(N, 4\)"),
    (dict(classes=[1, 2]), "classes must have shape"),
    (dict(classes=[0]), r"\[1, 2\]"),
    (dict(classes=[3]), r"\[1, 2\]"),
    (dict(classes=[1.0]), "integers"),
    (dict(boxes=[[4, 0, 4, 4]]), "ymax > ymin"),
    (dict(alpha=0.0), "alpha"),
    (dict(mode="rect"), "mode"),
    (dict(num_classes=1, classes=[1]), "num_classes"),
])
def test_bbox_seg_unary_validation(kwargs, message):
    args = dict(boxes=[[0, 0, 4, 4]], classes=[1], num_classes=3, height=8, width=8)
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        bbox_seg_unary(**args)


def _pixel_centres(height, width):
    return np.meshgrid(np.arange(height) + 0.5, np.arange(width) + 0.5, indexing="ij")


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_bbox_seg_respects_boxes(seed):
    rng = np.random.default_rng(seed)
    height, width, num_classes = 40, 56, 6
    image = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    num_boxes = rng.integers(1, 5)
    corner = rng.uniform(0, [height - 6, width - 6], size=(num_boxes, 2))
    size = rng.uniform(6, [height, width], size=(num_boxes, 2))
    far = np.minimum(corner + size, [height, width])
    boxes = np.concatenate([corner, far], axis=1)[:, [0, 1, 2, 3]]
    classes = rng.integers(1, num_classes, size=num_boxes)
    params = BBOX_SEG_CRF_PARAMS.for_image_size(height, width)

    labels = bbox_seg(image, boxes, classes, num_classes, alpha=0.2, params=params)
    assert labels.shape == (height, width) and labels.dtype == np.uint8

    ys, xs = _pixel_centres(height, width)
    inside = np.zeros((height, width), dtype=bool)
    allowed = np.zeros((height, width, num_classes), dtype=bool)
    allowed[..., 0] = True
    core_label = np.full((height, width), -1)
    keep = np.sqrt(0.2) / 2
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    for i in np.argsort(-areas):  # smaller boxes overwrite larger ones' cores
        y0, x0, y1, x1 = boxes[i]
        in_box = (ys >= y0) & (ys < y1) & (xs >= x0) & (xs < x1)
        inside |= in_box
        allowed[in_box, classes[i]] = True
        cy, cx, hy, hx = (y0 + y1) / 2, (x0 + x1) / 2, (y1 - y0) * keep, (x1 - x0) * keep
        in_core = (np.abs(ys - cy) < hy) & (np.abs(xs - cx) < hx)
        assert in_core.any()
        core_label[in_core] = classes[i]

    assert (labels[~inside] == 0).all()
    has_core = core_label >= 0
    np.testing.assert_array_equal(labels[has_core], core_label[has_core])
    assert np.take_along_axis(allowed, labels[..., None].astype(int), -1).all()
    # Some open pixel was decided by the CRF, not all foreground or background.
    open_pixels = inside & ~has_core
    assert open_pixels.any()


def test_bbox_seg_follows_colour_inside_box():
    # A red square on grey; the box is loose around it. The CRF should give
    # the box's class to the red pixels and background to the grey margin.
    image = np.full((40, 40, 3), 128, dtype=np.uint8)
    image[12:28, 12:28] = (220, 30, 30)
    labels = bbox_seg(image, [[6, 6, 34, 34]], [3], num_classes=5,
                      params=BBOX_SEG_CRF_PARAMS.for_image_size(40, 40))
    assert (labels[12:28, 12:28] == 3).all()
    assert (labels[6:34, 6:34] == 0).sum() > 0.8 * (28 * 28 - 16 * 16)
    assert set(np.unique(labels)) == {0, 3}


def test_bbox_seg_soft_mode_runs():
    image = np.full((30, 30, 3), 90, dtype=np.uint8)
    image[10:20, 10:20] = 250
    labels = bbox_seg(image, [[5, 5, 25, 25]], [1], num_classes=2, mode="soft",
                      params=BBOX_SEG_CRF_PARAMS.for_image_size(30, 30))
    assert labels.dtype == np.uint8
    assert labels[15, 15] == 1 and labels[0, 0] == 0
