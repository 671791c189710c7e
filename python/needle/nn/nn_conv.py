"""Convolutional layers (NCHW in and out), 2-D norms, pooling and extra activations."""
from __future__ import annotations

import math

from .. import init
from . import functional as F
from . import functional_conv as FC
from .nn_basic import Module, Parameter


def _first(v):
    return int(v[0]) if isinstance(v, (tuple, list)) else int(v)


class Conv(Module):
    """2-D convolution, NCHW in and out, weight (K, K, C_in, C_out), padding K // 2.

    Init (course): weight kaiming_uniform(C_in K^2, C_out K^2, shape=(K, K, C_in, C_out)), then
    bias (C_out,) uniform on +-1/sqrt(C_in K^2). Equals torch.nn.Conv2d(C_in, C_out, K, stride,
    padding=K // 2) with torch weight = weight.permute(3, 2, 0, 1). `padding` overrides K // 2.
    `memory_efficient=True` keeps only the input for the backward, which recomputes the
    im2col matrix (K^2 times the input's size) instead of keeping it from the forward.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, bias=True,
                 device=None, dtype="float32", padding=None, memory_efficient=False):
        super().__init__()
        self.memory_efficient = bool(memory_efficient)
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size, self.stride = _first(kernel_size), _first(stride)
        k = self.kernel_size
        self.padding = k // 2 if padding is None else _first(padding)
        fan_in, fan_out = self.in_channels * k * k, self.out_channels * k * k
        self.weight = Parameter(init.kaiming_uniform(
            fan_in, fan_out, shape=(k, k, self.in_channels, self.out_channels), device=device,
            dtype=dtype))
        self.bias = None
        if bias:
            bound = 1.0 / math.sqrt(fan_in)
            self.bias = Parameter(init.rand(self.out_channels, low=-bound, high=bound,
                                            device=device, dtype=dtype))

    def forward(self, x):
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"Conv: expected NCHW input with {self.in_channels} channels, got "
                             f"shape {x.shape} (weight {self.weight.shape})")
        return FC.conv2d(x, self.weight, self.bias, self.stride, self.padding,
                         save_cols=not self.memory_efficient)


class ConvTranspose(Module):
    """Transposed 2-D convolution (PyTorch's ConvTranspose2d semantics incl. output_padding).

    Weight (K, K, C_in, C_out); torch weight = weight.permute(2, 3, 0, 1). Init mirrors Conv
    with PyTorch's fan_in for transposed convs (C_out K^2).
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0,
                 output_padding=0, bias=True, device=None, dtype="float32"):
        super().__init__()
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size, self.stride = _first(kernel_size), _first(stride)
        self.padding, self.output_padding = _first(padding), _first(output_padding)
        k = self.kernel_size
        fan_in, fan_out = self.out_channels * k * k, self.in_channels * k * k
        self.weight = Parameter(init.kaiming_uniform(
            fan_in, fan_out, shape=(k, k, self.in_channels, self.out_channels), device=device,
            dtype=dtype))
        self.bias = None
        if bias:
            bound = 1.0 / math.sqrt(fan_in)
            self.bias = Parameter(init.rand(self.out_channels, low=-bound, high=bound,
                                            device=device, dtype=dtype))

    def forward(self, x):
        return FC.conv_transpose2d(x, self.weight, self.bias, self.stride, self.padding,
                                   self.output_padding)


class BatchNorm2d(Module):
    """Batch normalization of NCHW input: statistics per channel over N, H, W."""

    def __init__(self, dim, eps=1e-5, momentum=0.1, device=None, dtype="float32"):
        super().__init__()
        self.dim, self.eps, self.momentum = dim, eps, momentum
        self.weight = Parameter(init.ones(dim, device=device, dtype=dtype))
        self.bias = Parameter(init.zeros(dim, device=device, dtype=dtype))
        self.register_buffer("running_mean", init.zeros(dim, device=device, dtype=dtype))
        self.register_buffer("running_var", init.ones(dim, device=device, dtype=dtype))

    def forward(self, x):
        FC._check_nchw("BatchNorm2d", x, self.dim)
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                            self.training, self.momentum, self.eps, axes=(0, 2, 3))


class GroupNorm(Module):
    """torch.nn.GroupNorm(num_groups, num_channels, eps, affine): batch-independent."""

    def __init__(self, num_groups, num_channels, eps=1e-5, affine=True, device=None,
                 dtype="float32"):
        super().__init__()
        if num_channels % num_groups:
            raise ValueError(f"GroupNorm: num_channels {num_channels} not divisible by "
                             f"num_groups {num_groups}")
        self.num_groups, self.num_channels, self.eps = num_groups, num_channels, eps
        self.weight = self.bias = None
        if affine:
            self.weight = Parameter(init.ones(num_channels, device=device, dtype=dtype))
            self.bias = Parameter(init.zeros(num_channels, device=device, dtype=dtype))

    def forward(self, x):
        if x.ndim < 2 or x.shape[1] != self.num_channels:
            raise ValueError(f"GroupNorm: expected input (N, {self.num_channels}, ...), got "
                             f"shape {x.shape}")
        return FC.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)


class InstanceNorm2d(Module):
    """torch.nn.InstanceNorm2d(num_features, eps, affine=False): per sample and channel."""

    def __init__(self, num_features, eps=1e-5, affine=False, device=None, dtype="float32"):
        super().__init__()
        self.num_features, self.eps = num_features, eps
        self.weight = self.bias = None
        if affine:
            self.weight = Parameter(init.ones(num_features, device=device, dtype=dtype))
            self.bias = Parameter(init.zeros(num_features, device=device, dtype=dtype))

    def forward(self, x):
        FC._check_nchw("InstanceNorm2d", x, self.num_features)
        return FC.instance_norm(x, self.weight, self.bias, self.eps)


class MaxPool2d(Module):
    def __init__(self, kernel_size, stride=None, padding=0):
        super().__init__()
        self.kernel_size = _first(kernel_size)
        self.stride = self.kernel_size if stride is None else _first(stride)
        self.padding = _first(padding)

    def forward(self, x):
        return FC.max_pool2d(x, self.kernel_size, self.stride, self.padding)


class AvgPool2d(MaxPool2d):
    def forward(self, x):
        return FC.avg_pool2d(x, self.kernel_size, self.stride, self.padding)


class AdaptiveAvgPool2d(Module):
    """Global average pooling to (N, C, 1, 1); only output_size 1 is supported."""

    def __init__(self, output_size=1):
        super().__init__()
        if output_size not in (1, (1, 1), [1, 1]):
            raise ValueError(f"AdaptiveAvgPool2d: only output_size 1 is supported, got "
                             f"{output_size}")

    def forward(self, x):
        return FC.adaptive_avg_pool2d_1x1(x)


class LeakyReLU(Module):
    def __init__(self, negative_slope=0.01):
        super().__init__()
        self.negative_slope = negative_slope

    def forward(self, x):
        return FC.leaky_relu(x, self.negative_slope)


class ELU(Module):
    def __init__(self, alpha=1.0):
        super().__init__()
        self.alpha = alpha

    def forward(self, x):
        return FC.elu(x, self.alpha)


class Softplus(Module):
    def __init__(self, beta=1.0):
        super().__init__()
        self.beta = beta

    def forward(self, x):
        return FC.softplus(x, self.beta)


class Softsign(Module):
    def forward(self, x):
        return FC.softsign(x)


ConvTranspose2d = ConvTranspose  # PyTorch's name
