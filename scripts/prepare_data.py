"""Converts a dataset to sharded TFRecords (the one format training reads).

Usage and flags: kseg/cli/prepare.py (installed as the `kseg-prepare` command too), or --helpfull.
"""

from kseg.cli import prepare

if __name__ == "__main__":
    prepare.run()
