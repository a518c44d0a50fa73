"""The command line: one module per command, each with `run()` (the console entry
point) and `main(argv)`. The only part of kseg that defines or reads absl
flags; `scripts/*.py` are thin wrappers around these modules."""
