"""Elementwise, scalar, matmul, reduction and shape ops: compute on NDArrays, gradient as ops.

Binary elementwise ops broadcast as NumPy does (and as PyTorch does); their gradients are
reduced back to each input's shape by `reduce_to_shape`, the one helper for that.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import numpy as np

from ..autograd import NDArray, Tensor, TensorOp


# ---- helpers --------------------------------------------------------------------------------
def _scalar(s):
    """A Python number from a number, a NumPy scalar or a one-element array."""
    if type(s) is int or type(s) is float:
        return s
    if isinstance(s, (np.ndarray, np.generic)):  # NumPy scalars would promote float32
        if s.size != 1:
            raise ValueError(f"scalar op: expected a single number, got an array of shape "
                             f"{s.shape}")
        return s.item()
    if isinstance(s, Tensor):
        raise TypeError("scalar op: got a Tensor where a Python number was expected")
    return s


def _broadcast_shape(op: str, a: tuple, b: tuple) -> tuple:
    try:
        return np.broadcast_shapes(a, b)
    except ValueError:
        raise ValueError(f"{op}: shapes {a} and {b} cannot be broadcast together") from None


def _check_same_device(op: str, a: NDArray, b: NDArray) -> None:
    if a.device != b.device:
        raise ValueError(f"{op}: inputs are on different devices, {a.device} and {b.device}")


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
    shape = tuple(shape)
    gshape = grad.shape
    if gshape == shape:
        return grad
    lead = len(gshape) - len(shape)
    axes = tuple(range(lead)) + tuple(
        i + lead for i, n in enumerate(shape) if n == 1 and gshape[i + lead] != 1)
    if axes:
        grad = grad.sum(axes)
    return grad.reshape(shape)


class _ScalarOp(TensorOp):
    """An op with one Tensor input and a Python-number attribute `scalar`."""

    __slots__ = ("scalar",)
    array_rule = True

    def __init__(self, scalar):
        self.scalar = _scalar(scalar)


# ---- elementwise binary -----------------------------------------------------------------------
class EWiseAdd(TensorOp):
    __slots__ = ()
    array_rule = True

    def compute(self, a: NDArray, b: NDArray):
        if a.shape != b.shape:
            _broadcast_shape("add", a.shape, b.shape)
        return a + b

    def gradient(self, out_grad, node):
        a, b = node.inputs
        return reduce_to_shape(out_grad, a.shape), reduce_to_shape(out_grad, b.shape)



def add(a, b):
    return EWiseAdd()(a, b)


class AddScalar(_ScalarOp):
    __slots__ = ()

    def compute(self, a: NDArray):
        return a + self.scalar

    def gradient(self, out_grad, node):
        return out_grad



def add_scalar(a, scalar):
    return AddScalar(scalar)(a)


class EWiseMul(TensorOp):
    __slots__ = ()
    array_rule = True

    def compute(self, a: NDArray, b: NDArray):
        if a.shape != b.shape:
            _broadcast_shape("multiply", a.shape, b.shape)
        return a * b

    def gradient(self, out_grad, node):
        a, b = node.inputs
        return (reduce_to_shape(out_grad * b, a.shape),
                reduce_to_shape(out_grad * a, b.shape))



def multiply(a, b):
    return EWiseMul()(a, b)


class MulScalar(_ScalarOp):
    __slots__ = ()

    def compute(self, a: NDArray):
        return a * self.scalar

    def gradient(self, out_grad, node):
        return out_grad * self.scalar



def mul_scalar(a, scalar):
    return MulScalar(scalar)(a)


class EWisePow(TensorOp):
    """a ** b elementwise, differentiable in both a and b."""

    __slots__ = ()
    array_rule = True

    def compute(self, a: NDArray, b: NDArray):
        if a.shape != b.shape:
            _broadcast_shape("power", a.shape, b.shape)
        return a ** b

    def gradient(self, out_grad, node):
        a, b = node.inputs
        ga = out_grad * b * a ** (b - 1)
        gb = out_grad * node * log(a)
        return reduce_to_shape(ga, a.shape), reduce_to_shape(gb, b.shape)


def power(a, b):
    return EWisePow()(a, b)


class PowerScalar(_ScalarOp):
    """a ** scalar for a number `scalar` (int, negative or fractional)."""

    __slots__ = ()

    def compute(self, a: NDArray):
        return a ** self.scalar

    def gradient(self, out_grad, node):
        s = self.scalar
        a = node.inputs[0]
        if s == 0:
            return out_grad * 0
        if s == 1:
            return out_grad
        if s == 2:
            return out_grad * a * 2
        return out_grad * (a ** (s - 1)) * s



def power_scalar(a, scalar):
    return PowerScalar(scalar)(a)


class ScalarPower(_ScalarOp):
    """scalar ** a (the reflected power `2 ** t`)."""

    __slots__ = ()

    def compute(self, a: NDArray):
        return self.scalar ** a

    def gradient(self, out_grad, node):
        return out_grad * node * math.log(self.scalar)


class EWiseDiv(TensorOp):
    __slots__ = ()
    array_rule = True

    def compute(self, a: NDArray, b: NDArray):
        if a.shape != b.shape:
            _broadcast_shape("divide", a.shape, b.shape)
        return a / b

    def gradient(self, out_grad, node):
        a, b = node.inputs
        ga = out_grad / b
        gb = -(out_grad * a) / (b * b)
        return reduce_to_shape(ga, a.shape), reduce_to_shape(gb, b.shape)



def divide(a, b):
    return EWiseDiv()(a, b)


class DivScalar(_ScalarOp):
    __slots__ = ()

    def compute(self, a: NDArray):
        return a / self.scalar

    def gradient(self, out_grad, node):
        return out_grad / self.scalar



def divide_scalar(a, scalar):
    return DivScalar(scalar)(a)


class Maximum(TensorOp):
    """Elementwise maximum of two tensors; ties send the gradient to the first input."""

    __slots__ = ()
    array_rule = True

    def compute(self, a: NDArray, b: NDArray):
        if a.shape != b.shape:
            _broadcast_shape("maximum", a.shape, b.shape)
        return a.maximum(b)

    def gradient(self, out_grad, node):
        a, b = node.inputs
        mask = a >= b  # a constant 0/1 mask (Tensor or NDArray, as a and b are)
        return (reduce_to_shape(out_grad * mask, a.shape),
                reduce_to_shape(out_grad * (1 - mask), b.shape))


def maximum(a, b):
    return Maximum()(a, b)


# ---- elementwise unary ------------------------------------------------------------------------
class Negate(TensorOp):
    __slots__ = ()
    array_rule = True

    def compute(self, a: NDArray):
        return -a

    def gradient(self, out_grad, node):
        return -out_grad



def negate(a):
    return Negate()(a)


class Log(TensorOp):
    __slots__ = ()
    array_rule = True

    def compute(self, a: NDArray):
        return a.log()

    def gradient(self, out_grad, node):
        return out_grad / node.inputs[0]



def log(a):
    return Log()(a)


class Exp(TensorOp):
    __slots__ = ()
    array_rule = True

    def compute(self, a: NDArray):
        return a.exp()

    def gradient(self, out_grad, node):
        return out_grad * node



def exp(a):
    return Exp()(a)


class ReLU(TensorOp):
    """max(x, 0); the derivative is 1 where x > 0, else 0."""

    __slots__ = ()
    array_rule = True

    def compute(self, a: NDArray):
        return a.maximum(0)

    def gradient(self, out_grad, node):
        return out_grad * (node.inputs[0] > 0)



def relu(a):
    return ReLU()(a)


class Tanh(TensorOp):
    __slots__ = ()
    array_rule = True

    def compute(self, a: NDArray):
        return a.tanh()

    def gradient(self, out_grad, node):
        return out_grad * (1 - node * node)



def tanh(a):
    return Tanh()(a)


class Sigmoid(TensorOp):
    """1 / (1 + exp(-x)), computed as (1 + tanh(x/2)) / 2 so it never overflows."""

    __slots__ = ()
    array_rule = True

    def compute(self, a: NDArray):
        return ((a * 0.5).tanh() + 1) * 0.5

    def gradient(self, out_grad, node):
        return out_grad * node * (1 - node)



def sigmoid(a):
    return Sigmoid()(a)


class Sqrt(TensorOp):
    __slots__ = ()
    array_rule = True

    def compute(self, a: NDArray):
        return a.sqrt()

    def gradient(self, out_grad, node):
        return out_grad / (node * 2)


def sqrt(a):
    return Sqrt()(a)


def _swap_last(ndim):
    return tuple(range(ndim - 2)) + (ndim - 1, ndim - 2)


# ---- matmul -----------------------------------------------------------------------------------
class MatMul(TensorOp):
    """Matrix product; inputs of 3+ dims are stacks of matrices with broadcast batch dims."""

    __slots__ = ()
    array_rule = True

    def compute(self, a: NDArray, b: NDArray):
        if a.ndim < 2 or b.ndim < 2:
            raise ValueError(f"matmul: both inputs need at least 2 dimensions, got "
                             f"{a.shape} @ {b.shape}")
        if a.shape[-1] != b.shape[-2]:
            raise ValueError(f"matmul: inner dimensions differ: {a.shape} @ {b.shape}")
        if a.ndim > 2 or b.ndim > 2:
            try:
                np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
            except ValueError:
                raise ValueError(f"matmul: batch dimensions cannot be broadcast: "
                                 f"{a.shape} @ {b.shape}") from None
        if a.dtype != b.dtype:
            raise TypeError(f"matmul: dtypes differ: {a.dtype} @ {b.dtype}")
        return a @ b

    def gradient(self, out_grad, node):
        a, b = node.inputs
        return (reduce_to_shape(out_grad @ b.transpose(), a.shape),
                reduce_to_shape(a.transpose() @ out_grad, b.shape))



def matmul(a, b):
    return MatMul()(a, b)


# ---- reductions -------------------------------------------------------------------------------
def keepdims_shape(shape, axes):
    """`shape` with the (normalized) `axes` kept as 1s: the shape of a keepdims reduction."""
    if axes is None:
        return (1,) * len(shape)
    return tuple(1 if i in axes else n for i, n in enumerate(shape))


class Summation(TensorOp):
    """Sum over `axes` (int, tuple or None for all); reduced axes are dropped."""

    __slots__ = ("axes", "keepdims")
    array_rule = True

    def __init__(self, axes=None, keepdims=False):
        self.axes = axes
        self.keepdims = keepdims

    def compute(self, a: NDArray):
        axes = normalize_axes("summation", self.axes, a.ndim)
        return a.sum(axis=axes, keepdims=self.keepdims)

    def gradient(self, out_grad, node):
        shape = node.inputs[0].shape
        axes = normalize_axes("summation", self.axes, len(shape))
        if not self.keepdims:
            out_grad = out_grad.reshape(keepdims_shape(shape, axes))
        return out_grad.broadcast_to(shape)



def summation(a, axes=None, keepdims=False):
    return Summation(axes, keepdims)(a)


def mean(a, axes=None, keepdims=False):
    """The mean over `axes` (all when None)."""
    shape = a.shape
    norm = normalize_axes("mean", axes, len(shape))
    count = int(np.prod(shape)) if norm is None else int(np.prod([shape[i] for i in norm]))
    return summation(a, axes, keepdims) / count


class Max(TensorOp):
    """Maximum over `axes`; the gradient is shared equally among tied maxima."""

    __slots__ = ("axes", "keepdims")
    array_rule = True

    def __init__(self, axes=None, keepdims=False):
        self.axes = axes
        self.keepdims = keepdims

    def compute(self, a: NDArray):
        axes = normalize_axes("max", self.axes, a.ndim)
        if a.size == 0:
            raise ValueError(f"max: cannot reduce an empty tensor of shape {a.shape}")
        return a.max(axis=axes, keepdims=self.keepdims)

    def gradient(self, out_grad, node):
        a = node.inputs[0]
        shape = a.shape
        kshape = keepdims_shape(shape, normalize_axes("max", self.axes, len(shape)))
        mask = a >= node.reshape(kshape).broadcast_to(shape)  # the maxima (a constant)
        mask = mask / mask.sum(self.axes, keepdims=True).broadcast_to(shape)
        g = out_grad if self.keepdims else out_grad.reshape(kshape)
        return g.broadcast_to(shape) * mask


def max(a, axes=None, keepdims=False):  # noqa: A001 (course/PyTorch name)
    return Max(axes, keepdims)(a)


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
