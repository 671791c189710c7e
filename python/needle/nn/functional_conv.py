"""The math of the convolutional layers (NCHW in and out), as functions of Tensors."""
from __future__ import annotations

from .. import ops
from ..autograd import Tensor
from ..ops.ops_conv import Conv, conv_nchw, dilate_hw, pad_or_crop_hw


def _check_nchw(op: str, x: Tensor, channels: int | None = None) -> None:
    if x.ndim != 4:
        raise ValueError(f"{op}: expected NCHW input (4 dims), got shape {x.shape}")
    if channels is not None and x.shape[1] != channels:
        hint = " (the input looks like NHWC; expected NCHW)" if x.shape[3] == channels else ""
        raise ValueError(f"{op}: expected {channels} channels on axis 1 of NCHW input, got "
                         f"shape {x.shape}{hint}")


def conv2d(x: Tensor, weight: Tensor, bias: Tensor | None = None, stride: int = 1,
           padding: int = 0, save_cols: bool = True) -> Tensor:
    """NCHW conv with a (K, K, C_in, C_out) weight and a (C_out,) bias, one op; equals torch
    conv2d with the weight permuted (3, 2, 0, 1). The output is an NCHW view of NHWC memory
    (what the next conv reads without a copy). `save_cols=False`: the backward recomputes
    the im2col matrix instead of keeping it (less memory, a little more time)."""
    _check_nchw("conv2d", x, weight.shape[2])
    return conv_nchw(x, weight, bias, stride, padding, save_cols)


def conv_transpose2d(x: Tensor, weight: Tensor, bias: Tensor | None = None, stride: int = 1,
                     padding: int = 0, output_padding: int = 0) -> Tensor:
    """NCHW transposed conv, weight (K, K, C_in, C_out); equals torch conv_transpose2d with the
    weight permuted (2, 3, 0, 1). Output size (H-1)*stride - 2*padding + K + output_padding."""
    _check_nchw("conv_transpose2d", x, weight.shape[2])
    if not 0 <= output_padding < max(stride, 1):
        raise ValueError(f"conv_transpose2d: output_padding must be in [0, stride), got "
                         f"{output_padding} with stride {stride}")
    kh, kw = weight.shape[:2]
    xh = dilate_hw(ops.permute(x, (0, 2, 3, 1)), stride)
    lo_h, lo_w = kh - 1 - padding, kw - 1 - padding
    xh = pad_or_crop_hw(xh, ((lo_h, lo_h + output_padding), (lo_w, lo_w + output_padding)))
    wf = ops.flip(weight, (0, 1))
    y = Conv(1, 0)(xh, wf) if bias is None else Conv(1, 0)(xh, wf, bias)
    return ops.permute(y, (0, 3, 1, 2))


def max_pool2d(x: Tensor, kernel_size: int, stride: int | None = None, padding: int = 0):
    _check_nchw("max_pool2d", x)
    return ops.max_pool2d(x, kernel_size, stride, padding)


def avg_pool2d(x: Tensor, kernel_size: int, stride: int | None = None, padding: int = 0):
    _check_nchw("avg_pool2d", x)
    return ops.avg_pool2d(x, kernel_size, stride, padding)


def adaptive_avg_pool2d_1x1(x: Tensor) -> Tensor:
    """Global average pool: (N, C, H, W) -> (N, C, 1, 1)."""
    _check_nchw("adaptive_avg_pool2d", x)
    return ops.mean(x, axes=(2, 3), keepdims=True)


def group_norm(x: Tensor, num_groups: int, weight: Tensor | None, bias: Tensor | None,
               eps: float = 1e-5) -> Tensor:
    """Normalize each sample over (C/G, H, W) per group of channels, then per-channel affine."""
    n, c = x.shape[:2]
    if c % num_groups:
        raise ValueError(f"group_norm: {c} channels not divisible into {num_groups} groups "
                         f"(input {x.shape})")
    y = ops.standardize(ops.reshape(x, (n, num_groups, -1)), 2, eps)
    y = ops.reshape(y, x.shape)
    chan = (1, c) + (1,) * (x.ndim - 2)
    if weight is not None:
        y = y * ops.reshape(weight, chan)
    if bias is not None:
        y = y + ops.reshape(bias, chan)
    return y


def instance_norm(x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float = 1e-5):
    """Normalize each (sample, channel) over its spatial axes."""
    return group_norm(x, x.shape[1], weight, bias, eps)


def leaky_relu(x: Tensor, negative_slope: float = 0.01) -> Tensor:
    return ops.relu(x) - ops.relu(-x) * negative_slope


def elu(x: Tensor, alpha: float = 1.0) -> Tensor:
    return ops.relu(x) + (ops.exp(-ops.relu(-x)) - 1) * alpha


def softplus(x: Tensor, beta: float = 1.0) -> Tensor:
    """log(1 + exp(beta x)) / beta, stable: relu(z) + log(1 + exp(-|z|))."""
    z = x * beta if beta != 1.0 else x
    pos, neg = ops.relu(z), ops.relu(-z)
    y = pos + ops.log(ops.exp(-(pos + neg)) + 1)
    return y / beta if beta != 1.0 else y


def softsign(x: Tensor) -> Tensor:
    return x / (ops.relu(x) + ops.relu(-x) + 1)
