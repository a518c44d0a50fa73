"""Reader of the PASCAL VOC 2012 directory layout.

    <root>/JPEGImages/<id>.jpg
    <root>/SegmentationClass/<id>.png     palette PNG, class index per pixel
    <root>/SegmentationObject/<id>.png    palette PNG, instance id per pixel
    <root>/Annotations/<id>.xml           boxes, 1-based inclusive pixels
    <root>/ImageSets/Segmentation/<split>.txt

Labels: 0 background, 1..L object classes, 255 void (VOC's object borders).
Boxes everywhere in kseg are float32 [ymin, xmin, ymax, xmax] in 0-based
half-open pixel coordinates (ymax = last row + 1).

The augmented training set (SBD's SegmentationClassAug and the 10,582-image
train_aug list) is read by kseg/data/sbd.py on top of this module.
"""

import dataclasses
import io
import os
import xml.etree.ElementTree as ElementTree
from typing import Optional

import numpy as np
from PIL import Image

from kseg.constants import IGNORE_LABEL
from kseg.data.errors import DataError
from kseg.data.palette import read_label_png

# The 21 class names of PASCAL VOC 2012, in label order.
VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus",
    "car", "cat", "chair", "cow", "diningtable", "dog", "horse", "motorbike",
    "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor")


def split_path(root, split):
    """Path of the image-id list of `split` (e.g. 'train', 'val')."""
    return os.path.join(root, "ImageSets", "Segmentation", f"{split}.txt")


def image_path(root, image_id):
    return os.path.join(root, "JPEGImages", f"{image_id}.jpg")


def class_mask_path(root, image_id):
    return os.path.join(root, "SegmentationClass", f"{image_id}.png")


def object_mask_path(root, image_id):
    return os.path.join(root, "SegmentationObject", f"{image_id}.png")


def annotation_path(root, image_id):
    return os.path.join(root, "Annotations", f"{image_id}.xml")


def parse_id_line(line):
    """The image id of one line of an image list, or None for a blank line.

    Only the first token counts: VOC's per-class lists append a flag column.
    Lists of the augmented set may hold paths instead of ids
    ('/JPEGImages/2007_000032.jpg /SegmentationClassAug/2007_000032.png'):
    a token with a '/' stands for its file name without the extension.
    """
    tokens = line.split()
    if not tokens:
        return None
    token = tokens[0]
    if "/" in token:
        token = os.path.splitext(os.path.basename(token))[0]
    return token


def read_id_list(path, what):
    """Reads an image list file, keeping repeated ids (the caller decides).

    Args:
      path: text file, one id (or path, see parse_id_line) per line.
      what: how to call the list in messages, e.g. "the 'train' image list".

    Returns:
      list of str ids in file order, repeats included.

    Raises:
      DataError: the file is missing, unreadable or empty.
    """
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(
            f"{path}: cannot read {what} ({error}); expected a text file "
            "with one image id per line") from error
    ids = [image_id for image_id in map(parse_id_line, lines) if image_id]
    if not ids:
        raise DataError(
            f"{path}: {what} is empty; expected one image id per line")
    return ids


def split_duplicates(ids):
    """(ids with repeats removed, keeping first occurrences; the repeats)."""
    seen = set()
    unique, repeats = [], []
    for image_id in ids:
        (repeats if image_id in seen else unique).append(image_id)
        seen.add(image_id)
    return unique, repeats


def read_split_ids(root, split):
    """Reads the image ids of a split list, one id per line.

    Returns:
      list of str ids in file order.

    Raises:
      DataError: the list file is missing, empty, or repeats an id.
    """
    path = split_path(root, split)
    ids, duplicates = split_duplicates(
        read_id_list(path, f"the '{split}' image list"))
    if duplicates:
        raise DataError(
            f"{path}: the '{split}' image list repeats ids "
            f"{sorted(set(duplicates))[:10]}; expected each id once")
    return ids


def read_image(path):
    """Decodes an image file fully into RGB.

    Returns:
      (H, W, 3) uint8.

    Raises:
      DataError: missing, unreadable or truncated file.
    """
    try:
        with Image.open(path) as image:
            # convert() decodes every pixel, so a truncated JPEG fails here
            # rather than later inside the input pipeline.
            return np.array(image.convert("RGB"), dtype=np.uint8)
    except (OSError, ValueError, SyntaxError) as error:
        raise DataError(
            f"{path}: cannot decode image ({error}); expected a complete "
            "JPEG/PNG image file") from error


# Encodings TensorFlow's decode_image reads as they are; other files (e.g. a
# CMYK JPEG, a BMP) are re-encoded as PNG when a record is written.
_TF_FORMATS = ("JPEG", "PNG")
_TF_MODES = ("RGB", "L")


def read_encoded_image(path):
    """Reads an image file for a record: its bytes and its decoded pixels.

    The bytes are kept as they are on disk when TensorFlow decodes them to
    the same pixels (RGB or greyscale JPEG/PNG); any other image is
    re-encoded as an RGB PNG.

    Returns:
      encoded: bytes to store.
      image: (H, W, 3) uint8 RGB, fully decoded (so truncation is caught).
      reencoded: bool, True when `encoded` is not the file's own bytes.

    Raises:
      DataError: missing, unreadable or truncated file.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
        with Image.open(io.BytesIO(data)) as image:
            keep = image.format in _TF_FORMATS and image.mode in _TF_MODES
            pixels = np.array(image.convert("RGB"), dtype=np.uint8)
    except (OSError, ValueError, SyntaxError) as error:
        raise DataError(
            f"{path}: cannot decode image ({error}); expected a complete "
            "JPEG/PNG image file") from error
    if keep:
        return data, pixels, False
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue(), pixels, True


def boxes_from_instances(class_mask, object_mask):
    """Tight boxes and classes of the instances of a VOC object mask.

    Args:
      class_mask: (H, W) uint8 class indices, 255 void.
      object_mask: (H, W) uint8 instance ids; 0 background, 255 void,
        1..254 instances.

    Returns:
      boxes: (N, 4) float32 [ymin, xmin, ymax, xmax], 0-based half-open,
        sorted by instance id.
      classes: (N,) int32, the majority class of each instance's pixels
        ignoring 0 and 255.

    Raises:
      ValueError: shapes differ, or an instance has no labelled class pixel.
    """
    class_mask = np.asarray(class_mask)
    object_mask = np.asarray(object_mask)
    if class_mask.shape != object_mask.shape:
        raise ValueError(
            f"class mask shape {class_mask.shape} != object mask shape "
            f"{object_mask.shape}")
    instance_ids = [i for i in np.unique(object_mask) if 0 < i < IGNORE_LABEL]
    boxes = np.zeros((len(instance_ids), 4), np.float32)
    classes = np.zeros((len(instance_ids),), np.int32)
    for n, instance_id in enumerate(instance_ids):
        rows, cols = np.nonzero(object_mask == instance_id)
        boxes[n] = (rows.min(), cols.min(), rows.max() + 1, cols.max() + 1)
        values = class_mask[rows, cols]
        values = values[(values != 0) & (values != IGNORE_LABEL)]
        if values.size == 0:
            raise ValueError(
                f"instance {instance_id} has no pixel with an object class in "
                "the class mask")
        classes[n] = np.bincount(values).argmax()
    return boxes, classes


def _xml_number(obj, tag, path):
    node = obj.find(f"bndbox/{tag}")
    try:
        return float(node.text)
    except (AttributeError, TypeError, ValueError):
        raise DataError(
            f"{path}: an <object> lacks a numeric <bndbox><{tag}>; expected "
            "xmin, ymin, xmax, ymax in 1-based pixels") from None


def read_xml_boxes(path, class_names):
    """Reads the object boxes of a VOC annotation XML.

    VOC stores 1-based inclusive pixel coordinates; a box covering rows
    y1..y2 becomes ymin = y1 - 1, ymax = y2 (same for x).

    Args:
      path: the XML file.
      class_names: sequence of names; a name's position is its class index.

    Returns:
      boxes: (N, 4) float32 [ymin, xmin, ymax, xmax], 0-based half-open.
      classes: (N,) int32 class indices, in file order.

    Raises:
      DataError: unreadable XML, missing fields, or an unknown class name.
    """
    try:
        tree = ElementTree.parse(path)
    except (OSError, ElementTree.ParseError) as error:
        raise DataError(
            f"{path}: cannot parse annotation XML ({error}); expected a VOC "
            "<annotation> file") from error
    index = {name: i for i, name in enumerate(class_names)}
    boxes, classes = [], []
    for obj in tree.getroot().iter("object"):
        name = (obj.findtext("name") or "").strip()
        if name not in index:
            raise DataError(
                f"{path}: unknown class name {name!r}; expected one of "
                f"{list(class_names)}")
        y1 = _xml_number(obj, "ymin", path)
        x1 = _xml_number(obj, "xmin", path)
        y2 = _xml_number(obj, "ymax", path)
        x2 = _xml_number(obj, "xmax", path)
        if y2 < y1 or x2 < x1:
            raise DataError(
                f"{path}: box of {name!r} has max < min ({x1}, {y1}, {x2}, "
                f"{y2}); expected xmin <= xmax and ymin <= ymax")
        boxes.append((y1 - 1, x1 - 1, y2, x2))
        classes.append(index[name])
    return (np.array(boxes, np.float32).reshape(-1, 4),
            np.array(classes, np.int32))


@dataclasses.dataclass(frozen=True)
class VocExample:
    """One image with whatever annotations exist.

    Attributes:
      image_id: the id in the split list.
      image: (H, W, 3) uint8 RGB.
      class_mask: (H, W) uint8 labels (255 void), or None when absent.
      boxes: (N, 4) float32 [ymin, xmin, ymax, xmax], 0-based half-open.
      box_classes: (N,) int32 class of each box.
      image_encoded: the bytes to store for the image (see
        read_encoded_image); b"" when built without them.
      image_reencoded: True when image_encoded is not the file's own bytes.
    """
    image_id: str
    image: np.ndarray
    class_mask: Optional[np.ndarray]
    boxes: np.ndarray
    box_classes: np.ndarray
    image_encoded: bytes = b""
    image_reencoded: bool = False


def check_mask(mask, path, image_shape, num_classes):
    """Raises DataError (naming `path`) unless `mask` is (H, W) = image_shape
    with values in [0, num_classes) or 255."""
    if mask.shape != image_shape:
        raise DataError(
            f"{path}: mask size {mask.shape[1]}x{mask.shape[0]} (WxH) differs "
            f"from the image size {image_shape[1]}x{image_shape[0]}; expected "
            "the same size")
    values = np.unique(mask)
    bad = values[(values >= num_classes) & (values != IGNORE_LABEL)]
    if bad.size:
        raise DataError(
            f"{path}: unexpected label values {bad.tolist()}; expected class "
            f"indices in [0, {num_classes}) or {IGNORE_LABEL} (void)")


def load_example(root, image_id, num_classes, class_names,
                 require_mask=True, image_file=None):
    """Reads and validates one example of a VOC-layout dataset.

    Boxes come from SegmentationObject when it exists (tight boxes of the
    instances), else from Annotations XML, else there are none.

    Args:
      root: dataset root.
      image_id: id from a split list.
      num_classes: number of labels including background.
      class_names: names for the XML boxes; position = class index.
      require_mask: when true a missing SegmentationClass PNG is an error.
      image_file: the image, when not at JPEGImages/<image_id>.jpg.

    Returns:
      VocExample.

    Raises:
      DataError: naming the file at fault.
    """
    path = image_file or image_path(root, image_id)
    if not os.path.isfile(path):
        raise DataError(f"{path}: image file not found (id {image_id!r})")
    encoded, image, reencoded = read_encoded_image(path)
    image_shape = image.shape[:2]

    class_mask = None
    mask_path = class_mask_path(root, image_id)
    if os.path.isfile(mask_path):
        class_mask = read_label_png(mask_path)
        check_mask(class_mask, mask_path, image_shape, num_classes)
    elif require_mask:
        raise DataError(
            f"{mask_path}: class mask not found for image {image_id!r}; "
            "expected a palette PNG of class indices")

    boxes = np.zeros((0, 4), np.float32)
    box_classes = np.zeros((0,), np.int32)
    objects_path = object_mask_path(root, image_id)
    xml_path = annotation_path(root, image_id)
    if class_mask is not None and os.path.isfile(objects_path):
        object_mask = read_label_png(objects_path)
        if object_mask.shape != image_shape:
            raise DataError(
                f"{objects_path}: object mask size {object_mask.shape[1]}x"
                f"{object_mask.shape[0]} (WxH) differs from the image size "
                f"{image_shape[1]}x{image_shape[0]}; expected the same size")
        try:
            boxes, box_classes = boxes_from_instances(class_mask, object_mask)
        except ValueError as error:
            raise DataError(f"{objects_path}: {error}") from error
    elif os.path.isfile(xml_path):
        boxes, box_classes = read_xml_boxes(xml_path, class_names)
        bad = box_classes[box_classes >= num_classes]
        if bad.size:
            raise DataError(
                f"{xml_path}: box classes {sorted(set(bad.tolist()))} outside "
                f"[0, {num_classes})")
    return VocExample(image_id=image_id, image=image, class_mask=class_mask,
                      boxes=boxes, box_classes=box_classes,
                      image_encoded=encoded, image_reencoded=reencoded)
