"""An embedded stand-in for ImageNet: a synthetic image *classification* set.

The paper's network starts from VGG-16 trained on ImageNet classification,
whose features already tell objects from background; only the classifier
(fc8) starts from scratch. This module gives the embedded setup the same kind
of starting point, honestly: other images, image-level labels only.

- One dominant object per image, as in ImageNet: it fills most of a small
  (64-pixel) image, at the segmentation set's object and texture scale in
  pixels, on the segmentation set's kind of cluttered background. Small
  images make the pretraining cheap (4x the images per second of 128-pixel
  ones) and the dominant object makes the task learnable in minutes; both
  give features that separate the segmentation classes (docs/pretraining.md).
- Many more classes than the segmentation set: every class is a (shape,
  texture) pair. The five segmentation classes (disc/rings, square/checker,
  triangle/stripes, ring/grid, cross/dots) are among them, as ImageNet's
  classes cover VOC's; the others pair the same and new shapes with the same
  and new textures, so a classifier must look at both.
- Images are drawn from generators seeded in their own namespace
  (`_SEED_NAMESPACE`) with another layout, so no image of this set is an
  image of the segmentation set (tests/test_standin.py checks it). No mask or
  box is ever stored: only the image and its class.

Stored as `<cache>/standin-<hash>/{train,val}.npz` (uint8 images (N, S, S, 3),
uint8 multi-hot labels (N, K), one class each) and `classes.json`; made on first use like the embedded
segmentation set (`ensure_standin`).
"""

from __future__ import annotations

import json
import os

import numpy as np

from kseg.data import embedded

# Bump when the generated content changes, so caches are regenerated.
FORMAT_VERSION = 3

GENERATE_DEFAULTS = dict(num_train=8000, num_val=1000, image_size=64, seed=0)

# Seeds of this set are [_SEED_NAMESPACE, seed, split, index]; the segmentation
# set draws from [seed, split, index], so the two never share a generator.
_SEED_NAMESPACE = 7919

# Shapes: the segmentation set's five (drawn by kseg.data.embedded) and more.
SEGMENTATION_SHAPES = ("disc", "square", "triangle", "ring", "cross")
NEW_SHAPES = ("star", "crescent", "diamond", "hexagon", "ellipse", "frame", "half_disc",
              "l_shape")
SHAPES = SEGMENTATION_SHAPES + NEW_SHAPES

# Textures: the segmentation set's five (in class order) and more.
SEGMENTATION_TEXTURES = ("rings", "checker", "stripes", "grid", "dots")
NEW_TEXTURES = ("waves", "squares", "hatch", "zigzag", "speckle", "solid")
TEXTURES = SEGMENTATION_TEXTURES + NEW_TEXTURES

NUM_CLASSES = 48

# The object's extent as a share of the image side (0.6-1.0 of 64 pixels: 38-64
# pixels, where segmentation objects span 0.25-0.6 of 128: 32-77) and where its
# centre may fall (so that large objects are cut by the border, as in photos).
OBJECT_EXTENT = (0.6, 1.0)
CENTRE_RANGE = (0.4, 0.6)
# Texture periods in pixels: the segmentation set's at its 128-pixel default.
TEXTURE_PERIODS = (6.0, 9.0)


def _class_list(num_classes: int = NUM_CLASSES) -> tuple[tuple[str, str], ...]:
    """(shape, texture) of every class: first the five segmentation classes,
    then other pairs drawn once with a fixed generator (not the data seed, so
    that the classes do not change with it)."""
    seg = tuple(zip(SEGMENTATION_SHAPES, SEGMENTATION_TEXTURES))
    others = [(s, t) for s in SHAPES for t in TEXTURES if (s, t) not in seg]
    order = np.random.default_rng(2015).permutation(len(others))
    return seg + tuple(others[i] for i in order[:num_classes - len(seg)])


CLASSES = _class_list()


def class_names() -> list[str]:
    """'shape/texture' name of every class, label order."""
    return [f"{shape}/{texture}" for shape, texture in CLASSES]


# ------------------------------------------------------------------ drawing --

def _shape_mask(shape, dy, dx, size, rng):
    """Boolean (S, S) mask of a shape of extent `size` centred at the origin of
    the pixel offsets (dy, dx), randomly rotated where the shape allows."""
    if shape in SEGMENTATION_SHAPES:
        return embedded.shape_mask(SEGMENTATION_SHAPES.index(shape) + 1, dy, dx, size, rng)
    half = size / 2.0
    u, v = embedded.rotate(dy, dx, rng.uniform(0, 2 * np.pi))
    r = np.sqrt(u * u + v * v)
    if shape == "star":  # five points, inner radius 0.45
        theta = np.arctan2(u, v)
        # Radius of the star's outline along theta: linear between tips and notches.
        phase = np.abs(((theta * 5 / (2 * np.pi)) % 1.0) - 0.5) * 2  # 1 at tips, 0 at notches
        return r <= half * (0.45 + 0.55 * phase)
    if shape == "crescent":
        bite = (u - 0.45 * half) ** 2 + v ** 2 <= (0.8 * half) ** 2
        return (r <= half) & ~bite
    if shape == "diamond":
        return np.abs(u) / half + np.abs(v) / (0.55 * half) <= 1
    if shape == "hexagon":
        apothem = half * np.cos(np.pi / 6)
        return np.all([np.abs(u * np.cos(a) + v * np.sin(a)) <= apothem
                       for a in (0, np.pi / 3, 2 * np.pi / 3)], axis=0)
    if shape == "ellipse":
        return (u / half) ** 2 + (v / (half * rng.uniform(0.45, 0.65))) ** 2 <= 1
    if shape == "frame":  # a square outline, axis-aligned like the square
        inner = half * rng.uniform(0.5, 0.65)
        cheb = np.maximum(np.abs(dy), np.abs(dx))
        return (cheb <= half) & (cheb >= inner)
    if shape == "half_disc":
        return (r <= half) & (u >= -0.15 * half)
    if shape == "l_shape":
        arm = half * rng.uniform(0.4, 0.55)
        inside = (np.abs(u) <= half) & (np.abs(v) <= half)
        return inside & ((u >= half - 2 * arm) | (v <= -half + 2 * arm))
    raise ValueError(f"no shape named {shape!r}")


def _texture(texture, dy, dx, scale, rng):
    """Binary (S, S) texture pattern with random phase and orientation."""
    if texture in SEGMENTATION_TEXTURES:
        return embedded.texture(SEGMENTATION_TEXTURES.index(texture) + 1, dy, dx, scale, rng)
    u, v = embedded.rotate(dy, dx, rng.uniform(0, np.pi))
    u = u + rng.uniform(0, scale)
    v = v + rng.uniform(0, scale)
    if texture == "waves":
        wave = 0.25 * scale * np.sin(2 * np.pi * v / (1.5 * scale))
        return np.floor((u + wave) / (scale / 2)) % 2 == 0
    if texture == "squares":  # concentric squares
        return np.floor(np.maximum(np.abs(u), np.abs(v)) / (scale / 2)) % 2 == 0
    if texture == "hatch":  # thin lines in two diagonal directions
        line = scale / 5
        return (np.mod(u + v, scale) < line) | (np.mod(u - v, scale) < line)
    if texture == "zigzag":
        tooth = np.abs(np.mod(v, scale) - scale / 2)
        return np.floor((u + tooth) / (scale / 2)) % 2 == 0
    if texture == "speckle":
        cell = max(scale / 3, 1.0)
        cells = rng.random((64, 64)) < 0.5
        return cells[(np.floor(u / cell) % 64).astype(int), (np.floor(v / cell) % 64).astype(int)]
    if texture == "solid":
        return np.ones(dy.shape, bool)
    raise ValueError(f"no texture named {texture!r}")


def render_example(rng: np.random.Generator, image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Draws one classification image: one object of a random class filling
    most of the image, on the segmentation set's kind of cluttered background.

    Returns:
      image: (S, S, 3) uint8 RGB.
      labels: (K,) uint8 multi-hot over CLASSES (one class).
    """
    s = image_size
    image = embedded.background(rng, s)
    yy, xx = embedded.grid(s)
    cls = int(rng.integers(len(CLASSES)))
    size = rng.uniform(*OBJECT_EXTENT) * s
    cy, cx = rng.uniform(CENTRE_RANGE[0] * s, CENTRE_RANGE[1] * s, size=2)
    dy, dx = yy - cy, xx - cx
    shape, texture = CLASSES[cls]
    mask = _shape_mask(shape, dy, dx, size, rng)
    pattern = _texture(texture, dy, dx, rng.choice(TEXTURE_PERIODS), rng)
    colours = embedded.colour_pair(rng)
    image[mask] = np.where(pattern[mask][:, None], colours[0], colours[1])
    labels = np.zeros(len(CLASSES), np.uint8)
    labels[cls] = 1
    image += 6 * rng.standard_normal(size=image.shape, dtype=np.float32)
    return np.clip(np.round(image), 0, 255).astype(np.uint8), labels


_SPLIT_CODES = {"train": 0, "val": 1}


def example_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of image `index` of a split (its own namespace)."""
    return np.random.default_rng([_SEED_NAMESPACE, seed, _SPLIT_CODES[split], index])


def generate(root: str, num_train: int = 8000, num_val: int = 1000, image_size: int = 64,
             seed: int = 0) -> None:
    """Writes the stand-in set under `root`: train.npz, val.npz, classes.json."""
    os.makedirs(root, exist_ok=True)
    for split, count in (("train", num_train), ("val", num_val)):
        images = np.zeros((count, image_size, image_size, 3), np.uint8)
        labels = np.zeros((count, len(CLASSES)), np.uint8)
        for i in range(count):
            images[i], labels[i] = render_example(example_rng(seed, split, i), image_size)
        np.savez(os.path.join(root, f"{split}.npz"), images=images, labels=labels)
    with open(os.path.join(root, "classes.json"), "w", encoding="utf-8") as f:
        json.dump(class_names(), f, indent=1)


def ensure_standin(cache_dir: str | None = None, **generate_kwargs) -> str:
    """The root of the stand-in set, generated on first use (atomically, like
    `kseg.data.embedded.ensure_embedded`; the name hashes the arguments)."""
    kwargs = embedded.complete_kwargs(GENERATE_DEFAULTS, generate_kwargs, "generate")
    name = embedded.dataset_name(kwargs, prefix="standin", version=FORMAT_VERSION)
    return embedded.ensure_generated(cache_dir, name, "ImageNet stand-in set", generate, kwargs)


def load_split(root: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, S, S, 3) uint8, labels (N, K) uint8 multi-hot) of a split."""
    with np.load(os.path.join(root, f"{split}.npz")) as data:
        return data["images"], data["labels"]
