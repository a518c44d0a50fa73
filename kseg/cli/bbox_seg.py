"""Bbox-Seg: estimates segmentation masks from the boxes with a dense CRF.

    python scripts/bbox_seg.py [--data_dir=RECORDS] [--split=train] [--alpha=0.2] [--workers=N]
    python scripts/train.py --flagfile=flags/bbox_seg.cfg
    python scripts/bbox_seg.py --alpha_search [--alpha_search_split=train] [--num_images=100]

For every image with boxes of --split, the CRF clamps the centre --alpha of
each box to its class and the outside of all boxes to background, and
decides the rest of each box (docs/method.md). Masks are written as
VOC-palette PNGs to --masks_dir (default <data_dir>/../SegmentationClassBboxSeg)
in a pool of --workers processes; masks already there are skipped, so an
interrupted run resumes. Then the split --out_split (default train_bboxseg)
is written into --data_dir: the records of --split with the masks as labels,
which flags/bbox_seg.cfg trains on (--weak_split=train_bboxseg).

--alpha_search instead scores the masks estimated for each of --alphas
against the ground truth of --num_images fully annotated images, next to
Bbox-Rect, prints the table and writes it to --output as JSON.

CRF parameters default to the authors' Bbox-Seg values (bilateral 45 / 37 / 3,
Gaussian 15 / 3, 10 iterations), position stds in pixels of a
--crf_reference_size image, scaled to each image.
"""

import os
import time

from absl import app, flags

# Light modules only: the pool's 'spawn' workers re-import this script.
from kseg.cli import app as cli_app
from kseg.cli import flags as cli_flags
from kseg.crf.bbox_seg import BBOX_SEG_CRF_PARAMS
from kseg.crf.evaluate import CRFSetting
from kseg.data import bbox_seg as bbox_seg_data
from kseg.utils import files

FLAGS = flags.FLAGS


def define_flags():
    """Defines this command's flags (in absl's global FLAGS)."""
    flags.DEFINE_string("data_dir", None, "Prepared records (default: the embedded dataset, "
                        "generated on first use).")
    flags.DEFINE_string("split", "train", "Split whose boxes give the masks.")
    flags.DEFINE_string("out_split", bbox_seg_data.DEFAULT_OUT_SPLIT, "Split written with the "
                        "estimated masks as labels.")
    flags.DEFINE_string("masks_dir", None, "Mask PNGs (default <data_dir>/../"
                        f"{bbox_seg_data.MASKS_DIRNAME}).")
    flags.DEFINE_float("alpha", 0.2, "Fraction of each box's area clamped to its class.")
    flags.DEFINE_enum("mode", "hard", list(bbox_seg_data.MODES), "'hard': the paper's clamps; "
                      "'soft': the released scripts' 0.75 / 0.5 unaries.")
    cli_flags.define_workers_flag()
    flags.DEFINE_bool("overwrite", False, "Redo every mask (needed to change the settings).")
    flags.DEFINE_integer("num_shards", None, "Shards of --out_split (default: as --split).")
    flags.DEFINE_bool("alpha_search", False, "Score the masks for each of --alphas instead.")
    flags.DEFINE_string("alpha_search_split", "train", "Split of the held-out annotated images.")
    flags.DEFINE_integer("num_images", 100, "Held-out images of the alpha search.")
    flags.DEFINE_list("alphas", ["0.2", "0.3", "0.4", "0.5", "0.6", "0.7", "0.8"],
                      "Alphas of the search.")
    flags.DEFINE_string("output", None, "Alpha-search JSON (default "
                        "runs/bbox_seg_alpha_search_<split>.json).")
    cli_flags.define_crf_flags(defaults=CRFSetting(BBOX_SEG_CRF_PARAMS))


def run_alpha_search(data_dir, setting):
    try:
        alphas = [float(a) for a in FLAGS.alphas]
    except ValueError:
        raise app.UsageError(f"--alphas: expected numbers, got {FLAGS.alphas}") from None
    split = FLAGS.alpha_search_split
    result = bbox_seg_data.alpha_search(data_dir, split, FLAGS.num_images, alphas,
                                        FLAGS.mode, setting, FLAGS.workers)
    print(f"IoU of the estimated masks against the ground truth, "
          f"{result['num_images']} images of {split}:")
    print(bbox_seg_data.format_alpha_table(result))
    output = FLAGS.output or os.path.join("runs", f"bbox_seg_alpha_search_{split}.json")
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    files.write_json(output, {**result, "data_dir": data_dir})
    print(f"wrote {output}")


def main(argv):
    del argv
    from kseg.data import prepare  # TensorFlow: see the imports above
    data_dir = FLAGS.data_dir or prepare.ensure_embedded_records()
    setting = cli_flags.crf_setting_from_flags()
    if FLAGS.alpha_search:
        run_alpha_search(data_dir, setting)
        return
    start = time.perf_counter()
    config = bbox_seg_data.BboxSegConfig(FLAGS.alpha, FLAGS.mode, setting)
    done = bbox_seg_data.make_bbox_seg_split(
        data_dir, FLAGS.split, FLAGS.out_split, FLAGS.masks_dir, config, FLAGS.workers,
        FLAGS.overwrite, FLAGS.num_shards)
    print(f"masks in {done['masks_dir']}: {done['masks']}")
    print(f"split {FLAGS.out_split!r} in {data_dir}: {done['split']}")
    print(f"done in {time.perf_counter() - start:.1f} s")


def run():
    """The command: its flags, then `main`."""
    define_flags()
    cli_app.run(main)


if __name__ == "__main__":
    run()
