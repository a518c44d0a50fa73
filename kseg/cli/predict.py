"""Segments image files with a training run or an exported SavedModel.

    python scripts/predict.py --model_dir=runs/strong --input=photos/ --output=out/ [--crf]
    python scripts/predict.py --saved_model=exports/strong/1 --input='photos/*.jpg' --output=out/

--input is a folder, a .txt list of paths, a glob pattern or one image. For
each image NAME the output folder gets NAME.png (labels as a VOC-palette PNG)
and NAME_overlay.jpg (the image | the image with the label colours blended).
Unreadable images are skipped with a message naming the file. --crf adds
the dense CRF (parameters: --crf_* flags, stds for a --crf_reference_size
image, scaled to each image); --crf_impl=tf runs the TensorFlow CRF instead of
pydensecrf.

Installed, `kseg-predict FLAGS` is the same as `python scripts/predict.py FLAGS`.
"""

import sys

from absl import flags

from kseg.cli import app as cli_app
from kseg.cli import flags as cli_flags
from kseg.inference import predict, runtime

FLAGS = flags.FLAGS


def define_flags():
    """Defines this command's flags (in absl's global FLAGS)."""
    flags.DEFINE_string("model_dir", None, "Training run directory (its newest checkpoint).")
    flags.DEFINE_string("saved_model", None, "SavedModel directory (scripts/export.py).")
    flags.mark_flags_as_mutual_exclusive(["model_dir", "saved_model"], required=True)
    flags.DEFINE_string("input", None, "Folder, .txt list, glob pattern or image file.",
                        required=True)
    flags.DEFINE_string("output", None, "Output folder (created if missing).", required=True)
    flags.DEFINE_bool("crf", False, "Post-process with the dense CRF.")
    cli_flags.define_workers_flag()
    flags.DEFINE_alias("crf_workers", "workers")  # its earlier name
    cli_flags.define_crf_flags()
    cli_flags.define_crf_impl_flag()
    cli_flags.define_inference_flags()


def main(argv):
    del argv
    # A missing input or run ends in one `error:` line (kseg.cli.app.one_line_errors).
    paths = predict.list_images(FLAGS.input)
    if FLAGS.saved_model:
        if FLAGS.precision or FLAGS.jit_compile:
            raise ValueError("--precision and --jit_compile apply to --model_dir; a SavedModel "
                             "runs as exported (scripts/export.py --precision, --jit_compile)")
        predictor = predict.SavedModelPredictor(FLAGS.saved_model)
    else:
        predictor = predict.KerasPredictor.from_run(FLAGS.model_dir, FLAGS.precision,
                                                    FLAGS.jit_compile)
    setting = cli_flags.crf_setting_from_flags() if FLAGS.crf else None
    summary = predict.predict_images(paths, predictor, FLAGS.output, setting,
                                     FLAGS.workers, crf_impl=FLAGS.crf_impl)
    print(f"wrote {len(summary.written)} label PNGs and overlays to {summary.output_dir}"
          + (f"; skipped {len(summary.skipped)} unreadable" if summary.skipped else ""))
    if not summary.written:
        sys.exit(1)


def run():
    """The `kseg-predict` command."""
    # Inference only: oneDNN may keep the restored kernels (kseg.inference.runtime).
    runtime.assume_frozen_weights()
    define_flags()
    cli_app.run(main)


if __name__ == "__main__":
    run()
