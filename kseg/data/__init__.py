"""Datasets: readers of on-disk layouts, the TFRecord format and the tf.data pipeline."""
