import numpy as np
import pytest
import tensorflow as tf

from kseg import experiment
from kseg import constants
from kseg.config import DataConfig, InputConfig
from kseg.data import pipeline, records


def _batch(tiny_records, kinds=("strong",), per_batch=4, crop=49, seed=0, **kw):
    pattern = records.split_pattern(tiny_records, "train")
    streams = [pipeline.Stream(pattern, k, per_batch) for k in kinds]
    config = InputConfig(num_classes=6, crop_size=crop, seed=seed, **kw)
    return next(iter(pipeline.train_dataset(streams, config)))


def test_batch_shapes_and_kinds(tiny_records):
    b = _batch(tiny_records, ("strong", "em_adapt", "bbox_rect"), per_batch=3)
    assert b["image"].shape == (9, 49, 49, 3)
    assert b["label"].shape == b["valid"].shape == (9, 7, 7)
    assert b["box_mask"].shape == (9, 7, 7, 6) and b["image_labels"].shape == (9, 6)
    np.testing.assert_array_equal(b["kind"], [0] * 3 + [constants.KIND_ID["em_adapt"]] * 3
                                  + [constants.KIND_ID["bbox_rect"]] * 3)
    # Weak examples carry no pixel labels into the step.
    assert (b["label"].numpy()[3:6] == 255).all()


def test_padding_is_mean_ignored_and_invalid(tiny_records):
    b = _batch(tiny_records, crop=81)  # images are 64x64: rows/cols 64.. are padding
    valid, label, image = b["valid"].numpy(), b["label"].numpy(), b["image"].numpy()
    # Score pixel i sits on crop pixel 8i: i >= 8 is padding (with or without flip
    # the padded columns are at one side).
    assert (~valid[:, 8, :]).all() and (label[:, 8, :] == 255).all()
    assert valid[:, :8].any(axis=(1, 2)).all()
    assert (image[:, 64:] == 0).all()  # mean after preprocess


def test_boxes_follow_crop_and_flip(tiny_records):
    # Boxes are tight around instances, so every object pixel must lie in a
    # box of its own class, whatever the crop and mirror did.
    for seed in range(3):
        b = _batch(tiny_records, crop=33, per_batch=8, seed=seed)
        label, box_mask = b["label"].numpy(), b["box_mask"].numpy()
        fg = (label > 0) & (label < 255)
        cls = np.where(fg, label, 0)
        inside = np.take_along_axis(box_mask, cls[..., None], -1)[..., 0]
        assert inside[fg].all()
        assert not box_mask[..., 0].any()


def test_bbox_rect_covers_objects(tiny_records):
    strong = _batch(tiny_records, ("strong",), per_batch=8, crop=65, seed=5)
    rect = _batch(tiny_records, ("bbox_rect",), per_batch=8, crop=65, seed=5)
    gt, box = strong["label"].numpy(), rect["label"].numpy()
    fg = (gt > 0) & (gt < 255)
    assert (box[fg] > 0).all()  # same crops (same seed): objects are inside their rectangles
    # VOC's 'void' outlines (255 in the ground truth) lie one pixel outside the
    # objects, so they may fall outside the tight boxes; Bbox-Rect gives them a
    # label like any pixel. Padding is ignored in both.
    valid = strong["valid"].numpy()
    outline = (gt == 255) & valid
    assert outline.any() and (box[outline] < 255).all()
    assert (box[~valid] == 255).all() and (gt[~valid] == 255).all()


def test_image_labels_from_image_or_crop(tiny_records):
    whole = _batch(tiny_records, crop=33, seed=2)
    crop = _batch(tiny_records, crop=33, seed=2, image_labels_from="crop")
    w, c = whole["image_labels"].numpy(), crop["image_labels"].numpy()
    assert (c <= w).all()  # the crop's labels are a subset of the image's
    assert w.sum() >= c.sum()


def test_same_seed_same_batches(tiny_records):
    a = _batch(tiny_records, seed=7)
    b = _batch(tiny_records, seed=7)
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["label"], b["label"])


def test_semi_split_is_disjoint_and_fixed_per_batch(tiny_records):
    data = DataConfig(data_dir=tiny_records, supervision="em_fixed", num_strong=10,
                                 strong_per_batch=2, weak_per_batch=5)
    streams = experiment.make_streams(data, tiny_records, seed=0)
    assert len(streams[0].ids) == 10 and streams[1].exclude_ids
    config = InputConfig(num_classes=6, crop_size=33, seed=0)
    for b in pipeline.train_dataset(streams, config).take(3):
        np.testing.assert_array_equal(b["kind"], [0] * 2 + [constants.KIND_ID["em_fixed"]] * 5)
    with pytest.raises(ValueError, match="num_strong"):
        experiment.make_streams(DataConfig(num_strong=1000), tiny_records, 0)


def test_stream_filter_by_ids(tiny_records):
    info = records.read_split_info(tiny_records, "train")
    keep = tuple(info["ids"][:3])
    pattern = records.split_pattern(tiny_records, "train")
    ds = pipeline._records(pattern, seed=0).filter(pipeline._id_filter(keep, exclude=False))
    ids = {records.from_example(s.numpy()).image_id for s in ds}
    assert ids == set(keep)


def test_bad_stream_settings():
    with pytest.raises(ValueError, match="kind"):
        pipeline.Stream("x", "pixels", 2)
    with pytest.raises(ValueError, match="image_labels_from"):
        InputConfig(num_classes=3, image_labels_from="box")
    with pytest.raises(FileNotFoundError, match="no TFRecord"):
        pipeline.train_dataset([pipeline.Stream("/nonexistent/*.tfrecord", "strong", 1)],
                               InputConfig(num_classes=3))


def test_multi_hot():
    np.testing.assert_array_equal(pipeline.multi_hot(tf.constant([0, 2, 2, 9]), 4), [1, 0, 1, 0])
    np.testing.assert_array_equal(pipeline.multi_hot(tf.constant([], tf.int32), 3), [0, 0, 0])


def test_label_map_moves_every_annotation_into_the_model_labels(tiny_records):
    """Cross-Joint: a 6-label dataset trained inside a 9-label model."""
    label_map = (0, 2, 4, 6, 8, 1)
    pattern = records.split_pattern(tiny_records, "train")
    config = InputConfig(num_classes=9, crop_size=33, seed=4)
    plain = next(iter(pipeline.train_dataset(
        [pipeline.Stream(pattern, "strong", 6)],
        InputConfig(num_classes=6, crop_size=33, seed=4))))
    mapped = next(iter(pipeline.train_dataset(
        [pipeline.Stream(pattern, "strong", 6, label_map=label_map)], config)))
    lut = np.array(list(label_map) + [0] * 249 + [255])
    np.testing.assert_array_equal(mapped["label"], lut[plain["label"].numpy()])
    np.testing.assert_array_equal(mapped["image_labels"].numpy()[:, list(label_map)],
                                  plain["image_labels"])
    np.testing.assert_array_equal(mapped["box_mask"].numpy()[..., list(label_map)],
                                  plain["box_mask"])
    space = np.zeros(9, bool)
    space[list(label_map)] = True
    assert (mapped["label_space"].numpy() == space).all()
    assert plain["label_space"].numpy().all()
    with pytest.raises(ValueError, match="one to one"):
        pipeline.Stream(pattern, "strong", 1, label_map=(0, 1, 1))
