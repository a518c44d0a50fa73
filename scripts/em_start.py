"""Can EM start from this network, and has a run collapsed? The E-step's targets and each
layer's input dependence.

Usage and flags: kseg/cli/em_start.py, or --helpfull.
"""

from kseg.cli import em_start

if __name__ == "__main__":
    em_start.run()
