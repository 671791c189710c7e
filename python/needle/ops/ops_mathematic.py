"""Elementwise, scalar, matmul and reduction ops: compute on NDArrays, one gradient rule each.

Binary elementwise ops broadcast as NumPy does (and as PyTorch does); their gradients are
reduced back to each input's shape by `reduce_to_shape` (ops_shape.py), the one helper for that.
"""
from __future__ import annotations

import math

import numpy as np

from ..autograd import NDArray, Tensor, TensorOp
from .ops_shape import (  # noqa: F401  (re-exported: the course's ops_mathematic has them)
    BroadcastTo, Permute, Reshape, ToDevice, Transpose, _broadcast_shape, broadcast_to,
    keepdims_shape, normalize_axes, permute, promote_pair, reduce_to_shape, reshape, to_device,
    transpose,
)


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


def _check_same_device(op: str, a: NDArray, b: NDArray) -> None:
    if a.device != b.device:
        raise ValueError(f"{op}: inputs are on different devices, {a.device} and {b.device}")


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
        try:
            return a + b
        except ValueError:  # say which shapes, when they were the fault
            _broadcast_shape("add", a.shape, b.shape)
            raise

    def gradient(self, out_grad, node):
        a, b = node.inputs
        shape = out_grad.shape
        if a.shape == shape and b.shape == shape:  # no broadcast (most calls): nothing to sum
            return out_grad, out_grad
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
        try:
            return a * b
        except ValueError:
            _broadcast_shape("multiply", a.shape, b.shape)
            raise

    def gradient(self, out_grad, node):
        a, b = node.inputs
        shape = out_grad.shape
        if a.shape == shape and b.shape == shape:  # no broadcast (most calls): nothing to sum
            return out_grad * b, out_grad * a
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
        try:
            return a ** b
        except ValueError:
            _broadcast_shape("power", a.shape, b.shape)
            raise

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
        try:
            return a / b
        except ValueError:
            _broadcast_shape("divide", a.shape, b.shape)
            raise

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
        try:
            return a.maximum(b)
        except ValueError:
            _broadcast_shape("maximum", a.shape, b.shape)
            raise

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
        return a.device.relu(a)

    def gradient(self, out_grad, node):
        return relu_grad(out_grad, node)


class ReLUGrad(TensorOp):
    """g where y > 0, else 0: ReLU's backward (one kernel) from its output y. Its own
    derivative in g is the same mask; in y it is zero wherever it exists."""

    __slots__ = ()
    array_rule = True

    def compute(self, g: NDArray, y: NDArray):
        return g.device.relu_grad(g, y)

    def gradient(self, out_grad, node):
        return relu_grad(out_grad, node.inputs[1]), None


def relu(a):
    return ReLU()(a)


_RELU_GRAD = ReLUGrad()


def relu_grad(g, y):
    return _RELU_GRAD(g, y)


class Tanh(TensorOp):
    __slots__ = ()
    array_rule = True

    def compute(self, a: NDArray):
        return a.tanh()

    def gradient(self, out_grad, node):
        return _TANH_GRAD(out_grad, node)


class TanhGrad(TensorOp):
    """g (1 - y^2): tanh's backward (one kernel) from its output y. Its own derivatives:
    (1 - y^2) in g, -2 g y in y."""

    __slots__ = ()
    array_rule = True

    def compute(self, g: NDArray, y: NDArray):
        return g.device.tanh_grad(g, y)

    def gradient(self, out_grad, node):
        g, y = node.inputs
        return tanh_grad(out_grad, y), out_grad * g * y * -2.0


_TANH_GRAD = TanhGrad()  # stateless: one instance serves every call


def tanh_grad(g, y):
    return _TANH_GRAD(g, y)



def tanh(a):
    return Tanh()(a)


class Erf(TensorOp):
    """The error function erf(a) = 2/sqrt(pi) int_0^a exp(-t^2) dt (exact GELU needs it)."""

    __slots__ = ()
    array_rule = True

    def compute(self, a: NDArray):
        return a.erf()

    def gradient(self, out_grad, node):
        a = node.inputs[0]
        return out_grad * (exp(-(a * a)) * (2.0 / math.sqrt(math.pi)))


def erf(a):
    return Erf()(a)


class Sigmoid(TensorOp):
    """1 / (1 + exp(-x)), computed as (1 + tanh(x/2)) / 2 so it never overflows."""

    __slots__ = ()
    array_rule = True

    def compute(self, a: NDArray):
        return a.sigmoid()

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
        if a.dtype != b.dtype:  # promote as the elementwise ops do (float32 @ float64: float64)
            a, b = promote_pair(a, b)
        return a @ b

    def gradient(self, out_grad, node):
        a, b = node.inputs
        return (reduce_to_shape(out_grad @ b.transpose(), a.shape),
                reduce_to_shape(a.transpose() @ out_grad, b.shape))



def matmul(a, b):
    return MatMul()(a, b)


# ---- reductions -------------------------------------------------------------------------------
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
