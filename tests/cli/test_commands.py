"""The commands (kseg/cli, scripts/*.py, the console entry points), end to end where cheap."""

import ast
import glob
import importlib
import json
import os
import re
import subprocess
import sys
import tomllib

import pytest

from kseg import experiment
from kseg.config import (DataConfig, EStepConfig, Experiment, InputConfig, LoopConfig,
                         ModelConfig, OptimConfig)
from kseg.crf.evaluate import CRFSetting

from tests import ROOT


@pytest.mark.parametrize("script", ["evaluate.py", "crf_search.py", "bbox_seg.py", "predict.py"])
def test_scripts_import_without_tensorflow(script):
    """The CRF pool's 'spawn' workers re-import the main script: it must stay light."""
    code = ("import runpy, sys; sys.argv = ['x']; "
            f"runpy.run_path({os.path.join(ROOT, 'scripts', script)!r}, run_name='__mp_main__'); "
            "print('tensorflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                         text=True, cwd=ROOT)
    assert out.stdout.strip() == "False"


def test_entry_points_are_the_commands_run_functions():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        scripts = tomllib.load(f)["project"]["scripts"]
    assert set(scripts) == {"kseg-train", "kseg-evaluate", "kseg-export", "kseg-predict",
                            "kseg-prepare", "kseg-pretrain"}
    for target in scripts.values():
        module, function = target.split(":")
        assert callable(getattr(importlib.import_module(module), function))


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ROOT, "scripts", "*.py"))),
                         ids=os.path.basename)
def test_scripts_are_thin_wrappers_of_the_cli(path):
    tree = ast.parse(open(path).read())
    imported = [node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
    assert imported == ["kseg.cli"] and len(open(path).read().splitlines()) < 15


def test_only_the_cli_reads_flags():
    """The library takes explicit arguments; absl flags live in kseg/cli alone."""
    for path in glob.glob(os.path.join(ROOT, "kseg", "**", "*.py"), recursive=True):
        if os.sep + "cli" + os.sep in path:
            continue
        assert not re.search(r"from absl import .*\bflags\b|absl\.flags", open(path).read()), path


@pytest.mark.slow
def test_search_then_evaluate_scripts_on_a_trained_run(tiny_records, tmp_path):
    """crf_search.py writes crf_best.cfg; evaluate.py --crf --flagfile uses it and
    records it in eval_val_crf.json next to eval_val.json."""
    model_dir = str(tmp_path / "run")
    experiment.run_training(Experiment(
        data=DataConfig(data_dir=tiny_records, batch_size=2, val_split=""),
        model=ModelConfig(num_classes=6, width=0.0625, dropout=0.1),
        input=InputConfig(num_classes=6, crop_size=33, seed=0),
        estep=EStepConfig(), optim=OptimConfig(optimizer="adam"),
        loop=LoopConfig(model_dir=model_dir, num_steps=2, steps_per_epoch=2,
                                  checkpoint_every=2, image_every=0, checkpoint_input=False)))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    script = lambda name: os.path.join(ROOT, "scripts", name)  # noqa: E731
    subprocess.run([sys.executable, script("crf_search.py"), f"--model_dir={model_dir}",
                    "--num_images=4", "--workers=1", "--rounds=1", "--crf_num_iter=2",
                    "--bi_w_values=3,8",
                    "--bi_xy_std_values=", "--bi_rgb_std_values=5,13", "--pos_w_values=",
                    "--pos_xy_std_values="], check=True, env=env, capture_output=True)
    best_file = os.path.join(model_dir, "crf_best.cfg")
    best = CRFSetting.from_dict({
        line.split("=")[0][2:]: float(line.split("=")[1])
        for line in open(best_file).read().splitlines() if line.startswith("--")})
    out = subprocess.run([sys.executable, script("evaluate.py"), f"--model_dir={model_dir}",
                          "--crf", f"--flagfile={best_file}", "--workers=2"],
                         check=True, env=env, capture_output=True, text=True)
    assert "IoU+CRF" in out.stdout and "mIoU" in out.stdout
    plain = json.load(open(os.path.join(model_dir, "eval_val.json")))
    crf = json.load(open(os.path.join(model_dir, "eval_val_crf.json")))
    assert plain["num_images"] == crf["num_images"] == 16
    assert crf["crf"] == best.as_dict() and crf["crf_flags"] == best.to_flags()
    assert 0 <= crf["miou"] <= 1 and "crf" not in plain
    assert crf["crf_impl"] == "pydensecrf"
    # The TensorFlow CRF scores as pydensecrf does.
    out = subprocess.run([sys.executable, script("evaluate.py"), f"--model_dir={model_dir}",
                          "--crf", f"--flagfile={best_file}", "--crf_impl=tf", "--workers=1"],
                         check=True, env=env, capture_output=True, text=True)
    assert "CRF (tf):" in out.stdout
    tf_crf = json.load(open(os.path.join(model_dir, "eval_val_crf.json")))
    assert tf_crf["crf_impl"] == "tf" and tf_crf["crf"] == crf["crf"]
    assert abs(tf_crf["miou"] - crf["miou"]) <= 0.003
