"""Standardization (x - mean) / sqrt(var + eps) over some axes, fused into one op.

The core of LayerNorm (last axis) and BatchNorm (batch axes). Forward is one pass of NumPy
reductions; `gradient` is built from ops as a function of x (exact to every order), and
`gradient_nd` is the fused formula dx = inv_std * (g - mean(g) - y * mean(g * y)) on NDArrays.
"""
from __future__ import annotations

import numpy as np

from ..autograd import NDArray, TensorOp
from .ops_mathematic import broadcast_to, normalize_axes, summation


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

        xc = x - mean_b(x)
        inv = broadcast_to((summation(xc * xc, axes, keepdims=True) / n + self.eps) ** -0.5,
                           shape)
        y = xc * inv
        return inv * (out_grad - mean_b(out_grad) - y * mean_b(out_grad * y))

    def gradient_nd(self, g: NDArray, node):
        axes, _, inv = self._stats(node.inputs[0].cached_data)
        y = node.cached_data.native
        gn = g.native
        dx = inv * (gn - gn.mean(axis=axes, keepdims=True)
                    - y * (gn * y).mean(axis=axes, keepdims=True))
        return (NDArray._wrap(dx, g.device),)


def standardize(x, axes=-1, eps=1e-5):
    return Standardize(axes, eps)(x)
