"""Shared by the CRF tests: fast CRF parameters and samples with made-up probabilities."""

import io

import numpy as np
import pytest
from absl import flags
from PIL import Image

from kseg.cli import flags as cli_flags
from kseg.crf.dense import CRFParams
from kseg.crf.evaluate import CRFSample
from kseg.data import records

# Cheap settings: 3 mean-field iterations.
FAST = CRFParams(bi_w=6.0, bi_xy_std=60.0, bi_rgb_std=10.0, pos_w=3.0, pos_xy_std=3.0,
                 num_iter=3)


def _box_blur(x, size):
    """Moving average over the two spatial axes, edges replicated."""
    for axis in (0, 1):
        pad = [(0, 0)] * x.ndim
        pad[axis] = (size // 2, size - 1 - size // 2)
        sums = np.cumsum(np.pad(x, pad, mode="edge"), axis=axis)
        sums = np.insert(sums, 0, 0.0, axis=axis)
        n = x.shape[axis]
        x = (np.take(sums, np.arange(size, size + n), axis=axis)
             - np.take(sums, np.arange(n), axis=axis)) / size
    return x


def _samples(records_dir, split="val", num_classes=6, seed=0):
    """Real images and labels with blurry, noisy 'network' probabilities."""
    rng = np.random.default_rng(seed)
    samples = []
    for record in records.iterate_split(records_dir, split):
        image = np.array(Image.open(io.BytesIO(record.image_encoded)).convert("RGB"))
        label = record.class_mask
        target = np.where(label == 255, 0, label)
        logits = 4.0 * np.eye(num_classes)[target] + rng.normal(size=label.shape + (num_classes,))
        logits = _box_blur(logits, 9)
        probs = np.exp(logits - logits.max(-1, keepdims=True))
        samples.append(CRFSample(record.image_id, image, label,
                                 (probs / probs.sum(-1, keepdims=True)).astype(np.float32)))
    return samples


@pytest.fixture(scope="module")
def samples(tiny_records):
    return _samples(tiny_records)


def crf_flag_values():
    """A fresh FlagValues with the --crf_* flags defined as the commands define them."""
    values = flags.FlagValues()
    cli_flags.define_crf_flags(values)
    return values
