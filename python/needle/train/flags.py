"""Argument types shared by the `needle` command and the recipes that declare their own flags.

A recipe (a module registering datasets or models) declares its flags with
`engine.register_flags(*config_keys)`: the decorated `fn(parser, command)` adds them to the
`train` and `summary` parsers, and the named keys are stored in each checkpoint's configuration
(so `--resume` and `needle eval` rebuild the model with them).
"""
from __future__ import annotations

import argparse
import math

__all__ = ["number", "POS_INT", "POS_FLOAT", "NONNEG_FLOAT", "NONNEG_INT"]


def number(kind, low=None, high=None, low_open=False, what=None):
    """An argparse type: a finite int/float in [low, high] (low excluded with low_open)."""
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid {kind.__name__} value: {text!r}")
        if isinstance(value, float) and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
        if low is not None and (value <= low if low_open else value < low):
            raise argparse.ArgumentTypeError(
                f"must be {'>' if low_open else '>='} {low}, got {text}")
        if high is not None and value > high:
            raise argparse.ArgumentTypeError(f"must be <= {high}, got {text}")
        return value
    parse.__name__ = what or kind.__name__
    return parse


POS_INT = number(int, 1, what="int")
NONNEG_INT = number(int, 0, what="int")
POS_FLOAT = number(float, 0, low_open=True, what="float")
NONNEG_FLOAT = number(float, 0)
