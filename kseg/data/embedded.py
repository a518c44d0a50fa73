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
COCO layout by kseg/data/embedded_coco.py, which shares the shapes,
textures and the cache helpers below.
"""

import hashlib
import json
import os
import shutil
import tempfile
import xml.etree.ElementTree as ElementTree

import numpy as np
from absl import logging
from PIL import Image

from kseg.constants import IGNORE_LABEL
from kseg.data.palette import write_label_png
from kseg.data.voc import (annotation_path, boxes_from_instances,
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
TRIANGLE_CIRCUMRADIUS = 0.6

SPLIT_CODES = {"train": 0, "val": 1}


# ---------------------------------------------------------------- shapes --

def grid(image_size):
    """(S, S) float32 row and column coordinates of pixel centres."""
    coords = np.arange(image_size, dtype=np.float32) + 0.5
    return np.meshgrid(coords, coords, indexing="ij")


def rotate(dy, dx, angle):
    """Coordinates (dy, dx) expressed in axes rotated by `angle` radians."""
    c, s = np.cos(angle), np.sin(angle)
    return c * dy + s * dx, -s * dy + c * dx


def _shape_radius(class_index, size):
    """Largest distance from the centre to a pixel of a shape of `size`."""
    if class_index == 3:
        return TRIANGLE_CIRCUMRADIUS * size
    if class_index == 5:  # arm corners of a rotated cross, arm <= 0.4 half
        return np.hypot(1.0, 0.4) * size / 2
    return size / 2


def shape_mask(class_index, dy, dx, size, rng):
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
        inradius = TRIANGLE_CIRCUMRADIUS * size / 2
        for k in range(3):
            normal = angle + k * 2 * np.pi / 3
            mask &= dy * np.sin(normal) + dx * np.cos(normal) <= inradius
        return mask
    if class_index == 4:  # ring
        inner = half * rng.uniform(0.45, 0.6)
        return (radius2 <= half * half) & (radius2 >= inner * inner)
    if class_index == 5:  # cross (plus sign) with random rotation
        u, v = rotate(dy, dx, rng.uniform(0, np.pi / 2))
        arm = half * rng.uniform(0.3, 0.4)
        inside = (np.abs(u) <= half) & (np.abs(v) <= half)
        return inside & ((np.abs(u) <= arm) | (np.abs(v) <= arm))
    raise ValueError(f"no shape for class index {class_index}")


# -------------------------------------------------------------- textures --

def texture(class_index, dy, dx, scale, rng):
    """Binary (S, S) texture pattern of a class, random phase and orientation.

    Each class has its own pattern so that class is learnable from texture
    as well as shape: 1 concentric rings, 2 checkerboard, 3 stripes,
    4 grid lines, 5 dots. `scale` is the pattern period in pixels.
    """
    u, v = rotate(dy, dx, rng.uniform(0, np.pi))
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


def colour_pair(rng):
    """Two random RGB colours far enough apart for the texture to show.

    Returns:
      (2, 3) float32 in [0, 255].
    """
    while True:
        pair = rng.uniform(0, 255, size=(2, 3)).astype(np.float32)
        if np.abs(pair[0] - pair[1]).sum() >= 180:
            return pair


# ------------------------------------------------------------ background --

def background(rng, image_size):
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
    yy, xx = grid(s)
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
    image = background(rng, s)
    yy, xx = grid(s)
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
        shape = shape_mask(class_index, dy, dx, size, rng)
        pattern = texture(class_index, dy, dx, rng.choice(scales), rng)
        colours = colour_pair(rng)
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
            rng = np.random.default_rng([seed, SPLIT_CODES[split], i])
            example = render_example(rng, image_size, len(class_names))
            _write_example(root, image_id, example, image_size, class_names)
            ids.append(image_id)
        with open(split_path(root, split), "w", encoding="utf-8") as f:
            f.write("".join(f"{image_id}\n" for image_id in ids))


def dataset_name(kwargs, prefix="embedded", version=FORMAT_VERSION):
    key = json.dumps({"format_version": version, **kwargs},
                     sort_keys=True, default=list)
    return f"{prefix}-" + hashlib.sha256(key.encode()).hexdigest()[:12]


def default_cache_dir():
    """$KSEG_DATA_DIR, or ~/.cache/kseg: where generated data and backbones go."""
    return os.environ.get("KSEG_DATA_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "kseg")


def ensure_generated(cache_dir, name, what, generate_fn, kwargs):
    """`<cache_dir>/<name>`, made by generate_fn(staging, **kwargs) in a
    temporary sibling renamed into place (see ensure_embedded)."""
    cache_dir = os.path.abspath(cache_dir or default_cache_dir())
    final = os.path.join(cache_dir, name)
    if os.path.isdir(final):
        return final
    os.makedirs(cache_dir, exist_ok=True)
    num_images = kwargs["num_train"] + kwargs["num_val"]
    logging.info(f"generating {what} in {final} ({num_images} images)")
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


def complete_kwargs(defaults, given, function):
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
    kwargs = complete_kwargs(GENERATE_DEFAULTS, generate_kwargs, "generate")
    kwargs["class_names"] = list(kwargs["class_names"])
    return ensure_generated(cache_dir, dataset_name(kwargs),
                             "embedded dataset", generate, kwargs)
