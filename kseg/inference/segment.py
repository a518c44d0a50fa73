"""Whole-image inference: the one path of evaluation, prediction and export (docs/evaluation.md).

`segment` pads the image to 8k+1, runs the network, upsamples the stride-8
scores bilinearly with aligned corners (score-map pixel i sits on image
pixel 8i, as in DeepLab), crops and takes the softmax. Evaluation,
prediction and the exported SavedModel all call it.
"""

from __future__ import annotations

from typing import Callable, Iterator, Sequence

import keras
import numpy as np
import tensorflow as tf

from kseg.crf.evaluate import CRFSample
from kseg.model import preprocess


def resize_aligned(images: tf.Tensor, size: tf.Tensor) -> tf.Tensor:
    """Bilinear resize with aligned corners: (B, h, w, C) -> (B, H, W, C) float32.

    The corner pixels of input and output coincide, so a (k+1)-pixel score
    map of stride 8 lands on the 8k+1 input pixels (DeepLab's upsampling,
    Caffe's Interp layer). `tf.image.resize` has no aligned-corner mode; this
    is the ResizeBilinear op behind the deprecated
    `tf.compat.v1.image.resize_bilinear(..., align_corners=True)`, called
    directly (same values, no deprecation warning).
    """
    return tf.raw_ops.ResizeBilinear(images=images, size=tf.cast(size, tf.int32),
                                     align_corners=True, half_pixel_centers=False)


def segment(network: keras.Model, images: tf.Tensor) -> tf.Tensor:
    """Class probabilities at the input size.

    images (B, H, W, 3) uint8 RGB, any size -> (B, H, W, C) float32.
    """
    height, width = tf.shape(images)[1], tf.shape(images)[2]
    # Pad bottom/right to 8k+1 so the score map's corners land on pixels.
    padded_h = (height + 6) // 8 * 8 + 1
    padded_w = (width + 6) // 8 * 8 + 1
    x = preprocess(images)  # (B, H, W, 3)
    x = tf.pad(x, [[0, 0], [0, padded_h - height], [0, padded_w - width], [0, 0]])
    scores = network(x, training=False)  # (B, k+1, l+1, C)
    scores = resize_aligned(scores, tf.stack([padded_h, padded_w]))
    return tf.nn.softmax(scores[:, :height, :width], axis=-1)  # (B, H, W, C)


def make_segmenter(network: keras.Model,
                   jit_compile: bool = False) -> Callable[[tf.Tensor], tf.Tensor]:
    """A traced `segment` for one uint8 image (H, W, 3) -> probs (H, W, C).

    With `jit_compile` XLA compiles it, once per image size: on a split of
    images of many sizes (VOC) the compilations can cost more than they
    save; images of one size (the embedded data, a camera) pay once."""
    @tf.function(input_signature=[tf.TensorSpec([None, None, 3], tf.uint8)],
                 jit_compile=jit_compile)
    def run(image):
        return segment(network, image[None])[0]
    return run


def network_predictions(network: keras.Model, dataset: tf.data.Dataset,
                        on_image: Callable[[str, np.ndarray, np.ndarray, np.ndarray], None] | None = None,
                        label_map: Sequence[int] | None = None, jit_compile: bool = False):
    """Yields (label, prediction) per image of an `eval_dataset`.

    `on_image(id, image, probs, prediction)` sees every image (to write
    masks or run a CRF) before its pair is yielded. With `label_map` (the
    network's label of each dataset label, Cross-Joint) the probabilities
    are those of the mapped labels, renormalised, in the dataset's order.
    `jit_compile`: see `make_segmenter`."""
    run = make_segmenter(network, jit_compile)
    for example in dataset:
        probs = run(example["image"]).numpy()  # (H, W, C)
        if label_map is not None:
            probs = probs[..., list(label_map)]
            probs /= probs.sum(-1, keepdims=True)
        prediction = probs.argmax(-1).astype(np.uint8)
        if on_image is not None:
            on_image(example["id"].numpy().decode(), example["image"].numpy(), probs, prediction)
        yield example["label"].numpy(), prediction


def network_samples(network: keras.Model, dataset: tf.data.Dataset,
                    jit_compile: bool = False) -> Iterator[CRFSample]:
    """Runs `network` once over an `eval_dataset` (through `network_predictions`);
    yields a `kseg.crf.evaluate.CRFSample` per image, for the dense CRF."""
    seen = []

    def keep(image_id, image, probs, prediction):
        seen.append((image_id, image, probs))

    for label, _ in network_predictions(network, dataset, keep, jit_compile=jit_compile):
        image_id, image, probs = seen.pop()
        yield CRFSample(image_id, image, label, probs)
