"""Sets EM-Adapt's portions from a few fully annotated held-out images.

Usage and flags: kseg/cli/estep_portions.py, or --helpfull.
"""

from kseg.cli import estep_portions

if __name__ == "__main__":
    estep_portions.run()
