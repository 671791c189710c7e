"""Weight initializers (Xavier/Glorot and Kaiming/He), course conventions.

Each returns a `(fan_in, fan_out)` Tensor (or `shape` when given) from one draw.
"""
from __future__ import annotations

import math

from .init_basic import rand, randn

_GAINS = {"relu": math.sqrt(2.0), "linear": 1.0, "tanh": 5.0 / 3, "sigmoid": 1.0}


def _gain(nonlinearity: str) -> float:
    if nonlinearity not in _GAINS:
        raise ValueError(f"init: unknown nonlinearity {nonlinearity!r}; expected one of "
                         f"{sorted(_GAINS)}")
    return _GAINS[nonlinearity]


def xavier_uniform(fan_in, fan_out, gain=1.0, shape=None, **kwargs):
    """U(-a, a) with a = gain * sqrt(6 / (fan_in + fan_out))."""
    a = gain * math.sqrt(6.0 / (fan_in + fan_out))
    return rand(*(shape or (fan_in, fan_out)), low=-a, high=a, **kwargs)


def xavier_normal(fan_in, fan_out, gain=1.0, shape=None, **kwargs):
    """N(0, std^2) with std = gain * sqrt(2 / (fan_in + fan_out))."""
    std = gain * math.sqrt(2.0 / (fan_in + fan_out))
    return randn(*(shape or (fan_in, fan_out)), mean=0.0, std=std, **kwargs)


def kaiming_uniform(fan_in, fan_out, shape=None, nonlinearity="relu", **kwargs):
    """U(-b, b) with b = gain * sqrt(3 / fan_in) (gain sqrt(2) for relu)."""
    bound = _gain(nonlinearity) * math.sqrt(3.0 / fan_in)
    return rand(*(shape or (fan_in, fan_out)), low=-bound, high=bound, **kwargs)


def kaiming_normal(fan_in, fan_out, shape=None, nonlinearity="relu", **kwargs):
    """N(0, std^2) with std = gain / sqrt(fan_in)."""
    std = _gain(nonlinearity) / math.sqrt(fan_in)
    return randn(*(shape or (fan_in, fan_out)), mean=0.0, std=std, **kwargs)
