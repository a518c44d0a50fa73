"""TensorFlow's own log, quietened before TensorFlow is imported.

A person running a command reads kseg's lines; TensorFlow's C++ runtime adds
its own (`failed call to cuInit` on a machine without a GPU, oneDNN and CPU
instruction notices, a `WARNING: All log messages before absl::InitializeLog()`
header twice per process) and its Python side logs `Sharding callback
duration` at every checkpoint. Unless the user asks for them (`--verbose`,
KSEG_VERBOSE=1, or TF_CPP_MIN_LOG_LEVEL set by hand):

- TF_CPP_MIN_LOG_LEVEL=3 keeps the C++ runtime's log below FATAL off: its
  errors that matter reach Python as exceptions, with their message.
- The notices written while `tensorflow` is imported come from static
  initialisers, before TensorFlow reads TF_CPP_MIN_LOG_LEVEL: that import
  runs with stderr (file descriptor 2) sent to a temporary file, whose lines
  are then written back, but those in TensorFlow's log format below FATAL.
- The Python logger `tensorflow` shows warnings and errors only, and so do
  TensorFlow's modules that log through absl.

No TensorFlow is imported here (kseg.cli's 'spawn' workers stay light);
`install()` runs when kseg.cli is imported, before any command imports it.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import logging
import os
import re
import sys
import tempfile

from absl import logging as absl_logging

# A line of TensorFlow's C++ log: severity letter, date (MMDD), time (seconds since the
# epoch when logged before absl is initialised), thread, file:line].
TF_LOG_LINE = re.compile(r"^(?P<severity>[IWEF])\d{4} \d\d:\d\d:\d+\.\d+ +\d+ \S+:\d+\] ")
# Lines TensorFlow's C++ side writes around its log lines.
_TF_NOTICES = (re.compile(r"^WARNING: All log messages before absl::InitializeLog\(\)"),
               re.compile(r"^To enable the following instructions: .*rebuild TensorFlow"))

VERBOSE_ENV = "KSEG_VERBOSE"


def verbose_requested(argv: list[str] | None = None, environ=None) -> bool:
    """--verbose on the command line (the last of --verbose / --noverbose wins),
    else KSEG_VERBOSE=1 in the environment."""
    argv = sys.argv if argv is None else argv
    environ = os.environ if environ is None else environ
    for arg in reversed(argv[1:]):
        if arg in ("--verbose", "-verbose") or arg.lower() in ("--verbose=true", "--verbose=1"):
            return True
        if arg in ("--noverbose", "-noverbose") or arg.lower() in ("--verbose=false",
                                                                   "--verbose=0"):
            return False
    return environ.get(VERBOSE_ENV, "") not in ("", "0", "false")


def is_tensorflow_noise(line: str) -> bool:
    """A line TensorFlow's C++ side logs below FATAL, or one of its notices."""
    match = TF_LOG_LINE.match(line)
    if match:
        return match["severity"] != "F"
    return any(p.match(line) for p in _TF_NOTICES)


@contextlib.contextmanager
def stderr_filtered(keep=lambda line: not is_tensorflow_noise(line)):
    """Sends file descriptor 2 to a temporary file for the block, then writes
    back to stderr the lines that `keep` accepts (also when the block raises)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            text = captured.read().decode(errors="replace")
            kept = [line for line in text.splitlines(keepends=True) if keep(line)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


class _QuietLoader(importlib.abc.Loader):
    """Runs the wrapped loader's module code with stderr filtered."""

    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        module.__loader__ = self._loader
        with stderr_filtered():
            self._loader.exec_module(module)

    def __getattr__(self, name):  # get_resource_reader, is_package, ...
        return getattr(self._loader, name)


class _QuietImport(importlib.abc.MetaPathFinder):
    """On the first `import tensorflow`: the real module, imported with stderr
    filtered. Removes itself from sys.meta_path when used."""

    def find_spec(self, name, path, target=None):
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader)
        return spec


class _TensorFlowInfo(logging.Filter):
    """Drops INFO and below that TensorFlow's Python modules log through absl
    (the checkpoint module's `Sharding callback duration` at every save)."""

    _TF_PATH = os.sep + "tensorflow" + os.sep

    def filter(self, record):
        return record.levelno >= logging.WARNING or self._TF_PATH not in record.pathname


def install(argv: list[str] | None = None, environ=None) -> bool:
    """Quietens TensorFlow's log as the module docstring says, unless verbose
    or the user set TF_CPP_MIN_LOG_LEVEL. Returns whether it did."""
    environ = os.environ if environ is None else environ
    if verbose_requested(argv, environ) or "TF_CPP_MIN_LOG_LEVEL" in environ:
        return False
    environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    logging.getLogger("tensorflow").setLevel(logging.WARNING)
    absl_logger = absl_logging.get_absl_logger()
    if not any(isinstance(f, _TensorFlowInfo) for f in absl_logger.filters):
        absl_logger.addFilter(_TensorFlowInfo())
    if "tensorflow" not in sys.modules and not any(
            isinstance(finder, _QuietImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _QuietImport())
    return True
