import numpy as np
import pytest
import keras
import tensorflow as tf

from kseg import model


@pytest.mark.slow  # full-size VGG16
@pytest.mark.parametrize("fov", ["large", "small"])
def test_full_size_maps_321_to_41(fov):
    net = model.build_deeplab(model.ModelConfig(num_classes=21, fov=fov))
    scores = net(np.zeros((1, 321, 321, 3), np.float32))
    assert scores.shape == (1, 41, 41, 21)
    if fov == "large":
        # VGG-16 convs 14.71M + fc6 3x3x512x1024 + fc7 1024x1024 + fc8 1024x21.
        assert abs(net.count_params() - 20.5e6) < 0.1e6
        assert net.get_layer("fc6").kernel.shape == (3, 3, 512, 1024)
    else:
        assert net.get_layer("fc6").kernel.shape == (4, 4, 512, 4096)


@pytest.mark.parametrize("size,expected", [(129, 17), (128, 16), (64, 8), (8, 1)])
def test_output_stride_8(size, expected):
    net = model.build_deeplab(model.ModelConfig(num_classes=3, width=0.0625))
    assert net(np.zeros((2, size, size, 3), np.float32)).shape == (2, expected, expected, 3)
    assert model.score_map_size(size) == expected


def test_layer_names_match_vgg16():
    net = model.build_deeplab(model.ModelConfig(width=0.0625))
    vgg_convs = [f"block{b}_conv{i}" for b, n in ((1, 2), (2, 2), (3, 3), (4, 3), (5, 3))
                 for i in range(1, n + 1)]
    convs = [layer.name for layer in net.layers if isinstance(layer, keras.layers.Conv2D)]
    assert convs == vgg_convs + ["fc6", "fc7", "fc8"]
    assert net.get_layer("block5_conv1").dilation_rate == (2, 2)
    assert net.get_layer("fc6").dilation_rate == (12, 12)


def test_bad_config_is_rejected():
    with pytest.raises(ValueError, match="fov"):
        model.ModelConfig(fov="medium")
    with pytest.raises(ValueError, match="width"):
        model.ModelConfig(width=0)


def test_preprocess_round_trip():
    images = np.random.default_rng(0).integers(0, 256, (2, 5, 7, 3), dtype=np.uint8)
    x = model.preprocess(images).numpy()
    # BGR order minus the mean.
    np.testing.assert_allclose(x[..., 0], images[..., 2] - model.MEAN_BGR[0], atol=1e-4)
    np.testing.assert_array_equal(model.deprocess(x).numpy(), images)


@pytest.mark.slow  # full-size VGG16
@pytest.mark.parametrize("fov", ["large", "small"])
def test_vgg16_weight_surgery(tmp_path, fov):
    vgg = keras.applications.VGG16(weights=None, include_top=True)
    rng = np.random.default_rng(1)
    for name in ("fc1", "fc2", "block3_conv2"):
        layer = vgg.get_layer(name)
        layer.set_weights([rng.normal(size=w.shape).astype(np.float32)
                           for w in layer.get_weights()])
    path = str(tmp_path / "vgg16.weights.h5")
    vgg.save_weights(path)

    net = model.build_deeplab(model.ModelConfig(num_classes=21, fov=fov))
    model.initialise(net, fov, path)
    for i, layer in enumerate(vgg.layers):
        if "conv" in layer.name:
            for a, b in zip(layer.get_weights(), net.get_layer(layer.name).get_weights()):
                np.testing.assert_array_equal(a, b)
    fc1_kernel, fc1_bias = vgg.get_layer("fc1").get_weights()
    fc2_kernel, fc2_bias = vgg.get_layer("fc2").get_weights()
    fc6_kernel, fc6_bias = net.get_layer("fc6").get_weights()
    fc7_kernel, fc7_bias = net.get_layer("fc7").get_weights()
    full = fc1_kernel.reshape(7, 7, 512, 4096)
    if fov == "large":
        # 3x3 taps at rows/cols 0, 3, 6; every 4th output channel.
        np.testing.assert_array_equal(fc6_kernel[1, 2], full[3, 6, :, ::4])
        np.testing.assert_array_equal(fc6_bias, fc1_bias[::4])
        np.testing.assert_array_equal(fc7_kernel[0, 0], fc2_kernel[::4, ::4])
        np.testing.assert_array_equal(fc7_bias, fc2_bias[::4])
    else:
        # 4x4 taps at rows/cols 0, 2, 4, 6; all channels.
        np.testing.assert_array_equal(fc6_kernel[3, 1], full[6, 2])
        np.testing.assert_array_equal(fc7_kernel[0, 0], fc2_kernel)
        np.testing.assert_array_equal(fc7_bias, fc2_bias)


def test_surgery_needs_width_one_and_an_existing_file(tmp_path):
    net = model.build_deeplab(model.ModelConfig(width=0.25))
    with pytest.raises(FileNotFoundError, match="no VGG-16 weights"):
        model.initialise(net, "large", str(tmp_path / "missing.h5"))
    with pytest.raises(ValueError, match="width-1"):
        model.load_vgg16_weights(net, "large", str(tmp_path / "missing.h5"))


@pytest.mark.parametrize("precision,half", [("mixed_bfloat16", "bfloat16"),
                                            ("mixed_float16", "float16")])
@pytest.mark.parametrize("multiscale", [False, True])
def test_mixed_precision_computes_in_half_and_scores_in_float32(precision, half, multiscale):
    """conv1-fc7, the pools (and the DeepLab-MSc branches) compute in the half type on
    float32 weights; fc8 and so the scores stay float32; float32 weights load
    unchanged and give nearly the same scores."""
    keras.utils.set_random_seed(0)
    reference = model.build_deeplab(model.ModelConfig(num_classes=3, width=0.0625,
                                                      multiscale=multiscale))
    net = model.build_deeplab(model.ModelConfig(num_classes=3, width=0.0625, precision=precision,
                                                multiscale=multiscale))
    assert model.is_multiscale(net) == multiscale
    for layer in net.layers[1:]:
        expected = "float32" if layer.name == "fc8" else half
        assert layer.compute_dtype == expected, layer.name
    assert {w.dtype for w in net.weights} == {"float32"}
    net.set_weights(reference.get_weights())
    images = np.random.default_rng(0).normal(0, 60, (1, 33, 33, 3)).astype(np.float32)
    scores = net(images)
    assert scores.dtype == "float32"
    expected = reference(images).numpy()
    # Half precision keeps 8 (bfloat16) or 11 (float16) significant bits.
    np.testing.assert_allclose(scores.numpy(), expected, atol=0.05 * np.abs(expected).max())


def test_unknown_precision_is_rejected():
    with pytest.raises(ValueError, match="precision must be one of"):
        model.ModelConfig(precision="float64")


@pytest.mark.parametrize("direct", [True, False])
def test_atrous_conv_equals_keras_conv_values_and_gradients(monkeypatch, direct):
    """AtrousConv2D (block5, fc6) is Keras' dilated Conv2D: same outputs, input and
    weight gradients, through `atrous_conv2d` where the device has dilated kernels and
    through Keras' space-to-batch where not; an odd map size and a 4x4 kernel (uneven
    'same' padding) included."""
    import tensorflow as tf
    if not direct:
        monkeypatch.setattr(model, "direct_dilation_supported", lambda dtype: False)
    elif not model.direct_dilation_supported("float32"):
        pytest.skip("no dilated Conv2D gradient kernels on this device")
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=(2, 13, 11, 3)), tf.float32)
    for kernel, dilation in ((3, 4), (4, 2)):
        plain = keras.layers.Conv2D(5, kernel, padding="same", dilation_rate=dilation)
        atrous = model.AtrousConv2D(5, kernel, padding="same", dilation_rate=dilation)
        plain.build(x.shape)
        atrous.build(x.shape)
        atrous.set_weights([w + 0.1 for w in plain.get_weights()])
        plain.set_weights(atrous.get_weights())
        grads = []
        for layer in (plain, atrous):
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = layer(x)
                loss = tf.reduce_sum(y * y)
            grads.append((y.numpy(), *[g.numpy() for g in tape.gradient(
                loss, [x, *layer.weights])]))
        for a, b in zip(*grads):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


# --- DeepLab-MSc (--multiscale) ----------------------------------------------------


@pytest.mark.parametrize("fov", ["large", "small"])
def test_multiscale_maps_321_to_41_and_129_to_17(fov):
    net = model.build_deeplab(model.ModelConfig(num_classes=5, fov=fov, width=0.0625,
                                                multiscale=True))
    for size, expected in ((321, 41), (129, 17)):
        assert net(np.zeros((1, size, size, 3), np.float32)).shape == (1, expected, expected, 5)
    # fc8 reads fc7's channels and five 8-channel branches (128 x 0.0625).
    fc7 = {"large": 64, "small": 256}[fov]
    assert net.get_layer("fc8").kernel.shape == (1, 1, fc7 + 5 * 8, 5)
    assert model.is_multiscale(net)
    assert not model.is_multiscale(model.build_deeplab(model.ModelConfig(width=0.0625)))


def test_multiscale_branches_as_in_deeplab_msc():
    net = model.build_deeplab(model.ModelConfig(width=0.125, multiscale=True))
    # Stride 8, 4, 2, 1, 1 brings the image and pool1-pool4 to the score map's stride.
    strides = {"image": 8, "pool1": 4, "pool2": 2, "pool3": 1, "pool4": 1}
    for source, stride in strides.items():
        first, second = net.get_layer(f"msc_{source}_conv1"), net.get_layer(f"msc_{source}_conv2")
        assert (first.kernel_size, first.strides, first.filters) == ((3, 3), (stride, stride), 16)
        assert (second.kernel_size, second.strides, second.filters) == ((1, 1), (1, 1), 16)
        assert first.activation is second.activation is keras.activations.relu
    assert net.get_layer("msc_pool2_drop2").rate == net.get_layer("drop7").rate == 0.5
    assert not set(model.MULTISCALE_LAYERS) & set(model.BACKBONE_LAYERS)
    assert sorted(model.MULTISCALE_LAYERS) == sorted(
        layer.name for layer in net.layers if layer.name.startswith("msc_") and layer.weights)


def test_multiscale_parameter_count_worked_out_by_hand():
    """Width 1, LargeFOV, 21 classes (built, not run)."""
    single = model.build_deeplab(model.ModelConfig(num_classes=21, fov="large"))
    msc = model.build_deeplab(model.ModelConfig(num_classes=21, fov="large", multiscale=True))
    vgg_convs = sum(3 * 3 * cin * cout + cout for cin, cout in (
        (3, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 256),
        (256, 512), (512, 512), (512, 512), (512, 512), (512, 512), (512, 512)))
    assert vgg_convs == 14_714_688  # keras.applications.VGG16(include_top=False)
    fc6 = 3 * 3 * 512 * 1024 + 1024
    fc7 = 1024 * 1024 + 1024
    second = 128 * 128 + 128  # every branch's 1x1 layer
    branches = ((3 * 3 * 3 * 128 + 128) + second        # image
                + (3 * 3 * 64 * 128 + 128) + second     # pool1
                + (3 * 3 * 128 * 128 + 128) + second    # pool2
                + (3 * 3 * 256 * 128 + 128) + second    # pool3
                + (3 * 3 * 512 * 128 + 128) + second)   # pool4
    assert branches == 1_192_576
    fc8 = (1024 + 5 * 128) * 21 + 21
    assert msc.count_params() == vgg_convs + fc6 + fc7 + branches + fc8 == 21_711_445
    assert single.count_params() == vgg_convs + fc6 + fc7 + 1024 * 21 + 21 == 20_505_429
    assert msc.count_params() == single.count_params() + branches + 5 * 128 * 21


def test_backbone_start_loads_conv1_to_fc7_and_leaves_branches_and_fc8_fresh(tmp_path):
    from kseg.training import pretrain
    config = model.ModelConfig(num_classes=4, width=0.0625, multiscale=True)
    donor = model.build_deeplab(model.ModelConfig(num_classes=4, width=0.0625))
    path = str(tmp_path / "backbone.npz")
    pretrain.save_backbone(path, model.backbone_weights(donor), {})
    keras.utils.set_random_seed(5)
    fresh = model.build_deeplab(config)
    keras.utils.set_random_seed(5)
    net = model.build_deeplab(config)
    model.initialise(net, "large", path)
    for name in model.BACKBONE_LAYERS:
        for got, want in zip(net.get_layer(name).get_weights(), donor.get_layer(name).get_weights()):
            np.testing.assert_array_equal(got, want)
    for name in model.MULTISCALE_LAYERS + (model.CLASSIFIER,):
        for got, want in zip(net.get_layer(name).get_weights(), fresh.get_layer(name).get_weights()):
            np.testing.assert_array_equal(got, want, err_msg=name)


def test_widened_classifier_keeps_the_single_scale_scores():
    rng = np.random.default_rng(0)
    single = model.build_deeplab(model.ModelConfig(num_classes=4, width=0.0625, dropout=0.0))
    msc = model.build_deeplab(model.ModelConfig(num_classes=4, width=0.0625, multiscale=True))
    single.get_layer("fc8").set_weights([rng.normal(0, 0.1, (1, 1, 64, 4)).astype(np.float32),
                                         rng.normal(0, 0.1, 4).astype(np.float32)])
    model.load_backbone(msc, model.backbone_weights(single), "the single-scale network")
    kernel, bias = model.widen_classifier(single.get_layer("fc8").get_weights(), msc)
    assert kernel.shape == (1, 1, 64 + 40, 4) and not kernel[:, :, 64:].any()
    msc.get_layer("fc8").set_weights([kernel, bias])
    images = rng.normal(0, 60, (2, 33, 33, 3)).astype(np.float32)
    np.testing.assert_allclose(msc(images), single(images), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="does not widen"):
        model.widen_classifier([kernel, bias], msc)
    with pytest.raises(ValueError, match="does not widen"):
        model.widen_classifier(single.get_layer("fc8").get_weights(), single)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_direct_dilation_probe_tells_the_truth(dtype):
    """Where the probe says yes, a traced dilated convolution has gradients; where
    it says no, TensorFlow's kernels refuse them (float16 on some CPUs; an
    earlier probe inside tf.init_scope recorded no gradient and said yes
    everywhere)."""
    x, kernel = tf.ones([1, 9, 9, 2], dtype), tf.ones([3, 3, 2, 2], dtype)

    @tf.function
    def gradients(x, kernel):
        with tf.GradientTape() as tape:
            tape.watch([x, kernel])
            y = tf.nn.conv2d(x, kernel, 1, "SAME", dilations=2)
        return tape.gradient(y, [x, kernel])

    if model.direct_dilation_supported(dtype):
        assert all(g is not None for g in gradients(x, kernel))
    else:
        with pytest.raises((tf.errors.InvalidArgumentError, tf.errors.UnimplementedError,
                            tf.errors.NotFoundError)):
            gradients(x, kernel)
