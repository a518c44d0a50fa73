"""Tests of kseg/data/embedded.py at a tiny size."""

import os

import numpy as np
import pytest

from kseg.data import embedded
from kseg.data.errors import DataError
from kseg.data.palette import read_label_png
from kseg.data.voc import (annotation_path, boxes_from_instances,
                           class_mask_path, load_example, object_mask_path,
                           read_split_ids, read_xml_boxes)

SMALL = dict(num_train=24, num_val=6, image_size=64, seed=3)
NUM_CLASSES = len(embedded.EMBEDDED_CLASSES)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("embedded"))
    embedded.generate(path, **SMALL)
    return path


@pytest.fixture(scope="module")
def train(root):
    return [load_example(root, image_id, NUM_CLASSES,
                         embedded.EMBEDDED_CLASSES)
            for image_id in read_split_ids(root, "train")]


def read_bytes(path):
    with open(path, "rb") as f:
        return f.read()


def test_voc_layout(root):
    train_ids = read_split_ids(root, "train")
    val_ids = read_split_ids(root, "val")
    assert len(train_ids) == 24 and len(val_ids) == 6
    assert not set(train_ids) & set(val_ids)
    for image_id in train_ids + val_ids:
        for path in (os.path.join(root, "JPEGImages", f"{image_id}.jpg"),
                     class_mask_path(root, image_id),
                     object_mask_path(root, image_id),
                     annotation_path(root, image_id)):
            assert os.path.isfile(path), path


def test_deterministic_given_seed(root, tmp_path):
    again = str(tmp_path / "again")
    embedded.generate(again, **SMALL)
    other = str(tmp_path / "other")
    embedded.generate(other, **{**SMALL, "seed": 4})
    differs = False
    for image_id in read_split_ids(root, "train") + read_split_ids(root,
                                                                    "val"):
        for path_fn in (class_mask_path, object_mask_path, annotation_path):
            a = read_bytes(path_fn(root, image_id))
            assert a == read_bytes(path_fn(again, image_id))
            differs |= a != read_bytes(path_fn(other, image_id))
        a = read_bytes(os.path.join(root, "JPEGImages", f"{image_id}.jpg"))
        assert a == read_bytes(
            os.path.join(again, "JPEGImages", f"{image_id}.jpg"))
    assert differs


def test_every_class_appears_in_train(train):
    present = set()
    for example in train:
        present |= set(np.unique(example.class_mask).tolist())
        present |= set(example.box_classes.tolist())
    assert present == set(range(NUM_CLASSES)) | {255}


def test_xml_boxes_equal_instance_boxes(root):
    for image_id in read_split_ids(root, "train"):
        class_mask = read_label_png(class_mask_path(root, image_id))
        object_mask = read_label_png(object_mask_path(root, image_id))
        boxes, classes = boxes_from_instances(class_mask, object_mask)
        xml_boxes, xml_classes = read_xml_boxes(
            annotation_path(root, image_id), embedded.EMBEDDED_CLASSES)
        np.testing.assert_array_equal(xml_boxes, boxes)
        np.testing.assert_array_equal(xml_classes, classes)
        assert len(boxes) >= 1
        assert boxes[:, :2].min() >= 0 and boxes[:, 2:].max() <= 64
        # Instances are numbered 1..N with no gap.
        ids = set(np.unique(object_mask).tolist()) - {0, 255}
        assert ids == set(range(1, len(boxes) + 1))


def test_void_borders_separate_objects_from_background(train):
    for example in train:
        mask = example.class_mask
        assert (mask == 255).any()
        # No background pixel touches an object pixel: a void band between.
        for a, b in ((mask[1:], mask[:-1]), (mask[:, 1:], mask[:, :-1])):
            touching = ((a == 0) & (b >= 1) & (b < 255)) | (
                (b == 0) & (a >= 1) & (a < 255))
            assert not touching.any(), example.image_id


def test_object_mask_void_matches_class_mask(root):
    for image_id in read_split_ids(root, "val"):
        class_mask = read_label_png(class_mask_path(root, image_id))
        object_mask = read_label_png(object_mask_path(root, image_id))
        np.testing.assert_array_equal(class_mask == 255, object_mask == 255)
        np.testing.assert_array_equal(class_mask == 0, object_mask == 0)


def test_object_pixel_fraction_and_loose_boxes(train):
    masks = np.stack([example.class_mask for example in train])
    objects = (masks >= 1) & (masks < 255)
    assert 0.1 < objects.mean() < 0.5
    # Shapes other than squares fill their boxes only partly.
    fills = []
    for example in train:
        for box, cls in zip(example.boxes.astype(int), example.box_classes):
            if cls == 2:
                continue
            y0, x0, y1, x1 = box
            window = example.class_mask[y0:y1, x0:x1]
            fills.append((window == cls).mean())
    assert 0.2 < np.mean(fills) < 0.85


def test_render_example_shapes_and_types():
    image, class_mask, object_mask, boxes, classes = embedded.render_example(
        np.random.default_rng(0), 48)
    assert image.shape == (48, 48, 3) and image.dtype == np.uint8
    assert class_mask.shape == object_mask.shape == (48, 48)
    assert class_mask.dtype == object_mask.dtype == np.uint8
    assert boxes.dtype == np.float32 and classes.dtype == np.int32
    assert boxes.shape == (len(classes), 4)
    assert ((classes >= 1) & (classes < NUM_CLASSES)).all()


def test_generate_rejects_wrong_class_count(tmp_path):
    with pytest.raises(ValueError, match="class_names"):
        embedded.generate(str(tmp_path), num_train=1, num_val=1,
                          class_names=("background", "a"))


def test_ensure_embedded_idempotent(tmp_path, absl_logs):
    kwargs = dict(num_train=3, num_val=2, image_size=48)
    first = embedded.ensure_embedded(str(tmp_path), **kwargs)
    assert "generating embedded dataset" in absl_logs.text
    absl_logs.clear()
    assert os.path.dirname(first) == str(tmp_path)
    assert os.path.basename(first).startswith("embedded-")
    assert read_split_ids(first, "val") == ["val_00000", "val_00001"]
    stamp = os.stat(class_mask_path(first, "train_00000")).st_mtime_ns

    second = embedded.ensure_embedded(str(tmp_path), **kwargs)
    assert second == first
    assert not [r for r in absl_logs.records if r.name == "absl"]
    assert os.stat(class_mask_path(first, "train_00000")).st_mtime_ns == stamp
    # No staging directory is left behind.
    assert os.listdir(tmp_path) == [os.path.basename(first)]

    other = embedded.ensure_embedded(str(tmp_path), **{**kwargs, "seed": 1})
    assert other != first


def test_ensure_embedded_defaults_from_env(tmp_path, monkeypatch):
    monkeypatch.setenv("KSEG_DATA_DIR", str(tmp_path))
    path = embedded.ensure_embedded(num_train=1, num_val=1, image_size=32)
    assert os.path.dirname(path) == str(tmp_path)


def test_ensure_embedded_loses_race_gracefully(tmp_path, monkeypatch):
    kwargs = dict(num_train=1, num_val=1, image_size=32)
    final = embedded.ensure_embedded(str(tmp_path), **kwargs)
    # Simulate a process that checked before the other one finished.
    real_isdir = os.path.isdir
    calls = []

    def isdir_once_false(path):
        if path == final and not calls:
            calls.append(path)
            return False
        return real_isdir(path)

    monkeypatch.setattr(embedded.os.path, "isdir", isdir_once_false)
    assert embedded.ensure_embedded(str(tmp_path), **kwargs) == final
    monkeypatch.undo()
    assert os.listdir(tmp_path) == [os.path.basename(final)]


def test_ensure_embedded_rejects_unknown_argument(tmp_path):
    with pytest.raises(TypeError, match="bogus"):
        embedded.ensure_embedded(str(tmp_path), bogus=1)


def test_generated_examples_validate(root):
    for image_id in read_split_ids(root, "val"):
        load_example(root, image_id, NUM_CLASSES, embedded.EMBEDDED_CLASSES)
    with pytest.raises(DataError):
        load_example(root, read_split_ids(root, "val")[0], 3,
                     embedded.EMBEDDED_CLASSES)
