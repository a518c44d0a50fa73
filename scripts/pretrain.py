"""Pretrains conv1-fc7 of DeepLab-VGG16 on the embedded ImageNet stand-in.

    python scripts/pretrain.py --width=0.125 --fov=large

Writes (once; cached by settings) the backbone file that
`--init=embedded_imagenet` loads, and prints its path and the held-out top-1
classification accuracy. Training runs with `--init=embedded_imagenet` call
the same code on first use, so running this first is optional.
"""

from absl import app, flags

from kseg import model
from kseg.training import pretrain

FLAGS = flags.FLAGS
_DEFAULTS = pretrain.PretrainConfig()
flags.DEFINE_float("width", _DEFAULTS.width, "Channel width multiplier of the network.")
flags.DEFINE_enum("fov", _DEFAULTS.fov, list(model.FOVS), "fc6 field of view.")
flags.DEFINE_integer("num_steps", _DEFAULTS.num_steps, "Classification training steps.")
flags.DEFINE_integer("seed", _DEFAULTS.seed, "Random seed.")
flags.DEFINE_string("cache_dir", None, "Where the stand-in set and backbones are cached "
                    "(default $KSEG_DATA_DIR or ~/.cache/kseg).")


def main(argv):
    del argv
    config = pretrain.PretrainConfig(width=FLAGS.width, fov=FLAGS.fov,
                                     num_steps=FLAGS.num_steps, seed=FLAGS.seed)
    path = pretrain.ensure_backbone(config, FLAGS.cache_dir)
    info = pretrain.backbone_info(path)
    print(f"{path}: held-out top-1 {100 * info['val_top1']:.2f}% "
          f"({info['num_classes']} classes, pretraining took {info['seconds']:.0f} s)")


if __name__ == "__main__":
    app.run(main)
