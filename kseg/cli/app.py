"""How every kseg command starts: absl's app.run with kseg's flagfiles and log lines,
and its errors as one line.

A bad setting or bad data ends a command with one `error: ...` line on
stderr and exit status 2 (`USER_ERRORS`); `--verbose` (or KSEG_VERBOSE=1)
shows the traceback instead, and TensorFlow's own log (kseg.cli.tf_log).
"""

from __future__ import annotations

import logging as std_logging
import sys
from typing import Callable

from absl import app, flags, logging

from kseg.cli import tf_log
from kseg.cli.flags import expand_flagfiles, help_text

HELP_ARGS = ("--help", "-help", "-h", "--helpshort", "-helpshort", "-?")

# What a bad setting, a bad path or bad data raise (kseg.data.errors.DataError
# and kseg.training.checkpoints.RunMismatchError are ValueErrors; a missing file
# or an unreachable download is an OSError): the message says what to change.
# Anything else is a bug and keeps its traceback.
USER_ERRORS = (ValueError, OSError)
ERROR_EXIT_CODE = 2


def plain_log_lines() -> None:
    """Log lines on the terminal show the message alone (absl's default adds a
    level, time, process and file prefix): the library logs its progress
    through absl.logging, and a person watching a run reads it as before.
    `--verbosity` and absl's other logging flags still apply."""
    logging.get_absl_handler().setFormatter(std_logging.Formatter("%(message)s"))


def log_to_terminal() -> None:
    """For a Python program that calls the library itself: show kseg's log
    lines (INFO and up) on stderr as the commands do."""
    logging.set_verbosity(logging.INFO)
    logging.use_absl_handler()
    plain_log_lines()


def _user_errors() -> tuple[type, ...]:
    """USER_ERRORS, and TensorFlow's NotFoundError (a missing record file) once
    TensorFlow is loaded (it is not imported here: see kseg.cli.tf_log)."""
    tf = sys.modules.get("tensorflow")
    errors = getattr(tf, "errors", None)
    return USER_ERRORS + ((errors.NotFoundError,) if errors is not None else ())


def error_line(error: BaseException) -> str:
    """`error: <message>` on one line (a TensorFlow error: its first line)."""
    text = str(error).strip() or type(error).__name__
    if type(error).__module__.startswith("tensorflow"):
        text = text.splitlines()[0]
    return "error: " + " ".join(text.split())


def one_line_errors(main: Callable[[list[str]], None]) -> Callable[[list[str]], None]:
    """`main` with USER_ERRORS reported as one line and exit status 2, unless
    --verbose or KSEG_VERBOSE=1 (then the traceback, as before)."""
    def wrapped(argv):
        try:
            main(argv)
        except _user_errors() as e:
            if flags.FLAGS["verbose"].value or tf_log.verbose_requested([]):
                raise
            print(error_line(e), file=sys.stderr)
            sys.exit(ERROR_EXIT_CODE)
    return wrapped


def define_verbose_flag(values: flags.FlagValues = flags.FLAGS) -> None:
    if "verbose" not in values:
        flags.DEFINE_bool("verbose", False, "On an error, show the traceback, not one line; "
                          "also show TensorFlow's own log (as KSEG_VERBOSE=1 does).",
                          flag_values=values)


def run(main: Callable[[list[str]], None], argv: list[str] | None = None) -> None:
    """Parses the flags (flagfiles expanded, see kseg.cli.flags.expand_flagfiles)
    and runs `main`, as absl's app.run does, its errors as one line
    (`one_line_errors`).

    absl's --help shows the docstring of the __main__ module: a thin wrapper
    in scripts/ or a console entry point, so it is given the docstring of the
    command's module, which holds the usage."""
    main_module = sys.modules.get("__main__")
    if main_module is not None:
        main_module.__doc__ = sys.modules[main.__module__].__doc__
    define_verbose_flag()
    argv = expand_flagfiles(sys.argv if argv is None else argv)
    if any(arg in HELP_ARGS for arg in argv[1:]):
        # absl's --help lists the flags of the __main__ module only (none here).
        print(help_text(flags.FLAGS, sys.modules[main.__module__].__doc__ or ""))
        sys.exit(0)
    app.call_after_init(plain_log_lines)
    app.run(one_line_errors(main), argv=argv)
