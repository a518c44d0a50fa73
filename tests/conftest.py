"""Shared fixtures: a tiny embedded dataset prepared once per test session."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import logging  # noqa: E402

import pytest  # noqa: E402

from kseg.data import embedded, prepare  # noqa: E402


@pytest.fixture
def absl_logs(caplog):
    """caplog recording what kseg logs through absl.logging, from INFO up."""
    caplog.set_level(logging.INFO, logger="absl")
    return caplog


@pytest.fixture(scope="session")
def tiny_records(tmp_path_factory):
    """Records dir of a small embedded dataset (48 train, 16 val, 64x64 images)."""
    root = str(tmp_path_factory.mktemp("tiny") / "voc")
    embedded.generate(root, num_train=48, num_val=16, image_size=64, seed=3)
    out = os.path.join(root, "records")
    prepare.prepare_voc_layout(root, out, ["train", "val"], embedded.EMBEDDED_CLASSES,
                               num_shards=2, strict=True)
    return out
