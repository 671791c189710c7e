"""The math of the layers, as functions of Tensors (modules hold state, these hold math)."""
from __future__ import annotations

import math

from .. import ops
from ..autograd import Tensor


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """x @ weight + bias; weight is (in, out) (course layout), bias (out,) or (1, out).

    One fused op (`ops.linear`) for inputs of 2 or more dimensions."""
    if x.shape[-1] != weight.shape[0]:
        raise ValueError(f"linear: input features {x.shape[-1]} do not match weight of shape "
                         f"{weight.shape} (in_features, out_features); input shape {x.shape}")
    if x.ndim >= 2 and weight.ndim == 2:
        return ops.linear(x, weight, bias)
    if x.ndim > 2:
        lead = x.shape[:-1]
        y = ops.matmul(ops.reshape(x, (-1, x.shape[-1])), weight)
        y = ops.reshape(y, lead + (weight.shape[1],))
    else:
        y = ops.matmul(x, weight)
    if bias is not None:
        y = y + bias  # broadcasts (1, out) or (out,)
    return y


def relu(x: Tensor) -> Tensor:
    return ops.relu(x)


def gelu(x: Tensor, approximate: str = "none") -> Tensor:
    """GELU as PyTorch's F.gelu: exact `0.5 x (1 + erf(x / sqrt 2))` by default, or with
    `approximate="tanh"` `0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`."""
    if approximate == "tanh":
        inner = (x + x ** 3 * 0.044715) * math.sqrt(2.0 / math.pi)
        return x * (ops.tanh(inner) + 1) * 0.5
    if approximate != "none":
        raise ValueError(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}")
    return x * (ops.erf(x * (1.0 / math.sqrt(2.0))) + 1) * 0.5


def dropout(x: Tensor, p: float, training: bool = True) -> Tensor:
    """Zero each element with probability p and scale survivors by 1/(1-p) (training only).

    One `np.random.rand(*x.shape)` draw (course convention); nothing drawn in eval mode.
    """
    if not training or p == 0:
        return x
    if not 0 <= p < 1:
        raise ValueError(f"dropout: p must be in [0, 1), got {p}")
    data = x.realize_cached_data()
    keep = data.device.rand(*x.shape, dtype=data.dtype) <= (1 - p)
    return x * Tensor.make_const(keep * (1.0 / (1 - p)))


def layer_norm(x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float = 1e-5):
    """Normalize over the last axis of any-rank x, then scale and shift by (dim,) tensors.

    One fused op (the device's layer-norm kernels) when weight and bias are both given or
    both None."""
    if (weight is None) == (bias is None):
        return ops.layer_norm(x, weight, bias, eps)
    y = ops.standardize(x, -1, eps)
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return y


def batch_norm(x: Tensor, running_mean: Tensor, running_var: Tensor, weight: Tensor | None,
               bias: Tensor | None, training: bool, momentum: float = 0.1,
               eps: float = 1e-5, axes=(0,)) -> Tensor:
    """Batch normalization over `axes` (the channel axis is the one left, last for 2-D x).

    In training, normalizes with the batch statistics and updates the running ones in place
    (biased variance, course convention); in eval, uses the running statistics.
    """
    shape = x.shape
    chan_shape = ops.keepdims_shape(shape, tuple(axes))
    if training:
        rm, rv = running_mean, running_var
        if (weight is None) == (bias is None):  # one fused op: statistics computed once
            return ops.batch_norm_train(x, weight, bias, axes, eps, rm, rv, momentum)
        y = ops.batch_norm_train(x, None, None, axes, eps, rm, rv, momentum)
    else:
        m = ops.reshape(running_mean.detach(), chan_shape)
        s = ops.reshape((running_var.detach() + eps) ** -0.5, chan_shape)
        y = (x - m) * s
    if weight is not None:
        y = y * ops.reshape(weight, chan_shape)
    if bias is not None:
        y = y + ops.reshape(bias, chan_shape)
    return y


def softmax_loss(logits: Tensor, y: Tensor) -> Tensor:
    """Mean over the batch of logsumexp(z) - z[y], y integer class ids (any numeric dtype)."""
    return ops.softmax_cross_entropy(logits, y)


def mse_loss(pred: Tensor, target: Tensor) -> Tensor:
    if pred.shape != target.shape:
        raise ValueError(f"mse_loss: prediction shape {pred.shape} != target shape "
                         f"{target.shape}")
    d = pred - target
    return ops.mean(d * d)


def one_hot_labels(y: Tensor, num_classes: int) -> Tensor:
    return Tensor.make_const(y.device.one_hot(num_classes, y.realize_cached_data()))
