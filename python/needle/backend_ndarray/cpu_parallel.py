"""Intra-op threads for the CPU device's large row-wise kernels.

NumPy's ufunc loops release the GIL but run on one core, while BLAS calls use every core the
BLAS thread count allows. The fused kernels whose rows are independent (softmax cross-entropy,
layer norm) and the elementwise optimizer updates therefore split large arrays into one block
of rows per thread and run the base class's kernel on each block in a small thread pool. Each
row (each element, for the updates) is computed by the same code on the same values: the
softmax cross-entropy and the updates equal the one-thread kernel's bit for bit. Layer norm's
row means are BLAS matrix-vector products, whose rounding can depend on where a block starts,
and its weight and bias gradients add the blocks' partial sums: equal up to float rounding.

The thread count is `NEEDLE_NUM_THREADS`, else `OMP_NUM_THREADS`, else the number of CPUs;
`CPUDevice.set_num_threads(n)` changes it. Arrays under `_MIN_ELEMENTS` run on one thread (a
pool hand-off costs tens of microseconds).

`keep_freed_memory()` (run when the CPU device is made) asks glibc's allocator to keep freed
memory for reuse: by default every array above a few megabytes is a fresh `mmap`, so a
training step that frees and re-allocates its activations pays a page fault per 4 KiB page
(measured: about 8000 per step of the small CNN, none with the setting). The process then
keeps its peak working set, as a caching allocator does. `NEEDLE_KEEP_FREED_MEMORY=0` turns
it off.
"""
from __future__ import annotations

import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

_MIN_ELEMENTS = 1 << 18  # below this, one thread is faster than the hand-off

# glibc mallopt parameters
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3


def keep_freed_memory() -> bool:
    """Make glibc serve arrays up to 1 GiB from its heap and keep up to 2 GiB of freed heap
    memory (plus 64 MiB of padding) instead of returning it to the system; True when set.
    A no-op off glibc or with NEEDLE_KEEP_FREED_MEMORY=0."""
    if os.environ.get("NEEDLE_KEEP_FREED_MEMORY", "1").strip() == "0":
        return False
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    ok = mallopt(_M_MMAP_THRESHOLD, 1 << 30) == 1
    ok = mallopt(_M_TRIM_THRESHOLD, (1 << 31) - 1) == 1 and ok
    return mallopt(_M_TOP_PAD, 64 << 20) == 1 and ok


def _default_threads() -> int:
    for var in ("NEEDLE_NUM_THREADS", "OMP_NUM_THREADS"):
        value = os.environ.get(var, "").strip()
        if value.isdigit() and int(value) > 0:
            return int(value)
    return os.cpu_count() or 1


class RowThreads:
    """A lazily started pool running `fn(lo, hi)` over blocks of `range(n)`."""

    def __init__(self, threads: int | None = None):
        self.threads = threads or _default_threads()
        self._pool = None
        self._pid = None
        self._lock = threading.Lock()

    def set_threads(self, n: int) -> None:
        if int(n) < 1:
            raise ValueError(f"set_num_threads: need at least 1 thread, got {n}")
        with self._lock:
            self.threads = int(n)
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None

    def blocks(self, n_rows: int, n_elements: int) -> int:
        """How many blocks a kernel over `n_rows` rows of `n_elements` elements runs in."""
        if self.threads < 2 or n_elements < _MIN_ELEMENTS or n_rows < 2:
            return 1
        return min(self.threads, n_rows)

    def run(self, fn, n_rows: int, n_blocks: int) -> list:
        """[fn(lo, hi) for `n_blocks` contiguous blocks covering range(n_rows)], in block
        order; the calling thread runs the last block. Exceptions propagate."""
        bounds = [n_rows * i // n_blocks for i in range(n_blocks + 1)]
        pool = self._get_pool()
        futures = [pool.submit(fn, bounds[i], bounds[i + 1]) for i in range(n_blocks - 1)]
        try:
            last = fn(bounds[-2], bounds[-1])
        finally:
            results = [f.result() for f in futures]
        return results + [last]

    def _get_pool(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None or self._pid != os.getpid():  # a forked child starts anew
                self._pool = ThreadPoolExecutor(max_workers=max(1, self.threads - 1),
                                                thread_name_prefix="needle-cpu")
                self._pid = os.getpid()
            return self._pool


def _sum_blocks(parts):
    """The blocks' partial sums added in block order (a new array)."""
    total = parts[0].copy()
    for part in parts[1:]:
        total += part
    return total


class ParallelCPUKernels:
    """CPUDevice's overrides: the base kernels run on blocks of rows in `self._threads`, and
    row scatters sum sorted runs instead of NumPy's slow `add.at`."""

    __slots__ = ()

    def set_num_threads(self, n: int) -> None:
        """Threads for the row-parallel kernels (BLAS keeps its own setting)."""
        self._threads.set_threads(n)

    def get_num_threads(self) -> int:
        return self._threads.threads

    def _softmax_cross_entropy_fwd(self, z, labels):
        n = z.shape[0]
        k = self._threads.blocks(n, z.size)
        if k == 1:
            return super()._softmax_cross_entropy_fwd(z, labels)
        xp = self.xp
        lse = xp.empty((n,), dtype=z.dtype)
        per_row = xp.empty((n,), dtype=z.dtype)
        base = super()._softmax_cross_entropy_rows

        def block(lo, hi):
            lse[lo:hi], per_row[lo:hi] = base(z[lo:hi], labels[lo:hi])

        self._threads.run(block, n, k)
        return xp.asarray(per_row.mean(), dtype=z.dtype), lse

    def _softmax_cross_entropy_bwd(self, z, labels, lse, g):
        n = z.shape[0]
        k = self._threads.blocks(n, z.size)
        if k == 1:
            return super()._softmax_cross_entropy_bwd(z, labels, lse, g)
        out = self.xp.empty(z.shape, dtype=z.dtype)
        base = super()._softmax_cross_entropy_bwd_rows
        scale = self.xp.asarray(g, dtype=z.dtype) / n

        def block(lo, hi):
            base(z[lo:hi], labels[lo:hi], lse[lo:hi], scale, out[lo:hi])

        self._threads.run(block, n, k)
        return out

    def _layer_norm_fwd(self, x, weight=None, bias=None, eps=1e-5):
        d = x.shape[-1]
        x2 = x.reshape(-1, d)
        n = x2.shape[0]
        k = self._threads.blocks(n, x.size)
        if k == 1:
            return super()._layer_norm_fwd(x, weight, bias, eps)
        xp = self.xp
        y = xp.empty(x2.shape, dtype=x.dtype)
        mean = xp.empty((n,), dtype=x.dtype)
        rstd = xp.empty((n,), dtype=x.dtype)
        base = super()._layer_norm_fwd

        def block(lo, hi):
            _, mean[lo:hi], rstd[lo:hi] = base(x2[lo:hi], weight, bias, eps, out=y[lo:hi])

        self._threads.run(block, n, k)
        lead = x.shape[:-1]
        return y.reshape(x.shape), mean.reshape(lead), rstd.reshape(lead)

    def _layer_norm_bwd(self, dy, x, mean, rstd, weight=None):
        d = x.shape[-1]
        x2, dy2 = x.reshape(-1, d), dy.reshape(-1, d)
        m2, r2 = mean.reshape(-1), rstd.reshape(-1)
        n = x2.shape[0]
        k = self._threads.blocks(n, x.size)
        if k == 1:
            return super()._layer_norm_bwd(dy, x, mean, rstd, weight)
        xp = self.xp
        dx = xp.empty(x2.shape, dtype=x.dtype)
        base = super()._layer_norm_bwd

        def block(lo, hi):
            _, dw, db = base(dy2[lo:hi], x2[lo:hi], m2[lo:hi], r2[lo:hi], weight,
                             out=dx[lo:hi])
            return dw, db

        parts = self._threads.run(block, n, k)
        if weight is None:
            return dx.reshape(x.shape), None, None
        return (dx.reshape(x.shape), _sum_blocks([p[0] for p in parts]),
                _sum_blocks([p[1] for p in parts]))

    # ---- batch norm: blocks of rows of the (rows, C) matrix ---------------------------------
    def _rows_by_channel(self, a, axes):
        """`a` as a C-contiguous (rows, C) native matrix when batch norm's `axes` are all
        but axis 1 and the memory is channels-last ((N, C) arrays, NCHW views of NHWC
        memory), else None."""
        if a.ndim < 2 or tuple(axes) != tuple(i for i in range(a.ndim) if i != 1):
            return None
        order = (0,) + tuple(range(2, a.ndim)) + (1,)
        t = a.transpose(order)
        return t.reshape(-1, a.shape[1]) if t.flags.c_contiguous else None

    @staticmethod
    def _as_layout(m, like):
        """The (rows, C) matrix `m` viewed in the shape of `like` (inverse of
        `_rows_by_channel`)."""
        shape = (like.shape[0],) + like.shape[2:] + (like.shape[1],)
        back = (0, like.ndim - 1) + tuple(range(1, like.ndim - 1))
        return m.reshape(shape).transpose(back)

    def _batch_norm_fwd(self, x, weight=None, bias=None, eps=1e-5, axes=(0,)):
        x2 = self._rows_by_channel(x, axes)
        k = 1 if x2 is None else self._threads.blocks(x2.shape[0], x2.size)
        if k == 1:
            return super()._batch_norm_fwd(x, weight, bias, eps, axes)
        xp = self.xp
        rows, c = x2.shape
        y = xp.empty_like(x2)
        run = self._threads.run

        def block_var(lo, hi):
            yb = y[lo:hi]
            xp.subtract(x2[lo:hi], mean, out=yb)
            return xp.einsum("ij,ij->j", yb, yb)

        mean = _sum_blocks(run(lambda lo, hi: xp.ones((hi - lo,), dtype=x.dtype) @ x2[lo:hi],
                               rows, k)) / rows
        var = _sum_blocks(run(block_var, rows, k)) / rows
        rstd = (1.0 / xp.sqrt(var + eps)).astype(x.dtype)
        scale = rstd if weight is None else rstd * weight.reshape(c)

        def block_out(lo, hi):
            yb = y[lo:hi]
            yb *= scale
            if bias is not None:
                yb += bias.reshape(c)

        run(block_out, rows, k)
        return self._as_layout(y, x), mean, rstd, var

    def _batch_norm_bwd(self, dy, x, mean, rstd, weight=None, axes=(0,)):
        x2, dy2 = self._rows_by_channel(x, axes), self._rows_by_channel(dy, axes)
        k = 1 if x2 is None or dy2 is None else self._threads.blocks(x2.shape[0], x2.size)
        if k == 1:
            return super()._batch_norm_bwd(dy, x, mean, rstd, weight, axes)
        xp = self.xp
        rows, c = x2.shape
        dx = xp.empty_like(x2)  # holds xh until the second pass overwrites it
        mean, rstd = mean.reshape(c), rstd.reshape(c)

        def block_sums(lo, hi):
            xh = dx[lo:hi]
            xp.subtract(x2[lo:hi], mean, out=xh)
            xh *= rstd
            d = dy2[lo:hi]
            return xp.ones((hi - lo,), dtype=d.dtype) @ d, xp.einsum("ij,ij->j", d, xh)

        parts = self._threads.run(block_sums, rows, k)
        db, dw = _sum_blocks([p[0] for p in parts]), _sum_blocks([p[1] for p in parts])
        scale = rstd * weight.reshape(c) if weight is not None else rstd

        def block_dx(lo, hi):
            out = dx[lo:hi]
            out *= dw
            out += db
            out *= -1.0 / rows
            out += dy2[lo:hi]
            out *= scale

        self._threads.run(block_dx, rows, k)
        dx = self._as_layout(dx, x)
        if weight is None:
            return dx, None, None
        return dx, dw.reshape(weight.shape), db.reshape(weight.shape)

    # ---- convolution: blocks of images ----------------------------------------------------
    def _im2col_into(self, a, cols, stride, ph, pw):
        n = a.shape[0]
        k = self._threads.blocks(n, cols.size)
        if k == 1:
            return super()._im2col_into(a, cols, stride, ph, pw)
        base = super()._im2col_into
        self._threads.run(lambda lo, hi: base(a[lo:hi], cols[lo:hi], stride, ph, pw), n, k)

    def _col2im(self, d, dx, s, p):
        n = d.shape[0]
        k = self._threads.blocks(n, d.size)
        if k == 1:
            return super()._col2im(d, dx, s, p)
        base = super()._col2im
        self._threads.run(lambda lo, hi: base(d[lo:hi], dx[lo:hi], s, p), n, k)

    def _scatter_rows(self, out, rows, values):
        # NumPy's `add.at` is unbuffered and slow on rows: sort the ids, add each run of equal
        # ids with one `reduceat` (its own summation order: equal up to rounding), and write
        # each distinct row once.
        xp = self.xp
        if rows.size == 0:
            return
        order = xp.argsort(rows, kind="stable")
        ids = rows[order]
        starts = xp.flatnonzero(xp.concatenate(([True], ids[1:] != ids[:-1])))
        out[ids[starts]] += xp.add.reduceat(values[order], starts, axis=0)

    def _adam_update(self, w, g, m, v, lr, beta1, beta2, eps, step, weight_decay=0.0,
                     decoupled=False):
        k = self._threads.blocks(w.size, w.size)
        if k == 1 or not (w.flags.c_contiguous and g.flags.c_contiguous
                          and m.flags.c_contiguous and v.flags.c_contiguous):
            return super()._adam_update(w, g, m, v, lr, beta1, beta2, eps, step,
                                        weight_decay, decoupled)
        flat = [a.reshape(-1) for a in (w, g, m, v)]
        base = super()._adam_update

        def block(lo, hi):
            base(*(a[lo:hi] for a in flat), lr, beta1, beta2, eps, step, weight_decay,
                 decoupled)

        self._threads.run(block, w.size, k)
