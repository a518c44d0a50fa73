"""Bbox-Seg: estimates segmentation masks from the boxes with a dense CRF.

Usage and flags: kseg/cli/bbox_seg.py, or --helpfull.
"""

from kseg.cli import bbox_seg

if __name__ == "__main__":
    bbox_seg.run()
