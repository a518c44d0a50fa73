"""The command line: one module per command, each with `run()` (the console entry
point) and `main(argv)`. The only part of kseg that defines or reads absl
flags; `scripts/*.py` are thin wrappers around these modules.

Importing it quietens TensorFlow's own log before any command imports
TensorFlow (kseg.cli.tf_log; `--verbose` or KSEG_VERBOSE=1 keeps it)."""

from kseg.cli import tf_log

tf_log.install()
