"""Exports a training run's newest checkpoint as a SavedModel for serving.

Usage and flags: kseg/cli/export.py (installed as the `kseg-export` command too), or --helpfull.
"""

from kseg.cli import export

if __name__ == "__main__":
    export.run()
