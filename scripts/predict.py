"""Segments image files with a training run or an exported SavedModel.

Usage and flags: kseg/cli/predict.py (installed as the `kseg-predict` command too), or --helpfull.
"""

from kseg.cli import predict

if __name__ == "__main__":
    predict.run()
