"""Tests for kseg/crf/search.py: the CRF parameter search."""

import dataclasses

import pytest


from kseg.crf import search as crf_search
from kseg.crf.evaluate import CRFSetting, evaluate_with_crf
from tests.crf.conftest import FAST, crf_flag_values


def test_coordinate_search_improves_and_writes_a_parsable_fragment(samples, tmp_path, absl_logs):
    start = CRFSetting(dataclasses.replace(FAST, bi_w=1.0), reference_size=500)
    grid = {"bi_w": [1.0, 6.0, 20.0], "bi_rgb_std": [5.0, 20.0], "pos_w": []}
    search = crf_search.search_crf(samples[:6], 6, start, grid, "coordinate", rounds=2,
                                   workers=2)
    lines = [r.getMessage() for r in absl_logs.records if r.name == "absl"]
    best = search["best"]
    # The scores the search reports are those of an independent evaluation of
    # its start and best settings, and bi_w = 1 was not the best bilateral weight.
    for setting, key in ((start, "start_result"), (best, "best_result")):
        _, crf = evaluate_with_crf(samples[:6], 6, setting, workers=1)
        assert search[key]["miou"] == pytest.approx(crf["miou"], abs=1e-12), key
    assert best.params.bi_w != 1.0
    assert search["best_result"]["miou"] > search["start_result"]["miou"]
    assert best.params.num_iter == 3 and best.reference_size == 500  # not searched
    assert best.params.pos_w == start.params.pos_w
    # Every tried setting once; the best is the top row of the table.
    keys = [tuple(sorted(r.items())) for r in search["tried"]]
    assert len(keys) == len(set(keys)) and 4 <= len(keys) <= 1 + 3 + 2 + 3 + 2
    assert max(r["miou"] for r in search["tried"]) == search["best_result"]["miou"]
    assert lines and lines[0].startswith("round 1, bi_w")
    table = crf_search.format_search_table(search)
    assert table.splitlines()[1].endswith("*") and "without CRF" in table

    path = str(tmp_path / "crf_best.cfg")
    crf_search.write_flagfile(path, best, ["found on 6 images"])
    values = crf_flag_values()
    values(["prog", f"--flagfile={path}"])
    assert CRFSetting.from_dict(values.flag_values_dict()) == best


def test_grid_search_tries_every_combination(samples):
    grid = {"bi_w": [2.0, 6.0], "bi_xy_std": [30.0, 60.0]}
    search = crf_search.search_crf(samples[:3], 6, CRFSetting(FAST), grid, "grid", workers=1)
    combos = {(r["bi_w"], r["bi_xy_std"]) for r in search["tried"]}
    assert {(2.0, 30.0), (2.0, 60.0), (6.0, 30.0), (6.0, 60.0)} <= combos
    with pytest.raises(ValueError, match="unknown CRF parameters"):
        crf_search.search_crf(samples[:1], 6, CRFSetting(FAST), {"bogus": [1.0]})
