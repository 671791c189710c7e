"""Normalization ops: standardization over some axes, and layer norm / training batch norm
with their affine transform, each fused into one op.

`Standardize` is (x - mean) / sqrt(var + eps) over `axes` (GroupNorm, InstanceNorm), with one
gradient rule for both backward paths. `LayerNorm` and `BatchNorm` add the scale and shift
and call the device's fused kernels (`Device.layer_norm_fwd/bwd`, `batch_norm_fwd/bwd`: one
CuPy kernel each on cuda(), a composition over NumPy on cpu()); they keep the forward's mean
and 1/std for the backward, so neither pass computes the statistics twice. Their composed
gradient is built from ops as a function of x (exact to every order).
"""
from __future__ import annotations

import math

from ..autograd import NDArray, TensorOp
from .ops_fused import FusedOp
from .ops_shape import broadcast_to, keepdims_shape, normalize_axes, reshape
from .ops_mathematic import summation


def _count(shape, axes):
    return math.prod(shape[i] for i in axes)


def _all_axes(op: str, axes, ndim: int):
    axes = normalize_axes(op, axes, ndim)
    return tuple(range(ndim)) if axes is None else axes


class Standardize(TensorOp):
    """(x - mean(x)) / sqrt(var(x) + eps) with mean and biased variance over `axes`."""

    __slots__ = ("axes", "eps")
    array_rule = True

    def __init__(self, axes=-1, eps: float = 1e-5):
        self.axes = axes
        self.eps = float(eps)

    def compute(self, x: NDArray):
        if x.size == 0:
            raise ValueError(f"standardize: empty input of shape {x.shape}")
        axes = _all_axes("standardize", self.axes, x.ndim)
        xc = x - x.mean(axes, keepdims=True).broadcast_to(x.shape)
        var = (xc * xc).mean(axes, keepdims=True)
        return xc * ((var + self.eps) ** -0.5).broadcast_to(x.shape)

    def gradient(self, out_grad, node):
        x = node.inputs[0]
        axes = _all_axes("standardize", self.axes, len(x.shape))
        return _standardize_grad(x, out_grad, axes, self.eps)


def standardize(x, axes=-1, eps=1e-5):
    return Standardize(axes, eps)(x)


def _standardize_grad(x, g, axes, eps):
    """d/dx of sum(g * standardize(x)) over `axes`, built from ops (differentiable again;
    Tensors or NDArrays alike)."""
    shape = x.shape
    n = _count(shape, axes)

    def mean_b(t):
        return broadcast_to(summation(t, axes, keepdims=True) / n, shape)

    xc = x - mean_b(x)
    inv = broadcast_to((summation(xc * xc, axes, keepdims=True) / n + eps) ** -0.5, shape)
    y = xc * inv
    return inv * (g - mean_b(g) - y * mean_b(g * y))


class _AffineNorm(FusedOp):
    """Shared by LayerNorm and BatchNorm: inputs (x,) or (x, weight, bias), statistics over
    `axes`, weight and bias of the shape left after reducing them (broadcast as `keep`)."""

    __slots__ = ("eps", "stats")

    def _axes(self, ndim):
        """The axes the statistics are taken over."""
        raise NotImplementedError

    def _param_axes(self, ndim):
        """The axes weight and bias are broadcast along (their gradients sum over these)."""
        raise NotImplementedError

    def _backward(self, dy, x, w):
        """(dx, dw, db) NDArrays from the device's fused backward and `self.stats`."""
        raise NotImplementedError

    def backward_arrays(self, g, inputs, needs):
        x = inputs[0]
        if len(inputs) == 1:
            return (self._backward(g, x, None)[0],)
        w, b = inputs[1], inputs[2]
        dx, dw, db = self._backward(g, x, w.reshape((-1,)))
        return dx, dw.reshape(w.shape), db.reshape(b.shape)

    def gradient_composed(self, out_grad, x, w=None, b=None):
        axes = self._axes(len(x.shape))
        if w is None:
            return (_standardize_grad(x, out_grad, axes, self.eps),)
        p_axes = self._param_axes(len(x.shape))
        keep = keepdims_shape(x.shape, p_axes)
        w_b = broadcast_to(reshape(w, keep), x.shape)
        dx = _standardize_grad(x, out_grad * w_b, axes, self.eps)
        xh = standardize(x, axes, self.eps)
        dw = reshape(summation(out_grad * xh, p_axes), w.shape)
        db = reshape(summation(out_grad, p_axes), b.shape)
        return dx, dw, db


class LayerNorm(_AffineNorm):
    """(x - mean) / sqrt(var + eps) * weight + bias over the last axis of x (..., D);
    weight and bias of D elements ((D,) or (1, D)), both given or both absent."""

    __slots__ = ()

    def __init__(self, eps: float = 1e-5):
        self.eps = float(eps)
        self.stats = None

    def _axes(self, ndim):
        return (ndim - 1,)

    def _param_axes(self, ndim):
        return tuple(range(ndim - 1))

    def compute(self, x: NDArray, weight: NDArray = None, bias: NDArray = None):
        if x.ndim == 0 or x.shape[-1] == 0:
            raise ValueError(f"layer_norm: input of shape {x.shape} has no last axis to "
                             f"normalize")
        d = x.shape[-1]
        if weight is not None and (weight.size != d or bias.size != d):
            raise ValueError(f"layer_norm: weight {weight.shape} and bias {bias.shape} must "
                             f"have {d} elements for input of shape {x.shape}")
        y, mean, rstd = x.device.layer_norm_fwd(
            x, None if weight is None else weight.reshape((d,)),
            None if bias is None else bias.reshape((d,)), self.eps)
        self.stats = (mean, rstd)
        return y

    def _backward(self, dy, x, w):
        return x.device.layer_norm_bwd(dy, x, *self.stats, w)


class BatchNorm(_AffineNorm):
    """Training-mode batch norm: statistics over `axes` of x ((0,) for (N, C), (0, 2, 3) for
    NCHW), times weight plus bias of the channel shape (both given or both absent).

    The op updates nothing: after the forward, `batch_mean` and `batch_var` (the biased
    variance, course rule) hold the batch statistics for the caller's running averages."""

    __slots__ = ("axes",)

    def __init__(self, axes=(0,), eps: float = 1e-5):
        self.axes = tuple(axes)
        self.eps = float(eps)
        self.stats = None

    def _axes(self, ndim):
        return self.axes

    _param_axes = _axes

    @property
    def batch_mean(self) -> NDArray:
        return self.stats[0]

    @property
    def batch_var(self) -> NDArray:
        return self.stats[2]

    def compute(self, x: NDArray, weight: NDArray = None, bias: NDArray = None):
        axes = normalize_axes("batch_norm", self.axes, x.ndim)
        if not axes or _count(x.shape, axes) == 0:
            raise ValueError(f"batch_norm: nothing to average over axes {self.axes} of input "
                             f"{x.shape}")
        self.axes = axes
        chan = tuple(n for i, n in enumerate(x.shape) if i not in axes)
        c = math.prod(chan)
        if weight is not None and (weight.size != c or bias.size != c):
            raise ValueError(f"batch_norm: weight {weight.shape} and bias {bias.shape} must "
                             f"have the {chan} channel shape's {c} elements for input of "
                             f"shape {x.shape} over axes {axes}")
        y, mean, rstd, var = x.device.batch_norm_fwd(
            x, None if weight is None else weight.reshape((-1,)),
            None if bias is None else bias.reshape((-1,)), self.eps, axes)
        self.stats = (mean, rstd, var)
        return y

    def _backward(self, dy, x, w):
        mean, rstd, _ = self.stats
        return x.device.batch_norm_bwd(dy, x, mean, rstd, w, self.axes)


def layer_norm(x, weight=None, bias=None, eps=1e-5):
    """Fused layer norm over the last axis; `weight` and `bias` (D,) both or neither."""
    if (weight is None) != (bias is None):
        raise ValueError("layer_norm: pass weight and bias together (or neither)")
    op = LayerNorm(eps)
    return op(x) if weight is None else op(x, weight, bias)


def batch_norm_train(x, weight=None, bias=None, axes=(0,), eps=1e-5, running_mean=None,
                     running_var=None, momentum=0.1):
    """Fused training-mode batch norm (see `BatchNorm`). When given, the running statistics
    (Tensors of the channel shape) are updated in place, outside the graph, from the
    statistics the op exposes: r = (1 - momentum) * r + momentum * batch_stat."""
    if (weight is None) != (bias is None):
        raise ValueError("batch_norm: pass weight and bias together (or neither)")
    op = BatchNorm(axes, eps)
    y = op(x) if weight is None else op(x, weight, bias)
    for running, stat in ((running_mean, op.batch_mean), (running_var, op.batch_var)):
        if running is not None:
            r = running.realize_cached_data()
            r *= 1 - momentum
            r += stat.reshape(r.shape) * momentum
    return y
