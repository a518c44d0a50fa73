"""Trains and evaluates a list of flagfiles, then writes their val mIoU as a table.

    python scripts/results_table.py --flagfiles=flags/strong.cfg,flags/em_fixed.cfg \
        --out=RESULTS.md [--runs_dir=runs]

Each run lives in <runs_dir>/<flagfile name> and resumes if interrupted; a
finished run (eval_val.json newer than its last checkpoint) is not redone.
"""

import json
import os
import subprocess
import sys
import time

from absl import flags

from kseg.cli import app as cli_app
from kseg.utils import files

FLAGS = flags.FLAGS


def define_flags():
    """Defines this command's flags (in absl's global FLAGS)."""
    flags.DEFINE_list("flagfiles", None, "Flagfiles to run, in table order.", required=True)
    flags.DEFINE_string("runs_dir", "runs", "Where the run directories go.")
    flags.DEFINE_string("out", "RESULTS.md", "Markdown file to write.")
    flags.DEFINE_multi_string("extra", [], "Extra flags passed to every train.py run.")


def run_one(flagfile: str) -> dict:
    name = os.path.splitext(os.path.basename(flagfile))[0]
    model_dir = os.path.join(FLAGS.runs_dir, name)
    result_path = os.path.join(model_dir, "eval_val.json")
    timing_path = os.path.join(model_dir, "train_seconds.txt")
    if not os.path.exists(result_path):
        start = time.time()
        subprocess.run([sys.executable, "-m", "kseg.cli.train",
                        f"--flagfile={flagfile}", f"--model_dir={model_dir}", *FLAGS.extra],
                       check=True)
        files.write_text(timing_path, f"{time.time() - start:.0f}\n")
        subprocess.run([sys.executable, "-m", "kseg.cli.evaluate",
                        f"--model_dir={model_dir}"], check=True)
    with open(result_path) as f:
        result = json.load(f)
    seconds = open(timing_path).read().strip() if os.path.exists(timing_path) else "?"
    return {"name": name, "flagfile": flagfile, "seconds": seconds, **result}


def main(argv):
    del argv
    rows = [run_one(f) for f in FLAGS.flagfiles]
    names = rows[0]["class_names"]
    lines = ["| flagfile | val mIoU | pixel acc. | " + " | ".join(names) + " | train s |",
             "|---" * (len(names) + 4) + "|"]
    notes = []
    for r in rows:
        if r["class_names"] == names:
            ious = " | ".join("-" if v is None else f"{100 * v:.1f}" for v in r["per_class_iou"])
            mark = ""
        else:  # evaluated on another label set (e.g. a COCO-like stage-1 run)
            ious = " | ".join("" for _ in names)
            mark = f" [{len(notes) + 1}]"
            notes.append(f"{mark.strip()} Evaluated on its own val split's {len(r['class_names'])} "
                         f"labels ({', '.join(r['class_names'])}), not on the columns' labels.")
        lines.append(f"| `{r['flagfile']}`{mark} | **{100 * r['miou']:.1f}** | "
                     f"{100 * r['pixel_accuracy']:.1f} | {ious} | {r['seconds']} |")
    table = "\n".join(lines + ([""] + notes if notes else []))
    files.write_text(FLAGS.out, "# Results on the embedded dataset (val, no CRF)\n\n"
                     "Written by `python scripts/results_table.py "
                     f"--flagfiles={','.join(FLAGS.flagfiles)}`.\n\n{table}\n")
    print(table)


def run():
    """The command: its flags, then `main`."""
    define_flags()
    cli_app.run(main)


if __name__ == "__main__":
    run()
