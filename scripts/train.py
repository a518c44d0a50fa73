"""Trains DeepLab with strong, weak or mixed supervision.

Usage and flags: kseg/cli/train.py (installed as the `kseg-train` command too), or --helpfull.
"""

from kseg.cli import train

if __name__ == "__main__":
    train.run()
