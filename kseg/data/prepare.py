"""Datasets on disk -> prepared TFRecord splits (the readers feed `records.write_split`)."""

from __future__ import annotations

import os
import sys
from typing import Sequence

from kseg.data import embedded, records, voc

EMBEDDED = "embedded"


def voc_record(root: str, image_id: str, class_names: Sequence[str],
               require_mask: bool = True, dataset: int = 0) -> records.Record:
    """One example of a VOC-layout directory as a Record (validated by `voc.load_example`).

    The image bytes are stored as they are on disk (no re-encoding)."""
    example = voc.load_example(root, image_id, len(class_names), class_names,
                               require_mask=require_mask)
    with open(os.path.join(root, "JPEGImages", image_id + ".jpg"), "rb") as f:
        encoded = f.read()
    height, width = example.image.shape[:2]
    mask = example.class_mask
    return records.Record(
        image_id=image_id, image_encoded=encoded, height=height, width=width,
        class_mask=mask,
        image_labels=records.labels_present(mask) if mask is not None else (),
        boxes=example.boxes, box_classes=example.box_classes, dataset=dataset)


def prepare_voc_layout(root: str, out_dir: str, splits: Sequence[str], class_names: Sequence[str],
                       num_shards: int = 4, strict: bool = False) -> dict:
    """Writes every split of a VOC-layout directory; returns {split: WriteSummary}."""
    summaries = {}
    for split in splits:
        ids = voc.read_split_ids(root, split)
        summaries[split] = records.write_split(
            ids, lambda i: voc_record(root, i, class_names), out_dir, split, class_names,
            num_shards=num_shards, strict=strict)
        print(f"{split}: {summaries[split]}", file=sys.stderr)
    return summaries


def ensure_embedded_records(cache_dir: str | None = None, num_shards: int = 4) -> str:
    """The records directory of the embedded dataset, generating and converting
    it on first use (each step is atomic and resumable). Returns the path."""
    root = embedded.ensure_embedded(cache_dir)
    out_dir = os.path.join(root, "records")
    splits = [s for s in ("train", "val")
              if not os.path.isfile(os.path.join(out_dir, f"{s}.json"))]
    if splits:
        prepare_voc_layout(root, out_dir, splits, embedded.EMBEDDED_CLASSES,
                           num_shards=num_shards, strict=True)
    return out_dir
