"""NumPy references of the fused CUDA kernels, the same algorithm loop for loop.

Each function follows one kernel of cuda_sources.py (and the CuPy calls around it in
cuda_kernels.py) in float32, in the kernel's order of operations: a row kernel's threads are
a vector over `threadIdx.x`, each thread's strided loop `for (j = t; j < d; j += blockDim.x)`
is a loop over steps of blockDim.x columns, and the block reduction is the kernel's butterfly
of warp shuffles (lane l combines with lane l ^ o for o = 16 .. 1), then lane 0 of each warp
into shared memory and the same butterfly over those partials in warp 0. Elementwise kernels
have no interaction between threads, so one vector operation over all indices is their loop.

Tests check these against the composed `Device` code (tests/test_cuda_reference.py); on a GPU
the device is checked against these, so a mismatch there is the device's, not the algorithm's.
Functions take and return NumPy arrays; the launch geometry comes from cuda_sources.py.
"""
from __future__ import annotations

import numpy as np

from .cuda_sources import ROW_BLOCK, column_chunks

__all__ = ["block_reduce", "softmax_ce_fwd", "softmax_ce_bwd", "layer_norm_fwd",
           "layer_norm_bwd", "dot_xhat_partial", "dot_xhat", "batch_norm_fwd",
           "batch_norm_normalize", "batch_norm_bwd", "batch_norm_dx", "adam", "adam_kernel"]

_F = np.float32


def block_reduce(v: np.ndarray, op, identity: float) -> np.ndarray:
    """`block_sum`/`block_max` of cuda_sources.py for every row of v (rows, blockDim.x),
    blockDim.x a multiple of 32: returns (rows,), the value every thread of the block gets."""
    rows, threads = v.shape
    assert threads % 32 == 0 and threads <= 1024, threads
    v = v.astype(_F, copy=True)
    lane = np.arange(threads)
    for o in (16, 8, 4, 2, 1):  # __shfl_xor_sync within each warp (lane ^ o stays in it)
        v = op(v, v[:, lane ^ o])
    u = np.full((rows, 32), identity, _F)
    u[:, :threads // 32] = v[:, ::32]  # lane 0 of warp w writes sh[w]; lanes >= nw: identity
    lanes = np.arange(32)
    for o in (16, 8, 4, 2, 1):
        u = op(u, u[:, lanes ^ o])
    return u[:, 0]


def _block_sum(v):
    return block_reduce(v, np.add, 0.0)


def _block_max(v):
    return block_reduce(v, np.fmax, -np.inf)


def _thread_loop(x, block, init, step):
    """Each thread t's loop over columns t, t + block, ...: `acc = step(acc, x[:, j])` in
    that order, for all threads and rows at once. x (rows, d); returns (rows, block)."""
    rows, d = x.shape
    acc = np.full((rows, block), init, _F)
    for start in range(0, d, block):
        cols = slice(start, min(start + block, d))
        n = cols.stop - cols.start
        acc[:, :n] = step(acc[:, :n], x[:, cols])
    return acc


def softmax_ce_fwd(z: np.ndarray, y: np.ndarray, block: int = ROW_BLOCK):
    """`ndl_softmax_ce_fwd` (one block per row of z (B, K)) and the CuPy mean after it:
    returns (loss (0-d), lse (B,), per-row loss (B,))."""
    z = np.asarray(z, _F)
    b = z.shape[0]
    m = _block_max(_thread_loop(z, block, -np.inf, lambda a, zj: np.fmax(a, zj)))
    shift = np.where(np.abs(m) == np.inf, _F(0), m).astype(_F)
    s = _block_sum(_thread_loop(z - shift[:, None], block, 0.0,
                                lambda a, zj: a + np.exp(zj)))
    lse = (np.log(s) + shift).astype(_F)
    rows = (lse - z[np.arange(b), np.asarray(y, np.int64)]).astype(_F)
    return np.asarray(rows.mean(dtype=_F), _F), lse, rows


def softmax_ce_bwd(z, y, lse, g):
    """`ndl_softmax_ce_bwd`: dz[i] = (exp(z[i] - lse[r]) - (c == y[r])) * (g / B)."""
    z = np.asarray(z, _F)
    b, k = z.shape
    scale = _F(np.asarray(g, _F).reshape(-1)[0]) / _F(b)
    onehot = (np.arange(k)[None, :] == np.asarray(y, np.int64)[:, None]).astype(_F)
    return ((np.exp(z - np.asarray(lse, _F)[:, None]) - onehot) * scale).astype(_F)


def layer_norm_fwd(x, w=None, b=None, eps=1e-5, block: int = ROW_BLOCK):
    """`ndl_layer_norm_fwd` over the last axis of x (..., D): (y, mean, rstd)."""
    x = np.asarray(x, _F)
    d = x.shape[-1]
    x2 = x.reshape(-1, d)
    w = np.ones(d, _F) if w is None else np.asarray(w, _F)
    b = np.zeros(d, _F) if b is None else np.asarray(b, _F)
    mu = _block_sum(_thread_loop(x2, block, 0.0, lambda a, xj: a + xj)) / _F(d)
    xc = x2 - mu[:, None]
    q = _block_sum(_thread_loop(xc, block, 0.0, lambda a, cj: a + cj * cj))
    rs = (_F(1) / np.sqrt(q / _F(d) + _F(eps))).astype(_F)
    y = (x2 - mu[:, None]) * rs[:, None] * w + b
    lead = x.shape[:-1]
    return y.reshape(x.shape).astype(_F), mu.reshape(lead), rs.reshape(lead)


def dot_xhat_partial(dy, x, mean, rstd, stats_per_row: bool) -> np.ndarray:
    """`ndl_dot_xhat_partial`: partial[chunk, j] = the sum, in row order over the chunk's
    rows, of dy * (x - mean) * rstd in column j of (rows, C); statistics per row or column."""
    dy, x = np.asarray(dy, _F), np.asarray(x, _F)
    rows, c = x.shape
    shape = (rows, 1) if stats_per_row else (1, c)
    term = (dy * (x - np.asarray(mean, _F).reshape(shape))
            * np.asarray(rstd, _F).reshape(shape)).astype(_F)
    per, chunks = column_chunks(rows)
    partial = np.zeros((chunks, c), _F)
    for r in range(rows):  # thread (j, chunk) adds its chunk's rows in order
        partial[r // per] += term[r]
    return partial


def dot_xhat(dy, x, mean, rstd, stats_per_row: bool) -> np.ndarray:
    """`CupyKernels._dot_xhat`: the partial sums, then their sum over chunks (C,)."""
    rows, c = np.shape(x)
    if rows == 0 or c == 0:
        return np.zeros(c, _F)
    return dot_xhat_partial(dy, x, mean, rstd, stats_per_row).sum(axis=0, dtype=_F)


def layer_norm_bwd(dy, x, mean, rstd, w=None, block: int = ROW_BLOCK):
    """`ndl_layer_norm_bwd` for dx, then dweight (`dot_xhat`) and dbias (a column sum):
    (dx, dw, db), the last two None without w."""
    x, dy = np.asarray(x, _F), np.asarray(dy, _F)
    d = x.shape[-1]
    x2, g2 = x.reshape(-1, d), dy.reshape(-1, d)
    ww = np.ones(d, _F) if w is None else np.asarray(w, _F)
    mu = np.asarray(mean, _F).reshape(-1, 1)
    rs = np.asarray(rstd, _F).reshape(-1, 1)
    gw = g2 * ww
    a = _block_sum(_thread_loop(gw, block, 0.0, lambda acc, gj: acc + gj)) / _F(d)
    c = _block_sum(_thread_loop(gw * (x2 - mu) * rs, block, 0.0,
                                lambda acc, tj: acc + tj)) / _F(d)
    dx = (rs * (gw - a[:, None] - (x2 - mu) * rs * c[:, None])).astype(_F).reshape(x.shape)
    if w is None:
        return dx, None, None
    return dx, dot_xhat(g2, x2, mu, rs, True), g2.sum(axis=0, dtype=_F)


def batch_norm_fwd(x, w=None, b=None, eps=1e-5):
    """CuPy's column mean and biased variance, then `ndl_batch_norm_fwd`:
    (y, mean, rstd, var) for x (N, C)."""
    x = np.asarray(x, _F)
    c = x.shape[1]
    mean = x.mean(axis=0, dtype=_F)
    var = x.var(axis=0, dtype=_F)
    rstd = (_F(1) / np.sqrt(var + _F(eps))).astype(_F)
    w = np.ones(c, _F) if w is None else np.asarray(w, _F)
    b = np.zeros(c, _F) if b is None else np.asarray(b, _F)
    return batch_norm_normalize(x, mean, rstd, w, b), mean, rstd, var


def batch_norm_normalize(x, mean, rstd, w, b) -> np.ndarray:
    """`ndl_batch_norm_fwd`: y = (x - mean) * rstd * w + b, per-column vectors (C,)."""
    f = [np.asarray(a, _F) for a in (x, mean, rstd, w, b)]
    return ((f[0] - f[1]) * f[2] * f[3] + f[4]).astype(_F)


def batch_norm_dx(dy, x, mean, rstd, w, db, dw) -> np.ndarray:
    """`ndl_batch_norm_bwd`: dx = w * rstd * (dy - (db + (x - mean) * rstd * dw) / N)."""
    dy, x, mean, rstd, w, db, dw = (np.asarray(a, _F) for a in (dy, x, mean, rstd, w, db, dw))
    return (w * rstd * (dy - (db + (x - mean) * rstd * dw) / _F(x.shape[0]))).astype(_F)


def batch_norm_bwd(dy, x, mean, rstd, w=None):
    """db (a column sum), dw (`dot_xhat`, statistics per column), then `ndl_batch_norm_bwd`:
    dx = w * rstd * (dy - (db + (x - mean) * rstd * dw) / N). (dx, dw, db)."""
    dy = np.asarray(dy, _F)
    c = dy.shape[1]
    ww = np.ones(c, _F) if w is None else w
    db = dy.sum(axis=0, dtype=_F)
    dw = dot_xhat(dy, x, mean, rstd, False)
    dx = batch_norm_dx(dy, x, mean, rstd, ww, db, dw)
    if w is None:
        return dx, None, None
    return dx, dw, db


def adam(w, g, m, v, lr, beta1, beta2, eps, step, weight_decay=0.0, decoupled=False):
    """`CupyKernels.adam_update`'s host-side constants, then `ndl_adam` (`adam_kernel`):
    returns the new (w, m, v), leaving the inputs alone."""
    lr_t = lr / (1.0 - beta1 ** step)
    inv_bc2 = 1.0 / (1.0 - beta2 ** step)
    wd, keep = (0.0, 1.0 - lr * weight_decay) if decoupled else (weight_decay, 1.0)
    return adam_kernel(w, g, m, v, lr_t, beta1, beta2, inv_bc2, eps, wd, keep)


def adam_kernel(w, g, m, v, lr_t, b1, b2, inv_bc2, eps, wd, keep):
    """`ndl_adam`: g' = g + wd w; m = b1 m + (1 - b1) g'; v = b2 v + (1 - b2) g'^2;
    w = w keep - lr_t m / (sqrt(v inv_bc2) + eps), every constant rounded to float32."""
    lr_t, b1, b2, inv_bc2, eps, wd, keep = (_F(c) for c in (lr_t, b1, b2, inv_bc2, eps, wd,
                                                             keep))
    w, g = np.asarray(w, _F), np.asarray(g, _F)
    gg = g + wd * w
    m = b1 * np.asarray(m, _F) + (_F(1) - b1) * gg
    v = b2 * np.asarray(v, _F) + (_F(1) - b2) * gg * gg
    w = w * keep - lr_t * m / (np.sqrt(v * inv_bc2) + eps)
    return w.astype(_F), m.astype(_F), v.astype(_F)
