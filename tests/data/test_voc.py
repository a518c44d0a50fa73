"""Tests of kseg/data/voc.py on tiny hand-built VOC trees."""

import os

import numpy as np
import pytest
from PIL import Image

from kseg.data.errors import DataError
from kseg.data.palette import write_label_png
from kseg.data.voc import (VocExample, boxes_from_instances, load_example,
                           read_image, read_split_ids, read_xml_boxes)

CLASSES = ("background", "cat", "dog")

XML = """<annotation>
  <filename>a.jpg</filename>
  <size><width>10</width><height>8</height><depth>3</depth></size>
  <object><name>dog</name>
    <bndbox><xmin>1</xmin><ymin>2</ymin><xmax>4</xmax><ymax>8</ymax></bndbox>
  </object>
  <object><name>cat</name>
    <bndbox><xmin>3</xmin><ymin>3</ymin><xmax>10</xmax><ymax>3</ymax></bndbox>
  </object>
</annotation>
"""


def _class_mask():
    """(8, 10) mask: a cat at rows 1..3, cols 2..5 with a void border."""
    mask = np.zeros((8, 10), np.uint8)
    mask[1:4, 2:6] = 1
    mask[5:7, 7:9] = 2
    mask[4, 2:6] = 255
    return mask


def _make_root(tmp_path, image_id="a", image_size=(8, 10), mask=None,
               objects=None, xml=None, ids=("a",)):
    """Writes a one-image VOC tree; returns its root."""
    root = tmp_path / "voc"
    for folder in ("JPEGImages", "SegmentationClass", "SegmentationObject",
                   "Annotations", "ImageSets/Segmentation"):
        os.makedirs(root / folder, exist_ok=True)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=image_size + (3,), dtype=np.uint8)
    Image.fromarray(image).save(root / "JPEGImages" / f"{image_id}.jpg",
                                quality=95)
    if mask is not None:
        write_label_png(str(root / "SegmentationClass" / f"{image_id}.png"),
                        mask)
    if objects is not None:
        write_label_png(str(root / "SegmentationObject" / f"{image_id}.png"),
                        objects)
    if xml is not None:
        (root / "Annotations" / f"{image_id}.xml").write_text(xml)
    (root / "ImageSets/Segmentation/train.txt").write_text(
        "".join(f"{i}\n" for i in ids))
    return str(root)


def test_read_split_ids(tmp_path):
    root = _make_root(tmp_path, ids=("2007_000032", "2007_000039"))
    assert read_split_ids(root, "train") == ["2007_000032", "2007_000039"]


def test_read_split_ids_errors(tmp_path):
    root = _make_root(tmp_path, ids=())
    with pytest.raises(DataError, match="train.txt"):
        read_split_ids(root, "train")
    with pytest.raises(DataError, match="val.txt"):
        read_split_ids(root, "val")
    root = _make_root(tmp_path, ids=("a", "b", "a"))
    with pytest.raises(DataError, match=r"train.txt.*'a'"):
        read_split_ids(root, "train")


def test_read_xml_boxes_converts_one_based_inclusive(tmp_path):
    path = tmp_path / "a.xml"
    path.write_text(XML)
    boxes, classes = read_xml_boxes(str(path), CLASSES)
    # xmin=1..xmax=4 covers 0-based columns 0..3 -> half-open [0, 4).
    np.testing.assert_array_equal(boxes, [[1, 0, 8, 4], [2, 2, 3, 10]])
    assert boxes.dtype == np.float32
    np.testing.assert_array_equal(classes, [2, 1])
    assert classes.dtype == np.int32


def test_read_xml_boxes_unknown_class(tmp_path):
    path = tmp_path / "odd.xml"
    path.write_text(XML.replace("<name>dog</name>", "<name>zebra</name>"))
    with pytest.raises(DataError, match=r"odd.xml.*zebra"):
        read_xml_boxes(str(path), CLASSES)


def test_read_xml_boxes_bad_xml(tmp_path):
    path = tmp_path / "broken.xml"
    path.write_text("<annotation><object>")
    with pytest.raises(DataError, match="broken.xml"):
        read_xml_boxes(str(path), CLASSES)


def test_boxes_from_instances():
    class_mask = np.zeros((6, 7), np.uint8)
    object_mask = np.zeros((6, 7), np.uint8)
    # Instance 2: rows 1..2, cols 1..3, class 1 with one stray class-2 pixel.
    object_mask[1:3, 1:4] = 2
    class_mask[1:3, 1:4] = 1
    class_mask[1, 1] = 2
    # Instance 1: an L shape of class 2 with void pixels inside its box.
    object_mask[3:6, 5] = 1
    object_mask[5, 4] = 1
    class_mask[3:6, 5] = 2
    class_mask[5, 4] = 2
    object_mask[0, :] = 255  # void rows never make a box
    class_mask[0, :] = 255
    boxes, classes = boxes_from_instances(class_mask, object_mask)
    np.testing.assert_array_equal(boxes, [[3, 4, 6, 6], [1, 1, 3, 4]])
    np.testing.assert_array_equal(classes, [2, 1])
    assert boxes.dtype == np.float32 and classes.dtype == np.int32


def test_boxes_from_instances_empty():
    boxes, classes = boxes_from_instances(np.zeros((3, 3), np.uint8),
                                          np.zeros((3, 3), np.uint8))
    assert boxes.shape == (0, 4) and classes.shape == (0,)


def test_load_example_boxes_from_object_mask(tmp_path):
    mask = _class_mask()
    objects = np.where(mask == 1, 1, np.where(mask == 2, 2, mask))
    root = _make_root(tmp_path, mask=mask, objects=objects.astype(np.uint8),
                      xml=XML)
    example = load_example(root, "a", 3, CLASSES)
    assert isinstance(example, VocExample)
    assert example.image.shape == (8, 10, 3)
    assert example.image.dtype == np.uint8
    np.testing.assert_array_equal(example.class_mask, mask)
    np.testing.assert_array_equal(example.boxes, [[1, 2, 4, 6], [5, 7, 7, 9]])
    np.testing.assert_array_equal(example.box_classes, [1, 2])


def test_load_example_falls_back_to_xml_then_nothing(tmp_path):
    root = _make_root(tmp_path, mask=_class_mask(), xml=XML)
    example = load_example(root, "a", 3, CLASSES)
    np.testing.assert_array_equal(example.box_classes, [2, 1])
    os.remove(os.path.join(root, "Annotations", "a.xml"))
    example = load_example(root, "a", 3, CLASSES)
    assert example.boxes.shape == (0, 4)
    assert example.box_classes.shape == (0,)


def test_load_example_missing_mask(tmp_path):
    root = _make_root(tmp_path, xml=XML)
    with pytest.raises(DataError, match=r"SegmentationClass.a\.png"):
        load_example(root, "a", 3, CLASSES)
    example = load_example(root, "a", 3, CLASSES, require_mask=False)
    assert example.class_mask is None
    assert example.boxes.shape == (2, 4)


def test_load_example_missing_image(tmp_path):
    root = _make_root(tmp_path, mask=_class_mask())
    with pytest.raises(DataError, match=r"JPEGImages.b\.jpg"):
        load_example(root, "b", 3, CLASSES)


def test_load_example_truncated_image(tmp_path):
    root = _make_root(tmp_path, image_size=(64, 64),
                      mask=np.zeros((64, 64), np.uint8))
    path = os.path.join(root, "JPEGImages", "a.jpg")
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[:len(data) // 2])
    with pytest.raises(DataError, match=r"JPEGImages.a\.jpg"):
        load_example(root, "a", 3, CLASSES)
    with pytest.raises(DataError, match=r"a\.jpg"):
        read_image(path)


def test_load_example_mask_of_another_size(tmp_path):
    root = _make_root(tmp_path, mask=np.zeros((8, 9), np.uint8))
    with pytest.raises(DataError) as error:
        load_example(root, "a", 3, CLASSES)
    message = str(error.value)
    assert os.path.join("SegmentationClass", "a.png") in message
    assert "9x8" in message and "10x8" in message


def test_load_example_labels_out_of_range(tmp_path):
    mask = _class_mask()
    mask[0, 0] = 3
    mask[0, 1] = 147
    root = _make_root(tmp_path, mask=mask)
    with pytest.raises(DataError) as error:
        load_example(root, "a", 3, CLASSES)
    message = str(error.value)
    assert os.path.join("SegmentationClass", "a.png") in message
    assert "[3, 147]" in message
    # With more classes the same values are valid labels.
    assert load_example(root, "a", 148, CLASSES).class_mask[0, 1] == 147


def test_load_example_rgb_mask(tmp_path):
    root = _make_root(tmp_path)
    Image.new("RGB", (10, 8), (128, 0, 0)).save(
        os.path.join(root, "SegmentationClass", "a.png"))
    with pytest.raises(DataError, match=r"SegmentationClass.a\.png.*RGB"):
        load_example(root, "a", 3, CLASSES)
