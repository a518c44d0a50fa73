"""Can EM start from this network, and has a run collapsed? (docs/pretraining.md)

    python scripts/em_start.py --flagfile=flags/em_adapt.cfg [--run=DIR] [--num_images=50]
        [--num_train_images=300] [--frozen_steps=2000]

Builds the network a run of the flagfile starts from (its --init: conv1-fc7
pretrained, fc8 fresh; or, with --run, a run's newest checkpoint), runs the
flagfile's image-label E-step (em_fixed or em_adapt, with its settings) on the
first annotated images of --split, and prints

- how the E-step's targets match the masks: mIoU, foreground precision
  against its chance level (the foreground share), right-class precision;
- what the network's own wrong pixels are (`diagnostics.error_sources`): the
  share that puts a class the image does not contain, the only errors an
  image-label E-step can correct, against background on objects, objects on
  background and another present class on objects;
- fc8 alone on the network's fixed features, trained on --num_train_images
  train images by the E-step from their image labels (--frozen_steps), and
  by least squares on their masks (what the features allow): the val mIoU of
  each, against calling every pixel background. This decides whether EM can
  start: a fresh fc8's first targets are near chance even on features EM
  learns well from (docs/pretraining.md);
- each layer's input dependence: the share of its activation variance that
  changes with the image (0: the same maps for every image, a collapsed run).

The masks give the image labels and score the targets here; training never
reads them.
"""

import numpy as np
from absl import flags

from kseg.cli import app as cli_app
from kseg.cli import flags as cli_flags

FLAGS = flags.FLAGS

# Below this, a layer computes (nearly) the same maps for every image.
COLLAPSED = 0.01
# fc8 trained by the E-step on the frozen features must beat calling every
# pixel background by this much (mIoU) for EM to have something to learn from.
SIGNAL = 0.05


def define_flags():
    """Defines this command's flags (in absl's global FLAGS)."""
    cli_flags.define_experiment_flags()
    flags.DEFINE_string("run", None, "Measure this run's newest checkpoint instead of the "
                        "flagfile's starting network.")
    flags.DEFINE_string("split", "val", "Annotated split whose first images are measured.")
    flags.DEFINE_integer("num_images", 50, "How many images.", lower_bound=2)
    flags.DEFINE_integer("num_train_images", 300, "Train images that fc8 is fitted on, on "
                         "the frozen features.", lower_bound=2)
    flags.DEFINE_integer("frozen_steps", 2000, "E-step / Adam steps of fc8 on the frozen "
                         "features.", lower_bound=1)


def main(argv):
    del argv
    import keras
    import tensorflow as tf

    from kseg import experiment
    from kseg.data import pipeline, records
    from kseg.em import diagnostics
    from kseg.inference.segment import segment

    exp = cli_flags.experiment_from_flags(model_dir="")
    kind = exp.data.supervision
    if kind not in ("em_fixed", "em_adapt"):
        raise SystemExit(f"--supervision={kind}: em_start measures the image-label E-steps "
                         "(em_fixed, em_adapt)")
    keras.utils.set_random_seed(exp.seed)
    if FLAGS.run:
        network, _ = experiment.load_network(FLAGS.run)
        source = f"run {FLAGS.run}"
    else:
        init = experiment.resolve_init(exp.init, exp.model)
        network = experiment.initial_network(exp, init)
        source = f"--init={exp.init}" + (f" ({init})" if init != exp.init else "")
    data_dir = experiment.resolve_data_dir(exp.data)

    def read(split, count):
        dataset = pipeline.eval_dataset(records.split_pattern(data_dir, split))
        examples = [(e["image"].numpy(), e["label"].numpy()) for e in dataset.take(count)]
        return [e[0] for e in examples], [e[1] for e in examples]

    images, labels = read(FLAGS.split, FLAGS.num_images)
    num_classes = network.output_shape[-1]

    settings = (f"fg_portion {exp.estep.fg_portion}, bg_portion {exp.estep.bg_portion}"
                if kind == "em_adapt" else
                f"fg_bias {exp.estep.fg_bias}, bg_bias {exp.estep.bg_bias}")
    print(f"{kind} E-step ({settings}) from {source}, on {len(images)} {FLAGS.split} images:")
    targets = diagnostics.estep_targets(network, images, labels, kind, exp.estep, exp.seed)
    small = [diagnostics.at_score_map(label, *t.shape) for label, t in zip(labels, targets)]
    quality = diagnostics.target_quality(targets, small, num_classes)
    print(f"  targets: mIoU {100 * quality['miou']:.1f}%, foreground precision "
          f"{100 * quality['fg_precision']:.1f}% (chance, the foreground share: "
          f"{100 * quality['fg_share']:.1f}%), right class {100 * quality['class_precision']:.1f}%")
    predictions = [np.argmax(segment(network, tf.constant(image[None]))[0], axis=-1)
                   for image in images]
    sources = diagnostics.error_sources(predictions, labels)
    print(f"  the network's own labels at full resolution: {100 * sources['error']:.1f}% of "
          f"pixels wrong; errors the image labels can correct (a class the image does not "
          f"contain) {100 * sources['absent']:.1f}%, background on objects "
          f"{100 * sources['missed']:.1f}%, objects' classes on background "
          f"{100 * sources['spill']:.1f}%, another present class on objects "
          f"{100 * sources['swapped']:.1f}%")

    frozen = frozen_fc8(network, kind, exp, read("train", FLAGS.num_train_images),
                        (images, labels), num_classes)
    height = min(i.shape[0] for i in images)
    width = min(i.shape[1] for i in images)
    batch = np.stack([i[:height, :width] for i in images])  # (N, H, W, 3)
    names = [layer.name for layer in network.layers if getattr(layer, "kernel", None) is not None]
    dependence = [diagnostics.input_dependence(a)
                  for a in diagnostics.layer_activations(network, batch, names)]
    print("  input dependence (share of activation variance that changes with the image):")
    for start in range(0, len(names), 6):
        print("    " + "  ".join(f"{n} {d:.2f}" for n, d in
                                 zip(names[start:start + 6], dependence[start:start + 6])))
    collapsed = [n for n, d in zip(names, dependence) if d < COLLAPSED]
    if collapsed:
        print(f"  collapsed: from {collapsed[0]} on, the network computes nearly the same maps "
              "for every image")
    if frozen["em"] < frozen["background"] + SIGNAL:
        print("  no signal: fc8 trained by the E-step on these features does no better than "
              "calling every pixel background; EM has nothing to learn from "
              "(docs/pretraining.md)")


def frozen_fc8(network, kind, exp, train, val, num_classes) -> dict:
    """Fits fc8 alone on the network's features of the `train` (images, masks)
    by the E-step and by least squares, prints and returns the val mIoUs."""
    from kseg.em import diagnostics

    def features(images, masks):
        height = min(i.shape[0] for i in images)
        width = min(i.shape[1] for i in images)
        x = diagnostics.classifier_features(
            network, np.stack([i[:height, :width] for i in images]))  # (N, h, w, F)
        y = np.stack([diagnostics.at_score_map(m[:height, :width], *x.shape[1:3])
                      for m in masks])  # (N, h, w)
        return x, y

    x, y = features(*train)
    val_x, val_y = features(*val)
    em = diagnostics.frozen_em(x, y, num_classes, kind, exp.estep, FLAGS.frozen_steps,
                               seed=exp.seed)
    probe = diagnostics.linear_probe(x, y, num_classes)
    background = (np.zeros((x.shape[-1], num_classes)), np.eye(num_classes)[0])
    result = {name: diagnostics.classifier_miou(val_x, val_y, *fc8)
              for name, fc8 in (("em", em), ("probe", probe), ("background", background))}
    print(f"  fc8 alone on the frozen features, fitted on {len(x)} train images, val mIoU: "
          f"by the E-step from image labels ({FLAGS.frozen_steps} steps) "
          f"{100 * result['em']:.1f}%; on the masks (least squares, what the features "
          f"allow) {100 * result['probe']:.1f}%; every pixel background "
          f"{100 * result['background']:.1f}%")
    return result


def run():
    """The command: its flags, then `main`."""
    define_flags()
    cli_app.run(main)


if __name__ == "__main__":
    run()
