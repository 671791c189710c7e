"""Tensors, ops and reverse-mode automatic differentiation by extending the graph.

A `Tensor` is a node of the computational graph: the `op` that made it, its `inputs` and its
value `cached_data` (an NDArray). `backward()` walks the graph in reverse topological order
and *assigns* `.grad` on every node it reaches; the gradients are Tensors built from ops, so
they can be differentiated again (course semantics). `backward(create_graph=False)` is the fast
path our trainer uses: the same gradient ops run, but record no graph.
"""
from __future__ import annotations

import weakref
from contextlib import contextmanager
from typing import Optional, Tuple, Union

import numpy as np

from . import backend_ndarray as nd
from .backend_ndarray import ArrayNode, NDArray
from .graph import (  # noqa: F401  (find_topo_sort: the course's needle.autograd name)
    _TupleNode, check_finite as _check_finite, find_topo_sort, reverse_pass, reverse_pass_fast,
)
from .tensor_api import TensorHabits, torch_axes
from .grad_mode import (  # noqa: F401  (the course reaches them as needle.autograd.*)
    MODE as _MODE, detect_anomaly, enable_grad, is_grad_enabled, no_grad, set_detect_anomaly,
)

# Course globals: LAZY_MODE builds the graph without computing; TENSOR_COUNTER counts live
# Tensors (hw2 checks that training loops do not keep graphs alive).
LAZY_MODE = False
TENSOR_COUNTER = 0


NDArrayLike = NDArray


class Op:
    """An operator: `compute` on NDArrays, `gradient` as Tensors built from ops."""

    __slots__ = ()

    def __call__(self, *args):
        raise NotImplementedError()

    def compute(self, *args: NDArray):
        """The forward value from the inputs' NDArrays (a pure function of them and `self`)."""
        raise NotImplementedError()

    def gradient(self, out_grad: "Value", node: "Value") -> Union["Value", Tuple["Value", ...]]:
        """Partial adjoints for each input, given the adjoint of the output."""
        raise NotImplementedError()

    # True when `gradient` is written against the names Tensor and NDArray share (`*`, `@`,
    # `sum`, `reshape`, ..., and op functions, which compute at once when given NDArrays), so
    # the fast backward runs the same rule on NDArrays. needle's own ops set it; an op whose
    # rule needs Tensors keeps False and the fast backward wraps its arrays in constants.
    array_rule = False

    def gradient_as_tuple(self, out_grad: "Value", node: "Value") -> Tuple["Value", ...]:
        output = self.gradient(out_grad, node)
        if isinstance(output, tuple):
            return output
        if isinstance(output, list):
            return tuple(output)
        return (output,)

    def __repr__(self):
        return type(self).__name__


class TensorOp(Op):
    """An op whose value is a single Tensor. Called on NDArrays (a gradient rule on the fast
    path) it returns `compute` of them: no node is made."""

    __slots__ = ()

    def __call__(self, *args):
        if args and type(args[0]) in _ARRAY_VALUES:
            return self.compute(*args)
        return Tensor.make_from_op(self, args)


class TensorTupleOp(Op):
    """An op whose value is a TensorTuple (a tuple of NDArrays when called on NDArrays)."""

    __slots__ = ()

    def __call__(self, *args):
        if args and type(args[0]) in _ARRAY_VALUES:
            return self.compute(*args)
        return TensorTuple.make_from_op(self, args)


# the types of the values an op is called on in a fast backward (a set test is cheaper than
# isinstance with a tuple, and runs on every op call)
_ARRAY_VALUES = frozenset((NDArray, ArrayNode, tuple, _TupleNode))


class Value:
    """A node of the graph: the op that made it, its inputs, and its cached value."""

    __slots__ = ("op", "inputs", "cached_data", "requires_grad", "grad", "__weakref__")
    # a leaf the gradient graphs kept on `.grad` hold weakly (see `_weak_copies`); False for
    # nn.Parameter, which outlives its gradients
    weak_in_grad_graph = True

    def realize_cached_data(self):
        data = self.cached_data
        if data is None:
            data = self.op.compute(*[x.realize_cached_data() for x in self.inputs])
            if _MODE.detect_anomaly:
                _check_finite(self.op, data)
            self.cached_data = data
        return data

    def is_leaf(self) -> bool:
        return self.op is None

    @property
    def needs_input_grad(self) -> tuple:
        """For each input, whether it needs a gradient (an op's rule may skip the others)."""
        return tuple(x.requires_grad for x in self.inputs)

    def __del__(self):
        global TENSOR_COUNTER
        TENSOR_COUNTER -= 1

    def _init(self, op, inputs, *, num_outputs=1, cached_data=None, requires_grad=None):
        global TENSOR_COUNTER
        TENSOR_COUNTER += 1
        if requires_grad is None:
            requires_grad = _MODE.grad_enabled and any(x.requires_grad for x in inputs)
        self.op = op
        self.inputs = inputs
        self.cached_data = cached_data
        self.requires_grad = requires_grad
        self.grad = None

    @classmethod
    def make_const(cls, data, *, requires_grad=False):
        value = cls.__new__(cls)
        value._init(None, (), cached_data=data, requires_grad=requires_grad)
        return value

    @classmethod
    def make_from_op(cls, op: Op, inputs):
        """The node for `op(*inputs)`, computed now unless lazy mode is on.

        Outputs of ops whose inputs need no gradient (or made under `no_grad()`) are constants:
        they keep no reference to their inputs.
        """
        global TENSOR_COUNTER
        TENSOR_COUNTER += 1
        value = cls.__new__(cls)
        requires_grad = False
        if _MODE.grad_enabled:
            for x in inputs:
                if x.requires_grad:
                    requires_grad = True
                    break
        value.requires_grad = requires_grad
        value.grad = None
        if LAZY_MODE:
            value.op = op
            value.inputs = inputs
            value.cached_data = None
            return value
        n = len(inputs)
        if n == 2:
            a, b = inputs
            da, db = a.cached_data, b.cached_data
            data = op.compute(da if da is not None else a.realize_cached_data(),
                              db if db is not None else b.realize_cached_data())
        elif n == 1:
            data = inputs[0].cached_data
            data = op.compute(data if data is not None else inputs[0].realize_cached_data())
        else:
            data = op.compute(*[x.realize_cached_data() for x in inputs])
        if _MODE.detect_anomaly:
            _check_finite(op, data)
        value.cached_data = data
        if requires_grad:
            value.op = op
            value.inputs = inputs
        else:
            value.op = None
            value.inputs = ()
        return value


_OPS_CACHE = {}


def _tuple_get_item():
    """ops.tuple_get_item, imported once (ops imports this module)."""
    fn = _OPS_CACHE.get("tuple_get_item")
    if fn is None:
        from .ops import tuple_get_item as fn

        _OPS_CACHE["tuple_get_item"] = fn
    return fn


class TensorTuple(Value):
    """A tuple of tensors as one graph node (split, RNN states)."""

    __slots__ = ()

    def __len__(self):
        return len(self.realize_cached_data())

    def __getitem__(self, index: int):
        return _tuple_get_item()(self, index)

    def tuple(self):
        return tuple(self[i] for i in range(len(self)))

    def __iter__(self):
        return iter(self.tuple())

    def __repr__(self):
        return "needle.TensorTuple" + str(self.tuple())

    def __str__(self):
        return self.__repr__()

    def __add__(self, other):
        from .ops import make_tuple

        assert isinstance(other, TensorTuple) and len(self) == len(other)
        return make_tuple(*[self[i] + other[i] for i in range(len(self))])

    def detach(self) -> "TensorTuple":
        return TensorTuple.make_const(self.realize_cached_data())


def _value(x):
    """The NDArray of a Tensor; anything else as it is."""
    return x.realize_cached_data() if isinstance(x, Value) else x


def _to_ndarray(array, device, dtype) -> NDArray:
    """The NDArray for Tensor(array, device, dtype): shares storage only when nothing changes."""
    if isinstance(array, NDArray):
        if (device is None or device == array.device) and (dtype is None or array.dtype == dtype):
            return array
        return nd.array(array, dtype=dtype or array.dtype, device=device or array.device)
    if isinstance(array, np.ndarray):
        return NDArray(array, device=device, dtype=dtype)
    if isinstance(array, (np.generic,)):
        return NDArray(np.asarray(array), device=device, dtype=dtype)
    # lists, Python scalars, anything array-like: NumPy's dtype on the NumPy CPU device
    # (float64 for floats, as the course's numpy-backed Tensor), float32 on the others (the
    # course's float32 NDArray backend)
    if dtype is None and (device or nd.default_device()).name != "cpu":
        dtype = "float32"
    return NDArray(np.asarray(array, dtype=dtype), device=device)


class Tensor(Value, TensorHabits):
    """An n-dimensional array that records the ops applied to it, for differentiation.

    `Tensor(array, device=None, dtype=None, requires_grad=True)`: `array` is a NumPy array (its
    dtype is kept unless `dtype` is given), a nested list or scalar (NumPy's dtype on cpu(),
    float64 for floats, as the course; float32 on other devices), an NDArray or a Tensor. As
    in the course, `requires_grad` defaults to True.

    >>> x = Tensor([1.0, 2.0]); (x * x).sum().backward(); x.grad
    needle.Tensor([2. 4.], shape=(2,), dtype=float64, device=cpu(), requires_grad=True)
    """

    __slots__ = ()
    __array_ufunc__ = None  # `np_scalar * tensor` defers to Tensor.__rmul__ (stays in the graph)

    def __init__(self, array, *, device=None, dtype=None, requires_grad=True, **kwargs):
        if isinstance(array, Tensor):  # shares storage when device and dtype agree (course)
            data = _to_ndarray(array.realize_cached_data(), device, dtype)
        else:
            data = _to_ndarray(array, device, dtype)
        self._init(None, (), cached_data=data, requires_grad=requires_grad)

    @staticmethod
    def from_numpy(numpy_array, dtype=None):
        return Tensor.make_const(NDArray(numpy_array, dtype=dtype))

    # ---- value and metadata --------------------------------------------------------------
    @property
    def data(self) -> "Tensor":
        """A detached Tensor sharing this one's storage."""
        return self.detach()

    @data.setter
    def data(self, value: "Tensor"):
        if not isinstance(value, Tensor):
            raise TypeError(f"Tensor.data: expected a Tensor, got {type(value).__name__}")
        if value.dtype != self.dtype:
            raise TypeError(f"Tensor.data: dtype {value.dtype} does not match {self.dtype}")
        self.cached_data = value.realize_cached_data()

    def detach(self) -> "Tensor":
        return Tensor.make_const(self.realize_cached_data())

    @property
    def shape(self) -> tuple:
        return self.realize_cached_data().shape

    @property
    def dtype(self):
        return self.realize_cached_data().dtype

    @property
    def device(self):
        return self.realize_cached_data().device

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return self.realize_cached_data().size

    def numpy(self) -> np.ndarray:
        return self.realize_cached_data().numpy()

    def item(self):
        return self.numpy().item()

    def to(self, device) -> "Tensor":
        """This tensor's value on `device` (a differentiable copy when devices differ)."""
        if device == self.device:
            return self
        from .ops import to_device

        return to_device(self, device)

    def __array__(self, dtype=None, copy=None):
        a = self.numpy()
        return a if dtype is None else a.astype(dtype)

    def __len__(self):
        return self.shape[0]

    def __repr__(self):
        data = self.realize_cached_data()
        return (f"needle.Tensor({data}, shape={data.shape}, dtype={data.dtype}, "
                f"device={data.device}, requires_grad={bool(self.requires_grad)})")

    def __str__(self):
        return str(self.realize_cached_data())

    # ---- differentiation -----------------------------------------------------------------
    def backward(self, out_grad: Optional["Tensor"] = None, create_graph: bool = True):
        """Assign `.grad` on every node reached from this one.

        `out_grad` defaults to ones of this tensor's shape (non-scalar outputs are allowed).
        With `create_graph=False` the gradients are constants (faster; no second derivative).
        """
        if out_grad is None:
            data = self.realize_cached_data()
            out_grad = Tensor.make_const(data.device.ones(data.shape, dtype=data.dtype))
        compute_gradient_of_variables(self, out_grad, create_graph=create_graph)

    # ---- operators -------------------------------------------------------------------------
    def __add__(self, other):
        if isinstance(other, Tensor):
            return _FROM_OP(_ADD, (self, other))
        return _ops.AddScalar(other)(self)

    __radd__ = __add__

    def __sub__(self, other):
        if isinstance(other, Tensor):
            return _FROM_OP(_ADD, (self, _FROM_OP(_NEG, (other,))))
        return _ops.AddScalar(-other)(self)

    def __rsub__(self, other):
        return _ops.AddScalar(other)(_NEG(self))

    def __mul__(self, other):
        if isinstance(other, Tensor):
            return _FROM_OP(_MUL, (self, other))
        return _ops.MulScalar(other)(self)

    __rmul__ = __mul__

    def __truediv__(self, other):
        if isinstance(other, Tensor):
            return _FROM_OP(_DIV, (self, other))
        return _ops.DivScalar(other)(self)

    def __rtruediv__(self, other):
        return _ops.MulScalar(other)(_ops.PowerScalar(-1)(self))

    def __pow__(self, other):
        if isinstance(other, Tensor):
            return _POW(self, other)
        return _ops.PowerScalar(other)(self)

    def __rpow__(self, other):
        return _ops.ScalarPower(other)(self)

    def __neg__(self):
        return _NEG(self)

    def __matmul__(self, other):
        return _MATMUL(self, other)

    def __rmatmul__(self, other):
        return _MATMUL(other, self)

    def __getitem__(self, index):
        return _ops.getitem(self, index)

    # Comparisons give constant 0/1 Tensors of this dtype (as NDArray's do); they are masks,
    # not differentiable values. `==` keeps identity semantics (Tensors are graph nodes).
    def __gt__(self, other):
        return Tensor.make_const(self.realize_cached_data() > _value(other))

    def __ge__(self, other):
        return Tensor.make_const(self.realize_cached_data() >= _value(other))

    def __lt__(self, other):
        return Tensor.make_const(self.realize_cached_data() < _value(other))

    def __le__(self, other):
        return Tensor.make_const(self.realize_cached_data() <= _value(other))

    def matmul(self, other):
        return _MATMUL(self, other)

    def sum(self, axes=None, keepdims=False, *, dim=None, keepdim=None):
        axes, keepdims = torch_axes("sum", axes, keepdims, dim, keepdim)
        return _ops.summation(self, axes, keepdims=keepdims)

    def mean(self, axes=None, keepdims=False, *, dim=None, keepdim=None):
        axes, keepdims = torch_axes("mean", axes, keepdims, dim, keepdim)
        return _ops.mean(self, axes, keepdims=keepdims)

    def max(self, axes=None, keepdims=False, *, dim=None, keepdim=None):
        axes, keepdims = torch_axes("max", axes, keepdims, dim, keepdim)
        return _ops.max(self, axes, keepdims=keepdims)

    def broadcast_to(self, shape):
        return _ops.BroadcastTo(shape)(self)

    def reshape(self, *shape):
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = shape[0]
        return _ops.Reshape(shape)(self)

    def transpose(self, axes=None):
        return _ops.Transpose(axes)(self)

    def permute(self, *axes):
        if len(axes) == 1 and isinstance(axes[0], (tuple, list)):
            axes = axes[0]
        return _ops.Permute(axes)(self)

    def exp(self):
        return _ops.Exp()(self)

    def log(self):
        return _ops.Log()(self)

    def relu(self):
        return _ops.ReLU()(self)

    def tanh(self):
        return _ops.Tanh()(self)

    def sigmoid(self):
        return _ops.Sigmoid()(self)

    @property
    def T(self):  # noqa: N802 (PyTorch's name)
        return _ops.Transpose()(self)


def compute_gradient_of_variables(output_tensor: Value, out_grad: Value,
                                  create_graph: bool = True) -> None:
    """Reverse-mode AD: set `.grad` of every node reachable from `output_tensor`.

    With `create_graph=False` only leaves get `.grad` (constants), computed on NDArrays.
    """
    if create_graph and _MODE.grad_enabled:
        reverse_pass(output_tensor, out_grad, create_graph, assign=True,
                     rule_nodes=_weak_copies)
        return
    grads = reverse_pass_fast(output_tensor, out_grad.realize_cached_data())
    for node, g in grads.items():
        node.grad = Tensor.make_const(g)


class _WeakLeaf(TensorOp):
    """Identity: the op of a `_LeafAlias`."""
    __slots__ = ()
    array_rule = True

    def compute(self, a):
        return a

    def gradient(self, out_grad, node):
        return out_grad


_WEAK_LEAF = _WeakLeaf()


class _LeafAlias(Tensor):
    """A leaf as a kept gradient graph holds it (`_weak_copies`): its value, and the leaf as
    its one input by weak reference (identity while x lives, so `x.grad.backward()` reaches
    x; a constant once x is gone)."""
    __slots__ = ("_leaf",)

    @property
    def inputs(self):
        leaf = self._leaf()
        return () if leaf is None else (leaf,)


def _weak_copies(order) -> dict:
    """{node: the node its rule sees} for a graph backward's nodes (`order`, inputs first):
    leaves become `_LeafAlias`es, op nodes copies over copies. `x.grad` keeps the gradient
    graph, which holds what its rules saw; the forward nodes hold x, so x and its `.grad`
    would be a cycle that only the garbage collector frees (an input batch with the course's
    default requires_grad=True kept each step's activations alive). Copies hold x weakly."""
    global TENSOR_COUNTER
    if not any(n.op is None and n.requires_grad and n.weak_in_grad_graph for n in order):
        return None  # only parameters: they outlive their gradients (reset_grad frees them)
    seen = {}
    for node in order:
        op = node.op
        if type(node) is _LeafAlias:  # from an earlier backward: already weak
            seen[node] = node
            continue
        if op is None:
            if type(node) is TensorTuple:
                continue  # a tuple leaf (rare) keeps its strong reference
            copy = object.__new__(_LeafAlias)
            copy.op, copy._leaf = _WEAK_LEAF, weakref.ref(node)
        else:
            copy = object.__new__(type(node))
            copy.op, copy.inputs = op, tuple([seen.get(x, x) for x in node.inputs])
        copy.cached_data, copy.requires_grad, copy.grad = node.cached_data, True, None
        TENSOR_COUNTER += 1
        seen[node] = copy
    return seen


def gradients(output: Value, inputs, out_grad: Optional[Value] = None,
              create_graph: bool = True) -> list:
    """d(output)/d(input) contracted with `out_grad`, for each input; no `.grad` is touched.

    Inputs the output does not depend on get zeros.
    """
    if out_grad is None:
        data = output.realize_cached_data()
        out_grad = Tensor.make_const(data.device.ones(data.shape, dtype=data.dtype))
    grads = reverse_pass(output, out_grad, create_graph, assign=False)
    out = []
    for x in inputs:
        g = grads.get(x)
        if g is None:
            d = x.realize_cached_data()
            g = Tensor.make_const(d.device.zeros(d.shape, dtype=d.dtype))
        out.append(g)
    return out


def partials(outputs, cotangents, inputs, create_graph: bool = True) -> tuple:
    """The direct partial adjoints at `inputs` of `outputs` contracted with `cotangents`.

    The walk stops at `inputs`: when one input depends on another, each still gets only its
    own partial (what a gradient rule needs). None for an input the outputs do not reach."""
    grads = reverse_pass(list(outputs), list(cotangents), create_graph, assign=False,
                          stop=set(inputs))
    return tuple(grads.get(x) for x in inputs)


@contextmanager
def lazy_mode(enabled: bool = True):
    """Build graphs without computing; values are computed on first use."""
    global LAZY_MODE
    saved = LAZY_MODE
    LAZY_MODE = enabled
    try:
        yield
    finally:
        LAZY_MODE = saved


from . import ops as _ops  # noqa: E402  (ops import this module; bind after the classes exist)

# Stateless ops are shared instances: one less object per operator call.
_ADD, _MUL, _DIV = _ops.EWiseAdd(), _ops.EWiseMul(), _ops.EWiseDiv()
_FROM_OP = Tensor.make_from_op  # Tensor operators skip TensorOp.__call__'s NDArray test
_NEG = _ops.Negate()
_MATMUL = _ops.MatMul()
_POW = _ops.EWisePow()
