"""Ops over tuples of tensors: make_tuple, tuple_get_item, stack and split."""
from __future__ import annotations

from ..autograd import NDArray, Tensor, TensorOp, TensorTupleOp
from ..backend_ndarray import stack as nd_stack


class MakeTensorTuple(TensorTupleOp):
    __slots__ = ()
    array_rule = True

    def compute(self, *args: NDArray):
        return tuple(args)

    def gradient(self, out_grad, node):
        return tuple(out_grad[i] for i in range(len(out_grad)))


def make_tuple(*args):
    return MakeTensorTuple()(*args)


class TupleGetItem(TensorOp):
    __slots__ = ("index",)
    array_rule = True

    def __init__(self, index: int):
        self.index = index

    def __call__(self, a, fold_const=True):
        if isinstance(a, tuple):  # a tuple of NDArrays (a rule on the fast path)
            return a[self.index]
        # Indexing a tuple made by make_tuple returns the original tensor, as the course does.
        if fold_const and isinstance(a.op, MakeTensorTuple):
            return a.inputs[self.index]
        return Tensor.make_from_op(self, (a,))

    def compute(self, a: tuple):
        return a[self.index]

    def gradient(self, out_grad, node):
        graph = isinstance(out_grad, Tensor)
        src = node.inputs[0]  # a TensorTuple, or on the fast path the tuple of its arrays
        parts = []
        for i, value in enumerate(src if isinstance(src, tuple) else src.realize_cached_data()):
            if i == self.index:
                parts.append(out_grad)
            else:
                zeros = value.device.zeros(value.shape, value.dtype)
                parts.append(Tensor.make_const(zeros) if graph else zeros)
        return (make_tuple(*parts),)  # one partial: a tuple for the tuple-valued input


def tuple_get_item(value, index):
    return TupleGetItem(index)(value)


class Stack(TensorOp):
    """Stack same-shape tensors along a new axis `axis`; input is one TensorTuple."""

    __slots__ = ("axis",)
    array_rule = True

    def __init__(self, axis: int):
        self.axis = axis

    def compute(self, args: tuple):
        if not args:
            raise ValueError("stack: need at least one tensor")
        shape = args[0].shape
        for i, a in enumerate(args):
            if a.shape != shape:
                raise ValueError(f"stack: all tensors must have the same shape; tensor 0 has "
                                 f"{shape}, tensor {i} has {a.shape}")
        if not -len(shape) - 1 <= self.axis <= len(shape):
            raise ValueError(f"stack: axis {self.axis} out of range for {len(shape) + 1} "
                             f"dimensions")
        return nd_stack(list(args), axis=self.axis)

    def gradient(self, out_grad, node):
        return (split(out_grad, self.axis),)  # one partial: a tuple for the one input


def stack(args, axis):
    return Stack(axis)(make_tuple(*args))


class Split(TensorTupleOp):
    """The inverse of stack: the slices of `a` along `axis`, that axis removed."""

    __slots__ = ("axis",)
    array_rule = True

    def __init__(self, axis: int):
        self.axis = axis

    def compute(self, a: NDArray):
        if not -a.ndim <= self.axis < a.ndim:
            raise ValueError(f"split: axis {self.axis} out of range for shape {a.shape}")
        axis = self.axis % a.ndim
        lead = (slice(None),) * axis
        return tuple(a.select(lead + (i,)) for i in range(a.shape[axis]))

    def gradient(self, out_grad, node):
        return stack(list(out_grad), self.axis)


def split(a, axis):
    return Split(axis)(a)
