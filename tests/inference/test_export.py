"""SavedModel export (kseg/inference/export.py, scripts/export.py): served predictions match
the Keras model's, in a process that imports TensorFlow only."""

import dataclasses
import io
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from kseg import experiment, model
from kseg.benchmarks import serving
from kseg.config import DataConfig, EStepConfig, Experiment, InputConfig, LoopConfig, ModelConfig, OptimConfig
from kseg.crf import tf_dense as crf_tf
from kseg.crf.dense import CRFParams, dense_crf
from kseg.crf.evaluate import CRFSetting
from kseg.data import palette
from kseg.inference import export
from kseg.inference import segment as segment_lib
from kseg.training import checkpoints

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TIMEOUT = 240

# Runs in a fresh interpreter: TensorFlow and numpy only, no kseg.
LOAD_SCRIPT = r'''
import sys
import numpy as np
import tensorflow as tf
export_dir, folder, out = sys.argv[1:4]
read = lambda name: open(f"{folder}/{name}", "rb").read()
model = tf.saved_model.load(export_dir)
images = np.load(f"{folder}/images.npy")
served = model.signatures["serve_images"](images=tf.constant(images))
png = model.signatures["serving_default"](images=tf.constant([read("0.png"), read("1.png")]))
jpeg = model.signatures["serving_default"](images=tf.constant([read("0.jpg")]))
meta = model.signatures["metadata"]()
try:
    model.signatures["serving_default"](images=tf.constant([read("0.png"), read("small.png")]))
    mixed_error = ""
except tf.errors.InvalidArgumentError as e:
    mixed_error = e.message
assert not any(name.startswith("kseg") for name in sys.modules), "kseg was imported"
np.savez(out, labels=served["labels"].numpy(), probabilities=served["probabilities"].numpy(),
         png_labels=png["labels"].numpy(), png_probabilities=png["probabilities"].numpy(),
         jpeg_probabilities=jpeg["probabilities"].numpy(),
         class_names=[n.decode() for n in meta["class_names"].numpy()],
         palette=meta["palette"].numpy(),
         num_classes=meta["num_classes"].numpy(), mixed_error=mixed_error,
         asset=open(model.class_names_file.asset_path.numpy().decode()).read())
'''


# The CRF signatures, in a fresh interpreter too.
LOAD_CRF_SCRIPT = r'''
import sys
import numpy as np
import tensorflow as tf
export_dir, folder, out = sys.argv[1:4]
read = lambda name: open(f"{folder}/{name}", "rb").read()
model = tf.saved_model.load(export_dir)
images = np.load(f"{folder}/images.npy")
network = model.signatures["serve_images"](images=tf.constant(images))
crf = model.signatures["serve_images_crf"](images=tf.constant(images))
png = model.signatures["serving_crf"](images=tf.constant([read("0.png"), read("1.png")]))
meta = {k: v.numpy() for k, v in model.signatures["metadata"]().items()}
meta["crf_flags"] = [flag.decode() for flag in meta["crf_flags"]]
try:
    model.signatures["serving_crf"](images=tf.constant([read("0.png"), read("small.png")]))
    mixed_error = ""
except tf.errors.InvalidArgumentError as e:
    mixed_error = e.message
assert not any(name.startswith("kseg") for name in sys.modules), "kseg was imported"
np.savez(out, probabilities=network["probabilities"].numpy(), crf_labels=crf["labels"].numpy(),
         crf_marginals=crf["probabilities"].numpy(), png_crf_labels=png["labels"].numpy(),
         mixed_error=mixed_error, signatures=sorted(model.signatures),
         **{k: v for k, v in meta.items() if k.startswith("crf_")})
'''


def _encode(image, fmt):
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def exported(tiny_records, tmp_path_factory):
    """A tiny run trained 2 steps, exported with scripts/export.py: (run dir, export dir)."""
    tmp = tmp_path_factory.mktemp("export")
    model_dir, export_dir = str(tmp / "run"), str(tmp / "exports" / "tiny" / "1")
    experiment.run_training(Experiment(
        data=DataConfig(data_dir=tiny_records, batch_size=2, val_split=""),
        model=ModelConfig(num_classes=6, width=0.0625, dropout=0.0),
        input=InputConfig(num_classes=6, crop_size=33, seed=0, shuffle_buffer=8),
        estep=EStepConfig(), optim=OptimConfig(optimizer="adam"),
        loop=LoopConfig(model_dir=model_dir, num_steps=2, image_every=0,
                                  checkpoint_input=False)))
    run = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "export.py"),
                          f"--model_dir={model_dir}", f"--export_dir={export_dir}"],
                         capture_output=True, text=True, timeout=TIMEOUT,
                         env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert run.returncode == 0, run.stderr[-3000:]
    assert "serving_default" in run.stdout
    return model_dir, export_dir


@pytest.mark.slow
def test_saved_model_in_a_fresh_process_matches_the_keras_model(exported, tmp_path):
    model_dir, export_dir = exported
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2, 45, 61, 3), np.uint8)  # not 8k+1: padding and crop
    images[:, 10:30, 20:50] = [200, 30, 30]
    jpeg = _encode(images[0], "JPEG")
    folder = tmp_path / "inputs"
    folder.mkdir()
    np.save(folder / "images.npy", images)
    for name, data in [("0.png", _encode(images[0], "PNG")), ("1.png", _encode(images[1], "PNG")),
                       ("small.png", _encode(images[0, :20, :30], "PNG")), ("0.jpg", jpeg)]:
        (folder / name).write_bytes(data)
    script = tmp_path / "load.py"
    script.write_text(LOAD_SCRIPT)
    run = subprocess.run([sys.executable, str(script), export_dir, str(folder),
                          str(tmp_path / "served.npz")], capture_output=True, text=True,
                         timeout=TIMEOUT, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert run.returncode == 0, run.stderr[-3000:]
    served = np.load(tmp_path / "served.npz")

    network, config = experiment.load_network(model_dir)
    expected = segment_lib.segment(network, tf.constant(images)).numpy()  # (2, 45, 61, 6)
    assert served["probabilities"].shape == (2, 45, 61, 6)
    assert served["labels"].shape == (2, 45, 61) and served["labels"].dtype == np.int32
    np.testing.assert_allclose(served["probabilities"], expected, atol=1e-5)
    np.testing.assert_allclose(served["png_probabilities"], expected, atol=1e-5)
    top2 = np.sort(expected, -1)[..., -2:]
    clear = top2[..., 1] - top2[..., 0] > 1e-4  # argmax not decided by float noise
    assert clear.mean() > 0.9
    assert (served["labels"] == expected.argmax(-1))[clear].all()
    assert (served["png_labels"] == served["labels"]).all()
    # Decoded as training and evaluation decode it (accurate DCT).
    decoded_jpeg = tf.io.decode_jpeg(jpeg, dct_method="INTEGER_ACCURATE")[None]
    np.testing.assert_allclose(served["jpeg_probabilities"],
                               segment_lib.segment(network, decoded_jpeg).numpy(), atol=1e-5)

    assert served["class_names"].tolist() == config["class_names"]
    assert str(served["asset"]).split() == config["class_names"]
    assert int(served["num_classes"]) == 6
    np.testing.assert_array_equal(served["palette"], palette.voc_palette())
    assert "same size" in str(served["mixed_error"])


@pytest.mark.slow
def test_saved_model_cli_lists_the_signatures(exported):
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    run = subprocess.run([cli, "show", "--dir", exported[1], "--all"], capture_output=True,
                         text=True, timeout=TIMEOUT, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert run.returncode == 0, run.stderr[-3000:]
    for name in export.SIGNATURES:
        assert f"signature_def['{name}']" in run.stdout
    assert "inputs['images']" in run.stdout
    assert "outputs['probabilities']" in run.stdout and "outputs['labels']" in run.stdout


@pytest.mark.slow
def test_crf_signatures_in_a_fresh_process(tmp_path):
    """scripts/export.py --crf: DeepLab-CRF in one request, served with TensorFlow only; its
    labels are kseg.crf.tf_dense's on the served probabilities and pydensecrf's on >= 99%."""
    # An untrained run (random weights label pixels noisily, which the CRF smooths).
    model_dir = str(tmp_path / "run")
    config = ModelConfig(num_classes=6, width=0.0625, dropout=0.0)
    keras.utils.set_random_seed(0)
    network = model.build_deeplab(config)
    checkpoints.save_run_config(model_dir, {"model": dataclasses.asdict(config),
                                          "class_names": list("abcdef"), "data_dir": None})
    tf.train.CheckpointManager(tf.train.Checkpoint(network=network),
                               os.path.join(model_dir, "checkpoints"), 1).save()
    export_dir = str(tmp_path / "crf" / "1")
    run = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "export.py"),
                          f"--model_dir={model_dir}", f"--export_dir={export_dir}", "--crf",
                          "--crf_bi_rgb_std=13", "--crf_reference_size=100"],
                         capture_output=True, text=True, timeout=TIMEOUT,
                         env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert run.returncode == 0, run.stderr[-3000:]
    assert "serve_images_crf" in run.stdout and "serving_crf" in run.stdout
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (2, 48, 62, 3), np.uint8)  # H W divisible by 4 (tf_dense doc)
    images[:, 8:30, 15:50] = [40, 200, 60]
    folder = tmp_path / "inputs"
    folder.mkdir()
    np.save(folder / "images.npy", images)
    for name, data in [("0.png", _encode(images[0], "PNG")), ("1.png", _encode(images[1], "PNG")),
                       ("small.png", _encode(images[0, :20, :30], "PNG"))]:
        (folder / name).write_bytes(data)
    script = tmp_path / "load.py"
    script.write_text(LOAD_CRF_SCRIPT)
    run = subprocess.run([sys.executable, str(script), export_dir, str(folder),
                          str(tmp_path / "served.npz")], capture_output=True, text=True,
                         timeout=TIMEOUT, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert run.returncode == 0, run.stderr[-3000:]
    served = np.load(tmp_path / "served.npz")

    setting = CRFSetting(CRFParams(bi_rgb_std=13.0), reference_size=100)
    assert set(served["signatures"]) == set(export.SIGNATURES + export.CRF_SIGNATURES)
    for name, value in setting.params.as_dict("crf_").items():
        assert served[name] == pytest.approx(value)
    assert int(served["crf_reference_size"]) == 100
    assert served["crf_flags"].tolist() == setting.to_flags()
    assert "serving_crf" in str(served["mixed_error"])

    probs = served["probabilities"]  # (2, 48, 62, 6): the network's, as serve_images gives them
    marginals, labels = crf_tf.dense_crf(images, probs, setting.params, reference_size=100)
    np.testing.assert_allclose(served["crf_marginals"], marginals.numpy(), atol=1e-4)
    assert (served["crf_labels"] == labels.numpy()).mean() >= 0.999
    np.testing.assert_array_equal(served["png_crf_labels"], served["crf_labels"])
    for image, p, crf_labels in zip(images, probs, served["crf_labels"]):
        expected = dense_crf(image, p, setting.for_image(*image.shape[:2]))[1]
        assert (crf_labels == expected).mean() >= 0.99
    assert (served["crf_labels"] != probs.argmax(-1)).mean() > 0.01  # the CRF did something


def test_export_refuses_to_overwrite_and_checks_class_names(tmp_path):
    network = model.build_deeplab(ModelConfig(num_classes=3, width=0.0625))
    target = tmp_path / "model"
    target.mkdir()
    with pytest.raises(FileExistsError, match="--overwrite"):
        export.export_saved_model(network, str(target), ["a", "b", "c"])
    with pytest.raises(ValueError, match="2 class names for a network with 3 classes"):
        export.export_saved_model(network, str(tmp_path / "other"), ["a", "b"])
    assert not (tmp_path / "other").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no staging left behind


@pytest.mark.slow
def test_benchmark_inference_reports_images_per_second():
    result = serving.benchmark_inference(width=0.0625, num_classes=3, height=41, image_width=57,
                                        rounds=1, calls_per_round=1)
    rates = [result[key] for key in ("keras_images_per_s", "saved_model_images_per_s",
                                     "saved_model_encoded_images_per_s")]
    # One 57x41 image through a width-1/16 network takes between ~0.1 ms and 10 s.
    assert all(0.1 < rate < 1e4 for rate in rates), rates
    assert result["saved_model_over_keras"] == pytest.approx(rates[1] / rates[0])
    assert result["image_size"] == "57x41" and result["batch_size"] == 1


@pytest.mark.parametrize("precision,jit_compile", [("float32", True), ("mixed_bfloat16", False),
                                                   ("mixed_float16", False)])
def test_export_in_every_precision_and_with_xla(tmp_path, precision, jit_compile):
    """float32 weights exported in each precision (and compiled by XLA): the
    reloaded model's probabilities are float32 and those of the float32 network
    up to the half type's rounding."""
    keras.utils.set_random_seed(0)
    reference = model.build_deeplab(ModelConfig(num_classes=3, width=0.0625))
    network = model.build_deeplab(ModelConfig(num_classes=3, width=0.0625, precision=precision))
    network.set_weights(reference.get_weights())
    path = export.export_saved_model(network, str(tmp_path / "model"), ["a", "b", "c"],
                                     jit_compile=jit_compile)
    images = np.random.default_rng(0).integers(0, 256, (1, 19, 27, 3), np.uint8)
    served = tf.saved_model.load(path).signatures["serve_images"](images=tf.constant(images))
    assert served["probabilities"].dtype == tf.float32
    expected = segment_lib.segment(reference, tf.constant(images)).numpy()
    atol = 1e-5 if precision == "float32" else 0.02
    np.testing.assert_allclose(served["probabilities"].numpy(), expected, atol=atol)


@pytest.mark.slow
def test_multiscale_run_from_a_single_scale_run_evaluates_exports_and_predicts(
        tiny_records, tmp_path):
    """DeepLab-MSc as Chen et al. trained it (a trained single-scale run, its conv1-fc7
    frozen, the branches and fc8 trained), then every path after training unchanged:
    evaluation with and without the CRF, export (both signatures) and prediction."""
    from kseg.data import embedded
    from kseg.inference import predict

    def tiny(name, multiscale, **extra):
        return Experiment(
            data=DataConfig(data_dir=tiny_records, batch_size=2, val_split=""),
            model=ModelConfig(num_classes=6, width=0.0625, dropout=0.0, multiscale=multiscale),
            input=InputConfig(num_classes=6, crop_size=33, seed=0, shuffle_buffer=8),
            estep=EStepConfig(), optim=OptimConfig(optimizer="adam", freeze_backbone_steps=100),
            loop=LoopConfig(model_dir=str(tmp_path / name), num_steps=2, image_every=0,
                            checkpoint_input=False), **extra)

    # The single-scale run: as training leaves it, untrained (the test is the path).
    single = model.build_deeplab(tiny("single", False).model)
    checkpoints.save_run_config(str(tmp_path / "single"), {
        "model": dataclasses.asdict(tiny("single", False).model), "data_dir": tiny_records,
        "class_names": list(embedded.EMBEDDED_CLASSES)})
    tf.train.CheckpointManager(tf.train.Checkpoint(network=single),
                               str(tmp_path / "single" / "checkpoints"), 1).save()
    experiment.run_training(tiny("msc", True, init_from=str(tmp_path / "single")))
    network, config = experiment.load_network(str(tmp_path / "msc"))
    assert config["model"]["multiscale"] is True and model.is_multiscale(network)
    for name in model.BACKBONE_LAYERS:  # frozen for the whole run
        np.testing.assert_array_equal(network.get_layer(name).kernel, single.get_layer(name).kernel)
    assert np.any(network.get_layer("fc8").kernel[:, :, 64:])  # the branches' rows trained

    plain, crf = experiment.evaluate_run_with_crf(str(tmp_path / "msc"), workers=1)
    assert 0 <= plain["miou"] <= 1 and 0 <= crf["miou"] <= 1

    path = export.export_run(str(tmp_path / "msc"), str(tmp_path / "export"))
    loaded = tf.saved_model.load(path)
    image = np.random.default_rng(0).integers(0, 256, (45, 61, 3), np.uint8)
    expected = segment_lib.segment(network, tf.constant(image[None])).numpy()
    served = loaded.signatures["serve_images"](images=tf.constant(image[None]))
    encoded = loaded.signatures["serving_default"](images=tf.constant([_encode(image, "PNG")]))
    np.testing.assert_allclose(served["probabilities"], expected, atol=1e-5)
    np.testing.assert_allclose(encoded["probabilities"], expected, atol=1e-5)
    np.testing.assert_allclose(predict.SavedModelPredictor(path)(image), expected[0], atol=1e-5)
