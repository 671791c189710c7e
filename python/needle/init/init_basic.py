"""Tensor constructors that draw from NumPy's global RNG (the course's draw conventions).

Each function makes exactly one draw for the whole tensor, in row-major order, through the
device (`device.rand`/`device.randn`), so a seeded run gives the course's numbers.
"""
from __future__ import annotations

import numpy as np

from ..autograd import Tensor
from ..backend_ndarray import cpu


def _device(device):
    return cpu() if device is None else device


def rand(*shape, low=0.0, high=1.0, device=None, dtype="float32", requires_grad=False):
    """Uniform on [low, high)."""
    array = _device(device).rand(*shape, dtype=dtype) * (high - low) + low
    return Tensor(array, device=device, dtype=dtype, requires_grad=requires_grad)


def randn(*shape, mean=0.0, std=1.0, device=None, dtype="float32", requires_grad=False):
    """Normal with the given mean and standard deviation."""
    array = _device(device).randn(*shape, dtype=dtype) * std + mean
    return Tensor(array, device=device, dtype=dtype, requires_grad=requires_grad)


def constant(*shape, c=1.0, device=None, dtype="float32", requires_grad=False):
    array = _device(device).full(shape, c, dtype=dtype)
    return Tensor(array, device=device, dtype=dtype, requires_grad=requires_grad)


def ones(*shape, device=None, dtype="float32", requires_grad=False):
    return constant(*shape, c=1.0, device=device, dtype=dtype, requires_grad=requires_grad)


def zeros(*shape, device=None, dtype="float32", requires_grad=False):
    return constant(*shape, c=0.0, device=device, dtype=dtype, requires_grad=requires_grad)


def randb(*shape, p=0.5, device=None, dtype="bool", requires_grad=False):
    """Bernoulli(p) booleans: one uniform draw, True where the draw is <= p."""
    array = _device(device).rand(*shape) <= p
    return Tensor(array, device=device, dtype=dtype, requires_grad=requires_grad)


def one_hot(n, i, device=None, dtype="float32", requires_grad=False):
    """Rows of the n x n identity for the class ids in `i` (a Tensor or array of ids)."""
    ids = i.realize_cached_data() if isinstance(i, Tensor) else np.asarray(i)
    array = _device(device).one_hot(n, ids, dtype=dtype)
    return Tensor(array, device=device, dtype=dtype, requires_grad=requires_grad)


def zeros_like(array, *, device=None, requires_grad=False):
    device = device if device else array.device
    return zeros(*array.shape, dtype=array.dtype, device=device, requires_grad=requires_grad)


def ones_like(array, *, device=None, requires_grad=False):
    device = device if device else array.device
    return ones(*array.shape, dtype=array.dtype, device=device, requires_grad=requires_grad)


def manual_seed(seed: int) -> None:
    """Seed every source of randomness needle uses (NumPy's global RNG)."""
    np.random.seed(seed)


def get_rng_state():
    """NumPy's global RNG state, for checkpoints."""
    return np.random.get_state()


def set_rng_state(state) -> None:
    np.random.set_state(state)
