"""Sets EM-Adapt's portions from a few fully annotated held-out images.

    python scripts/estep_portions.py [--data_dir=RECORDS] [--split=train] [--num_images=100]

Prints how much of an image background and each present object class cover
(median and 10/90th percentiles) and the --fg_portion they suggest (the
median object share rounded down to 0.05), as the paper chose Bbox-Seg's
alpha on 100 held-out annotated images.
"""

import numpy as np
from absl import flags

from kseg.cli import app as cli_app

FLAGS = flags.FLAGS


def define_flags():
    """Defines this command's flags (in absl's global FLAGS)."""
    flags.DEFINE_string("data_dir", None, "Prepared records (default: the embedded dataset).")
    flags.DEFINE_string("split", "train", "Split of the held-out annotated images.")
    flags.DEFINE_integer("num_images", 100, "How many of its first images to measure.")


def main(argv):
    del argv
    from kseg.data import label_stats, pipeline, prepare, records
    data_dir = FLAGS.data_dir or prepare.ensure_embedded_records()
    info = records.read_split_info(data_dir, FLAGS.split)
    dataset = pipeline.eval_dataset(records.split_pattern(data_dir, FLAGS.split))
    labels = (e["label"].numpy() for e in dataset.take(FLAGS.num_images))
    stats = label_stats.coverage(labels, len(info["class_names"]))
    for key in ("background", "objects", "foreground"):
        p10, p50, p90 = np.quantile(stats[key], [0.1, 0.5, 0.9])
        print(f"{key:>10}: median {100 * p50:.1f}% (p10 {100 * p10:.1f}%, p90 {100 * p90:.1f}%)")
    print(f"classes per image: {stats['classes_per_image'].mean():.2f} "
          f"({len(stats['background'])} images of {FLAGS.split})")
    print(f"suggested: --fg_portion={label_stats.suggest_fg_portion(stats)} "
          "(--bg_portion: the paper's 0.4 holds unless background is often below 40%)")


def run():
    """The command: its flags, then `main`."""
    define_flags()
    cli_app.run(main)


if __name__ == "__main__":
    run()
