"""kseg/cli/results_table.py: the table of runs, with the CRF column and the MSc rows."""

import json
import os

import pytest

from kseg.cli import results_table


def _row(flagfile, seed, miou, crf_miou=None):
    row = {"name": flagfile.split("/")[-1][:-4], "flagfile": flagfile, "seed": seed,
           "miou": miou, "pixel_accuracy": 0.9, "per_class_iou": [0.9, miou],
           "class_names": ["background", "disc"], "seconds": "10"}
    return row if crf_miou is None else {**row, "crf_miou": crf_miou}


def test_crf_column_with_seed_means_and_the_papers_msc_figures():
    rows = [_row("flags/strong.cfg", 0, 0.70, 0.74), _row("flags/strong.cfg", 1, 0.72, 0.78),
            _row("flags/strong_msc.cfg", 0, 0.71, 0.75)]
    lines = results_table.table(rows).splitlines()
    assert lines[0] == ("| flagfile | seed | val mIoU | + CRF | paper | pixel acc. | "
                        "background | disc | train s |")
    assert lines[1] == "|---" * 9 + "|"
    assert lines[2].startswith("| `flags/strong.cfg` | 0 | **70.0** | 74.0 | 67.6 | 90.0 |")
    assert lines[4].startswith("| `flags/strong.cfg` | mean | **71.0** | 76.0 | 67.6 |")
    assert lines[5].startswith(
        "| `flags/strong_msc.cfg` | 0 | **71.0** | 75.0 | 70.3 -> 71.6 (test) |")
    # Without CRF evaluations the table has no such column.
    assert "+ CRF" not in results_table.table([_row("flags/strong.cfg", 0, 0.7)])


def test_finished_runs_are_read_not_redone(tmp_path, monkeypatch):
    run = tmp_path / "strong"
    run.mkdir()
    (run / "eval_val.json").write_text(json.dumps({"miou": 0.7}))
    (run / "eval_val_crf.json").write_text(json.dumps({"miou": 0.75}))
    monkeypatch.setattr(results_table.subprocess, "run", lambda *a, **k: 1 / 0)
    result = results_table.train_and_evaluate("flags/strong.cfg", str(run), crf=True)
    assert (result["miou"], result["crf_miou"], result["seconds"]) == (0.7, 0.75, "?")
    assert "crf_miou" not in results_table.train_and_evaluate("flags/strong.cfg", str(run))


def test_strong_sweep_orders_the_numbers_and_shares_the_flagfiles_runs(tmp_path, monkeypatch):
    from kseg.cli import strong_sweep
    calls = []

    def fake(flagfile, model_dir, extra=(), seed=0, crf=False):
        calls.append(os.path.relpath(model_dir, tmp_path))
        n = int(extra[0].split("=")[1])
        return {"miou": n / 1000 + (0.1 if "semi" in flagfile else 0.0)}
    monkeypatch.setattr(strong_sweep.results_table, "train_and_evaluate", fake)
    out = strong_sweep.curves(["flags/semi_em_fixed.cfg", "flags/strong_subset.cfg"],
                              [200, 20, 100, 20], str(tmp_path), 100)
    assert calls == ["semi_em_fixed_n20", "semi_em_fixed", "semi_em_fixed_n200",
                     "strong_subset_n20", "strong_subset", "strong_subset_n200"]
    assert out["strong_subset"] == [(20, 2.0), (100, 10.0), (200, 20.0)]
    assert [n for n, _ in out["semi_em_fixed"]] == [20, 100, 200]


def test_strong_sweep_repeats_only_the_close_points_with_seed_1(tmp_path, monkeypatch):
    from kseg.cli import strong_sweep
    calls = []

    def fake(flagfile, model_dir, extra=(), seed=0, crf=False):
        calls.append((os.path.relpath(model_dir, tmp_path), seed))
        n = int(extra[0].split("=")[1])
        semi = {20: 0.30, 100: 0.711, 200: 0.752}
        strong = {20: 0.472, 100: 0.66, 200: 0.756}
        value = (semi if "semi" in flagfile else strong)[n]
        return {"miou": value + (0.01 if seed == 1 else 0.0)}
    monkeypatch.setattr(strong_sweep.results_table, "train_and_evaluate", fake)
    flagfiles = ["flags/semi_em_fixed.cfg", "flags/strong_subset.cfg"]
    first = strong_sweep.curves(flagfiles, [20, 100, 200], str(tmp_path), 100)
    close = strong_sweep.close_points(first, "strong_subset", 2.0)
    assert close == {("semi_em_fixed", 200), ("strong_subset", 200)}
    calls.clear()
    repeats = strong_sweep.curves(flagfiles, [20, 100, 200], str(tmp_path), 100, seed=1,
                                  only=close)
    assert calls == [("semi_em_fixed_n200_seed1", 1), ("strong_subset_n200_seed1", 1)]
    seeded = strong_sweep.with_seeds(first, repeats)
    assert seeded["strong_subset"][0][1] == pytest.approx([47.2])
    (n, values), = seeded["semi_em_fixed"][2:]
    assert n == 200 and values == pytest.approx([75.2, 76.2])
    assert strong_sweep._cell(values) == "75.2 / 76.2 (75.7)"
