"""DLPack exchange for NDArrays: zero-copy in both directions, through the array libraries' own
`__dlpack__` / `from_dlpack` (NumPy on the CPU, CuPy on `cuda()`).

An imported array keeps the producer's shape and strides; needle sees it as a strided view of
one flat buffer that spans the producer's memory, so `_handle.ptr()` and `_offset` work as for
any other NDArray view.
"""
from __future__ import annotations

import numpy as np

from ..errors import UserError
from .device import cpu
from .ndarray import NDArray

__all__ = ["DLPackError", "to_dlpack", "dlpack_device", "from_dlpack", "SUPPORTED_DTYPES"]

# DLPack device types (dlpack.h: DLDeviceType)
_KDL_CPU, _KDL_CUDA = 1, 2
SUPPORTED_DTYPES = ("float16", "float32", "float64", "int8", "int16", "int32", "int64",
                    "uint8", "bool")


class DLPackError(UserError, TypeError):
    """An object that cannot be shared with needle through DLPack (dtype, device or layout)."""


def _check_dtype(dtype, where: str) -> None:
    if str(dtype) not in SUPPORTED_DTYPES:
        raise DLPackError(f"{where}: dtype {dtype} is not supported (needle shares "
                          f"{', '.join(SUPPORTED_DTYPES)})")


def to_dlpack(array: NDArray, **kwargs):
    """A DLPack capsule over `array`'s memory (what `__dlpack__` returns)."""
    _check_dtype(array.dtype, "to_dlpack")
    return array._array.__dlpack__(**kwargs)


def dlpack_device(array: NDArray) -> tuple:
    """`(device_type, device_id)` as DLPack counts them (1 = CPU, 2 = CUDA)."""
    return tuple(array._array.__dlpack_device__())


def _spanning_buffer(xp, native):
    """A 1-D contiguous view over the memory `native` covers (strides must be >= 0)."""
    if native.flags.c_contiguous or native.flags.f_contiguous:
        return None  # NDArray finds the buffer itself
    if any(s < 0 for s in native.strides):
        raise DLPackError(f"from_dlpack: negative strides {native.strides} are not supported")
    item = native.dtype.itemsize
    span = 1 + sum((n - 1) * (s // item) for n, s in zip(native.shape, native.strides))
    if native.size == 0:
        span = 0
    return xp.lib.stride_tricks.as_strided(native, shape=(span,), strides=(item,))


def from_dlpack(obj) -> NDArray:
    """An NDArray sharing the memory of `obj` (anything with `__dlpack__`): no copy.

    CPU producers (NumPy, PyTorch CPU, ...) come in through `numpy.from_dlpack`; CUDA producers
    through CuPy on needle's `cuda()` device.
    """
    if not hasattr(obj, "__dlpack__") or not hasattr(obj, "__dlpack_device__"):
        raise DLPackError(f"from_dlpack: {type(obj).__name__} does not implement the DLPack "
                          f"protocol (__dlpack__ and __dlpack_device__)")
    dev_type, dev_id = obj.__dlpack_device__()
    if int(dev_type) == _KDL_CPU:
        device, xp = cpu(), np
    elif int(dev_type) == _KDL_CUDA:
        from .cuda import cuda

        device = cuda()
        if not device.enabled() or device.xp is np:
            raise DLPackError(f"from_dlpack: {type(obj).__name__} lives on CUDA device "
                              f"{dev_id}, but needle's cuda() is not available here")
        xp = device.xp
    else:
        raise DLPackError(f"from_dlpack: DLPack device type {dev_type} (id {dev_id}) is not "
                          f"supported; needle shares CPU (1) and CUDA (2) memory")
    try:
        native = xp.from_dlpack(obj)
    except (BufferError, TypeError, RuntimeError) as e:
        raise DLPackError(f"from_dlpack: cannot import {type(obj).__name__}: {e}") from e
    _check_dtype(native.dtype, "from_dlpack")
    return NDArray._wrap(native, device, _spanning_buffer(xp, native))
