"""End-to-end: train a tiny DeepLab on a tiny embedded dataset, evaluate it, resume it."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from kseg import experiment, model, targets, train_lib
from kseg.data import pipeline

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _experiment(records_dir, model_dir, num_steps, supervision="strong", **data):
    return experiment.Experiment(
        data=experiment.DataConfig(data_dir=records_dir, supervision=supervision,
                                   batch_size=8, **data),
        model=model.ModelConfig(num_classes=6, width=0.125, dropout=0.1),
        input=pipeline.InputConfig(num_classes=6, crop_size=65, seed=0),
        estep=targets.EStepConfig(),
        optim=train_lib.OptimConfig(optimizer="adam", learning_rate=2e-3,
                                    lr_decay_steps=10_000),
        loop=train_lib.LoopConfig(model_dir=model_dir, num_steps=num_steps,
                                  steps_per_epoch=num_steps, log_every=50,
                                  checkpoint_every=100),
        seed=0)


@pytest.mark.slow
def test_strong_training_beats_all_background(tiny_records, tmp_path):
    model_dir = str(tmp_path / "run")
    experiment.run_training(_experiment(tiny_records, model_dir, 100))
    assert os.path.exists(os.path.join(model_dir, "checkpoints", "ckpt-100.index"))
    # Running again with more steps resumes at 100 (not from zero).
    experiment.run_training(_experiment(tiny_records, model_dir, 400))
    result = experiment.evaluate_run(model_dir, "val")
    saved = json.load(open(os.path.join(model_dir, "eval_val.json")))
    assert saved["miou"] == pytest.approx(result["miou"])
    # All-background on this data scores ~0.13 mIoU (background IoU ~0.75 / 6).
    background_only = result["confusion"]
    gt_bg = np.asarray(background_only)[0].sum() / np.asarray(background_only).sum()
    assert gt_bg / 6 < 0.15
    assert result["miou"] > 0.35, result
    assert result["pixel_accuracy"] > 0.85


@pytest.mark.slow
def test_train_and_evaluate_scripts(tiny_records, tmp_path):
    """The command-line contract: train.py writes a run dir, evaluate.py the JSON and masks."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    model_dir = str(tmp_path / "cli")
    common = [f"--data_dir={tiny_records}", "--num_classes=6", "--width=0.0625",
              "--crop_size=33", "--batch_size=2"]
    subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "train.py"),
                    f"--flagfile={os.path.join(ROOT, 'flags', 'bbox_em.cfg')}", *common,
                    "--num_steps=3", "--steps_per_epoch=3", f"--model_dir={model_dir}"],
                   check=True, env=env, cwd=str(tmp_path))
    masks = str(tmp_path / "masks")
    out = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "evaluate.py"),
                          f"--model_dir={model_dir}", f"--masks_dir={masks}"],
                         check=True, env=env, capture_output=True, text=True)
    assert "mIoU" in out.stdout
    result = json.load(open(os.path.join(model_dir, "eval_val.json")))
    assert 0 <= result["miou"] <= 1 and 0 <= result["pixel_accuracy"] <= 1
    assert len(os.listdir(masks)) == 16
    config = json.load(open(os.path.join(model_dir, "config.json")))
    assert config["data"]["supervision"] == "bbox_em_fixed"
