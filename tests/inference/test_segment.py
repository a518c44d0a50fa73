import numpy as np
import keras
import tensorflow as tf
from kseg.inference import segment as segment_lib



def test_segment_aligns_score_pixels_with_image_pixels():
    # A "network" that subsamples by 8 (pixel 8i -> score i): upsampling must
    # put score i back on pixel 8i and interpolate linearly in between, so a
    # linear ramp comes back exactly wherever no padding is involved.
    inputs = keras.Input((None, None, 3))
    net = keras.Model(inputs, keras.layers.Lambda(lambda x: x[:, ::8, ::8, :2])(inputs))
    for h, w in ((17, 17), (9, 33), (20, 13)):
        image = np.zeros((h, w, 3), np.uint8)
        image[..., 2] = 100 + np.arange(w)[None, :]  # R: becomes BGR channel 0
        image[..., 1] = 117
        probs = segment_lib.segment(net, tf.constant(image[None])).numpy()
        assert probs.shape == (1, h, w, 2)
        logit_diff = np.log(probs[0, ..., 0] / probs[0, ..., 1])  # x0 - x1
        expected = (100 + np.arange(w) - 104.008) - (117 - 116.669)
        # Rows/columns up to the last score sample (beyond it the padding counts).
        rows, last = (h - 1) // 8 * 8 + 1, (w - 1) // 8 * 8 + 1
        np.testing.assert_allclose(logit_diff[:rows, :last], np.broadcast_to(
            expected[:last], (rows, last)), atol=2e-3)


def test_resize_aligned_equals_the_deprecated_aligned_corner_resize():
    """The replacement of tf.compat.v1.image.resize_bilinear(align_corners=True)
    gives the same values: corners on corners, e.g. 2 -> 3 pixels is [a, (a+b)/2, b]."""
    scores = tf.constant(np.random.default_rng(0).normal(size=(2, 5, 7, 3)), tf.float32)
    for size in ([33, 49], [5, 7], [9, 4]):
        old = tf.compat.v1.image.resize_bilinear(scores, size, align_corners=True)
        np.testing.assert_array_equal(segment_lib.resize_aligned(scores, tf.constant(size)).numpy(),
                                      old.numpy())
    row = tf.constant([[[[0.0], [2.0]]]])  # (1, 1, 2, 1)
    assert segment_lib.resize_aligned(row, [1, 3]).numpy().ravel().tolist() == [0.0, 1.0, 2.0]


def test_label_map_keeps_and_renormalises_the_dataset_labels():
    # Cross-Joint: a 3-label network evaluated on a dataset whose labels 0 and 1
    # are the network's 0 and 2. Logits (2, 5, 1) everywhere: the network's
    # label 1 wins but is not in the dataset; the dataset's probabilities are
    # e^2 : e^1 renormalised, i.e. (e / (1 + e), 1 / (1 + e)), and label 0 wins.
    logits = tf.constant([2.0, 5.0, 1.0])
    inputs = keras.Input((None, None, 3))
    net = keras.Model(inputs, keras.layers.Lambda(
        lambda x: tf.zeros_like(x[..., :1]) + logits)(inputs))
    example = {"image": tf.zeros([5, 7, 3], tf.uint8), "id": tf.constant("a"),
               "label": tf.zeros([5, 7], tf.uint8)}
    dataset = tf.data.Dataset.from_tensors(example)
    seen = []
    [(label, prediction)] = segment_lib.network_predictions(
        net, dataset, lambda *args: seen.append(args), label_map=(0, 2))
    probs = seen[0][2]
    assert probs.shape == (5, 7, 2)
    np.testing.assert_allclose(probs[..., 0], np.e / (1 + np.e), rtol=1e-5)
    np.testing.assert_allclose(probs[..., 1], 1 / (1 + np.e), rtol=1e-5)
    np.testing.assert_array_equal(prediction, 0)
    [(_, unmapped)] = segment_lib.network_predictions(net, dataset)
    np.testing.assert_array_equal(unmapped, 1)
