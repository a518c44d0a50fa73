"""Fully connected CRF (Krähenbühl & Koltun 2011) as TensorFlow ops.

The same model as :func:`kseg.crf.dense.dense_crf` (pydensecrf's ``DenseCRF2D``):
unary -log(max(p, MIN_PROB)), a Gaussian kernel on pixel positions and a
bilateral kernel on positions and RGB colours, Potts compatibility, symmetric
kernel normalisation and ``num_iter`` mean-field updates

  Q_0 = softmax(-U)
  Q_t = softmax(-U + pos_w * K_pos(Q_{t-1}) + bi_w * K_bi(Q_{t-1}))

where K(Q) = D^{-1/2} A D^{-1/2} Q, A is the lattice approximation of the
Gaussian filter exp(-|f_i - f_j|^2 / 2) on the kernel's features f (positions
over their std, colours over theirs) and D = diag(A 1). Adding bi_w * K(Q)_l
to label l's logit is the Potts term: the energy [x_i != x_j] differs from
-[x_i == x_j] by a constant per pixel. As in pydensecrf, the filter includes
the pixel itself.

The Gaussian filtering runs on the permutohedral lattice of Adams, Baek and
Davis ("Fast High-Dimensional Filtering Using the Permutohedral Lattice",
Eurographics 2010), built from TensorFlow ops only, so that the CRF traces
inside ``tf.function`` with unknown image size, exports in a SavedModel and
runs on any device TensorFlow runs on:

* embedding: each d-dimensional feature is elevated onto the plane
  x_0 + ... + x_d = 0 of the lattice (scaled by sqrt(2/3) (d+1), so that the
  lattice blur approximates a unit-std Gaussian), the nearest remainder-0
  lattice point is found by rounding, the rank of each coordinate
  (``tf.math.top_k`` over the d+1 coordinates) gives the enclosing simplex,
  and its d+1 vertices get barycentric weights; all vectorised over points;
* vertices: each integer vertex key (with the image's index) is encoded as
  one int64 in a mixed radix wide enough that every blur neighbour also has a
  code; ``tf.unique`` makes them unique and a sort of the distinct codes
  numbers the vertices in code order;
* neighbours: along lattice direction j a neighbour is a fixed code offset
  away, found with ``tf.searchsorted`` in the sorted codes;
* splat, blur and slice are sparse matrices built once per image and applied
  with ``tf.sparse.sparse_dense_matmul``: one (P, M) matrix of barycentric
  weights in point order serves the slice and, as its adjoint, the splat
  (the segment sum of each vertex's weighted values; on CPU the sparse
  products measured 2-5x faster than gathers and
  ``tf.math.unsorted_segment_sum``, and the adjoint faster than a
  vertex-sorted copy once the cost of that sort is counted);
  each blur (M, M), with entries sorted by row, is value + 0.5 (previous +
  next neighbour); the kernel weight is folded into the slice's entries
  once, not applied to every iteration's output;
* the normalisation D = diag(A 1), one column, runs on vectors (segment
  sums and gathers), which for a single column cost less than the sparse
  products.

Not used, measured: ``tf.raw_ops.SparseMatrixMatMul`` (CSR) is 1.4-1.7x
faster than ``sparse_dense_matmul`` when run eagerly, where oneDNN swaps in
its own kernel, but 2.5-3x slower inside ``tf.function`` (Eigen's kernel),
where the CRF runs; gathers with ``tensor_scatter_nd_add`` for the blur,
3-4x slower; XLA, which needs static shapes and has no ``tf.unique``.

Agreement with pydensecrf is by construction, not by tuning: the same feature
order (x, y[, r, g, b]), the same elevation, rounding (to nearest, ties to
even, as its SSE path), ranking and barycentric weights, the same blur (1,
0.5, 0.5 along directions 0..d, no vertex created during the blur), the same
slice scale 1 / (1 + 2^-d) and the same symmetric normalisation with its
1e-20. Two things differ:

* floating-point summation order (sparse products instead of its loops):
  marginals agree to ~1e-5, so labels differ only where two labels tie to
  that precision;
* pydensecrf's SSE lattice embeds points four at a time and also inserts
  the simplex vertices of the 1-3 zero-feature padding points of the last
  group when H * W is not a multiple of 4. Those vertices carry no value but
  relay the blur, which changes the output of pixels whose bilateral
  features are near the origin (dark pixels towards the top-left corner) by
  up to ~1e-2. This lattice has no such vertices. VOC images (one side 500)
  always have H * W divisible by 4.

Determinism: on CPU every op is deterministic (a sparse product adds its
entries in order), so repeated runs are bit-identical. On GPU,
``sparse_dense_matmul`` adds with atomics, which TensorFlow's determinism
notes list as nondeterministic.

Batches: the images of a batch share one lattice whose vertex codes include
the image index, so no vertex (and no blur) crosses images.
"""

from typing import NamedTuple

import numpy as np
import tensorflow as tf

from kseg.crf.dense import MIN_PROB, SUM_TOLERANCE, CRFParams

# pydensecrf adds this inside 1 / sqrt(norm + eps) of the symmetric normalisation.
_NORM_EPS = 1e-20
# The mixed-radix vertex code must fit in int64 with room for the neighbour
# offsets; above this the features span too many lattice cells.
_MAX_CODE = 2.0 ** 62
# Widest dense operand of one sparse product (see _matmul).
_MAX_COLUMNS = 31


class Lattice(NamedTuple):
    """A permutohedral lattice with M vertices over P points (all images of a batch).

    Attributes:
      vertex_ids: (P, d+1) int64, the vertices of each point's simplex, in
        [0, M), numbered in the order of their codes.
      weights: (P, d+1) float32 barycentric weights (each row sums to 1).
      next_vertex: d+1 (M,) int64 tensors: the vertex after each vertex along
        lattice direction j, -1 where there is none.
      num_vertices: () int64, M.
    """

    vertex_ids: tf.Tensor
    weights: tf.Tensor
    next_vertex: tuple
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

    # Coordinates of delta by rank, the largest first; equal values keep
    # index order, as pydensecrf's pairwise comparison ranks them.
    by_rank = tf.math.top_k(delta, k=d1).indices  # (P, d+1): coordinate of rank r
    rank = tf.argsort(by_rank, axis=1)  # (P, d+1): rank of coordinate i

    # Bring the rounded point back onto the plane: every rank shifts by
    # `excess` and a coordinate whose rank leaves 0..d wraps around and
    # moves by d+1.
    rank = rank + excess
    below = tf.cast(rank < 0, tf.int32) * d1
    above = tf.cast(rank > dim, tf.int32) * d1
    rem0 = rem0 + below - above
    delta = elevated - tf.cast(rem0, tf.float32)
    by_rank = tf.gather(by_rank, (np.arange(d1, dtype=np.int32) - excess) % d1, batch_dims=1)
    # Coordinates by position d - rank, the smallest first.
    by_position = tf.reverse(by_rank, axis=[1])  # (P, d+1)

    # Barycentric weights (§4): differences of the sorted coordinates.
    v = delta * np.float32(1.0 / d1)
    sorted_v = tf.gather(v, by_position, batch_dims=1)  # (P, d+1)
    weights = tf.concat([sorted_v[:, :1] + (1.0 - sorted_v[:, -1:]),
                         sorted_v[:, 1:] - sorted_v[:, :-1]], axis=1)  # (P, d+1)

    # Vertex codes. The remainder-r vertex of a point has the integer key
    # rem0_k + r - (d+1) [d - rank_k < r] on the kept coordinates k < d (the
    # last one follows from sum 0), within rem0_k +- d; its blur neighbours
    # are within +- 2d. Keys are coded in a mixed radix wide enough for all
    # of them, so a neighbour is a fixed code offset away and each vertex
    # has one int64 code.
    kept = tf.cast(rem0[:, :dim], tf.int64)  # (P, d)
    low = tf.reduce_min(kept, axis=0) - 2 * d1  # (d,)
    span = tf.reduce_max(kept, axis=0) + 2 * d1 - low + 1  # (d,)
    stride = tf.math.cumprod(span, exclusive=True)  # (d,)
    span_product = tf.reduce_prod(tf.cast(span, tf.float64))
    if image_ids is not None:
        span_product = span_product * tf.cast(num_images, tf.float64)
    check = tf.debugging.assert_less(
        span_product, tf.constant(_MAX_CODE, tf.float64),
        message="build_lattice: the features span too many lattice cells for an int64 "
                "vertex code; the kernel stds are too small for the feature range")
    with tf.control_dependencies([check]):
        base = tf.reduce_sum((kept - low) * stride, axis=1)  # (P,) code of rem0
    if image_ids is not None:
        base = base + tf.cast(image_ids, tf.int64) * tf.reduce_prod(span)
    # Sum of the strides of the coordinates at positions d - rank < r, for
    # each r: an exclusive cumulative sum of the strides listed by position.
    stride_by_position = tf.gather(tf.concat([stride, [0]], axis=0), by_position)
    remainder = tf.range(d1, dtype=tf.int64)
    codes = (base[:, None] + remainder * tf.reduce_sum(stride)
             - d1 * tf.cumsum(stride_by_position, axis=1, exclusive=True))  # (P, d+1)

    # Vertices are the distinct codes (tf.unique hashes; about half the cost
    # of sorting all P (d+1) codes), numbered in code order: a blur
    # neighbour is a fixed code offset away, so neighbour ids grow with the
    # vertex id and the blur reads memory almost sequentially.
    distinct, first_seen = tf.unique(tf.reshape(codes, [-1]), out_idx=tf.int64)  # (M,)
    order = tf.argsort(distinct)
    vertex_codes = tf.gather(distinct, order)  # (M,) ascending
    num_vertices = tf.size(vertex_codes, out_type=tf.int64)
    vertex_ids = tf.gather(tf.cast(tf.math.invert_permutation(order), tf.int64), first_seen)

    # Along direction j < d the next vertex's key is key + d on coordinate j
    # and key - 1 on the others; along direction d it is key - 1 on every
    # kept coordinate (the previous vertex is the opposite offset).
    all_minus_one = -tf.reduce_sum(stride)
    next_vertex = []
    for j in range(d1):
        offset = all_minus_one + (d1 * stride[j] if j < dim else 0)
        targets = vertex_codes + offset
        at = tf.minimum(tf.searchsorted(vertex_codes, targets, out_type=tf.int64),
                        num_vertices - 1)
        found = tf.equal(tf.gather(vertex_codes, at), targets)
        next_vertex.append(tf.where(found, at, -1))  # (M,)
    return Lattice(vertex_ids=tf.reshape(vertex_ids, [-1, d1]), weights=weights,
                   next_vertex=tuple(next_vertex), num_vertices=num_vertices)


# ------------------------------------------------------------------ filtering


class _Entries(NamedTuple):
    """The entries of a sparse (R, K) matrix, sorted by row."""

    rows: tf.Tensor  # (n,) int64
    columns: tf.Tensor  # (n,) int64
    values: tf.Tensor  # (n,) float32


def _row_blocks(entries, num_rows, num_cols, num_blocks):
    """A sparse (R, K) matrix as ``num_blocks`` SparseTensors of consecutive rows.

    Each block's product is an independent op, so TensorFlow's inter-op
    threads run the blocks of one product in parallel (a SparseTensor-dense
    product is one single-threaded op on CPU).

    Args:
      entries: :class:`_Entries`, sorted by row (the products read and write
        memory in order).
      num_rows, num_cols: () int64, R and K.
      num_blocks: Python int.

    Returns:
      A tuple of ``num_blocks`` SparseTensors, block b holding rows
      [R b / num_blocks, R (b+1) / num_blocks) renumbered from 0.
    """
    indices = tf.stack([entries.rows, entries.columns], axis=1)  # (n, 2)
    if num_blocks == 1:
        return (tf.SparseTensor(indices, entries.values, tf.stack([num_rows, num_cols])),)
    bounds = num_rows * tf.range(num_blocks + 1, dtype=tf.int64) // num_blocks
    starts = tf.searchsorted(entries.rows, bounds, out_type=tf.int64)
    blocks = []
    for b in range(num_blocks):
        block_indices = (indices[starts[b]:starts[b + 1]]
                         - tf.stack([bounds[b], tf.constant(0, tf.int64)]))
        blocks.append(tf.SparseTensor(block_indices, entries.values[starts[b]:starts[b + 1]],
                                      tf.stack([bounds[b + 1] - bounds[b], num_cols])))
    return tuple(blocks)


def _column_blocks(entries, num_rows, num_cols, num_blocks):
    """A sparse (R, K) matrix as ``num_blocks`` SparseTensors of consecutive columns.

    For adjoint products: block b's adjoint gives rows [K b / num_blocks,
    K (b+1) / num_blocks) of the result, so blocks run in parallel as with
    :func:`_row_blocks`. Entries keep their order within a block.
    """
    indices = tf.stack([entries.rows, entries.columns], axis=1)  # (n, 2)
    if num_blocks == 1:
        return (tf.SparseTensor(indices, entries.values, tf.stack([num_rows, num_cols])),)
    blocks = []
    for b in range(num_blocks):
        low, high = num_cols * b // num_blocks, num_cols * (b + 1) // num_blocks
        chosen = tf.where(tf.logical_and(entries.columns >= low, entries.columns < high))[:, 0]
        block_indices = tf.gather(indices, chosen) - tf.stack([tf.constant(0, tf.int64), low])
        blocks.append(tf.SparseTensor(block_indices, tf.gather(entries.values, chosen),
                                      tf.stack([num_rows, high - low])))
    return tuple(blocks)


def _matmul(blocks, dense, adjoint=False):
    """(row blocks of an (R, K) sparse matrix) @ (K, C) dense -> (R, C); with
    ``adjoint``, (column blocks of a (K, R) sparse matrix)^T @ dense.

    With C known while tracing, the columns go in groups of at most
    ``_MAX_COLUMNS``: from 32 columns on, TensorFlow's CPU kernel takes another
    path that measured 4-6x slower per column (e.g. 81 COCO labels).
    """
    width = dense.shape[1]
    groups = 1 if width is None else -(-width // _MAX_COLUMNS)
    columns = [dense] if groups == 1 else tf.split(
        dense, [width // groups + (g < width % groups) for g in range(groups)], axis=1)
    rows = []
    for block in blocks:
        products = [tf.sparse.sparse_dense_matmul(block, part, adjoint_a=adjoint)
                    for part in columns]
        rows.append(products[0] if groups == 1 else tf.concat(products, axis=1))
    return rows[0] if len(rows) == 1 else tf.concat(rows, axis=0)


def _scaled(blocks, factor):
    """The blocks with their values multiplied by a scalar ``factor``."""
    return tuple(tf.SparseTensor(b.indices, b.values * factor, b.dense_shape) for b in blocks)


def _slice_scale(dim):
    """pydensecrf's constant slice scale 1 / (1 + 2^-d)."""
    return np.float32(1.0) / (np.float32(1.0) + np.float32(2.0) ** np.float32(-dim))


def _blur_entries(next_vertex, num_vertices):
    """The (M, M) blur along one lattice direction, as :class:`_Entries` sorted by row.

    Row v holds (v, previous) 0.5, (v, v) 1, (v, next) 0.5, the missing
    neighbours left out, read row by row from an (M, 3) table: a product
    then finishes each output row while it is in cache (three row-sorted
    streams, diagonal, next and previous, which need no table, measured 1.6x
    slower per product).
    """
    vertices = tf.range(num_vertices)
    has_next = tf.where(next_vertex >= 0)  # (E, 1)
    previous = tf.tensor_scatter_nd_update(
        tf.fill([num_vertices], tf.constant(-1, tf.int64)),
        tf.gather_nd(next_vertex, has_next)[:, None], has_next[:, 0])  # (M,)
    columns = tf.stack([previous, vertices, next_vertex], axis=1)  # (M, 3)
    present = tf.where(columns >= 0)  # (n, 2): (row, slot), row-major
    return _Entries(present[:, 0], tf.gather_nd(columns, present),
                    tf.gather(tf.constant([0.5, 1.0, 0.5]), present[:, 1]))


def _normaliser(lattice, blurs, scale):
    """diag(D) = s W^T B W 1 (see :class:`GaussianFilter`), (P,) float32.

    With vectors (segment sums and gathers): for one column these cost less
    than the sparse products, whose cost per entry hardly shrinks with the
    number of columns. The sums run in the products' order.
    """
    grid = tf.math.unsorted_segment_sum(
        tf.reshape(lattice.weights, [-1]), tf.reshape(lattice.vertex_ids, [-1]),
        lattice.num_vertices)  # (M,) the splat of ones
    for blur in blurs:
        grid = tf.math.unsorted_segment_sum(blur.values * tf.gather(grid, blur.columns),
                                            blur.rows, lattice.num_vertices)  # (M,)
    return scale * tf.reduce_sum(lattice.weights * tf.gather(grid, lattice.vertex_ids), axis=1)


class GaussianFilter(NamedTuple):
    """The symmetrically normalised lattice filter as sparse matrices, ready to apply.

    K(Q) = s T @ blur_d @ ... @ blur_0 @ T^T @ Q, with T (P, M) = diag(n) W^T,
    W (M, P) the barycentric weights, s = 1 / (1 + 2^-d) pydensecrf's slice
    scale and n = D^{-1/2}, D = diag(s W^T B W 1): pydensecrf's
    NORMALIZE_SYMMETRIC folded into the weights. The splat is the adjoint
    product with T, whose entries are in point order: it reads the values in
    order and accumulates into the vertices, which measured faster than a
    vertex-sorted copy of T for both lattices once the cost of that sort is
    counted.

    Attributes:
      splat: column blocks of T (see :func:`_column_blocks`), used adjoint.
      blurs: d+1 row-block tuples of the (M, M) blur along direction j:
        1 on the diagonal, 0.5 between a vertex and its neighbours along j.
      slice: row blocks of s T (see :func:`_row_blocks`).
    """

    splat: tuple
    blurs: tuple
    slice: tuple

    def weighted(self, weight):
        """This filter times ``weight`` (a scalar, tensor or variable; gradients
        flow to it), folded into the slice's entries: once for all the
        mean-field iterations, instead of scaling every (P, C) output."""
        return self._replace(slice=_scaled(self.slice, weight))

    def __call__(self, values):
        """(P, C) float32 values -> K(values), (P, C) float32."""
        grid = _matmul(self.splat, values, adjoint=True)  # (M, C)
        for blur in self.blurs:
            grid = _matmul(blur, grid)
        return _matmul(self.slice, grid)  # (P, C)


def gaussian_filter(features, image_ids=None, num_images=None, num_blocks=1):
    """The symmetrically normalised Gaussian filter on ``features`` (P, d).

    Args:
      features: (P, d) float32 features over their stds (gradients are not
        propagated to them).
      image_ids, num_images: see :func:`build_lattice`.
      num_blocks: Python int, blocks per sparse product (see
        :func:`_row_blocks`); 1 unless inter-op threads can run them.

    Returns:
      A :class:`GaussianFilter`; calling it on (P, C) float32 values gives
      D^{-1/2} A D^{-1/2} values, A the lattice approximation of
      exp(-|f_i - f_j|^2 / 2) (self included) and D = diag(A 1).
    """
    features = tf.stop_gradient(tf.convert_to_tensor(features, tf.float32))
    lattice = build_lattice(features, image_ids, num_images)
    d1 = lattice.weights.shape[1]
    num_points = tf.shape(features, out_type=tf.int64)[0]
    num_vertices = lattice.num_vertices
    scale = _slice_scale(d1 - 1)

    blurs = [_blur_entries(next_vertex, num_vertices) for next_vertex in lattice.next_vertex]
    norm = _normaliser(lattice, blurs, scale)  # (P,) = diag(D)
    # T's entries in point order: each point's d+1 vertices, weight times n.
    weights = lattice.weights * (1.0 / tf.sqrt(norm + _NORM_EPS))[:, None]  # (P, d+1)
    entries = _Entries(tf.range(num_points * d1, dtype=tf.int64) // d1,
                       tf.reshape(lattice.vertex_ids, [-1]), tf.reshape(weights, [-1]))
    return GaussianFilter(
        splat=_column_blocks(entries, num_points, num_vertices, num_blocks),
        blurs=tuple(_row_blocks(blur, num_vertices, num_vertices, num_blocks) for blur in blurs),
        slice=_row_blocks(entries._replace(values=scale * entries.values), num_points,
                          num_vertices, num_blocks))


# ------------------------------------------------------------------ mean field


def _check_inputs(images, probs, params, name, what="probs", reference_size=None,
                  num_blocks=1):
    """Static and graph checks of (B, H, W, 3) uint8 images and (B, H, W, C) ``what``
    (probabilities or unary energies), and of the Python arguments."""
    if not isinstance(params, CRFParams):
        raise TypeError(f"{name}: params must be a CRFParams, got {type(params).__name__}")
    if reference_size is not None and (isinstance(reference_size, bool)
                                       or not isinstance(reference_size, (int, float))
                                       or not reference_size > 0):
        raise ValueError(f"{name}: reference_size must be a positive number of pixels or "
                         f"None, got {reference_size!r}")
    if isinstance(num_blocks, bool) or not isinstance(num_blocks, int) or num_blocks < 1:
        raise ValueError(f"{name}: num_blocks must be an integer >= 1, got {num_blocks!r}")
    if images.dtype != tf.uint8:
        raise ValueError(f"{name}: images must be uint8 RGB, got {images.dtype.name}")
    if not probs.dtype.is_floating:
        kind = "softmax probabilities" if what == "probs" else "energies"
        raise ValueError(f"{name}: {what} must be float {kind}, got {probs.dtype.name}")
    if images.shape.rank is not None and images.shape.rank != 4:
        raise ValueError(f"{name}: images must have shape (B, H, W, 3), got {images.shape}")
    if probs.shape.rank is not None and probs.shape.rank != 4:
        raise ValueError(f"{name}: {what} must have shape (B, H, W, C), got {probs.shape}")
    if images.shape[-1] is not None and images.shape[-1] != 3:
        raise ValueError(f"{name}: images must have 3 (RGB) channels, got {images.shape}")
    if probs.shape[-1] == 0:
        raise ValueError(f"{name}: {what} has no label channel, shape {probs.shape}")
    if not images.shape[:3].is_compatible_with(probs.shape[:3]):
        raise ValueError(f"{name}: {what} batch/height/width {probs.shape[:3]} differ from "
                         f"the images' {images.shape[:3]}")
    return [tf.debugging.assert_equal(
        tf.shape(images)[:3], tf.shape(probs)[:3],
        message=f"{name}: {what} batch/height/width differ from the images'")]


def _pixel_features(height, width, batch):
    """Column and row index of every pixel, (B H W,) float32 each, row-major."""
    cols = tf.tile(tf.cast(tf.range(width), tf.float32)[None, :], [height, 1])
    rows = tf.tile(tf.cast(tf.range(height), tf.float32)[:, None], [1, width])
    cols = tf.tile(tf.reshape(cols, [-1]), [batch])
    rows = tf.tile(tf.reshape(rows, [-1]), [batch])
    return cols, rows


def mean_field(images, unary, params=CRFParams(), *, bi_w=None, pos_w=None,
               reference_size=None, num_blocks=1):
    """Mean-field inference in the fully connected CRF (Krähenbühl & Koltun 2011, §3-4).

    Args:
      images: (B, H, W, 3) uint8 RGB.
      unary: (B, H, W, C) float32 unary energies (e.g. -log p); the initial
        marginals are softmax(-unary). Gradients flow to it.
      params: :class:`kseg.crf.dense.CRFParams` (stds in pixels, as for
        :func:`kseg.crf.dense.dense_crf`).
      bi_w, pos_w: kernel weights overriding ``params.bi_w``/``params.pos_w``;
        may be tensors or ``tf.Variable`` s (gradients flow to them).
      reference_size: None: the position stds are used as given (the
        pydensecrf path, whose callers scale with ``CRFParams.for_image_size``).
        A number: they are scaled in the graph by max(H, W) / reference_size,
        as ``params.for_image_size(H, W, reference_size)`` would (for graphs
        that see images of any size).
      num_blocks: Python int; every sparse product is cut into this many
        row blocks that TensorFlow's inter-op threads run in parallel. Set
        it to the number of CPU cores given to TensorFlow; 1 on a GPU.

    Returns:
      (B, H, W, C) float32 marginals Q after ``params.num_iter`` updates.
    """
    images = tf.convert_to_tensor(images)
    unary = tf.convert_to_tensor(unary)
    checks = _check_inputs(images, unary, params, "mean_field", "unary", reference_size,
                           num_blocks)
    unary = tf.cast(unary, tf.float32)
    checks.append(tf.debugging.assert_all_finite(unary, "mean_field: unary has NaN or inf"))
    shape = tf.shape(unary)
    batch, height, width = shape[0], shape[1], shape[2]
    checks.append(tf.debugging.assert_positive(
        batch * height * width, message="mean_field: images must have at least one pixel"))
    checks.append(tf.debugging.assert_positive(
        shape[3], message="mean_field: unary has no label channel"))
    with tf.control_dependencies(checks):
        shape = tf.identity(shape)
    # A static label count keeps the sparse products' column groups static.
    num_labels = unary.shape[-1] if unary.shape[-1] is not None else shape[3]
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
                                 image_ids, batch, num_blocks).weighted(pos_w)
    bi_filter = gaussian_filter(
        tf.concat([tf.stack([cols / bi_std, rows / bi_std], axis=1), rgb], axis=1),
        image_ids, batch, num_blocks).weighted(bi_w)

    neg_unary = -tf.reshape(unary, [-1, num_labels])  # (P, C)
    q = tf.nn.softmax(neg_unary, axis=-1)
    for _ in range(params.num_iter):
        logits = tf.add_n([neg_unary, pos_filter(q), bi_filter(q)])
        q = tf.nn.softmax(logits, axis=-1)
    return tf.reshape(q, shape)


def dense_crf(images, probs, params=CRFParams(), *, bi_w=None, pos_w=None,
              reference_size=None, num_blocks=1):
    """:func:`kseg.crf.dense.dense_crf` in TensorFlow, batched: the CRF on softmax probabilities.

    Args:
      images: (B, H, W, 3) uint8 RGB.
      probs: (B, H, W, C) float softmax probabilities at the image size,
        summing to 1 over C. The unary is -log(max(probs, MIN_PROB)).
      params, bi_w, pos_w, reference_size, num_blocks: see :func:`mean_field`.

    Returns:
      marginals: (B, H, W, C) float32, each pixel sums to 1.
      labels: (B, H, W) int32 argmax of the marginals.

    Raises:
      ValueError: wrong dtype or rank, no label channel, ``reference_size``
        not positive, ``num_blocks`` not an integer >= 1, or sizes that
        differ where they are known while tracing.
      TypeError: ``params`` is not a :class:`kseg.crf.dense.CRFParams`.
      tf.errors.InvalidArgumentError: at run time, sizes that differ, NaN or
        infinite probabilities, negative ones, or ones that do not sum to 1.
    """
    images = tf.convert_to_tensor(images)
    probs = tf.convert_to_tensor(probs)
    checks = _check_inputs(images, probs, params, "dense_crf", "probs", reference_size,
                           num_blocks)
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
                           reference_size=reference_size, num_blocks=num_blocks)
    return marginals, tf.argmax(marginals, axis=-1, output_type=tf.int32)


def dense_crf_function(params=CRFParams(), num_labels=None, reference_size=None,
                       num_blocks=1):
    """:func:`dense_crf` traced once for any batch and image size.

    Returns:
      A ``tf.function`` (images (B, H, W, 3) uint8, probs (B, H, W, C) float32)
      -> (marginals, labels), with input signature dims None (C = num_labels
      if given).
    """
    # Only Python loops over static ranges: nothing for autograph to convert.
    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8),
                                  tf.TensorSpec([None, None, None, num_labels], tf.float32)],
                 autograph=False)
    def crf(images, probs):
        return dense_crf(images, probs, params, reference_size=reference_size,
                         num_blocks=num_blocks)
    return crf


class DenseCRF(tf.Module):
    """:func:`mean_field` with the kernel weights as trainable variables.

    The start of a CRF-as-RNN mode: the stds stay fixed (they shape the
    lattice, which is not differentiated), ``bi_w`` and ``pos_w`` are
    ``tf.Variable`` s initialised from ``params`` and receive gradients
    through every mean-field iteration.

    Example:
      >>> crf = DenseCRF(CRFParams(num_iter=2))
      >>> images = tf.zeros([1, 4, 5, 3], tf.uint8)
      >>> unary = tf.zeros([1, 4, 5, 2])
      >>> crf(images, unary).shape
      TensorShape([1, 4, 5, 2])
      >>> [v.name for v in crf.trainable_variables]
      ['bi_w:0', 'pos_w:0']
    """

    def __init__(self, params=CRFParams(), reference_size=None, num_blocks=1, name=None):
        super().__init__(name=name)
        if not isinstance(params, CRFParams):
            raise TypeError(f"DenseCRF: params must be a CRFParams, got "
                            f"{type(params).__name__}")
        self.params = params
        self.reference_size = reference_size
        self.num_blocks = num_blocks
        self.bi_w = tf.Variable(params.bi_w, dtype=tf.float32, name="bi_w")
        self.pos_w = tf.Variable(params.pos_w, dtype=tf.float32, name="pos_w")

    def __call__(self, images, unary):
        """(B, H, W, 3) uint8 images, (B, H, W, C) unary -> (B, H, W, C) marginals."""
        return mean_field(images, unary, self.params, bi_w=self.bi_w, pos_w=self.pos_w,
                          reference_size=self.reference_size, num_blocks=self.num_blocks)
