"""Indexing and layout ops: getitem (gather) and its scatter-add adjoint, flip, pad, dilate."""
from __future__ import annotations

import numpy as np

from ..autograd import NDArray, Tensor, TensorOp


def _array_index(index, device):
    """An index with Tensors, lists and NumPy arrays turned into NDArrays on `device` (integer
    ids as int64; boolean masks kept), for `NDArray.select`/`put`/`scatter_add`."""
    if not isinstance(index, tuple):
        index = (index,)
    out = []
    for item in index:
        if isinstance(item, Tensor):
            item = item.realize_cached_data()
        elif isinstance(item, (list, np.ndarray)):
            arr = np.asarray(item)
            item = NDArray(arr, device=device, dtype="int64" if arr.dtype.kind == "f" else None)
        if isinstance(item, NDArray) and item.dtype.kind == "f":
            item = item.astype("int64")
        out.append(item)
    return tuple(out)


def _is_basic(index) -> bool:
    return all(isinstance(i, (int, np.integer, slice)) or i is None or i is Ellipsis
               for i in index)


class GetItem(TensorOp):
    """a[index] with NumPy semantics (ints drop axes, integer arrays gather)."""

    __slots__ = ("index",)
    array_rule = True

    def __init__(self, index):
        self.index = index  # an index of ints, slices and NDArrays (see _array_index)

    def compute(self, a: NDArray):
        try:
            return a.select(self.index)
        except IndexError as e:
            raise IndexError(f"getitem: {e} (tensor of shape {a.shape})") from None

    def gradient(self, out_grad, node):
        return ScatterAdd(self.index, node.inputs[0].shape)(out_grad)


class ScatterAdd(TensorOp):
    """zeros(shape) with `values` added at `index`: the adjoint of getitem (repeats add up)."""

    __slots__ = ("index", "shape", "basic")
    array_rule = True

    def __init__(self, index, shape):
        self.index = index
        self.shape = tuple(shape)
        self.basic = _is_basic(index)

    def compute(self, values: NDArray):
        out = values.device.zeros(self.shape, dtype=values.dtype)
        if self.basic:
            out.put(self.index, values)
        else:
            out.scatter_add(self.index, values)
        return out

    def gradient(self, out_grad, node):
        return GetItem(self.index)(out_grad)


def getitem(a, index):
    """a[index]: ints, slices, None, Ellipsis, integer/bool arrays or Tensors of ids."""
    return GetItem(_array_index(index, a.device))(a)


def scatter_add(values, index, shape):
    """zeros(shape) with values added at index (repeated indices accumulate)."""
    return ScatterAdd(_array_index(index, values.device), shape)(values)


class Flip(TensorOp):
    """Reverse the order of elements along `axes`."""

    __slots__ = ("axes",)
    array_rule = True

    def __init__(self, axes):
        self.axes = (axes,) if isinstance(axes, int) else tuple(axes)

    def compute(self, a: NDArray):
        for ax in self.axes:
            if not -a.ndim <= ax < a.ndim:
                raise ValueError(f"flip: axis {ax} out of range for shape {a.shape}")
        return a.flip(self.axes)

    def gradient(self, out_grad, node):
        return flip(out_grad, self.axes)


def flip(a, axes):
    return Flip(axes)(a)


class Pad(TensorOp):
    """Zero padding: `axes` holds one (before, after) pair per axis, as `np.pad`."""

    __slots__ = ("axes",)
    array_rule = True

    def __init__(self, axes):
        self.axes = tuple((int(lo), int(hi)) for lo, hi in axes)

    def compute(self, a: NDArray):
        if len(self.axes) != a.ndim:
            raise ValueError(f"pad: {len(self.axes)} (before, after) pairs for a tensor of "
                             f"shape {a.shape}")
        return a.pad(self.axes)

    def gradient(self, out_grad, node):
        index = tuple(slice(lo, lo + n) for (lo, _), n in zip(self.axes, node.inputs[0].shape))
        return GetItem(index)(out_grad)


def pad(a, axes):
    return Pad(axes)(a)


class _DilationOp(TensorOp):
    __slots__ = ("axes", "dilation")
    array_rule = True

    def __init__(self, axes, dilation: int):
        self.axes = (axes,) if isinstance(axes, int) else tuple(axes)
        self.dilation = int(dilation)
        if self.dilation < 0:
            raise ValueError(f"{type(self).__name__.lower()}: dilation must be >= 0, "
                             f"got {dilation}")

    def _axes(self, a: NDArray):
        for ax in self.axes:
            if not -a.ndim <= ax < a.ndim:
                raise ValueError(f"{type(self).__name__.lower()}: axis {ax} out of range for "
                                 f"shape {a.shape}")
        return [ax % a.ndim for ax in self.axes]


def _dilation_index(ndim, axes, dilation):
    index = [slice(None)] * ndim
    for ax in axes:
        index[ax] = slice(None, None, dilation + 1)
    return tuple(index)


class Dilate(_DilationOp):
    """Insert `dilation` zeros after every element along each axis in `axes`."""

    __slots__ = ()

    def compute(self, a: NDArray):
        if self.dilation == 0:
            return a
        axes = self._axes(a)
        shape = tuple(n * (1 + self.dilation) if i in axes else n
                      for i, n in enumerate(a.shape))
        out = a.device.zeros(shape, dtype=a.dtype)
        out.put(_dilation_index(a.ndim, axes, self.dilation), a)
        return out

    def gradient(self, out_grad, node):
        return undilate(out_grad, self.axes, self.dilation)


def dilate(a, axes, dilation):
    return Dilate(axes, dilation)(a)


class UnDilate(_DilationOp):
    """Keep every (dilation + 1)-th element along each axis in `axes` (inverse of dilate)."""

    __slots__ = ()

    def compute(self, a: NDArray):
        if self.dilation == 0:
            return a
        axes = self._axes(a)
        return a.select(_dilation_index(a.ndim, axes, self.dilation))

    def gradient(self, out_grad, node):
        return dilate(out_grad, self.axes, self.dilation)


def undilate(a, axes, dilation):
    return UnDilate(axes, dilation)(a)


class Concatenate(TensorOp):
    """Join tensors along an existing axis `axis` (torch.cat); the gradient is the slices."""

    __slots__ = ("axis",)
    array_rule = True

    def __init__(self, axis: int = 0):
        self.axis = int(axis)

    def compute(self, *arrays: NDArray):
        if not arrays:
            raise ValueError("concatenate: needs at least one tensor")
        first = arrays[0]
        ndim = first.ndim
        if not -ndim <= self.axis < ndim:
            raise ValueError(f"concatenate: axis {self.axis} is out of range for tensors with "
                             f"{ndim} dimensions")
        axis = self.axis % ndim
        for a in arrays[1:]:
            if (a.ndim != ndim or a.shape[:axis] != first.shape[:axis]
                    or a.shape[axis + 1:] != first.shape[axis + 1:]):
                raise ValueError(f"concatenate: shapes {first.shape} and {a.shape} differ "
                                 f"outside axis {axis}")
        return first.device.concatenate(arrays, axis=axis)

    def gradient(self, out_grad, node):
        ndim = len(out_grad.shape)
        axis = self.axis % ndim
        parts, start = [], 0
        for x in node.inputs:
            n = x.shape[axis]
            index = (slice(None),) * axis + (slice(start, start + n),)
            parts.append(GetItem(index)(out_grad))
            start += n
        return tuple(parts)


def concatenate(tensors, axis: int = 0):
    """torch.cat(tensors, dim=axis) for a list or tuple of Tensors."""
    return Concatenate(axis)(*tensors)
