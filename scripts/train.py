"""Trains DeepLab with strong, weak or mixed supervision.

    python scripts/train.py --flagfile=flags/bbox_em.cfg [--model_dir=DIR]

Running the same command again resumes from the newest checkpoint in DIR.
"""

import os
import sys

from absl import app, flags

import common_flags
from kseg import experiment

FLAGS = flags.FLAGS
common_flags.define_train_flags()


def default_model_dir() -> str:
    """runs/<name of the last --flagfile>, as DESIGN.md section 8 says."""
    names = [a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("--flagfile=")]
    return os.path.join("runs", os.path.splitext(os.path.basename(names[-1]))[0]
                        if names else "default")


def main(argv):
    del argv
    model_dir = FLAGS.model_dir or default_model_dir()
    os.makedirs(model_dir, exist_ok=True)
    with open(os.path.join(model_dir, "flags.txt"), "w") as f:
        f.write(FLAGS.flags_into_string())
    exp = common_flags.experiment_from_flags(model_dir)
    experiment.run_training(exp)
    print(f"done: {model_dir}")


if __name__ == "__main__":
    app.run(main)
