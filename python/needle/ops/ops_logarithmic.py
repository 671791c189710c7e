"""Numerically stable log-sum-exp family, fused into single ops with gradients built from ops.

Each op subtracts the maximum once, so logits of 1e10 are fine, and rows that are entirely
-inf give finite (zero) gradients instead of nan.
"""
from __future__ import annotations

from ..autograd import NDArray, Tensor, TensorOp
from .ops_fused import FusedOp
from .ops_mathematic import broadcast_to, keepdims_shape, normalize_axes, reshape, summation


def _stable_max(z: NDArray, axes) -> NDArray:
    """max over `axes` (keepdims), with +-inf maxima replaced by 0 so z - m stays finite."""
    m = z.max(axes, keepdims=True)
    if not m.isfinite():
        m = m.nonfinite_to(0.0)
    return m


class LogSumExp(TensorOp):
    """log(sum(exp(z))) over `axes` (int, tuple or None), reduced axes dropped."""

    __slots__ = ("axes", "keepdims")
    array_rule = True

    def __init__(self, axes=None, keepdims=False):
        self.axes = axes
        self.keepdims = keepdims

    def compute(self, z: NDArray):
        axes = normalize_axes("logsumexp", self.axes, z.ndim)
        m = _stable_max(z, axes)
        out = (z - m.broadcast_to(z.shape)).exp().sum(axis=axes, keepdims=True).log() + m
        return out if self.keepdims else out.reshape(
            tuple(n for i, n in enumerate(out.shape)
                  if not (axes is None or i in axes)))

    def gradient(self, out_grad, node):
        z = node.inputs[0]
        axes = normalize_axes("logsumexp", self.axes, len(z.shape))
        g = out_grad if self.keepdims else reshape(out_grad, keepdims_shape(z.shape, axes))
        return broadcast_to(g, z.shape) * Softmax(axes)(z)


def logsumexp(a, axes=None, keepdims=False):
    return LogSumExp(axes, keepdims)(a)


class Softmax(TensorOp):
    """exp(z) / sum(exp(z)) over `axes` (default: the last axis)."""

    __slots__ = ("axes",)
    array_rule = True

    def __init__(self, axes=-1):
        self.axes = axes

    def compute(self, z: NDArray):
        return z.device.softmax(z, normalize_axes("softmax", self.axes, z.ndim))

    def gradient(self, out_grad, node):
        axes = normalize_axes("softmax", self.axes, len(node.shape))
        inner = summation(out_grad * node, axes, keepdims=True)
        return node * (out_grad - broadcast_to(inner, node.shape))


def softmax(a, axes=-1):
    return Softmax(axes)(a)


class LogSoftmax(TensorOp):
    """z - logsumexp(z) over `axes` (default: the last axis; the course's 2-D case: axis 1)."""

    __slots__ = ("axes",)
    array_rule = True

    def __init__(self, axes=-1):
        self.axes = axes

    def compute(self, z: NDArray):
        axes = normalize_axes("logsoftmax", self.axes, z.ndim)
        shifted = z - _stable_max(z, axes).broadcast_to(z.shape)
        lse = shifted.exp().sum(axis=axes, keepdims=True).log()
        return shifted - lse.broadcast_to(z.shape)

    def gradient(self, out_grad, node):
        z = node.inputs[0]
        axes = normalize_axes("logsoftmax", self.axes, len(z.shape))
        total = broadcast_to(summation(out_grad, axes, keepdims=True), z.shape)
        return out_grad - Softmax(axes)(z) * total


def logsoftmax(a, axes=-1):
    return LogSoftmax(axes)(a)


class SoftmaxCrossEntropy(FusedOp):
    """Mean over the batch of logsumexp(z_i) - z_i[y_i]: logits (B, K), integer labels (B,).

    Runs the device's fused kernels (`Device.softmax_cross_entropy_fwd/bwd`), keeping the
    forward's per-row logsumexp for the backward; the composed gradient
    (softmax(z) - onehot(y)) / B is built from ops.
    """

    __slots__ = ("lse",)

    def __init__(self):
        self.lse = None

    def compute(self, z: NDArray, y: NDArray):
        if z.ndim != 2:
            raise ValueError(f"softmax_cross_entropy: logits must be (batch, classes), got "
                             f"shape {z.shape}")
        if y.shape != (z.shape[0],):
            raise ValueError(f"softmax_cross_entropy: labels of shape {y.shape} do not match "
                             f"logits of shape {z.shape}; expected ({z.shape[0]},)")
        labels = y.astype("int64")
        if labels.size:
            lo, hi = int(labels.min().item()), int(labels.max().item())
            if lo < 0 or hi >= z.shape[1]:
                raise ValueError(f"softmax_cross_entropy: labels must lie in [0, {z.shape[1]}),"
                                 f" got values from {lo} to {hi}")
        loss, self.lse = z.device.softmax_cross_entropy_fwd(z, labels)
        return loss

    def backward_arrays(self, g, inputs, needs):
        z, y = inputs
        return z.device.softmax_cross_entropy_bwd(z, y, self.lse, g), None

    def gradient_composed(self, out_grad, z, y):
        zd = z.realize_cached_data()
        onehot = Tensor.make_const(zd.device.one_hot(zd.shape[1], y.realize_cached_data(),
                                                     dtype=zd.dtype))
        scale = broadcast_to(reshape(out_grad / zd.shape[0], (1, 1)), zd.shape)
        return (Softmax(1)(z) - onehot) * scale, None


def softmax_cross_entropy(logits, labels):
    return SoftmaxCrossEntropy()(logits, labels)
