"""Pretrains conv1-fc7 of DeepLab-VGG16 on the embedded ImageNet stand-in.

Usage and flags: kseg/cli/pretrain.py, or --helpfull.
"""

from kseg.cli import pretrain

if __name__ == "__main__":
    pretrain.run()
