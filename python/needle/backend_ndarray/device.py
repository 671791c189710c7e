"""Devices: one object per backend, holding the array module and the kernels ops need.

A device wraps an array module with NumPy's interface (`numpy` for `cpu()`, `cupy` for
`cuda()`); every kernel is written once against `self.xp`, so CPU and CUDA share the code and
a new backend is a new subclass. Random draws always come from NumPy's global generator (the
course's convention, so seeded runs give the same numbers on every device) and are then moved
to the device.
"""
from __future__ import annotations

import numpy as np


class Device:
    """A backend: the array module `xp` and the kernels that ops call on native arrays."""

    name = "device"
    xp = np

    def __eq__(self, other):
        return isinstance(other, Device) and self.name == other.name

    def __hash__(self):
        return hash(self.name)

    def __repr__(self):
        return f"{self.name}()"

    def __str__(self):
        return self.__repr__()

    def enabled(self) -> bool:
        return True

    # ---- buffers -------------------------------------------------------------------------
    def data_ptr(self, array) -> int:
        """Address of the first element of a native array."""
        return array.__array_interface__["data"][0]

    def as_strided(self, flat, shape, strides, offset):
        """A view of the 1-D buffer `flat` with element strides, starting at `offset`."""
        itemsize = flat.dtype.itemsize
        return np.lib.stride_tricks.as_strided(
            flat[offset:], shape=shape, strides=tuple(s * itemsize for s in strides)
        )

    def to_numpy(self, array) -> np.ndarray:
        return np.asarray(array)

    def from_numpy(self, array: np.ndarray):
        """A compact native copy of a NumPy array, on this device."""
        return np.array(array, copy=True, order="C")

    # ---- constructors (NDArray results) --------------------------------------------------
    def empty(self, shape, dtype="float32"):
        return self._wrap(self.xp.empty(shape, dtype=dtype))

    def full(self, shape, fill_value, dtype="float32"):
        return self._wrap(self.xp.full(shape, fill_value, dtype=dtype))

    def zeros(self, shape, dtype="float32"):
        return self._wrap(self.xp.zeros(shape, dtype=dtype))

    def ones(self, shape, dtype="float32"):
        return self._wrap(self.xp.ones(shape, dtype=dtype))

    def rand(self, *shape, dtype="float32"):
        """Uniform [0, 1): one `np.random.rand(*shape)` draw (course RNG convention)."""
        return self._wrap(self.from_numpy(np.random.rand(*shape).astype(dtype)))

    def randn(self, *shape, dtype="float32"):
        """Standard normal: one `np.random.randn(*shape)` draw (course RNG convention)."""
        return self._wrap(self.from_numpy(np.random.randn(*shape).astype(dtype)))

    def one_hot(self, n, i, dtype="float32"):
        """Rows of the n x n identity selected by the integer array `i`."""
        idx = self.xp.asarray(i).astype(np.int64)
        return self._wrap(self.xp.eye(n, dtype=dtype)[idx])

    def _wrap(self, array):
        from .ndarray import NDArray

        return NDArray._wrap(array, self)

    # ---- kernels beyond NumPy's ufuncs ---------------------------------------------------
    def scatter_add(self, out, index, values):
        """out[index] += values, accumulating repeated indices."""
        np.add.at(out, index, values)

    def matmul_tiled(self, a, b, out, m, n, p):
        """Multiply compact tiled matrices: a (m/t, n/t, t, t) x b (n/t, p/t, t, t) -> out."""
        t = self.__tile_size__
        at = a.array.reshape(m // t, n // t, t, t)
        bt = b.array.reshape(n // t, p // t, t, t)
        out.array[:] = np.einsum("ikab,kjbc->ijac", at, bt).reshape(-1)


class CPUDevice(Device):
    """The CPU backend over NumPy (and the BLAS NumPy links)."""

    name = "cpu"
    xp = np
    __tile_size__ = 8


_CPU = CPUDevice()


def cpu() -> CPUDevice:
    """The CPU device."""
    return _CPU


def cpu_numpy() -> CPUDevice:
    """Alias of `cpu()`: the course's NumPy backend is this device."""
    return _CPU


def default_device() -> Device:
    return _CPU
