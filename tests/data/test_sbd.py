"""Tests of PASCAL VOC 2012 + SBD train_aug preparation (kseg/data/sbd.py,
prepare.prepare_voc) on tiny trees in the exact on-disk formats."""

import os

import numpy as np
import pytest
from PIL import Image

from kseg.data import prepare, records, sbd, voc
from kseg.data.errors import DataError
from kseg.data.palette import write_label_png

H, W = 12, 16
VOC_TRAIN = ("2007_000032", "2007_000039")
VOC_VAL = ("2007_000063", "2007_000068")
SBD_ONLY = ("2008_000002", "2008_000003")
CAT, DOG, BOTTLE, BIRD, PERSON, SOFA = (voc.VOC_CLASSES.index(n) for n in (
    "cat", "dog", "bottle", "bird", "person", "sofa"))


def _xml(objects):
    """VOC annotation XML; objects = [(name, xmin, ymin, xmax, ymax)], 1-based inclusive."""
    body = "".join(
        f"<object><name>{name}</name><pose>Unspecified</pose><truncated>0</truncated>"
        f"<difficult>0</difficult><bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin>"
        f"<xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>"
        for name, x1, y1, x2, y2 in objects)
    return (f"<annotation><folder>VOC2012</folder><size><width>{W}</width>"
            f"<height>{H}</height><depth>3</depth></size>{body}</annotation>\n")


def _voc_masks():
    """Class and object masks of 2007_000032: a cat (void border) and a person."""
    classes = np.zeros((H, W), np.uint8)
    objects = np.zeros((H, W), np.uint8)
    classes[2:6, 3:9], objects[2:6, 3:9] = CAT, 1
    classes[6, 3:9], objects[6, 3:9] = 255, 255
    classes[7:11, 10:15], objects[7:11, 10:15] = PERSON, 2
    return classes, objects


def _sbd_mask(image_id):
    mask = np.zeros((H, W), np.uint8)
    if image_id == "2008_000002":
        mask[0:6, 0:8] = DOG
    else:
        mask[4:10, 6:9] = BOTTLE
    return mask


def _write_tree(tmp_path, with_sbd_lists=True):
    """VOC2012 tree (4 segmented images) plus an SBD root (2 more images)."""
    voc_root = tmp_path / "VOCdevkit" / "VOC2012"
    sbd_root = tmp_path / "SBD"
    for folder in ("JPEGImages", "SegmentationClass", "SegmentationObject", "Annotations",
                   "ImageSets/Segmentation"):
        os.makedirs(voc_root / folder, exist_ok=True)
    os.makedirs(sbd_root / sbd.AUG_DIRNAME, exist_ok=True)
    rng = np.random.default_rng(0)
    classes, objects = _voc_masks()
    for image_id in VOC_TRAIN + VOC_VAL + SBD_ONLY:
        pixels = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(voc_root / "JPEGImages" / f"{image_id}.jpg", quality=95)
    for image_id in VOC_TRAIN + VOC_VAL:
        write_label_png(str(voc_root / "SegmentationClass" / f"{image_id}.png"), classes)
        write_label_png(str(voc_root / "SegmentationObject" / f"{image_id}.png"), objects)
        # The XML disagrees with the instance masks: instance masks win.
        (voc_root / "Annotations" / f"{image_id}.xml").write_text(_xml([("cat", 1, 1, 2, 2)]))
        # The augmented set holds VOC's own masks as greyscale indices.
        Image.fromarray(classes, mode="L").save(sbd_root / sbd.AUG_DIRNAME / f"{image_id}.png")
    (voc_root / "Annotations" / "2008_000002.xml").write_text(_xml([
        ("dog", 1, 1, 8, 6),  # rows 0..5, cols 0..7 -> [0, 0, 6, 8]
        ("sofa", 10, 3, 18, 12),  # leaves the 16-wide image: clipped
        ("bird", 17, 2, 20, 5)]))  # wholly outside: dropped
    (voc_root / "Annotations" / "2008_000003.xml").write_text(_xml([("bottle", 7, 5, 9, 10)]))
    for image_id in SBD_ONLY:
        Image.fromarray(_sbd_mask(image_id), mode="L").save(
            sbd_root / sbd.AUG_DIRNAME / f"{image_id}.png")
    lists = voc_root / "ImageSets" / "Segmentation"
    (lists / "train.txt").write_text("".join(f"{i}\n" for i in VOC_TRAIN))
    (lists / "val.txt").write_text("".join(f"{i}\n" for i in VOC_VAL))
    if with_sbd_lists:  # SBD's release keeps them in dataset/; one VOC val image among them.
        os.makedirs(sbd_root / "dataset", exist_ok=True)
        (sbd_root / "dataset" / "train.txt").write_text("2008_000002\n2007_000063\n")
        (sbd_root / "dataset" / "val.txt").write_text("2008_000003\n")
    return str(voc_root), str(sbd_root)


def test_prepare_voc_with_sbd_writes_train_val_train_aug(tmp_path):
    voc_root, sbd_root = _write_tree(tmp_path)
    out = str(tmp_path / "records")
    summaries = prepare.prepare_voc(voc_root, out, sbd_root=sbd_root)
    assert sorted(summaries) == ["train", "train_aug", "val"]
    assert [summaries[s].written for s in ("train", "val", "train_aug")] == [2, 2, 4]
    assert not any(s.skipped for s in summaries.values())
    info = records.read_split_info(out, "train_aug")
    assert info["class_names"] == list(voc.VOC_CLASSES)
    # (SBD train + SBD val + VOC train) - VOC val.
    assert info["ids"] == sorted(VOC_TRAIN + SBD_ONLY)

    train = {r.image_id: r for r in records.iterate_split(out, "train")}
    r = train["2007_000032"]
    classes, _ = _voc_masks()
    np.testing.assert_array_equal(r.class_mask, classes)
    assert r.image_labels == (0, CAT, PERSON) and r.dataset == prepare.VOC_DATASET
    # Boxes from SegmentationObject (tight, half-open), not from the XML.
    np.testing.assert_array_equal(r.boxes, [[2, 3, 6, 9], [7, 10, 11, 15]])
    np.testing.assert_array_equal(r.box_classes, [CAT, PERSON])

    aug = {r.image_id: r for r in records.iterate_split(out, "train_aug")}
    r = aug["2008_000002"]
    np.testing.assert_array_equal(r.class_mask, _sbd_mask("2008_000002"))
    assert r.image_labels == (0, DOG)
    # XML 1-based inclusive -> 0-based half-open: dog xmin=1..xmax=8 covers
    # columns 0..7 = [0, 8); the sofa's xmax=18 is clipped to the width 16;
    # the bird, wholly outside, is dropped.
    np.testing.assert_array_equal(r.boxes, [[0, 0, 6, 8], [2, 9, 12, 16]])
    np.testing.assert_array_equal(r.box_classes, [DOG, SOFA])
    np.testing.assert_array_equal(aug["2008_000003"].boxes, [[4, 6, 10, 9]])
    assert summaries["train_aug"].boxes_clipped == 1
    assert summaries["train_aug"].boxes_dropped == 1
    np.testing.assert_array_equal(aug["2007_000039"].class_mask, classes)


def test_train_aug_list_rules(tmp_path):
    voc_root, sbd_root = _write_tree(tmp_path)
    built = sbd.train_aug_ids(voc_root, sbd_root)
    assert built.ids == sorted(VOC_TRAIN + SBD_ONLY)
    assert "train.txt" in built.source and not built.held_out and not built.duplicates
    # Without SBD's lists: every PNG of SegmentationClassAug + VOC train - VOC val.
    os.remove(os.path.join(sbd_root, "dataset", "train.txt"))
    assert sbd.train_aug_ids(voc_root, sbd_root).ids == sorted(VOC_TRAIN + SBD_ONLY)
    # A given list wins, in the commonly distributed path format; a VOC val
    # id in it is held out, a repeated id kept once.
    with open(os.path.join(sbd_root, "train_aug.txt"), "w") as f:
        for image_id in ("2008_000002", "2007_000068", "2008_000002"):
            f.write(f"/JPEGImages/{image_id}.jpg /SegmentationClassAug/{image_id}.png\n")
    given = sbd.train_aug_ids(voc_root, sbd_root)
    assert given.ids == ["2008_000002"]
    assert given.held_out == ["2007_000068"] and given.duplicates == ["2008_000002"]
    summary = prepare.prepare_voc(voc_root, str(tmp_path / "out"), sbd_root=sbd_root,
                                  splits=["train_aug"])["train_aug"]
    assert summary.written == 1
    reasons = dict(summary.skipped)
    assert "VOC val" in reasons["2007_000068"] and "train_aug.txt" in reasons["2007_000068"]
    assert "more than once" in reasons["2008_000002"]
    with pytest.raises(DataError, match="train_aug.txt"):
        prepare.prepare_voc(voc_root, str(tmp_path / "strict"), sbd_root=sbd_root,
                            splits=["train_aug"], strict=True)


def test_parse_id_line():
    assert voc.parse_id_line("2007_000032\n") == "2007_000032"
    assert voc.parse_id_line("2007_000032  1") == "2007_000032"
    assert voc.parse_id_line(
        "/JPEGImages/2007_000032.jpg /SegmentationClassAug/2007_000032.png") == "2007_000032"
    assert voc.parse_id_line("   ") is None


def test_aug_dir_under_voc_root_and_fallbacks(tmp_path):
    voc_root, sbd_root = _write_tree(tmp_path, with_sbd_lists=False)
    os.replace(os.path.join(sbd_root, sbd.AUG_DIRNAME), os.path.join(voc_root, sbd.AUG_DIRNAME))
    assert sbd.find_aug_dir(voc_root) == os.path.join(voc_root, sbd.AUG_DIRNAME)
    # A VOC train image missing from the augmented set keeps VOC's own mask;
    # an image missing from JPEGImages is read from SBD's img/.
    os.remove(os.path.join(voc_root, sbd.AUG_DIRNAME, "2007_000039.png"))
    os.makedirs(os.path.join(sbd_root, "img"))
    os.replace(os.path.join(voc_root, "JPEGImages", "2008_000003.jpg"),
               os.path.join(sbd_root, "img", "2008_000003.jpg"))
    out = str(tmp_path / "out")
    summaries = prepare.prepare_voc(voc_root, out, sbd_root=sbd_root)
    assert summaries["train_aug"].written == 4 and not summaries["train_aug"].skipped
    aug = {r.image_id: r for r in records.iterate_split(out, "train_aug")}
    np.testing.assert_array_equal(aug["2007_000039"].class_mask, _voc_masks()[0])
    np.testing.assert_array_equal(aug["2008_000003"].class_mask, _sbd_mask("2008_000003"))


def test_without_augmented_set(tmp_path):
    voc_root, sbd_root = _write_tree(tmp_path)
    out = str(tmp_path / "out")
    devkit = os.path.dirname(voc_root)  # VOCdevkit/ is accepted for VOCdevkit/VOC2012/
    assert sorted(prepare.prepare_voc(devkit, out)) == ["train", "val"]
    with pytest.raises(DataError, match="SegmentationClassAug"):
        prepare.prepare_voc(voc_root, out, splits=["train_aug"])
    # An --sbd_root without the augmented set is a mistake, not a no-op.
    with pytest.raises(DataError, match=r"nowhere.*SegmentationClassAug"):
        prepare.prepare_voc(voc_root, out, sbd_root=str(tmp_path / "nowhere"))


def _truncate(path):
    with open(path, "rb") as f:
        blob = f.read()
    with open(path, "wb") as f:
        f.write(blob[:len(blob) // 2])


def _break(case, voc_root, sbd_root):
    """Applies one bad input; returns (split, bad id, text the message must hold)."""
    aug = os.path.join(sbd_root, sbd.AUG_DIRNAME)
    if case == "truncated_image":
        _truncate(os.path.join(voc_root, "JPEGImages", "2008_000003.jpg"))
        return "train_aug", "2008_000003", os.path.join("JPEGImages", "2008_000003.jpg")
    if case == "mask_size":
        Image.fromarray(np.zeros((H, W + 1), np.uint8), mode="L").save(
            os.path.join(aug, "2008_000003.png"))
        return "train_aug", "2008_000003", "2008_000003.png"
    if case == "unknown_label":
        mask = _sbd_mask("2008_000003")
        mask[0, 0] = 147
        Image.fromarray(mask, mode="L").save(os.path.join(aug, "2008_000003.png"))
        return "train_aug", "2008_000003", "2008_000003.png"
    if case == "rgb_mask":
        Image.new("RGB", (W, H), (128, 0, 0)).save(os.path.join(aug, "2008_000003.png"))
        return "train_aug", "2008_000003", "2008_000003.png"
    if case == "unknown_class_in_xml":
        with open(os.path.join(voc_root, "Annotations", "2008_000003.xml"), "w") as f:
            f.write(_xml([("zebra", 1, 1, 2, 2)]))
        return "train_aug", "2008_000003", "2008_000003.xml"
    if case == "listed_but_missing":
        with open(voc.split_path(voc_root, "train"), "a") as f:
            f.write("2007_009999\n")
        return "train", "2007_009999", "2007_009999.jpg"
    if case == "duplicate_id":
        with open(voc.split_path(voc_root, "train"), "a") as f:
            f.write("2007_000032\n")
        return "train", "2007_000032", "train.txt"
    raise ValueError(case)


@pytest.mark.parametrize("case", ["truncated_image", "mask_size", "unknown_label", "rgb_mask",
                                  "unknown_class_in_xml", "listed_but_missing",
                                  "duplicate_id"])
def test_bad_input_is_skipped_named_and_counted(tmp_path, case):
    voc_root, sbd_root = _write_tree(tmp_path)
    split, bad_id, named = _break(case, voc_root, sbd_root)
    out = str(tmp_path / "out")
    summary = prepare.prepare_voc(voc_root, out, sbd_root=sbd_root, splits=[split])[split]
    assert [image_id for image_id, _ in summary.skipped] == [bad_id]
    assert named in summary.skipped[0][1]
    assert f"skipped {bad_id}: " in str(summary)
    ids = {r.image_id for r in records.iterate_split(out, split)}
    assert summary.written == len(ids) == (2 if split == "train" else 3)

    strict_out = str(tmp_path / "strict")
    with pytest.raises(DataError) as error:
        prepare.prepare_voc(voc_root, strict_out, sbd_root=sbd_root, splits=[split],
                            strict=True, num_shards=1)
    assert named in str(error.value)
    leftovers = os.listdir(strict_out) if os.path.isdir(strict_out) else []
    assert not [name for name in leftovers if name.endswith((".tfrecord", ".json"))]
