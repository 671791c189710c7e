"""Normalization ops: standardization over some axes, and layer norm / training batch norm
with their affine transform, each fused into one op.

`Standardize` is (x - mean) / sqrt(var + eps) over `axes` (GroupNorm, InstanceNorm).
`LayerNorm` and `BatchNorm` add the scale and shift and call the device's fused kernels
(`Device.layer_norm_fwd/bwd`, `batch_norm_fwd/bwd`: one CuPy kernel each on cuda(), a
composition over NumPy on cpu()); they keep the forward's mean and 1/std for the backward, so
neither pass computes the statistics twice. `gradient` is built from ops as a function of x
(exact to every order); `gradient_nd` is the fused formula
dx = rstd * (dxh - mean(dxh) - xh * mean(dxh * xh)), dxh = g * weight, on native arrays.
"""
from __future__ import annotations

import numpy as np

from ..autograd import NDArray, TensorOp
from .ops_mathematic import broadcast_to, normalize_axes, reshape, summation


def _count(shape, axes):
    return int(np.prod([shape[i] for i in axes]))


class Standardize(TensorOp):
    """(x - mean(x)) / sqrt(var(x) + eps) with mean and biased variance over `axes`."""

    __slots__ = ("axes", "eps")

    def __init__(self, axes=-1, eps: float = 1e-5):
        self.axes = axes
        self.eps = float(eps)

    def _stats(self, x: NDArray):
        axes = normalize_axes("standardize", self.axes, x.ndim)
        if axes is None:
            axes = tuple(range(x.ndim))
        xn = x.native
        mean = xn.mean(axis=axes, keepdims=True)
        xc = xn - mean
        var = (xc * xc).mean(axis=axes, keepdims=True)
        inv = 1.0 / x.device.xp.sqrt(var + self.eps)
        return axes, xc, inv.astype(xn.dtype, copy=False)

    def compute(self, x: NDArray):
        if x.size == 0:
            raise ValueError(f"standardize: empty input of shape {x.shape}")
        _, xc, inv = self._stats(x)
        return NDArray._wrap(xc * inv, x.device)

    def gradient(self, out_grad, node):
        x = node.inputs[0]
        shape = x.shape
        axes = normalize_axes("standardize", self.axes, len(shape))
        axes = tuple(range(len(shape))) if axes is None else axes
        n = _count(shape, axes)

        def mean_b(t):
            return broadcast_to(summation(t, axes, keepdims=True) / n, shape)

        return (_standardize_grad(x, out_grad, axes, self.eps),)

    def gradient_nd(self, g: NDArray, node):
        axes, _, inv = self._stats(node.inputs[0].cached_data)
        y = node.cached_data.native
        gn = g.native
        dx = inv * (gn - gn.mean(axis=axes, keepdims=True)
                    - y * (gn * y).mean(axis=axes, keepdims=True))
        return (NDArray._wrap(dx, g.device),)


def standardize(x, axes=-1, eps=1e-5):
    return Standardize(axes, eps)(x)


def _standardize_grad(x, g, axes, eps):
    """d/dx of sum(g * standardize(x)) over `axes`, built from ops (differentiable again)."""
    shape = x.shape
    n = _count(shape, axes)

    def mean_b(t):
        return broadcast_to(summation(t, axes, keepdims=True) / n, shape)

    xc = x - mean_b(x)
    inv = broadcast_to((summation(xc * xc, axes, keepdims=True) / n + eps) ** -0.5, shape)
    y = xc * inv
    return inv * (g - mean_b(g) - y * mean_b(g * y))


class _AffineNorm(TensorOp):
    """Shared by LayerNorm and BatchNorm: inputs (x,) or (x, weight, bias), statistics over
    `axes`, weight and bias of the shape left after reducing them (broadcast as `keep`)."""

    __slots__ = ("eps", "stats")

    def _axes(self, ndim):
        """The axes the statistics are taken over."""
        raise NotImplementedError

    def _param_axes(self, ndim):
        """The axes weight and bias are broadcast along (their gradients sum over these)."""
        raise NotImplementedError

    def _backward(self, dev, dy, x, w):
        """(dx, dw, db) on native arrays from the device's fused backward and `self.stats`."""
        raise NotImplementedError

    def gradient_nd(self, g: NDArray, node):
        x = node.inputs[0].cached_data
        dev = x.device
        if len(node.inputs) == 1:
            return (NDArray._wrap(self._backward(dev, g.native, x.native, None)[0], dev),)
        w, b = node.inputs[1].cached_data, node.inputs[2].cached_data
        dx, dw, db = self._backward(dev, g.native, x.native, w.native.reshape(-1))
        return (NDArray._wrap(dx, dev), NDArray._wrap(dw.reshape(w.shape), dev),
                NDArray._wrap(db.reshape(b.shape), dev))

    def gradient(self, out_grad, node):
        x = node.inputs[0]
        axes = self._axes(len(x.shape))
        if len(node.inputs) == 1:
            return (_standardize_grad(x, out_grad, axes, self.eps),)
        w = node.inputs[1]
        p_axes = self._param_axes(len(x.shape))
        keep = tuple(1 if i in p_axes else n for i, n in enumerate(x.shape))
        w_b = broadcast_to(reshape(w, keep), x.shape)
        dx = _standardize_grad(x, out_grad * w_b, axes, self.eps)
        xh = standardize(x, axes, self.eps)
        dw = reshape(summation(out_grad * xh, p_axes), w.shape)
        db = reshape(summation(out_grad, p_axes), node.inputs[2].shape)
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
        dev = x.device
        y, mean, rstd = dev.layer_norm_fwd(
            x.native, None if weight is None else weight.native.reshape(d),
            None if bias is None else bias.native.reshape(d), self.eps)
        self.stats = (mean, rstd)
        return NDArray._wrap(y, dev)

    def _backward(self, dev, dy, x, w):
        return dev.layer_norm_bwd(dy, x, *self.stats, w)


class BatchNorm(_AffineNorm):
    """Training-mode batch norm: statistics over `axes` of x ((0,) for (N, C), (0, 2, 3) for
    NCHW), times weight plus bias of the channel shape (both given or both absent). The running
    statistics (native arrays of the channel shape, or None) are updated in place by the
    forward, with the biased batch variance (course rule)."""

    __slots__ = ("axes", "running_mean", "running_var", "momentum")

    def __init__(self, axes=(0,), eps: float = 1e-5, running_mean=None, running_var=None,
                 momentum: float = 0.1):
        self.axes = tuple(axes)
        self.eps = float(eps)
        self.running_mean, self.running_var = running_mean, running_var
        self.momentum = momentum
        self.stats = None

    def _axes(self, ndim):
        return self.axes

    _param_axes = _axes

    def compute(self, x: NDArray, weight: NDArray = None, bias: NDArray = None):
        axes = normalize_axes("batch_norm", self.axes, x.ndim)
        if not axes or _count(x.shape, axes) == 0:
            raise ValueError(f"batch_norm: nothing to average over axes {self.axes} of input "
                             f"{x.shape}")
        self.axes = axes
        chan = tuple(n for i, n in enumerate(x.shape) if i not in axes)
        c = _count(x.shape, [i for i in range(x.ndim) if i not in axes])
        if weight is not None and (weight.size != c or bias.size != c):
            raise ValueError(f"batch_norm: weight {weight.shape} and bias {bias.shape} must "
                             f"have the {chan} channel shape's {c} elements for input of "
                             f"shape {x.shape} over axes {axes}")
        dev = x.device
        y, mean, rstd = dev.batch_norm_fwd(
            x.native, None if weight is None else weight.native.reshape(-1),
            None if bias is None else bias.native.reshape(-1), self.eps, self.running_mean,
            self.running_var, self.momentum, axes)
        self.running_mean = self.running_var = None  # updated once; the op holds no buffers
        self.stats = (mean, rstd)
        return NDArray._wrap(y, dev)

    def _backward(self, dev, dy, x, w):
        return dev.batch_norm_bwd(dy, x, *self.stats, w, self.axes)


def layer_norm(x, weight=None, bias=None, eps=1e-5):
    """Fused layer norm over the last axis; `weight` and `bias` (D,) both or neither."""
    if (weight is None) != (bias is None):
        raise ValueError("layer_norm: pass weight and bias together (or neither)")
    op = LayerNorm(eps)
    return op(x) if weight is None else op(x, weight, bias)


def batch_norm_train(x, weight=None, bias=None, axes=(0,), eps=1e-5, running_mean=None,
                     running_var=None, momentum=0.1):
    """Fused training-mode batch norm (see `BatchNorm`); running stats are native arrays."""
    if (weight is None) != (bias is None):
        raise ValueError("batch_norm: pass weight and bias together (or neither)")
    op = BatchNorm(axes, eps, running_mean, running_var, momentum)
    return op(x) if weight is None else op(x, weight, bias)
