"""Test configuration: import needle from ./python and the course apps from ./apps,
as the course's own test files do, whether or not the package is installed."""
import os
import sys

import pytest

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for _p in (os.path.join(_ROOT, "python"), os.path.join(_ROOT, "apps"), _ROOT):
    if _p not in sys.path:
        sys.path.insert(0, _p)

_REPORTS: dict = {}


@pytest.fixture(scope="session")
def terminal_report():
    """title -> list of lines that tests fill in; printed in the run's terminal summary
    (tests/test_nvrtc.py leaves its kernel count and ptxas table here)."""
    return _REPORTS


def pytest_terminal_summary(terminalreporter):
    for title, lines in _REPORTS.items():
        terminalreporter.write_sep("-", title)
        for line in lines:
            terminalreporter.write_line(line)
