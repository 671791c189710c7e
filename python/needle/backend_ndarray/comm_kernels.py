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
