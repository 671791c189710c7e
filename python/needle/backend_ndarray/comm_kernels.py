"""Device kernels for data-parallel training (gradients packed into one flat buffer,
float64 statistics).

A mixin of `Device`: every method takes and returns NDArrays and is written once against
`self.xp`, so `cpu()` and `cuda()` share it; a backend overrides one only with a faster kernel
that gives the same numbers. Inside these methods `a._array` is the native strided view and
`self._wrap(native)` makes an NDArray of a native result.
"""
from __future__ import annotations


class CommKernels:
    """Kernels for data-parallel training."""

    __slots__ = ()

    def pack_host(self, arrays, sizes, dtype, extra=None):
        """One contiguous NumPy buffer (what MPI sends): every NDArray of `arrays` flattened
        (None counts as zeros), then the host array `extra`. On a device other than the CPU the
        arrays are packed on the device first, then copied to the host in one transfer."""
        import numpy as np

        xp = self.xp
        total = int(sum(sizes))
        n_extra = 0 if extra is None else extra.size
        buf = np.empty(total + n_extra, dtype=dtype)
        if xp is np:
            off = 0
            for a, n in zip(arrays, sizes):
                if a is None:
                    buf[off:off + n] = 0
                else:
                    np.copyto(buf[off:off + n], np.ravel(a._array), casting="same_kind")
                off += n
        elif total:
            parts = [xp.zeros(n, dtype=dtype) if a is None
                     else xp.ravel(a._array).astype(dtype, copy=False)
                     for a, n in zip(arrays, sizes)]
            buf[:total] = self.to_numpy(xp.concatenate(parts))
        if n_extra:
            buf[total:] = extra
        return buf

    def from_host(self, host):
        """A NumPy array as an NDArray on this device: a view of it on the CPU (no copy),
        one transfer elsewhere."""
        import numpy as np

        if self.xp is np:
            return self._wrap(host)
        return self._wrap(self.from_numpy(host))

    def sums_host(self, a, axes, b=None):
        """Per-channel sums over `axes` for a cross-rank reduction, as one float64 NumPy
        array: sum(a) then sum(a * a) (or sum(a * b) when `b` is given), channels flattened."""
        import numpy as np

        xp = self.xp
        x = a._array
        y = x if b is None else b._array
        local = xp.concatenate([x.sum(axis=tuple(axes), dtype=np.float64).ravel(),
                                (x.astype(np.float64) * y).sum(axis=tuple(axes)).ravel()])
        return np.ascontiguousarray(self.to_numpy(local), dtype=np.float64)
