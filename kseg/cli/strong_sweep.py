"""Semi-supervised training (EM-Fixed, the paper's; EM-Adapt) against strong training
on the strong images alone, over the number of strong images (the paper's Table 1:
200 / 500 / 750 / 1,000 of 10,582).

    python scripts/strong_sweep.py [--num_strong=20,50,100,200] [--runs_dir=runs] \
        [--semi_flagfiles=flags/semi_em_fixed.cfg,flags/semi_em_adapt.cfg] \
        [--sweep_out=docs/results/strong_sweep]

Trains (or reuses) one run of each flagfile per number, in
<runs_dir>/<name>_n<N> (<runs_dir>/<name> for the flagfiles' own 100), then
writes <out>.md (table) and <out>.png (mIoU against the number of strong
images, a curve per flagfile; needs matplotlib: pip install -e .[plot]).
Where a semi curve's point is within --close_within points of the strong
images alone, both points are also trained with seed 1 (<dir>_seed1) and
the table and figure compare the means.
"""

import os

from absl import flags

from kseg.cli import app as cli_app
from kseg.cli import results_table
from kseg.utils import files

FLAGS = flags.FLAGS


def define_flags():
    """Defines this command's flags (in absl's global FLAGS)."""
    flags.DEFINE_list("num_strong", ["20", "50", "100", "200"], "Numbers of strong images.")
    flags.DEFINE_list("semi_flagfiles", ["flags/semi_em_fixed.cfg", "flags/semi_em_adapt.cfg"],
                      "Semi-supervised flagfiles, a curve each.")
    flags.DEFINE_string("strong_flagfile", "flags/strong_subset.cfg", "Strong-subset flagfile.")
    flags.DEFINE_integer("flagfile_num_strong", 100, "The flagfiles' own --num_strong (its "
                         "runs are shared with scripts/results_table.py).")
    flags.DEFINE_string("sweep_out", "docs/results/strong_sweep", "Output path without suffix.")
    flags.DEFINE_string("runs_dir", "runs", "Where the run directories go.")
    flags.DEFINE_multi_string("extra", [], "Extra flags passed to every train.py run.")
    flags.DEFINE_float("close_within", 2.0, "Points within this many mIoU points of the "
                       "strong-only curve are also trained with seed 1 (both curves); the "
                       "means are compared. 0: seed 0 only.")


def run_dir(runs_dir: str, name: str, n: int, flagfile_num_strong: int, seed: int = 0) -> str:
    """<runs_dir>/<name>_n<N>[_seed<S>]; <runs_dir>/<name>[_seed<S>] for the
    flagfiles' own number (the runs of scripts/results_table.py)."""
    return results_table.run_dir(runs_dir, name if n == flagfile_num_strong else f"{name}_n{n}",
                                 seed)


def curves(flagfiles, numbers, runs_dir: str, flagfile_num_strong: int, extra=(), seed: int = 0,
           only=None) -> dict:
    """{flagfile name: [(number of strong images, val mIoU %), ...]}, numbers
    increasing; trains (or reuses) each point's run (see :func:`run_dir`).
    ``only``: a set of (name, number) to run, the rest left out."""
    out = {}
    for flagfile in flagfiles:
        name = os.path.splitext(os.path.basename(flagfile))[0]
        for n in sorted(set(numbers)):
            if only is not None and (name, n) not in only:
                continue
            result = results_table.train_and_evaluate(
                flagfile, run_dir(runs_dir, name, n, flagfile_num_strong, seed),
                [f"--num_strong={n}", *extra], seed)
            out.setdefault(name, []).append((n, 100 * result["miou"]))
    return out


def close_points(results: dict, reference: str, within: float) -> set:
    """The (name, number) points to repeat with another seed: each curve's point
    within ``within`` mIoU points of the ``reference`` curve at the same number,
    and that reference point.

    >>> sorted(close_points({"semi": [(20, 30.0), (200, 75.2)],
    ...                      "strong": [(20, 47.2), (200, 75.6)]}, "strong", 2.0))
    [('semi', 200), ('strong', 200)]
    """
    reference_at = dict(results[reference])
    close = set()
    for name, points in results.items():
        for n, miou in points:
            if name != reference and abs(miou - reference_at[n]) < within:
                close |= {(name, n), (reference, n)}
    return close


def with_seeds(results: dict, repeats: dict) -> dict:
    """{name: [(number, [mIoU of each seed]), ...]}: seed 0's points with the
    repeated seeds' values appended where ``repeats`` has them."""
    extra = {(name, n): miou for name, points in repeats.items() for n, miou in points}
    return {name: [(n, [miou] + ([extra[name, n]] if (name, n) in extra else []))
                   for n, miou in points] for name, points in results.items()}


def _cell(values):
    """'75.2' for one seed, '75.2 / 75.9 (75.6)' for two."""
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return " / ".join(f"{v:.1f}" for v in values) + f" ({sum(values) / len(values):.1f})"


def main(argv):
    del argv
    numbers = sorted(set(map(int, FLAGS.num_strong)))
    flagfiles = (*FLAGS.semi_flagfiles, FLAGS.strong_flagfile)
    results = curves(flagfiles, numbers, FLAGS.runs_dir, FLAGS.flagfile_num_strong, FLAGS.extra)
    reference = os.path.splitext(os.path.basename(FLAGS.strong_flagfile))[0]
    close = close_points(results, reference, FLAGS.close_within)
    repeats = curves(flagfiles, numbers, FLAGS.runs_dir, FLAGS.flagfile_num_strong, FLAGS.extra,
                     seed=1, only=close) if close else {}
    seeded = with_seeds(results, repeats)
    os.makedirs(os.path.dirname(FLAGS.sweep_out) or ".", exist_ok=True)
    names = list(seeded)
    lines = ["| strong images | " + " | ".join(f"`{n}` mIoU" for n in names) + " |",
             "|---" * (len(names) + 1) + "|"]
    for i, n in enumerate(numbers):
        lines.append(f"| {n} | " + " | ".join(_cell(seeded[k][i][1]) for k in names) + " |")
    note = (f"seed 0; where a semi point is within {FLAGS.close_within:g} points of the strong "
            "images alone, seeds 0 / 1 (mean) for both" if FLAGS.close_within > 0 else "seed 0")
    files.write_text(FLAGS.sweep_out + ".md", "Written by `python scripts/strong_sweep.py`: "
                     f"embedded val mIoU (no CRF; {note}).\n\n" + "\n".join(lines) + "\n")
    files.write_json(FLAGS.sweep_out + ".json", seeded)
    print("\n".join(lines))
    try:
        import matplotlib
        matplotlib.use("Agg")
        from matplotlib import pyplot
    except ImportError:
        print("matplotlib is not installed (pip install -e .[plot]): no figure written")
        return
    figure, axes = pyplot.subplots(figsize=(5, 3.5), dpi=120)
    labels = {"semi_em_fixed": "EM-Fixed (semi): strong + the rest image labels",
              "semi_em_adapt": "EM-Adapt (semi): strong + the rest image labels",
              "strong_subset": "strong images alone"}
    for name, points in seeded.items():
        axes.plot([n for n, _ in points], [sum(v) / len(v) for _, v in points], marker="o",
                  label=labels.get(name, name))
    axes.set_xlabel("strong (pixel-annotated) training images of 1000")
    axes.set_ylabel("val mIoU (%), no CRF; seed mean")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(FLAGS.sweep_out + ".png")
    print(f"wrote {FLAGS.sweep_out}.png")


def run():
    """The command: its flags, then `main`."""
    define_flags()
    cli_app.run(main)


if __name__ == "__main__":
    run()
