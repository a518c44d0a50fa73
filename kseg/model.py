"""DeepLab-v1 on VGG-16 with atrous convolution (docs/network.md).

The network maps an image batch (B, H, W, 3), BGR minus the ImageNet mean
(`preprocess`), to class scores (B, ceil(H/8), ceil(W/8), C) at output
stride 8: a 321x321 crop gives a 41x41 score map. Layer names follow
`keras.applications.VGG16` (`block1_conv1` ... `block5_conv3`) so ImageNet
weights map one to one.

Example (a 1/16-width network, quick to build):
    >>> from kseg.config import ModelConfig
    >>> net = build_deeplab(ModelConfig(num_classes=21, fov="large", width=0.0625))
    >>> images = np.zeros((1, 321, 321, 3), np.uint8)  # RGB
    >>> tuple(net(preprocess(images)).shape)
    (1, 41, 41, 21)
"""

from __future__ import annotations

import os

import keras
import numpy as np
import tensorflow as tf

from kseg.config import ModelConfig
from kseg.constants import CLASSIFIER, FOVS, STRIDE

# (block, number of 3x3 convs, channels at width 1) of VGG-16.
_VGG_BLOCKS = ((1, 2, 64), (2, 2, 128), (3, 3, 256), (4, 3, 512), (5, 3, 512))


# DeepLab / Caffe VGG-16 input convention: BGR channel order minus the
# ImageNet mean (docs/departures.md); the Keras VGG-16 weights expect it too.
MEAN_BGR = (104.008, 116.669, 122.675)
INPUT_SCALE = 60.0  # rough std of mean-subtracted pixel values


def preprocess(images: tf.Tensor) -> tf.Tensor:
    """(..., H, W, 3) uint8 RGB -> (..., H, W, 3) float32 BGR minus the mean.

    A padded pixel of value 0 after this step is "the image mean".

    >>> preprocess(np.array([[[255, 0, 0]]], np.uint8)).numpy()  # one red pixel
    array([[[-104.008, -116.669,  132.325]]], dtype=float32)
    """
    images = tf.cast(images, tf.float32)[..., ::-1]
    return images - tf.constant(MEAN_BGR, tf.float32)


def deprocess(images: tf.Tensor) -> tf.Tensor:
    """Inverse of `preprocess`: float BGR minus mean -> uint8 RGB."""
    images = (images + tf.constant(MEAN_BGR, tf.float32))[..., ::-1]
    return tf.cast(tf.clip_by_value(tf.round(images), 0, 255), tf.uint8)


def _channels(base: int, width: float) -> int:
    return max(4, int(round(base * width)))


def build_deeplab(config: ModelConfig = ModelConfig(), name: str = "deeplab") -> keras.Model:
    """Builds DeepLab-VGG16 as a Keras functional model.

    Input (B, H, W, 3) float32, BGR minus the ImageNet mean (`preprocess` of
    uint8 RGB images); output (B, h, w, C) float32 logits with
    h = ceil(H / 8), w = ceil(W / 8) (`score_map_size`).
    """
    conv_init = keras.initializers.HeNormal()
    # The input is raw pixels minus the mean (std ~60, the Caffe convention
    # VGG-16's weights expect): a random first layer is scaled down to match,
    # so that activations start at unit scale.
    first_init = keras.initializers.VarianceScaling(2.0 / INPUT_SCALE**2, "fan_in", "truncated_normal")
    x = inputs = keras.Input((None, None, 3), name="image")
    for block, num_convs, channels in _VGG_BLOCKS:
        dilation = 2 if block == 5 else 1  # conv5: atrous, rate 2.
        for i in range(1, num_convs + 1):
            x = keras.layers.Conv2D(
                _channels(channels, config.width), 3, padding="same", dilation_rate=dilation,
                activation="relu", kernel_initializer=first_init if block == i == 1 else conv_init,
                name=f"block{block}_conv{i}")(x)
        stride = 2 if block <= 3 else 1  # pool4 and pool5 keep the resolution.
        x = keras.layers.MaxPooling2D(3, strides=stride, padding="same", name=f"block{block}_pool")(x)
    kernel, dilation, fc_channels = FOVS[config.fov]
    fc_channels = _channels(fc_channels, config.width)
    x = keras.layers.Conv2D(fc_channels, kernel, padding="same", dilation_rate=dilation,
                            activation="relu", kernel_initializer=conv_init, name="fc6")(x)
    x = keras.layers.Dropout(config.dropout, name="drop6")(x)
    x = keras.layers.Conv2D(fc_channels, 1, activation="relu", kernel_initializer=conv_init,
                            name="fc7")(x)
    x = keras.layers.Dropout(config.dropout, name="drop7")(x)
    scores = keras.layers.Conv2D(
        config.num_classes, 1, kernel_initializer=keras.initializers.RandomNormal(stddev=0.01),
        name=CLASSIFIER)(x)
    return keras.Model(inputs, scores, name=name)


def score_map_size(size: int) -> int:
    """Score-map side for an input side (three stride-2 'same' pools).

    >>> score_map_size(321), score_map_size(129)
    (41, 17)
    """
    return -(-size // STRIDE)


# --- ImageNet initialisation by weight surgery --------------------------------


def _fc_surgery(fc1_kernel: np.ndarray, fc2_kernel: np.ndarray, fc1_bias: np.ndarray,
                fc2_bias: np.ndarray, fov: str):
    """Turns VGG-16's fc1/fc2 into DeepLab's fc6/fc7 (docs/network.md).

    fc1_kernel (25088, 4096) is reshaped to (7, 7, 512, 4096) (Keras flattens
    channels-last), subsampled spatially to 3x3 (rows/cols 0, 3, 6) or 4x4
    (0, 2, 4, 6); LargeFOV also keeps every 4th output channel (4096 -> 1024)
    and fc7 keeps every 4th input and output channel.
    Returns [fc6_kernel, fc6_bias], [fc7_kernel, fc7_bias].
    """
    kernel, _, channels = FOVS[fov]
    taps = np.round(np.linspace(0, 6, kernel)).astype(int)
    step = 4096 // channels
    fc6 = fc1_kernel.reshape(7, 7, 512, 4096)[taps][:, taps][..., ::step]  # (k, k, 512, ch)
    fc7 = fc2_kernel[::step, ::step].reshape(1, 1, channels, channels)  # (1, 1, ch, ch)
    return [fc6, fc1_bias[::step]], [fc7, fc2_bias[::step]]


def load_vgg16_weights(net: keras.Model, fov: str, weights: str = "imagenet") -> None:
    """Initialises conv1-conv5, fc6 and fc7 of `net` from VGG-16 weights.

    `weights` is "imagenet" (downloaded by Keras on a connected machine) or a
    local path to a `keras.applications.VGG16` weights file (with the top).
    Only a width-1 network can take VGG-16 weights. fc8 is left as built.
    """
    if net.get_layer("block1_conv1").filters != 64:
        raise ValueError("VGG-16 weights need a width-1 network (--width=1).")
    vgg = keras.applications.VGG16(weights=weights, include_top=True)
    for layer in vgg.layers:
        if layer.name.startswith("block") and "conv" in layer.name:
            net.get_layer(layer.name).set_weights(layer.get_weights())
    fc1 = vgg.get_layer("fc1").get_weights()
    fc2 = vgg.get_layer("fc2").get_weights()
    fc6, fc7 = _fc_surgery(fc1[0], fc2[0], fc1[1], fc2[1], fov)
    net.get_layer("fc6").set_weights(fc6)
    net.get_layer("fc7").set_weights(fc7)


def initialise(net: keras.Model, fov: str, init: str) -> None:
    """Applies an `--init` choice: "random", "imagenet" or a weights-file path."""
    if init == "random":
        return
    if init != "imagenet":
        if not os.path.isfile(init):
            raise FileNotFoundError(f"--init: no VGG-16 weights file at {init!r}")
    load_vgg16_weights(net, fov, init)
