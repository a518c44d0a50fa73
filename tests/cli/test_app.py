"""kseg/cli/app.py and kseg/cli/tf_log.py: one-line errors and a quiet log, by running
the commands as a user does (subprocesses, stderr counted line by line)."""

import os
import re
import subprocess
import sys

import pytest

from kseg.cli import app, tf_log

from tests import ROOT

# What TensorFlow's own logging looks like on stderr (C++ lines and notices).
TF_LOG_PATTERNS = (re.compile(r"^[IWE]\d{4} "), re.compile(r"^WARNING: All log messages"),
                   re.compile(r"cuInit|Sharding callback duration|oneDNN|is deprecated"))
# A tiny training run (never the embedded ImageNet pretraining: --init=random).
TINY = ["--init=random", "--num_classes=6", "--width=0.0625", "--crop_size=33",
        "--batch_size=2", "--num_steps=2", "--steps_per_epoch=1000", "--log_every=1",
        "--checkpoint_every=1", "--image_every=0", "--val_split="]


def _command(script, *args, env=None, cwd=None):
    """Runs scripts/<script> as a user would, without TF_CPP_MIN_LOG_LEVEL or
    KSEG_VERBOSE in the environment; returns the CompletedProcess (text)."""
    environ = {k: v for k, v in os.environ.items()
               if k not in ("TF_CPP_MIN_LOG_LEVEL", tf_log.VERBOSE_ENV)}
    environ.update(env or {})
    return subprocess.run([sys.executable, os.path.join(ROOT, "scripts", script), *args],
                          capture_output=True, text=True, env=environ, cwd=cwd or ROOT)


def _tf_lines(text):
    return [line for line in text.splitlines() if any(p.search(line) for p in TF_LOG_PATTERNS)]


def _assert_one_error_line(out, *fragments):
    lines = out.stderr.splitlines()
    assert out.returncode == 2, out.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr
    for fragment in fragments:
        assert fragment in lines[0]


# --- Unit tests ----------------------------------------------------------------------


def test_tensorflow_log_lines_are_recognised():
    assert tf_log.is_tensorflow_noise(
        "I0000 00:00:1796039224.016539    1979 port.cc:153] oneDNN custom operations are on.\n")
    assert tf_log.is_tensorflow_noise(
        "E0612 10:01:02.123456  4242 cuda_platform.cc:52] failed call to cuInit: INTERNAL\n")
    assert tf_log.is_tensorflow_noise(
        "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR")
    assert not tf_log.is_tensorflow_noise(
        "F0612 10:01:02.123456  4242 x.cc:1] Check failed: a fatal error stays")
    assert not tf_log.is_tensorflow_noise("step 20/4000 loss=1.2")
    assert not tf_log.is_tensorflow_noise("Illegal instruction")


def test_verbose_from_the_command_line_or_the_environment():
    assert not tf_log.verbose_requested(["x", "--model_dir=a"], {})
    assert tf_log.verbose_requested(["x", "--verbose"], {})
    assert not tf_log.verbose_requested(["x", "--verbose", "--noverbose"], {"KSEG_VERBOSE": "1"})
    assert tf_log.verbose_requested(["x"], {"KSEG_VERBOSE": "1"})
    assert not tf_log.verbose_requested(["x"], {"KSEG_VERBOSE": "0"})


def test_stderr_filtered_keeps_other_lines(capfd):
    with tf_log.stderr_filtered():
        os.write(2, b"W0000 00:00:12.5 1 a.cc:1] noise\nkept line\n")
    assert capfd.readouterr().err == "kept line\n"


def test_error_line_is_one_line():
    assert app.error_line(ValueError("bad\n  setting")) == "error: bad setting"


# --- The commands ----------------------------------------------------------------------


@pytest.mark.slow
def test_train_and_evaluate_log_no_tensorflow_lines(tiny_records, tmp_path):
    """A training run's stderr: its progress lines and nothing of TensorFlow's; the
    E-step statistics are left out of a strong run's lines."""
    model_dir = str(tmp_path / "run")
    out = _command("train.py", "--flagfile=flags/strong.cfg", *TINY,
                   f"--data_dir={tiny_records}", f"--model_dir={model_dir}")
    assert out.returncode == 0, out.stderr
    assert _tf_lines(out.stderr) == []
    lines = out.stderr.splitlines()
    assert len(lines) == 2 and all(re.match(r"step \d/2 loss=.* ETA \d+:\d\d:\d\d\)$", line)
                                   for line in lines), out.stderr
    assert "fg_fraction" not in out.stderr
    out = _command("evaluate.py", f"--model_dir={model_dir}")
    assert out.returncode == 0, out.stderr
    assert _tf_lines(out.stderr) == []
    assert "evaluating val: 16/16" in out.stderr


@pytest.mark.slow
@pytest.mark.parametrize("case", ["missing_model_dir", "empty_model_dir", "missing_data_dir",
                                  "num_classes", "batch_size_0", "multi_worker", "bbox_seg",
                                  "imagenet_offline"])
def test_bad_settings_end_in_one_error_line(case, tiny_records, tmp_path):
    model_dir = tmp_path / "run"
    (tmp_path / "empty").mkdir()
    train = ["train.py", "--flagfile=flags/strong.cfg", *TINY, f"--model_dir={model_dir}",
             f"--data_dir={tiny_records}"]
    offline = {"https_proxy": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9"}
    run, fragments, env = {
        "missing_model_dir": (["evaluate.py", f"--model_dir={model_dir}"],
                              ["config.json not found"], {}),
        "empty_model_dir": (["evaluate.py", f"--model_dir={tmp_path / 'empty'}"],
                            ["kseg training directory"], {}),
        "missing_data_dir": (train + [f"--data_dir={tmp_path / 'nowhere'}"],
                             ["no such directory of prepared records"], {}),
        "num_classes": (train + ["--num_classes=7"], ["--num_classes"], {}),
        "batch_size_0": (train + ["--batch_size=0"], ["--batch_size=0"], {}),
        "multi_worker": (train + ["--strategy=multi_worker"], ["TF_CONFIG"], {}),
        "bbox_seg": (train + ["--supervision=bbox_seg", "--weak_split=bbox_seg"], ["run scripts/bbox_seg.py first"], {}),
        "imagenet_offline": (train + ["--init=imagenet", "--width=1"],
                             ["--init=PATH", "VGG-16"], offline),
    }[case]
    out = _command(*run, env=env)
    _assert_one_error_line(out, *fragments)
    assert "prepare_data" not in out.stderr or case == "missing_data_dir"
    assert not model_dir.exists()  # nothing written into the run directory


@pytest.mark.slow
def test_verbose_shows_the_traceback(tmp_path):
    out = _command("evaluate.py", f"--model_dir={tmp_path}", "--verbose")
    assert out.returncode != 0
    assert "Traceback" in out.stderr and "FileNotFoundError" in out.stderr
