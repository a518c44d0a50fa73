"""Searches the dense-CRF parameters that maximise mIoU on held-out images.

Usage and flags: kseg/cli/crf_search.py, or --helpfull.
"""

from kseg.cli import crf_search

if __name__ == "__main__":
    crf_search.run()
