"""How much of an image its objects cover: what EM-Adapt's portions should be.

EM-Adapt (docs/method.md) gives at least `bg_portion` of every weak image to
background and at least `fg_portion` to each label present in it. The paper's
40% / 20% fit PASCAL VOC, whose objects are large; on other data they should
be set from a few fully annotated held-out images, as the paper set Bbox-Seg's
alpha. `coverage` measures, per image, the share of the valid (non-void)
pixels of background and of each present object class; `suggest_portions`
turns the object shares into `fg_portion`.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np

IGNORE = 255


def coverage(label_maps: Iterable[np.ndarray], num_classes: int) -> dict:
    """Shares of the valid pixels, over images.

    Args:
      label_maps: (H, W) integer label maps, 0 background, 255 void.
      num_classes: labels including background.

    Returns:
      {"background": (N,) background share per image, "objects": (K,) share of
      each present object class in its image (one entry per image and class),
      "foreground": (N,) foreground share per image, "classes_per_image": (N,)}.
    """
    background, objects, foreground, counts = [], [], [], []
    for labels in label_maps:
        valid = labels[labels != IGNORE].astype(np.int64)
        if valid.size == 0:
            continue
        shares = np.bincount(valid, minlength=num_classes)[:num_classes] / valid.size
        background.append(shares[0])
        present = shares[1:][shares[1:] > 0]
        objects.extend(present)
        foreground.append(1.0 - shares[0])
        counts.append(len(present))
    return {"background": np.array(background), "objects": np.array(objects),
            "foreground": np.array(foreground), "classes_per_image": np.array(counts)}


def suggest_fg_portion(stats: dict, quantile: float = 0.5) -> float:
    """`fg_portion`: the `quantile` of the present classes' shares, rounded
    down to 0.05 (a portion is a least share: rounding down errs towards
    letting the network decide). `bg_portion` is left at the paper's 0.4:
    background is below 40% of an image only for the largest objects, on VOC
    and here alike (see `coverage`), so the paper's value needs no change."""
    value = float(np.quantile(stats["objects"], quantile))
    return round(max(0.05, np.floor(value / 0.05 + 1e-9) * 0.05), 2)
