"""Tests of kseg/data/prepare.py: box repairs, summaries, interrupted runs,
the embedded COCO-like records and the prepare_data.py command line."""

import collections
import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from kseg.data import embedded, prepare, records
from kseg.data import embedded_coco
from kseg.data.errors import DataError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_clip_boxes():
    boxes = np.array([[1, 2, 5, 6],  # inside: kept as is
                      [-2, 3, 4, 12],  # leaves top and right: clipped
                      [3, 10, 5, 14],  # wholly right of the image: dropped
                      [2, 2, 2, 5],  # zero height: dropped
                      [0, 0, 8, 10]], np.float32)  # the whole image
    kept, classes, clipped, dropped = prepare.clip_boxes(boxes, [1, 2, 3, 4, 5], 8, 10)
    np.testing.assert_array_equal(kept, [[1, 2, 5, 6], [0, 3, 4, 10], [0, 0, 8, 10]])
    np.testing.assert_array_equal(classes, [1, 2, 5])
    assert (clipped, dropped) == (1, 2)
    assert kept.dtype == np.float32 and classes.dtype == np.int32
    empty = prepare.clip_boxes(np.zeros((0, 4)), [], 8, 10)
    assert empty[0].shape == (0, 4) and empty[2:] == (0, 0)


def test_summary_text():
    summary = prepare.PrepareSummary(
        written=3, skipped=[("a", "x.jpg: cannot decode")], shards_reused=1,
        repairs=collections.Counter({prepare.BOX_CLIPPED: 2, prepare.BOX_DROPPED: 0}))
    text = str(summary)
    assert text.startswith("3 images written, 1 skipped, 1 shards already complete")
    assert "skipped a: x.jpg: cannot decode" in text
    assert "repaired: 2 boxes clipped to the image" in text
    assert "zero area" not in text  # zero counts are not listed
    assert summary.boxes_clipped == 2 and summary.boxes_dropped == 0


def test_interrupted_run_leaves_no_half_shard_and_resumes(tmp_path, monkeypatch):
    root = str(tmp_path / "voc")
    embedded.generate(root, num_train=6, num_val=1, image_size=32, seed=1)
    out = str(tmp_path / "out")
    real_record = prepare.voc_record
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(args[1])
        if len(calls) == 3:  # the first image of the second shard
            raise KeyboardInterrupt
        return real_record(*args, **kwargs)

    monkeypatch.setattr(prepare, "voc_record", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prepare.prepare_voc_layout(root, out, ["train"], embedded.EMBEDDED_CLASSES,
                                   num_shards=3)
    shards = sorted(os.path.basename(p) for p in glob.glob(records.split_pattern(out, "train")))
    assert shards == ["train-00000-of-00003.tfrecord"]
    assert not os.path.exists(os.path.join(out, "train.json"))
    assert len(list(records.iterate_split(out, "train"))) == 2  # only whole shards
    monkeypatch.setattr(prepare, "voc_record", real_record)

    summary = prepare.prepare_voc_layout(root, out, ["train"], embedded.EMBEDDED_CLASSES,
                                         num_shards=3)["train"]
    assert summary.shards_reused == 1 and summary.written == 4
    ids = sorted(r.image_id for r in records.iterate_split(out, "train"))
    assert ids == [f"train_{i:05d}" for i in range(6)]
    assert records.read_split_info(out, "train")["num_images"] == 6
    assert not glob.glob(os.path.join(out, "*.tmp*"))


def test_voc_layout_duplicate_ids(tmp_path):
    root = str(tmp_path / "voc")
    embedded.generate(root, num_train=3, num_val=1, image_size=32, seed=1)
    with open(os.path.join(root, "ImageSets", "Segmentation", "train.txt"), "a") as f:
        f.write("train_00001\n")
    summary = prepare.prepare_voc_layout(root, str(tmp_path / "out"), ["train"],
                                         embedded.EMBEDDED_CLASSES)["train"]
    assert summary.written == 3
    assert summary.skipped[0][0] == "train_00001" and "train.txt" in summary.skipped[0][1]
    with pytest.raises(DataError, match="train.txt"):
        prepare.prepare_voc_layout(root, str(tmp_path / "strict"), ["train"],
                                   embedded.EMBEDDED_CLASSES, strict=True)


def test_image_tensorflow_cannot_read_as_is_is_reencoded(tmp_path):
    root = str(tmp_path / "voc")
    embedded.generate(root, num_train=2, num_val=1, image_size=32, seed=1)
    path = os.path.join(root, "JPEGImages", "train_00001.jpg")
    with Image.open(path) as image:
        image.convert("CMYK").save(path, format="JPEG", quality=95)
    with Image.open(path) as image:
        expected = np.array(image.convert("RGB"))
    summary = prepare.prepare_voc_layout(root, str(tmp_path / "out"), ["train"],
                                         embedded.EMBEDDED_CLASSES)["train"]
    assert summary.written == 2 and summary.repairs[prepare.IMAGE_REENCODED] == 1
    back = {r.image_id: r for r in records.iterate_split(str(tmp_path / "out"), "train")}
    decoded = tf.io.decode_image(back["train_00001"].image_encoded, channels=3).numpy()
    np.testing.assert_array_equal(decoded, expected)
    with open(os.path.join(root, "JPEGImages", "train_00000.jpg"), "rb") as f:
        assert back["train_00000"].image_encoded == f.read()  # stored as it is


def test_num_shards():
    assert prepare._num_shards(None, 10582, 1000) == 11
    assert prepare._num_shards(None, 3, 1000) == 1
    assert prepare._num_shards(7, 3, 1000) == 7


def test_ensure_embedded_coco_records(tmp_path, absl_logs):
    kwargs = dict(num_train=6, num_val=3, image_size=48)
    out = prepare.ensure_embedded_coco_records(str(tmp_path), num_shards=2, **kwargs)
    for split, count in (("train", 6), ("val", 3)):
        info = records.read_split_info(out, split)
        assert info["num_images"] == count
        assert info["class_names"] == list(embedded_coco.EMBEDDED_COCO_CLASSES)
    back = list(records.iterate_split(out, "train"))
    assert {r.dataset for r in back} == {prepare.COCO_DATASET}
    for r in back:
        values = set(np.unique(r.class_mask).tolist()) - {255}
        assert values <= set(range(len(embedded_coco.EMBEDDED_COCO_CLASSES)))
        assert values <= set(r.image_labels)
        assert len(r.boxes) == len(r.box_classes) >= 1
        assert (r.boxes[:, 2:] > r.boxes[:, :2]).all()
        assert r.boxes[:, 2].max() <= r.height and r.boxes[:, 3].max() <= r.width
    absl_logs.clear()
    assert prepare.ensure_embedded_coco_records(str(tmp_path), num_shards=2, **kwargs) == out
    assert "generating" not in absl_logs.text


@pytest.mark.slow
def test_prepare_data_script_coco(tmp_path):
    """The command line on a COCO tree written by the companion generator."""
    root = str(tmp_path / "coco")
    embedded_coco.generate_coco(root, num_train=2, num_val=2, image_size=32)
    # Rename to a 2014-style split to exercise --coco_split.
    os.replace(os.path.join(root, "val"), os.path.join(root, "val2014"))
    os.replace(os.path.join(root, "annotations", "instances_val.json"),
               os.path.join(root, "annotations", "instances_val2014.json"))
    path = os.path.join(root, "annotations", "instances_val2014.json")
    with open(path) as f:
        data = json.load(f)
    # The companion's categories are not COCO's: call every object a person.
    data["categories"] = [{"id": 1, "name": "person"}]
    for ann in data["annotations"]:
        ann["category_id"] = 1
    data["images"].append({"id": 5, "file_name": "missing.jpg", "height": 4, "width": 4})
    with open(path, "w") as f:
        json.dump(data, f)
    out = str(tmp_path / "records")
    command = [sys.executable, os.path.join(REPO, "scripts", "prepare_data.py"),
               "--dataset=coco", f"--coco_root={root}", "--coco_split=val2014",
               f"--out_dir={out}"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert result.returncode == 0, result.stderr
    assert "val: 2 images written, 1 skipped" in result.stdout
    assert "skipped missing: " in result.stdout and "missing.jpg" in result.stdout
    info = records.read_split_info(out, "val")
    assert info["num_images"] == 2 and info["class_names"][1] == "person"


def test_ensure_embedded_records_default_path(tmp_path, monkeypatch):
    """The path the commands take when no --data_dir is given: $KSEG_DATA_DIR,
    generated and converted on first use, reused afterwards."""
    monkeypatch.setenv("KSEG_DATA_DIR", str(tmp_path))
    real = embedded.ensure_embedded
    monkeypatch.setattr(embedded, "ensure_embedded", lambda cache_dir=None: real(
        cache_dir, num_train=6, num_val=2, image_size=32))
    out = prepare.ensure_embedded_records(num_shards=1)
    assert out.startswith(str(tmp_path)) and out.endswith("records")
    assert [len(list(records.iterate_split(out, s))) for s in ("train", "val")] == [6, 2]
    stamp = os.path.getmtime(os.path.join(out, "train.json"))
    assert prepare.ensure_embedded_records(num_shards=1) == out
    assert os.path.getmtime(os.path.join(out, "train.json")) == stamp  # not converted again
