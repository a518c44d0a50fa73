"""Can EM start from this network, and has a run collapsed? (docs/pretraining.md)

Measurements on annotated images, for diagnosis only (training never reads
them):

- `target_quality`: how well the E-step's targets, computed from a network's
  scores and the images' labels, match the masks. EM from image labels
  improves on its own targets only if its first ones, from the initial
  network (pretrained conv1-fc7, fresh fc8), put the objects' labels on the
  objects more often than chance: a foreground precision above the
  foreground share. (Measured: a fresh fc8's targets are near chance even
  on features EM learns well from; `frozen_em` is the test that decides.)
- `frozen_em` and `linear_probe`: fc8 alone, trained on a network's fixed
  features (those fc8 reads) by the E-step from the image labels, and by
  least squares on the masks (what the features allow at best). EM can
  start from the features when the first is well above predicting
  background everywhere; the whole network fine-tuned does no better on
  features where fc8 alone learns nothing.
- `input_dependence`: the share of a layer's activation variance that
  changes with the image. A run that has settled in a content-free fixed
  point computes the same maps for every image: its layers from some depth
  on have an input dependence of 0.

Numpy only, except `layer_activations`, `classifier_features`,
`estep_targets` and `frozen_em`, which run a network or the E-step.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

from kseg.constants import IGNORE_LABEL


def input_dependence(activations: np.ndarray) -> float:
    """Share of the variance of `activations` that changes with the image.

    activations: (N, ..., C) of N different images, same size. Per channel,
    the variance over images and positions splits into the mean over
    positions of the variance across images (what the image changes) and the
    variance over positions of the mean image (a fixed spatial pattern). The
    result is the first part over the whole, summed over channels: 1 when
    the mean image is flat, 0 when every image gives the same maps (also for
    a layer that is constant everywhere, e.g. all dead ReLUs).

    >>> x = np.random.default_rng(0).normal(size=(4, 3, 3, 2))
    >>> input_dependence(np.broadcast_to(x[:1], x.shape))  # same maps for every image
    0.0
    >>> round(input_dependence(np.broadcast_to(x[:, :1, :1], x.shape)), 6)  # flat per image
    1.0
    """
    a = np.asarray(activations, np.float64)
    a = a.reshape(a.shape[0], -1, a.shape[-1])  # (N, P, C)
    across = a.var(axis=0).mean(axis=0).sum()  # sum over C of mean over P of var over N
    total = a.reshape(-1, a.shape[-1]).var(axis=0).sum()  # sum over C of var over N and P
    return float(across / total) if total > 0 else 0.0


def target_quality(targets: Iterable[np.ndarray], labels: Iterable[np.ndarray],
                   num_classes: int) -> dict:
    """E-step targets against the masks of the same images.

    targets, labels: matching (h, w) int arrays (one image each, 255 =
    ignored in either). Returns a dict of
      fg_share: share of ground-truth foreground among the counted pixels,
        i.e. the foreground precision of targets that ignore the image;
      fg_precision: of the pixels the targets call foreground, the share
        that is foreground;
      class_precision: of those, the share with the right class;
      miou: the targets' mIoU (kseg.evaluation.metrics; classes present in
        either).

    >>> t = [np.array([[0, 1], [1, 2]])]; y = [np.array([[0, 1], [0, 1]])]
    >>> q = target_quality(t, y, 3)
    >>> q["fg_share"], q["fg_precision"], round(q["class_precision"], 3)
    (0.5, 0.667, 0.333)
    """
    from kseg.evaluation import metrics
    confusion = np.zeros((num_classes, num_classes), np.int64)
    counted = fg_true = fg_pred = fg_hit = class_hit = 0
    for target, label in zip(targets, labels):
        target, label = np.asarray(target), np.asarray(label)
        keep = (target != IGNORE_LABEL) & (label != IGNORE_LABEL)
        t, y = target[keep], label[keep]
        counted += t.size
        fg_true += np.sum(y > 0)
        fg_pred += np.sum(t > 0)
        fg_hit += np.sum((t > 0) & (y > 0))
        class_hit += np.sum((t > 0) & (t == y))
        confusion += metrics.confusion_matrix(y, t, num_classes)
    ratio = lambda a, b: round(float(a / b), 3) if b else 0.0  # noqa: E731
    return {"fg_share": ratio(fg_true, counted), "fg_precision": ratio(fg_hit, fg_pred),
            "class_precision": ratio(class_hit, fg_pred),
            "miou": metrics.scores_from_confusion(confusion)["miou"]}


def error_sources(predictions: Iterable[np.ndarray], labels: Iterable[np.ndarray]) -> dict:
    """What a network's wrong pixels are, and which of them image labels can correct.

    An image-label E-step (EM-Fixed, EM-Adapt) sees the network's scores and
    the classes present in the image: of the network's errors, it can remove
    those that put a class the image does not contain (`absent`); the others
    put a present class in the wrong place, which image labels do not say.

    predictions, labels: matching (H, W) int arrays, one image each (255 in a
    label is not counted; the image's classes are its mask's, background
    always among them). Returns a dict of
      error: share of the counted pixels labelled wrongly;
      absent: share of those errors with a class absent from the image;
      missed: background on a present object;
      spill: a present object's class on background;
      swapped: another present object's class on an object.
    (absent + missed + spill + swapped = 1.)

    >>> p = [np.array([[0, 2, 1, 1]])]; y = [np.array([[0, 1, 0, 1]])]
    >>> error_sources(p, y)
    {'error': 0.5, 'absent': 0.5, 'missed': 0.0, 'spill': 0.5, 'swapped': 0.0}
    """
    counts = dict.fromkeys(("absent", "missed", "spill", "swapped"), 0)
    counted = 0
    for prediction, label in zip(predictions, labels):
        prediction, label = np.asarray(prediction), np.asarray(label)
        keep = label != IGNORE_LABEL
        p, y = prediction[keep], label[keep]
        counted += y.size
        wrong = p != y
        present = np.isin(p, np.union1d(y, [0]))  # the image's classes
        counts["absent"] += np.sum(wrong & ~present)
        counts["missed"] += np.sum(wrong & (p == 0))
        counts["spill"] += np.sum(wrong & present & (p > 0) & (y == 0))
        counts["swapped"] += np.sum(wrong & present & (p > 0) & (y > 0))
    errors = sum(counts.values())
    out = {"error": round(float(errors / counted), 4) if counted else 0.0}
    out.update({k: round(float(v / errors), 4) if errors else 0.0 for k, v in counts.items()})
    return out


def image_labels(label: np.ndarray, num_classes: int) -> np.ndarray:
    """(C,) float32 multi-hot of the classes in a mask (255 ignored)."""
    present = np.unique(label[label != IGNORE_LABEL])
    out = np.zeros(num_classes, np.float32)
    out[present] = 1.0
    return out


def at_score_map(label: np.ndarray, height: int, width: int) -> np.ndarray:
    """(H, W) mask -> its (height, width) pixels at the score map's positions (8i, 8j)."""
    from kseg.constants import STRIDE
    return np.asarray(label)[::STRIDE, ::STRIDE][:height, :width]


def image_label_batch(kind: str, present, valid) -> dict:
    """The batch `kseg.em.targets.compute_targets` reads for image-label
    examples of one `kind`: present (B, C) multi-hot, valid (B, h, w) bool;
    no mask, box or image (the E-step CRF is not run here)."""
    import tensorflow as tf

    from kseg.constants import KIND_ID
    shape = tf.shape(valid)  # (B, h, w)
    return {"kind": tf.fill(shape[:1], KIND_ID[kind]), "label": tf.fill(shape, IGNORE_LABEL),
            "valid": valid, "image_labels": present,
            "box_mask": tf.zeros(tf.concat([shape, tf.shape(present)[1:]], 0), tf.bool),
            "image": tf.zeros(tf.concat([shape[:1], [1, 1, 3]], 0))}


def estep_targets(network, images: Sequence[np.ndarray], labels: Sequence[np.ndarray],
                  kind: str, estep_config, seed: int = 0) -> list[np.ndarray]:
    """The E-step of `kind` ("em_fixed" or "em_adapt") on whole images.

    images: (H, W, 3) uint8 each; labels: (H, W) masks, read for the image
    labels only (and as the valid region: 255 stays out of the E-step).
    Returns the (h, w) targets at score-map resolution (pixel (8i, 8j)),
    with `at_score_map` of the labels being what they compare to.
    """
    import tensorflow as tf

    from kseg import model as model_lib
    from kseg.em import targets as targets_lib

    if kind not in ("em_fixed", "em_adapt"):
        raise ValueError(f"the E-step diagnosis covers the image-label E-steps (em_fixed, "
                         f"em_adapt), not {kind!r}")
    out = []
    for i, (image, label) in enumerate(zip(images, labels)):
        scores = network(model_lib.preprocess(tf.constant(image[None])), training=False)
        h, w = scores.shape[1:3]  # (1, h, w, C)
        small = at_score_map(label, h, w)  # (h, w)
        batch = image_label_batch(kind, tf.constant(image_labels(small, scores.shape[-1])[None]),
                                  tf.constant(small[None] != IGNORE_LABEL))
        target, _ = targets_lib.compute_targets(scores, batch, estep_config,
                                                seed=tf.constant([seed, i]))
        out.append(target[0].numpy())
    return out


def layer_activations(network, images: np.ndarray, names: Sequence[str]) -> list[np.ndarray]:
    """(N, h, w, C) outputs of the named layers for (N, H, W, 3) uint8 images."""
    import keras
    import tensorflow as tf

    from kseg import model as model_lib
    probe = keras.Model(network.input, [network.get_layer(n).output for n in names])
    outputs = probe(model_lib.preprocess(tf.constant(images)), training=False)
    return [np.asarray(o) for o in (outputs if isinstance(outputs, (list, tuple)) else [outputs])]


def classifier_features(network, images: np.ndarray) -> np.ndarray:
    """(N, h, w, F) float32: what the classifier (fc8) reads, for (N, H, W, 3)
    uint8 images."""
    import keras
    import tensorflow as tf

    from kseg import model as model_lib
    from kseg.constants import CLASSIFIER
    probe = keras.Model(network.input, network.get_layer(CLASSIFIER).input)
    return np.concatenate([np.asarray(probe(model_lib.preprocess(tf.constant(images[i:i + 10])),
                                            training=False), np.float32)
                           for i in range(0, len(images), 10)])


def classifier_miou(features: np.ndarray, masks: np.ndarray, kernel: np.ndarray,
                    bias: np.ndarray) -> float:
    """mIoU of a linear classifier on features (N, h, w, F) against masks
    (N, h, w) (255 ignored); kernel (F, C), bias (C,)."""
    from kseg.evaluation import metrics
    prediction = np.argmax(features @ kernel + bias, axis=-1)  # (N, h, w)
    confusion = metrics.confusion_matrix(masks, prediction, len(bias))
    return metrics.scores_from_confusion(confusion)["miou"]


def linear_probe(features: np.ndarray, masks: np.ndarray, num_classes: int,
                 l2: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """The least-squares linear classifier of the masks from the features:
    ridge regression onto one-hot labels, classes weighted equally (each
    class's pixels weigh 1 / its count), on standardised features.

    features: (N, h, w, F); masks: (N, h, w), 255 ignored. Returns kernel
    (F, C) and bias (C,) on the raw features.

    >>> x = np.array([[[[0.0], [1.0]]]]); y = np.array([[[0, 1]]])
    >>> k, b = linear_probe(x, y, 2, l2=1e-6)
    >>> np.argmax(x @ k + b, axis=-1).tolist()
    [[[0, 1]]]
    """
    x = features.reshape(-1, features.shape[-1]).astype(np.float64)
    y = masks.reshape(-1)
    keep = y != IGNORE_LABEL
    x, y = x[keep], y[keep]
    mean, std = x.mean(0), x.std(0) + 1e-6
    x1 = np.hstack([(x - mean) / std, np.ones((len(x), 1))])  # (P, F + 1)
    weight = 1.0 / np.bincount(y, minlength=num_classes)[y]  # (P,)
    gram = (x1 * weight[:, None]).T @ x1
    ridge = l2 * weight.sum() / len(weight) * np.eye(len(gram))
    solution = np.linalg.solve(gram + ridge, (x1 * weight[:, None]).T @ np.eye(num_classes)[y])
    kernel = solution[:-1] / std[:, None]  # (F, C)
    bias = solution[-1] - mean @ kernel  # (C,)
    return kernel.astype(np.float32), bias.astype(np.float32)


def frozen_em(features: np.ndarray, masks: np.ndarray, num_classes: int, kind: str,
              estep_config, num_steps: int = 2000, batch_size: int = 10,
              learning_rate: float = 1e-3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """fc8 alone trained by an image-label E-step on fixed features.

    A fresh linear classifier (fc8's initialisation: normal, std 0.01; zero
    bias) alternates, on random batches, the E-step of `kind` ("em_fixed" or
    "em_adapt", with `estep_config`, through the training path
    `kseg.em.targets.compute_targets`) on its own scores and a step of Adam
    on the softmax loss against the targets: training with conv1-fc7 frozen.
    The masks give the image labels only; every pixel counts in the E-step,
    as in training, which never sees a mask.

    features: (N, h, w, F); masks: (N, h, w). Returns kernel (F, C), bias (C,).
    """
    import keras
    import tensorflow as tf

    from kseg.em import targets as targets_lib

    if kind not in ("em_fixed", "em_adapt"):
        raise ValueError(f"frozen_em runs the image-label E-steps (em_fixed, em_adapt), "
                         f"not {kind!r}")
    n, h, w, depth = features.shape
    labels = np.stack([image_labels(m, num_classes) for m in masks])  # (N, C)
    kernel = tf.Variable(tf.random.stateless_normal([depth, num_classes], [seed, 1],
                                                    stddev=0.01))
    bias = tf.Variable(tf.zeros([num_classes]))
    optimizer = keras.optimizers.Adam(learning_rate)

    @tf.function
    def step(x, present, step_seed):
        batch = image_label_batch(kind, present, tf.ones([tf.shape(x)[0], h, w], tf.bool))
        with tf.GradientTape() as tape:
            scores = tf.einsum("bhwf,fc->bhwc", x, kernel) + bias  # (B, h, w, C)
            targets, _ = targets_lib.compute_targets(scores, batch, estep_config,
                                                     seed=step_seed)
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
                targets, scores))
        optimizer.apply_gradients(zip(tape.gradient(loss, [kernel, bias]), [kernel, bias]))

    rng = np.random.default_rng(seed)
    for i in range(num_steps):
        pick = rng.choice(n, size=min(batch_size, n), replace=False)
        step(tf.constant(features[pick]), tf.constant(labels[pick]),
             tf.constant([seed, i], tf.int32))
    return kernel.numpy(), bias.numpy()
