"""kseg's tests, one folder per package of kseg."""

import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
