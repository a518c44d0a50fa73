"""Exports a training run's newest checkpoint as a SavedModel for serving.

    python scripts/export.py --model_dir=runs/strong --export_dir=exports/strong/1 [--crf]

Signatures (see kseg/inference/export.py): `serving_default` takes a batch of encoded
JPEG/PNG strings of one size, `serve_images` a (B, H, W, 3) uint8 batch of
any size; both return `labels` (B, H, W) and `probabilities` (B, H, W, C) at
the input size. `metadata` gives the class names and the VOC palette. With
--crf the dense CRF (TensorFlow ops, kseg.crf.tf_dense, parameters from the
--crf_* flags) is in the graph too: `serving_crf` (encoded images) and
`serve_images_crf` (uint8) return the CRF's labels and marginals, and
`metadata` the CRF parameters. Without it the CRF is a separate step
(scripts/predict.py --crf). Inspect with

    saved_model_cli show --dir exports/strong/1 --all

Installed, `kseg-export FLAGS` is the same as `python scripts/export.py FLAGS`.
"""

from absl import flags

from kseg.cli import app as cli_app
from kseg.cli import flags as cli_flags
from kseg.inference import export

FLAGS = flags.FLAGS


def define_flags():
    """Defines this command's flags (in absl's global FLAGS)."""
    flags.DEFINE_string("model_dir", None, "Training run directory.", required=True)
    flags.DEFINE_string("export_dir", None, "Where to write the SavedModel (for TensorFlow "
                        "Serving, a numbered version directory such as exports/NAME/1).",
                        required=True)
    flags.DEFINE_bool("overwrite", False, "Replace an existing --export_dir.")
    flags.DEFINE_bool("crf", False, "Also export the signatures serving_crf and serve_images_crf "
                      "that return dense-CRF labels (TensorFlow ops, --crf_* parameters).")
    cli_flags.define_crf_flags()
    cli_flags.define_inference_flags()


def main(argv):
    del argv
    setting = cli_flags.crf_setting_from_flags() if FLAGS.crf else None
    path = export.export_run(FLAGS.model_dir, FLAGS.export_dir, FLAGS.overwrite, setting,
                             FLAGS.precision, FLAGS.jit_compile)
    names = export.SIGNATURES + (export.CRF_SIGNATURES if FLAGS.crf else ())
    print(f"exported {FLAGS.model_dir} to {path} (signatures: {', '.join(names)})")


def run():
    """The `kseg-export` command."""
    define_flags()
    cli_app.run(main)


if __name__ == "__main__":
    run()
