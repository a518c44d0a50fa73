"""PASCAL VOC colour map and palette ("P" mode) label PNG input/output.

VOC label PNGs store one class index per pixel plus a colour table for
viewing. Saving a mask as RGB colours instead loses the indices; reading such a
file as labels gives values like 147 (a grey level of a colour), the classic
"Unexpected label 147" failure, so `read_label_png` detects it and says so.
"""

import functools

import numpy as np
from PIL import Image

from kseg.data.errors import DataError


def voc_palette():
    """Returns a fresh copy of the PASCAL VOC colour map (see _voc_palette)."""
    return _voc_palette().copy()


@functools.lru_cache(maxsize=None)
def _voc_palette():
    """Returns the PASCAL VOC colour map.

    Entry i is built by spreading the bits of i over the three channels:
    bit 3k of i goes to red, 3k+1 to green, 3k+2 to blue, each at bit 7-k of
    its channel. Label 1 is (128, 0, 0), 2 is (0, 128, 0), 255 is
    (224, 224, 192).

    Returns:
      (256, 3) uint8 array.
    """
    labels = np.arange(256, dtype=np.int64)
    palette = np.zeros((256, 3), dtype=np.int64)
    for k in range(8):
        group = labels >> (3 * k)
        for channel in range(3):
            palette[:, channel] |= ((group >> channel) & 1) << (7 - k)
    return palette.astype(np.uint8)


def write_label_png(path, label):
    """Writes a label map as a palette PNG with the VOC colour map.

    Args:
      path: output file path.
      label: (H, W) uint8 class indices (255 = void).
    """
    label = np.asarray(label)
    if label.ndim != 2 or label.dtype != np.uint8:
        raise ValueError(
            f"write_label_png({path}): expected an (H, W) uint8 label map, got "
            f"shape {label.shape} dtype {label.dtype}")
    _as_palette_image(label).save(path, format="PNG")


def _as_palette_image(label):
    """(H, W) uint8 indices -> PIL 'P' image carrying the VOC palette."""
    image = Image.new("P", (label.shape[1], label.shape[0]))
    image.putpalette(voc_palette().reshape(-1).tolist())
    image.frombytes(np.ascontiguousarray(label).tobytes())
    return image


def read_label_png(path):
    """Reads a label PNG as class indices.

    Args:
      path: a palette ('P') or greyscale ('L') PNG.

    Returns:
      (H, W) uint8 class indices.

    Raises:
      DataError: the file is missing or unreadable, or holds RGB(A) colours
        instead of class indices.
    """
    try:
        with Image.open(path) as image:
            image.load()
            mode = image.mode
            if mode in ("P", "L"):
                return np.array(image, dtype=np.uint8)
    except (OSError, ValueError, SyntaxError) as error:
        raise DataError(
            f"{path}: cannot read label PNG ({error}); expected a palette "
            "('P') or greyscale ('L') PNG of class indices") from error
    if mode in ("RGB", "RGBA"):
        raise DataError(
            f"{path}: label mask is an {mode} image (colours), expected a "
            "palette ('P') or greyscale ('L') PNG holding one class index per "
            "pixel. The mask was probably saved as colours, e.g. by an image "
            "editor or by converting to RGB; reading colours as labels gives "
            "values such as 'Unexpected label 147'. Re-save it with the VOC "
            "palette (kseg.data.palette.write_label_png) or map each colour "
            "back to its index.")
    raise DataError(
        f"{path}: label mask has PIL mode {mode!r}, expected a palette ('P') "
        "or greyscale ('L') PNG of uint8 class indices")
