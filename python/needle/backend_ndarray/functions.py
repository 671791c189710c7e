"""The course's module-level backend_ndarray functions (`array`, `empty`, `full`, `exp`, ...),
each a call of the NDArray or Device method of the same name."""
from __future__ import annotations

import numpy as np

from .device import default_device
from .ndarray import NDArray


def array(a, dtype="float32", device=None) -> NDArray:
    """A copy of `a` on `device` as an NDArray of `dtype` (float32 unless given)."""
    dtype = "float32" if dtype is None else dtype
    if isinstance(a, NDArray):
        return NDArray(a, device=device or a.device, dtype=dtype)
    return NDArray(np.asarray(a, dtype=dtype), device=device)


def empty(shape, dtype="float32", device=None) -> NDArray:
    return (device or default_device()).empty(shape, dtype=dtype)


def full(shape, fill_value, dtype="float32", device=None) -> NDArray:
    return (device or default_device()).full(shape, fill_value, dtype=dtype)


def broadcast_to(a: NDArray, shape) -> NDArray:
    return a.broadcast_to(shape)


def reshape(a: NDArray, shape) -> NDArray:
    return a.reshape(shape)


def maximum(a: NDArray, b) -> NDArray:
    return a.maximum(b)


def log(a: NDArray) -> NDArray:
    return a.log()


def exp(a: NDArray) -> NDArray:
    return a.exp()


def tanh(a: NDArray) -> NDArray:
    return a.tanh()


def sum(a: NDArray, axis=None, keepdims=False) -> NDArray:  # noqa: A001 (course name)
    return a.sum(axis=axis, keepdims=keepdims)


def flip(a: NDArray, axes) -> NDArray:
    return a.flip(axes)


def stack(arrays, axis=0) -> NDArray:
    return arrays[0].device.stack(arrays, axis)


def concatenate(arrays, axis=0) -> NDArray:
    return arrays[0].device.concatenate(arrays, axis)


def where(cond: NDArray, a, b) -> NDArray:
    return cond.device.where(cond, a, b)


def einsum(subscripts: str, *arrays: NDArray) -> NDArray:
    """Einstein summation over NDArrays of one device (`np.einsum`'s subscripts)."""
    return arrays[0].device.einsum(subscripts, *arrays)


__all__ = ["einsum", "array", "empty", "full", "broadcast_to", "reshape", "maximum", "log",
           "exp", "tanh", "sum", "flip", "stack", "concatenate", "where"]
