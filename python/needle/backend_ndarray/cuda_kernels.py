"""Fused CUDA kernels for `cuda()`, written as CuPy kernel sources.

Each kernel replaces a composition that costs several passes over memory (see the composed
versions on `Device` in device.py, which are what runs without a GPU and what these kernels are
tested against on one). They take float32, C-contiguous arrays; `CUDADevice` calls them only
when CuPy is active and the inputs qualify, and otherwise runs the composed version.

This module never imports CuPy: `CupyKernels(cupy)` receives the module from cuda.py, and each
kernel is compiled on first use (CuPy caches the binaries on disk).
"""
from __future__ import annotations

import numpy as np


_BLOCK = 512  # threads per row for the row-wise kernels (a multiple of 32)

# Block-wide sum and max over blockDim.x threads (a multiple of 32): warp shuffles, then one
# warp over the per-warp partials. `sh` is a __shared__ float[32]; every thread gets the result.
# Only NVRTC built-ins are used (no <math.h> macros such as INFINITY): CuPy compiles with NVRTC.
_BLOCK_REDUCE = r"""
#define NDL_BLOCK_REDUCE(NAME, OP, IDENT)                                           \
__device__ __forceinline__ float NAME(float v, float* sh) {                        \
    for (int o = 16; o > 0; o >>= 1) v = OP(v, __shfl_xor_sync(0xffffffffu, v, o)); \
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;                     \
    __syncthreads();                                                                \
    if (lane == 0) sh[warp] = v;                                                    \
    __syncthreads();                                                                \
    if (warp == 0) {                                                                \
        const int nw = blockDim.x >> 5;                                             \
        float u = lane < nw ? sh[lane] : (IDENT);                                   \
        for (int o = 16; o > 0; o >>= 1) u = OP(u, __shfl_xor_sync(0xffffffffu, u, o)); \
        if (lane == 0) sh[0] = u;                                                   \
    }                                                                               \
    __syncthreads();                                                                \
    return sh[0];                                                                   \
}
#define NDL_ADD(a, b) ((a) + (b))
#define NDL_NEG_INF __int_as_float(0xff800000)
NDL_BLOCK_REDUCE(block_sum, NDL_ADD, 0.0f)
NDL_BLOCK_REDUCE(block_max, fmaxf, NDL_NEG_INF)
"""

# One block per row of z (B, K): two-pass logsumexp (max, then sum), then the row's loss.
_SOFTMAX_CE_FWD = _BLOCK_REDUCE + r"""
extern "C" __global__ void ndl_softmax_ce_fwd(
        const float* __restrict__ z, const long long* __restrict__ y,
        float* __restrict__ lse, float* __restrict__ loss, const long long k) {
    __shared__ float sh[32];
    const float* zr = z + (long long)blockIdx.x * k;
    float m = NDL_NEG_INF;
    for (long long j = threadIdx.x; j < k; j += blockDim.x) m = fmaxf(m, zr[j]);
    m = block_max(m, sh);
    const float shift = fabsf(m) == __int_as_float(0x7f800000) ? 0.0f : m;  // +-inf
    float s = 0.0f;
    for (long long j = threadIdx.x; j < k; j += blockDim.x) s += expf(zr[j] - shift);
    s = block_sum(s, sh);
    if (threadIdx.x == 0) {
        const float l = logf(s) + shift;
        lse[blockIdx.x] = l;
        loss[blockIdx.x] = l - zr[y[blockIdx.x]];
    }
}
"""

# One block per row of x (N, D): mean, variance (two passes, no cancellation), normalize.
_LAYER_NORM_FWD = _BLOCK_REDUCE + r"""
extern "C" __global__ void ndl_layer_norm_fwd(
        const float* __restrict__ x, const float* __restrict__ w, const float* __restrict__ b,
        float* __restrict__ out, float* __restrict__ mean, float* __restrict__ rstd,
        const long long d, const float eps) {
    __shared__ float sh[32];
    const long long row = blockIdx.x;
    const float* xr = x + row * d;
    float* yr = out + row * d;
    float s = 0.0f;
    for (long long j = threadIdx.x; j < d; j += blockDim.x) s += xr[j];
    const float mu = block_sum(s, sh) / (float)d;
    float q = 0.0f;
    for (long long j = threadIdx.x; j < d; j += blockDim.x) {
        const float c = xr[j] - mu;
        q += c * c;
    }
    const float rs = rsqrtf(block_sum(q, sh) / (float)d + eps);
    for (long long j = threadIdx.x; j < d; j += blockDim.x)
        yr[j] = (xr[j] - mu) * rs * w[j] + b[j];
    if (threadIdx.x == 0) {
        mean[row] = mu;
        rstd[row] = rs;
    }
}
"""

# One block per row: dx = rstd * (dxh - mean(dxh) - xh * mean(dxh * xh)), dxh = dy * w.
_LAYER_NORM_BWD = _BLOCK_REDUCE + r"""
extern "C" __global__ void ndl_layer_norm_bwd(
        const float* __restrict__ dy, const float* __restrict__ x, const float* __restrict__ w,
        const float* __restrict__ mean, const float* __restrict__ rstd,
        float* __restrict__ dx, const long long d) {
    __shared__ float sh[32];
    const long long row = blockIdx.x;
    const float* xr = x + row * d;
    const float* gr = dy + row * d;
    float* dr = dx + row * d;
    const float mu = mean[row], rs = rstd[row];
    float a = 0.0f, c = 0.0f;
    for (long long j = threadIdx.x; j < d; j += blockDim.x) {
        const float g = gr[j] * w[j];
        a += g;
        c += g * (xr[j] - mu) * rs;
    }
    a = block_sum(a, sh) / (float)d;
    c = block_sum(c, sh) / (float)d;
    for (long long j = threadIdx.x; j < d; j += blockDim.x)
        dr[j] = rs * (gr[j] * w[j] - a - (xr[j] - mu) * rs * c);
}
"""


class CupyKernels:
    """The fused kernels over a CuPy module `cp`; methods mirror the `Device` fallbacks."""

    def __init__(self, cp):
        self.cp = cp
        self._cache = {}

    # ---- kernel objects, built once ----------------------------------------------------------
    def _kernel(self, name):
        k = self._cache.get(name)
        if k is None:
            k = self._cache[name] = getattr(self, "_make_" + name)()
        return k

    def _make_softmax_ce_fwd(self):
        return self.cp.RawKernel(_SOFTMAX_CE_FWD, "ndl_softmax_ce_fwd")

    def _make_softmax_ce_bwd(self):
        # z and dz (B, K) flat; lse and y per row; g a 1-element array (no host sync).
        return self.cp.ElementwiseKernel(
            "raw float32 z, raw float32 lse, raw int64 y, raw float32 g, int64 k, int64 b",
            "float32 dz",
            """
            const long long r = i / k, c = i - r * k;
            const float p = expf(z[i] - lse[r]);
            dz = (p - (c == y[r] ? 1.0f : 0.0f)) * (g[0] / (float)b);
            """,
            "ndl_softmax_ce_bwd")

    def _make_layer_norm_fwd(self):
        return self.cp.RawKernel(_LAYER_NORM_FWD, "ndl_layer_norm_fwd")

    def _make_layer_norm_bwd(self):
        return self.cp.RawKernel(_LAYER_NORM_BWD, "ndl_layer_norm_bwd")

    def _make_dot_xhat(self):
        # sum over axis 0 of dy * (x - mean) * rstd, mean/rstd broadcast by the caller:
        # dweight of layer norm (stats per row) and of batch norm (stats per column).
        return self.cp.ReductionKernel(
            "float32 dy, float32 x, float32 mean, float32 rstd", "float32 out",
            "dy * (x - mean) * rstd", "a + b", "out = a", "0", "ndl_dot_xhat")

    def _make_batch_norm_fwd(self):
        return self.cp.ElementwiseKernel(
            "float32 x, float32 mean, float32 rstd, float32 w, float32 b", "float32 y",
            "y = (x - mean) * rstd * w + b", "ndl_batch_norm_fwd")

    def _make_batch_norm_bwd(self):
        return self.cp.ElementwiseKernel(
            "float32 dy, float32 x, float32 mean, float32 rstd, float32 w, float32 db, "
            "float32 dw, float32 n", "float32 dx",
            "dx = w * rstd * (dy - (db + (x - mean) * rstd * dw) / n)",
            "ndl_batch_norm_bwd")

    def _make_adam(self):
        # Chainer's pattern: the outputs are the state, read and written in place.
        return self.cp.ElementwiseKernel(
            "float32 g, float32 lr_t, float32 b1, float32 b2, float32 inv_bc2, float32 eps, "
            "float32 wd, float32 keep", "float32 w, float32 m, float32 v",
            """
            const float gg = g + wd * w;
            m = b1 * m + (1.0f - b1) * gg;
            v = b2 * v + (1.0f - b2) * gg * gg;
            w = w * keep - lr_t * m / (sqrtf(v * inv_bc2) + eps);
            """,
            "ndl_adam")

    # ---- the kernels, with the signatures of the Device methods ----------------------------
    def softmax_cross_entropy_fwd(self, z, labels):
        cp = self.cp
        z = cp.ascontiguousarray(z)
        labels = cp.ascontiguousarray(labels, dtype=np.int64)
        b, k = z.shape
        lse = cp.empty((b,), dtype=np.float32)
        loss = cp.empty((b,), dtype=np.float32)
        if b:
            self._kernel("softmax_ce_fwd")((b,), (_BLOCK,), (z, labels, lse, loss, np.int64(k)))
        return loss.mean(), lse

    def softmax_cross_entropy_bwd(self, z, labels, lse, g):
        cp = self.cp
        z = cp.ascontiguousarray(z)
        labels = cp.ascontiguousarray(labels, dtype=np.int64)
        g = cp.asarray(g, dtype=np.float32).reshape(1)
        b, k = z.shape
        dz = cp.empty_like(z)
        self._kernel("softmax_ce_bwd")(z, cp.ascontiguousarray(lse), labels, g, k, b, dz)
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
            self._kernel("layer_norm_fwd")((rows,), (_BLOCK,),
                                           (x, w, b, y, mean, rstd, np.int64(d), np.float32(eps)))
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
            self._kernel("layer_norm_bwd")((rows,), (_BLOCK,),
                                           (dy, x, w, mean, rstd, dx, np.int64(d)))
        if weight is None:
            return dx, None, None
        dy2, x2 = dy.reshape(rows, d), x.reshape(rows, d)
        dw = self._kernel("dot_xhat")(dy2, x2, mean.reshape(rows, 1), rstd.reshape(rows, 1),
                                      axis=0)
        return dx, dw, dy2.sum(axis=0)

    def batch_norm_fwd(self, x, weight, bias, eps):
        cp = self.cp
        n, c = x.shape
        mean = x.mean(axis=0)
        var = x.var(axis=0)  # biased (ddof=0), as the course's running statistics
        rstd = cp.reciprocal(cp.sqrt(var + np.float32(eps)))
        w = cp.ones((c,), np.float32) if weight is None else weight
        b = cp.zeros((c,), np.float32) if bias is None else bias
        y = self._kernel("batch_norm_fwd")(x, mean, rstd, w, b)
        return y, mean, rstd, var

    def batch_norm_bwd(self, dy, x, mean, rstd, weight):
        cp = self.cp
        n, c = x.shape
        w = cp.ones((c,), np.float32) if weight is None else weight
        db = dy.sum(axis=0)
        dw = self._kernel("dot_xhat")(dy, x, mean, rstd, axis=0)
        dx = self._kernel("batch_norm_bwd")(dy, x, mean, rstd, w, db, dw, np.float32(n))
        if weight is None:
            return dx, None, None
        return dx, dw, db

    def adam_update(self, w, g, m, v, lr, beta1, beta2, eps, step, weight_decay, decoupled):
        f = np.float32
        lr_t = lr / (1.0 - beta1 ** step)
        inv_bc2 = 1.0 / (1.0 - beta2 ** step)
        wd, keep = (0.0, 1.0 - lr * weight_decay) if decoupled else (weight_decay, 1.0)
        self._kernel("adam")(g, f(lr_t), f(beta1), f(beta2), f(inv_bc2), f(eps), f(wd), f(keep),
                             w, m, v)
