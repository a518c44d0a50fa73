"""DeepLab-v1 on VGG-16 with atrous convolution (docs/network.md).

The network maps an image batch (B, H, W, 3), BGR minus the ImageNet mean
(`preprocess`), to class scores (B, ceil(H/8), ceil(W/8), C) at output
stride 8: a 321x321 crop gives a 41x41 score map. Layer names follow
`keras.applications.VGG16` (`block1_conv1` ... `block5_conv3`) so ImageNet
weights map one to one. `ModelConfig(multiscale=True)` builds DeepLab-MSc:
the same network with a two-layer branch on the image and on each of
pool1-pool4 whose outputs fc8 reads next to fc7's (`MULTISCALE_LAYERS`).

Example (a 1/16-width network, quick to build):
    >>> from kseg.config import ModelConfig
    >>> net = build_deeplab(ModelConfig(num_classes=21, fov="large", width=0.0625))
    >>> images = np.zeros((1, 321, 321, 3), np.uint8)  # RGB
    >>> tuple(net(preprocess(images)).shape)
    (1, 41, 41, 21)
    >>> msc = build_deeplab(ModelConfig(num_classes=21, width=0.0625, multiscale=True))
    >>> tuple(msc(preprocess(images)).shape), msc.get_layer("fc8").kernel.shape[2]  # 64 + 5 x 8
    ((1, 41, 41, 21), 104)
"""

from __future__ import annotations

import functools
import os

import keras
import numpy as np
import tensorflow as tf

from kseg.config import ModelConfig
from kseg.constants import CLASSIFIER, FOVS, STRIDE, VGG_BLOCKS

# DeepLab-MSc (Chen et al., ICLR 2015, section 4.3; docs/network.md): a two-layer
# MLP on each of these feature maps, (source, stride of the branch's first layer).
# The stride brings the source to the score map's stride 8: the image is at
# stride 1, pool1 at 2, pool2 at 4, pool3 and pool4 at 8 (pool4 keeps it).
MULTISCALE_SOURCES = (("image", 8), ("pool1", 4), ("pool2", 2), ("pool3", 1), ("pool4", 1))
MULTISCALE_CHANNELS = 128  # of each branch layer, at width 1
# The branches' layers with weights: msc_<source>_conv1 (3x3, with the stride
# above) and msc_<source>_conv2 (1x1). Neither in BACKBONE_LAYERS: no pretrained
# backbone has them, so they start as built and train under --freeze_backbone_steps.
MULTISCALE_LAYERS = tuple(f"msc_{source}_conv{i}" for source, _ in MULTISCALE_SOURCES
                          for i in (1, 2))


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


@functools.lru_cache(maxsize=None)
def direct_dilation_supported(dtype: str) -> bool:
    """Whether this process's default device has dilated Conv2D kernels, gradients
    included, for `dtype`: oneDNN's on x86 CPUs (TensorFlow's default there) and
    cuDNN's do; TensorFlow's own CPU kernels (TF_ENABLE_ONEDNN_OPTS=0, some
    other CPUs) compute no dilated gradient, nor does oneDNN for float16 on some
    CPUs (an AMD EPYC with AVX-512: measured). Found out once per dtype by
    running the three ops on a tiny case, eagerly (the ops themselves:
    `tf.init_scope` stops gradient tapes, so a tape would record nothing here
    and prove nothing)."""
    with tf.init_scope():
        try:
            x, kernel = tf.ones([1, 5, 5, 1], dtype), tf.ones([3, 3, 1, 1], dtype)
            y = tf.nn.conv2d(x, kernel, 1, "SAME", dilations=2)
            conv = dict(out_backprop=y, strides=[1, 1, 1, 1], padding="SAME",
                        dilations=[1, 2, 2, 1])
            tf.raw_ops.Conv2DBackpropInput(input_sizes=tf.shape(x), filter=kernel, **conv)
            tf.raw_ops.Conv2DBackpropFilter(input=x, filter_sizes=tf.shape(kernel), **conv)
            return True
        except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError,
                tf.errors.NotFoundError):
            return False


def atrous_conv2d(images: tf.Tensor, kernel: tf.Tensor, dilation: tuple[int, int]) -> tf.Tensor:
    """A dilated 'same' convolution of stride 1, as one dilated Conv2D op, whose
    kernel gradient is one matrix product per kernel tap.

    images (B, H, W, Cin), kernel (kh, kw, Cin, Cout) of the same float dtype
    -> (B, H, W, Cout). The value and the input gradient are the dilated
    Conv2D op's and its Conv2DBackpropInput. The kernel gradient is
    sum over pixels of image(p + tap offset) x upstream(p), for each of the
    kh x kw taps an (Cin x B*H*W) @ (B*H*W x Cout) product of the padded
    input's shifted window: the same sums as Conv2DBackpropFilter, in another
    order. Measured for fc6 in bfloat16 (41x41, 512 -> 1024, dilation 12,
    loaded machine): oneDNN's dilated Conv2DBackpropFilter 1.8 s, the taps'
    products 0.11 s; float32 and the undilated case are about even.
    """
    dh, dw = dilation
    kh, kw = kernel.shape[0], kernel.shape[1]

    @tf.custom_gradient
    def conv(x, w):
        y = tf.nn.conv2d(x, w, 1, "SAME", dilations=[dh, dw])  # (B, H, W, Cout)

        def grad(dy):
            dx = tf.raw_ops.Conv2DBackpropInput(
                input_sizes=tf.shape(x), filter=w, out_backprop=dy, strides=[1, 1, 1, 1],
                padding="SAME", dilations=[1, dh, dw, 1])  # (B, H, W, Cin)
            # 'SAME' pads (k - 1) * d in all, the smaller half first.
            pad_h, pad_w = (kh - 1) * dh, (kw - 1) * dw
            padded = tf.pad(x, [[0, 0], [pad_h // 2, pad_h - pad_h // 2],
                                [pad_w // 2, pad_w - pad_w // 2], [0, 0]])
            height, width = tf.shape(x)[1], tf.shape(x)[2]
            upstream = tf.reshape(dy, [-1, tf.shape(dy)[3]])  # (B*H*W, Cout)
            taps = [tf.matmul(tf.reshape(padded[:, i * dh:i * dh + height,
                                                j * dw:j * dw + width], [-1, tf.shape(x)[3]]),
                              upstream, transpose_a=True)  # (Cin, Cout)
                    for i in range(kh) for j in range(kw)]
            return dx, tf.reshape(tf.stack(taps), tf.shape(w))  # (kh, kw, Cin, Cout)
        return y, grad
    # Tensors, not the layer's variable: the gradient above is the kernel's.
    return conv(tf.convert_to_tensor(images), tf.convert_to_tensor(kernel))


@keras.saving.register_keras_serializable(package="kseg")
class AtrousConv2D(keras.layers.Conv2D):
    """A Conv2D (same weights, same function) whose dilated convolution is one
    dilated Conv2D op.

    Keras' Conv2D calls `tf.nn.convolution`, which runs any dilation > 1 as
    SpaceToBatch -> undilated convolution -> BatchToSpace (the one form that
    once had CPU gradients). For DeepLab's fc6 (3x3, dilation 12, on a 41x41
    map) that convolves 144 padded 6x6 tiles, a third more multiply-adds than
    the map has, in tiles too small for fast kernels, and keeps grappler from
    fusing the bias and ReLU into the convolution: measured, a batch-1
    training step spent ~30% of its time in fc6 for ~16% of its FLOPs
    (BENCHMARKS.md). Where the device has dilated kernels
    (`direct_dilation_supported`) this layer is `atrous_conv2d` instead (one
    dilated op, and a kernel gradient by matrix products: oneDNN's dilated
    kernel gradient is very slow in bfloat16); elsewhere, or for strides or
    'valid' padding, which DeepLab does not use, it is Keras' Conv2D. XLA
    compiles either.
    """

    def convolution_op(self, inputs, kernel):
        if (max(self.dilation_rate) > 1 and self.data_format == "channels_last"
                and self.padding == "same" and tuple(self.strides) == (1, 1)
                and direct_dilation_supported(self.compute_dtype)):
            return atrous_conv2d(inputs, kernel, tuple(self.dilation_rate))
        return super().convolution_op(inputs, kernel)


def build_deeplab(config: ModelConfig = ModelConfig(), name: str = "deeplab",
                  batch_norm: bool = False) -> keras.Model:
    """Builds DeepLab-VGG16 as a Keras functional model.

    Input (B, H, W, 3) float32, BGR minus the ImageNet mean (`preprocess` of
    uint8 RGB images); output (B, h, w, C) float32 logits with
    h = ceil(H / 8), w = ceil(W / 8) (`score_map_size`).

    `config.precision` is the Keras dtype policy of every layer but fc8:
    under "mixed_bfloat16" / "mixed_float16" conv1-fc7 (and the --multiscale
    branches), the pools and the dropouts compute in that type (the first
    convolutions cast the float32 input) while the weights stay float32; fc8
    always computes in float32 (its input is cast up), so the scores, and the
    loss, E-steps and CRF that read them, are float32 whatever the policy. The
    policy is passed to each layer, not set globally, so networks of several
    precisions can live in one process.

    With `config.multiscale` (DeepLab-MSc), each of the image and pool1-pool4
    feeds a branch: a 3x3 convolution of 128 x width channels whose stride
    (8, 4, 2, 1, 1) brings it to the score map's stride, then a 1x1 one of as
    many channels, each followed by ReLU and dropout as fc6 and fc7 are. The
    five (B, h, w, 128 x width) maps are concatenated after fc7's
    (B, h, w, F) ("msc_concat", fc7's channels first), so fc8 reads
    F + 5 x 128 x width channels. 'same' padding gives every branch
    ceil(H / 8) rows like fc7; for H = 8k+1 (training crops, and every image
    at inference, `kseg.inference.segment`) score pixel i of each branch is
    centred on input pixel 8i, as fc7's is.

    `batch_norm` puts a BatchNormalization (named `<conv>_bn`) between each of
    conv1-fc7 and its ReLU. DeepLab has none; only the stand-in pretraining
    uses it, to train from scratch quickly, and folds it into the
    convolutions afterwards (`fold_batch_norm`), so what it hands on is a
    plain VGG backbone.
    """
    policy = config.precision

    def conv(x, filters, kernel, name, dilation=1, init=None, strides=1):
        layer = AtrousConv2D if dilation > 1 else keras.layers.Conv2D
        x = layer(filters, kernel, strides=strides, padding="same", dilation_rate=dilation,
                  activation=None if batch_norm else "relu",
                  kernel_initializer=init or conv_init, name=name, dtype=policy)(x)
        if batch_norm:
            x = keras.layers.BatchNormalization(name=f"{name}_bn", dtype=policy)(x)
            x = keras.layers.ReLU(name=f"{name}_relu", dtype=policy)(x)
        return x

    conv_init = keras.initializers.HeNormal()
    # The input is raw pixels minus the mean (std ~60, the Caffe convention
    # VGG-16's weights expect): a random first layer is scaled down to match,
    # so that activations start at unit scale.
    first_init = keras.initializers.VarianceScaling(2.0 / INPUT_SCALE**2, "fan_in", "truncated_normal")
    x = inputs = keras.Input((None, None, 3), name="image")
    sources = {"image": inputs}  # what the multi-scale branches read
    for block, num_convs, channels in VGG_BLOCKS:
        dilation = 2 if block == 5 else 1  # conv5: atrous, rate 2.
        for i in range(1, num_convs + 1):
            x = conv(x, _channels(channels, config.width), 3, f"block{block}_conv{i}", dilation,
                     first_init if block == i == 1 else conv_init)
        stride = 2 if block <= 3 else 1  # pool4 and pool5 keep the resolution.
        x = keras.layers.MaxPooling2D(3, strides=stride, padding="same", name=f"block{block}_pool",
                                      dtype=policy)(x)
        sources[f"pool{block}"] = x
    kernel, dilation, fc_channels = FOVS[config.fov]
    fc_channels = _channels(fc_channels, config.width)
    x = conv(x, fc_channels, kernel, "fc6", dilation)
    x = keras.layers.Dropout(config.dropout, name="drop6", dtype=policy)(x)
    x = conv(x, fc_channels, 1, "fc7")
    x = keras.layers.Dropout(config.dropout, name="drop7", dtype=policy)(x)
    if config.multiscale:
        # Built after the main path, so that the layers they share draw the
        # same random initial weights with and without the branches.
        branches = []
        for source, stride in MULTISCALE_SOURCES:
            y = conv(sources[source], _channels(MULTISCALE_CHANNELS, config.width), 3,
                     f"msc_{source}_conv1", init=first_init if source == "image" else conv_init,
                     strides=stride)
            y = keras.layers.Dropout(config.dropout, name=f"msc_{source}_drop1", dtype=policy)(y)
            y = conv(y, _channels(MULTISCALE_CHANNELS, config.width), 1, f"msc_{source}_conv2")
            branches.append(keras.layers.Dropout(config.dropout, name=f"msc_{source}_drop2",
                                                 dtype=policy)(y))
        x = keras.layers.Concatenate(name="msc_concat", dtype=policy)(
            [x] + branches)  # (B, h, w, F + 5 x 128 x width)
    # float32 whatever the policy: softmax, loss and E-steps need its range.
    scores = keras.layers.Conv2D(
        config.num_classes, 1, kernel_initializer=keras.initializers.RandomNormal(stddev=0.01),
        name=CLASSIFIER, dtype="float32")(x)
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


BACKBONE_LAYERS = tuple(f"block{b}_conv{i}" for b, n, _ in VGG_BLOCKS
                        for i in range(1, n + 1)) + ("fc6", "fc7")


def backbone_weights(net: keras.Model) -> dict:
    """{layer name: [kernel, bias]} of conv1-fc7 (everything but fc8)."""
    return {name: net.get_layer(name).get_weights() for name in BACKBONE_LAYERS}


def fold_batch_norm(net: keras.Model) -> dict:
    """conv1-fc7 of a `batch_norm=True` network as plain convolutions.

    Inference-mode BN is affine per channel, y = g (x - m) / sqrt(v + eps) + b,
    so it folds into the preceding convolution: kernel * s, (bias - m) * s + b
    with s = g / sqrt(v + eps). Returns {layer: [kernel, bias]} for a network
    without BN (same outputs up to float rounding)."""
    out = {}
    for name in BACKBONE_LAYERS:
        kernel, bias = net.get_layer(name).get_weights()
        bn = net.get_layer(f"{name}_bn")
        gamma, beta, mean, var = bn.get_weights()
        scale = gamma / np.sqrt(var + bn.epsilon)
        out[name] = [kernel * scale, (bias - mean) * scale + beta]
    return out


def load_backbone(net: keras.Model, weights: dict, source: str) -> None:
    """Copies conv1-fc7 from `weights` ({layer: [kernel, bias]}) into `net`;
    fc8 (the classifier) is left as built. The one path of every pretrained
    start: VGG-16 from ImageNet and the embedded stand-in alike."""
    missing = [name for name in BACKBONE_LAYERS if name not in weights]
    if missing:
        raise ValueError(f"{source}: no weights for layers {missing}")
    for name in BACKBONE_LAYERS:
        layer = net.get_layer(name)
        expected = [tuple(w.shape) for w in layer.weights]
        got = [tuple(np.shape(w)) for w in weights[name]]
        if got != expected:
            raise ValueError(f"{source}: layer {name} has shapes {got} there but {expected} "
                             "in this network (another --width or --fov?)")
        layer.set_weights(weights[name])


def is_multiscale(net: keras.Model) -> bool:
    """Whether `net` has DeepLab-MSc's branches (built with `multiscale=True`)."""
    return any(layer.name in MULTISCALE_LAYERS for layer in net.layers)


def widen_classifier(weights: list, net: keras.Model) -> list:
    """A single-scale network's fc8 as the fc8 of the multi-scale `net`.

    `weights` = [kernel (1, 1, F, C), bias (C,)] of a single-scale network;
    returns [kernel (1, 1, F + E, C), bias] for `net`'s fc8, which reads fc7's F
    channels first and then the branches' E = 5 x 128 x width: the rows of
    fc7's channels are `weights`' own, the rows of the branches' are zero. So
    `net` starts with exactly the single-scale network's scores, whatever its
    branches hold, and training grows the new rows from there (the start of
    DeepLab-MSc from a trained single-scale run, `--init_from`).
    """
    kernel, bias = weights
    wide = tuple(net.get_layer(CLASSIFIER).kernel.shape)
    fc7 = net.get_layer("fc7").filters
    if not is_multiscale(net) or tuple(kernel.shape) != (1, 1, fc7, wide[3]):
        raise ValueError(f"an fc8 kernel of shape {tuple(kernel.shape)} does not widen into the "
                         f"multi-scale fc8 of shape {wide}: it must read this network's {fc7} "
                         f"fc7 channels into its {wide[3]} classes")
    out = np.zeros(wide, kernel.dtype)
    out[:, :, :kernel.shape[2]] = kernel
    return [out, bias]


def vgg16_backbone(fov: str, weights: str = "imagenet") -> dict:
    """conv1-fc7 of DeepLab from `keras.applications.VGG16` weights.

    `weights` is "imagenet" (downloaded by Keras on a connected machine) or a
    local path to a `keras.applications.VGG16` weights file (with the top).
    conv1-conv5 are copied; fc6/fc7 come from fc1/fc2 by `_fc_surgery`.
    """
    try:
        vgg = keras.applications.VGG16(weights=weights, include_top=True)
    except Exception as e:  # Keras raises a bare Exception for a failed download
        if weights != "imagenet":
            raise
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ConnectionError(
            f"--init=imagenet: Keras could not download the VGG-16 ImageNet weights ({reason}); "
            "without network, pass --init=PATH to a local Keras VGG-16 weights file "
            "(vgg16_weights_tf_dim_ordering_tf_kernels.h5, with the top)") from e
    out = {layer.name: layer.get_weights() for layer in vgg.layers
           if layer.name.startswith("block") and "conv" in layer.name}
    fc1 = vgg.get_layer("fc1").get_weights()
    fc2 = vgg.get_layer("fc2").get_weights()
    out["fc6"], out["fc7"] = _fc_surgery(fc1[0], fc2[0], fc1[1], fc2[1], fov)
    return out


def load_vgg16_weights(net: keras.Model, fov: str, weights: str = "imagenet") -> None:
    """Initialises conv1-conv5, fc6 and fc7 of `net` from VGG-16 weights.

    Only a width-1 network can take VGG-16 weights. fc8 is left as built.
    """
    if net.get_layer("block1_conv1").filters != 64:
        raise ValueError("VGG-16 weights need a width-1 network (--width=1).")
    load_backbone(net, vgg16_backbone(fov, weights), f"VGG-16 weights {weights!r}")


def read_backbone_file(path: str) -> dict:
    """{layer: [kernel, bias]} from a backbone .npz (kseg.training.pretrain)."""
    weights: dict = {}
    with np.load(path) as data:
        for key in sorted(data.files, key=lambda k: (k.rsplit("/", 1)[0], int(k.rsplit("/", 1)[1]))):
            weights.setdefault(key.rsplit("/", 1)[0], []).append(data[key])
    return weights


def initialise(net: keras.Model, fov: str, init: str) -> None:
    """Applies an `--init` choice: "random", "imagenet", a local Keras VGG-16
    weights file (.h5), or a backbone file (.npz) written by pretraining on
    the embedded ImageNet stand-in (kseg.training.pretrain)."""
    if init == "random":
        return
    if init != "imagenet":
        if not os.path.isfile(init):
            raise FileNotFoundError(f"--init: no VGG-16 weights or backbone file at {init!r}")
        if init.endswith(".npz"):
            load_backbone(net, read_backbone_file(init), f"--init={init}")
            return
    load_vgg16_weights(net, fov, init)
