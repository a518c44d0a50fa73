"""The E-step's optional dense-CRF refinement (`EStepConfig.estep_crf`, docs/departures.md).

Not in the paper: its E-steps take the argmax of the network's scores plus
biases, and the dense CRF runs at test time only. With `--estep_crf` the
scores of the weak examples (image labels and boxes) are first refined by the
fully connected CRF (`kseg.crf.tf_dense`, TensorFlow ops, so it runs inside
the traced training step) and the E-step then works on the log of the CRF's
marginals: each weak example's target follows colour edges before the
network is trained on it.

Resolution: the CRF runs at **score-map resolution** (h = ceil(S / 8) for an
S x S crop), on the crop's colours averaged over the 7 x 7 pixels centred on
each score-map pixel (score-map pixel i sits on crop pixel 8i). That is
what the E-step's argmax needs (its targets are score-map sized), and it
costs 1/64 of the pixels of the crop. Measured at the embedded flagfiles'
setting (`python scripts/benchmark.py --what=estep_crf`, BENCHMARKS.md; a
busy machine): for a batch of 10 crops of 129x129 the CRF took 33 ms on
the 17x17 score maps and 1.6 s on the crops with the scores upsampled, 9
plain training steps of the width-0.125 network, which 2 CPU cores cannot
afford at every step; at 321x321 a crop's 103k pixels would take about
1.7 s per image on a CPU core (by the 500x375 figure), against 0.45 s for a
whole training step of 4 crops at width 0.25. Input resolution would also
need the scores upsampled before and the marginals downsampled after,
throwing away 63 of every 64 refined pixels. What is lost: colour detail
finer than 8 pixels (the average blurs thin structures).

Parameters: DeepLab's test-time CRF (`CRFParams()` defaults), whose
position stds are pixels of a 500-px image, scaled to the crop: by
(8 * score-map side) / 500, which is the crop side / 500 up to the
stride's rounding, then expressed in score-map pixels (/ 8). At 321x321 the
bilateral kernel's position std is about 10 score-map pixels (a quarter of
the map) and the Gaussian kernel's about 0.25, i.e. it adds only each
pixel's own marginal: the smoothing comes from the bilateral kernel.
"""

import tensorflow as tf

from kseg.constants import STRIDE
from kseg.crf import tf_dense
from kseg.crf.dense import MIN_PROB, REFERENCE_IMAGE_SIZE, CRFParams
from kseg.model import deprocess

# DeepLab-v1 LargeFOV's test-time CRF; position stds for a 500-px image.
ESTEP_CRF_PARAMS = CRFParams()
# The crop pixels averaged into one score-map pixel's colour: 7 x 7 centred on
# pixel 8i (odd, so centred; 'SAME' pooling with stride 8 puts the centre of
# window i on pixel 8i when S = 8k + 1).
POOL_SIZE = 7


def score_map_images(images: tf.Tensor) -> tf.Tensor:
    """The crops' colours at score-map resolution.

    Args:
      images: (B, S, S', 3) float32 crops as the pipeline gives them (BGR
        minus the mean, `kseg.model.preprocess`; padding is 0, the mean).

    Returns:
      (B, ceil(S / 8), ceil(S' / 8), 3) uint8 RGB, each pixel the mean of the
      crop pixels within 3 of crop pixel 8i (fewer at the border: 'SAME'
      average pooling counts only pixels inside the crop).
    """
    pooled = tf.nn.avg_pool2d(tf.cast(images, tf.float32), POOL_SIZE, STRIDE, "SAME")
    return deprocess(pooled)  # averaging commutes with the affine deprocess


def refine_scores(scores: tf.Tensor, images: tf.Tensor,
                  params: CRFParams = ESTEP_CRF_PARAMS) -> tf.Tensor:
    """Scores refined by the dense CRF at score-map resolution (module docstring).

    Args:
      scores: (B, h, w, C) float logits, h = ceil(S / 8), w = ceil(S' / 8).
      images: (B, S, S', 3) float32 preprocessed crops.
      params: CRF parameters with position stds for a 500-px image; scaled
        in the graph to the crop.

    Returns:
      (B, h, w, C) float32 log CRF marginals, floored at log(MIN_PROB): scores
      for the E-steps (a per-pixel constant away from logits, which no
      E-step's per-pixel argmax sees). No gradient flows through them.
    """
    f = tf.stop_gradient(tf.cast(scores, tf.float32))  # (B, h, w, C)
    small = score_map_images(images)  # (B, h, w, 3)
    same_size = tf.debugging.assert_equal(
        tf.shape(small)[:3], tf.shape(f)[:3],
        message="estep_crf: the score map is not ceil(crop / 8) on each side of the crop")
    log_min = tf.math.log(tf.constant(MIN_PROB, tf.float32))
    with tf.control_dependencies([same_size]):
        unary = -tf.maximum(tf.nn.log_softmax(f, axis=-1), log_min)  # (B, h, w, C)
    marginals = tf_dense.mean_field(small, unary, params,
                                    reference_size=REFERENCE_IMAGE_SIZE / STRIDE)
    return tf.stop_gradient(tf.maximum(tf.math.log(marginals), log_min))  # (B, h, w, C)


def refine_where(scores: tf.Tensor, images: tf.Tensor, mask: tf.Tensor,
                 params: CRFParams = ESTEP_CRF_PARAMS) -> tf.Tensor:
    """`refine_scores` on the examples where `mask` (B,) bool is True, the CRF run on those only.

    Returns (B, h, w, C) float32: refined scores where `mask`, the scores
    as they were elsewhere.
    """
    f = tf.stop_gradient(tf.cast(scores, tf.float32))  # (B, h, w, C)
    index = tf.where(mask)  # (n, 1)

    def refine():
        refined = refine_scores(tf.gather_nd(f, index), tf.gather_nd(images, index), params)
        return tf.tensor_scatter_nd_update(f, index, refined)

    return tf.cond(tf.reduce_any(mask), refine, lambda: f)
