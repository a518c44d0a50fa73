"""Fully connected CRF (Krähenbühl & Koltun 2011) as TensorFlow ops.

The same model as :func:`kseg.crf.dense_crf` (pydensecrf's ``DenseCRF2D``):
unary -log(max(p, MIN_PROB)), a Gaussian kernel on pixel positions and a
bilateral kernel on positions and RGB colours, Potts compatibility, symmetric
kernel normalisation and ``num_iter`` mean-field updates

  Q_0 = softmax(-U)
  Q_t = softmax(-U + pos_w * K_pos(Q_{t-1}) + bi_w * K_bi(Q_{t-1}))

where K(Q) = D^{-1/2} A D^{-1/2} Q, A is the lattice approximation of the
Gaussian filter exp(-|f_i - f_j|^2 / 2) on the kernel's features f (positions
over their std, colours over theirs) and D = diag(A 1). Adding bi_w * K(Q)_l
to label l's logit is the Potts term: the energy [x_i != x_j] differs from
-[x_i == x_j] by a constant per pixel.

The Gaussian filtering runs on the permutohedral lattice of Adams, Baek and
Davis ("Fast High-Dimensional Filtering Using the Permutohedral Lattice",
Eurographics 2010), built from TensorFlow ops only, so that the CRF traces
inside ``tf.function`` with unknown image size, exports in a SavedModel and
runs on any device TensorFlow runs on:

* embedding: each d-dimensional feature is elevated onto the plane
  x_0 + ... + x_d = 0 of the lattice (scaled by sqrt(2/3) (d+1), so that the
  lattice blur approximates a unit-std Gaussian), the nearest remainder-0
  lattice point is found by rounding, the rank of each coordinate gives the
  enclosing simplex, and the d+1 simplex vertices get barycentric weights;
* vertices are made unique by encoding each integer key (with the image's
  index) as one int64 in a mixed radix wide enough that every blur neighbour
  also has a code, then ``tf.unique``;
* splat: ``tf.math.unsorted_segment_sum`` of the weighted values over vertex
  ids; blur: along each of the d+1 lattice directions, value + 0.5 (left +
  right neighbour), the neighbours found once with ``tf.searchsorted`` on the
  sorted codes; slice: gathers weighted by the same barycentric weights.

Agreement with pydensecrf is by construction, not by tuning: the same feature
order (x, y[, r, g, b]), the same elevation, rounding (to nearest, ties to
even, as its SSE path), ranking and barycentric weights, the same blur (1,
0.5, 0.5 along directions 0..d, no vertex created during the blur), the same
slice scale 1 / (1 + 2^-d) and the same symmetric normalisation with its
1e-20. What differs is floating-point summation order (segment sums and
gathers instead of its sequential loops), so marginals agree to ~1e-5 and a
pixel's label differs only where two labels tie to that precision.

Determinism: every op used is deterministic on CPU (``unsorted_segment_sum``
there adds in a fixed order). On GPU, ``unsorted_segment_sum`` uses atomic
adds; call ``tf.config.experimental.enable_op_determinism()`` for
bit-reproducible results there.
"""

from typing import NamedTuple

import numpy as np
import tensorflow as tf

from kseg.crf import MIN_PROB, SUM_TOLERANCE, CRFParams

# pydensecrf adds this inside 1 / sqrt(norm + eps) of the symmetric normalisation.
_NORM_EPS = 1e-20
# The mixed-radix vertex code must fit in int64 with room for the neighbour
# offsets; above this the features span too many lattice cells.
_MAX_CODE = 2.0 ** 62


class Lattice(NamedTuple):
    """A permutohedral lattice over P points (all images of a batch at once).

    Attributes:
      vertex_ids: (P, d+1) int32, for each point the lattice vertex of each of
        the d+1 corners of its simplex, in [0, M).
      weights: (P, d+1) float32 barycentric weights (sum to 1 per point).
      neighbours: (d+1, 2, M+1) int32; neighbours[j, 0/1, v] are the vertices
        before/after v along lattice direction j, M where there is none. Row M
        is an all-zero vertex whose neighbours are itself.
      num_vertices: () int32, M.
    """

    vertex_ids: tf.Tensor
    weights: tf.Tensor
    neighbours: tf.Tensor
    num_vertices: tf.Tensor


def _elevation_scale(dim):
    """Diagonal of the elevation matrix E times the lattice's std scale, (dim,) float32.

    Computed as pydensecrf does (float std scale, double product, float result)
    so the lattice coordinates are the same floats.
    """
    inv_std = np.float32(np.sqrt(2.0 / 3.0) * (dim + 1))
    i = np.arange(dim, dtype=np.float64)
    return (1.0 / np.sqrt((i + 2.0) * (i + 1.0)) * np.float64(inv_std)).astype(np.float32)


def build_lattice(features, image_ids=None, num_images=None):
    """Embeds points into the permutohedral lattice (Adams et al. 2010, §3-4).

    Args:
      features: (P, d) float32, features already divided by their stds; d is
        static.
      image_ids: (P,) int32 or None; points of different images never share
        a vertex (so a batch is filtered image by image).
      num_images: () int, the number of distinct image ids (max + 1); needed
        with ``image_ids``.

    Returns:
      :class:`Lattice`.
    """
    features = tf.convert_to_tensor(features, tf.float32)
    dim = features.shape[-1]
    if dim is None:
        raise ValueError("build_lattice: the feature dimension must be static")
    d1 = dim + 1
    scaled = features * _elevation_scale(dim)  # (P, d)

    # Elevate onto the plane sum(x) = 0; sequential sums in pydensecrf's order.
    elevated = [None] * d1
    running = tf.zeros_like(scaled[:, 0])
    for j in range(dim, 0, -1):
        elevated[j] = running - float(j) * scaled[:, j - 1]
        running = running + scaled[:, j - 1]
    elevated[0] = running
    elevated = tf.stack(elevated, axis=1)  # (P, d+1)

    # Nearest remainder-0 point: each coordinate rounded to a multiple of d+1
    # (ties to even); `excess` is how far the rounded point is off the plane.
    rounded = tf.round(elevated * np.float32(1.0 / d1))  # (P, d+1)
    rem0 = tf.cast(rounded, tf.int32) * d1  # (P, d+1)
    excess = tf.reduce_sum(tf.cast(rounded, tf.int32), axis=1, keepdims=True)  # (P, 1)
    delta = elevated - tf.cast(rem0, tf.float32)  # (P, d+1)

    # Rank of each coordinate of delta (descending; ties go to the lower index).
    greater = delta[:, None, :] > delta[:, :, None]  # (P, i, j): delta_j > delta_i
    upper = np.triu(np.ones((d1, d1), bool), k=1)  # j > i
    later = tf.logical_and(greater, upper)
    earlier = tf.logical_and(tf.logical_not(tf.transpose(greater, [0, 2, 1])), upper.T)
    rank = tf.reduce_sum(tf.cast(tf.logical_or(later, earlier), tf.int32), axis=2)  # (P, d+1)

    # Bring the rounded point back onto the plane.
    rank = rank + excess
    below = tf.cast(rank < 0, tf.int32) * d1
    above = tf.cast(rank > dim, tf.int32) * d1
    rank = rank + below - above
    rem0 = rem0 + below - above
    delta = elevated - tf.cast(rem0, tf.float32)

    # Barycentric weights (§4): differences of the sorted coordinates.
    position = dim - rank  # (P, d+1), a permutation of 0..d per point
    v = delta * np.float32(1.0 / d1)
    sorted_v = tf.einsum("pi,pik->pk", v, tf.one_hot(position, d1, dtype=tf.float32))
    weights = tf.concat([sorted_v[:, :1] + (1.0 - sorted_v[:, -1:]),
                         sorted_v[:, 1:] - sorted_v[:, :-1]], axis=1)  # (P, d+1)

    # The simplex's vertices: remainder-r vertex = rem0 + canonical_r[rank];
    # only the first d coordinates are kept (the last follows from sum 0).
    remainder = np.arange(d1, dtype=np.int32)[None, :, None]  # (1, r, 1)
    wraps = tf.cast(rank[:, None, :dim] > dim - remainder, tf.int32)  # (P, r, d)
    keys = rem0[:, None, :dim] + remainder - d1 * wraps  # (P, d+1, d)
    keys = tf.reshape(keys, [-1, dim])  # (P (d+1), d)

    # Mixed-radix int64 code; the margin of d+1 keeps every blur neighbour
    # of a vertex inside the box, so neighbours are found by a code offset.
    low = tf.cast(tf.reduce_min(keys, axis=0), tf.int64) - d1  # (d,)
    high = tf.cast(tf.reduce_max(keys, axis=0), tf.int64) + d1
    span = high - low + 1  # (d,)
    stride = tf.math.cumprod(span, exclusive=True)  # (d,)
    span_product = tf.reduce_prod(tf.cast(span, tf.float64))
    if image_ids is not None:
        span_product = span_product * tf.cast(num_images, tf.float64)
    check = tf.debugging.assert_less(
        span_product, tf.constant(_MAX_CODE, tf.float64),
        message="build_lattice: the features span too many lattice cells for an int64 "
                "vertex code; the kernel stds are too small for the feature range")
    with tf.control_dependencies([check]):
        codes = tf.reduce_sum((tf.cast(keys, tf.int64) - low) * stride, axis=1)  # (P (d+1),)
    if image_ids is not None:
        image_stride = tf.reduce_prod(span)
        point_image = tf.repeat(tf.cast(image_ids, tf.int64), d1)
        codes = codes + point_image * image_stride

    unique_codes, vertex_ids = tf.unique(codes, out_idx=tf.int32)  # (M,), (P (d+1),)
    num_vertices = tf.shape(unique_codes)[0]
    order = tf.argsort(unique_codes)
    sorted_codes = tf.gather(unique_codes, order)  # (M,)

    def lookup(targets):
        """Vertex id of each code in targets (M,), or M if it is not a vertex."""
        at = tf.minimum(tf.searchsorted(sorted_codes, targets, out_type=tf.int32),
                        num_vertices - 1)
        found = tf.equal(tf.gather(sorted_codes, at), targets)
        return tf.where(found, tf.gather(order, at), num_vertices)

    # Along direction j < d the neighbour key is key - 1 + (d+1) e_j (and its
    # negation); along direction d it is key - 1 on every kept coordinate.
    all_minus_one = -tf.reduce_sum(stride)
    neighbours = []
    pad = tf.reshape(num_vertices, [1])
    for j in range(d1):
        offset = all_minus_one + (d1 * stride[j] if j < dim else 0)
        neighbours.append(tf.stack([
            tf.concat([lookup(unique_codes + offset), pad], 0),
            tf.concat([lookup(unique_codes - offset), pad], 0)]))
    neighbours = tf.stack(neighbours)  # (d+1, 2, M+1)

    return Lattice(vertex_ids=tf.reshape(vertex_ids, [-1, d1]), weights=weights,
                   neighbours=neighbours, num_vertices=num_vertices)


def _splat(lattice, values, splat_weights):
    """(P, C) values -> (M+1, C) lattice values (row M stays zero)."""
    d1 = lattice.vertex_ids.shape[1]
    channels = tf.shape(values)[1]
    weighted = values[:, None, :] * splat_weights[:, :, None]  # (P, d+1, C)
    return tf.math.unsorted_segment_sum(
        tf.reshape(weighted, [-1, channels]),
        tf.reshape(lattice.vertex_ids, [-1]),
        lattice.num_vertices + 1)  # (M+1, C)


def _blur(lattice, grid):
    """One pass of [0.5, 1, 0.5] along each lattice direction, in order 0..d."""
    d1 = lattice.vertex_ids.shape[1]
    for j in range(d1):
        grid = grid + 0.5 * (tf.gather(grid, lattice.neighbours[j, 0])
                             + tf.gather(grid, lattice.neighbours[j, 1]))
    return grid


def _slice(lattice, grid, slice_weights):
    """(M+1, C) lattice values -> (P, C) at the points."""
    gathered = tf.gather(grid, lattice.vertex_ids)  # (P, d+1, C)
    return tf.einsum("prc,pr->pc", gathered, slice_weights)


def _slice_scale(dim):
    """pydensecrf's constant slice scale 1 / (1 + 2^-d)."""
    return np.float32(1.0) / (np.float32(1.0) + np.float32(2.0) ** np.float32(-dim))


class GaussianFilter(NamedTuple):
    """A normalised lattice filter, ready to apply: K(Q) = slice(blur(splat(Q))).

    ``splat_weights`` and ``slice_weights`` (P, d+1) fold in the symmetric
    normaliser D^{-1/2} of each point (and the slice scale).
    """

    lattice: Lattice
    splat_weights: tf.Tensor
    slice_weights: tf.Tensor

    def __call__(self, values):
        grid = _blur(self.lattice, _splat(self.lattice, values, self.splat_weights))
        return _slice(self.lattice, grid, self.slice_weights)


def gaussian_filter(features, image_ids=None, num_images=None):
    """The symmetrically normalised Gaussian filter on ``features`` (P, d).

    Returns a :class:`GaussianFilter`; calling it on (P, C) float32 values gives
    D^{-1/2} A D^{-1/2} values, A the lattice Gaussian, D = diag(A 1).
    """
    lattice = build_lattice(features, image_ids, num_images)
    dim = lattice.vertex_ids.shape[1] - 1
    scale = _slice_scale(dim)
    ones = tf.ones_like(lattice.weights[:, :1])  # (P, 1)
    norm = _slice(lattice, _blur(lattice, _splat(lattice, ones, lattice.weights)),
                  lattice.weights * scale)  # (P, 1)
    inv_sqrt = 1.0 / tf.sqrt(norm + _NORM_EPS)  # (P, 1)
    return GaussianFilter(lattice=lattice,
                          splat_weights=lattice.weights * inv_sqrt,
                          slice_weights=lattice.weights * (scale * inv_sqrt))


# ------------------------------------------------------------------ mean field


def _check_inputs(images, probs, name):
    """Static and graph checks of (B, H, W, 3) uint8 images and (B, H, W, C) probs."""
    if images.dtype != tf.uint8:
        raise ValueError(f"{name}: images must be uint8 RGB, got {images.dtype.name}")
    if not probs.dtype.is_floating:
        raise ValueError(f"{name}: probs must be float softmax probabilities, "
                         f"got {probs.dtype.name}")
    if images.shape.rank is not None and images.shape.rank != 4:
        raise ValueError(f"{name}: images must have shape (B, H, W, 3), got {images.shape}")
    if probs.shape.rank is not None and probs.shape.rank != 4:
        raise ValueError(f"{name}: probs must have shape (B, H, W, C), got {probs.shape}")
    if images.shape[-1] is not None and images.shape[-1] != 3:
        raise ValueError(f"{name}: images must have 3 (RGB) channels, got {images.shape}")
    if not images.shape[:3].is_compatible_with(probs.shape[:3]):
        raise ValueError(f"{name}: probs batch/height/width {probs.shape[:3]} differ from "
                         f"the images' {images.shape[:3]}")
    return [tf.debugging.assert_equal(
        tf.shape(images)[:3], tf.shape(probs)[:3],
        message=f"{name}: probs batch/height/width differ from the images'")]


def _pixel_features(height, width, batch):
    """Column and row index of every pixel, (B H W,) float32 each, row-major."""
    cols = tf.tile(tf.cast(tf.range(width), tf.float32)[None, :], [height, 1])
    rows = tf.tile(tf.cast(tf.range(height), tf.float32)[:, None], [1, width])
    cols = tf.tile(tf.reshape(cols, [-1]), [batch])
    rows = tf.tile(tf.reshape(rows, [-1]), [batch])
    return cols, rows


def mean_field(images, unary, params=CRFParams(), *, bi_w=None, pos_w=None,
               reference_size=None):
    """Mean-field inference in the fully connected CRF (Krähenbühl & Koltun 2011, §3-4).

    Args:
      images: (B, H, W, 3) uint8 RGB.
      unary: (B, H, W, C) float32 unary energies (e.g. -log p); the initial
        marginals are softmax(-unary). Gradients flow to it.
      params: :class:`kseg.crf.CRFParams` (stds in pixels, as for
        :func:`kseg.crf.dense_crf`).
      bi_w, pos_w: kernel weights overriding ``params.bi_w``/``params.pos_w``;
        may be tensors or ``tf.Variable`` s (gradients flow to them).
      reference_size: None: the position stds are used as given (the
        pydensecrf path, whose callers scale with ``CRFParams.for_image_size``).
        A number: they are scaled in the graph by max(H, W) / reference_size,
        as ``params.for_image_size(H, W, reference_size)`` would (for graphs
        that see images of any size).

    Returns:
      (B, H, W, C) float32 marginals Q after ``params.num_iter`` updates.
    """
    images = tf.convert_to_tensor(images)
    unary = tf.convert_to_tensor(unary)
    checks = _check_inputs(images, unary, "mean_field")
    unary = tf.cast(unary, tf.float32)
    checks.append(tf.debugging.assert_all_finite(unary, "mean_field: unary has NaN or inf"))
    with tf.control_dependencies(checks):
        shape = tf.shape(unary)
    batch, height, width, channels = shape[0], shape[1], shape[2], shape[3]
    bi_w = params.bi_w if bi_w is None else bi_w
    pos_w = params.pos_w if pos_w is None else pos_w

    scale = tf.constant(1.0, tf.float32)
    if reference_size is not None:
        scale = tf.cast(tf.maximum(height, width), tf.float32) / float(reference_size)
    pos_std = tf.constant(params.pos_xy_std, tf.float32) * scale
    bi_std = tf.constant(params.bi_xy_std, tf.float32) * scale

    cols, rows = _pixel_features(height, width, batch)  # (P,) each
    image_ids = tf.repeat(tf.range(batch), height * width)  # (P,)
    rgb = tf.cast(tf.reshape(images, [-1, 3]), tf.float32) / params.bi_rgb_std  # (P, 3)
    pos_filter = gaussian_filter(tf.stack([cols / pos_std, rows / pos_std], axis=1),
                                 image_ids, batch)
    bi_filter = gaussian_filter(
        tf.concat([tf.stack([cols / bi_std, rows / bi_std], axis=1), rgb], axis=1),
        image_ids, batch)

    neg_unary = -tf.reshape(unary, [-1, channels])  # (P, C)
    q = tf.nn.softmax(neg_unary, axis=-1)
    for _ in range(params.num_iter):
        logits = neg_unary + pos_w * pos_filter(q) + bi_w * bi_filter(q)
        q = tf.nn.softmax(logits, axis=-1)
    return tf.reshape(q, shape)


def dense_crf(images, probs, params=CRFParams(), *, bi_w=None, pos_w=None,
              reference_size=None):
    """:func:`kseg.crf.dense_crf` in TensorFlow, batched: the CRF on softmax probabilities.

    Args:
      images: (B, H, W, 3) uint8 RGB.
      probs: (B, H, W, C) float softmax probabilities at the image size,
        summing to 1 over C. The unary is -log(max(probs, MIN_PROB)).
      params, bi_w, pos_w, reference_size: see :func:`mean_field`.

    Returns:
      marginals: (B, H, W, C) float32, each pixel sums to 1.
      labels: (B, H, W) int32 argmax of the marginals.

    Raises:
      ValueError: wrong dtype or rank, or sizes that differ where they are
        known while tracing.
      tf.errors.InvalidArgumentError: at run time, sizes that differ, NaN or
        infinite probabilities, negative ones, or ones that do not sum to 1.
    """
    images = tf.convert_to_tensor(images)
    probs = tf.convert_to_tensor(probs)
    checks = _check_inputs(images, probs, "dense_crf")
    probs = tf.cast(probs, tf.float32)
    checks += [
        tf.debugging.assert_all_finite(probs, "dense_crf: probs contains NaN or infinity"),
        tf.debugging.assert_non_negative(probs, message="dense_crf: probs must be non-negative"),
        tf.debugging.assert_less_equal(
            tf.reduce_max(tf.abs(tf.reduce_sum(probs, axis=-1) - 1.0)), SUM_TOLERANCE,
            message="dense_crf: probs must sum to 1 over the label axis "
                    "(softmax probabilities, not logits)"),
    ]
    with tf.control_dependencies(checks):
        unary = -tf.math.log(tf.maximum(probs, MIN_PROB))
    marginals = mean_field(images, unary, params, bi_w=bi_w, pos_w=pos_w,
                           reference_size=reference_size)
    return marginals, tf.argmax(marginals, axis=-1, output_type=tf.int32)


def dense_crf_function(params=CRFParams(), num_labels=None, reference_size=None):
    """:func:`dense_crf` traced once for any batch and image size.

    Returns:
      A ``tf.function`` (images (B, H, W, 3) uint8, probs (B, H, W, C) float32)
      -> (marginals, labels), with input signature dims None (C = num_labels
      if given).
    """
    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8),
                                  tf.TensorSpec([None, None, None, num_labels], tf.float32)])
    def crf(images, probs):
        return dense_crf(images, probs, params, reference_size=reference_size)
    return crf
