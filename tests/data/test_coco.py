"""Tests of kseg/data/coco.py and prepare.prepare_coco on a tiny COCO 2014 tree."""

import copy
import json
import os

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from kseg.data import coco, prepare, records, voc
from kseg.data.errors import DataError

SPLIT = "val2014"


def _rle_string(mask):
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return rle["counts"].decode("ascii")


def _crowd_mask():
    mask = np.zeros((10, 12), bool)
    mask[0:3, 4:12] = True
    return mask


def _dog_mask():
    mask = np.zeros((10, 12), bool)
    mask[3:7, 5:9] = True
    return mask


def _instances():
    """Two images: 42 with a polygon, an RLE and a crowd; 7 with odd boxes."""
    return {
        "images": [
            {"id": 42, "file_name": "COCO_val2014_000000000042.jpg", "height": 10, "width": 12},
            {"id": 7, "file_name": "COCO_val2014_000000000007.jpg", "height": 8, "width": 8},
        ],
        "annotations": [
            # A person: polygon, a rectangle with corners (1, 1) and (7, 5).
            {"id": 1, "image_id": 42, "category_id": 1, "iscrowd": 0, "area": 24.0,
             "segmentation": [[1, 1, 7, 1, 7, 5, 1, 5]], "bbox": [1.0, 1.0, 6.0, 4.0]},
            # A dog: compressed RLE, overlapping the person (and smaller).
            {"id": 2, "image_id": 42, "category_id": 18, "iscrowd": 0, "area": 16.0,
             "segmentation": {"size": [10, 12], "counts": _rle_string(_dog_mask())},
             "bbox": [5.0, 3.0, 4.0, 4.0]},
            # A crowd of cars: uncompressed RLE, as COCO stores crowds.
            {"id": 3, "image_id": 42, "category_id": 3, "iscrowd": 1, "area": 24.0,
             "segmentation": {"size": [10, 12], "counts": coco.rle_string_counts(
                 _rle_string(_crowd_mask()))},
             "bbox": [4.0, 0.0, 8.0, 3.0]},
            # A tv whose box leaves the image, and a box of zero width.
            {"id": 4, "image_id": 7, "category_id": 72, "iscrowd": 0, "area": 16.0,
             "segmentation": [[2, 2, 6, 2, 6, 6, 2, 6]], "bbox": [6.0, -2.0, 4.0, 5.0]},
            {"id": 5, "image_id": 7, "category_id": 72, "iscrowd": 0, "area": 0.0,
             "segmentation": [[3, 3, 3, 3, 3, 5]], "bbox": [3.0, 3.0, 0.0, 2.0]},
        ],
        "categories": [{"id": 1, "name": "person"}, {"id": 3, "name": "car"},
                       {"id": 18, "name": "dog"}, {"id": 72, "name": "tv"}],
    }


def _write_root(tmp_path, data=None, image_sizes=None):
    root = tmp_path / "coco"
    os.makedirs(root / "annotations", exist_ok=True)
    os.makedirs(root / SPLIT, exist_ok=True)
    data = data or _instances()
    image_sizes = image_sizes or {}
    rng = np.random.default_rng(0)
    for entry in data["images"]:
        height, width = image_sizes.get(entry["id"], (entry["height"], entry["width"]))
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / SPLIT / entry["file_name"], quality=95)
    (root / "annotations" / f"instances_{SPLIT}.json").write_text(json.dumps(data))
    return str(root)


def _expected_mask_42():
    mask = np.zeros((10, 12), np.uint8)
    mask[_crowd_mask()] = 255  # crowd first,
    mask[1:5, 1:7] = 1  # then the larger person,
    mask[_dog_mask()] = 17  # then the smaller dog on top.
    return mask


def test_category_table_and_voc_mapping():
    assert len(coco.COCO_CATEGORIES) == 80 and len(coco.COCO_CLASSES) == 81
    assert coco.COCO_CLASSES[1] == "person" and coco.COCO_CLASSES[80] == "toothbrush"
    labels = coco.voc_to_coco_labels()
    assert len(labels) == 21 and labels[0] == 0
    by_voc = dict(zip(voc.VOC_CLASSES, labels))
    # Worked out by hand from the category ids (ids 12, 26, 29, 30, 45, 66,
    # 68, 69, 71 are unused below 72).
    assert by_voc["person"] == 1 and by_voc["aeroplane"] == 5 and by_voc["motorbike"] == 4
    assert by_voc["bird"] == 15 and by_voc["bottle"] == 40 and by_voc["chair"] == 57
    assert by_voc["sofa"] == 58 and by_voc["pottedplant"] == 59
    assert by_voc["diningtable"] == 61 and by_voc["tvmonitor"] == 63
    for voc_name, coco_name in coco.VOC_TO_COCO.items():
        assert coco.COCO_CLASSES[by_voc[voc_name]] == coco_name
    assert len(set(labels)) == 21


def test_label_map_errors():
    with pytest.raises(ValueError, match="zebra"):
        coco.label_map(("background", "zebra"), coco.COCO_CLASSES[:10])


def test_xywh_to_box():
    np.testing.assert_array_equal(coco.xywh_to_box([2.5, 1.0, 3.0, 4.25]),
                                  [1.0, 2.5, 5.25, 5.5])


def test_rle_string_counts_matches_pycocotools():
    rng = np.random.default_rng(1)
    for _ in range(20):
        mask = rng.random((7, 9)) < rng.random()
        counts = coco.rle_string_counts(_rle_string(mask))
        assert sum(counts) == 63
        # Runs alternate starting with zeros, in column-major order.
        flat = np.repeat(np.arange(len(counts)) % 2, counts)
        np.testing.assert_array_equal(flat, mask.T.reshape(-1))


def test_annotation_mask_kinds_and_errors():
    polygon = coco.annotation_mask([[1, 1, 4, 1, 4, 3, 1, 3]], 6, 8)
    expected = np.zeros((6, 8), bool)
    expected[1:3, 1:4] = True
    np.testing.assert_array_equal(polygon, expected)
    # A 2-point "polygon" is not read as a box: it has no area.
    assert not coco.annotation_mask([[1, 1, 4, 4]], 6, 8).any()
    rle = {"size": [6, 8], "counts": _rle_string(expected)}
    np.testing.assert_array_equal(coco.annotation_mask(rle, 6, 8), expected)
    with pytest.raises(ValueError, match="RLE size"):
        coco.annotation_mask(rle, 8, 6)
    with pytest.raises(ValueError, match="run lengths"):
        coco.annotation_mask({"size": [6, 8], "counts": ""}, 6, 8)
    with pytest.raises(ValueError, match="run lengths"):
        coco.annotation_mask({"size": [6, 8], "counts": [40, 9]}, 6, 8)
    with pytest.raises(ValueError, match="polygon"):
        coco.annotation_mask([[1, 2, 3]], 6, 8)
    with pytest.raises(ValueError):
        coco.annotation_mask(None, 6, 8)


def test_load_example_masks_boxes_labels(tmp_path):
    root = _write_root(tmp_path)
    index = coco.read_instances(coco.instances_path(root, SPLIT), coco.COCO_CATEGORIES)
    assert list(index.images) == ["COCO_val2014_000000000007", "COCO_val2014_000000000042"]
    assert index.classes == coco.COCO_CLASSES
    example = coco.load_example(index, coco.image_dir(root, SPLIT),
                                "COCO_val2014_000000000042")
    np.testing.assert_array_equal(example.class_mask, _expected_mask_42())
    # [x, y, w, h] -> [y, x, y + h, x + w]; crowds have no box.
    np.testing.assert_array_equal(example.boxes, [[1, 1, 5, 7], [3, 5, 7, 9]])
    np.testing.assert_array_equal(example.box_classes, [1, 17])
    # The crowd's class (car, 3) is present though its pixels are ignored.
    assert example.image_labels == (0, 1, 3, 17)


def test_prepare_coco_records(tmp_path):
    root = _write_root(tmp_path)
    out = str(tmp_path / "records")
    summary = prepare.prepare_coco(root, out, SPLIT)
    assert summary.written == 2 and not summary.skipped
    assert summary.boxes_clipped == 1 and summary.boxes_dropped == 1
    info = records.read_split_info(out, "val")
    assert info["class_names"] == list(coco.COCO_CLASSES) and info["num_images"] == 2
    back = {r.image_id: r for r in records.iterate_split(out, "val")}
    r42, r7 = back["COCO_val2014_000000000042"], back["COCO_val2014_000000000007"]
    assert r42.dataset == r7.dataset == prepare.COCO_DATASET == 1
    np.testing.assert_array_equal(r42.class_mask, _expected_mask_42())
    assert r42.image_labels == (0, 1, 3, 17)
    np.testing.assert_array_equal(r42.box_classes, [1, 17])
    with open(os.path.join(root, SPLIT, "COCO_val2014_000000000042.jpg"), "rb") as f:
        assert f.read() == r42.image_encoded
    # The tv box [y -2, x 6, y 3, x 10] is clipped to the 8x8 image; the
    # zero-width box is dropped.
    np.testing.assert_array_equal(r7.boxes, [[0, 6, 3, 8]])
    np.testing.assert_array_equal(r7.box_classes, [63])
    expected = np.zeros((8, 8), np.uint8)
    expected[2:6, 2:6] = 63
    np.testing.assert_array_equal(r7.class_mask, expected)
    assert "1 boxes clipped" in str(summary) and "1 boxes of zero area" in str(summary)
    with open(os.path.join(out, "val.prepare.log")) as f:
        assert "val: 2 images written, 0 skipped" in f.read()


def test_voc_labels_remap_onto_coco_records():
    """A VOC mask mapped by voc_to_coco_labels names the same objects."""
    table = np.array(coco.voc_to_coco_labels() + (0,) * (256 - 21), np.uint8)
    table[255] = 255
    voc_mask = np.array([[0, 18, 20], [255, 1, 14]], np.uint8)
    coco_mask = table[voc_mask]
    names = [[coco.COCO_CLASSES[v] if v != 255 else None for v in row] for row in coco_mask]
    assert names == [["background", "couch", "tv"], [None, "airplane", "motorcycle"]]


def _break(case, data, root):
    """Applies one kind of bad input to the fixture; returns (data, id, file name in message)."""
    image_42 = "COCO_val2014_000000000042"
    if case == "missing":
        data["images"].append({"id": 9, "file_name": "COCO_val2014_000000000009.jpg",
                               "height": 4, "width": 4})
        return "COCO_val2014_000000000009", "COCO_val2014_000000000009.jpg"
    if case == "truncated":
        path = os.path.join(root, SPLIT, image_42 + ".jpg")
        with open(path, "rb") as f:
            blob = f.read()
        with open(path, "wb") as f:
            f.write(blob[:len(blob) // 2])
        return image_42, image_42 + ".jpg"
    if case == "size":
        data["images"][0]["height"] = 11
        return image_42, image_42 + ".jpg"
    if case == "category":
        data["annotations"][0]["category_id"] = 12
        return image_42, "instances_val2014.json"
    if case == "rle_size":
        data["annotations"][1]["segmentation"]["size"] = [12, 10]
        return image_42, "instances_val2014.json"
    if case == "rle_corrupt":
        data["annotations"][1]["segmentation"]["counts"] = "abc"
        return image_42, "instances_val2014.json"
    if case == "bbox":
        data["annotations"][0]["bbox"] = [1, 2, 3]
        return image_42, "instances_val2014.json"
    if case == "duplicate":
        data["images"].append(dict(data["images"][1]))
        return "COCO_val2014_000000000007", "instances_val2014.json"
    raise ValueError(case)


@pytest.mark.parametrize("case", ["missing", "truncated", "size", "category", "rle_size",
                                  "rle_corrupt", "bbox", "duplicate"])
def test_bad_input_is_skipped_named_and_counted(tmp_path, case):
    data = _instances()
    root = _write_root(tmp_path, data)
    bad_id, named = _break(case, data, root)
    with open(coco.instances_path(root, SPLIT), "w") as f:
        json.dump(data, f)
    out = str(tmp_path / "records")
    summary = prepare.prepare_coco(root, out, SPLIT)
    assert [image_id for image_id, _ in summary.skipped] == [bad_id]
    assert named in summary.skipped[0][1]
    assert f"skipped {bad_id}" in str(summary)
    written = {r.image_id for r in records.iterate_split(out, "val")}
    assert bad_id not in written or case == "duplicate"
    assert summary.written == len(written)

    strict_out = str(tmp_path / "strict")
    with pytest.raises(DataError, match=named.replace(".", r"\.")):
        prepare.prepare_coco(root, strict_out, SPLIT, strict=True,
                             num_shards=1)
    # Nothing half-written: no shard and no split file.
    leftovers = os.listdir(strict_out) if os.path.isdir(strict_out) else []
    assert not [name for name in leftovers if name.endswith((".tfrecord", ".json"))]


def test_image_entry_without_size_and_orphan_annotations(tmp_path):
    data = _instances()
    data["images"].append({"id": 8, "file_name": "x.jpg"})
    data["annotations"].append(dict(data["annotations"][0], id=99, image_id=1234))
    root = _write_root(tmp_path, copy.deepcopy(_instances()))
    with open(coco.instances_path(root, SPLIT), "w") as f:
        json.dump(data, f)
    summary = prepare.prepare_coco(root, str(tmp_path / "out"), SPLIT)
    assert summary.written == 2
    assert summary.skipped[0][0] == "x" and "height" in summary.skipped[0][1]
    assert summary.repairs[prepare.ORPHAN_ANNOTATIONS] == 1


def test_unreadable_json_and_wrong_category_names(tmp_path):
    root = _write_root(tmp_path)
    path = coco.instances_path(root, SPLIT)
    with open(path, "w") as f:
        f.write('{"images": [')
    with pytest.raises(DataError, match="instances_val2014.json"):
        prepare.prepare_coco(root, str(tmp_path / "out"), SPLIT)
    data = _instances()
    data["categories"][0]["name"] = "people"
    with open(path, "w") as f:
        json.dump(data, f)
    with pytest.raises(DataError, match=r"instances_val2014.json.*people"):
        coco.read_instances(path, coco.COCO_CATEGORIES)
    # Without an expected table the file's own categories define the labels.
    index = coco.read_instances(path)
    assert index.classes == ("background", "people", "car", "dog", "tv")
    assert index.label_of_category == {1: 1, 3: 2, 18: 3, 72: 4}


def test_record_split_names():
    assert prepare.default_record_split("train2014") == "train"
    assert prepare.default_record_split("val2014") == "val"
    assert prepare.default_record_split("minival") == "minival"
