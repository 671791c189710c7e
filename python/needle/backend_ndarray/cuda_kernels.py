"""Fused CUDA kernels for `cuda()`: the sources of cuda_sources.py launched through CuPy.

Each kernel replaces a composition that costs several passes over memory (see the composed
versions on `Device` in device.py, which are what runs without a GPU). They take float32,
C-contiguous arrays; `CUDADevice` calls them only when CuPy is active and the inputs qualify,
and otherwise runs the composed version. Every kernel is a `RawKernel`, so the source NVRTC
compiles in CI (tests/test_nvrtc.py) is exactly what CuPy compiles on a GPU, and
cuda_reference.py follows each one loop for loop in NumPy.

This module never imports CuPy: `CupyKernels(cupy)` receives the module from cuda.py, and each
kernel is compiled on first use (CuPy caches the binaries on disk).
"""
from __future__ import annotations

import numpy as np

from .cuda_sources import (
    COLUMN_BLOCK, FUSED_NAME, KERNELS, ROW_BLOCK, _fused_params, column_chunks,
    elementwise_launch, fused_elementwise_source,
)

_i64, _f32 = np.int64, np.float32


class CupyKernels:
    """The fused kernels over a CuPy module `cp`; methods mirror the `Device` fallbacks."""

    def __init__(self, cp):
        self.cp = cp
        self._cache = {}

    def _kernel(self, name):
        k = self._cache.get(name)
        if k is None:
            k = self._cache[name] = self.cp.RawKernel(KERNELS[name], name)
        return k

    def fused_elementwise(self, params, body, name, preamble=""):
        """`run(*inputs, *scalars, out)` for one of needle.compile's fused groups (the
        `elementwise_kernel` hook of fused_elementwise.py): the source of
        `cuda_sources.fused_elementwise_source`, compiled once per body; inputs broadcast to
        `out`'s shape and are read at their own strides (`name` is informational: every
        generated kernel has the entry point `ndl_fused`)."""
        cp = self.cp
        src = fused_elementwise_source(params, body, preamble)
        kernel = self._cache.get(src)
        if kernel is None:
            kernel = self._cache[src] = cp.RawKernel(src, FUSED_NAME)
        n_in = len(_fused_params(params)[0])
        metas = {}  # (shape, input strides) -> meta on the device, built once per layout

        def run(*args):
            arrays, scalars, out = args[:n_in], args[n_in:-1], args[-1]
            shape = out.shape
            views = [cp.broadcast_to(a, shape) for a in arrays]
            key = (shape,) + tuple(v.strides for v in views)
            meta = metas.get(key)
            if meta is None:
                host = list(shape) + [st // v.itemsize for v in views for st in v.strides]
                meta = metas[key] = cp.asarray(np.array(host or [0], dtype=_i64))
            if out.size:
                blocks, threads = elementwise_launch(out.size)
                kernel((blocks,), (threads,), (_i64(out.size), np.int32(len(shape)), meta,
                                               *views, *[_f32(s) for s in scalars], out))
            return out

        return run

    def _elementwise(self, name, n, args):
        """Launch a grid-stride kernel over n elements (nothing to do for n == 0)."""
        if n:
            blocks, threads = elementwise_launch(n)
            self._kernel(name)((blocks,), (threads,), args)

    def _dot_xhat(self, dy, x, mean, rstd, stats_per_row):
        """sum over rows of dy * (x - mean) * rstd for (rows, C) arrays: dweight of layer norm
        (statistics per row) and of batch norm (per column)."""
        cp = self.cp
        rows, c = x.shape
        if rows == 0 or c == 0:
            return cp.zeros((c,), np.float32)
        per, chunks = column_chunks(rows)
        partial = cp.empty((chunks, c), np.float32)
        self._kernel("ndl_dot_xhat_partial")(
            (-(-c // COLUMN_BLOCK), chunks), (COLUMN_BLOCK,),
            (dy, x, cp.ascontiguousarray(mean), cp.ascontiguousarray(rstd), partial,
             _i64(rows), _i64(c), _i64(per), np.int32(stats_per_row)))
        return partial.sum(axis=0)

    # ---- the kernels, with the signatures of the Device methods ----------------------------
    def softmax_cross_entropy_fwd(self, z, labels):
        cp = self.cp
        z = cp.ascontiguousarray(z)
        labels = cp.ascontiguousarray(labels, dtype=np.int64)
        b, k = z.shape
        lse = cp.empty((b,), dtype=np.float32)
        loss = cp.empty((b,), dtype=np.float32)
        if b:
            self._kernel("ndl_softmax_ce_fwd")((b,), (ROW_BLOCK,), (z, labels, lse, loss, _i64(k)))
        return loss.mean(), lse

    def softmax_cross_entropy_bwd(self, z, labels, lse, g):
        cp = self.cp
        z = cp.ascontiguousarray(z)
        labels = cp.ascontiguousarray(labels, dtype=np.int64)
        g = cp.ascontiguousarray(cp.asarray(g, dtype=np.float32).reshape(1))
        b, k = z.shape
        dz = cp.empty_like(z)
        self._elementwise("ndl_softmax_ce_bwd", b * k,
                          (z, cp.ascontiguousarray(lse), labels, g, dz, _i64(k), _i64(b)))
        return dz

    def layer_norm_fwd(self, x, weight, bias, eps):
        cp = self.cp
        x = cp.ascontiguousarray(x)
        d = x.shape[-1]
        rows = x.size // d if d else 0
        w = cp.ones((d,), np.float32) if weight is None else cp.ascontiguousarray(weight)
        b = cp.zeros((d,), np.float32) if bias is None else cp.ascontiguousarray(bias)
        y = cp.empty_like(x)
        mean = cp.empty(x.shape[:-1], dtype=np.float32)
        rstd = cp.empty(x.shape[:-1], dtype=np.float32)
        if rows:
            self._kernel("ndl_layer_norm_fwd")((rows,), (ROW_BLOCK,),
                                               (x, w, b, y, mean, rstd, _i64(d), _f32(eps)))
        return y, mean, rstd

    def layer_norm_bwd(self, dy, x, mean, rstd, weight):
        cp = self.cp
        dy = cp.ascontiguousarray(dy)
        x = cp.ascontiguousarray(x)
        d = x.shape[-1]
        rows = x.size // d if d else 0
        w = cp.ones((d,), np.float32) if weight is None else cp.ascontiguousarray(weight)
        mean = cp.ascontiguousarray(mean)
        rstd = cp.ascontiguousarray(rstd)
        dx = cp.empty_like(x)
        if rows:
            self._kernel("ndl_layer_norm_bwd")((rows,), (ROW_BLOCK,),
                                               (dy, x, w, mean, rstd, dx, _i64(d)))
        if weight is None:
            return dx, None, None
        dy2, x2 = dy.reshape(rows, d), x.reshape(rows, d)
        dw = self._dot_xhat(dy2, x2, mean.reshape(rows), rstd.reshape(rows), 1)
        return dx, dw, dy2.sum(axis=0)

    def batch_norm_fwd(self, x, weight, bias, eps):
        cp = self.cp
        x = cp.ascontiguousarray(x)
        n, c = x.shape
        mean = x.mean(axis=0)
        var = x.var(axis=0)  # biased (ddof=0), as the course's running statistics
        rstd = cp.reciprocal(cp.sqrt(var + _f32(eps)))
        w = cp.ones((c,), np.float32) if weight is None else cp.ascontiguousarray(weight)
        b = cp.zeros((c,), np.float32) if bias is None else cp.ascontiguousarray(bias)
        y = cp.empty_like(x)
        self._elementwise("ndl_batch_norm_fwd", n * c, (x, mean, rstd, w, b, y, _i64(n), _i64(c)))
        return y, mean, rstd, var

    def batch_norm_bwd(self, dy, x, mean, rstd, weight):
        cp = self.cp
        dy = cp.ascontiguousarray(dy)
        x = cp.ascontiguousarray(x)
        mean = cp.ascontiguousarray(mean)
        rstd = cp.ascontiguousarray(rstd)
        n, c = x.shape
        w = cp.ones((c,), np.float32) if weight is None else cp.ascontiguousarray(weight)
        db = dy.sum(axis=0)
        dw = self._dot_xhat(dy, x, mean, rstd, 0)
        dx = cp.empty_like(x)
        self._elementwise("ndl_batch_norm_bwd", n * c,
                          (dy, x, mean, rstd, w, db, dw, dx, _i64(n), _i64(c)))
        if weight is None:
            return dx, None, None
        return dx, dw, db

    def adam_update(self, w, g, m, v, lr, beta1, beta2, eps, step, weight_decay, decoupled):
        """In place on w, m and v, which must be C-contiguous (cuda.py checks)."""
        lr_t = lr / (1.0 - beta1 ** step)
        inv_bc2 = 1.0 / (1.0 - beta2 ** step)
        wd, keep = (0.0, 1.0 - lr * weight_decay) if decoupled else (weight_decay, 1.0)
        g = self.cp.ascontiguousarray(g)
        self._elementwise("ndl_adam", w.size,
                          (w, m, v, g, _i64(w.size), _f32(lr_t), _f32(beta1), _f32(beta2),
                           _f32(inv_bc2), _f32(eps), _f32(wd), _f32(keep)))
