"""The CUDA device over CuPy: the same kernels as `cpu()`, written once against `xp`.

`cuda()` always returns a device object; `enabled()` is True only where CuPy imports and a GPU
answers. CuPy is imported here and nowhere else in needle.
"""
from __future__ import annotations

import numpy as np

from .device import Device

try:  # CuPy is an optional extra: needle[cuda]
    import cupy as _cupy
except Exception:  # ImportError, or a CUDA library that fails to load
    _cupy = None


def _gpu_available() -> bool:
    if _cupy is None:
        return False
    try:
        return _cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


class CUDADevice(Device):
    """A GPU through CuPy (NumPy's interface on device memory)."""

    name = "cuda"

    def __init__(self):
        self._enabled = _gpu_available()
        self.xp = _cupy if self._enabled else np

    def enabled(self) -> bool:
        return self._enabled

    def data_ptr(self, array) -> int:
        return array.data.ptr if self._enabled else super().data_ptr(array)

    def as_strided(self, flat, shape, strides, offset):
        if not self._enabled:
            return super().as_strided(flat, shape, strides, offset)
        itemsize = flat.dtype.itemsize
        return _cupy.lib.stride_tricks.as_strided(
            flat[offset:], shape=shape, strides=tuple(s * itemsize for s in strides))

    def to_numpy(self, array) -> np.ndarray:
        return _cupy.asnumpy(array) if self._enabled else np.asarray(array)

    def from_numpy(self, array):
        if not self._enabled:
            raise RuntimeError("cuda(): no CUDA device is available (CuPy missing or no GPU); "
                               "check needle.cuda().enabled() first")
        return _cupy.array(array, copy=True, order="C")

    def scatter_add(self, out, index, values):
        import cupyx

        cupyx.scatter_add(out, index, values)


_CUDA = None


def cuda() -> CUDADevice:
    """The CUDA device (a device object even without a GPU; see `enabled()`)."""
    global _CUDA
    if _CUDA is None:
        _CUDA = CUDADevice()
    return _CUDA
