"""Tests for kseg/utils/files.py: the one atomic write."""

import json
import os

import pytest

from kseg.utils import files


def test_write_json_and_text(tmp_path):
    files.write_json(str(tmp_path / "a.json"), {"miou": 0.5})
    assert json.load(open(tmp_path / "a.json")) == {"miou": 0.5}
    files.write_text(str(tmp_path / "a.txt"), "x\n")
    assert open(tmp_path / "a.txt").read() == "x\n"
    assert sorted(os.listdir(tmp_path)) == ["a.json", "a.txt"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = str(tmp_path / "result.json")
    files.write_json(path, {"old": 1})
    with pytest.raises(TypeError):
        files.write_json(path, {"new": object()})  # not JSON: fails half-way
    assert json.load(open(path)) == {"old": 1}
    assert os.listdir(tmp_path) == ["result.json"]
