"""Prediction on image files (kseg/inference/predict.py, scripts/predict.py)."""

import dataclasses
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from kseg import model
from kseg.config import ModelConfig
from kseg.crf.evaluate import CRFSetting
from kseg.data import palette
from kseg.inference import export, predict
from kseg.inference import segment as segment_lib
from kseg.training import checkpoints

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CLASS_NAMES = ["background", "disc", "square"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run directory as training leaves it (config.json, a checkpoint), untrained."""
    model_dir = str(tmp_path_factory.mktemp("predict") / "run")
    config = ModelConfig(num_classes=3, width=0.0625, dropout=0.0)
    network = model.build_deeplab(config)
    checkpoints.save_run_config(model_dir, {"model": dataclasses.asdict(config),
                                          "class_names": CLASS_NAMES, "data_dir": None})
    tf.train.CheckpointManager(tf.train.Checkpoint(network=network),
                               os.path.join(model_dir, "checkpoints"), 1).save()
    return model_dir


@pytest.fixture()
def images(tmp_path):
    """A folder with two images of different sizes and formats and a broken file."""
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (37, 52, 3), np.uint8)
    a[5:25, 10:40] = [250, 250, 20]
    Image.fromarray(a).save(folder / "a.png")
    Image.fromarray(rng.integers(0, 256, (30, 26, 3), np.uint8)).convert("L").save(folder / "b.jpg")
    (folder / "broken.jpg").write_bytes(b"not an image")
    (folder / "notes.txt").write_text("ignored")
    return folder


def test_predict_writes_palette_labels_and_overlays(run_dir, images, tmp_path, absl_logs):
    predictor = predict.KerasPredictor.from_run(run_dir)
    assert predictor.class_names == CLASS_NAMES
    summary = predict.predict_images(predict.list_images(str(images)), predictor,
                                     str(tmp_path / "out"), progress=False)
    messages = [r.getMessage() for r in absl_logs.records
                if r.name == "absl" and r.levelname == "WARNING"]
    assert summary.written == ["a", "b"]
    assert [p for p, _ in summary.skipped] == [str(images / "broken.jpg")]
    assert len(messages) == 1 and "broken.jpg" in messages[0]

    image = np.asarray(Image.open(images / "a.png"))
    labels = palette.read_label_png(str(tmp_path / "out" / "a.png"))
    network = model.build_deeplab(ModelConfig(num_classes=3, width=0.0625))
    checkpoints.restore_network(network, run_dir)
    expected = segment_lib.segment(network, tf.constant(image[None])).numpy()[0].argmax(-1)
    np.testing.assert_array_equal(labels, expected)
    with Image.open(tmp_path / "out" / "a.png") as png:
        assert png.mode == "P"
    with Image.open(tmp_path / "out" / "a_overlay.jpg") as jpg:
        assert jpg.size == (2 * 52, 37)
    # A greyscale JPEG comes out at its own size.
    assert palette.read_label_png(str(tmp_path / "out" / "b.png")).shape == (30, 26)


def test_saved_model_predictor_matches_checkpoint_predictor(run_dir, images, tmp_path):
    network = model.build_deeplab(ModelConfig(num_classes=3, width=0.0625))
    checkpoints.restore_network(network, run_dir)
    path = export.export_saved_model(network, str(tmp_path / "export"), CLASS_NAMES)
    served = predict.SavedModelPredictor(path)
    assert served.class_names == CLASS_NAMES
    image = predict.read_image(str(images / "a.png"))
    np.testing.assert_allclose(served(image), predict.KerasPredictor(network, CLASS_NAMES)(image),
                               atol=1e-5)


@pytest.mark.slow
def test_predict_script_with_saved_model_and_crf(run_dir, images, tmp_path):
    network = model.build_deeplab(ModelConfig(num_classes=3, width=0.0625))
    checkpoints.restore_network(network, run_dir)
    path = export.export_saved_model(network, str(tmp_path / "export"), CLASS_NAMES)
    listing = tmp_path / "list.txt"
    listing.write_text(f"# two images\n{images / 'a.png'}\n\nimages/b.jpg\n")
    run = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "predict.py"),
                          f"--saved_model={path}", f"--input={listing}",
                          f"--output={tmp_path / 'out'}", "--crf", "--crf_workers=1"],
                         capture_output=True, text=True, timeout=240,
                         env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert run.returncode == 0, run.stderr[-3000:]
    assert "wrote 2 label PNGs" in run.stdout
    assert "predict + crf: 2/2" in run.stderr
    assert sorted(os.listdir(tmp_path / "out")) == ["a.png", "a_overlay.jpg", "b.png",
                                                    "b_overlay.jpg"]
    labels = palette.read_label_png(str(tmp_path / "out" / "a.png"))
    assert labels.shape == (37, 52) and labels.max() < 3


def test_predict_with_the_tf_crf_agrees_with_pydensecrf(run_dir, images, tmp_path):
    predictor = predict.KerasPredictor.from_run(run_dir)
    paths = predict.list_images(str(images))
    for impl in ("pydensecrf", "tf"):
        predict.predict_images(paths, predictor, str(tmp_path / impl), CRFSetting(),
                               crf_workers=1, progress=False, crf_impl=impl)
    for name in ("a", "b"):
        expected = palette.read_label_png(str(tmp_path / "pydensecrf" / f"{name}.png"))
        labels = palette.read_label_png(str(tmp_path / "tf" / f"{name}.png"))
        assert labels.shape == expected.shape and (labels == expected).mean() >= 0.99


def test_clear_errors(run_dir, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no file ending in"):
        predict.list_images(str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        predict.list_images(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="matches no file"):
        predict.list_images(str(tmp_path / "*.jpg"))
    with pytest.raises(FileNotFoundError, match="no SavedModel there"):
        predict.SavedModelPredictor(str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="kseg training directory"):
        predict.KerasPredictor.from_run(str(tmp_path / "empty"))
    with pytest.raises(predict.ImageReadError, match="nothing.png: no such file"):
        predict.read_image(str(tmp_path / "nothing.png"))
    run = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "predict.py"),
                          f"--model_dir={run_dir}", f"--input={tmp_path / 'empty'}",
                          f"--output={tmp_path / 'out'}"], capture_output=True, text=True,
                         timeout=240, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert run.returncode == 2 and "error: --input: folder" in run.stderr


def test_output_names_disambiguate_same_file_names():
    assert predict.output_names(["x/a.jpg", "x/b.png"]) == ["a", "b"]
    assert predict.output_names(["d/x/a.jpg", "d/y/a.jpg"]) == ["x__a", "y__a"]


def test_overlay_blends_colours_over_foreground_only():
    image = np.full((1, 2, 3), 100, np.uint8)
    labels = np.array([[0, 1]])  # label 1 is (128, 0, 0) in the VOC palette
    out = predict.overlay(image, labels, alpha=0.5)
    assert out.shape == (1, 4, 3)
    np.testing.assert_array_equal(out[0, :2], image[0])  # the input, unchanged
    np.testing.assert_array_equal(out[0, 2], [100, 100, 100])  # background: as is
    np.testing.assert_array_equal(out[0, 3], [114, 50, 50])  # (100 + 128) / 2, 100 / 2
