"""Measures what BENCHMARKS.md reports, on this machine, as ratios where it can.

Usage and flags: kseg/cli/benchmark.py, or --helpfull.
"""

from kseg.cli import benchmark

if __name__ == "__main__":
    benchmark.run()
