import io
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from kseg.data import embedded, prepare, records
from kseg.data.errors import DataError


def _record(i, with_mask=True):
    rng = np.random.default_rng(i)
    image = rng.integers(0, 256, (12, 9, 3), dtype=np.uint8)
    mask = rng.choice([0, 1, 2, 255], (12, 9)).astype(np.uint8) if with_mask else None
    return records.Record(
        image_id=f"img{i}", image_encoded=records.encode_image(image, "PNG"), height=12, width=9,
        class_mask=mask, image_labels=records.labels_present(mask) if with_mask else (3,),
        boxes=np.array([[0.0, 1.5, 4.0, 9.0], [2.0, 2.0, 12.0, 3.0]], np.float32),
        box_classes=np.array([1, 2]), dataset=i % 2)


def test_example_round_trip_python():
    for with_mask in (True, False):
        r = _record(1, with_mask)
        back = records.from_example(records.to_example(r))
        assert back.image_id == r.image_id and back.image_encoded == r.image_encoded
        assert (back.height, back.width, back.dataset) == (12, 9, 1)
        assert back.image_labels == r.image_labels
        np.testing.assert_array_equal(back.boxes, r.boxes)
        np.testing.assert_array_equal(back.box_classes, r.box_classes)
        if with_mask:
            np.testing.assert_array_equal(back.class_mask, r.class_mask)
        else:
            assert back.class_mask is None


def test_parse_example_in_graph_matches_what_was_written():
    r = _record(2)
    f = tf.function(records.parse_example)(tf.constant(records.to_example(r)))
    np.testing.assert_array_equal(f["image"].numpy(), tf.io.decode_png(r.image_encoded).numpy())
    np.testing.assert_array_equal(f["label"].numpy(), r.class_mask)
    np.testing.assert_array_equal(f["boxes"].numpy(), r.boxes)
    np.testing.assert_array_equal(f["image_labels"].numpy(), r.image_labels)
    assert f["has_label"].numpy()
    no_mask = records.parse_example(tf.constant(records.to_example(_record(3, False))))
    assert not no_mask["has_label"].numpy()
    assert (no_mask["label"].numpy() == 255).all() and no_mask["label"].shape == (12, 9)


def test_jpegs_decode_as_pil_decodes_them():
    """Accurate integer DCT: the pixels PIL (libjpeg's default) gives, not TensorFlow's fast DCT."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (40, 56, 3), np.uint8)
    encoded = records.encode_image(image, "JPEG")
    expected = np.asarray(Image.open(io.BytesIO(encoded)).convert("RGB"))
    decoded = records.decode_rgb(tf.constant(encoded)).numpy()
    np.testing.assert_array_equal(decoded, expected)
    fast = tf.io.decode_jpeg(encoded).numpy()
    assert not np.array_equal(fast, expected)  # the default would differ
    png = records.encode_image(image, "PNG")
    np.testing.assert_array_equal(records.decode_rgb(tf.constant(png)).numpy(), image)


def test_write_split_round_trip_and_resume(tmp_path):
    recs = {f"img{i}": _record(i) for i in range(7)}
    out = str(tmp_path / "rec")
    summary = records.write_split(sorted(recs), recs.__getitem__, out, "train",
                                  ["bg", "a", "b"], num_shards=3)
    assert summary.written == 7 and not summary.skipped
    back = {r.image_id: r for r in records.iterate_split(out, "train")}
    assert sorted(back) == sorted(recs)
    for k, r in recs.items():
        np.testing.assert_array_equal(back[k].class_mask, r.class_mask)
        assert back[k].image_encoded == r.image_encoded
    info = records.read_split_info(out, "train")
    assert info["num_images"] == 7 and info["class_names"] == ["bg", "a", "b"]
    # A shard lost mid-write (its temp file) is rewritten; complete ones are kept.
    lost = records.shard_path(out, "train", 1, 3)
    os.remove(lost)
    calls = []
    summary = records.write_split(sorted(recs), lambda i: calls.append(i) or recs[i], out,
                                  "train", ["bg", "a", "b"], num_shards=3)
    assert summary.shards_reused == 2 and sorted(calls) == sorted(recs)[1::3]
    assert not [p for p in os.listdir(out) if ".tmp" in p]


def test_write_split_skips_or_raises_on_bad_examples(tmp_path):
    def load(i):
        if i == "bad":
            raise DataError("/data/JPEGImages/bad.jpg: cannot decode")
        return _record(0)
    summary = records.write_split(["ok", "bad"], load, str(tmp_path / "a"), "train", ["bg"],
                                  num_shards=1)
    assert summary.written == 1 and summary.skipped[0][0] == "bad"
    assert "bad.jpg" in str(summary)
    with pytest.raises(DataError, match="bad.jpg"):
        records.write_split(["ok", "bad"], load, str(tmp_path / "b"), "train", ["bg"],
                            strict=True)
    with pytest.raises(DataError, match="empty"):
        records.write_split([], load, str(tmp_path / "c"), "train", ["bg"])
    with pytest.raises(DataError, match="duplicate"):
        records.write_split(["ok", "ok"], load, str(tmp_path / "d"), "train", ["bg"])


def test_missing_split_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="prepare_data"):
        records.read_split_info(str(tmp_path), "val")


def test_voc_layout_to_records_keeps_everything(tiny_records):
    root = os.path.dirname(tiny_records)
    from kseg.data import voc
    for r in list(records.iterate_split(tiny_records, "val"))[:5]:
        example = voc.load_example(root, r.image_id, 6, embedded.EMBEDDED_CLASSES)
        np.testing.assert_array_equal(r.class_mask, example.class_mask)
        np.testing.assert_array_equal(r.boxes, example.boxes)
        with open(os.path.join(root, "JPEGImages", r.image_id + ".jpg"), "rb") as f:
            assert f.read() == r.image_encoded
        assert 0 in r.image_labels and set(r.image_labels) == set(
            int(v) for v in np.unique(example.class_mask) if v != 255)


def test_prepare_reports_bad_files_by_name(tmp_path):
    root = str(tmp_path / "voc")
    embedded.generate(root, num_train=4, num_val=2, image_size=32, seed=0)
    ids = open(os.path.join(root, "ImageSets/Segmentation/train.txt")).read().split()
    with open(os.path.join(root, "JPEGImages", ids[1] + ".jpg"), "wb") as f:
        f.write(b"not a jpeg")
    with pytest.raises(DataError, match=ids[1] + ".jpg"):
        prepare.prepare_voc_layout(root, str(tmp_path / "out"), ["train"],
                                   embedded.EMBEDDED_CLASSES, strict=True)
    summaries = prepare.prepare_voc_layout(root, str(tmp_path / "out2"), ["train"],
                                           embedded.EMBEDDED_CLASSES)
    assert summaries["train"].written == 3 and summaries["train"].skipped[0][0] == ids[1]
