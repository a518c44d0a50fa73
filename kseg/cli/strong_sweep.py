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


def curves(flagfiles, numbers, runs_dir: str, flagfile_num_strong: int, extra=()) -> dict:
    """{flagfile name: [(number of strong images, val mIoU %), ...]}, numbers
    increasing; trains (or reuses) <runs_dir>/<name>_n<N>, and
    <runs_dir>/<name> for the flagfiles' own number."""
    out = {}
    for flagfile in flagfiles:
        name = os.path.splitext(os.path.basename(flagfile))[0]
        for n in sorted(set(numbers)):
            model_dir = os.path.join(runs_dir, name if n == flagfile_num_strong
                                     else f"{name}_n{n}")
            result = results_table.train_and_evaluate(flagfile, model_dir,
                                                      [f"--num_strong={n}", *extra])
            out.setdefault(name, []).append((n, 100 * result["miou"]))
    return out


def main(argv):
    del argv
    numbers = sorted(set(map(int, FLAGS.num_strong)))
    results = curves((*FLAGS.semi_flagfiles, FLAGS.strong_flagfile), numbers, FLAGS.runs_dir,
                     FLAGS.flagfile_num_strong, FLAGS.extra)
    os.makedirs(os.path.dirname(FLAGS.sweep_out) or ".", exist_ok=True)
    names = list(results)
    lines = ["| strong images | " + " | ".join(f"`{n}` mIoU" for n in names) + " |",
             "|---" * (len(names) + 1) + "|"]
    for i, n in enumerate(numbers):
        lines.append(f"| {n} | " + " | ".join(f"{results[k][i][1]:.1f}" for k in names) + " |")
    files.write_text(FLAGS.sweep_out + ".md", "Written by `python scripts/strong_sweep.py`: "
                     "embedded val mIoU (no CRF).\n\n" + "\n".join(lines) + "\n")
    files.write_json(FLAGS.sweep_out + ".json", results)
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
    for name, points in results.items():
        axes.plot(*zip(*points), marker="o", label=labels.get(name, name))
    axes.set_xlabel("strong (pixel-annotated) training images of 1000")
    axes.set_ylabel("val mIoU (%), no CRF")
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
