"""absl flags derived from the config dataclasses, and the flags several commands share.

Every field of kseg.config (and of the CRF parameters) declared with
`kseg.config.setting` becomes one flag of the same name, type, default and
help; nothing here repeats a default. `experiment_from_flags` builds the
`Experiment` back from the parsed values, taking each field from the flag
of its name. So a new setting is one new field (docs/configuration.md).

No TensorFlow is imported here: commands whose CRF pool re-imports them in
'spawn' workers use these definitions too.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from typing import Sequence

from absl import flags

from kseg import config
from kseg.crf.dense import CRFParams
from kseg.crf.evaluate import CRF_IMPLEMENTATIONS, CRFSetting

FLAGS = flags.FLAGS

# The config classes of a training run, each field a flag of its own name.
EXPERIMENT_CONFIGS = (config.DataConfig, config.ModelConfig, config.InputConfig,
                      config.EStepConfig, config.OptimConfig, config.LoopConfig,
                      config.Experiment)
# DataConfig fields that are only a switch for the joint dataset: unset (None),
# there is no joint dataset.
_JOINT_SWITCHES = ("dataset", "data_dir")


def _field_type(field: dataclasses.Field) -> str:
    """'int', 'float', 'str' or 'bool' from the field's annotation."""
    annotation = field.type if isinstance(field.type, str) else field.type.__name__
    return annotation.split("|")[0].strip()


def _define(name: str, field: dataclasses.Field, default, help_text: str,
            values: flags.FlagValues) -> None:
    kind = _field_type(field)
    choices = field.metadata.get("choices")
    if choices:
        flags.DEFINE_enum(name, default, list(choices), help_text, flag_values=values)
    elif kind in ("bool", "int", "float", "str"):
        define = {"bool": flags.DEFINE_bool, "int": flags.DEFINE_integer,
                  "float": flags.DEFINE_float, "str": flags.DEFINE_string}[kind]
        define(name, default, help_text, flag_values=values)
    else:
        raise TypeError(f"{name}: no flag type for a setting of type {field.type!r}")


def _default(field: dataclasses.Field):
    return None if field.default is dataclasses.MISSING else field.default


def setting_fields(cls) -> list[dataclasses.Field]:
    """The fields of a config class that are flags (declared with `setting`)."""
    return [f for f in dataclasses.fields(cls) if f.metadata.get("help")]


def define_config_flags(cls, values: flags.FlagValues = FLAGS, prefix: str = "",
                        defaults=None, help_prefix: str = "") -> None:
    """Defines `--<prefix><field>` for every `setting` field of `cls`, with the
    field's default (or the value in the `defaults` instance) and help."""
    for field in setting_fields(cls):
        default = _default(field) if defaults is None else getattr(defaults, field.name)
        _define(prefix + field.name, field, default, help_prefix + field.metadata["help"],
                values)


def define_experiment_flags(values: flags.FlagValues = FLAGS) -> None:
    """The flags of a training run: every config setting, and the Cross-Joint
    dataset's `--joint_*` flags."""
    for cls in EXPERIMENT_CONFIGS:
        define_config_flags(cls, values)
    for field in dataclasses.fields(config.DataConfig):
        if field.metadata.get("joint_help"):
            default = (None if field.name in _JOINT_SWITCHES
                       else getattr(config.JOINT_DEFAULTS, field.name))
            _define("joint_" + field.name, field, default, field.metadata["joint_help"], values)


def config_from_flags(cls, values: flags.FlagValues = FLAGS, **overrides):
    """An instance of `cls` whose fields take the values of the flags of the
    same names (fields without such a flag keep their defaults), then
    `overrides`."""
    kwargs = {f.name: values[f.name].value for f in dataclasses.fields(cls)
              if f.name in values and f.name not in overrides}
    return cls(**kwargs, **overrides)


def joint_config(values: flags.FlagValues = FLAGS) -> config.DataConfig | None:
    """The Cross-Joint second dataset's DataConfig, or None."""
    if not any(values["joint_" + name].value for name in _JOINT_SWITCHES):
        return None
    kwargs = {f.name: values["joint_" + f.name].value for f in dataclasses.fields(config.DataConfig)
              if f.metadata.get("joint_help")}
    kwargs["dataset"] = kwargs["dataset"] or config.JOINT_DEFAULTS.dataset
    return dataclasses.replace(config.JOINT_DEFAULTS, **kwargs)


def experiment_from_flags(model_dir: str, values: flags.FlagValues = FLAGS) -> config.Experiment:
    """The Experiment of parsed `define_experiment_flags` values, training in `model_dir`."""
    get = lambda cls, **overrides: config_from_flags(cls, values, **overrides)  # noqa: E731
    return get(config.Experiment,
               data=get(config.DataConfig, joint=joint_config(values)),
               model=get(config.ModelConfig), input=get(config.InputConfig),
               estep=get(config.EStepConfig), optim=get(config.OptimConfig),
               loop=get(config.LoopConfig, model_dir=model_dir))


# --- --help, grouped -------------------------------------------------------------

# The group of each config class's flags in --help, in the order shown.
CONFIG_GROUPS = {config.DataConfig: "data", config.InputConfig: "data",
                 config.ModelConfig: "model", config.EStepConfig: "supervision / E-step",
                 config.OptimConfig: "optimiser", config.LoopConfig: "loop"}
# Flags whose group is not their class's (Experiment's fields) or that have no class.
FLAG_GROUPS = {"init": "model", "init_from": "model", "reset_classifier": "model",
               "seed": "loop", "strategy": "distribution", "workers": "CRF",
               "verbose": "messages"}
GROUP_ORDER = ("this command", "data", "model", "supervision / E-step", "optimiser", "loop",
               "distribution", "Cross-Joint dataset", "CRF", "messages")


def flag_group(name: str) -> str:
    """The --help group of a kseg flag (GROUP_ORDER)."""
    if name in FLAG_GROUPS:
        return FLAG_GROUPS[name]
    for cls, group in CONFIG_GROUPS.items():
        if any(f.name == name for f in setting_fields(cls)):
            return group
    if name.startswith("joint_"):
        return "Cross-Joint dataset"
    if name.startswith("crf_"):
        return "CRF"
    return "this command"


def help_text(values: flags.FlagValues = FLAGS, usage: str = "", width: int = 100) -> str:
    """`usage`, then every flag that kseg defines in `values` (absl's own are
    left to --helpfull), grouped (GROUP_ORDER), each with its default and help."""
    import textwrap
    shared = ("kseg.cli.flags", "kseg.cli.app")  # else: defined by the command itself
    modules = {flag.name: module for module, module_flags in values.flags_by_module_dict().items()
               if module.startswith("kseg") for flag in module_flags}
    groups: dict[str, list[str]] = {}
    for name in sorted(modules):
        flag = values[name]
        default = flag.default
        default = (str(default).lower() if isinstance(default, bool)
                   else "''" if default == "" else default)
        head = f"  --{name}" + (f" (default: {default})" if default is not None else "")
        choices = getattr(flag.parser, "enum_values", None)
        help_line = flag.help
        if choices:
            head += f" [{'|'.join(choices)}]"
            help_line = help_line.removeprefix(f"<{'|'.join(choices)}>: ")
        body = textwrap.fill(help_line, width, initial_indent=" " * 6,
                             subsequent_indent=" " * 6)
        group = (flag_group(name) if modules[name] in shared or name in FLAG_GROUPS
                 else "this command")
        groups.setdefault(group, []).append(f"{head}\n{body}")
    out = [usage.strip(), ""] if usage.strip() else []
    for group in sorted(groups, key=lambda g: GROUP_ORDER.index(g) if g in GROUP_ORDER
                        else len(GROUP_ORDER)):
        out += [f"{group}:", *groups[group], ""]
    out.append("Flagfiles: --flagfile=FILE. absl's own flags (logging, ...): --helpfull.")
    return "\n".join(out)


# --- Shared by several commands -------------------------------------------------


def define_crf_flags(values: flags.FlagValues = FLAGS, defaults: CRFSetting = CRFSetting(),
                     help_prefix: str = "") -> None:
    """The `--crf_*` flags (CRF parameters and reference size), defaults from `defaults`."""
    define_config_flags(CRFParams, values, "crf_", defaults.params, help_prefix)
    define_config_flags(CRFSetting, values, "crf_", defaults, help_prefix)


def define_crf_impl_flag(values: flags.FlagValues = FLAGS) -> None:
    flags.DEFINE_enum("crf_impl", CRF_IMPLEMENTATIONS[0], list(CRF_IMPLEMENTATIONS),
                      "Dense-CRF implementation: pydensecrf (C++, in the --workers pool; the "
                      "default until the TF one is measured at least as fast, BENCHMARKS.md) "
                      "or tf (kseg.crf.tf_dense, the CRF of scripts/export.py --crf, in this "
                      "process; --workers images at a time).",
                      flag_values=values)


def crf_setting_from_flags(values: flags.FlagValues = FLAGS) -> CRFSetting:
    return CRFSetting.from_dict(values.flag_values_dict())


def define_inference_flags(values: flags.FlagValues = FLAGS) -> None:
    """`--precision` and `--jit_compile` of the commands that run a trained
    network (evaluate, export, predict). The precision's choices and help are
    `ModelConfig.precision`'s, but its default is the run's own (config.json);
    XLA is off unless asked, whatever the run trained with."""
    field = {f.name: f for f in dataclasses.fields(config.ModelConfig)}["precision"]
    flags.DEFINE_enum("precision", None, list(field.metadata["choices"]),
                      "Arithmetic of the network (default: the run's, from its config.json). "
                      + field.metadata["help"], flag_values=values)
    flags.DEFINE_bool("jit_compile", False, "Compile the network with XLA, once per image "
                      "size: worth it for images of one size, not for a split of many sizes.",
                      flag_values=values)


def define_workers_flag(values: flags.FlagValues = FLAGS) -> None:
    flags.DEFINE_integer("workers", None, "Processes of the CRF pool (default or 0: one per "
                         "core; 1: no pool, in this process).", flag_values=values)


# --- Flagfiles --------------------------------------------------------------------


def _is_flagfile(arg: str) -> bool:
    return arg.startswith(("--flagfile=", "-flagfile="))


def _nested_path(path: str, including: str) -> str:
    """A nested flagfile path: as absl reads it, from the working directory;
    if nothing is there, from the folders above the including file (a method
    flagfile names flags/embedded_base.cfg from the repository root)."""
    if os.path.isabs(path) or os.path.exists(path):
        return path
    folder = os.path.dirname(os.path.abspath(including))
    while True:
        candidate = os.path.join(folder, path)
        if os.path.exists(candidate):
            return candidate
        parent = os.path.dirname(folder)
        if parent == folder:
            return path  # absl reports it missing
        folder = parent


def _flagfile_lines(path: str, stack: tuple[str, ...]) -> list[str]:
    """The flag lines of a flagfile, nested ones spliced in, as absl reads them."""
    if path in stack:
        sys.stderr.write(f"Warning: Hit circular flagfile dependency. Ignoring flagfile: {path}\n")
        return []
    with open(path) as f:
        lines = f.readlines()
    out = []
    for line in lines:
        if line.isspace() or line.startswith(("#", "//")):
            continue
        line = line.strip()
        if _is_flagfile(line):
            nested = _nested_path(line.split("=", 1)[1], path)
            out += (_flagfile_lines(nested, stack + (path,)) if os.path.isfile(nested)
                    else [f"--flagfile={nested}"])
        else:
            out.append(line)
    return out


def expand_flagfiles(argv: Sequence[str]) -> list[str]:
    """`argv` with each `--flagfile=FILE` replaced by the flag lines FILE holds.

    absl reads a nested `--flagfile=` line from the working directory only, so
    `flags/bbox_em.cfg`, which includes `flags/embedded_base.cfg`, would work
    from the repository root alone; here a nested path that is not found there
    is looked for from the folders above the including file. Otherwise the
    result is what absl would parse. Files that do not exist are left for
    absl to report.
    """
    out = list(argv[:1])
    rest = list(argv[1:])
    while rest:
        arg = rest.pop(0)
        if arg == "--":
            out += [arg] + rest
            break
        path = arg.split("=", 1)[1] if _is_flagfile(arg) else None
        out += _flagfile_lines(path, ()) if path and os.path.isfile(path) else [arg]
    return out


def default_model_dir(argv: Sequence[str]) -> str:
    """runs/<name of the last --flagfile on the command line>, or runs/default:
    the method's flagfile, not the base it includes (docs/configuration.md).
    A flagfile in a folder of flags/ is prefixed with it: flags/voc/strong.cfg
    trains in runs/voc_strong, apart from flags/strong.cfg's runs/strong."""
    names = [a.split("=", 1)[1] for a in argv[1:] if a.startswith("--flagfile=")]
    if not names:
        return os.path.join("runs", "default")
    folder, name = os.path.split(os.path.splitext(names[-1])[0])
    if os.path.basename(os.path.dirname(folder)) == "flags":
        name = f"{os.path.basename(folder)}_{name}"
    return os.path.join("runs", name)
