"""Errors the user can fix: the `needle` command reports them as one line and exits with 2.

Anything else that is raised is a bug (in needle or in the caller's code) and keeps its
traceback. Each class also derives from the built-in error a caller would expect
(`FileNotFoundError` for missing data, `ValueError` for malformed files or settings), so
existing `except ValueError` code keeps working.
"""
from __future__ import annotations

__all__ = ["UserError", "ConfigError", "CheckpointError", "DataNotFoundError",
           "DataFormatError"]


class UserError(Exception):
    """Bad input the user can correct: a flag, a missing data set, a corrupt file. The
    message is the whole report: it names the flag or file and what was wrong."""


class ConfigError(UserError, ValueError):
    """A combination of flags or settings that cannot run (e.g. a model and a dataset that do
    not fit together)."""


class CheckpointError(UserError, ValueError):
    """A checkpoint file is missing, truncated, corrupt or not a needle checkpoint."""


class DataNotFoundError(UserError, FileNotFoundError):
    """A data file or folder does not exist where it was looked for."""


class DataFormatError(UserError, ValueError):
    """A data file exists but does not hold what its format promises."""
