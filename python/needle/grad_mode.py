"""The autograd's switches: whether ops record the graph, and anomaly detection.

One object, `MODE`, holds both; the autograd reads it on every op. `no_grad()` makes ops
record nothing (their outputs are constants); `detect_anomaly()` makes every op and every
backward rule check its results for nan and inf and name the op that made them.
"""
from __future__ import annotations

from contextlib import contextmanager


class _Mode:
    __slots__ = ("grad_enabled", "detect_anomaly")

    def __init__(self):
        self.grad_enabled = True
        self.detect_anomaly = False


MODE = _Mode()


@contextmanager
def no_grad():
    """Record nothing: ops made inside produce constants."""
    saved = MODE.grad_enabled
    MODE.grad_enabled = False
    try:
        yield
    finally:
        MODE.grad_enabled = saved


@contextmanager
def enable_grad():
    """Record the graph again (inside `no_grad()`, or inside a fast backward)."""
    saved = MODE.grad_enabled
    MODE.grad_enabled = True
    try:
        yield
    finally:
        MODE.grad_enabled = saved


def is_grad_enabled() -> bool:
    return MODE.grad_enabled


@contextmanager
def detect_anomaly(enabled: bool = True):
    """Raise FloatingPointError naming the op as soon as an op, or an op's backward, produces
    nan or inf."""
    saved = MODE.detect_anomaly
    MODE.detect_anomaly = enabled
    try:
        yield
    finally:
        MODE.detect_anomaly = saved


def set_detect_anomaly(enabled: bool) -> None:
    MODE.detect_anomaly = bool(enabled)


__all__ = ["no_grad", "enable_grad", "is_grad_enabled", "detect_anomaly", "set_detect_anomaly"]
