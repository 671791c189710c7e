"""SyncBatchNorm: batch normalization whose statistics span the batches of every MPI rank.

With N data-parallel processes of local batch B, `SyncBatchNorm` normalizes with the mean and
variance of all N*B samples, so training equals one process with batch N*B. Forward reduces the
per-channel sum and sum of squares (and the sample count) with one Allreduce; backward reduces
the two per-channel gradient sums, sum(g) and sum(g*y), with one more. With one process it is
exactly `BatchNorm1d`.
"""
from __future__ import annotations

import math
from typing import Tuple

import numpy as np

from .. import distributed as dist
from .. import ops
from ..autograd import NDArray, Tensor, TensorOp
from ..ops.ops_fused import FusedOp
from . import functional as F
from .nn_basic import BatchNorm1d, Module

__all__ = ["AllReduceSum", "SyncStandardize", "SyncBatchNorm", "convert_sync_batchnorm"]


class AllReduceSum(TensorOp):
    """y = sum over ranks of x (same shape on every rank); its gradient is AllReduceSum too.

    Rank r's x feeds every rank's y, so dL/dx_r = sum over ranks of dL/dy. Used by the
    composed gradient of `SyncStandardize` (second derivatives across ranks).
    """

    __slots__ = ()
    array_rule = True

    def compute(self, x: NDArray) -> NDArray:
        host = np.array(x.numpy(), dtype=x.dtype, order="C")  # MPI sends host memory
        dist.allreduce_array(host)
        return NDArray(host, device=x.device)

    def gradient(self, out_grad, node):
        return AllReduceSum()(out_grad)


def allreduce_sum(x: Tensor) -> Tensor:
    return AllReduceSum()(x)


class SyncStandardize(FusedOp):
    """(x - mean) / sqrt(var + eps) with mean and biased variance over `axes` of every rank.

    The statistics of the last forward are kept on the op (`mean`, `var` as float64 NumPy,
    `count` the global number of samples per channel) for the running-statistics update; the
    output and 1/std are kept for the backward, which reduces sum(g) and sum(g * y) across
    ranks in one more call.
    """

    __slots__ = ("axes", "eps", "mean", "var", "inv", "count", "out")

    def __init__(self, axes: Tuple[int, ...] = (0,), eps: float = 1e-5):
        self.axes = tuple(axes)
        self.eps = float(eps)
        self.mean = self.var = self.inv = self.out = None
        self.count = 0

    def _keep(self, shape):
        return ops.keepdims_shape(shape, self.axes)

    def _channel(self, host, shape, dtype, device):
        """A host per-channel float64 array as an NDArray broadcast to `shape`."""
        keep = self._keep(shape)
        return NDArray(host.reshape(keep).astype(dtype), device=device).broadcast_to(shape)

    def compute(self, x: NDArray) -> NDArray:
        if x.size == 0:
            raise ValueError(f"SyncBatchNorm: empty input of shape {x.shape}")
        local = x.device.sums_host(x, self.axes)
        stats = np.empty(local.size + 1, dtype=np.float64)
        stats[:-1] = local
        stats[-1] = math.prod(x.shape[i] for i in self.axes)
        dist.allreduce_array(stats)
        c = (stats.size - 1) // 2
        count = stats[-1]
        mean = stats[:c] / count
        var = np.maximum(stats[c:2 * c] / count - mean * mean, 0.0)
        self.mean, self.var, self.count = mean, var, int(count)
        self.inv = self._channel(1.0 / np.sqrt(var + self.eps), x.shape, x.dtype, x.device)
        self.out = (x - self._channel(mean, x.shape, x.dtype, x.device)) * self.inv
        return self.out

    def backward_arrays(self, g, inputs, needs):
        y = self.out
        sums = dist.allreduce_array(g.device.sums_host(g, self.axes, y))
        c = sums.size // 2
        mean_g = self._channel(sums[:c] / self.count, g.shape, g.dtype, g.device)
        mean_gy = self._channel(sums[c:] / self.count, g.shape, g.dtype, g.device)
        return (self.inv * (g - mean_g - y * mean_gy),)

    def gradient_composed(self, out_grad, x):
        shape = x.shape
        keep = self._keep(shape)
        n = float(self.count)

        def mean_b(t):  # global mean over the batch axes of every rank, broadcast back
            s = allreduce_sum(ops.summation(t, self.axes))
            return ops.broadcast_to(ops.reshape(s / n, keep), shape)

        xc = x - mean_b(x)
        inv = (mean_b(xc * xc) + self.eps) ** -0.5
        y = xc * inv
        return (inv * (out_grad - mean_b(out_grad) - y * mean_b(out_grad * y)),)


class SyncBatchNorm(BatchNorm1d):
    """BatchNorm over (B, C) or (B, C, ...) input with statistics of all ranks' batches.

    Channels are axis 1; the statistics run over every other axis of every rank. Parameters,
    buffers and state-dict keys are BatchNorm1d's (a checkpoint loads into either). In eval
    mode, or with one process, it computes exactly what BatchNorm1d computes.
    """

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim < 2 or x.shape[1] != self.dim:
            raise ValueError(f"SyncBatchNorm: expected input (batch, {self.dim}, ...), got "
                             f"{x.shape}")
        if x.ndim == 2 and (not self.training or not dist.is_distributed()):
            return super().forward(x)
        axes = tuple(i for i in range(x.ndim) if i != 1)
        keep = tuple(n if i == 1 else 1 for i, n in enumerate(x.shape))
        if not self.training:  # the running statistics, as BatchNorm's eval mode
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight,
                                self.bias, False, self.momentum, self.eps, axes)
        op = SyncStandardize(axes, self.eps)
        y = op(x)
        m = self.momentum
        for running, stat in ((self.running_mean, op.mean), (self.running_var, op.var)):
            r = running.realize_cached_data()
            r *= 1 - m
            r += NDArray(stat.astype(r.dtype), device=r.device) * m
        w = ops.broadcast_to(ops.reshape(self.weight, keep), x.shape)
        b = ops.broadcast_to(ops.reshape(self.bias, keep), x.shape)
        return y * w + b


def convert_sync_batchnorm(module: Module) -> Module:
    """Replace every `BatchNorm1d`/`BatchNorm2d` in `module` by a `SyncBatchNorm` sharing its
    parameters and buffers (same state-dict keys).

    Walks attributes, lists, tuples and dicts; returns the (possibly new) root module.
    """
    from .nn_conv import BatchNorm2d  # noqa: PLC0415 (conv layers are optional here)

    def convert(value):
        if isinstance(value, (BatchNorm1d, BatchNorm2d)) and not isinstance(value,
                                                                            SyncBatchNorm):
            new = SyncBatchNorm.__new__(SyncBatchNorm)
            new.__dict__.update(value.__dict__)
            return new
        if isinstance(value, Module):
            for k, v in list(vars(value).items()):
                setattr(value, k, convert(v))
            return value
        if isinstance(value, list):
            return [convert(v) for v in value]
        if isinstance(value, tuple):
            return tuple(convert(v) for v in value)
        if isinstance(value, dict):
            return {k: convert(v) for k, v in value.items()}
        return value

    return convert(module)
