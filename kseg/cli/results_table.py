"""Trains and evaluates a list of flagfiles, then writes their val mIoU as a table.

    python scripts/results_table.py --flagfiles=flags/strong.cfg,flags/em_fixed.cfg,flags/em_fixed.cfg@1 \
        --out=RESULTS.md [--runs_dir=runs] [--crf]

`FLAGFILE@N` runs the flagfile with `--seed=N` (in <runs_dir>/<name>_seed<N>);
a flagfile given with several seeds gets one row per seed and a row of their
mean, which is what comparisons should use. Each run lives in
<runs_dir>/<flagfile name> and resumes if interrupted; a finished run
(eval_val.json exists) is not redone. The "paper" column is the paper's VOC
2012 val mIoU (with CRF) of the same method (Tables 1 and 3), for reading
the ordering, not for comparing levels; for the DeepLab-MSc rows, which the
paper reports on VOC 2012 test only (Table 6), it is the single-scale ->
multi-scale figure. `--crf` also evaluates every run with the dense CRF
(`evaluate.py --crf`, DeepLab's parameters; eval_val_crf.json, likewise not
redone) and adds its mIoU as a column.
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
    flags.DEFINE_list("flagfiles", None, "Flagfiles to run, in table order (FLAGFILE@SEED for "
                      "another seed).", required=True)
    flags.DEFINE_string("runs_dir", "runs", "Where the run directories go.")
    flags.DEFINE_string("out", "RESULTS.md", "Markdown file to write.")
    flags.DEFINE_multi_string("extra", [], "Extra flags passed to every train.py run.")
    flags.DEFINE_bool("crf", False, "Also evaluate each run with the dense CRF (evaluate.py "
                      "--crf) and add a column of its val mIoU.")


# The paper's VOC 2012 val mIoU with CRF (Table 1: image labels; Table 3:
# boxes) of the method each flagfile runs. Semi rows: 1,464 strong images
# (+ 9,118 weak); strong_subset: the 1,464 strong images alone.
PAPER_MIOU = {
    "strong": 67.6, "strong_subset": 62.5,
    "em_fixed": 20.8, "em_adapt": 38.2, "semi_em_fixed": 64.6,
    "bbox_rect": 52.5, "bbox_em": 54.1, "bbox_seg": 60.6,
    "semi_bbox_rect": 62.1, "semi_bbox_em": 64.8, "semi_bbox_seg": 65.1,
    # Table 6 (VOC 2012 test, with CRF): DeepLab-CRF-LargeFOV without -> with the
    # multi-scale network (Chen et al. train it on the single-scale network).
    "strong_msc": "70.3 -> 71.6 (test)", "strong_msc_from_strong": "70.3 -> 71.6 (test)",
}


def parse_entry(entry: str) -> tuple[str, int]:
    """'flags/x.cfg@1' -> ('flags/x.cfg', 1); no '@': seed 0."""
    flagfile, _, seed = entry.partition("@")
    return flagfile, int(seed or 0)


def run_dir(runs_dir: str, name: str, seed: int) -> str:
    return os.path.join(runs_dir, name if seed == 0 else f"{name}_seed{seed}")


def train_and_evaluate(flagfile: str, model_dir: str, extra=(), seed: int = 0,
                       crf: bool = False) -> dict:
    """Trains (or resumes) and evaluates one run unless its eval_val.json
    exists; returns that evaluation with the training wall time, and with
    `crf` its CRF evaluation's mIoU as `crf_miou` (made unless
    eval_val_crf.json exists)."""
    result_path = os.path.join(model_dir, "eval_val.json")
    crf_path = os.path.join(model_dir, "eval_val_crf.json")
    timing_path = os.path.join(model_dir, "train_seconds.txt")
    if not os.path.exists(result_path):
        start = time.time()
        subprocess.run([sys.executable, "-m", "kseg.cli.train", f"--flagfile={flagfile}",
                        f"--model_dir={model_dir}", f"--seed={seed}", *extra], check=True)
        files.write_text(timing_path, f"{time.time() - start:.0f}\n")
        subprocess.run([sys.executable, "-m", "kseg.cli.evaluate",
                        f"--model_dir={model_dir}"], check=True)
    if crf and not os.path.exists(crf_path):
        subprocess.run([sys.executable, "-m", "kseg.cli.evaluate", f"--model_dir={model_dir}",
                        "--crf"], check=True)
    with open(result_path) as f:
        result = json.load(f)
    if crf:
        with open(crf_path) as f:
            result["crf_miou"] = json.load(f)["miou"]
    seconds = open(timing_path).read().strip() if os.path.exists(timing_path) else "?"
    return {"seconds": seconds, **result}


def run_one(entry: str) -> dict:
    flagfile, seed = parse_entry(entry)
    name = os.path.splitext(os.path.basename(flagfile))[0]
    result = train_and_evaluate(flagfile, run_dir(FLAGS.runs_dir, name, seed), FLAGS.extra,
                                seed, FLAGS.crf)
    return {"name": name, "flagfile": flagfile, "seed": seed, **result}


def _mean_row(rows: list) -> dict:
    ious = [[r["per_class_iou"][i] for r in rows] for i in range(len(rows[0]["per_class_iou"]))]
    crf = {"crf_miou": sum(r["crf_miou"] for r in rows) / len(rows)} if "crf_miou" in rows[0] else {}
    return {**rows[0], "seed": "mean", **crf,
            "miou": sum(r["miou"] for r in rows) / len(rows),
            "pixel_accuracy": sum(r["pixel_accuracy"] for r in rows) / len(rows),
            "per_class_iou": [None if None in v else sum(v) / len(v) for v in ious],
            "seconds": ""}


def table(rows: list) -> str:
    """Markdown table; flagfiles run with several seeds get a mean row; rows
    evaluated with the CRF too (`crf_miou`) get a "+ CRF" column."""
    names = rows[0]["class_names"]
    with_crf = any("crf_miou" in r for r in rows)
    lines = ["| flagfile | seed | val mIoU | " + ("+ CRF | " if with_crf else "") + "paper | "
             "pixel acc. | " + " | ".join(names) + " | train s |",
             "|---" * (len(names) + 6 + with_crf) + "|"]
    notes = []
    ordered = []
    for r in rows:
        ordered.append(r)
        same = [x for x in rows if x["flagfile"] == r["flagfile"]]
        if len(same) > 1 and r is same[-1]:
            ordered.append(_mean_row(same))
    for r in ordered:
        if r["class_names"] == names:
            ious = " | ".join("-" if v is None else f"{100 * v:.1f}" for v in r["per_class_iou"])
            mark = ""
        else:  # evaluated on another label set (e.g. a COCO-like stage-1 run)
            ious = " | ".join("" for _ in names)
            mark = f" [{len(notes) + 1}]"
            notes.append(f"{mark.strip()} Evaluated on its own val split's {len(r['class_names'])} "
                         f"labels ({', '.join(r['class_names'])}), not on the columns' labels.")
        paper = PAPER_MIOU.get(r["name"], "")
        crf = (f"{100 * r['crf_miou']:.1f} | " if "crf_miou" in r else "- | ") if with_crf else ""
        lines.append(f"| `{r['flagfile']}`{mark} | {r['seed']} | **{100 * r['miou']:.1f}** | "
                     f"{crf}{paper} | {100 * r['pixel_accuracy']:.1f} | {ious} | {r['seconds']} |")
    return "\n".join(lines + ([""] + notes if notes else []))


def main(argv):
    del argv
    text = table([run_one(f) for f in FLAGS.flagfiles])
    files.write_text(FLAGS.out, "# Results on the embedded dataset (val"
                     f"{', without and with the CRF' if FLAGS.crf else ', no CRF'})\n\n"
                     "Written by `python scripts/results_table.py "
                     f"--flagfiles={','.join(FLAGS.flagfiles)}{' --crf' if FLAGS.crf else ''}`. "
                     "The paper column: VOC 2012 val mIoU with CRF of the same method (Tables 1 "
                     "and 3; the MSc rows: VOC 2012 test, Table 6, without -> with the "
                     f"multi-scale network), to compare orderings, not levels.\n\n{text}\n")
    print(text)


def run():
    """The command: its flags, then `main`."""
    define_flags()
    cli_app.run(main)


if __name__ == "__main__":
    run()
