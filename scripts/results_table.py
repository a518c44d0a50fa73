"""Trains and evaluates a list of flagfiles, then writes their val mIoU as a table.

Usage and flags: kseg/cli/results_table.py, or --helpfull.
"""

from kseg.cli import results_table

if __name__ == "__main__":
    results_table.run()
