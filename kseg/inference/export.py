"""SavedModel export for serving (docs/evaluation.md).

The exported SavedModel holds the network's weights and three signatures,
all computed with `kseg.inference.segment.segment` (pad to 8k+1, network, bilinear
upsampling with aligned corners, softmax), so a served prediction is the one
evaluation makes:

| signature | input | outputs |
| --- | --- | --- |
| serving_default | images: (B,) string, encoded JPEG/PNG/BMP/GIF | labels (B, H, W) int32, probabilities (B, H, W, C) float32 |
| serve_images | images: (B, H, W, 3) uint8 RGB, any H, W | labels, probabilities as above |
| metadata | (none) | class_names (C,) string, palette (256, 3) uint8 (VOC colours), num_classes () int32 |

With a CRF setting (`scripts/export.py --crf`) two more signatures run the
dense CRF (`kseg.crf.tf_dense`, TensorFlow ops, on the probabilities above),
so that TensorFlow Serving serves DeepLab-CRF in one request:

| signature | input | outputs |
| --- | --- | --- |
| serving_crf | images: (B,) string, encoded, as serving_default | labels (B, H, W) int32 CRF labels, probabilities (B, H, W, C) float32 CRF marginals |
| serve_images_crf | images: (B, H, W, 3) uint8 RGB, any H, W | labels, probabilities as above |

and `metadata` also returns the CRF's parameters: `crf_bi_w`, `crf_bi_xy_std`,
`crf_bi_rgb_std`, `crf_pos_w`, `crf_pos_xy_std` (float32), `crf_num_iter`,
`crf_reference_size` (int32; the position stds are pixels of an image whose
long side is that, scaled in the graph to each image's long side; 0: pixels
of every image) and `crf_flags`, the same as `--crf_*` flag lines (what
`scripts/evaluate.py --crf --crf_impl=tf` takes to score the same CRF). The
CRF labels agree with pydensecrf's on >= 99% of pixels (kseg.crf.tf_dense).

The images of one `serving_default` (or `serving_crf`) request must decode
to the same size (outputs are dense tensors); send images of different
sizes in separate requests (a batch of one each). Greyscale and RGBA inputs
are converted to RGB. The class names are also an asset,
`assets/class_names.txt`, one per line in label order.

Without `--crf` the dense CRF is not in the graph: it is a separate
post-processing step on the returned `probabilities`
(`kseg.crf.dense.dense_crf`, or `scripts/predict.py --crf`).

Loading needs TensorFlow only:

    model = tf.saved_model.load(export_dir)
    out = model.signatures["serve_images"](images=tf.zeros([1, 375, 500, 3], tf.uint8))
    out["labels"]  # (1, 375, 500) int32

TensorFlow Serving: put the export in a numbered version directory
(`--export_dir=exports/deeplab/1`) and serve the parent, e.g.

    docker run -p 8501:8501 -v $PWD/exports/deeplab:/models/deeplab \
        -e MODEL_NAME=deeplab tensorflow/serving

and, with `--crf`, DeepLab-CRF in one request (README: the JSON body):

    curl -d @request.json \
        http://localhost:8501/v1/models/deeplab:predict   # "signature_name": "serve_images_crf"
"""

from __future__ import annotations

import os
import shutil
import tempfile

import keras
import tensorflow as tf

from kseg import experiment
from kseg.crf import tf_dense
from kseg.crf.evaluate import CRFSetting
from kseg.data.palette import voc_palette
from kseg.data.records import decode_rgb
from kseg.inference.segment import segment

SIGNATURES = ("serving_default", "serve_images", "metadata")
# Added by a CRF setting (scripts/export.py --crf).
CRF_SIGNATURES = ("serving_crf", "serve_images_crf")


def _decode_batch(encoded: tf.Tensor, signature: str = "serving_default") -> tf.Tensor:
    """(B,) encoded images of one size -> (B, H, W, 3) uint8 RGB."""
    count = tf.shape(encoded)[0]
    tf.debugging.assert_positive(count, message=f"{signature}: the batch has no image")
    images = tf.TensorArray(tf.uint8, size=count, infer_shape=False,
                            element_shape=tf.TensorShape([None, None, 3]))
    sizes = tf.TensorArray(tf.int32, size=count)
    for i in tf.range(count):
        image = decode_rgb(encoded[i])  # (H, W, 3), decoded as for training and evaluation
        images = images.write(i, image)
        sizes = sizes.write(i, tf.shape(image)[:2])
    sizes = sizes.stack()  # (B, 2)
    same = tf.debugging.assert_equal(
        sizes, tf.broadcast_to(sizes[:1], tf.shape(sizes)),
        message=f"{signature}: the images of one request must have the same size; "
                "send images of different sizes in separate requests")
    with tf.control_dependencies([same]):
        return images.stack()  # (B, H, W, 3)


class SegmentationModule(tf.Module):
    """What the SavedModel holds: the network's variables and the signatures.

    Args:
      network: a DeepLab network (`kseg.model.build_deeplab`).
      class_names: C names in label order.
      crf_setting: a `kseg.crf.evaluate.CRFSetting` for the CRF signatures,
        or None (no CRF in the graph).
      crf_num_blocks: row blocks per sparse product of the CRF
        (`kseg.crf.tf_dense.mean_field`); 1 suits a GPU and a server that
        runs several requests at once.
      jit_compile: compile the network part (`segment`: preprocessing,
        network, upsampling, softmax) with XLA, once per input size the
        server sees; decoding and the CRF stay outside XLA.

    The network computes in the precision it was built with
    (`ModelConfig.precision`); the outputs are float32 in every precision.
    """

    def __init__(self, network: keras.Model, class_names, crf_setting: CRFSetting | None = None,
                 crf_num_blocks: int = 1, jit_compile: bool = False):
        super().__init__(name="kseg_segmentation")
        num_classes = network.output_shape[-1]
        if len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names for a network with "
                             f"{num_classes} classes")
        self._network = network  # called by the functions; its variables are tracked below
        self.network_variables = [v.value if isinstance(v, keras.Variable) else v
                                  for v in network.variables]
        self._class_names = [str(n) for n in class_names]
        if crf_setting is not None and not isinstance(crf_setting, CRFSetting):
            raise TypeError(f"crf_setting must be a CRFSetting, got {crf_setting!r}")
        self._crf_setting = crf_setting
        self._crf_num_blocks = crf_num_blocks
        self._probabilities = (tf.function(lambda images: segment(network, images),
                                           jit_compile=True)
                               if jit_compile else lambda images: segment(network, images))
        if crf_setting is not None:
            # Instance attributes, not methods: saving traces every tf.function
            # of the module, and without a CRF there is none to trace.
            @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
            def serve_encoded_crf(images):
                """(B,) encoded images of one size -> CRF labels, CRF marginals."""
                return self._segment_crf(_decode_batch(images, "serving_crf"))

            @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8)])
            def serve_images_crf(images):
                """(B, H, W, 3) uint8 RGB -> CRF labels (B, H, W), marginals (B, H, W, C)."""
                return self._segment_crf(images)

            self.serve_encoded_crf = serve_encoded_crf
            self.serve_images_crf = serve_images_crf

    def signature_functions(self) -> dict:
        """{signature name: traced function} of what the SavedModel serves."""
        out = {"serving_default": self.serve_encoded, "serve_images": self.serve_images,
               "metadata": self.metadata}
        if self._crf_setting is not None:
            out.update(serving_crf=self.serve_encoded_crf,
                       serve_images_crf=self.serve_images_crf)
        return out

    def _segment(self, images):
        probabilities = self._probabilities(images)  # (B, H, W, C)
        return {"labels": tf.argmax(probabilities, -1, output_type=tf.int32),
                "probabilities": probabilities}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def serve_encoded(self, images):
        """(B,) encoded images of one size -> labels, probabilities."""
        return self._segment(_decode_batch(images))

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8)])
    def serve_images(self, images):
        """(B, H, W, 3) uint8 RGB -> labels (B, H, W), probabilities (B, H, W, C)."""
        return self._segment(images)

    def _segment_crf(self, images):
        setting = self._crf_setting
        probabilities = self._probabilities(images)  # (B, H, W, C)
        marginals, labels = tf_dense.dense_crf(
            images, probabilities, setting.params,
            reference_size=setting.reference_size or None, num_blocks=self._crf_num_blocks)
        return {"labels": labels, "probabilities": marginals}

    @tf.function(input_signature=[])
    def metadata(self):
        out = {"class_names": tf.constant(self._class_names),
               "palette": tf.constant(voc_palette()),
               "num_classes": tf.constant(len(self._class_names), tf.int32)}
        if self._crf_setting is not None:
            for name, value in self._crf_setting.params.as_dict("crf_").items():
                out[name] = tf.constant(value, tf.int32 if name == "crf_num_iter" else tf.float32)
            out["crf_reference_size"] = tf.constant(self._crf_setting.reference_size, tf.int32)
            out["crf_flags"] = tf.constant(self._crf_setting.to_flags())
        return out


def export_saved_model(network: keras.Model, export_dir: str, class_names,
                       overwrite: bool = False, crf_setting: CRFSetting | None = None,
                       jit_compile: bool = False) -> str:
    """Writes the SavedModel of the module docstring to `export_dir`; returns it.

    With `crf_setting` (a `kseg.crf.evaluate.CRFSetting`) it also holds the
    CRF signatures and the CRF's parameters in `metadata`. `jit_compile`:
    see `SegmentationModule`.

    The model is written beside `export_dir` and renamed into place, so a
    server watching the parent directory never sees half an export. An
    existing `export_dir` is an error unless `overwrite`.
    """
    export_dir = os.path.abspath(export_dir)
    if os.path.exists(export_dir) and not overwrite:
        raise FileExistsError(f"{export_dir} exists; choose a new --export_dir (TensorFlow "
                              "Serving: a new version number) or pass --overwrite")
    parent = os.path.dirname(export_dir)
    os.makedirs(parent, exist_ok=True)
    module = SegmentationModule(network, class_names, crf_setting, jit_compile=jit_compile)
    staging = tempfile.mkdtemp(prefix=".export-", dir=parent)
    try:
        names_file = os.path.join(staging, "class_names.txt")
        with open(names_file, "w") as f:
            f.write("\n".join(module._class_names) + "\n")
        module.class_names_file = tf.saved_model.Asset(names_file)
        model_dir = os.path.join(staging, "model")
        tf.saved_model.save(module, model_dir, signatures=module.signature_functions())
        if os.path.exists(export_dir):
            shutil.rmtree(export_dir)
        os.replace(model_dir, export_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return export_dir


def export_run(model_dir: str, export_dir: str, overwrite: bool = False,
               crf_setting: CRFSetting | None = None, precision: str | None = None,
               jit_compile: bool = False) -> str:
    """Exports a training run's newest checkpoint (see `export_saved_model`),
    in the run's precision or `precision`."""
    network, config = experiment.load_network(model_dir, precision)
    return export_saved_model(network, export_dir, config["class_names"], overwrite, crf_setting,
                              jit_compile)
