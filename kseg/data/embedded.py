"""The embedded synthetic dataset, written in the PASCAL VOC 2012 layout.

Each image holds 1-4 textured shapes on a cluttered background. The classes
differ in shape and texture, never in colour (every object draws a random
colour pair), objects overlap (later ones occlude earlier ones) and most of
them fill their box only partly, so box and image-label supervision are
really weak here. Class and object masks carry a 1-pixel void (255) band on
the outer side of every object edge, like VOC's object borders.

The files are those of VOC (see kseg/data/voc.py): JPEG images,
palette-PNG class and object masks, Annotations XML with 1-based inclusive
boxes, and ImageSets/Segmentation/{train,val}.txt.

A second, differently generated dataset, the COCO-like companion of the
cross-dataset runs (more classes, a superset of these), is written in the
COCO layout by generate_coco() / ensure_embedded_coco(): see the section at
the end of this file.
"""

import hashlib
import json
import os
import shutil
import sys
import tempfile
import xml.etree.ElementTree as ElementTree

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from kseg.data import coco
from kseg.data.palette import write_label_png
from kseg.data.voc import (IGNORE_LABEL, annotation_path, boxes_from_instances,
                           class_mask_path, image_path, object_mask_path,
                           split_path)

# Label order: one shape (and one texture) per foreground class.
EMBEDDED_CLASSES = ("background", "disc", "square", "triangle", "ring",
                    "cross")

# Bump when the generated content changes, so caches are regenerated.
FORMAT_VERSION = 1

GENERATE_DEFAULTS = dict(num_train=1000, num_val=100, image_size=128, seed=0,
                         class_names=EMBEDDED_CLASSES)

# Occluded instances with fewer visible pixels are made void and get no box.
MIN_VISIBLE_PIXELS = 30

# Probabilities of 1, 2, 3, 4 objects in an image.
_OBJECT_COUNT_PROBS = (0.3, 0.35, 0.25, 0.1)

# Circumradius of the triangle as a fraction of the object size.
_TRIANGLE_CIRCUMRADIUS = 0.6

_SPLIT_CODES = {"train": 0, "val": 1}


# ---------------------------------------------------------------- shapes --

def _grid(image_size):
    """(S, S) float32 row and column coordinates of pixel centres."""
    coords = np.arange(image_size, dtype=np.float32) + 0.5
    return np.meshgrid(coords, coords, indexing="ij")


def _rotate(dy, dx, angle):
    """Coordinates (dy, dx) expressed in axes rotated by `angle` radians."""
    c, s = np.cos(angle), np.sin(angle)
    return c * dy + s * dx, -s * dy + c * dx


def _shape_radius(class_index, size):
    """Largest distance from the centre to a pixel of a shape of `size`."""
    if class_index == 3:
        return _TRIANGLE_CIRCUMRADIUS * size
    if class_index == 5:  # arm corners of a rotated cross, arm <= 0.4 half
        return np.hypot(1.0, 0.4) * size / 2
    return size / 2


def _shape_mask(class_index, dy, dx, size, rng):
    """Boolean (S, S) mask of one shape centred at the origin of (dy, dx).

    Args:
      class_index: 1 disc, 2 square, 3 triangle, 4 ring, 5 cross.
      dy, dx: (S, S) float32 offsets of pixel centres from the shape centre.
      size: the shape's extent in pixels (diameter / side).
      rng: numpy Generator for rotation and proportions.
    """
    half = size / 2.0
    radius2 = dy * dy + dx * dx
    if class_index == 1:  # disc
        return radius2 <= half * half
    if class_index == 2:  # square, axis-aligned: the one box-filling shape
        return (np.abs(dy) <= half) & (np.abs(dx) <= half)
    if class_index == 3:  # equilateral triangle with random rotation
        angle = rng.uniform(0, 2 * np.pi)
        mask = np.ones(dy.shape, bool)
        # Inside = on the inner side of the three edge lines. The inradius
        # is half the circumradius, which is enlarged so that triangles are
        # not much smaller in area than the other shapes.
        inradius = _TRIANGLE_CIRCUMRADIUS * size / 2
        for k in range(3):
            normal = angle + k * 2 * np.pi / 3
            mask &= dy * np.sin(normal) + dx * np.cos(normal) <= inradius
        return mask
    if class_index == 4:  # ring
        inner = half * rng.uniform(0.45, 0.6)
        return (radius2 <= half * half) & (radius2 >= inner * inner)
    if class_index == 5:  # cross (plus sign) with random rotation
        u, v = _rotate(dy, dx, rng.uniform(0, np.pi / 2))
        arm = half * rng.uniform(0.3, 0.4)
        inside = (np.abs(u) <= half) & (np.abs(v) <= half)
        return inside & ((np.abs(u) <= arm) | (np.abs(v) <= arm))
    raise ValueError(f"no shape for class index {class_index}")


# -------------------------------------------------------------- textures --

def _texture(class_index, dy, dx, scale, rng):
    """Binary (S, S) texture pattern of a class, random phase and orientation.

    Each class has its own pattern so that class is learnable from texture
    as well as shape: 1 concentric rings, 2 checkerboard, 3 stripes,
    4 grid lines, 5 dots. `scale` is the pattern period in pixels.
    """
    u, v = _rotate(dy, dx, rng.uniform(0, np.pi))
    u = u + rng.uniform(0, scale)
    v = v + rng.uniform(0, scale)
    if class_index == 1:  # concentric rings about a point near the centre
        cy, cx = rng.uniform(-scale, scale, size=2)
        r = np.sqrt((dy - cy) ** 2 + (dx - cx) ** 2)
        return np.floor(2 * r / scale) % 2 == 0
    if class_index == 2:  # checkerboard
        return (np.floor(u / (scale / 2)) + np.floor(v / (scale / 2))) % 2 == 0
    if class_index == 3:  # stripes
        return np.floor(u / (scale / 2)) % 2 == 0
    if class_index == 4:  # grid lines, a third of the period thick
        line = scale / 3
        return (np.mod(u, scale) < line) | (np.mod(v, scale) < line)
    if class_index == 5:  # dot lattice
        du = np.mod(u, scale) - scale / 2
        dv = np.mod(v, scale) - scale / 2
        return du * du + dv * dv <= (0.3 * scale) ** 2
    raise ValueError(f"no texture for class index {class_index}")


def _colour_pair(rng):
    """Two random RGB colours far enough apart for the texture to show.

    Returns:
      (2, 3) float32 in [0, 255].
    """
    while True:
        pair = rng.uniform(0, 255, size=(2, 3)).astype(np.float32)
        if np.abs(pair[0] - pair[1]).sum() >= 180:
            return pair


# ------------------------------------------------------------ background --

def _background(rng, image_size):
    """A cluttered background that holds no object texture.

    A smooth colour field (random bilinear 3x3 colour grid plus a linear
    gradient), then a few thin random lines and small solid blobs.

    Returns:
      (S, S, 3) float32, roughly in [0, 255] (clipped by the caller).
    """
    s = image_size
    corners = rng.uniform(0, 255, size=(3, 3, 3)).astype(np.float32)
    # (S, 3) weights of linear interpolation between the 3 grid nodes.
    position = np.linspace(0, 2, s, dtype=np.float32)[:, None]
    weights = np.maximum(0, 1 - np.abs(position - np.arange(3)))
    field = np.einsum("ia,abc,jb->ijc", weights, corners, weights,
                      optimize=True)  # (S, S, 3)
    yy, xx = _grid(s)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(angle) * yy + np.sin(angle) * xx) / s  # |ramp| <= 1.42
    field += ramp[:, :, None] * rng.uniform(-40, 40, size=3).astype(np.float32)

    for _ in range(rng.integers(2, 6)):  # thin lines
        p0, p1 = rng.uniform(0, s, size=(2, 2))
        d = p1 - p0
        length2 = max(float(d @ d), 1e-6)
        t_line = np.clip(((yy - p0[0]) * d[0] + (xx - p0[1]) * d[1])
                         / length2, 0, 1)
        dist2 = (yy - p0[0] - t_line * d[0]) ** 2 + (xx - p0[1]
                                                     - t_line * d[1]) ** 2
        # Pixel centres within ~0.7 px of the segment: a 1-pixel line.
        field[dist2 <= 0.5] = rng.uniform(0, 255, size=3)
    for _ in range(rng.integers(2, 6)):  # small blobs
        cy, cx = rng.uniform(0, s, size=2)
        r = rng.uniform(1.5, 0.035 * s + 1.5)
        field[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = rng.uniform(
            0, 255, size=3)
    return field


# --------------------------------------------------------------- example --

def _void_borders(instances):
    """Marks a 1-pixel void band on the outer side of every object edge.

    A pixel becomes void when a 4-neighbour belongs to a later-drawn
    instance (higher id): background pixels next to an object, and the
    occluded object's pixels next to its occluder.

    Args:
      instances: (S, S) int32, 0 background, k = k-th drawn object.

    Returns:
      (S, S) bool void band.
    """
    padded = np.pad(instances, 1, mode="edge")
    neighbours = np.stack([padded[:-2, 1:-1], padded[2:, 1:-1],
                           padded[1:-1, :-2], padded[1:-1, 2:]])
    return neighbours.max(axis=0) > instances


def render_example(rng, image_size, num_classes=len(EMBEDDED_CLASSES)):
    """Draws one synthetic image with its annotations.

    Args:
      rng: numpy Generator (all randomness of the example).
      image_size: side S of the square image.
      num_classes: labels including background; must be 6.

    Returns:
      image: (S, S, 3) uint8 RGB.
      class_mask: (S, S) uint8, 0 background, 1..5 classes, 255 void.
      object_mask: (S, S) uint8, 0 background, 1..N instances, 255 void.
      boxes: (N, 4) float32 tight [ymin, xmin, ymax, xmax] of the visible
        non-void pixels, 0-based half-open.
      box_classes: (N,) int32.
    """
    if num_classes != len(EMBEDDED_CLASSES):
        raise ValueError(f"the embedded dataset has {len(EMBEDDED_CLASSES)} "
                         f"classes, got num_classes={num_classes}")
    s = image_size
    image = _background(rng, s)
    yy, xx = _grid(s)
    instances = np.zeros((s, s), np.int32)
    labels = np.zeros((s, s), np.uint8)
    num_objects = rng.choice(len(_OBJECT_COUNT_PROBS),
                             p=_OBJECT_COUNT_PROBS) + 1
    # Texture periods: a couple of scales, proportional to the image size.
    scales = np.array([6.0, 9.0]) * max(s / 128.0, 0.5)
    for k in range(1, num_objects + 1):
        class_index = int(rng.integers(1, num_classes))
        size = rng.uniform(0.25, 0.6) * s
        # Keep the whole shape inside the image (VOC 'truncated' = 0).
        margin = _shape_radius(class_index, size)
        cy, cx = rng.uniform(margin, s - margin, size=2)
        dy, dx = yy - cy, xx - cx
        shape = _shape_mask(class_index, dy, dx, size, rng)
        pattern = _texture(class_index, dy, dx, rng.choice(scales), rng)
        colours = _colour_pair(rng)
        image[shape] = np.where(pattern[shape][:, None], colours[0],
                                colours[1])
        instances[shape] = k
        labels[shape] = class_index

    void = _void_borders(instances)
    counts = np.bincount(instances[~void], minlength=num_objects + 1)
    too_small = np.nonzero(counts[1:] < MIN_VISIBLE_PIXELS)[0] + 1
    void |= np.isin(instances, too_small)
    # Renumber the kept instances 1..N in drawing order.
    kept = np.setdiff1d(np.arange(1, num_objects + 1), too_small)
    renumber = np.zeros(num_objects + 1, np.uint8)
    renumber[kept] = np.arange(1, kept.size + 1)
    object_mask = renumber[instances]
    object_mask[void] = IGNORE_LABEL
    class_mask = labels.copy()
    class_mask[void] = IGNORE_LABEL

    image += 6 * rng.standard_normal(size=image.shape, dtype=np.float32)
    image = np.clip(np.round(image), 0, 255).astype(np.uint8)
    boxes, box_classes = boxes_from_instances(class_mask, object_mask)
    return image, class_mask, object_mask, boxes, box_classes


# ----------------------------------------------------------------- files --

def _annotation_xml(image_id, image_size, boxes, box_classes, class_names):
    """VOC annotation XML text; boxes converted to 1-based inclusive."""
    root = ElementTree.Element("annotation")
    ElementTree.SubElement(root, "folder").text = "embedded"
    ElementTree.SubElement(root, "filename").text = f"{image_id}.jpg"
    size = ElementTree.SubElement(root, "size")
    ElementTree.SubElement(size, "width").text = str(image_size)
    ElementTree.SubElement(size, "height").text = str(image_size)
    ElementTree.SubElement(size, "depth").text = "3"
    ElementTree.SubElement(root, "segmented").text = "1"
    for box, class_index in zip(boxes.astype(int), box_classes):
        obj = ElementTree.SubElement(root, "object")
        ElementTree.SubElement(obj, "name").text = class_names[class_index]
        ElementTree.SubElement(obj, "pose").text = "Unspecified"
        ElementTree.SubElement(obj, "truncated").text = "0"
        ElementTree.SubElement(obj, "difficult").text = "0"
        bndbox = ElementTree.SubElement(obj, "bndbox")
        ymin, xmin, ymax, xmax = box
        ElementTree.SubElement(bndbox, "xmin").text = str(xmin + 1)
        ElementTree.SubElement(bndbox, "ymin").text = str(ymin + 1)
        ElementTree.SubElement(bndbox, "xmax").text = str(xmax)
        ElementTree.SubElement(bndbox, "ymax").text = str(ymax)
    ElementTree.indent(root)
    return ElementTree.tostring(root, encoding="unicode") + "\n"


def _write_example(root, image_id, example, image_size, class_names):
    image, class_mask, object_mask, boxes, box_classes = example
    Image.fromarray(image).save(image_path(root, image_id), format="JPEG",
                                quality=95)
    write_label_png(class_mask_path(root, image_id), class_mask)
    write_label_png(object_mask_path(root, image_id), object_mask)
    with open(annotation_path(root, image_id), "w", encoding="utf-8") as f:
        f.write(_annotation_xml(image_id, image_size, boxes, box_classes,
                                class_names))


def generate(root, num_train=1000, num_val=100, image_size=128, seed=0,
             class_names=EMBEDDED_CLASSES):
    """Writes the embedded dataset in the VOC layout under `root`.

    Deterministic given the arguments: image i of a split draws from its own
    Generator seeded by (seed, split, i), so the train images do not depend
    on num_val and vice versa.

    Args:
      root: output directory (created if needed).
      num_train, num_val: images per split; ids are 'train_00000', ...
      image_size: side of the square images.
      seed: dataset seed.
      class_names: 6 names, background first; label order is fixed
        (disc, square, triangle, ring, cross), only the names can change.
    """
    class_names = tuple(class_names)
    if len(class_names) != len(EMBEDDED_CLASSES):
        raise ValueError(f"class_names must have {len(EMBEDDED_CLASSES)} "
                         f"entries, got {class_names}")
    for folder in ("JPEGImages", "SegmentationClass", "SegmentationObject",
                   "Annotations", os.path.join("ImageSets", "Segmentation")):
        os.makedirs(os.path.join(root, folder), exist_ok=True)
    for split, count in (("train", num_train), ("val", num_val)):
        ids = []
        for i in range(count):
            image_id = f"{split}_{i:05d}"
            rng = np.random.default_rng([seed, _SPLIT_CODES[split], i])
            example = render_example(rng, image_size, len(class_names))
            _write_example(root, image_id, example, image_size, class_names)
            ids.append(image_id)
        with open(split_path(root, split), "w", encoding="utf-8") as f:
            f.write("".join(f"{image_id}\n" for image_id in ids))


def _dataset_name(kwargs, prefix="embedded", version=FORMAT_VERSION):
    key = json.dumps({"format_version": version, **kwargs},
                     sort_keys=True, default=list)
    return f"{prefix}-" + hashlib.sha256(key.encode()).hexdigest()[:12]


def _default_cache_dir():
    return os.environ.get("KSEG_DATA_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "kseg")


def _ensure_generated(cache_dir, name, what, generate_fn, kwargs):
    """`<cache_dir>/<name>`, made by generate_fn(staging, **kwargs) in a
    temporary sibling renamed into place (see ensure_embedded)."""
    cache_dir = os.path.abspath(cache_dir or _default_cache_dir())
    final = os.path.join(cache_dir, name)
    if os.path.isdir(final):
        return final
    os.makedirs(cache_dir, exist_ok=True)
    num_images = kwargs["num_train"] + kwargs["num_val"]
    print(f"generating {what} in {final} ({num_images} images)",
          file=sys.stderr)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(final)}.tmp-",
                               dir=cache_dir)
    try:
        generate_fn(staging, **kwargs)
        try:
            os.replace(staging, final)
        except OSError:
            # Another process renamed its complete copy first.
            if not os.path.isdir(final):
                raise
    finally:
        if os.path.isdir(staging):
            shutil.rmtree(staging, ignore_errors=True)
    return final


def _complete_kwargs(defaults, given, function):
    unknown = set(given) - set(defaults)
    if unknown:
        raise TypeError(f"unknown {function}() arguments {sorted(unknown)}")
    return {**defaults, **given}


def ensure_embedded(cache_dir=None, **generate_kwargs):
    """Returns the root of the embedded dataset, generating it on first use.

    The root is `<cache_dir>/embedded-<hash>`, the hash covering the
    generate() arguments (defaults filled in) and FORMAT_VERSION. The data
    is written to a temporary sibling directory and renamed into place, so
    the final name exists only once complete; when two processes race, the
    first rename wins and the other discards its copy.

    Args:
      cache_dir: parent directory; defaults to $KSEG_DATA_DIR or
        ~/.cache/kseg.
      **generate_kwargs: arguments of generate() other than root.

    Returns:
      str path of the dataset root.
    """
    kwargs = _complete_kwargs(GENERATE_DEFAULTS, generate_kwargs, "generate")
    kwargs["class_names"] = list(kwargs["class_names"])
    return _ensure_generated(cache_dir, _dataset_name(kwargs),
                             "embedded dataset", generate, kwargs)


# ------------------------------------------------ the COCO-like companion --
#
# A second synthetic dataset for the cross-dataset runs (paper section 4.5,
# VOC + COCO), written in the COCO layout and read through kseg/data/coco.py:
#
#     <root>/annotations/instances_{train,val}.json
#     <root>/{train,val}/<split>_<coco id>.jpg
#
# Unlike the VOC-like set it has more classes (the 5 above plus star,
# crescent and diamond, with their own textures), more and smaller objects
# (2-7 an image, some cut by the image border), images of varying size, a
# different background (colour waves with rectangle outlines) and no void
# borders. Most shapes are stored as polygons, rings and crescents (which
# have holes or concavities) as compressed RLE, and about one image in five
# holds a crowd region (a cluster of small objects of one class, iscrowd=1,
# uncompressed RLE), which the reader marks 255.
#
# Annotations are whole shapes, as drawn; the objects are drawn from the
# largest to the smallest (crowds first), which is the order in which
# kseg.data.coco paints overlapping masks, so the class mask the reader
# renders is exactly what the image shows.

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
    dy, dx = _rotate(points[:, 0], points[:, 1], angle)
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
            points = _regular([_TRIANGLE_CIRCUMRADIUS * size] * 3)
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
    yy, xx = _grid(max(height, width))
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
        return _texture(EMBEDDED_CLASSES.index(name), dy, dx, scale, rng)
    u, v = _rotate(dy, dx, rng.uniform(0, np.pi))
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
    yy, xx = _grid(max(height, width))
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
    yy, xx = _grid(max(height, width))
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
        return segmentation, mask, pattern, _colour_pair(rng)

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
    rng = np.random.default_rng([seed, 100 + _SPLIT_CODES[split], index])
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
    kwargs = _complete_kwargs(COCO_GENERATE_DEFAULTS, generate_kwargs,
                              "generate_coco")
    name = _dataset_name(kwargs, "embedded-coco", COCO_FORMAT_VERSION)
    return _ensure_generated(cache_dir, name, "embedded COCO-like dataset",
                             generate_coco, kwargs)
