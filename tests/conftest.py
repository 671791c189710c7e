"""Test configuration: import needle from ./python and the course apps from ./apps,
as the course's own test files do, whether or not the package is installed."""
import os
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for _p in (os.path.join(_ROOT, "python"), os.path.join(_ROOT, "apps"), _ROOT):
    if _p not in sys.path:
        sys.path.insert(0, _p)
