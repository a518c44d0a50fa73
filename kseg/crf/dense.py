"""Fully connected CRF (Krähenbühl & Koltun 2011): parameters and mean-field inference.

Two uses (docs/evaluation.md, docs/method.md):
  * test-time post-processing: :func:`dense_crf` on the network's upsampled
    softmax probabilities;
  * Bbox-Seg pre-processing: :func:`kseg.crf.bbox_seg.bbox_seg` turns
    bounding boxes into a segmentation by running the same CRF on unaries
    built from the boxes.

The CRF is pydensecrf's ``DenseCRF2D`` (installed from the ``pydensecrf2``
package) with a Potts compatibility, diagonal kernels and symmetric
normalisation, the same model as DeepLab's C++ densecrf:

  E(x) = sum_i -log p_i(x_i)
       + sum_{i<j} [x_i != x_j] * (bi_w  * exp(-|p_i-p_j|^2 / 2 bi_xy_std^2
                                              -|I_i-I_j|^2 / 2 bi_rgb_std^2)
                                  + pos_w * exp(-|p_i-p_j|^2 / 2 pos_xy_std^2))

with p pixel positions and I RGB colours. Images are independent: run many
through :func:`kseg.utils.parallel.ordered_map`.
"""

import dataclasses
from dataclasses import dataclass

import numpy as np
import pydensecrf.densecrf as dcrf

from kseg.config import setting

# Probabilities are floored here before -log so the unary stays finite.
MIN_PROB = 1e-8
# Probabilities must sum to 1 over labels within this tolerance.
SUM_TOLERANCE = 1e-3
# VOC images are about 500 px on the long side; the published CRF position
# stds are in pixels of images that size.
REFERENCE_IMAGE_SIZE = 500


@dataclass(frozen=True)
class CRFParams:
    """Dense-CRF kernel parameters; defaults are DeepLab-v1 LargeFOV on VOC.

    Attributes:
      bi_w: weight of the bilateral (position + colour) kernel.
      bi_xy_std: position std of the bilateral kernel, in pixels.
      bi_rgb_std: colour std of the bilateral kernel, in 0..255 intensity units.
      pos_w: weight of the Gaussian (position only) smoothness kernel.
      pos_xy_std: position std of the Gaussian kernel, in pixels.
      num_iter: mean-field iterations.

    The position stds are in pixels of ~500 px images (VOC); use
    :meth:`scaled` or :meth:`for_image_size` on other data.
    """

    bi_w: float = setting(4.0, "Weight of the CRF's bilateral (position + colour) kernel.")
    bi_xy_std: float = setting(121.0, "Position std of the bilateral kernel, in pixels of a "
                                      "--crf_reference_size image.")
    bi_rgb_std: float = setting(5.0, "Colour std of the bilateral kernel, in 0..255 units.")
    pos_w: float = setting(3.0, "Weight of the CRF's Gaussian (position) kernel.")
    pos_xy_std: float = setting(3.0, "Position std of the Gaussian kernel, in pixels of a "
                                     "--crf_reference_size image.")
    num_iter: int = setting(10, "Mean-field iterations.")

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
                raise ValueError(f"CRFParams.{field.name} must be a number, got {value!r}")
            if not np.isfinite(value) or value <= 0:
                raise ValueError(f"CRFParams.{field.name} must be positive, got {value!r}")
        if int(self.num_iter) != self.num_iter:
            raise ValueError(f"CRFParams.num_iter must be an integer, got {self.num_iter!r}")
        # Normalise types so flag lines and equality do not depend on the caller.
        for field in dataclasses.fields(self):
            cast = int if field.name == "num_iter" else float
            object.__setattr__(self, field.name, cast(getattr(self, field.name)))

    def scaled(self, factor):
        """The same parameters with both position stds multiplied by ``factor``."""
        if not factor > 0:
            raise ValueError(f"CRF scale factor must be positive, got {factor!r}")
        return dataclasses.replace(self, bi_xy_std=self.bi_xy_std * factor,
                                   pos_xy_std=self.pos_xy_std * factor)

    def for_image_size(self, height, width, reference_size=REFERENCE_IMAGE_SIZE):
        """:meth:`scaled` by (long side of the image) / ``reference_size``."""
        return self.scaled(max(height, width) / reference_size)

    def as_dict(self, prefix=""):
        """``{prefix + field: value}``; with ``prefix='crf_'`` these are flag names."""
        return {prefix + f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def to_flags(self, prefix="crf_"):
        """absl flag lines, e.g. ``['--crf_bi_w=4.0', ..., '--crf_num_iter=10']``.

        Written next to results so every score records the CRF that made it.
        """
        return [f"--{name}={value!r}" for name, value in self.as_dict(prefix).items()]

    @classmethod
    def from_dict(cls, values, prefix="crf_"):
        """Builds params from ``{prefix + field: value}`` (e.g. absl
        ``FLAGS.flag_values_dict()``); other keys are ignored, missing fields
        keep their defaults."""
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {}
        for key, value in values.items():
            if key.startswith(prefix) and key[len(prefix):] in names:
                kwargs[key[len(prefix):]] = value
        return cls(**kwargs)

    @classmethod
    def from_flags(cls, lines, prefix="crf_"):
        """Parses lines written by :meth:`to_flags` (other lines are ignored)."""
        values = {}
        for line in lines:
            line = line.strip()
            if not line.startswith("--" + prefix) or "=" not in line:
                continue
            key, value = line[2:].split("=", 1)
            try:
                values[key] = float(value) if key != prefix + "num_iter" else int(value)
            except ValueError:
                raise ValueError(f"CRF flag line {line!r}: expected a number") from None
        return cls.from_dict(values, prefix)


def _check_image_and_probs(image, probs):
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        raise ValueError(f"dense_crf: image must be a uint8 numpy array, got "
                         f"{getattr(image, 'dtype', type(image).__name__)}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"dense_crf: image must have shape (H, W, 3) RGB, got {image.shape}")
    if not isinstance(probs, np.ndarray) or not np.issubdtype(probs.dtype, np.floating):
        raise ValueError(f"dense_crf: probs must be a float numpy array, got "
                         f"{getattr(probs, 'dtype', type(probs).__name__)}")
    if probs.ndim != 3:
        raise ValueError(f"dense_crf: probs must have shape (H, W, C), got {probs.shape}")
    if probs.shape[:2] != image.shape[:2]:
        raise ValueError(f"dense_crf: probs height/width {probs.shape[:2]} differ from "
                         f"the image's {image.shape[:2]}")
    if probs.shape[2] < 1:
        raise ValueError("dense_crf: probs has no label channel")
    if not np.all(np.isfinite(probs)):
        raise ValueError("dense_crf: probs contains NaN or infinity")
    if probs.min() < 0:
        raise ValueError(f"dense_crf: probs must be non-negative, min is {probs.min():g}")
    sums = probs.sum(axis=-1, dtype=np.float64)
    worst = np.abs(sums - 1.0).max()
    if worst > SUM_TOLERANCE:
        raise ValueError(f"dense_crf: probs must sum to 1 over the label axis "
                         f"(softmax probabilities, not logits); off by up to {worst:g}")


def dense_crf(image, probs, params=CRFParams()):
    """Mean-field inference in the fully connected CRF (docs/evaluation.md).

    Args:
      image: (H, W, 3) uint8 RGB image.
      probs: (H, W, C) float softmax probabilities at the image's size, summing
        to 1 over C. The unary is -log(max(probs, MIN_PROB)).
      params: :class:`CRFParams`.

    Returns:
      probs_out: (H, W, C) float32 CRF marginals (each pixel sums to 1).
      labels: (H, W) int32, the argmax of ``probs_out``.

    Raises:
      ValueError: on a bad dtype, shape or probability table (message says which).
      TypeError: ``params`` is not a :class:`CRFParams`.
    """
    if not isinstance(params, CRFParams):
        raise TypeError(f"dense_crf: params must be a CRFParams, got {type(params).__name__}")
    _check_image_and_probs(image, probs)
    height, width, num_labels = probs.shape
    # pydensecrf wants the unary as (C, H*W) float32 and the image as a
    # C-contiguous (H, W, 3) uint8 buffer.
    unary = -np.log(np.maximum(probs, MIN_PROB), dtype=np.float32)
    unary = np.ascontiguousarray(unary.reshape(height * width, num_labels).T)
    crf = dcrf.DenseCRF2D(width, height, num_labels)
    crf.setUnaryEnergy(unary)
    crf.addPairwiseGaussian(sxy=params.pos_xy_std, compat=params.pos_w)
    # pydensecrf takes a writable buffer: images decoded by PIL through
    # np.asarray are read-only, so copy those.
    rgbim = np.require(image, np.uint8, ["C_CONTIGUOUS", "WRITEABLE"])
    crf.addPairwiseBilateral(sxy=params.bi_xy_std, srgb=params.bi_rgb_std,
                             rgbim=rgbim, compat=params.bi_w)
    marginals = np.asarray(crf.inference(params.num_iter), dtype=np.float32)  # (C, H*W)
    probs_out = np.ascontiguousarray(marginals.T.reshape(height, width, num_labels))
    labels = probs_out.argmax(axis=-1).astype(np.int32)
    return probs_out, labels
