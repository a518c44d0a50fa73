"""EM-Fixed (semi) against strong training on the strong images alone, over the number of strong images.

Usage and flags: kseg/cli/strong_sweep.py, or --helpfull.
"""

from kseg.cli import strong_sweep

if __name__ == "__main__":
    strong_sweep.run()
