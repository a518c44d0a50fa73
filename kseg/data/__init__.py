"""Datasets: readers of on-disk layouts (VOC, SBD, COCO), the generated embedded datasets,
the TFRecord format, the tf.data pipeline and the Bbox-Seg training split."""
