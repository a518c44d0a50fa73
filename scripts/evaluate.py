"""Evaluates a training run's newest checkpoint on a prepared split.

Usage and flags: kseg/cli/evaluate.py (installed as the `kseg-evaluate` command too), or --helpfull.
"""

from kseg.cli import evaluate

if __name__ == "__main__":
    evaluate.run()
