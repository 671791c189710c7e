"""Shape ops (broadcast_to, reshape, transpose, permute, to_device) and the shape helpers the
other ops' gradient rules share: `normalize_axes`, `keepdims_shape` and `reduce_to_shape`,
each written once for Tensors and NDArrays alike.
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

from ..autograd import NDArray, TensorOp


def _broadcast_shape(op: str, a: tuple, b: tuple) -> tuple:
    try:
        return np.broadcast_shapes(a, b)
    except ValueError:
        raise ValueError(f"{op}: shapes {a} and {b} cannot be broadcast together") from None


def normalize_axes(op: str, axes, ndim: int) -> Optional[Tuple[int, ...]]:
    """Axes as a sorted tuple of non-negative ints (None stays None)."""
    if axes is None:
        return None
    if isinstance(axes, (int, np.integer)):
        axes = (int(axes),)
    out = []
    for ax in axes:
        if not -ndim <= ax < (ndim or 1):
            raise ValueError(f"{op}: axis {ax} is out of range for a tensor with {ndim} "
                             f"dimensions")
        out.append(ax % ndim if ndim else 0)
    if len(set(out)) != len(out):
        raise ValueError(f"{op}: repeated axis in {tuple(axes)}")
    return tuple(sorted(out))


def reduce_to_shape(grad, shape: tuple):
    """Sum a broadcast gradient (a Tensor or an NDArray) back to `shape`, the input's shape
    before broadcasting."""
    gshape = grad.shape
    if gshape == shape:
        return grad
    shape = tuple(shape)
    if gshape == shape:
        return grad
    lead = len(gshape) - len(shape)
    axes = tuple(range(lead)) + tuple(
        i + lead for i, n in enumerate(shape) if n == 1 and gshape[i + lead] != 1)
    if axes:
        grad = grad.sum(axes)
    return grad.reshape(shape)


def keepdims_shape(shape, axes):
    """`shape` with the (normalized) `axes` kept as 1s: the shape of a keepdims reduction."""
    if axes is None:
        return (1,) * len(shape)
    return tuple(1 if i in axes else n for i, n in enumerate(shape))


def promote_pair(a: NDArray, b: NDArray) -> Tuple[NDArray, NDArray]:
    """`a` and `b` in their common dtype (NumPy's promotion, as the elementwise ops get it):
    matmul, linear and conv of a float64 input with float32 weights compute in float64."""
    dtype = np.result_type(a.dtype, b.dtype)
    return (a if a.dtype == dtype else a.astype(dtype),
            b if b.dtype == dtype else b.astype(dtype))


# ---- shapes -----------------------------------------------------------------------------------
class BroadcastTo(TensorOp):
    """Broadcast to `shape` by NumPy's rules (leading axes may be added)."""

    __slots__ = ("shape",)
    array_rule = True

    def __init__(self, shape):
        self.shape = tuple(shape)

    def compute(self, a: NDArray):
        if a.shape == self.shape:
            return a
        try:
            if np.broadcast_shapes(a.shape, self.shape) != self.shape:
                raise ValueError
        except ValueError:
            raise ValueError(f"broadcast_to: cannot broadcast shape {a.shape} to "
                             f"{self.shape}") from None
        return a.broadcast_to(self.shape)

    def gradient(self, out_grad, node):
        return reduce_to_shape(out_grad, node.inputs[0].shape)



def broadcast_to(a, shape):
    return BroadcastTo(shape)(a)


class Reshape(TensorOp):
    __slots__ = ("shape",)
    array_rule = True

    def __init__(self, shape):
        self.shape = tuple(shape)

    def compute(self, a: NDArray):
        shape = self.shape
        if -1 in shape:
            known = int(np.prod([n for n in shape if n != -1]))
            if shape.count(-1) > 1 or known == 0 or a.size % known:
                raise ValueError(f"reshape: cannot reshape {a.shape} into {shape}")
            shape = tuple(a.size // known if n == -1 else n for n in shape)
        if int(np.prod(shape)) != a.size:
            raise ValueError(f"reshape: cannot reshape {a.shape} ({a.size} elements) into "
                             f"{shape}")
        return a.reshape(shape)

    def gradient(self, out_grad, node):
        return out_grad.reshape(node.inputs[0].shape)



def reshape(a, shape):
    return Reshape(shape)(a)


class Transpose(TensorOp):
    """Swap two axes (default: the last two); course semantics, not NumPy's permutation."""

    __slots__ = ("axes",)
    array_rule = True

    def __init__(self, axes: Optional[tuple] = None):
        self.axes = axes

    def compute(self, a: NDArray):
        n = a.ndim
        if self.axes is None:
            if n < 2:
                raise ValueError(f"transpose: need at least 2 dimensions, got shape {a.shape}")
            i, j = n - 2, n - 1
        else:
            if len(self.axes) != 2:
                raise ValueError(f"transpose: axes must name two axes, got {self.axes}")
            i, j = normalize_axes("transpose", (self.axes[0],), n)[0], \
                normalize_axes("transpose", (self.axes[1],), n)[0]
        perm = list(range(n))
        perm[i], perm[j] = perm[j], perm[i]
        return a.permute(perm)

    def gradient(self, out_grad, node):
        return out_grad.transpose(self.axes)


def transpose(a, axes=None):
    return Transpose(axes)(a)


class Permute(TensorOp):
    """Reorder all axes (`axes` is a permutation, as in NumPy's transpose)."""

    __slots__ = ("axes",)
    array_rule = True

    def __init__(self, axes):
        self.axes = tuple(axes)

    def compute(self, a: NDArray):
        if sorted(self.axes) != list(range(a.ndim)):
            raise ValueError(f"permute: {self.axes} is not a permutation of the axes of a "
                             f"tensor of shape {a.shape}")
        return a.permute(self.axes)

    def gradient(self, out_grad, node):
        inverse = [0] * len(self.axes)
        for i, ax in enumerate(self.axes):
            inverse[ax] = i
        return out_grad.permute(tuple(inverse))



def permute(a, axes):
    return Permute(axes)(a)


class ToDevice(TensorOp):
    """A copy on another device; the gradient goes back to the source device."""

    __slots__ = ("device",)
    array_rule = True

    def __init__(self, device):
        self.device = device

    def compute(self, a: NDArray):
        return a.to(self.device)

    def gradient(self, out_grad, node):
        return to_device(out_grad, node.inputs[0].device)


def to_device(a, device):
    return ToDevice(device)(a)
