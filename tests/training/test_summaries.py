"""Tests for kseg/training/summaries.py: the TensorBoard image panel and scalars."""

import glob

import keras
import numpy as np
import tensorflow as tf

from kseg.constants import KIND_ID
from kseg.data.palette import voc_palette
from kseg.training import summaries
from kseg.training.trainer import Trainer


def _events(log_dir):
    """{tag: [(step, tensor proto)]} of every summary in log_dir."""
    found = {}
    for path in glob.glob(f"{log_dir}/events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                found.setdefault(value.tag, []).append((event.step, value.tensor))
    return found


def test_colorize_uses_the_voc_palette():
    np.testing.assert_array_equal(summaries.colorize(tf.constant([[0, 1, 2]])),
                                  [voc_palette()[[0, 1, 2]]])


def test_panel_is_input_target_prediction_side_by_side(tmp_path):
    # A "network" with stride 8 that always predicts label 2.
    inputs = keras.Input((None, None, 3))
    scores = keras.layers.Lambda(
        lambda x: tf.zeros_like(x[:, ::8, ::8, :1]) + tf.constant([0.0, 0.0, 9.0]))(inputs)
    trainer = Trainer(keras.Model(inputs, scores))
    label = np.array([[[1, 0, 0], [0, 0, 255], [0, 0, 0]]] * 5, np.int32)  # (5, 3, 3)
    batch = {"image": tf.zeros([5, 17, 17, 3]), "kind": tf.fill([5], KIND_ID["strong"]),
             "label": tf.constant(label), "valid": tf.constant(label != 255),
             "image_labels": tf.ones([5, 3]), "box_mask": tf.zeros([5, 3, 3, 3], tf.bool)}
    writer = tf.summary.create_file_writer(str(tmp_path))
    with writer.as_default():
        summaries.write_panels(trainer, batch, step=7, max_images=2)
        summaries.write_scalars(writer, 7, {"loss": 0.25})
    writer.close()
    events = _events(str(tmp_path))
    [(step, tensor)] = events["input | target | prediction"]
    assert step == 7
    encoded = tf.make_ndarray(tensor)  # width, height, then one PNG per image
    assert encoded[:2].tolist() == [b"51", b"17"] and len(encoded) == 2 + 2
    panel = tf.io.decode_png(encoded[2]).numpy()  # (17, 51, 3): 3 panes of 17 px
    palette = voc_palette()
    # Pane 2, the target: score pixel (0, 0) is label 1, enlarged 17/3 times (nearest).
    np.testing.assert_array_equal(panel[0, 17], palette[1])
    np.testing.assert_array_equal(panel[0, 17 + 8], palette[0])
    np.testing.assert_array_equal(panel[8, 34 - 1], palette[255])  # ignored pixel
    # Pane 3, the prediction: label 2 everywhere.
    np.testing.assert_array_equal(panel[:, 34:], np.broadcast_to(palette[2], (17, 17, 3)))
    [(step, tensor)] = events["loss"]
    assert step == 7 and float(tf.make_ndarray(tensor)) == 0.25
