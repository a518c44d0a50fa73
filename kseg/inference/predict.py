"""Segments image files: VOC-palette label PNGs and side-by-side overlays (scripts/predict.py).

The network runs through a training checkpoint (`KerasPredictor`, i.e.
`kseg.inference.segment.segment` on the rebuilt network) or an exported
SavedModel (`SavedModelPredictor`, its `serve_images` signature, TensorFlow
only); both give the same probabilities. The optional dense CRF runs on
those probabilities in a process pool (`kseg.crf.evaluate.crf_predictions`),
with parameters scaled to each image's size, or in this process as
TensorFlow ops (`crf_impl='tf'`, `kseg.crf.tf_dense`).

This module imports TensorFlow only inside the predictors: the CRF pool's
'spawn' workers re-import the command that imports it.

For each input image `NAME.ext` the output folder gets

* `NAME.png`: the labels as a palette PNG (VOC colours, one class index per
  pixel; `kseg.data.palette.read_label_png` reads it back);
* `NAME_overlay.jpg`: the image and, to its right, the image with the label
  colours blended over every non-background pixel.

Inputs whose names collide (the same file name in two folders) are named
after their path relative to the inputs' common folder (`a__x.png`).
"""

from __future__ import annotations

import dataclasses
import glob
import io
import os
from typing import Callable, Sequence

import numpy as np
from absl import logging
from PIL import Image, ImageOps

from kseg.crf import evaluate as crf_eval
from kseg.data.palette import voc_palette, write_label_png
from kseg.utils.progress import Progress

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")
OVERLAY_ALPHA = 0.5


class ImageReadError(ValueError):
    """An input file that is missing or not a readable image."""


def list_images(spec: str) -> list[str]:
    """The image paths an `--input` names.

    `spec` is a folder (its files with an image extension, sorted, not
    recursive), a .txt file listing one path per line (relative paths are
    relative to the list's folder; blank lines and '#' comments skipped), a
    glob pattern (`photos/*.jpg`), or a single image file.

    Raises:
      FileNotFoundError: nothing exists at `spec` and it matches no file.
      ValueError: it names no image.
    """
    if os.path.isdir(spec):
        paths = sorted(os.path.join(spec, name) for name in os.listdir(spec)
                       if name.lower().endswith(IMAGE_EXTENSIONS)
                       and os.path.isfile(os.path.join(spec, name)))
        what = f"folder {spec!r} holds no file ending in {', '.join(IMAGE_EXTENSIONS)}"
    elif os.path.isfile(spec) and spec.lower().endswith(".txt"):
        base = os.path.dirname(os.path.abspath(spec))
        with open(spec) as f:
            lines = [line.strip() for line in f]
        paths = [os.path.join(base, line) for line in lines if line and not line.startswith("#")]
        what = f"list {spec!r} names no image"
    elif os.path.isfile(spec):
        paths = [spec]
        what = ""
    else:
        if not glob.has_magic(spec):
            raise FileNotFoundError(f"--input {spec!r}: no such file or folder")
        paths = sorted(p for p in glob.glob(spec) if os.path.isfile(p))
        what = f"pattern {spec!r} matches no file"
    if not paths:
        raise ValueError(f"--input: {what}; expected a folder of images, a .txt list of "
                         "image paths, a glob pattern or an image file")
    return paths


def read_image(path: str) -> np.ndarray:
    """(H, W, 3) uint8 RGB, turned upright by its EXIF orientation.

    Raises ImageReadError naming the file."""
    try:
        with Image.open(path) as image:
            image = ImageOps.exif_transpose(image)
            return np.asarray(image.convert("RGB"), dtype=np.uint8)
    except FileNotFoundError:
        raise ImageReadError(f"{path}: no such file") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise ImageReadError(f"{path}: not a readable image ({e})") from e


def output_names(paths: Sequence[str]) -> list[str]:
    """Output base names: file names without extension, or, when two
    collide, paths relative to the common folder joined with '__'."""
    stems = [os.path.splitext(os.path.basename(p))[0] for p in paths]
    if len(set(stems)) == len(stems):
        return stems
    absolute = [os.path.abspath(p) for p in paths]
    common = os.path.commonpath([os.path.dirname(p) for p in absolute])
    return [os.path.splitext(os.path.relpath(p, common))[0].replace(os.sep, "__")
            for p in absolute]


def overlay(image: np.ndarray, labels: np.ndarray, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """image (H, W, 3) uint8 and labels (H, W) -> (H, 2W, 3) uint8: the image,
    then the image with label colours blended over non-background pixels."""
    colours = voc_palette()[labels.astype(np.int64)]  # (H, W, 3)
    blended = image.astype(np.float32)
    foreground = (labels != 0)[..., None]  # (H, W, 1)
    blended = np.where(foreground, (1 - alpha) * blended + alpha * colours, blended)
    return np.concatenate([image, np.round(blended).astype(np.uint8)], axis=1)


class KerasPredictor:
    """Probabilities from a network: image (H, W, 3) uint8 -> (H, W, C) float32."""

    def __init__(self, network, class_names: Sequence[str], jit_compile: bool = False):
        from kseg.inference.segment import make_segmenter
        self._segment = make_segmenter(network, jit_compile)
        self.class_names = list(class_names)

    @classmethod
    def from_run(cls, model_dir: str, precision: str | None = None,
                 jit_compile: bool = False) -> "KerasPredictor":
        """The newest checkpoint of a training run directory, in the run's
        precision or `precision`; `jit_compile`: XLA, once per image size."""
        from kseg import experiment
        network, config = experiment.load_network(model_dir, precision)
        return cls(network, config["class_names"], jit_compile)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        return self._segment(image).numpy()


class SavedModelPredictor:
    """Probabilities from a SavedModel written by `kseg.inference.export`."""

    def __init__(self, path: str):
        import tensorflow as tf
        if not tf.saved_model.contains_saved_model(path):
            raise FileNotFoundError(f"--saved_model {path!r}: no SavedModel there (expected "
                                    "the --export_dir of scripts/export.py)")
        self._model = tf.saved_model.load(path)
        missing = {"serve_images", "metadata"} - set(self._model.signatures)
        if missing:
            raise ValueError(f"--saved_model {path!r} lacks the signatures {sorted(missing)}; "
                             "was it written by scripts/export.py?")
        names = self._model.signatures["metadata"]()["class_names"].numpy()
        self.class_names = [n.decode() for n in names]

    def __call__(self, image: np.ndarray) -> np.ndarray:
        out = self._model.signatures["serve_images"](images=image[None])
        return out["probabilities"][0].numpy()


@dataclasses.dataclass
class PredictSummary:
    written: list[str]  # output base names, in input order
    skipped: list[tuple[str, str]]  # (path, reason)
    output_dir: str


def predict_images(paths: Sequence[str], predictor: Callable[[np.ndarray], np.ndarray],
                   output_dir: str, crf_setting=None, crf_workers: int | None = None,
                   progress: bool = True, crf_impl: str = "pydensecrf") -> PredictSummary:
    """Writes `NAME.png` and `NAME_overlay.jpg` for every readable image.

    Args:
      paths: image files (see `list_images`).
      predictor: image (H, W, 3) uint8 -> probabilities (H, W, C).
      output_dir: created if missing.
      crf_setting: a `kseg.crf.evaluate.CRFSetting` to post-process with the
        dense CRF, or None.
      crf_workers: CRF processes (None: one per core).
      crf_impl: 'pydensecrf' or 'tf' (`kseg.crf.evaluate.crf_predictions`).
    Unreadable images are skipped with a warning (absl.logging) naming the file.
    """
    os.makedirs(output_dir, exist_ok=True)
    summary = PredictSummary([], [], output_dir)
    bar = Progress(total=len(paths), desc="predict" + (" + crf" if crf_setting else ""),
                   stream=None if progress else io.StringIO())

    def network_outputs():
        for path, name in zip(paths, output_names(paths)):
            try:
                image = read_image(path)
            except ImageReadError as e:
                logging.warning(f"skipping {e}")
                summary.skipped.append((path, str(e)))
                bar.update()
                continue
            yield name, image, predictor(image)

    if crf_setting is None:
        results = ((name, image, probs.argmax(-1)) for name, image, probs in network_outputs())
    else:
        samples = (crf_eval.CRFSample(name, image, None, probs)
                   for name, image, probs in network_outputs())
        results = ((s.image_id, s.image, labels)
                   for s, labels in crf_eval.crf_predictions(samples, crf_setting, crf_workers,
                                                                 impl=crf_impl))
    with bar:
        for name, image, labels in results:
            labels = labels.astype(np.uint8)
            write_label_png(os.path.join(output_dir, name + ".png"), labels)
            Image.fromarray(overlay(image, labels)).save(
                os.path.join(output_dir, name + "_overlay.jpg"), quality=90)
            summary.written.append(name)
            bar.update()
    return summary
