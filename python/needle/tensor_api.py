"""PyTorch habits on Tensor: conversions, shape helpers, `dim=`/`keepdim=`, DLPack.

`TensorHabits` is a base class of `needle.Tensor`. Its methods are built from Tensor's own
methods (`reshape`, `make_const`, `realize_cached_data`), so this module imports neither
autograd nor ops. Where a PyTorch habit conflicts with the course's API (`needle_api.md`), the
course wins: `==` and hashing keep object identity, comparisons give 0/1 values of the
tensor's dtype (not bool), and `size` is a property holding the element count (PyTorch's
`size()` is `shape` here; `numel()` is the count as in PyTorch).
"""
from __future__ import annotations

from .backend_ndarray import dlpack as _dlpack
from .errors import UserError

__all__ = ["TensorHabits", "TensorValueError", "torch_axes"]


class TensorValueError(UserError, ValueError):
    """A tensor whose shape does not fit the request (e.g. `float()` of many elements)."""


def torch_axes(op: str, axes, keepdims, dim, keepdim):
    """Merge PyTorch's `dim=`/`keepdim=` into the course's `axes=`/`keepdims=`."""
    if dim is not None:
        if axes is not None:
            raise TypeError(f"{op}: pass axes= or dim=, not both (got axes={axes}, dim={dim})")
        axes = dim
    if keepdim is not None:
        keepdims = keepdim
    return axes, bool(keepdims)


def _norm_dim(op: str, dim: int, ndim: int) -> int:
    if not -ndim <= dim < max(ndim, 1):
        raise IndexError(f"{op}: dim {dim} out of range for a tensor with {ndim} dims")
    return dim % max(ndim, 1)


class TensorHabits:
    """Methods a PyTorch user reaches for; see the module docstring for the differences."""

    __slots__ = ()

    # ---- one-element conversions ------------------------------------------------------
    def _scalar(self, kind: str):
        if self.size != 1:
            raise TensorValueError(f"{kind}(): a Tensor with {self.size} elements (shape "
                                   f"{self.shape}) cannot be converted to a Python scalar")
        return self.realize_cached_data().item()

    def __float__(self):
        return float(self._scalar("float"))

    def __int__(self):
        return int(self._scalar("int"))

    def __bool__(self):
        return bool(self._scalar("bool"))

    def __index__(self):
        data = self.realize_cached_data()
        if data.dtype.kind not in "iub":
            raise TypeError(f"__index__: only integer tensors can be used as an index, got "
                            f"dtype {data.dtype}")
        return int(self._scalar("index"))

    def tolist(self):
        return self.realize_cached_data().numpy().tolist()

    def numel(self) -> int:
        return self.size

    def dim(self) -> int:
        return self.ndim

    # ---- comparisons as methods (constant 0/1 masks of this dtype) ----------------------
    def _compare(self, other, how):
        a = self.realize_cached_data()
        b = other.realize_cached_data() if hasattr(other, "realize_cached_data") else other
        return type(self).make_const(getattr(a, how)(b))

    def eq(self, other):
        return self._compare(other, "__eq__")

    def ne(self, other):
        return self._compare(other, "__ne__")

    def gt(self, other):
        return self._compare(other, "__gt__")

    def ge(self, other):
        return self._compare(other, "__ge__")

    def lt(self, other):
        return self._compare(other, "__lt__")

    def le(self, other):
        return self._compare(other, "__le__")

    # ---- index reductions (constants, int64) -------------------------------------------
    def _arg(self, how, dim, keepdim):
        data = self.realize_cached_data()
        if dim is None:
            out = getattr(data, how)()
            if keepdim:
                out = out.reshape((1,) * data.ndim)
            return type(self).make_const(out)
        d = _norm_dim(how, dim, data.ndim)
        out = getattr(data, how)(axis=d)
        if keepdim:
            out = out.reshape(data.shape[:d] + (1,) + data.shape[d + 1:])
        return type(self).make_const(out)

    def argmax(self, dim=None, keepdim=False):
        """Indices of the maxima along `dim` (all elements when None), as int64 constants."""
        return self._arg("argmax", dim, keepdim)

    def argmin(self, dim=None, keepdim=False):
        return self._arg("argmin", dim, keepdim)

    # ---- shape helpers (differentiable: they are reshapes) --------------------------------
    def unsqueeze(self, dim: int):
        d = _norm_dim("unsqueeze", dim, self.ndim + 1)
        return self.reshape(self.shape[:d] + (1,) + self.shape[d:])

    def squeeze(self, dim=None):
        shape = self.shape
        if dim is None:
            return self.reshape(tuple(n for n in shape if n != 1))
        dims = dim if isinstance(dim, (tuple, list)) else (dim,)
        drop = {_norm_dim("squeeze", d, len(shape)) for d in dims} if shape else set()
        return self.reshape(tuple(n for i, n in enumerate(shape) if not (i in drop and n == 1)))

    def view(self, *shape):
        """A reshape (needle's reshape of a compact tensor is a view of the same storage)."""
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        return self.reshape(shape)

    def flatten(self, start_dim: int = 0, end_dim: int = -1):
        shape = self.shape
        if not shape:
            return self.reshape((1,))
        s = _norm_dim("flatten", start_dim, len(shape))
        e = _norm_dim("flatten", end_dim, len(shape))
        if s > e:
            raise ValueError(f"flatten: start_dim {start_dim} comes after end_dim {end_dim} "
                             f"for shape {shape}")
        n = 1
        for k in shape[s:e + 1]:
            n *= k
        return self.reshape(shape[:s] + (n,) + shape[e + 1:])

    def clone(self):
        """A differentiable copy with its own storage."""
        return self * 1

    # ---- DLPack --------------------------------------------------------------------------
    def __dlpack__(self, **kwargs):
        """Share this tensor's memory (no copy) with any DLPack consumer."""
        return _dlpack.to_dlpack(self.realize_cached_data(), **kwargs)

    def __dlpack_device__(self):
        return _dlpack.dlpack_device(self.realize_cached_data())
