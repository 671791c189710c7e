"""CPUDevice's C kernels: cpu_kernels.c through ctypes, each with the NumPy kernel as fallback.

cpu_kernels.c holds a small fork-join thread pool and the loops NumPy runs badly or on one core
only: direct NHWC convolution (forward, weight and input gradients), im2col/col2im, zero
padding, batch norm over channels-last rows and ReLU. It is compiled once with `-O3
-march=native` (c_build.py) and cached; ctypes releases the GIL for each call, and each call
splits its work over the pool's threads itself (a few microseconds, against ~80 for a Python
thread pool hand-off on a 2-core VM).

Only float32 operands in the layouts the kernels expect take them; anything else, and every
call when no C compiler works (or NEEDLE_CPU_C=0), runs the NumPy kernels of the base classes.
Statistics are accumulated in float64 per channel: at least as accurate as NumPy's float32
sums. im2col and col2im give NumPy's numbers exactly (copies, and the same additions in the
same order per element).
"""
from __future__ import annotations

import ctypes
import os

import numpy as np

from .c_build import build_library, c_compiler

_SOURCE_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cpu_kernels.c")
_LL, _P, _I = ctypes.c_longlong, ctypes.c_void_p, ctypes.c_int
_SIGNATURES = {
    "pool_configure": ([_I, _I], None),
    "pool_noop": ([_LL, _I], _I),
    "blas_configure": ([_P, _I], None),
    "gemm": ([_I, _I] + [_LL] * 4 + [_P, _LL, _LL, _P, _LL, _LL, ctypes.c_float, _P, _LL, _LL,
                                       _I], _I),
    "relu": ([_P, _P, _LL, _I], None),
    "relu_grad": ([_P, _P, _P, _LL, _I], None),
    "pad_nhwc": ([_P, _P] + [_LL] * 5 + [_I], None),
    "im2col": ([_P, _P] + [_LL] * 10 + [_I], None),
    "col2im": ([_P, _P] + [_LL] * 10 + [_I], None),
    "conv_fwd": ([_P, _P, _P, _P] + [_LL] * 10 + [_I], None),
    "conv_wgrad": ([_P, _P, _P, _P] + [_LL] * 10 + [_I], None),
    "conv_dgrad": ([_P, _P, _P] + [_LL] * 11 + [_I], None),
    "conv_dgrad_small": ([_P, _P, _P] + [_LL] * 11 + [_I], None),
    "bn_stats": ([_P, _LL, _LL, _P, _P, _I], _I),
    "bn_apply": ([_P, _P, _LL, _LL, _P, _P, _P, _I], None),
    "bn_bwd_sums": ([_P, _P, _LL, _LL, _P, _P, _P, _P, _I], _I),
    "bn_bwd_dx": ([_P, _P, _P, _LL, _LL, _P, _P, _P, _P, _P, _I], None),
}
# Below this many elements (or multiply-adds / 16) a kernel runs on the calling thread alone.
_MIN_PARALLEL = 1 << 15
# Microseconds a pool worker waits for the next job (calling sched_yield) before it sleeps:
# longer than the gaps between the kernels of a training step, even the data loading at its
# start (a sleeping worker takes 50-90 us to wake on a 2-core VM).
_SPIN = 5000
# Below this many multiply-adds a matrix product is NumPy's call (one BLAS thread): the
# split costs ~10 us of Python and two calls' packing (measured on MLPResNet's products).
_MIN_PARALLEL_GEMM = 1 << 20
_LIB = []  # [library or None], built on first use
_GEMM = []  # [True when the library's gemm has NumPy's BLAS sgemm]


def library():
    """The compiled kernels (a ctypes library with the functions above), or None."""
    if not _LIB:
        lib = None
        if os.environ.get("NEEDLE_CPU_C", "1").strip() != "0":
            with open(_SOURCE_FILE) as f:
                source = f.read()
            lib = build_library(source, c_compiler(), "cpu",
                                ("-O3", "-march=native", "-pthread"))
        if lib is not None:
            for name, (args, res) in _SIGNATURES.items():
                fn = getattr(lib, name)
                fn.argtypes, fn.restype = args, res
        _GEMM.append(lib is not None and _connect_blas(lib))
        _LIB.append(lib)
    return _LIB[0]


# (sgemm, 64-bit integers, set_num_threads) symbol names of the OpenBLAS builds NumPy ships
# (scipy-openblas, with 64- or 32-bit integers) and of a system OpenBLAS
_BLAS_SYMBOLS = (
    ("scipy_cblas_sgemm64_", True, "scipy_openblas_set_num_threads64_"),
    ("scipy_cblas_sgemm", False, "scipy_openblas_set_num_threads"),
    ("cblas_sgemm64_", True, "openblas_set_num_threads64_"),
    ("cblas_sgemm", False, "openblas_set_num_threads"),
)


def _numpy_blas_paths():
    """Paths of the OpenBLAS libraries loaded in this process (NumPy's), Linux only."""
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if "/" in line}
    except OSError:
        return []
    return sorted(p for p in paths
                  if "openblas" in os.path.basename(p).lower() and os.path.isfile(p))


def _connect_blas(lib) -> bool:
    """Hand the C library NumPy's OpenBLAS sgemm and set OpenBLAS to one thread: needle's
    pool splits each product over its own threads (two thread pools spinning on the same
    cores slowed a training step 3x). False, and nothing changed, when no OpenBLAS with a
    CBLAS sgemm is loaded: products then stay NumPy's."""
    for path in _numpy_blas_paths():
        try:
            blas = ctypes.CDLL(path)
        except OSError:
            continue
        for gemm_name, ilp64, threads_name in _BLAS_SYMBOLS:
            gemm = getattr(blas, gemm_name, None)
            set_threads = getattr(blas, threads_name, None)
            if gemm is None or set_threads is None:
                continue
            set_threads.argtypes, set_threads.restype = [ctypes.c_int], None
            set_threads(1)
            lib.blas_configure(ctypes.cast(gemm, ctypes.c_void_p).value, int(ilp64))
            return True
    return False


def configure_pool(threads: int) -> None:
    """The C pool's parallelism (the CPU device's thread count)."""
    lib = library()
    if lib is not None:
        lib.pool_configure(int(threads), _SPIN)


def _ptr(a) -> int:
    return a.ctypes.data


def _ok(*arrays) -> bool:
    return all(a.dtype == np.float32 and a.flags.c_contiguous for a in arrays)


def _dense_order(a):
    """Axes of `a` by decreasing stride when its memory is dense (row-major in that order:
    a C-contiguous array, or a permuted view of one), else None."""
    if a.flags.c_contiguous:
        return ()
    order = tuple(sorted(range(a.ndim), key=lambda i: -a.strides[i]))
    return order if a.transpose(order).flags.c_contiguous else None


def _flat(a, order):
    return (a if order == () else a.transpose(order)).reshape(-1)


def _blas_layout(a3):
    """(transposed, leading dimension, batch stride) in elements of the matrices of a
    (batch, rows, cols) float32 array for a row-major BLAS call, or None when its items are
    neither row- nor column-major."""
    s0, s1, s2 = (st // 4 for st in a3.strides)
    if any(st % 4 for st in a3.strides) or min(s0, s1, s2) < 0:
        return None
    b, r, c = a3.shape
    if s2 == 1 and (r == 1 or s1 >= c):
        return 0, max(s1, c, 1), s0
    if s1 == 1 and (c == 1 or s2 >= r):
        return 1, max(s2, r, 1), s0
    return None


class CKernels:
    """CPUDevice's C overrides; each falls back to the next class's kernel (NumPy)."""

    __slots__ = ()

    def set_num_threads(self, n: int) -> None:
        super().set_num_threads(n)
        configure_pool(self._threads.threads)

    def _parts(self, work: int) -> int:
        """Blocks a C kernel over `work` elements splits into (1: the calling thread)."""
        return self._threads.threads if work >= _MIN_PARALLEL else 1

    def _lib(self):
        lib = library()
        if lib is not None and not self._threads.c_configured:
            configure_pool(self._threads.threads)
            self._threads.c_configured = True
        return lib

    # ---- matrix products -------------------------------------------------------------------
    def _mm(self, a, b, out=None):
        lib = self._lib()
        if (lib is None or not _GEMM[0] or a.ndim < 2 or b.ndim < 2
                or a.size * b.shape[-1] < _MIN_PARALLEL_GEMM  # small: NumPy's call is cheaper
                or a.dtype != np.float32 or b.dtype != np.float32
                or a.shape[-1] != b.shape[-2] or 0 in a.shape or 0 in b.shape
                or (b.ndim > 2 and a.shape[:-2] != b.shape[:-2])):
            return super()._mm(a, b, out)
        m, k, n = a.shape[-2], a.shape[-1], b.shape[-1]
        lead = a.shape[:-2]
        if b.ndim == 2:  # (..., M, K) @ (K, N): one product of (prod(...) M, K) rows
            a3, b3, batch = a.reshape(1, -1, k), b.reshape(1, k, n), 1
            rows = a3.shape[1]
        else:
            a3, b3 = a.reshape((-1, m, k)), b.reshape((-1, k, n))
            batch, rows = a3.shape[0], m
        la, lb = _blas_layout(a3), _blas_layout(b3)
        if la is None:
            a3 = np.ascontiguousarray(a3)
            la = _blas_layout(a3)
        if lb is None:
            b3 = np.ascontiguousarray(b3)
            lb = _blas_layout(b3)
        shape = lead + (m, n)
        if out is None:
            out = np.empty(shape, dtype=np.float32)
        elif out.shape != shape or out.dtype != np.float32 or not out.flags.c_contiguous:
            return super()._mm(a, b, out)
        sc = rows * n if batch > 1 else 0
        lib.gemm(la[0], lb[0], batch, rows, n, k, _ptr(a3), la[1], la[2] if batch > 1 else 0,
                 _ptr(b3), lb[1], lb[2] if batch > 1 else 0, 0.0, _ptr(out), n, sc,
                 self._threads.threads)
        return out

    # ---- ReLU -----------------------------------------------------------------------------
    def relu(self, x, out=None):
        lib = self._lib()
        a = x._array
        order = _dense_order(a) if lib is not None and a.dtype == np.float32 else None
        if order is None or (out is not None and out._array.strides != a.strides):
            return super().relu(x, out)
        y = np.empty_like(a) if out is None else out._array  # the same layout as x
        lib.relu(_ptr(a), _ptr(y), a.size, self._parts(a.size))
        return self._wrap(y) if out is None else out

    def relu_grad(self, g, y, out=None):
        lib = self._lib()
        gn, yn = g._array, y._array
        if (lib is None or gn.dtype != np.float32 or yn.dtype != np.float32
                or gn.shape != yn.shape):
            return super().relu_grad(g, y, out)
        order = _dense_order(yn)
        if order is None or (out is not None and out._array.strides != yn.strides):
            return super().relu_grad(g, y, out)
        if gn.strides != yn.strides:  # e.g. a broadcast gradient (a mean's backward)
            g_in_layout = np.empty_like(yn)
            g_in_layout[...] = gn
            gn = g_in_layout
        dx = np.empty_like(yn) if out is None else out._array
        lib.relu_grad(_ptr(gn), _ptr(yn), _ptr(dx), yn.size, self._parts(yn.size))
        return self._wrap(dx) if out is None else out

    # ---- convolution windows: blocks of images --------------------------------------------
    def _im2col_into(self, a, cols, stride, ph, pw):
        lib = self._lib()
        if lib is None or a.dtype != np.float32 or not cols.flags.c_contiguous or ph != pw:
            return super()._im2col_into(a, cols, stride, ph, pw)
        a = np.ascontiguousarray(a)
        n, h, w, c = a.shape
        ho, wo, kh, kw = cols.shape[1:5]
        lib.im2col(_ptr(a), _ptr(cols), n, h, w, c, kh, kw, stride, ph, ho, wo,
                   self._parts(cols.size))

    def _col2im(self, d, dx, s, p):
        lib = self._lib()
        if lib is None or not (_ok(dx) and d.dtype == np.float32):
            return super()._col2im(d, dx, s, p)
        d = np.ascontiguousarray(d)
        n, ho, wo, kh, kw, c = d.shape
        lib.col2im(_ptr(d), _ptr(dx), n, dx.shape[1], dx.shape[2], c, kh, kw, s, p, ho, wo,
                   self._parts(d.size))

    # ---- direct convolution ---------------------------------------------------------------
    def _direct(self, lib, x, w) -> bool:
        """Whether the C kernels run this convolution: float32 operands and a multiple of
        16 output channels (the kernels' vector width)."""
        return (lib is not None and x.dtype == np.float32 and w.dtype == np.float32
                and w.shape[3] % 16 == 0)

    def _padded(self, lib, a, p: int):
        """NHWC native `a` zero-padded by p on H and W, C-contiguous (a copy, or `a`)."""
        a = np.ascontiguousarray(a)
        if p == 0:
            return a
        n, h, w, c = a.shape
        out = np.empty((n, h + 2 * p, w + 2 * p, c), dtype=a.dtype)
        lib.pad_nhwc(_ptr(a), _ptr(out), n, h, w, c, p, self._parts(out.size))
        return out

    def conv_forward(self, x, w, bias, stride, padding):
        lib = self._lib()
        if not self._direct(lib, x, w):
            return super().conv_forward(x, w, bias, stride, padding)
        kh, kw, cin, cout = w.shape
        xpad = self._padded(lib, x._array, padding)
        n, hp, wp = xpad.shape[:3]
        ho, wo = (hp - kh) // stride + 1, (wp - kw) // stride + 1
        wn = np.ascontiguousarray(w._array)
        bn = None if bias is None else np.ascontiguousarray(bias._array.reshape(cout),
                                                            dtype=np.float32)
        out = np.empty((n, ho, wo, cout), dtype=np.float32)
        lib.conv_fwd(_ptr(xpad), _ptr(wn), None if bn is None else _ptr(bn), _ptr(out), n,
                     hp, wp, cin, kh, kw, cout, stride, ho, wo,
                     self._parts(out.size * kh * kw * cin // 16))
        return self._wrap(out), self._wrap(xpad)

    def conv_saved(self, x, w, stride, padding):
        lib = self._lib()
        if not self._direct(lib, x, w):
            return super().conv_saved(x, w, stride, padding)
        return self._wrap(self._padded(lib, x._array, padding))

    def conv_weight_grad(self, saved, g, w_shape, stride, padding):
        lib = self._lib()
        if saved.ndim != 4 or lib is None:  # an im2col matrix (the base class's form)
            return super().conv_weight_grad(saved, g, w_shape, stride, padding)
        xpad = saved._array
        gn = np.ascontiguousarray(g._array, dtype=np.float32)
        kh, kw, cin, cout = w_shape
        n, hp, wp = xpad.shape[:3]
        ho, wo = gn.shape[1:3]
        size = kh * kw * cin * cout
        dw = np.empty(size + cout, dtype=np.float32)  # the kernel's room for a bias sum
        lib.conv_wgrad(_ptr(xpad), _ptr(gn), _ptr(dw), None, n, hp, wp, cin, kh, kw, cout,
                       stride, ho, wo, self._parts(gn.size * kh * kw * cin // 16))
        return self._wrap(dw[:size].reshape(w_shape))

    def conv_input_grad(self, g, w, shape, stride, padding):
        lib = self._lib()
        kh, kw, cin, cout = w.shape
        if (lib is None or g.dtype != np.float32 or w.dtype != np.float32
                or (cin % 16 != 0 and (cin >= 16 or cout % 16 != 0))):
            return super().conv_input_grad(g, w, shape, stride, padding)
        gn = np.ascontiguousarray(g._array)
        n, h, wd = shape[:3]
        ho, wo = gn.shape[1:3]
        dx = np.empty((n, h, wd, cin), dtype=np.float32)
        dims = (n, h, wd, padding, cin, kh, kw, cout, stride, ho, wo,
                self._parts(gn.size * kh * kw * cin // 16))
        if cin % 16 == 0:
            wt = np.ascontiguousarray(w._array.transpose(0, 1, 3, 2))  # (KH, KW, C_out, C)
            lib.conv_dgrad(_ptr(gn), _ptr(wt), _ptr(dx), *dims)
        else:
            wn = np.ascontiguousarray(w._array)
            lib.conv_dgrad_small(_ptr(gn), _ptr(wn), _ptr(dx), *dims)
        return self._wrap(dx)

    # ---- batch norm over channels-last rows -----------------------------------------------
    def _batch_norm_fwd(self, x, weight=None, bias=None, eps=1e-5, axes=(0,)):
        lib = self._lib()
        x2 = None if lib is None else self._rows_by_channel(x, axes)
        if x2 is None or not _ok(x2):
            return super()._batch_norm_fwd(x, weight, bias, eps, axes)
        rows, c = x2.shape
        parts = self._parts(x2.size)
        mean64, var64 = np.empty(c), np.empty(c)
        if lib.bn_stats(_ptr(x2), rows, c, _ptr(mean64), _ptr(var64), parts):
            raise MemoryError("batch_norm: out of memory for the partial sums")
        mean, var = mean64.astype(np.float32), var64.astype(np.float32)
        rstd = (1.0 / np.sqrt(var64 + eps)).astype(np.float32)
        scale = rstd if weight is None else np.ascontiguousarray(rstd * weight.reshape(c))
        shift = (np.zeros(c, np.float32) if bias is None
                 else np.ascontiguousarray(bias.reshape(c), dtype=np.float32))
        scale = scale.astype(np.float32, copy=False)
        y = np.empty_like(x2)
        lib.bn_apply(_ptr(x2), _ptr(y), rows, c, _ptr(mean), _ptr(scale), _ptr(shift), parts)
        return self._as_layout(y, x), mean, rstd, var

    def _batch_norm_bwd(self, dy, x, mean, rstd, weight=None, axes=(0,)):
        lib = self._lib()
        x2 = None if lib is None else self._rows_by_channel(x, axes)
        dy2 = None if x2 is None else self._rows_by_channel(dy, axes)
        if dy2 is None or not _ok(x2, dy2, mean, rstd):
            return super()._batch_norm_bwd(dy, x, mean, rstd, weight, axes)
        rows, c = x2.shape
        parts = self._parts(x2.size)
        mean, rstd = mean.reshape(c), rstd.reshape(c)
        db64, dw64 = np.empty(c), np.empty(c)
        if lib.bn_bwd_sums(_ptr(dy2), _ptr(x2), rows, c, _ptr(mean), _ptr(rstd),
                           _ptr(db64), _ptr(dw64), parts):
            raise MemoryError("batch_norm: out of memory for the partial sums")
        db, dw = db64.astype(np.float32), dw64.astype(np.float32)
        scale = rstd if weight is None else rstd * weight.reshape(c)
        scale = np.ascontiguousarray(scale, dtype=np.float32)
        mdb, mdw = db / np.float32(rows), dw / np.float32(rows)
        dx = np.empty_like(x2)
        lib.bn_bwd_dx(_ptr(dy2), _ptr(x2), _ptr(dx), rows, c, *(
            _ptr(v) for v in (mean, rstd, scale, mdb, mdw)), parts)
        dx = self._as_layout(dx, x)
        if weight is None:
            return dx, None, None
        return dx, dw.reshape(weight.shape), db.reshape(weight.shape)
