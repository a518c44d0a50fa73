"""Tests for kseg/cli/flags.py: flags derived from the config dataclasses, and the flagfiles."""

import dataclasses
import glob
import os
import subprocess
import sys

import pytest
from absl import flags

from kseg import config, constants
from kseg.cli import flags as cli_flags
from kseg.crf.evaluate import CRFSetting
from tests import ROOT

METHOD_FLAGFILES = sorted(p for p in glob.glob(os.path.join(ROOT, "flags", "*.cfg"))
                          if not os.path.basename(p).startswith(("crf_", "embedded_base")))


def _values():
    values = flags.FlagValues()
    cli_flags.define_experiment_flags(values)
    return values


def _parse(argv):
    values = _values()
    values(argv)
    return values


def test_every_setting_is_a_flag_with_the_dataclass_default():
    values = _parse(["prog"])
    for cls in cli_flags.EXPERIMENT_CONFIGS:
        for field in cli_flags.setting_fields(cls):
            default = None if field.default is dataclasses.MISSING else field.default
            assert values[field.name].default == default, field.name
    # Settings that had no flag before the flags were derived have one now.
    assert values["bias_lr_mult"].value == config.OptimConfig().bias_lr_mult
    assert values["shuffle_buffer"].value == 1000


def test_flag_names_are_unique_across_configs():
    names = [f.name for cls in cli_flags.EXPERIMENT_CONFIGS for f in cli_flags.setting_fields(cls)]
    assert len(names) == len(set(names))


def test_defaults_give_the_dataclass_defaults():
    exp = cli_flags.experiment_from_flags("runs/x", _parse(["prog"]))
    assert exp.estep == config.EStepConfig() and exp.optim == config.OptimConfig()
    assert exp.model == config.ModelConfig() and exp.data == config.DataConfig()
    assert exp.loop == config.LoopConfig(model_dir="runs/x")
    assert exp.input == config.InputConfig(num_classes=21, seed=0)


def test_joint_flags():
    exp = cli_flags.experiment_from_flags("d", _parse(["prog"]))
    assert exp.data.joint is None
    exp = cli_flags.experiment_from_flags("d", _parse(
        ["prog", "--joint_dataset=embedded_coco", "--joint_supervision=em_fixed",
         "--joint_num_strong=100"]))
    assert exp.data.joint == dataclasses.replace(
        config.JOINT_DEFAULTS, dataset="embedded_coco", supervision="em_fixed", num_strong=100)
    exp = cli_flags.experiment_from_flags("d", _parse(["prog", "--joint_data_dir=/x"]))
    assert exp.data.joint.dataset == "embedded" and exp.data.joint.data_dir == "/x"


@pytest.mark.parametrize("path", METHOD_FLAGFILES, ids=os.path.basename)
def test_method_flagfiles_parse_into_an_experiment(path, monkeypatch, tmp_path):
    """From the repository root absl itself reads the nested base flagfile;
    from anywhere else expand_flagfiles finds it; both give the same run."""
    monkeypatch.chdir(ROOT)
    relative = os.path.relpath(path, ROOT)
    absl_values = _parse(["prog", f"--flagfile={relative}"])
    exp = cli_flags.experiment_from_flags("runs/x", absl_values)
    assert exp.model.width == 0.125 and exp.input.crop_size == 129  # from the base
    # The weak image-label rows use the paper's SGD from the stand-in start
    # (docs/pretraining.md); the others the base's Adam.
    sgd = os.path.basename(path) in ("em_adapt.cfg", "em_fixed.cfg")
    assert exp.optim.optimizer == ("sgd" if sgd else "adam")
    assert exp.data.supervision in constants.KINDS
    monkeypatch.chdir(tmp_path)
    expanded = _parse(cli_flags.expand_flagfiles(["prog", f"--flagfile={path}"]))
    assert expanded.flag_values_dict() == absl_values.flag_values_dict()


def test_a_method_flagfile_overrides_the_base(monkeypatch):
    monkeypatch.chdir(ROOT)
    values = _parse(["prog", "--flagfile=flags/cross_pretrain.cfg"])
    assert (values.num_steps, values.lr_decay_steps, values.log_every) == (2000, 1500, 100)
    # ... and the command line overrides both.
    values = _parse(["prog", "--flagfile=flags/strong.cfg", "--num_steps=7"])
    assert values.num_steps == 7


def test_expand_flagfiles_leaves_other_arguments_and_missing_files_to_absl(tmp_path):
    argv = ["prog", "--seed=3", "--flagfile=/no/such.cfg", "--", "--flagfile=x"]
    assert cli_flags.expand_flagfiles(argv) == argv
    nested = tmp_path / "a.cfg"
    nested.write_text("# comment\n\n--seed=4\n--flagfile=missing.cfg\n")
    assert cli_flags.expand_flagfiles(["prog", f"--flagfile={nested}"]) == [
        "prog", "--seed=4", "--flagfile=missing.cfg"]


def test_default_model_dir_is_the_last_flagfile_on_the_command_line():
    argv = ["prog", "--flagfile=flags/bbox_em.cfg", "--flagfile=runs/x/crf.cfg"]
    assert cli_flags.default_model_dir(argv) == os.path.join("runs", "crf")
    assert cli_flags.default_model_dir(["prog", "--flagfile=flags/bbox_em.cfg"]) == \
        os.path.join("runs", "bbox_em")
    assert cli_flags.default_model_dir(["prog"]) == os.path.join("runs", "default")
    assert cli_flags.default_model_dir(["prog", "--flagfile=flags/voc/strong.cfg"]) == \
        os.path.join("runs", "voc_strong")


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ROOT, "flags", "voc", "*.cfg"))),
                         ids=os.path.basename)
def test_voc_flagfiles_have_the_papers_settings(path, monkeypatch):
    monkeypatch.chdir(ROOT)
    values = _parse(cli_flags.expand_flagfiles(["prog", f"--flagfile={path}"]))
    exp = cli_flags.experiment_from_flags("runs/x", values)
    assert (exp.model.width, exp.model.num_classes, exp.input.crop_size, exp.init) == (
        1.0, 21, 321, "imagenet")
    assert (exp.optim.optimizer, exp.optim.learning_rate, exp.optim.lr_decay,
            exp.optim.lr_decay_steps, exp.loop.num_steps) == ("sgd", 1e-3, 0.1, 2000, 6000)
    assert (exp.estep.fg_bias, exp.estep.bg_bias, exp.estep.fg_portion,
            exp.estep.bg_portion) == (5, 3, 0.2, 0.4)
    assert exp.data.train_split == "train_aug" and exp.model.dropout == 0.5
    image_labels_only = exp.data.supervision in ("em_fixed", "em_adapt") and not exp.data.semi
    assert exp.model.fov == ("small" if image_labels_only else "large")
    if exp.data.semi:
        assert exp.data.strong_split == "train"
        assert exp.data.weak_per_batch in (0, 15)


def test_crf_flags_take_their_defaults_from_the_setting():
    values = flags.FlagValues()
    cli_flags.define_crf_flags(values, CRFSetting(reference_size=0), help_prefix="Start: ")
    values(["prog", "--crf_bi_w=7"])
    setting = cli_flags.crf_setting_from_flags(values)
    assert setting.params.bi_w == 7.0 and setting.reference_size == 0
    assert values["crf_num_iter"].help.startswith("Start: ")


def test_help_lists_each_flag_in_its_group_with_default_and_meaning():
    values = flags.FlagValues()
    cli_flags.define_experiment_flags(values)
    text = cli_flags.help_text(values, "Usage line.")
    assert text.startswith("Usage line.")
    headers = [line for line in text.splitlines() if line.endswith(":") and line[0] != " "]
    assert headers == ["data:", "model:", "supervision / E-step:", "optimiser:", "loop:",
                       "Cross-Joint dataset:"]
    sections = {block.split(":\n")[0]: block for block in text.split("\n\n")}
    assert "  --batch_size (default: 20)\n      Images per batch" in sections["data"]
    assert "  --width (default: 1.0)\n      Channel width multiplier" in sections["model"]
    assert "  --init (default: random)" in sections["model"]
    assert "  --fg_bias (default: 5.0)" in sections["supervision / E-step"]
    assert "  --optimizer (default: sgd) [sgd|adam]\n      SGD with momentum" in sections["optimiser"]
    assert "  --num_steps (default: 6000)" in sections["loop"]
    every_flag = {name for name in values if name != "flagfile"}
    assert every_flag <= {line.split()[0][2:] for line in text.splitlines()
                          if line.startswith("  --")}


@pytest.mark.slow
def test_train_help_shows_the_grouped_flags():
    out = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "train.py"), "--help"],
                         capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.startswith("Trains DeepLab")
    assert "\ndistribution:\n  --strategy [default|mirrored|multi_worker]" in out.stdout
    assert "\nmessages:\n  --verbose (default: false)" in out.stdout
    assert "--weak_warmup_steps (default: 0)" in out.stdout


def test_every_flagfile_is_parsed_by_a_test():
    """Each flags/**/*.cfg is a method flagfile (parsed above), a real-VOC
    flagfile (test_voc_flagfiles_have_the_papers_settings), a CRF fragment
    (tests/crf/test_evaluate.py) or the base every method flagfile includes."""
    everything = sorted(glob.glob(os.path.join(ROOT, "flags", "**", "*.cfg"), recursive=True))
    crf = {"crf_deeplab_largefov.cfg", "crf_released_test.cfg"}
    base = os.path.join(ROOT, "flags", "embedded_base.cfg")
    voc = set(glob.glob(os.path.join(ROOT, "flags", "voc", "*.cfg")))
    uncovered = [p for p in everything if p not in METHOD_FLAGFILES and p != base
                 and p not in voc
                 and os.path.relpath(p, os.path.join(ROOT, "flags")) not in crf]
    assert not uncovered, f"flagfiles no test parses: {uncovered}"
    for path in METHOD_FLAGFILES:
        assert "--flagfile=flags/embedded_base.cfg" in open(path).read().split(), path


def test_inference_flags_default_to_the_run_and_take_the_model_choices():
    """evaluate/export/predict: --precision defaults to None (the run's own, from its
    config.json), with ModelConfig.precision's choices; --jit_compile to off."""
    values = flags.FlagValues()
    cli_flags.define_inference_flags(values)
    values(["prog"])
    assert values["precision"].value is None and values["jit_compile"].value is False
    assert values["precision"].parser.enum_values == list(constants.PRECISIONS)
    values(["prog", "--precision=mixed_bfloat16", "--jit_compile"])
    assert values["precision"].value == "mixed_bfloat16" and values["jit_compile"].value
    with pytest.raises(flags.IllegalFlagValueError):
        values(["prog", "--precision=float64"])
