"""Reader of MS-COCO instance annotations (2014 layout), via pycocotools.

    <root>/annotations/instances_<split>.json
    <root>/<split>/<file_name>
        e.g. train2014/COCO_train2014_000000000009.jpg

Labels: the JSON's categories sorted by id become contiguous labels 1..K
(COCO's 80 categories, ids 1..90 with gaps, become 1..80); 0 is background;
255 is ignored and marks crowd regions (`iscrowd` = 1: a group of objects
whose pixels are not split into instances).

Overlaps. COCO's instance masks may overlap, a class mask holds one label a
pixel, so the masks are painted in a fixed order: crowd regions first (255),
then the other instances from the largest (in pixels) to the smallest, ties
by annotation id. The smaller instance wins a shared pixel, since a small
object overlapping a large one is usually in front of it (a cup on a table, a
person on a couch), and a precise instance outline wins over a crowd region.

Boxes: one per non-crowd instance, COCO's [x, y, width, height] (float
pixels, 0-based) turned into kseg's [ymin, xmin, ymax, xmax] = [y, x, y + h,
x + w]; clipping to the image and dropping empty boxes is left to the caller
(kseg.data.prepare counts both). Image-level labels: the labels present in the
class mask plus the categories of crowd regions (they are in the image even
though their pixels are ignored).

The image id of a record is the file name without extension
("COCO_train2014_000000000009"), the numeric COCO id stays in `coco_id`.
"""

import collections
import dataclasses
import json
import math
import os

import numpy as np
from pycocotools import mask as mask_utils

from kseg.constants import IGNORE_LABEL
from kseg.data import voc
from kseg.data.errors import DataError

# The 80 categories of COCO 2014/2017 instances: (category id, name).
COCO_CATEGORIES = (
    (1, "person"), (2, "bicycle"), (3, "car"), (4, "motorcycle"),
    (5, "airplane"), (6, "bus"), (7, "train"), (8, "truck"), (9, "boat"),
    (10, "traffic light"), (11, "fire hydrant"), (13, "stop sign"),
    (14, "parking meter"), (15, "bench"), (16, "bird"), (17, "cat"),
    (18, "dog"), (19, "horse"), (20, "sheep"), (21, "cow"),
    (22, "elephant"), (23, "bear"), (24, "zebra"), (25, "giraffe"),
    (27, "backpack"), (28, "umbrella"), (31, "handbag"), (32, "tie"),
    (33, "suitcase"), (34, "frisbee"), (35, "skis"), (36, "snowboard"),
    (37, "sports ball"), (38, "kite"), (39, "baseball bat"),
    (40, "baseball glove"), (41, "skateboard"), (42, "surfboard"),
    (43, "tennis racket"), (44, "bottle"), (46, "wine glass"), (47, "cup"),
    (48, "fork"), (49, "knife"), (50, "spoon"), (51, "bowl"),
    (52, "banana"), (53, "apple"), (54, "sandwich"), (55, "orange"),
    (56, "broccoli"), (57, "carrot"), (58, "hot dog"), (59, "pizza"),
    (60, "donut"), (61, "cake"), (62, "chair"), (63, "couch"),
    (64, "potted plant"), (65, "bed"), (67, "dining table"), (70, "toilet"),
    (72, "tv"), (73, "laptop"), (74, "mouse"), (75, "remote"),
    (76, "keyboard"), (77, "cell phone"), (78, "microwave"), (79, "oven"),
    (80, "toaster"), (81, "sink"), (82, "refrigerator"), (84, "book"),
    (85, "clock"), (86, "vase"), (87, "scissors"), (88, "teddy bear"),
    (89, "hair drier"), (90, "toothbrush"))

# Label order of prepared COCO records: background, then by category id.
COCO_CLASSES = ("background",) + tuple(name for _, name in COCO_CATEGORIES)

# Each VOC class name -> the COCO category name of the same objects.
VOC_TO_COCO = {
    "background": "background", "aeroplane": "airplane",
    "bicycle": "bicycle", "bird": "bird", "boat": "boat",
    "bottle": "bottle", "bus": "bus", "car": "car", "cat": "cat",
    "chair": "chair", "cow": "cow", "diningtable": "dining table",
    "dog": "dog", "horse": "horse", "motorbike": "motorcycle",
    "person": "person", "pottedplant": "potted plant", "sheep": "sheep",
    "sofa": "couch", "train": "train", "tvmonitor": "tv"}


def classes_of(categories):
    """Label names of a category table: background, then the names by id."""
    return ("background",) + tuple(
        name for _, name in sorted(categories, key=lambda c: c[0]))


def label_map(source_classes, target_classes, names=None):
    """Label of each source class in the target label space.

    Args:
      source_classes: names in source label order (background first).
      target_classes: names in target label order.
      names: optional {source name: target name}; names missing from it map
        to themselves.

    Returns:
      tuple of len(source_classes) ints, entry l = target label of source
      label l (a `label_map` for kseg.data.pipeline.remap_labels).

    Raises:
      ValueError: a source class has no target class.
    """
    names = names or {}
    index = {name: label for label, name in enumerate(target_classes)}
    missing = [name for name in source_classes
               if names.get(name, name) not in index]
    if missing:
        raise ValueError(f"classes {missing} have no counterpart among "
                         f"{list(target_classes)}")
    return tuple(index[names.get(name, name)] for name in source_classes)


def voc_to_coco_labels():
    """(21,) COCO contiguous label of each VOC label 0..20 (0 -> 0).

    E.g. aeroplane (1) -> airplane (5), sofa (18) -> couch (58),
    tvmonitor (20) -> tv (63).
    """
    return label_map(voc.VOC_CLASSES, COCO_CLASSES, VOC_TO_COCO)


def instances_path(root, split):
    return os.path.join(root, "annotations", f"instances_{split}.json")


def image_dir(root, split):
    return os.path.join(root, split)


@dataclasses.dataclass(frozen=True)
class CocoImage:
    """One entry of the JSON's "images"."""
    coco_id: int
    image_id: str  # file name without extension
    file_name: str
    height: int
    width: int


@dataclasses.dataclass
class CocoIndex:
    """A validated instances file, indexed by image.

    Attributes:
      json_path: the file.
      classes: label names, background first.
      label_of_category: {category id: contiguous label}.
      images: {image_id: CocoImage}, in COCO id order.
      annotations: {coco_id: [annotation dict, ...]}.
      rejected: [(image id or entry, reason)] for image entries left out
        (repeated ids or file names, missing fields).
      orphan_annotations: annotations of an image id the file does not list.
    """
    json_path: str
    classes: tuple
    label_of_category: dict
    images: dict
    annotations: dict
    rejected: list
    orphan_annotations: int


def _positive_int(value):
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def read_instances(json_path, categories=None):
    """Loads and validates an instances JSON.

    Args:
      json_path: instances_<split>.json.
      categories: expected ((id, name), ...) table defining the labels (e.g.
        COCO_CATEGORIES); a JSON category with one of these ids must have the
        same name. None: the JSON's own categories.

    Returns:
      CocoIndex.

    Raises:
      DataError naming the file: unreadable or not COCO instances JSON, or
      its categories contradict `categories`.
    """
    try:
        with open(json_path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as error:
        raise DataError(
            f"{json_path}: cannot read COCO instances JSON ({error})"
        ) from error
    if not isinstance(data, dict) or not all(
            isinstance(data.get(key), list)
            for key in ("images", "annotations", "categories")):
        raise DataError(
            f"{json_path}: expected a JSON object with lists 'images', "
            "'annotations' and 'categories' (a COCO instances file)")
    try:
        found = {int(c["id"]): str(c["name"]) for c in data["categories"]}
    except (KeyError, TypeError, ValueError) as error:
        raise DataError(f"{json_path}: a category lacks an integer 'id' or a "
                        f"'name' ({error})") from error
    if categories is None:
        categories = tuple(sorted(found.items()))
    expected = dict(categories)
    wrong = {i: (name, expected[i]) for i, name in found.items()
             if i in expected and expected[i] != name}
    if wrong:
        raise DataError(
            f"{json_path}: category names differ from the expected table "
            f"(id: (found, expected)) {dict(list(wrong.items())[:5])}; the "
            "labels would be wrong")
    label_of_category = {cat_id: label for label, (cat_id, _) in enumerate(
        sorted(categories), start=1)}

    images, rejected, by_coco_id, file_names = [], [], set(), set()
    for entry in data["images"]:
        if not isinstance(entry, dict):
            rejected.append((repr(entry)[:40], f"{json_path}: an 'images' "
                             "entry is not an object"))
            continue
        coco_id, file_name = entry.get("id"), entry.get("file_name")
        height, width = entry.get("height"), entry.get("width")
        if isinstance(file_name, str) and file_name:
            name = os.path.splitext(os.path.basename(file_name))[0]
        else:
            name = f"id {coco_id!r}"
        if not (_positive_int(height) and _positive_int(width)
                and isinstance(file_name, str) and file_name
                and isinstance(coco_id, int)):
            rejected.append((name, f"{json_path}: image entry {coco_id!r} "
                             "lacks an integer 'id', a 'file_name' or "
                             "positive 'height'/'width'"))
            continue
        if coco_id in by_coco_id:
            rejected.append((name, f"{json_path}: image id {coco_id} is "
                             "listed more than once; the first is kept"))
            continue
        image_id = name
        if image_id in file_names:
            rejected.append((name, f"{json_path}: image {coco_id}: file "
                             f"{file_name!r} has the name (without "
                             "extension) of an earlier image; the first is "
                             "kept"))
            continue
        by_coco_id.add(coco_id)
        file_names.add(image_id)
        images.append(CocoImage(coco_id, image_id, file_name, height, width))
    images.sort(key=lambda image: image.coco_id)

    annotations = collections.defaultdict(list)
    orphans = 0
    for ann in data["annotations"]:
        image_key = ann.get("image_id") if isinstance(ann, dict) else None
        if isinstance(image_key, int) and image_key in by_coco_id:
            annotations[image_key].append(ann)
        else:
            orphans += 1
    return CocoIndex(json_path=json_path, classes=classes_of(categories),
                     label_of_category=label_of_category,
                     images={image.image_id: image for image in images},
                     annotations=dict(annotations), rejected=rejected,
                     orphan_annotations=orphans)


def rle_string_counts(counts):
    """Run lengths of a compressed COCO RLE string.

    The string packs each run length in 5-bit groups, low group first, as
    characters chr(48 + group) with bit 0x20 set while more groups follow and
    bit 0x10 of the last group as the sign; from the third run on the value
    is stored as a difference to the run two places before.

    Returns:
      list of ints (may be negative or inconsistent for corrupt input; the
      caller checks).
    """
    runs, position = [], 0
    while position < len(counts):
        value, shift, more = 0, 0, True
        while more:
            if position >= len(counts):
                raise ValueError("the RLE string ends inside a number")
            group = ord(counts[position]) - 48
            if not 0 <= group < 64:
                raise ValueError(f"character {counts[position]!r} is not "
                                 "valid in an RLE string")
            value |= (group & 0x1F) << shift
            more = bool(group & 0x20)
            position += 1
            shift += 5
            if not more and group & 0x10:
                value -= 1 << shift
        if len(runs) > 2:
            value += runs[-2]
        runs.append(value)
    return runs


def annotation_mask(segmentation, height, width):
    """Renders one annotation's segmentation to a binary mask.

    Args:
      segmentation: COCO polygons (list of [x0, y0, x1, y1, ...]), or an RLE
        dict {"size": [h, w], "counts": list (uncompressed) or str}.
      height, width: the image size.

    Returns:
      (H, W) bool.

    Raises:
      ValueError: malformed segmentation or of another size than the image.
    """
    if isinstance(segmentation, list):
        polygons = []
        for polygon in segmentation:
            if (not isinstance(polygon, list) or len(polygon) % 2
                    or not all(isinstance(v, (int, float))
                               and math.isfinite(v) for v in polygon)):
                raise ValueError("a polygon is not a list of x, y numbers")
            # pycocotools reads a 4-number list as a box, not a polygon: a
            # polygon of fewer than 3 points has no area anyway.
            if len(polygon) >= 6:
                polygons.append([float(v) for v in polygon])
        if not polygons:
            return np.zeros((height, width), bool)
        rle = mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
    elif isinstance(segmentation, dict):
        size, counts = segmentation.get("size"), segmentation.get("counts")
        if list(size or ()) != [height, width]:
            raise ValueError(f"RLE size {size} differs from the image size "
                             f"[{height}, {width}] (height, width)")
        if isinstance(counts, list):
            runs = counts
        elif isinstance(counts, str):
            runs = rle_string_counts(counts)
        else:
            raise ValueError("RLE 'counts' is neither a list nor a string")
        # pycocotools trusts the run lengths: check them before decoding.
        if (not all(isinstance(r, int) and r >= 0 for r in runs)
                or sum(runs) != height * width):
            raise ValueError(f"RLE run lengths do not cover the {height}x"
                             f"{width} image exactly")
        rle = (mask_utils.frPyObjects(segmentation, height, width)
               if isinstance(counts, list) else segmentation)
    else:
        raise ValueError("segmentation is neither polygons nor an RLE dict")
    return mask_utils.decode(rle).astype(bool)


def xywh_to_box(bbox):
    """COCO [x, y, w, h] -> kseg [ymin, xmin, ymax, xmax] (float32, (4,))."""
    x, y, w, h = bbox
    return np.array([y, x, y + h, x + w], np.float32)


@dataclasses.dataclass(frozen=True)
class CocoExample:
    """One image with its annotations (boxes not yet clipped).

    Attributes:
      image_id: file name without extension.
      image_encoded: bytes to store (see voc.read_encoded_image).
      image_reencoded: True when image_encoded is not the file's bytes.
      height, width: image size.
      class_mask: (H, W) uint8, 0 background, 1..K, 255 crowd.
      boxes: (N, 4) float32 [ymin, xmin, ymax, xmax] of the non-crowd
        instances, in the JSON's order.
      box_classes: (N,) int32.
      image_labels: sorted labels present, crowd categories included.
    """
    image_id: str
    image_encoded: bytes
    image_reencoded: bool
    height: int
    width: int
    class_mask: np.ndarray
    boxes: np.ndarray
    box_classes: np.ndarray
    image_labels: tuple


def load_example(index, images_dir, image_id):
    """Reads, renders and validates one image of a CocoIndex.

    Raises:
      DataError naming the image file or the JSON (with the annotation id):
      missing or undecodable image, image size unlike the JSON's, unknown
      category, malformed segmentation or bbox.
    """
    entry = index.images[image_id]
    path = os.path.join(images_dir, entry.file_name)
    if not os.path.isfile(path):
        raise DataError(f"{path}: image listed in {index.json_path} (id "
                        f"{entry.coco_id}) but not found")
    encoded, image, reencoded = voc.read_encoded_image(path)
    height, width = entry.height, entry.width
    if image.shape[:2] != (height, width):
        raise DataError(
            f"{path}: image is {image.shape[1]}x{image.shape[0]} (WxH) but "
            f"{index.json_path} says {width}x{height}; the masks would not "
            "fit")

    crowds, instances = [], []
    for ann in index.annotations.get(entry.coco_id, ()):
        where = f"{index.json_path}: annotation {ann.get('id')!r} of {path}"
        label = index.label_of_category.get(ann.get("category_id"))
        if label is None:
            raise DataError(
                f"{where}: unknown category id {ann.get('category_id')!r}; "
                f"expected one of {sorted(index.label_of_category)}")
        try:
            mask = annotation_mask(ann.get("segmentation"), height, width)
        except ValueError as error:
            raise DataError(f"{where}: {error}") from error
        if ann.get("iscrowd"):
            crowds.append((label, mask))
            continue
        bbox = ann.get("bbox")
        if (not isinstance(bbox, list) or len(bbox) != 4 or not all(
                isinstance(v, (int, float)) and math.isfinite(v)
                for v in bbox)):
            raise DataError(f"{where}: 'bbox' {bbox!r} is not [x, y, width, "
                            "height]")
        order_key = (-int(mask.sum()), _sort_id(ann.get("id")))
        instances.append((order_key, label, mask, xywh_to_box(bbox)))

    class_mask = np.zeros((height, width), np.uint8)
    for _, mask in crowds:
        class_mask[mask] = IGNORE_LABEL
    for _, label, mask, _ in sorted(instances, key=lambda item: item[0]):
        class_mask[mask] = label
    labels = {int(v) for v in np.unique(class_mask) if v != IGNORE_LABEL}
    labels |= {label for label, _ in crowds}
    boxes = np.array([box for *_, box in instances], np.float32).reshape(-1, 4)
    box_classes = np.array([label for _, label, _, _ in instances], np.int32)
    return CocoExample(
        image_id=image_id, image_encoded=encoded, image_reencoded=reencoded,
        height=height, width=width, class_mask=class_mask, boxes=boxes,
        box_classes=box_classes, image_labels=tuple(sorted(labels)))


def _sort_id(ann_id):
    return ann_id if isinstance(ann_id, (int, float)) else math.inf
