"""The ImageNet stand-in set (kseg/data/standin.py)."""

import hashlib

import numpy as np

from kseg.data import embedded, standin


def _hashes(images):
    return {hashlib.sha256(np.ascontiguousarray(image).tobytes()).hexdigest() for image in images}


def test_classes_cover_the_segmentation_classes():
    # The five segmentation classes, shape and texture as the segmentation set
    # draws them, are among many more (ImageNet's classes cover VOC's).
    assert standin.CLASSES[:5] == (("disc", "rings"), ("square", "checker"),
                                   ("triangle", "stripes"), ("ring", "grid"),
                                   ("cross", "dots"))
    assert len(set(standin.CLASSES)) == len(standin.CLASSES) == standin.NUM_CLASSES
    assert standin.NUM_CLASSES >= 8 * (len(embedded.EMBEDDED_CLASSES) - 1)


def test_shares_no_image_with_the_segmentation_set(tmp_path):
    size = 32
    seg_root = tmp_path / "seg"
    embedded.generate(str(seg_root), num_train=40, num_val=10, image_size=size)
    seg = [embedded.render_example(np.random.default_rng([0, split, i]), size)[0]
           for split, count in ((0, 40), (1, 10)) for i in range(count)]
    root = tmp_path / "standin"
    standin.generate(str(root), num_train=40, num_val=10, image_size=size)
    images = np.concatenate([standin.load_split(str(root), s)[0] for s in ("train", "val")])
    labels = np.concatenate([standin.load_split(str(root), s)[1] for s in ("train", "val")])
    assert images.shape == (50, size, size, 3) and images.dtype == np.uint8
    assert labels.shape == (50, standin.NUM_CLASSES) and set(np.unique(labels)) <= {0, 1}
    # Every image names one class (its dominant object).
    assert (labels.sum(1) == 1).all()
    assert not _hashes(images) & _hashes(seg)
    # Not even the generators are shared: the first draws of image i differ.
    for i in range(10):
        assert (standin.example_rng(0, "train", i).random(4)
                != np.random.default_rng([0, 0, i]).random(4)).all()


def test_generation_is_deterministic():
    a = standin.render_example(standin.example_rng(3, "train", 5), 48)
    b = standin.render_example(standin.example_rng(3, "train", 5), 48)
    assert np.array_equal(a[1], b[1]) and np.array_equal(a[0], b[0])


def test_one_dominant_object_per_image():
    # One class per image, most classes drawn in 200 images; the object covers
    # most of the image: the pixels that differ from the image's background
    # (its generator's first draw, redrawn here) are the object's.
    classes, covered = [], []
    for i in range(200):
        image, labels = standin.render_example(standin.example_rng(0, "train", i), 64)
        assert image.shape == (64, 64, 3) and labels.dtype == np.uint8 and labels.sum() == 1
        classes.append(int(np.argmax(labels)))
        background = np.clip(embedded.background(standin.example_rng(0, "train", i), 64), 0, 255)
        covered.append((np.abs(image - background).sum(-1) > 60).mean())
    assert len(set(classes)) > standin.NUM_CLASSES // 2
    assert np.median(covered) > 0.25 and min(covered) > 0.05
