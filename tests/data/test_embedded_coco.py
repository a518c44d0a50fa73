"""Tests of kseg/data/embedded_coco.py (the COCO-like companion) at a tiny size."""

import collections
import json
import os

import numpy as np
import pytest
from PIL import Image

from kseg.data import coco, embedded, embedded_coco

from tests.data.test_embedded import read_bytes


COCO_SMALL = dict(num_train=16, num_val=4, image_size=64, seed=2)


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("embedded_coco"))
    embedded_coco.generate_coco(path, **COCO_SMALL)
    return path


def _instances(root, split):
    with open(coco.instances_path(root, split)) as f:
        return json.load(f)


def test_coco_like_classes_are_a_superset_with_a_label_map():
    assert len(embedded_coco.EMBEDDED_COCO_CLASSES) == 9
    assert set(embedded.EMBEDDED_CLASSES) < set(embedded_coco.EMBEDDED_COCO_CLASSES)
    labels = embedded_coco.embedded_to_coco_labels()
    assert labels == (0, 2, 3, 5, 6, 8)  # by category id: star, disc, square, ...
    for label, name in enumerate(embedded.EMBEDDED_CLASSES):
        assert embedded_coco.EMBEDDED_COCO_CLASSES[labels[label]] == name


def test_coco_like_layout_and_annotation_formats(coco_root):
    kinds = collections.Counter()
    for split, count in (("train", 16), ("val", 4)):
        data = _instances(coco_root, split)
        assert len(data["images"]) == count
        assert [c["id"] for c in data["categories"]] == [
            i for i, _ in embedded_coco.EMBEDDED_COCO_CATEGORIES]
        for entry in data["images"]:
            path = os.path.join(coco.image_dir(coco_root, split), entry["file_name"])
            with Image.open(path) as image:
                assert image.size == (entry["width"], entry["height"])
        ids = [ann["id"] for ann in data["annotations"]]
        assert len(set(ids)) == len(ids)
        for ann in data["annotations"]:
            segmentation = ann["segmentation"]
            if isinstance(segmentation, list):
                kinds["polygon"] += 1
            elif isinstance(segmentation["counts"], str):
                kinds["rle"] += 1
            else:
                kinds["crowd_rle" if ann["iscrowd"] else "list_rle"] += 1
    assert kinds["polygon"] and kinds["rle"] and kinds["crowd_rle"]
    assert not kinds["list_rle"]


def test_coco_like_reader_reproduces_the_drawn_masks(coco_root):
    index = coco.read_instances(coco.instances_path(coco_root, "train"),
                                embedded_coco.EMBEDDED_COCO_CATEGORIES)
    assert not index.rejected and not index.orphan_annotations
    sizes, objects, present = set(), [], set()
    for i, image_id in enumerate(index.images):
        rng, height, width = embedded_coco.coco_image_rng(2, "train", i, 64)
        _, _, drawn = embedded_coco.render_coco_example(rng, height, width)
        example = coco.load_example(index, coco.image_dir(coco_root, "train"), image_id)
        np.testing.assert_array_equal(example.class_mask, drawn)
        sizes.add((height, width))
        objects.append(len(example.boxes))
        present |= set(example.box_classes.tolist())
    # Statistics unlike the VOC-like set's: sizes vary, 2-7 objects an
    # image (1-4 there), every class appears.
    assert len(sizes) > 8 and all(48 <= s <= 64 for hw in sizes for s in hw)
    assert np.mean(objects) > 3
    assert present == set(range(1, 9))


def test_coco_like_deterministic(coco_root, tmp_path):
    again = str(tmp_path / "again")
    embedded_coco.generate_coco(again, **{**COCO_SMALL, "num_train": 2})
    first = _instances(coco_root, "train")
    second = _instances(again, "train")
    assert second["images"] == first["images"][:2]
    n = len(second["annotations"])
    assert second["annotations"] == first["annotations"][:n]
    for entry in second["images"]:
        assert read_bytes(os.path.join(again, "train", entry["file_name"])) == read_bytes(
            os.path.join(coco_root, "train", entry["file_name"]))


def test_ensure_embedded_coco_idempotent(tmp_path, absl_logs):
    kwargs = dict(num_train=2, num_val=1, image_size=32)
    first = embedded_coco.ensure_embedded_coco(str(tmp_path), **kwargs)
    assert "generating embedded COCO-like dataset" in absl_logs.text
    absl_logs.clear()
    assert os.path.basename(first).startswith("embedded-coco-")
    assert os.path.isfile(coco.instances_path(first, "val"))
    assert embedded_coco.ensure_embedded_coco(str(tmp_path), **kwargs) == first
    assert not [r for r in absl_logs.records if r.name == "absl"]
    assert os.listdir(tmp_path) == [os.path.basename(first)]
    assert embedded_coco.ensure_embedded_coco(str(tmp_path), **{**kwargs, "seed": 1}) != first
    with pytest.raises(TypeError, match="class_names"):
        embedded_coco.ensure_embedded_coco(str(tmp_path), class_names=("a",))
