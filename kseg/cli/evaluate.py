"""Evaluates a training run's newest checkpoint on a prepared split.

    python scripts/evaluate.py --model_dir=runs/strong [--split=val] [--masks_dir=DIR]
    python scripts/evaluate.py --model_dir=runs/strong --crf [--workers=N] [--crf_impl=tf]
        [--flagfile=runs/strong/crf_best.cfg]   # parameters from scripts/crf_search.py

Prints the per-class IoU table and writes DIR/eval_<split>.json (miou,
pixel_accuracy as fractions, per_class_iou, the confusion matrix). With
--crf the network runs once, the dense CRF runs on every image in a pool of
--workers processes, the table shows IoU without and with the CRF side by
side, and DIR/eval_<split>_crf.json is written too, recording the CRF
parameters under "crf" (and as flag lines under "crf_flags"). --crf_impl
picks the CRF: pydensecrf (the default, C++ in the pool) or tf (the
TensorFlow CRF of kseg.crf.tf_dense, the one in `scripts/export.py --crf`,
in this process with --workers images in flight).

CRF parameters default to DeepLab-v1's LargeFOV values (bilateral 4 / 121 / 5,
Gaussian 3 / 3, 10 iterations); the position stds are in pixels of a
--crf_reference_size (500) image and each image scales them by its long
side / 500, as kseg.crf.dense.CRFParams.for_image_size does, so they fit VOC as
published and the 128-px embedded images scaled down.

Installed, `kseg-evaluate FLAGS` is the same as `python scripts/evaluate.py FLAGS`.
"""

import os

from absl import flags

# Only light modules at the top: the CRF pool's workers are started with
# 'spawn' and re-import this script, and should not load TensorFlow for it.
from kseg.cli import app as cli_app
from kseg.cli import flags as cli_flags
from kseg.crf import evaluate as crf_eval
from kseg.data import palette
from kseg.evaluation import metrics
from kseg.inference import runtime
from kseg.utils.progress import Progress

FLAGS = flags.FLAGS


def define_flags():
    """Defines this command's flags (in absl's global FLAGS)."""
    flags.DEFINE_string("model_dir", None, "Training run directory.", required=True)
    flags.DEFINE_string("split", "val", "Prepared split to evaluate.")
    flags.DEFINE_string("data_dir", None, "Prepared records (default: the run's).")
    flags.DEFINE_string("masks_dir", None, "If set, write predicted masks as VOC-palette PNGs "
                        "here (with --crf: the CRF's).")
    flags.DEFINE_bool("crf", False, "Also score the dense-CRF post-processed predictions.")
    cli_flags.define_workers_flag()
    flags.DEFINE_integer("crf_chunk", None, "Images whose probabilities are held at once "
                         f"(default {crf_eval.IMAGES_PER_WORKER} per worker).")
    cli_flags.define_crf_flags()
    cli_flags.define_crf_impl_flag()
    cli_flags.define_inference_flags()


def evaluate_plain():
    from kseg import experiment  # TensorFlow: see the imports above
    if FLAGS.masks_dir:
        os.makedirs(FLAGS.masks_dir, exist_ok=True)
    total = experiment.split_size(FLAGS.model_dir, FLAGS.split, FLAGS.data_dir)
    progress = Progress(total=total, desc=f"evaluating {FLAGS.split}")

    def on_image(image_id, image, probs, prediction):
        if FLAGS.masks_dir:
            palette.write_label_png(os.path.join(FLAGS.masks_dir, image_id + ".png"), prediction)
        progress.update()

    with progress:
        result = experiment.evaluate_run(FLAGS.model_dir, FLAGS.split, FLAGS.data_dir, on_image,
                                         FLAGS.precision, FLAGS.jit_compile)
    print(metrics.format_table(result, result["class_names"]))
    print(f"wrote {os.path.join(FLAGS.model_dir, f'eval_{FLAGS.split}.json')}")


def evaluate_crf():
    setting = cli_flags.crf_setting_from_flags()
    from kseg import experiment  # TensorFlow: see the imports above
    plain, crf = experiment.evaluate_run_with_crf(
        FLAGS.model_dir, FLAGS.split, FLAGS.data_dir, setting, FLAGS.workers,
        FLAGS.crf_chunk, FLAGS.masks_dir, impl=FLAGS.crf_impl, precision=FLAGS.precision,
        jit_compile=FLAGS.jit_compile)
    print(crf_eval.format_side_by_side(plain, crf, plain["class_names"]))
    print(f"CRF ({FLAGS.crf_impl}): " + " ".join(setting.to_flags()))
    for name in (f"eval_{FLAGS.split}.json", f"eval_{FLAGS.split}_crf.json"):
        print(f"wrote {os.path.join(FLAGS.model_dir, name)}")


def main(argv):
    del argv
    if FLAGS.crf:
        evaluate_crf()
    else:
        evaluate_plain()


def run():
    """The `kseg-evaluate` command."""
    # Inference only: oneDNN may keep the restored kernels (kseg.inference.runtime).
    runtime.assume_frozen_weights()
    define_flags()
    cli_app.run(main)


if __name__ == "__main__":
    run()
