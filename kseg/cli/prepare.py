"""Converts a dataset to sharded TFRecords (the one format training reads).

    # The embedded datasets (generated on first use; prints the records dir):
    python scripts/prepare_data.py --dataset=embedded [--out_dir=CACHE]
    python scripts/prepare_data.py --dataset=embedded_coco [--out_dir=CACHE]
    # PASCAL VOC 2012 (train, val) and, with SBD's SegmentationClassAug, train_aug:
    python scripts/prepare_data.py --dataset=voc --voc_root=.../VOCdevkit/VOC2012 \
        [--sbd_root=.../SBD] --out_dir=data/voc
    # MS-COCO 2014, one split per run (records split 'train' / 'val'):
    python scripts/prepare_data.py --dataset=coco --coco_root=.../coco \
        --coco_split=train2014 --out_dir=data/coco
    # Any VOC-layout directory with its own classes:
    python scripts/prepare_data.py --dataset=voc_layout --root=DIR --out_dir=OUT \
        --splits=train,val --class_names=background,aeroplane,...

Bad input (unreadable image, mask of another size, unknown label values,
missing files, repeated ids) is skipped and reported with the file's name in
a summary per split; --strict stops at the first instead. Boxes outside the
image are clipped and empty ones dropped (counted). Shards are written
atomically: run the same command again to resume an interrupted conversion.

Installed, `kseg-prepare FLAGS` is the same as `python scripts/prepare_data.py FLAGS`.
"""

import sys

from absl import app, flags

from kseg.cli import app as cli_app
from kseg.data import coco, embedded, prepare
from kseg.data.errors import DataError

FLAGS = flags.FLAGS


def define_flags():
    """Defines this command's flags (in absl's global FLAGS)."""
    flags.DEFINE_enum("dataset", "embedded", ["embedded", "embedded_coco", "voc", "coco", "voc_layout"],
                      "What to convert.")
    flags.DEFINE_string("voc_root", None, "VOCdevkit/VOC2012 (--dataset=voc).")
    flags.DEFINE_string("sbd_root", None, "The augmented set: a directory holding "
                        "SegmentationClassAug/ and optionally train_aug.txt or SBD's "
                        "train.txt/val.txt (--dataset=voc); adds the train_aug split.")
    flags.DEFINE_string("coco_root", None, "COCO root with annotations/ and the image folders "
                        "(--dataset=coco).")
    flags.DEFINE_string("coco_split", "train2014", "COCO split, e.g. train2014 or val2014.")
    flags.DEFINE_string("record_split", None, "Split name of the COCO records (default: the COCO "
                        "split without its year, e.g. 'train').")
    flags.DEFINE_string("root", None, "Root of a VOC-layout directory (--dataset=voc_layout).")
    flags.DEFINE_string("out_dir", None, "Where to write the records (embedded: the cache dir).")
    flags.DEFINE_list("splits", None, "Lists to convert (voc: default train,val[,train_aug]; "
                      "voc_layout: default train,val).")
    flags.DEFINE_list("class_names", list(embedded.EMBEDDED_CLASSES),
                      "Label names, background first (--dataset=voc_layout).")
    flags.DEFINE_integer("num_shards", None, "Shards per split (default: embedded 4, else "
                         "one per --images_per_shard images).")
    flags.DEFINE_integer("images_per_shard", prepare.IMAGES_PER_SHARD,
                         "Images per shard when --num_shards is not given.")
    flags.DEFINE_bool("strict", False, "Stop at the first bad example instead of skipping it.")


def _need(*names):
    missing = [f"--{name}" for name in names if not getattr(FLAGS, name)]
    if missing:
        raise app.UsageError(f"--dataset={FLAGS.dataset} needs {', '.join(missing)}")


def main(argv):
    del argv
    try:
        _convert()
    except DataError as error:
        sys.exit(f"error: {error}")


def _convert():
    if FLAGS.dataset == "embedded":
        print(prepare.ensure_embedded_records(FLAGS.out_dir, FLAGS.num_shards or 4))
        return
    if FLAGS.dataset == "embedded_coco":
        print(prepare.ensure_embedded_coco_records(FLAGS.out_dir, FLAGS.num_shards or 4))
        return
    if FLAGS.dataset == "voc":
        _need("voc_root", "out_dir")
        summaries = prepare.prepare_voc(
            FLAGS.voc_root, FLAGS.out_dir, sbd_root=FLAGS.sbd_root, splits=FLAGS.splits,
            num_shards=FLAGS.num_shards, images_per_shard=FLAGS.images_per_shard,
            strict=FLAGS.strict)
    elif FLAGS.dataset == "coco":
        _need("coco_root", "out_dir")
        split = FLAGS.record_split or prepare.default_record_split(FLAGS.coco_split)
        summaries = {split: prepare.prepare_coco(
            FLAGS.coco_root, FLAGS.out_dir, FLAGS.coco_split, record_split=split,
            categories=coco.COCO_CATEGORIES, num_shards=FLAGS.num_shards,
            images_per_shard=FLAGS.images_per_shard, strict=FLAGS.strict)}
    else:
        _need("root", "out_dir")
        summaries = prepare.prepare_voc_layout(
            FLAGS.root, FLAGS.out_dir, FLAGS.splits or ["train", "val"], FLAGS.class_names,
            FLAGS.num_shards or 4, FLAGS.strict)
    print(f"records in {FLAGS.out_dir}")
    for split, summary in summaries.items():
        print(f"{split}: {summary}")


def run():
    """The `kseg-prepare` command."""
    define_flags()
    cli_app.run(main)


if __name__ == "__main__":
    run()
