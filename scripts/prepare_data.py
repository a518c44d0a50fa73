"""Converts a dataset to sharded TFRecords (the one format training reads).

    python scripts/prepare_data.py --dataset=embedded [--out_dir=DIR]
    python scripts/prepare_data.py --dataset=voc_layout --root=DIR --out_dir=OUT \
        --splits=train,val --class_names=background,aeroplane,...

Bad input (unreadable image, mask of another size, unknown label values,
missing files) is reported with the file's name; --strict stops at the first.
"""

from absl import app, flags

from kseg.data import embedded, prepare

flags.DEFINE_enum("dataset", "embedded", ["embedded", "voc_layout"], "What to convert.")
flags.DEFINE_string("root", None, "Root of a VOC-layout directory (--dataset=voc_layout).")
flags.DEFINE_string("out_dir", None, "Where to write the records.")
flags.DEFINE_list("splits", ["train", "val"], "ImageSets/Segmentation lists to convert.")
flags.DEFINE_list("class_names", list(embedded.EMBEDDED_CLASSES), "Label names, background first.")
flags.DEFINE_integer("num_shards", 4, "Shards per split.")
flags.DEFINE_bool("strict", False, "Stop at the first bad example instead of skipping it.")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    if FLAGS.dataset == "embedded":
        print(prepare.ensure_embedded_records(FLAGS.out_dir, FLAGS.num_shards))
        return
    if not FLAGS.root or not FLAGS.out_dir:
        raise app.UsageError("--dataset=voc_layout needs --root and --out_dir")
    prepare.prepare_voc_layout(FLAGS.root, FLAGS.out_dir, FLAGS.splits, FLAGS.class_names,
                               FLAGS.num_shards, FLAGS.strict)


if __name__ == "__main__":
    app.run(main)
