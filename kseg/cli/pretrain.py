"""Pretrains conv1-fc7 of DeepLab-VGG16 on the embedded ImageNet stand-in.

    python scripts/pretrain.py [--width=0.125] [--fov=large] [--num_steps=1200]

Writes (once; cached by settings) the backbone file that
`--init=embedded_imagenet` loads, and prints its path and the held-out top-1
classification accuracy (docs/pretraining.md). Training runs with
`--init=embedded_imagenet` call the same code on first use, so running this
first is optional.
"""

from absl import flags

from kseg import config
from kseg.cli import app as cli_app
from kseg.cli import flags as cli_flags

FLAGS = flags.FLAGS


def define_flags():
    """Defines this command's flags (in absl's global FLAGS)."""
    cli_flags.define_config_flags(config.PretrainConfig)
    flags.DEFINE_string("cache_dir", None, "Where the stand-in set and backbones are cached "
                        "(default $KSEG_DATA_DIR or ~/.cache/kseg).")


def main(argv):
    del argv
    from kseg.training import pretrain  # TensorFlow: after the flags parsed
    pretrain_config = config.PretrainConfig(**{
        f.name: getattr(FLAGS, f.name) for f in cli_flags.setting_fields(config.PretrainConfig)})
    path = pretrain.ensure_backbone(pretrain_config, FLAGS.cache_dir)
    info = pretrain.backbone_info(path)
    print(f"{path}: held-out top-1 {100 * info['val_top1']:.2f}% "
          f"({info['num_classes']} classes, pretraining took {info['seconds']:.0f} s)")


def run():
    """The `kseg-pretrain` command."""
    define_flags()
    cli_app.run(main)


if __name__ == "__main__":
    run()
