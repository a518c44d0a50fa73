"""Measures what BENCHMARKS.md reports, on this machine, as ratios where it can.

    python scripts/benchmark.py --what=pipeline,estep [--estep_width=0.5]

pipeline: input-pipeline images/s against the model's training images/s at
  the same batch and crop (the embedded strong.cfg setting).
decode: JPEG decoding images/s with the accurate DCT the pipeline uses against
  TensorFlow's default.
estep: training-step time of each E-step kind relative to a strong step on
  the same batch, at 321x321 crops.
estep_crf: training-step time with --estep_crf against the same step without
  it (EM-Adapt, Bbox-EM-Fixed), at the embedded flagfiles' setting (width
  0.125, batch 10, 129x129 crops), and the E-step CRF alone at score-map and
  at input resolution.
crf: dense-CRF images/s, one process and a pool, at 500x375 with 21 labels.
crf_tf: seconds per image of the TensorFlow dense CRF (kseg.crf.tf_dense)
  against pydensecrf at 500x375, 21 labels, 10 iterations, on 1 and 2 cores,
  alternating round by round in one run (kseg.benchmarks.crf_tf).
serving: SavedModel inference images/s against the Keras model's, 500x375.
msc: training-step and inference time of DeepLab-MSc (--multiscale) against
  LargeFOV at 321x321, width 1, batch 1, alternating round by round.
network: kseg's training step and inference images/s (DeepLab-LargeFOV at
  321x321, width 1, and the embedded setting), per precision, with and
  without XLA, strong and each E-step kind, against the same network in plain
  PyTorch (CPU; `pip install -e '.[bench]'`, skipped without it) in the same
  run, alternating, same thread count; achieved GFLOP/s against the machine's
  peak (kseg.benchmarks.network). --network_rows picks the rows.
"""

import contextlib
import io
import os
import sys

from absl import flags

from kseg import model as model_lib
from kseg.benchmarks import training as benchmark
from kseg.cli import app as cli_app
from kseg.config import EStepConfig, InputConfig, ModelConfig
from kseg.data import pipeline, prepare, records
from kseg.utils import files

FLAGS = flags.FLAGS


def define_flags():
    """Defines this command's flags (in absl's global FLAGS)."""
    flags.DEFINE_list("what", ["pipeline", "decode", "estep", "estep_crf", "crf", "crf_tf",
                               "serving", "msc", "network"],
                      "Which measurements to run.")
    flags.DEFINE_list("serving_widths", ["0.125", "1"], "Model widths of the serving comparison.")
    flags.DEFINE_integer("serving_batch_size", 1, "Images per call of the serving comparison.")
    flags.DEFINE_integer("serving_rounds", 5, "Rounds of the serving comparison (median).")
    flags.DEFINE_integer("batch_size", 10, "Batch of the pipeline/training comparison.")
    flags.DEFINE_integer("crop_size", 129, "Crop of the pipeline/training comparison.")
    flags.DEFINE_float("width", 0.125, "Model width of the pipeline/training comparison.")
    flags.DEFINE_integer("estep_batch", 4, "Batch of the E-step comparison.")
    flags.DEFINE_float("estep_width", 0.25, "Model width of the E-step comparison.")
    flags.DEFINE_integer("estep_rounds", 30, "Measured steps per kind (median; 5 was too noisy).")
    flags.DEFINE_integer("estep_crf_batch", 10, "Batch of the --estep_crf comparison.")
    flags.DEFINE_integer("estep_crf_crop", 129, "Crop of the --estep_crf comparison.")
    flags.DEFINE_float("estep_crf_width", 0.125, "Model width of the --estep_crf comparison.")
    flags.DEFINE_integer("estep_crf_rounds", 30, "Measured steps per row of the --estep_crf "
                         "comparison (median).")
    flags.DEFINE_integer("crf_images", 8, "Images per CRF measurement.")
    flags.DEFINE_integer("crf_tf_rounds", 5, "Alternating rounds of the TF-vs-pydensecrf "
                         "comparison (median).")
    flags.DEFINE_list("crf_tf_cores", ["1", "2"], "Core counts of the TF-vs-pydensecrf "
                      "comparison (each in a fresh process).")
    flags.DEFINE_integer("crf_tf_height", 375, "Image height of the TF-vs-pydensecrf comparison.")
    flags.DEFINE_integer("crf_tf_width", 500, "Image width of the TF-vs-pydensecrf comparison.")
    flags.DEFINE_integer("decode_images", 500, "JPEGs per decoding measurement.")
    flags.DEFINE_float("msc_width", 1.0, "Model width of the MSc-vs-LargeFOV comparison.")
    flags.DEFINE_integer("msc_crop_size", 321, "Crop (and inference image) side of the "
                         "MSc-vs-LargeFOV comparison.")
    flags.DEFINE_integer("msc_batch", 1, "Batch of the MSc-vs-LargeFOV comparison.")
    flags.DEFINE_integer("msc_rounds", 9, "Alternating rounds of the MSc-vs-LargeFOV "
                         "comparison (median).")
    from kseg.benchmarks.network import DEFAULT_ROWS  # no TensorFlow
    flags.DEFINE_list("network_rows", list(DEFAULT_ROWS),
                      "Rows of the network benchmark: MODE-bBATCH-PRECISION[-xla][-KIND]"
                      "[-embedded], MODE train|infer|serve, PRECISION fp32|bf16|fp16, KIND "
                      "em_fixed|em_adapt|bbox_em_fixed (kseg.benchmarks.network.Row).")
    flags.DEFINE_integer("network_rounds", 3, "Alternating kseg/PyTorch rounds per row (median).")
    flags.DEFINE_integer("network_steps", 1, "Timed calls per round and framework.")
    flags.DEFINE_integer("network_threads", None, "Intra-op threads of both frameworks "
                         "(default: the usable cores).")
    flags.DEFINE_float("network_width", 1.0, "Width of the rows without 'embedded' (1: "
                       "DeepLab-LargeFOV; smaller to try the benchmark quickly).")
    flags.DEFINE_integer("network_size", 321, "Image side of the rows without 'embedded'.")
    flags.DEFINE_bool("network_torch", True, "Compare with PyTorch when it is installed.")
    flags.DEFINE_integer("network_inter_op", 0, "TensorFlow's inter-op threads in the network "
                         "benchmark (0: TensorFlow's default, what kseg's commands use).")
    flags.DEFINE_string("out", None, "If set, write each measurement's lines into this markdown "
                        "file (e.g. BENCHMARKS.md), replacing that measurement's section.")


def bench_pipeline():
    data_dir = prepare.ensure_embedded_records()
    num_classes = records.read_split_info(data_dir, "train")["num_classes"]
    config = InputConfig(num_classes=num_classes, crop_size=FLAGS.crop_size)
    pattern = records.split_pattern(data_dir, "train")
    streams = [pipeline.Stream(pattern, "bbox_em_fixed", FLAGS.batch_size)]
    feed = benchmark.pipeline_images_per_second(streams, config)
    trainer = benchmark.make_trainer(ModelConfig(num_classes, width=FLAGS.width))
    batch = next(iter(pipeline.train_dataset(streams, config)))
    step = benchmark.train_step_seconds(trainer, {"train": batch})["train"]
    train = FLAGS.batch_size / step
    print(f"pipeline: {feed:.1f} images/s (crop {FLAGS.crop_size}, flip, box masks, batch "
          f"{FLAGS.batch_size}); training: {train:.1f} images/s (width {FLAGS.width}); "
          f"ratio pipeline/training = {feed / train:.1f}")


def bench_decode():
    data_dir = prepare.ensure_embedded_records()
    encoded = [r.image_encoded for r, _ in zip(records.iterate_split(data_dir, "train"),
                                               range(FLAGS.decode_images))]
    times = benchmark.jpeg_decode_seconds(encoded)
    print(f"JPEG decoding of {len(encoded)} embedded images (median of 9): TensorFlow's default "
          f"DCT {len(encoded) / times['default']:.0f} images/s, the accurate DCT the pipeline "
          f"uses {len(encoded) / times['accurate']:.0f} images/s; ratio accurate/default "
          f"{times['default'] / times['accurate']:.2f}")


def bench_estep():
    num_classes = 21
    trainer = benchmark.make_trainer(ModelConfig(num_classes, width=FLAGS.estep_width))
    batch = benchmark.synthetic_batch(FLAGS.estep_batch, 321, num_classes)
    kinds = ("strong", "em_fixed", "em_adapt", "bbox_em_fixed")
    times = benchmark.train_step_seconds(
        trainer, {k: benchmark.with_kind(batch, k) for k in kinds}, rounds=FLAGS.estep_rounds)
    alone = benchmark.estep_seconds(batch, num_classes, kinds)
    print(f"E-step cost at 321x321, batch {FLAGS.estep_batch}, width {FLAGS.estep_width}, "
          f"{num_classes} labels (training steps: median of {FLAGS.estep_rounds}; "
          "E-step alone: median of 20):")
    for kind in kinds:
        print(f"  {kind:<14} {times[kind]:.3f} s/step  ratio to strong "
              f"{times[kind] / times['strong']:.3f}   E-step alone {1000 * alone[kind]:.1f} ms "
              f"= {100 * alone[kind] / times['strong']:.2f}% of a strong step")


def bench_estep_crf():
    # A batch of embedded training crops with their boxes and image labels: the
    # lattice's cost depends on the colours (random pixels are its worst case).
    data_dir = prepare.ensure_embedded_records()
    num_classes = records.read_split_info(data_dir, "train")["num_classes"]
    config = InputConfig(num_classes=num_classes, crop_size=FLAGS.estep_crf_crop)
    streams = [pipeline.Stream(records.split_pattern(data_dir, "train"), "bbox_em_fixed",
                               FLAGS.estep_crf_batch)]
    batch = next(iter(pipeline.train_dataset(streams, config)))
    model = ModelConfig(num_classes, width=FLAGS.estep_crf_width)
    plain = benchmark.make_trainer(model)
    refined = benchmark.make_trainer(model, estep=EStepConfig(estep_crf=True))
    kinds = ("em_adapt", "bbox_em_fixed")
    runs = {}
    for kind in kinds:
        runs[kind] = (plain, benchmark.with_kind(batch, kind))
        runs[kind + "+crf"] = (refined, benchmark.with_kind(batch, kind))
    times = benchmark.steps_seconds(runs, rounds=FLAGS.estep_crf_rounds)
    alone = benchmark.estep_crf_alone_seconds(batch, num_classes)
    size = FLAGS.estep_crf_crop
    print(f"--estep_crf at {size}x{size} embedded crops, batch {FLAGS.estep_crf_batch} (all "
          f"weak), width {FLAGS.estep_crf_width}, {num_classes} labels (training steps: median "
          f"of {FLAGS.estep_crf_rounds} alternating):")
    for kind in kinds:
        print(f"  {kind:<14} {times[kind]:.3f} s/step; with --estep_crf "
              f"{times[kind + '+crf']:.3f} s/step; ratio {times[kind + '+crf'] / times[kind]:.3f}")
    side = model_lib.score_map_size(size)
    print(f"  the E-step CRF alone per batch: at score-map resolution ({side}x{side}, what "
          f"--estep_crf runs) {1000 * alone['score_map']:.1f} ms; at input resolution "
          f"({size}x{size}, not an option) {1000 * alone['input']:.0f} ms = "
          f"{alone['input'] / times['em_adapt']:.1f} plain EM-Adapt steps")


def bench_crf():
    from kseg.benchmarks import crf as crf_bench
    result = crf_bench.benchmark_crf(num_images=FLAGS.crf_images)
    for run in result["runs"]:
        print(f"crf: workers={run['workers']} {run['images_per_second']:.2f} images/s")
    print(f"crf pool speed-up: {result['speedup']:.2f}x")


def bench_crf_tf():
    from kseg.benchmarks import crf_tf
    result = crf_tf.benchmark_crf_tf(height=FLAGS.crf_tf_height, width=FLAGS.crf_tf_width,
                                     rounds=FLAGS.crf_tf_rounds,
                                     cores=tuple(int(c) for c in FLAGS.crf_tf_cores))
    print("\n".join(crf_tf.format_result(result)))


def bench_serving():
    from kseg.benchmarks import serving
    for width in FLAGS.serving_widths:
        r = serving.benchmark_inference(width=float(width), batch_size=FLAGS.serving_batch_size,
                                        rounds=FLAGS.serving_rounds)
        print(f"serving at {r['image_size']}, batch {r['batch_size']}, width {r['width']}: "
              f"Keras {r['keras_images_per_s']:.2f} images/s, SavedModel serve_images "
              f"{r['saved_model_images_per_s']:.2f}, SavedModel from PNG strings "
              f"{r['saved_model_encoded_images_per_s']:.2f}; SavedModel/Keras "
              f"{r['saved_model_over_keras']:.2f}")


def bench_msc():
    r = benchmark.multiscale_seconds(width=FLAGS.msc_width, crop_size=FLAGS.msc_crop_size,
                                     batch_size=FLAGS.msc_batch, rounds=FLAGS.msc_rounds)
    size = FLAGS.msc_crop_size
    print(f"DeepLab-MSc against LargeFOV at {size}x{size}, batch {FLAGS.msc_batch}, width "
          f"{FLAGS.msc_width}, 21 labels (median of {FLAGS.msc_rounds} alternating rounds):")
    for what, label in (("train", "training step"), ("inference", "inference")):
        single, msc = r[what]["single"], r[what]["msc"]
        print(f"  {label:<14} LargeFOV {single:.3f} s  LargeFOV-MSc {msc:.3f} s  "
              f"ratio MSc/LargeFOV {msc / single:.3f}")
    single, msc = r["params"]["single"], r["params"]["msc"]
    print(f"  {'parameters':<14} LargeFOV {single:,}  LargeFOV-MSc {msc:,}  "
          f"ratio {msc / single:.3f}")


def bench_network():
    from kseg.benchmarks import network
    rows = [network.Row.parse(r, FLAGS.network_width, FLAGS.network_size)
            for r in FLAGS.network_rows]
    if FLAGS.network_torch and not network.torch_available():
        sys.stderr.write("PyTorch is not installed (pip install -e '.[bench]'): timing kseg "
                         "alone\n")
    result = network.benchmark_network(
        rows, FLAGS.network_threads, FLAGS.network_rounds, FLAGS.network_steps,
        with_torch=FLAGS.network_torch and network.torch_available(),
        inter_op=FLAGS.network_inter_op,
        progress=lambda line: sys.stderr.write(line + "\n"))
    print("\n".join(network.format_result(result)))


def write_section(path, what, text):
    """Replaces the `what` section of a markdown file (kept between markers)."""
    begin, end = f"<!-- {what}:begin -->", f"<!-- {what}:end -->"
    old = open(path).read() if os.path.exists(path) else "# Benchmarks\n"
    block = f"{begin}\n```\n$ python scripts/benchmark.py --what={what}\n{text}```\n{end}"
    if begin in old and end in old:
        new = old[:old.index(begin)] + block + old[old.index(end) + len(end):]
    else:
        new = old.rstrip("\n") + "\n\n" + block + "\n"
    files.write_text(path, new)


def main(argv):
    del argv
    for what in FLAGS.what:
        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer):
            {"pipeline": bench_pipeline, "decode": bench_decode, "estep": bench_estep,
             "estep_crf": bench_estep_crf, "crf": bench_crf, "crf_tf": bench_crf_tf,
             "serving": bench_serving, "msc": bench_msc, "network": bench_network}[what]()
        sys.stdout.write(buffer.getvalue())
        if FLAGS.out:
            write_section(FLAGS.out, what, buffer.getvalue())


def run():
    """The command: its flags, then `main`."""
    define_flags()
    cli_app.run(main)


if __name__ == "__main__":
    run()
