"""NDArray: a flat device buffer seen through shape, strides (in elements) and an offset.

The course's design on top of native arrays: an NDArray holds a native strided view (a NumPy or
CuPy array) of one flat buffer. Views (`permute`, `broadcast_to`, `reshape` of compact arrays,
slicing) are native views of the same buffer, so every view reports the same `_handle.ptr()`,
and `strides`/`_offset` are read off the native view. Kernels run on the native views: the
device's array module already knows how to walk strided memory, so no index arithmetic is done
in Python.
"""
from __future__ import annotations

import math
import operator

import numpy as np

from . import special as _special
from .device import Device, cpu, default_device

_EWISE_MIN = 1 << 15  # elements from which an operator asks the device for its own kernel


class Handle:
    """The flat buffer behind an NDArray and all of its views."""

    __slots__ = ("array", "device")

    def __init__(self, array, device: Device):
        self.array = array  # 1-D native array over the whole buffer
        self.device = device

    def ptr(self) -> int:
        return self.device.data_ptr(self.array)

    @property
    def size(self) -> int:
        return self.array.size


def _root(array):
    """The native array that owns the memory `array` views."""
    r = array
    while r.base is not None and hasattr(r.base, "dtype") and hasattr(r.base, "strides"):
        r = r.base
    return r


def _flat_buffer(root):
    """The owner's memory as a 1-D array in memory order (a view, never a copy)."""
    if root.flags.c_contiguous:
        return root.reshape(-1)
    if root.flags.f_contiguous:
        return root.T.reshape(-1)
    raise AssertionError("an owning native array is contiguous")



def _binary(op: str, native):
    """An NDArray operator: the device's own kernel `op` for a large array (`Device._ewise`:
    cpu() runs its C threads over arrays of one layout), else `native(a, o)` of the native
    array and the other operand's (a native array or a number). Every operator on a graph
    runs this, so the result is built here rather than through `NDArray._wrap`."""
    new = object.__new__

    def operator_method(self, other):
        a = self._array
        o = other._array if isinstance(other, NDArray) else other
        r = self._device._ewise(op, a, o) if a.size >= _EWISE_MIN else None
        out = new(NDArray)
        out._array, out._device, out._root = native(a, o) if r is None else r, self._device, None
        return out

    return operator_method


class NDArray:
    """An n-dimensional array on a device; views share one flat buffer.

    `NDArray(x, device=None, dtype=None)` copies a NumPy array, a nested list or another NDArray
    to `device` (default: the CPU). Lists and Python scalars become float32; a NumPy array keeps
    its dtype unless `dtype` is given.
    """

    __slots__ = ("_array", "_device", "_root")
    __array_priority__ = 1000

    def __init__(self, other, device: Device | None = None, dtype=None):
        if isinstance(other, NDArray):
            device = device or other.device
            if device == other.device:
                native = device.xp.array(other._array, dtype=dtype or other.dtype, order="C")
            else:
                native = device.from_numpy(other.numpy().astype(dtype or other.dtype))
        else:
            device = device or default_device()
            if not isinstance(other, np.ndarray):
                other = np.array(other, dtype=dtype or "float32")
            native = device.from_numpy(np.asarray(other, dtype=dtype or other.dtype))
        self._array = native
        self._device = device
        self._root = None

    @staticmethod
    def _wrap(array, device: Device, root=None) -> "NDArray":
        """An NDArray over a native array without copying (internal fast path)."""
        out = object.__new__(NDArray)
        out._array = array
        out._device = device
        out._root = root
        return out

    def _view(self, array) -> "NDArray":  # a view of this array's buffer
        return NDArray._wrap(array, self._device, self._root)

    @staticmethod
    def make(shape, strides=None, device=None, handle=None, offset=0) -> "NDArray":
        """A new compact array (handle None) or a view of `handle` with element strides."""
        device = device or default_device()
        shape = tuple(shape)
        if handle is None:
            return NDArray._wrap(device.xp.empty(shape, dtype="float32"), device)
        strides = tuple(strides) if strides is not None else NDArray.compact_strides(shape)
        view = device.as_strided(handle.array, shape, strides, offset)
        return NDArray._wrap(view, device, _root(handle.array))

    @staticmethod
    def compact_strides(shape):
        stride, res = 1, []
        for n in reversed(shape):
            res.append(stride)
            stride *= n
        return tuple(reversed(res))

    # ---- properties --------------------------------------------------------------------
    @property
    def shape(self) -> tuple:
        return self._array.shape

    @property
    def strides(self) -> tuple:
        itemsize = self._array.dtype.itemsize
        return tuple(s // itemsize for s in self._array.strides)

    @property
    def dtype(self):
        return self._array.dtype

    @property
    def device(self) -> Device:
        return self._device

    @property
    def ndim(self) -> int:
        return self._array.ndim

    @property
    def size(self) -> int:
        return self._array.size

    @property
    def _handle(self) -> Handle:
        root = self._root if self._root is not None else _root(self._array)
        return Handle(_flat_buffer(root), self._device)

    @property
    def _offset(self) -> int:
        h = self._handle
        return (self._device.data_ptr(self._array) - h.ptr()) // self._array.dtype.itemsize

    @property
    def native(self):
        """The native (NumPy/CuPy) strided view this NDArray wraps."""
        return self._array

    def __repr__(self):
        return f"NDArray({self.numpy()!r}, device={self._device!r})"

    def __str__(self):
        return str(self.numpy())

    def numpy(self) -> np.ndarray:
        return self._device.to_numpy(self._array)

    def __array__(self, dtype=None, copy=None):
        a = self.numpy()
        return a if dtype is None else a.astype(dtype)

    def __len__(self):
        return self._array.shape[0]

    def to(self, device: Device) -> "NDArray":
        if device == self._device:
            return self
        return NDArray._wrap(device.from_numpy(self.numpy()), device)

    def astype(self, dtype) -> "NDArray":
        if self._array.dtype == dtype:
            return self
        return NDArray._wrap(self._array.astype(dtype), self._device)

    def fill(self, value) -> None:
        self._array.fill(value)

    @property
    def nbytes(self) -> int:
        return self._array.nbytes

    def item(self):
        """The value of a one-element array as a Python number."""
        return self._array.item()

    def as_owned(self) -> "NDArray":
        """Self when it owns a compact, writable buffer; else a compact copy (what an in-place
        update needs so as not to write through a view into another array)."""
        a = self._array
        flags = a.flags
        # (CuPy's flags have no `writeable`; its arrays always are)
        if getattr(flags, "writeable", True) and flags.c_contiguous and flags.owndata:
            return self
        return NDArray._wrap(self._device.xp.array(a, order="C"), self._device)

    def copy(self) -> "NDArray":
        """A compact copy that shares nothing with this array."""
        return NDArray._wrap(self._array.copy(), self._device)

    # ---- in-place updates (optimizers, running statistics: outside the graph) ------------
    def assign(self, other) -> "NDArray":
        """Write `other` (an NDArray, a NumPy array or a number) into this array in place,
        broadcasting and casting to this dtype; returns self."""
        if isinstance(other, NDArray):
            other = other._array
        elif isinstance(other, np.ndarray) and self._device.xp is not np:
            other = self._device.from_numpy(other)
        self._array[...] = other
        return self

    # Large arrays first ask the device for its own kernel (`Device._ewise`: cpu() runs its C
    # threads over arrays of one layout), else the array module's operator runs.
    def __iadd__(self, other):
        o, a = other._array if isinstance(other, NDArray) else other, self._array
        if a.size < _EWISE_MIN or self._device._ewise("add", a, o, a) is None:
            a += o
        return self

    def __isub__(self, other):
        o, a = other._array if isinstance(other, NDArray) else other, self._array
        if a.size < _EWISE_MIN or self._device._ewise("sub", a, o, a) is None:
            a -= o
        return self

    def __imul__(self, other):
        o, a = other._array if isinstance(other, NDArray) else other, self._array
        if a.size < _EWISE_MIN or self._device._ewise("mul", a, o, a) is None:
            a *= o
        return self

    def __itruediv__(self, other):
        o, a = other._array if isinstance(other, NDArray) else other, self._array
        if a.size < _EWISE_MIN or self._device._ewise("div", a, o, a) is None:
            a /= o
        return self

    # ---- layout ------------------------------------------------------------------------
    def is_compact(self) -> bool:
        """Row-major, starting at the buffer's first element and covering all of it."""
        return bool(self._array.flags.c_contiguous) and self.size == self._handle.size

    def compact(self) -> "NDArray":
        if self._array.flags.c_contiguous and self._array.base is None:
            return self
        if self.is_compact():
            return self
        return NDArray._wrap(self._device.xp.ascontiguousarray(self._array), self._device)

    def reshape(self, new_shape) -> "NDArray":
        """A view when the layout allows (row-major data), else a compact copy reshaped."""
        new_shape = tuple(new_shape)
        if math.prod(new_shape) != self.size and -1 not in new_shape:
            raise ValueError(f"reshape: cannot reshape array of shape {self.shape} "
                             f"({self.size} elements) into shape {new_shape}")
        if self._array.flags.c_contiguous:
            return self._view(self._array.reshape(new_shape))
        return NDArray._wrap(
            self._device.xp.ascontiguousarray(self._array).reshape(new_shape), self._device)

    def permute(self, new_axes) -> "NDArray":
        return self._view(self._array.transpose(tuple(new_axes)))

    def transpose(self, axes=None) -> "NDArray":
        """Swap two axes (default: the last two), as Tensor.transpose does (a view)."""
        perm = list(range(self.ndim))
        i, j = (self.ndim - 2, self.ndim - 1) if axes is None else axes
        perm[i], perm[j] = perm[j], perm[i]
        return self._view(self._array.transpose(perm))

    def broadcast_to(self, new_shape) -> "NDArray":
        return self._view(self._device.xp.broadcast_to(self._array, tuple(new_shape)))

    @property
    def flat(self) -> "NDArray":
        """A 1-D view of a row-major array (writes go through to this array)."""
        if not self._array.flags.c_contiguous:
            raise ValueError(f"NDArray.flat: needs a row-major (compact) array; this one has "
                             f"shape {self.shape} and strides {self.strides}: call compact()")
        return self._view(self._array.reshape(-1))

    # ---- indexing (course semantics: ints keep their axis) ------------------------------
    def process_slice(self, sl, dim):
        """A slice with explicit non-negative start, stop and step for axis `dim`."""
        start, stop, step = sl.indices(self.shape[dim])
        if step < 0 and stop < 0:  # running past index 0: no explicit stop expresses it
            return slice(start, None, step)
        return slice(start, stop, step)

    def _as_slices(self, idxs):
        if not isinstance(idxs, tuple):
            idxs = (idxs,)
        if len(idxs) > self.ndim:
            raise IndexError(f"NDArray index: {len(idxs)} indices for a {self.ndim}-d array "
                             f"of shape {self.shape}")
        out = []
        for dim, s in enumerate(idxs):
            if isinstance(s, slice):
                out.append(self.process_slice(s, dim))
            elif isinstance(s, (int, np.integer)):
                n = self.shape[dim]
                i = int(s) + n if s < 0 else int(s)
                if not 0 <= i < n:
                    raise IndexError(f"NDArray index: {s} out of range for axis {dim} "
                                     f"of size {n}")
                out.append(slice(i, i + 1, 1))
            else:
                raise TypeError(f"NDArray index: expected ints or slices, got {type(s).__name__}")
        return tuple(out)

    def __getitem__(self, idxs) -> "NDArray":
        return self._view(self._array[self._as_slices(idxs)])

    def __setitem__(self, idxs, other) -> None:
        view = self._array[self._as_slices(idxs)]
        if isinstance(other, NDArray):
            if other.size != view.size:
                raise ValueError(f"NDArray setitem: {other.size} values for a view of shape "
                                 f"{view.shape}")
            view[...] = other._array.reshape(view.shape)
        else:
            view[...] = other

    def select(self, index) -> "NDArray":
        """NumPy-style indexing (ints drop axes; integer or boolean NDArrays gather); a view
        when the index is basic."""
        return self._view(self._array[_native_index(index)])

    def put(self, index, values) -> None:
        """self[index] = values in place, with NumPy-style indexing (see `select`)."""
        self._array[_native_index(index)] = (values._array if isinstance(values, NDArray)
                                             else values)

    def scatter_add(self, index, values: "NDArray") -> None:
        """self[index] += values in place, accumulating repeated indices (NumPy semantics)."""
        self._device.scatter_add(self._array, _native_index(index), values._array)

    # ---- elementwise -------------------------------------------------------------------
    __add__ = __radd__ = _binary("add", operator.add)
    __sub__ = _binary("sub", operator.sub)
    __rsub__ = _binary("rsub", lambda a, o: o - a)
    __mul__ = __rmul__ = _binary("mul", operator.mul)
    __truediv__ = _binary("div", operator.truediv)
    __rtruediv__ = _binary("rdiv", lambda a, o: o / a)

    def __neg__(self):
        return NDArray._wrap(-self._array, self._device)

    def __pow__(self, other):
        o = other._array if isinstance(other, NDArray) else other
        return NDArray._wrap(self._array ** o, self._device)

    def __rpow__(self, other):
        return NDArray._wrap(other ** self._array, self._device)

    def _compare(self, result):
        return NDArray._wrap(result.astype(self._array.dtype), self._device)

    def __eq__(self, other):
        return self._compare(self._array == _native(other))

    def __ne__(self, other):
        return self._compare(self._array != _native(other))

    def __ge__(self, other):
        return self._compare(self._array >= _native(other))

    def __gt__(self, other):
        return self._compare(self._array > _native(other))

    def __le__(self, other):
        return self._compare(self._array <= _native(other))

    def __lt__(self, other):
        return self._compare(self._array < _native(other))

    __hash__ = None

    def maximum(self, other):
        o = other._array if isinstance(other, NDArray) else other
        return NDArray._wrap(self._device.xp.maximum(self._array, o), self._device)

    def minimum(self, other):
        o = other._array if isinstance(other, NDArray) else other
        return NDArray._wrap(self._device.xp.minimum(self._array, o), self._device)

    def log(self):
        return NDArray._wrap(self._device.xp.log(self._array), self._device)

    def exp(self):
        return NDArray._wrap(self._device.xp.exp(self._array), self._device)

    def tanh(self):
        return NDArray._wrap(self._device.xp.tanh(self._array), self._device)

    def sigmoid(self):
        """1 / (1 + exp(-x)), as (1 + tanh(x / 2)) / 2: never overflows, one transcendental."""
        return NDArray._wrap(stable_sigmoid(self._device.xp, self._array), self._device)

    def sqrt(self):
        return NDArray._wrap(self._device.xp.sqrt(self._array), self._device)

    def erf(self):
        """The error function, elementwise (backend_ndarray/special.py)."""
        return NDArray._wrap(_special.erf(self._device.xp, self._array), self._device)

    def abs(self):
        return NDArray._wrap(self._device.xp.abs(self._array), self._device)

    def sign(self):
        return NDArray._wrap(self._device.xp.sign(self._array), self._device)

    def nonfinite_to(self, value) -> "NDArray":
        """A copy with nan and +-inf entries replaced by `value`."""
        xp = self._device.xp
        return NDArray._wrap(xp.where(xp.isfinite(self._array), self._array, value).astype(
            self._array.dtype, copy=False), self._device)

    def isfinite(self):
        """True (as a Python bool) when every element is finite."""
        return bool(self._device.xp.isfinite(self._array).all())

    # ---- reductions and matmul (Tensor's names: `axes`, `keepdims`; NumPy's `axis` too) ----
    def sum(self, axes=None, keepdims=False, *, axis=None):
        axes = _axes(axis if axes is None else axes)
        a = self._array
        k = 0 if keepdims else _leading(axes)
        r = self._device._sum_leading(a, k) if k else None  # leading axes: the device's
        if r is not None:
            return NDArray._wrap(r, self._device)
        return NDArray._wrap(self._device.xp.asarray(a.sum(axis=axes, keepdims=keepdims)),
                             self._device)

    def mean(self, axes=None, keepdims=False, *, axis=None):
        axes = axis if axes is None else axes
        return NDArray._wrap(self._device.xp.asarray(
            self._array.mean(axis=_axes(axes), keepdims=keepdims)), self._device)

    def max(self, axes=None, keepdims=False, *, axis=None):
        axes = axis if axes is None else axes
        return NDArray._wrap(self._device.xp.asarray(
            self._array.max(axis=_axes(axes), keepdims=keepdims)), self._device)

    def min(self, axes=None, keepdims=False, *, axis=None):
        axes = axis if axes is None else axes
        return NDArray._wrap(self._device.xp.asarray(
            self._array.min(axis=_axes(axes), keepdims=keepdims)), self._device)

    def argmax(self, axis=None):
        """Indices (int64) of the maxima along `axis` (the first one on ties)."""
        return NDArray._wrap(self._device.xp.asarray(self._array.argmax(axis=axis)),
                             self._device)

    def argmin(self, axis=None):
        return NDArray._wrap(self._device.xp.asarray(self._array.argmin(axis=axis)),
                             self._device)

    def __matmul__(self, other):
        return NDArray._wrap(self._device._mm(self._array, other._array), self._device)

    # ---- padding and flipping -----------------------------------------------------------
    def pad(self, axes):
        """Zero padding, one (before, after) pair per axis, as `np.pad`."""
        return NDArray._wrap(self._device.xp.pad(self._array, tuple(axes)), self._device)

    def flip(self, axes):
        """A compact copy reversed along `axes`."""
        return NDArray._wrap(
            self._device.xp.ascontiguousarray(self._device.xp.flip(self._array, axes)),
            self._device)


def stable_sigmoid(xp, a):
    """The logistic function of a native array `a` (the one formula every kernel uses)."""
    return 0.5 * (xp.tanh(0.5 * a) + 1.0)


def _native(x):
    """The native array of an NDArray; a number as it is."""
    return x._array if isinstance(x, NDArray) else x


def _native_index(index):
    """A NumPy-style index with its NDArray parts as native arrays."""
    if isinstance(index, tuple):
        return tuple(i._array if isinstance(i, NDArray) else i for i in index)
    return index._array if isinstance(index, NDArray) else index


def _leading(axes) -> int:
    """k when `axes` (as `_axes` gives them) are the first k axes, else 0."""
    if isinstance(axes, int):
        return 1 if axes == 0 else 0
    return len(axes) if axes is not None and axes == tuple(range(len(axes))) else 0


def _axes(axes):
    """NumPy's `axis` argument from Tensor's `axes` (an int, a list or a tuple)."""
    if axes is None or isinstance(axes, int):
        return axes
    return tuple(axes)


class ArrayNode(NDArray):
    """A graph node's value seen by the fast backward: the node's NDArray (same buffer), plus
    `inputs` (the inputs' values) and `needs_input_grad`. An op's one `gradient` rule reads
    `node` and `node.inputs` the same way whether they are Tensors or these."""

    __slots__ = ("inputs", "_node")

    @staticmethod
    def of(node) -> "ArrayNode":
        """The view of a graph node whose value is an NDArray (one per node of a backward)."""
        value, ins = node.cached_data, node.inputs
        out = object.__new__(ArrayNode)
        out._array, out._device, out._root = value._array, value._device, value._root
        out.inputs = ((ins[0].cached_data, ins[1].cached_data) if len(ins) == 2
                      else tuple([x.cached_data for x in ins]))
        out._node = node
        return out

    @property
    def needs_input_grad(self) -> tuple:  # read from the graph node: few rules ask
        return tuple(x.requires_grad for x in self._node.inputs)

    def realize_cached_data(self) -> NDArray:
        return self


__all__ = ["NDArray", "ArrayNode", "Handle", "cpu"]
