"""The CUDA device over CuPy: the same kernels as `cpu()`, written once against `xp`.

`cuda()` always returns a device object; `enabled()` is True only where CuPy imports and a GPU
answers. CuPy is imported here and nowhere else in needle.

The device code is the `Device` code run over CuPy's NumPy-compatible module, plus the few
calls NumPy has no name for (`_CupyRuntime`) and the fused kernels of cuda_kernels.py. To test
all of it without a GPU, `CUDADevice(xp=numpy)` (or `cuda.simulated()`) builds the same device
over NumPy: every method below runs, with `_NumpyRuntime` standing in for the CuPy-only calls
and the composed `Device` kernels standing in for the fused ones.

`needle.cuda` is callable (`needle.cuda()` is the device) and also carries the memory report:
`needle.cuda.memory_stats()` -> {"allocated", "reserved", "peak"} bytes of CuPy's pool.
"""
from __future__ import annotations

import numpy as np

from .device import Device
from .ndarray import NDArray

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


class _NumpyRuntime:
    """What the CuPy-only calls mean over NumPy: the stand-in that CI runs."""

    @staticmethod
    def asnumpy(array) -> np.ndarray:
        return np.array(array, copy=True)  # a copy, as a device-to-host transfer is

    @staticmethod
    def data_ptr(array) -> int:
        return array.__array_interface__["data"][0]

    @staticmethod
    def synchronize() -> None:
        pass


class _CupyRuntime:  # pragma: no cover - needs a GPU
    """The CuPy-only calls: host copies, raw pointers, stream sync."""

    def __init__(self, cp):
        self.asnumpy = cp.asnumpy
        self._stream = cp.cuda.get_current_stream

    @staticmethod
    def data_ptr(array) -> int:
        return array.data.ptr

    def synchronize(self) -> None:
        self._stream().synchronize()


class _PoolStats:
    """Peak tracking over a CuPy memory pool: an allocator that notes used bytes after each
    allocation (CuPy's pool reports used and reserved bytes, but keeps no peak)."""

    def __init__(self, pool):
        self.pool = pool
        self.peak = 0

    def malloc(self, size: int):
        mem = self.pool.malloc(size)
        used = self.pool.used_bytes()
        if used > self.peak:
            self.peak = used
        return mem

    def stats(self) -> dict:
        used = self.pool.used_bytes()
        return {"allocated": used, "reserved": self.pool.total_bytes(),
                "peak": max(self.peak, used)}

    def reset_peak(self) -> None:
        self.peak = self.pool.used_bytes()


class CUDADevice(Device):
    """A GPU through CuPy (NumPy's interface on device memory).

    `CUDADevice()` is the real device (disabled without CuPy or a GPU: it then refuses to hold
    arrays). `CUDADevice(xp=numpy)` is the same device code over NumPy, for tests.
    """

    name = "cuda"
    __tile_size__ = 8

    def __init__(self, xp=None):
        if xp is None:
            self._enabled = _gpu_available()
            self._simulated = False
            self.xp = _cupy if self._enabled else np
        else:
            self._enabled = True
            self._simulated = xp is not _cupy
            self.xp = xp
        if self._enabled and not self._simulated:  # pragma: no cover - needs a GPU
            from .cuda_kernels import CupyKernels

            self._rt = _CupyRuntime(_cupy)
            self._kernels = CupyKernels(_cupy)
        else:
            self._rt = _NumpyRuntime
            self._kernels = None

    # A simulated device is a different device: its arrays live in host memory.
    def __eq__(self, other):
        return isinstance(other, CUDADevice) and other._simulated == self._simulated

    def __hash__(self):
        return hash(("cuda", self._simulated))

    def __repr__(self):
        return "cuda(simulated)" if self._simulated else "cuda()"

    def enabled(self) -> bool:
        return self._enabled

    @property
    def simulated(self) -> bool:
        """True for the test device over NumPy."""
        return self._simulated

    def _check(self):
        if not self._enabled:
            raise RuntimeError(
                "cuda(): no CUDA device is available (CuPy is not installed, or no GPU "
                "answers); install needle[cuda] with the CuPy wheel for your driver (see "
                "docs/cuda.md) and check needle.cuda().enabled() before using it")

    # ---- buffers -------------------------------------------------------------------------
    def data_ptr(self, array) -> int:
        return self._rt.data_ptr(array)

    def to_numpy(self, array) -> np.ndarray:
        return self._rt.asnumpy(array)

    def from_numpy(self, array):
        self._check()
        return self.xp.array(array, copy=True, order="C")

    def _wrap(self, array):
        self._check()
        return NDArray._wrap(array, self)

    def synchronize(self) -> None:
        """Wait for the kernels queued so far (for timing); a no-op over NumPy."""
        self._rt.synchronize()

    def elementwise_kernel(self, params, body, name, preamble=""):
        """One kernel for a fused elementwise group of needle.compile (see
        fused_elementwise.py): a callable `run(*inputs, *scalars, out)`; None over NumPy,
        where the group runs as NumPy calls."""
        if self._kernels is None:
            return None
        return self._kernels.fused_elementwise(params, body, name, preamble)

    # ---- fused kernels: one CuPy kernel each on float32, the composed Device code otherwise --
    def _fused(self, *arrays):
        """The CuPy kernels when they apply to these arrays (float32), else None."""
        k = self._kernels
        if k is None:
            return None
        for a in arrays:
            if a is not None and a.dtype != np.float32:
                return None
        return k

    def _softmax_cross_entropy_fwd(self, z, labels):
        k = self._fused(z)
        if k is None or z.ndim != 2:
            return super()._softmax_cross_entropy_fwd(z, labels)
        return k.softmax_cross_entropy_fwd(z, labels)  # pragma: no cover - needs a GPU

    def _softmax_cross_entropy_bwd(self, z, labels, lse, g):
        k = self._fused(z, lse)
        if k is None or z.ndim != 2:
            return super()._softmax_cross_entropy_bwd(z, labels, lse, g)
        return k.softmax_cross_entropy_bwd(z, labels, lse, g)  # pragma: no cover

    def _layer_norm_fwd(self, x, weight=None, bias=None, eps=1e-5):
        k = self._fused(x, weight, bias)
        if k is None or x.ndim == 0:
            return super()._layer_norm_fwd(x, weight, bias, eps)
        return k.layer_norm_fwd(x, weight, bias, eps)  # pragma: no cover

    def _layer_norm_bwd(self, dy, x, mean, rstd, weight=None):
        k = self._fused(dy, x, mean, rstd, weight)
        if k is None or x.ndim == 0:
            return super()._layer_norm_bwd(dy, x, mean, rstd, weight)
        return k.layer_norm_bwd(dy, x, mean, rstd, weight)  # pragma: no cover

    def _batch_norm_fwd(self, x, weight=None, bias=None, eps=1e-5, axes=(0,)):
        k = self._fused(x, weight, bias)
        if k is None or x.ndim != 2 or tuple(axes) != (0,):
            return super()._batch_norm_fwd(x, weight, bias, eps, axes)
        return k.batch_norm_fwd(x, weight, bias, eps)  # pragma: no cover

    def _batch_norm_bwd(self, dy, x, mean, rstd, weight=None, axes=(0,)):
        k = self._fused(dy, x, mean, rstd, weight)
        if k is None or x.ndim != 2 or tuple(axes) != (0,):
            return super()._batch_norm_bwd(dy, x, mean, rstd, weight, axes)
        return k.batch_norm_bwd(dy, x, mean, rstd, weight)  # pragma: no cover

    def _adam_update(self, w, g, m, v, lr, beta1, beta2, eps, step, weight_decay=0.0,
                    decoupled=False):
        k = self._fused(w, g, m, v)
        # the kernel writes w, m and v in place through raw pointers: contiguous state only
        if k is None or w.shape != g.shape or not all(a.flags.c_contiguous for a in (w, m, v)):
            return super()._adam_update(w, g, m, v, lr, beta1, beta2, eps, step, weight_decay,
                                       decoupled)
        return k.adam_update(w, g, m, v, lr, beta1, beta2, eps, step, weight_decay,
                             decoupled)  # pragma: no cover


class _CudaNamespace:
    """`needle.cuda`: call it for the device; its methods report on the GPU's memory.

    >>> needle.cuda().enabled()          # False without CuPy or a GPU
    >>> needle.cuda.memory_stats()       # {"allocated": ..., "reserved": ..., "peak": ...}
    """

    def __init__(self):
        self._device = None
        self._pool_stats = None

    def __call__(self) -> CUDADevice:
        """The CUDA device (a device object even without a GPU; see `enabled()`)."""
        dev = self._device
        if dev is None:
            dev = self._device = CUDADevice()
            if dev.enabled():  # pragma: no cover - needs a GPU
                self._pool_stats = _PoolStats(_cupy.get_default_memory_pool())
                _cupy.cuda.set_allocator(self._pool_stats.malloc)
        return dev

    def __repr__(self):
        return "needle.cuda"

    def is_available(self) -> bool:
        """True where CuPy imports and a GPU answers (same as `cuda().enabled()`)."""
        return self().enabled()

    def simulated(self) -> CUDADevice:
        """The CUDA device's code over NumPy (tests run it where no GPU is present)."""
        return CUDADevice(xp=np)

    def memory_stats(self) -> dict:
        """Bytes of CuPy's pool: `allocated` (in live arrays), `reserved` (held from the
        driver, including cached free blocks) and `peak` allocated since the device was made
        or `reset_peak_memory_stats()`. All zeros on a disabled device."""
        self()
        if self._pool_stats is None:
            return {"allocated": 0, "reserved": 0, "peak": 0}
        return self._pool_stats.stats()  # pragma: no cover - needs a GPU

    def reset_peak_memory_stats(self) -> None:
        self()
        if self._pool_stats is not None:  # pragma: no cover - needs a GPU
            self._pool_stats.reset_peak()

    def empty_cache(self) -> None:
        """Return the pool's cached free blocks to the driver (lowers `reserved`)."""
        if self().enabled():  # pragma: no cover - needs a GPU
            _cupy.get_default_memory_pool().free_all_blocks()

    def synchronize(self) -> None:
        """Wait for every kernel queued on the current stream."""
        self().synchronize()


cuda = _CudaNamespace()
