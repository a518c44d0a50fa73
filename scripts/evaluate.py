"""Evaluates a training run's newest checkpoint on a prepared split.

    python scripts/evaluate.py --model_dir=runs/strong [--split=val] [--masks_dir=DIR]

Prints the per-class IoU table and writes DIR/eval_<split>.json (miou,
pixel_accuracy as fractions, per_class_iou, the confusion matrix).
"""

import os

from absl import app, flags

from kseg import evaluate, experiment
from kseg.data import palette
from kseg.progress import Progress

flags.DEFINE_string("model_dir", None, "Training run directory.", required=True)
flags.DEFINE_string("split", "val", "Prepared split to evaluate.")
flags.DEFINE_string("data_dir", None, "Prepared records (default: the run's).")
flags.DEFINE_string("masks_dir", None, "If set, write predicted masks as VOC-palette PNGs here.")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    if FLAGS.masks_dir:
        os.makedirs(FLAGS.masks_dir, exist_ok=True)
    progress = Progress(total=None, desc=f"evaluating {FLAGS.split}")

    def on_image(image_id, image, probs, prediction):
        if FLAGS.masks_dir:
            palette.write_label_png(os.path.join(FLAGS.masks_dir, image_id + ".png"), prediction)
        progress.update()

    with progress:
        result = experiment.evaluate_run(FLAGS.model_dir, FLAGS.split, FLAGS.data_dir, on_image)
    print(evaluate.format_table(result, result["class_names"]))
    print(f"wrote {os.path.join(FLAGS.model_dir, f'eval_{FLAGS.split}.json')}")


if __name__ == "__main__":
    app.run(main)
