"""The COCO-like companion of the embedded dataset, for the cross-dataset runs.

A second synthetic dataset (paper section 4.5, VOC + COCO), written in the
COCO layout and read through kseg/data/coco.py:

    <root>/annotations/instances_{train,val}.json
    <root>/{train,val}/<split>_<coco id>.jpg

Unlike the VOC-like set (kseg/data/embedded.py) it has more classes (the 5
there plus star, crescent and diamond, with their own textures), more and
smaller objects (2-7 an image, some cut by the image border), images of
varying size, a different background (colour waves with rectangle outlines)
and no void borders. Most shapes are stored as polygons, rings and
crescents (which have holes or concavities) as compressed RLE, and about
one image in five holds a crowd region (a cluster of small objects of one
class, iscrowd=1, uncompressed RLE), which the reader marks 255.

Annotations are whole shapes, as drawn; the objects are drawn from the
largest to the smallest (crowds first), which is the order in which
kseg.data.coco paints overlapping masks, so the class mask the reader
renders is exactly what the image shows.
"""

import json
import os

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from kseg.constants import IGNORE_LABEL
from kseg.data import coco
from kseg.data.embedded import (EMBEDDED_CLASSES, SPLIT_CODES, TRIANGLE_CIRCUMRADIUS,
                                colour_pair, complete_kwargs, dataset_name,
                                ensure_generated, grid, rotate, texture)

# COCO-style category ids with gaps, ordered unlike EMBEDDED_CLASSES, so that
# the reader's id -> label mapping and the label maps are exercised.
EMBEDDED_COCO_CATEGORIES = (
    (2, "star"), (3, "disc"), (5, "square"), (7, "crescent"),
    (8, "triangle"), (11, "ring"), (12, "diamond"), (15, "cross"))
EMBEDDED_COCO_CLASSES = coco.classes_of(EMBEDDED_COCO_CATEGORIES)

# Label of each EMBEDDED_CLASSES label (0..5) among EMBEDDED_COCO_CLASSES: the
# counterpart of kseg.data.coco.voc_to_coco_labels().
EMBEDDED_TO_COCO_LABELS = coco.label_map(EMBEDDED_CLASSES,
                                         EMBEDDED_COCO_CLASSES)

COCO_FORMAT_VERSION = 1

COCO_GENERATE_DEFAULTS = dict(num_train=400, num_val=100, image_size=128,
                              seed=0)

# Probabilities of 2, 3, ..., 7 objects in an image.
_COCO_OBJECT_COUNT_PROBS = (0.15, 0.25, 0.25, 0.15, 0.12, 0.08)
_CROWD_PROBABILITY = 0.2
# Shapes with fewer pixels (mostly outside the image) are left out.
_COCO_MIN_AREA = 20
_POLYGON_SHAPES = ("disc", "square", "triangle", "cross", "star", "diamond")


def embedded_to_coco_labels():
    """(6,) label in the COCO-like companion of each VOC-like label."""
    return EMBEDDED_TO_COCO_LABELS


def _polygon(cy, cx, points, angle):
    """COCO polygon [x0, y0, x1, ...] of (dy, dx) points, rotated."""
    points = np.asarray(points, np.float64)
    dy, dx = rotate(points[:, 0], points[:, 1], angle)
    return np.stack([cx + dx, cy + dy], axis=1).reshape(-1)


def _regular(radii, angle0=0.0):
    """(dy, dx) points at the given radii, evenly spaced in angle."""
    angles = angle0 + np.arange(len(radii)) * 2 * np.pi / len(radii)
    return np.stack([np.asarray(radii) * np.sin(angles),
                     np.asarray(radii) * np.cos(angles)], axis=1)


def _companion_segmentation(name, cy, cx, size, height, width, rng):
    """The annotation of one whole shape: COCO polygons or a compressed RLE.

    Returns:
      a COCO segmentation (list of polygons, or {"size", "counts"} RLE).
    """
    half = size / 2.0
    angle = rng.uniform(0, 2 * np.pi)
    if name in _POLYGON_SHAPES:
        if name == "disc":
            points, angle = _regular([half] * 32), 0.0
        elif name == "square":  # axis-aligned, as in the VOC-like set
            points, angle = [(-half, -half), (-half, half), (half, half),
                             (half, -half)], 0.0
        elif name == "triangle":
            points = _regular([TRIANGLE_CIRCUMRADIUS * size] * 3)
        elif name == "cross":  # plus sign, corners listed around it
            a = half * rng.uniform(0.3, 0.4)
            points = [(-half, -a), (-half, a), (-a, a), (-a, half), (a, half),
                      (a, a), (half, a), (half, -a), (a, -a), (a, -half),
                      (-a, -half), (-a, -a)]
        elif name == "star":
            points = _regular([half, 0.42 * half] * 5)
        else:  # diamond: an elongated rhombus
            points = [(half, 0), (0, 0.5 * half), (-half, 0), (0, -0.5 * half)]
        polygon = _polygon(cy, cx, points, angle)
        # Kept inside the image, like COCO's; the shape is whatever
        # pycocotools rasterises from the stored (rounded) numbers.
        polygon[0::2] = np.clip(polygon[0::2], 0, width)
        polygon[1::2] = np.clip(polygon[1::2], 0, height)
        return [[round(float(v), 2) for v in polygon]]
    yy, xx = grid(max(height, width))
    dy, dx = yy[:height, :width] - cy, xx[:height, :width] - cx
    radius2 = dy * dy + dx * dx
    if name == "ring":
        inner = half * rng.uniform(0.45, 0.6)
        mask = (radius2 <= half * half) & (radius2 >= inner * inner)
    elif name == "crescent":
        oy, ox = 0.45 * half * np.sin(angle), 0.45 * half * np.cos(angle)
        bite = (dy - oy) ** 2 + (dx - ox) ** 2 <= (0.8 * half) ** 2
        mask = (radius2 <= half * half) & ~bite
    else:
        raise ValueError(f"no shape named {name!r}")
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [height, width], "counts": rle["counts"].decode("ascii")}


def _companion_texture(name, dy, dx, scale, rng):
    """Binary texture: the VOC-like one for shared classes, new ones else."""
    if name in EMBEDDED_CLASSES:
        return texture(EMBEDDED_CLASSES.index(name), dy, dx, scale, rng)
    u, v = rotate(dy, dx, rng.uniform(0, np.pi))
    if name == "star":  # wavy stripes
        wave = 0.25 * scale * np.sin(2 * np.pi * v / (1.5 * scale))
        return np.floor((u + wave) / (scale / 2)) % 2 == 0
    if name == "crescent":  # coarse random speckle
        cell = max(scale / 3, 1.0)
        cells = rng.random((64, 64)) < 0.5
        return cells[(np.floor(u / cell) % 64).astype(int),
                     (np.floor(v / cell) % 64).astype(int)]
    if name == "diamond":  # concentric squares
        chebyshev = np.maximum(np.abs(u), np.abs(v))
        return np.floor(chebyshev / (scale / 2)) % 2 == 0
    raise ValueError(f"no texture for {name!r}")


def _companion_background(rng, height, width):
    """Colour waves plus rectangle outlines: unlike the VOC-like background.

    Returns:
      (H, W, 3) float32, roughly in [0, 255].
    """
    yy, xx = grid(max(height, width))
    yy, xx = yy[:height, :width], xx[:height, :width]
    field = np.full((height, width, 3), 128, np.float32)
    for _ in range(3):
        angle = rng.uniform(0, 2 * np.pi)
        period = rng.uniform(0.5, 2.0) * max(height, width)
        phase = (np.cos(angle) * yy + np.sin(angle) * xx) * 2 * np.pi / period
        field += np.sin(phase + rng.uniform(0, 2 * np.pi))[:, :, None] * \
            rng.uniform(-60, 60, size=3).astype(np.float32)
    for _ in range(rng.integers(3, 8)):  # rectangle outlines, 1-2 px thick
        y0, y1 = np.sort(rng.uniform(0, height, size=2))
        x0, x1 = np.sort(rng.uniform(0, width, size=2))
        t = rng.uniform(1, 2.5)
        inside = (yy >= y0) & (yy <= y1) & (xx >= x0) & (xx <= x1)
        core = ((yy >= y0 + t) & (yy <= y1 - t) & (xx >= x0 + t)
                & (xx <= x1 - t))
        field[inside & ~core] = rng.uniform(0, 255, size=3)
    return field


def render_coco_example(rng, height, width):
    """Draws one image of the COCO-like companion with its annotations.

    Args:
      rng: numpy Generator.
      height, width: image size.

    Returns:
      image: (H, W, 3) uint8.
      annotations: list of dicts with "category" (name), "segmentation",
        "iscrowd", "area" (pixels), "bbox" ([x, y, w, h] of the mask), in
        painting order (crowd first, then by decreasing area).
      class_mask: (H, W) uint8 in EMBEDDED_COCO_CLASSES labels, 255 crowd:
        what kseg.data.coco renders from the annotations.
    """
    image = _companion_background(rng, height, width)
    yy, xx = grid(max(height, width))
    yy, xx = yy[:height, :width], xx[:height, :width]
    side = min(height, width)
    names = EMBEDDED_COCO_CLASSES[1:]
    scales = np.array([5.0, 8.0]) * max(side / 128.0, 0.5)
    label_of = {name: label
                for label, name in enumerate(EMBEDDED_COCO_CLASSES)}
    class_mask = np.zeros((height, width), np.uint8)

    def draw(name, cy, cx, size):
        segmentation = _companion_segmentation(name, cy, cx, size, height,
                                               width, rng)
        mask = coco.annotation_mask(segmentation, height, width)
        pattern = _companion_texture(name, yy - cy, xx - cx,
                                     rng.choice(scales), rng)
        return segmentation, mask, pattern, colour_pair(rng)

    def paint(mask, pattern, colours):
        image[mask] = np.where(pattern[mask][:, None], colours[0], colours[1])

    annotations = []
    if rng.random() < _CROWD_PROBABILITY:
        name = names[rng.integers(len(names))]
        cy, cx = rng.uniform(0.2, 0.8, size=2) * (height, width)
        union = np.zeros((height, width), bool)
        for _ in range(rng.integers(5, 10)):
            size = rng.uniform(0.06, 0.1) * side
            oy, ox = rng.normal(0, 0.1 * side, size=2)
            _, mask, pattern, colours = draw(name, cy + oy, cx + ox, size)
            paint(mask, pattern, colours)
            union |= mask
        rle = mask_utils.encode(np.asfortranarray(union.astype(np.uint8)))
        counts = coco.rle_string_counts(rle["counts"].decode("ascii"))
        class_mask[union] = IGNORE_LABEL
        crowd = {"size": [height, width], "counts": counts}
        annotations.append(_annotation(name, crowd, union, iscrowd=1))

    objects = []
    num_objects = rng.choice(len(_COCO_OBJECT_COUNT_PROBS),
                             p=_COCO_OBJECT_COUNT_PROBS) + 2
    for k in range(num_objects):
        name = names[rng.integers(len(names))]
        size = rng.uniform(0.18, 0.45) * side
        # Centres may lie near the border: some shapes are cut by it.
        cy = rng.uniform(0.15 * size, height - 0.15 * size)
        cx = rng.uniform(0.15 * size, width - 0.15 * size)
        segmentation, mask, pattern, colours = draw(name, cy, cx, size)
        if mask.sum() >= _COCO_MIN_AREA:
            objects.append((-int(mask.sum()), k, name, segmentation, mask,
                            pattern, colours))
    for _, _, name, segmentation, mask, pattern, colours in sorted(
            objects, key=lambda o: o[:2]):
        paint(mask, pattern, colours)
        class_mask[mask] = label_of[name]
        annotations.append(_annotation(name, segmentation, mask, iscrowd=0))

    image += 5 * rng.standard_normal(size=image.shape, dtype=np.float32)
    image = np.clip(np.round(image), 0, 255).astype(np.uint8)
    return image, annotations, class_mask


def _annotation(name, segmentation, mask, iscrowd):
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    bbox = [float(v) for v in mask_utils.toBbox(rle)]
    return {"category": name, "segmentation": segmentation, "iscrowd": iscrowd,
            "area": int(mask.sum()), "bbox": bbox}


def coco_image_rng(seed, split, index, image_size):
    """The Generator and size of image `index` of a companion split.

    Returns:
      (numpy Generator, height, width), height and width in
      [3/4, 1] x image_size.
    """
    rng = np.random.default_rng([seed, 100 + SPLIT_CODES[split], index])
    height, width = rng.integers(image_size * 3 // 4, image_size + 1, size=2)
    return rng, int(height), int(width)


def generate_coco(root, num_train=400, num_val=100, image_size=128, seed=0):
    """Writes the COCO-like companion in the COCO layout under `root`.

    Image i of a split is drawn from its own Generator (coco_image_rng), so
    the splits do not depend on each other's sizes. Ids: train images
    1..num_train, val images 100001.. ; annotation ids are unique per file.

    Args:
      root: output directory (created if needed).
      num_train, num_val: images per split.
      image_size: the largest image side.
      seed: dataset seed (streams apart from the VOC-like set's).
    """
    categories = [{"id": cat_id, "name": name, "supercategory": "shape"}
                  for cat_id, name in EMBEDDED_COCO_CATEGORIES]
    category_id = {name: cat_id for cat_id, name in EMBEDDED_COCO_CATEGORIES}
    os.makedirs(os.path.join(root, "annotations"), exist_ok=True)
    for split, count, first_id in (("train", num_train, 1),
                                   ("val", num_val, 100001)):
        os.makedirs(coco.image_dir(root, split), exist_ok=True)
        images, annotations = [], []
        for i in range(count):
            rng, height, width = coco_image_rng(seed, split, i, image_size)
            image, anns, _ = render_coco_example(rng, height, width)
            coco_id = first_id + i
            file_name = f"{split}_{coco_id:06d}.jpg"
            Image.fromarray(image).save(
                os.path.join(coco.image_dir(root, split), file_name),
                format="JPEG", quality=92)
            images.append({"id": coco_id, "file_name": file_name,
                           "height": height, "width": width})
            for ann in anns:
                annotations.append({
                    "id": len(annotations) + 1, "image_id": coco_id,
                    "category_id": category_id[ann["category"]],
                    "segmentation": ann["segmentation"], "area": ann["area"],
                    "bbox": ann["bbox"], "iscrowd": ann["iscrowd"]})
        data = {"info": {"description": "kseg embedded COCO-like companion",
                         "version": str(COCO_FORMAT_VERSION)},
                "licenses": [], "images": images, "annotations": annotations,
                "categories": categories}
        path = coco.instances_path(root, split)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(data, f)


def ensure_embedded_coco(cache_dir=None, **generate_kwargs):
    """Returns the root of the COCO-like companion, generating it on first use.

    Like ensure_embedded: `<cache_dir>/embedded-coco-<hash>` (the hash covers
    the generate_coco() arguments and COCO_FORMAT_VERSION), written to a
    temporary sibling and renamed into place.

    Args:
      cache_dir: parent directory; defaults to $KSEG_DATA_DIR or
        ~/.cache/kseg.
      **generate_kwargs: arguments of generate_coco() other than root.
    """
    kwargs = complete_kwargs(COCO_GENERATE_DEFAULTS, generate_kwargs,
                              "generate_coco")
    name = dataset_name(kwargs, "embedded-coco", COCO_FORMAT_VERSION)
    return ensure_generated(cache_dir, name, "embedded COCO-like dataset",
                             generate_coco, kwargs)
