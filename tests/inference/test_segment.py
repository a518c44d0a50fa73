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
