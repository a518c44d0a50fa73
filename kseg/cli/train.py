"""Trains DeepLab with strong, weak or mixed supervision.

    python scripts/train.py --flagfile=flags/bbox_em.cfg [--model_dir=DIR] [--strategy=mirrored]

Running the same command again resumes from the newest checkpoint in DIR
(also after a SIGKILL). SIGTERM or Ctrl-C writes a checkpoint and exits with
status 128 + the signal number (143, 130); a second Ctrl-C quits at once.

Several machines: start the same command on each with --strategy=multi_worker
and TF_CONFIG naming the cluster and this machine's task, e.g.

    TF_CONFIG='{"cluster": {"worker": ["10.0.0.1:2222", "10.0.0.2:2222"]},
                "task": {"type": "worker", "index": 0}}'

--model_dir must be on a file system all workers see (worker 0 writes it).

Installed, `kseg-train FLAGS` is the same as `python scripts/train.py FLAGS`.
"""

import sys

from absl import flags

from kseg import constants, experiment
from kseg.cli import app as cli_app
from kseg.cli import flags as cli_flags
from kseg.training import distribute, loop

FLAGS = flags.FLAGS


def define_flags():
    """Defines this command's flags (in absl's global FLAGS)."""
    cli_flags.define_experiment_flags()
    flags.DEFINE_enum("strategy", None, list(constants.STRATEGIES),
                      "Distribution: one device, MirroredStrategy over this machine's GPUs, "
                      "or MultiWorkerMirroredStrategy over the machines named in TF_CONFIG. "
                      "Default: mirrored when more than one GPU is visible, else default. "
                      "--batch_size is the global batch, split evenly over all replicas.")


def main(argv):
    del argv
    # Multi-worker strategies must exist before TensorFlow runs any op.
    strategy = distribute.make_strategy(FLAGS.strategy)
    model_dir = FLAGS.model_dir or cli_flags.default_model_dir(sys.argv)
    exp = cli_flags.experiment_from_flags(model_dir)
    try:
        # flags.txt is written with config.json, once the run is known to be this one.
        experiment.run_training(exp, strategy=strategy,
                                other_files={"flags.txt": FLAGS.flags_into_string()})
    except loop.TrainingInterrupted as e:
        print(e, file=sys.stderr)
        sys.exit(e.exit_code)
    print(f"done: {model_dir}")


def run():
    """The `kseg-train` command."""
    define_flags()
    cli_app.run(main)


if __name__ == "__main__":
    run()
