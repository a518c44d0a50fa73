"""Tests for kseg/cli/flags.py: flags derived from the config dataclasses, and the flagfiles."""

import dataclasses
import glob
import os

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
    assert exp.optim.optimizer == "adam" and exp.data.supervision in constants.KINDS
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


def test_crf_flags_take_their_defaults_from_the_setting():
    values = flags.FlagValues()
    cli_flags.define_crf_flags(values, CRFSetting(reference_size=0), help_prefix="Start: ")
    values(["prog", "--crf_bi_w=7"])
    setting = cli_flags.crf_setting_from_flags(values)
    assert setting.params.bi_w == 7.0 and setting.reference_size == 0
    assert values["crf_num_iter"].help.startswith("Start: ")


def test_every_flagfile_is_parsed_by_a_test():
    """Each flags/**/*.cfg is a method flagfile (parsed above), a CRF fragment
    (tests/crf/test_evaluate.py) or the base every method flagfile includes."""
    everything = sorted(glob.glob(os.path.join(ROOT, "flags", "**", "*.cfg"), recursive=True))
    crf = {"crf_deeplab_largefov.cfg", "crf_released_test.cfg"}
    base = os.path.join(ROOT, "flags", "embedded_base.cfg")
    uncovered = [p for p in everything if p not in METHOD_FLAGFILES and p != base
                 and os.path.relpath(p, os.path.join(ROOT, "flags")) not in crf]
    assert not uncovered, f"flagfiles no test parses: {uncovered}"
    for path in METHOD_FLAGFILES:
        assert "--flagfile=flags/embedded_base.cfg" in open(path).read().split(), path
