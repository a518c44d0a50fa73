"""Searches the dense-CRF parameters that maximise mIoU on held-out images.

    python scripts/crf_search.py --model_dir=runs/strong [--split=val] [--num_images=100]
        [--search=coordinate|grid] [--bi_w_values=3,4,5] ... [--workers=N]
    python scripts/evaluate.py --model_dir=runs/strong --crf --flagfile=runs/strong/crf_best.cfg

The network runs once over the first --num_images images of --split and its
probabilities are kept; every CRF setting then runs on them over a pool of
--workers processes. The coordinate search starts from the --crf_* values
and tries every value of one parameter at a time (the *_values lists; an
empty list keeps that parameter fixed); --search=grid tries every
combination. Prints the table of settings tried and writes the best as a
flagfile fragment (--output, default DIR/crf_best.cfg) and every row to
DIR/crf_search_<split>.json. Position stds are in pixels of a
--crf_reference_size image (see scripts/evaluate.py).
"""

import os

from absl import app, flags

# Light modules only: the pool's 'spawn' workers re-import this script.
from kseg.cli import app as cli_app
from kseg.cli import flags as cli_flags
from kseg.crf import search as crf_search
from kseg.inference import runtime
from kseg.utils import files

FLAGS = flags.FLAGS


def define_flags():
    """Defines this command's flags (in absl's global FLAGS)."""
    flags.DEFINE_string("model_dir", None, "Training run directory.", required=True)
    flags.DEFINE_string("split", "val", "Prepared split holding the held-out images.")
    flags.DEFINE_string("data_dir", None, "Prepared records (default: the run's).")
    flags.DEFINE_integer("num_images", 100, "Held-out images: the first N of --split.")
    flags.DEFINE_enum("search", "coordinate", list(crf_search.SEARCH_METHODS),
                      "Coordinate search (one parameter at a time) or the full grid.")
    flags.DEFINE_integer("rounds", 2, "Passes of the coordinate search.")
    cli_flags.define_workers_flag()
    flags.DEFINE_string("output", None, "Flagfile fragment for the best setting "
                        "(default DIR/crf_best.cfg).")
    for name, values in crf_search.DEFAULT_GRID.items():
        flags.DEFINE_list(f"{name}_values", [f"{v:g}" for v in values],
                          f"Values of {name} to try (empty: keep --crf_{name}).")
    cli_flags.define_crf_flags(help_prefix="Start of the search: ")


def main(argv):
    del argv
    grid = {}
    for name in crf_search.DEFAULT_GRID:
        try:
            grid[name] = [float(v) for v in getattr(FLAGS, f"{name}_values")]
        except ValueError:
            raise app.UsageError(f"--{name}_values: expected numbers, got "
                                 f"{getattr(FLAGS, f'{name}_values')}") from None
    start = cli_flags.crf_setting_from_flags()
    from kseg import experiment  # TensorFlow: the spawned workers must not import it
    samples, config = experiment.load_crf_samples(FLAGS.model_dir, FLAGS.split, FLAGS.data_dir,
                                                   FLAGS.num_images)
    search = crf_search.search_crf(samples, len(config["class_names"]), start, grid,
                                   FLAGS.search, FLAGS.rounds, FLAGS.workers)
    print(crf_search.format_search_table(search))

    best, result = search["best"], search["best_result"]
    summary = (f"mIoU {100 * result['miou']:.2f}% on the first {len(samples)} images of "
               f"{FLAGS.split} (start {100 * search['start_result']['miou']:.2f}%, no CRF "
               f"{100 * search['no_crf']['miou']:.2f}%)")
    output = FLAGS.output or os.path.join(FLAGS.model_dir, "crf_best.cfg")
    crf_search.write_flagfile(output, best, [
        f"Dense-CRF parameters from scripts/crf_search.py ({FLAGS.search} search) for "
        f"{FLAGS.model_dir}:", summary,
        "Position stds are in pixels of a --crf_reference_size image."])
    record = os.path.join(FLAGS.model_dir, f"crf_search_{FLAGS.split}.json")
    files.write_json(record, {"split": FLAGS.split, "data_dir": config["data_dir"],
                              "num_images": len(samples), "search": FLAGS.search,
                              "best": best.as_dict(), "best_miou": result["miou"],
                              "no_crf_miou": search["no_crf"]["miou"],
                              "tried": search["tried"]})
    print(f"best: {' '.join(best.to_flags())}\n{summary}\nwrote {output} and {record}")


def run():
    """The command: its flags, then `main`."""
    # Inference only: oneDNN may keep the restored kernels (kseg.inference.runtime).
    runtime.assume_frozen_weights()
    define_flags()
    cli_app.run(main)


if __name__ == "__main__":
    run()
