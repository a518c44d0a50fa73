"""Tests of kseg/data/palette.py."""

import numpy as np
import pytest
from PIL import Image

from kseg.data.errors import DataError
from kseg.data.palette import read_label_png, voc_palette, write_label_png


def test_voc_palette_known_entries():
    palette = voc_palette()
    assert palette.shape == (256, 3) and palette.dtype == np.uint8
    assert palette[0].tolist() == [0, 0, 0]
    assert palette[1].tolist() == [128, 0, 0]
    assert palette[2].tolist() == [0, 128, 0]
    assert palette[3].tolist() == [128, 128, 0]
    assert palette[4].tolist() == [0, 0, 128]
    assert palette[8].tolist() == [64, 0, 0]
    assert palette[15].tolist() == [192, 128, 128]  # person
    assert palette[255].tolist() == [224, 224, 192]  # void
    # All 256 colours are distinct, so colours map back to indices.
    assert len({tuple(c) for c in palette.tolist()}) == 256


def test_voc_palette_returns_a_copy():
    voc_palette()[1] = 0
    assert voc_palette()[1].tolist() == [128, 0, 0]


def test_label_png_round_trip(tmp_path):
    label = np.arange(5 * 7, dtype=np.uint8).reshape(5, 7)
    label[0, 0] = 255
    path = tmp_path / "mask.png"
    write_label_png(str(path), label)
    with Image.open(path) as image:
        assert image.mode == "P"
        assert image.getpalette()[3:6] == [128, 0, 0]
    np.testing.assert_array_equal(read_label_png(str(path)), label)


def test_greyscale_png_reads_as_indices(tmp_path):
    label = np.array([[0, 1], [2, 255]], np.uint8)
    path = tmp_path / "grey.png"
    Image.fromarray(label, mode="L").save(path)
    np.testing.assert_array_equal(read_label_png(str(path)), label)


def test_rgb_png_rejected_with_explanation(tmp_path):
    colours = voc_palette()[np.array([[0, 1], [15, 255]])]
    path = tmp_path / "coloured_mask.png"
    Image.fromarray(colours, mode="RGB").save(path)
    with pytest.raises(DataError) as error:
        read_label_png(str(path))
    message = str(error.value)
    assert "coloured_mask.png" in message
    assert "RGB" in message and "palette" in message


def test_missing_or_garbage_file_names_the_file(tmp_path):
    with pytest.raises(DataError, match="absent.png"):
        read_label_png(str(tmp_path / "absent.png"))
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"not a png at all")
    with pytest.raises(DataError, match="garbage.png"):
        read_label_png(str(garbage))
