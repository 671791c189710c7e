"""SyncBatchNorm: batch normalization whose statistics span the batches of every MPI rank.

With N data-parallel processes of local batch B, `SyncBatchNorm` normalizes with the mean and
variance of all N*B samples, so training equals one process with batch N*B. Forward reduces the
per-channel sum and sum of squares (and the sample count) with one Allreduce; backward reduces
the two per-channel gradient sums, sum(g) and sum(g*y), with one more. With one process it is
exactly `BatchNorm1d`.
"""
from __future__ import annotations

from typing import Tuple

import numpy as np

from .. import distributed as dist
from .. import ops
from ..autograd import NDArray, Tensor, TensorOp
from .nn_basic import BatchNorm1d, Module

__all__ = ["AllReduceSum", "SyncStandardize", "SyncBatchNorm", "convert_sync_batchnorm"]


def _allreduce_host(values: np.ndarray) -> np.ndarray:
    """Sum a small host array across ranks (float64 for exact-enough statistics)."""
    buf = np.ascontiguousarray(values, dtype=np.float64)
    return dist.allreduce_array(buf)


class AllReduceSum(TensorOp):
    """y = sum over ranks of x (same shape on every rank); its gradient is AllReduceSum too.

    Rank r's x feeds every rank's y, so dL/dx_r = sum over ranks of dL/dy. Used by the
    graph-building gradient of `SyncStandardize` (second derivatives across ranks).
    """

    def compute(self, x: NDArray) -> NDArray:
        host = np.array(x.numpy(), dtype=x.dtype, order="C")
        dist.allreduce_array(host)
        return NDArray(host, device=x.device)

    def gradient(self, out_grad, node):
        return AllReduceSum()(out_grad)

    def gradient_nd(self, g: NDArray, node):
        return (self.compute(g),)


def allreduce_sum(x: Tensor) -> Tensor:
    return AllReduceSum()(x)


class SyncStandardize(TensorOp):
    """(x - mean) / sqrt(var + eps) with mean and biased variance over `axes` of every rank.

    The statistics of the last forward are kept on the op (`mean`, `var` as float64 NumPy,
    `count` the global number of samples per channel) for the running-statistics update.
    """

    def __init__(self, axes: Tuple[int, ...] = (0,), eps: float = 1e-5):
        self.axes = tuple(axes)
        self.eps = float(eps)
        self.mean = self.var = self.inv = None
        self.count = 0

    def _keep(self, shape):
        return tuple(1 if i in self.axes else n for i, n in enumerate(shape))

    def compute(self, x: NDArray) -> NDArray:
        xn = x.native
        xp = x.device.xp
        if x.size == 0:
            raise ValueError(f"SyncBatchNorm: empty input of shape {x.shape}")
        local = xp.concatenate([xn.sum(axis=self.axes, dtype=np.float64).ravel(),
                                (xn.astype(np.float64) ** 2).sum(axis=self.axes).ravel()])
        n_local = int(np.prod([x.shape[i] for i in self.axes]))
        stats = np.empty(local.size + 1, dtype=np.float64)
        stats[:-1] = local.get() if hasattr(local, "get") else local
        stats[-1] = n_local
        dist.allreduce_array(stats)
        c = (stats.size - 1) // 2
        count = stats[-1]
        mean = stats[:c] / count
        var = np.maximum(stats[c:2 * c] / count - mean * mean, 0.0)
        self.mean, self.var, self.count = mean, var, int(count)
        keep = self._keep(x.shape)
        inv = (1.0 / np.sqrt(var + self.eps)).reshape(keep)
        self.inv = xp.asarray(inv.astype(xn.dtype))
        m = xp.asarray(mean.reshape(keep).astype(xn.dtype))
        return NDArray._wrap((xn - m) * self.inv, x.device)

    def gradient_nd(self, g: NDArray, node):
        y = node.cached_data.native
        gn = g.native
        xp = g.device.xp
        local = xp.concatenate([gn.sum(axis=self.axes, dtype=np.float64).ravel(),
                                (gn * y).sum(axis=self.axes, dtype=np.float64).ravel()])
        sums = _allreduce_host(local.get() if hasattr(local, "get") else local)
        c = sums.size // 2
        keep = self._keep(gn.shape)
        mean_g = xp.asarray((sums[:c] / self.count).reshape(keep).astype(gn.dtype))
        mean_gy = xp.asarray((sums[c:] / self.count).reshape(keep).astype(gn.dtype))
        return (NDArray._wrap(self.inv * (gn - mean_g - y * mean_gy), g.device),)

    def gradient(self, out_grad, node):
        x = node.inputs[0]
        shape = x.shape
        keep = self._keep(shape)
        n = float(self.count)

        def mean_b(t):  # global mean over the batch axes of every rank, broadcast back
            s = allreduce_sum(ops.summation(t, self.axes))
            return ops.broadcast_to(ops.reshape(s / n, keep), shape)

        xc = x - mean_b(x)
        inv = (mean_b(xc * xc) + self.eps) ** -0.5
        y = xc * inv
        return inv * (out_grad - mean_b(out_grad) - y * mean_b(out_grad * y))


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
        if self.training:
            op = SyncStandardize(axes, self.eps)
            y = op(x)
            m = self.momentum
            rm = self.running_mean.realize_cached_data()
            rv = self.running_var.realize_cached_data()
            xp = rm.device.xp
            rm.native[...] = (1 - m) * rm.native + m * xp.asarray(op.mean.astype(rm.dtype))
            rv.native[...] = (1 - m) * rv.native + m * xp.asarray(op.var.astype(rv.dtype))
        else:
            mean = ops.reshape(self.running_mean.detach(), keep)
            inv = ops.reshape((self.running_var.detach() + self.eps) ** -0.5, keep)
            y = (x - ops.broadcast_to(mean, x.shape)) * ops.broadcast_to(inv, x.shape)
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
