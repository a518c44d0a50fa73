"""The search for the dense-CRF parameters that maximise mIoU on held-out images.

The network runs once on a held-out subset (kseg.experiment.load_crf_samples)
and its probabilities are kept; :func:`search_crf` then scores many CRF
settings on them, all (setting, image) pairs through one process pool.
Settings are :class:`kseg.crf.evaluate.CRFSetting`, with position stds in
pixels of a ``reference_size`` image. Like the rest of kseg.crf, no
TensorFlow here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import os
from typing import Sequence

import numpy as np
from absl import logging

from kseg.crf.dense import CRFParams
from kseg.crf.evaluate import START_METHOD, CRFSample, CRFSetting, crf_labels
from kseg.evaluation import metrics
from kseg.utils import files
from kseg.utils.parallel import ordered_map, resolve_workers

SEARCH_METHODS = ("coordinate", "grid")

# Values tried for each parameter by default (position stds in pixels of a
# reference_size image): around DeepLab-v1's LargeFOV values (4 / 121 / 5,
# Gaussian 3 / 3) and the per-experiment ones the authors' configs used
# (e.g. 5 / 50 / 10, 35 / 61 / 10; docs/departures.md).
DEFAULT_GRID = {
    "bi_w": (2.0, 3.0, 4.0, 5.0, 6.0, 10.0, 20.0, 35.0),
    "bi_xy_std": (20.0, 30.0, 50.0, 70.0, 90.0, 121.0, 160.0),
    "bi_rgb_std": (3.0, 4.0, 5.0, 7.0, 10.0, 13.0),
    "pos_w": (1.0, 2.0, 3.0, 5.0),
    "pos_xy_std": (1.0, 2.0, 3.0, 5.0),
}


def score_settings(samples: Sequence[CRFSample], settings: Sequence[CRFSetting],
                   num_classes: int, workers: int | None = None,
                   start_method: str = START_METHOD, desc: str | None = None) -> list[dict]:
    """The scores (as :func:`kseg.evaluation.metrics.evaluate`) of the CRF with each setting
    on the same samples; all (setting, image) pairs go through one pool."""
    jobs = [(s.image, s.probs, setting) for setting in settings for s in samples]
    results = []
    with contextlib.closing(ordered_map(crf_labels, jobs, workers=resolve_workers(workers),
                                        chunksize=1, start_method=start_method,
                                        desc=desc)) as labels:
        for _ in settings:
            confusion = np.zeros((num_classes, num_classes), np.int64)
            for sample in samples:
                confusion += metrics.confusion_matrix(sample.label, next(labels), num_classes)
            results.append(metrics.split_result(confusion, len(samples)))
    return results


def _no_crf_score(samples: Sequence[CRFSample], num_classes: int) -> dict:
    return metrics.evaluate(((s.label, s.probs.argmax(-1)) for s in samples), num_classes)


def search_crf(samples: Sequence[CRFSample], num_classes: int,
               start: CRFSetting = CRFSetting(), grid: dict | None = None,
               method: str = "coordinate", rounds: int = 2, workers: int | None = None,
               start_method: str = START_METHOD) -> dict:
    """Searches the CRF parameters that maximise split-level mIoU on ``samples``.

    Args:
      samples: the held-out images with the network's probabilities
        (:func:`kseg.experiment.load_crf_samples`).
      num_classes: C.
      start: the first setting; parameters absent from ``grid`` (or with an
        empty list) keep its values, and so does ``reference_size``.
      grid: {CRFParams field: values}; default :data:`DEFAULT_GRID`.
      method: 'coordinate' — starting from ``start``, try every value of one
        parameter with the others fixed and keep the best, parameter after
        parameter, for up to ``rounds`` passes (stops early when a pass changes
        nothing); 'grid' — every combination of the values.
      rounds: passes of the coordinate search.
      workers, start_method: the process pool (:func:`kseg.utils.parallel.ordered_map`).

    Returns:
      dict: ``best`` (CRFSetting); ``best_result``, ``start_result`` and
      ``no_crf`` (score dicts of the best setting, of ``start`` and of the
      network's argmax);
      ``tried``: one row per distinct setting scored, in the order tried —
      ``{**setting.as_dict(), 'miou', 'pixel_accuracy'}``.
    """
    grid = dict(DEFAULT_GRID if grid is None else grid)
    unknown = set(grid) - set(CRFParams().as_dict())
    if unknown:
        raise ValueError(f"search_crf: unknown CRF parameters {sorted(unknown)} in the grid")
    if method not in SEARCH_METHODS:
        raise ValueError(f"search_crf: method must be one of {SEARCH_METHODS}, got {method!r}")
    if not samples:
        raise ValueError("search_crf: no samples to search on")
    grid = {name: tuple(values) for name, values in grid.items() if len(values)}
    scored: dict[CRFSetting, dict] = {}

    def score(settings, desc):
        new = [s for s in dict.fromkeys(settings) if s not in scored]
        if new:
            scored.update(zip(new, score_settings(samples, new, num_classes, workers,
                                                  start_method, desc)))

    def with_values(setting, **values):
        return dataclasses.replace(setting, params=dataclasses.replace(setting.params, **values))

    score([start], "crf start")
    best = start
    if method == "grid":
        names = list(grid)
        candidates = [with_values(start, **dict(zip(names, combo)))
                      for combo in itertools.product(*grid.values())]
        score(candidates, f"crf grid ({len(candidates)} settings)")
        # Ties keep the earliest setting (the start first), so the result is deterministic.
        best = max([start] + candidates, key=lambda s: scored[s]["miou"])
    else:
        for round_index in range(rounds):
            changed = False
            for name, values in grid.items():
                candidates = [with_values(best, **{name: v}) for v in values]
                score(candidates, f"crf {name} (round {round_index + 1})")
                # Ties keep the current setting, so the search is deterministic.
                winner = max(candidates, key=lambda s: scored[s]["miou"])
                if scored[winner]["miou"] > scored[best]["miou"]:
                    best, changed = winner, True
                logging.info(f"round {round_index + 1}, {name}: best "
                             f"{getattr(best.params, name):g} (mIoU {100 * scored[best]['miou']:.2f}%)")
            if not changed:
                break
    tried = [{**s.as_dict(), "miou": r["miou"], "pixel_accuracy": r["pixel_accuracy"]}
             for s, r in scored.items()]
    return {"best": best, "best_result": scored[best], "start_result": scored[start],
            "tried": tried, "no_crf": _no_crf_score(samples, num_classes)}


def format_search_table(search: dict, limit: int | None = None) -> str:
    """The tried settings as text, best mIoU first (the best row marked with *)."""
    names = list(CRFParams().as_dict())
    rows = sorted(search["tried"], key=lambda r: -r["miou"])[:limit]
    lines = [" ".join(f"{n:>10}" for n in names) + f" {'mIoU':>8} {'pix.acc':>8}"]
    best = search["best"].as_dict()
    for row in rows:
        mark = " *" if all(row[n] == best[n] for n in best) else ""
        lines.append(" ".join(f"{row[n]:>10g}" for n in names)
                     + f" {100 * row['miou']:7.2f}% {100 * row['pixel_accuracy']:7.2f}%{mark}")
    lines.append(f"without CRF: mIoU {100 * search['no_crf']['miou']:.2f}%, "
                 f"pixel accuracy {100 * search['no_crf']['pixel_accuracy']:.2f}%")
    return "\n".join(lines)


def write_flagfile(path: str, setting: CRFSetting, comments: Sequence[str] = ()) -> None:
    """Writes ``setting`` as an absl flagfile fragment (``#`` comment lines first)."""
    lines = [f"# {c}" for c in comments] + setting.to_flags()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    files.write_text(path, "\n".join(lines) + "\n")
