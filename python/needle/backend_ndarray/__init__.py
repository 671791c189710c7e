"""needle's array layer: NDArray over a flat buffer, and the devices that run its kernels."""
from .cuda import CUDADevice, cuda
from .device import CPUDevice, Device, cpu, cpu_numpy, default_device
from .functions import (
    array, broadcast_to, concatenate, einsum, empty, exp, flip, full, log, maximum, reshape,
    stack, sum, tanh, where,
)
from .ndarray import ArrayNode, Handle, NDArray

BackendDevice = Device


def array_module(native):
    """The array module (NumPy, or CuPy through `cuda()`) that a native array belongs to."""
    import numpy

    if isinstance(native, numpy.ndarray):
        return numpy
    return cuda().xp


def all_devices():
    """Every device this build knows, enabled or not."""
    return [cpu(), cuda()]


__all__ = [
    "NDArray", "ArrayNode", "Handle", "einsum", "Device", "BackendDevice", "CPUDevice",
    "CUDADevice", "cpu", "cuda",
    "cpu_numpy", "default_device", "all_devices", "array_module", "array", "empty", "full",
    "broadcast_to", "reshape", "maximum", "log", "exp", "tanh", "sum", "flip", "stack",
    "concatenate", "where",
]
