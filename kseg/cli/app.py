"""How every kseg command starts: absl's app.run with kseg's flagfiles and log lines."""

from __future__ import annotations

import logging as std_logging
import sys
from typing import Callable

from absl import app, logging

from kseg.cli.flags import expand_flagfiles


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


def run(main: Callable[[list[str]], None], argv: list[str] | None = None) -> None:
    """Parses the flags (flagfiles expanded, see kseg.cli.flags.expand_flagfiles)
    and runs `main`, as absl's app.run does.

    absl's --help shows the docstring of the __main__ module: a thin wrapper
    in scripts/ or a console entry point, so it is given the docstring of the
    command's module, which holds the usage."""
    main_module = sys.modules.get("__main__")
    if main_module is not None:
        main_module.__doc__ = sys.modules[main.__module__].__doc__
    app.call_after_init(plain_log_lines)
    app.run(main, argv=expand_flagfiles(sys.argv if argv is None else argv))
