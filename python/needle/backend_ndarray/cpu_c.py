"""CPUDevice's C kernels: csrc/*.c through ctypes, each with the NumPy kernel as fallback.

csrc/ holds a small fork-join thread pool (pool.c) and the loops NumPy runs badly or on one core
only: matrix products split over the pool (gemm.c), large elementwise operations, sums over
leading axes, ReLU, Adam and SGD (elementwise.c), softmax and softmax cross-entropy rows
(loss.c), layer norm rows (norm.c), embedding gradients and the LSTM time loops (seq.c);
cpu_c_conv.py has the convolution, pooling and batch norm kernels (conv.c, norm.c). The files
are compiled once, as one unit, with `-O3 -march=native -fno-math-errno` (c_build.py) and
cached; ctypes releases the GIL for each call, and each call splits its work over the pool's
threads itself (about a microsecond, against ~80 for a Python thread pool hand-off on a 2-core
VM).

Only float32 operands in the layouts the kernels expect take them; anything else, and every
call when no C compiler works (or NEEDLE_CPU_C=0), runs the NumPy kernels of the base classes.
Sums run in 16 lanes (vectorized), blocks of 64 rows or float64; exp is a vectorizable
polynomial within 2 ulp (loss.c). Copies and elementwise arithmetic give NumPy's numbers exactly.
"""
from __future__ import annotations

import ctypes
import math
import os

import numpy as np

from . import blas
from .c_build import build_library, c_compiler
from .cpu_parallel import _default_threads

_SOURCE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "csrc")
# one translation unit, in this order: pool.c defines what the others use
_SOURCES = ("pool.c", "gemm.c", "elementwise.c", "conv.c", "norm.c", "loss.c", "seq.c")
_LL, _P, _I = ctypes.c_longlong, ctypes.c_void_p, ctypes.c_int
_SIGNATURES = {
    "pool_configure": ([_I, _I], None),
    "pool_noop": ([_LL, _I], _I),
    "blas_configure": ([_P, _I], None),
    "gemm": ([_I, _I] + [_LL] * 4 + [_P, _LL, _P, _P, _LL, _P, _P, _LL, _I], _I),
    "relu": ([_P, _P, _LL, _I], None),
    "relu_grad": ([_P, _P, _P, _LL, _I], None),
    "tanh_grad": ([_P, _P, _P, _LL, _I], None),
    "col_sums": ([_P, _P, _LL, _LL, _I], _I),
    "pad_nhwc": ([_P, _P] + [_LL] * 5 + [_I], None),
    "im2col": ([_P, _P] + [_LL] * 10 + [_I], None),
    "col2im": ([_P, _P] + [_LL] * 10 + [_I], None),
    "conv_fwd": ([_P, _P, _P, _P] + [_LL] * 10 + [_I], None),
    "conv_wgrad": ([_P, _P, _P, _P] + [_LL] * 10 + [_I], None),
    "conv_dgrad": ([_P, _P, _P] + [_LL] * 11 + [_I], _I),
    "conv_dgrad_small": ([_P, _P, _P] + [_LL] * 11 + [_I], None),
    "binary": ([_I, _P, _P, ctypes.c_float, _P, _LL, _I], None),
    "sum_scaled": ([_P, _I, ctypes.c_float, _P, _LL, _I], None),
    "binary_rows": ([_I, _P, _P, _P, _LL, _LL, _I], None),
    "adam": ([_P, _P, _P, _P, _LL] + [ctypes.c_float] * 5 + [_I] + [ctypes.c_float] * 2
             + [_I], None),
    "sgd": ([_P, _P, _P, _LL] + [ctypes.c_float] * 3 + [_I, _I], None),
    "softmax_ce_fwd": ([_P, _P, _P, _P, _LL, _LL, _I], _I),
    "softmax_ce_bwd": ([_P, _P, _P, ctypes.c_float, _P, _LL, _LL, _I], None),
    "softmax_rows": ([_P, _P, _LL, _LL, _I], _I),
    "layer_norm_fwd": ([_P, _P, _P, _P, _P, _P, _LL, _LL, ctypes.c_float, _I], None),
    "layer_norm_bwd": ([_P] * 8 + [_LL, _LL, _I], _I),
    "embedding_scatter": ([_P, _P, _P, _LL, _LL, _I], None),
    "lstm_fwd": ([_P] * 8 + [_LL] * 3 + [_I], _I),
    "lstm_bwd": ([_P] * 11 + [_LL] * 3 + [_I], _I),
    "bn_forward": ([_P, _P, _P, ctypes.c_float, _P, _P, _P, _P, _LL, _LL, _I], _I),
    "bn_backward": ([_P] * 8 + [_LL, _LL, _I], _I),
    "max_pool2d": ([_P] * 6 + [_LL] * 5 + [_I], None),
    "scatter_flat": ([_P, _P, _P, _LL, _LL, _P, _P, _I], _I),
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
_ONES = {}  # rows -> a float32 ones vector (the small sums over leading axes)
_LIB = []  # [library or None], built on first use
_GEMM = []  # [True when the library's gemm has a BLAS sgemm (blas.py)]


def library():
    """The compiled kernels (a ctypes library with the functions above), or None."""
    if not _LIB:
        lib = None
        if os.environ.get("NEEDLE_CPU_C", "1").strip() != "0":
            source = ""
            for name in _SOURCES:
                with open(os.path.join(_SOURCE_DIR, name)) as f:
                    source += f.read() + "\n"
            lib = build_library(source, c_compiler(), "cpu",
                                ("-O3", "-march=native", "-fno-math-errno", "-pthread"))
        if lib is not None:
            for name, (args, res) in _SIGNATURES.items():
                fn = getattr(lib, name)
                fn.argtypes, fn.restype = args, res
            # the device's thread count; CPUDevice.set_num_threads changes it later
            lib.pool_configure(_default_threads(), _SPIN)
        _GEMM.append(lib is not None and blas.connect(lib))
        _LIB.append(lib)
    return _LIB[0]


def configure_pool(threads: int) -> None:
    """The C pool's parallelism (the CPU device's thread count). OpenBLAS stays at one thread
    (again, should something such as threadpoolctl have raised it): the pool splits each
    product itself, and two pools on the same cores slow a step several times."""
    lib = library()
    if lib is not None:
        lib.pool_configure(int(threads), _SPIN)
    blas.single_thread()


def _ctypes_ptr(a) -> int:
    return a.ctypes.data


def _struct_ptr_reader():
    """A faster `a.ctypes.data` (0.13 against 0.9 us, and a kernel call takes several): the
    data pointer is the first field of NumPy's array struct after the object header. Used only
    when it reads the same pointers as `a.ctypes.data` here (arrays and views); else None."""
    header = ctypes.sizeof(ctypes.c_ssize_t) + ctypes.sizeof(ctypes.c_void_p)
    read = ctypes.c_void_p.from_address
    probe = np.arange(12, dtype=np.float32).reshape(3, 4)
    for a in (probe, probe[1:], probe.T, probe[:, 2], np.empty(0, np.float32)):
        if read(id(a) + header).value != a.ctypes.data:
            return None
    return lambda a: read(id(a) + header).value


_ptr = _struct_ptr_reader() or _ctypes_ptr


def _ok(*arrays) -> bool:
    return all(a.dtype == np.float32 and a.flags.c_contiguous for a in arrays)


def _memory_order(a) -> list:
    """The axes of `a` by decreasing stride: the order its memory runs in."""
    return sorted(range(a.ndim), key=lambda i: -a.strides[i])


def _dense(a) -> bool:
    """Whether the memory of `a` is dense: a C-contiguous array, or a permuted view of one
    (an elementwise kernel then walks it as one flat run)."""
    return a.flags.c_contiguous or a.transpose(_memory_order(a)).flags.c_contiguous


def _blas_layout(a2):
    """(transposed, leading dimension) in elements of a float32 matrix (the last two axes of
    `a2`) for a row-major BLAS call, or None when it is neither row- nor column-major."""
    st1, st2 = a2.strides[-2], a2.strides[-1]
    if st1 % 4 or st2 % 4 or st1 < 0 or st2 < 0:
        return None
    s1, s2 = st1 // 4, st2 // 4
    r, c = a2.shape[-2], a2.shape[-1]
    if s2 == 1 and (r == 1 or s1 >= c):
        return 0, max(s1, c, 1)
    if s1 == 1 and (c == 1 or s2 >= r):
        return 1, max(s2, r, 1)
    return None


def _merges(a) -> bool:
    """Whether the leading axes of `a` fold into its rows without a copy (row stride times
    rows between consecutive items)."""
    expect = a.strides[-2]
    for n, st in zip(reversed(a.shape[:-1]), reversed(a.strides[:-1])):
        if n != 1 and st != expect:
            return False
        expect = st * n
    return True


def _first_matrix(a):
    """The first matrix of `a` (its last two axes), as a view."""
    return a[(0,) * (a.ndim - 2)] if a.ndim > 2 else a


def _item_offsets(a):
    """The element offset of each matrix of `a` (over its leading axes, row-major order) from
    the first one, as int64; False when a stride is negative or not a whole element."""
    lead, strides = a.shape[:-2], a.strides[:-2]
    if any(st < 0 or st % 4 for st in strides):
        return False
    off = np.zeros(1, np.int64)
    for n, st in zip(lead, strides):
        off = (off[:, None] + np.arange(n, dtype=np.int64) * (st // 4)).reshape(-1)
    return off


class CKernels:
    """CPUDevice's C overrides; each falls back to the next class's kernel (NumPy)."""

    __slots__ = ()

    def set_num_threads(self, n: int) -> None:
        super().set_num_threads(n)
        configure_pool(self._threads.threads)

    def describe(self) -> str:
        kernels = "C kernels" if self._lib() is not None else "NumPy kernels (no C library)"
        blas_used = blas.name() or "NumPy's matmul"
        n = self.get_num_threads()
        return (f"{self.name}: {n} thread{'' if n == 1 else 's'}, {kernels}, matrix products "
                f"by {blas_used}")

    def _parts(self, work: int) -> int:
        """Blocks a C kernel over `work` elements splits into (1: the calling thread)."""
        return self._threads.threads if work >= _MIN_PARALLEL else 1

    @staticmethod
    def _lib():
        return library()  # (looked up in this module on each call: tests swap it)

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
        shape = a.shape[:-2] + (m, n)
        if out is None:
            out = np.empty(shape, dtype=np.float32)
        elif out.shape != shape or out.dtype != np.float32 or not out.flags.c_contiguous:
            return super()._mm(a, b, out)
        oa = ob = None  # item offsets of a batch (ob None: every item uses b itself)
        if a.ndim == 2 or (b.ndim == 2 and _merges(a)):  # one product of a.size // k rows
            batch, rows, a2, b2 = 1, a.size // k, a.reshape(-1, k), b
        else:  # products over the leading axes, each operand read where it lies
            batch, rows = a.size // (m * k), m
            a2, b2 = _first_matrix(a), _first_matrix(b)
            if batch > 1:
                oa = _item_offsets(a)
                ob = _item_offsets(b) if b.ndim > 2 else None
        la, lb = _blas_layout(a2), _blas_layout(b2)
        if la is None or lb is None or oa is False or ob is False:
            return super()._mm(a, b, out)
        lib.gemm(la[0], lb[0], batch, rows, n, k, _ptr(a2), la[1],
                 None if oa is None else _ptr(oa), _ptr(b2), lb[1],
                 None if ob is None else _ptr(ob), _ptr(out), n, self._threads.threads)
        return out

    # ---- ReLU -----------------------------------------------------------------------------
    def relu(self, x, out=None):
        lib = self._lib()
        a = x._array
        if (lib is None or a.dtype != np.float32 or not _dense(a)
                or (out is not None and out._array.strides != a.strides)):
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
        if not _dense(yn) or (out is not None and out._array.strides != yn.strides):
            return super().relu_grad(g, y, out)
        if gn.strides != yn.strides:  # e.g. a broadcast gradient (a mean's backward)
            g_in_layout = np.empty_like(yn)
            g_in_layout[...] = gn
            gn = g_in_layout
        dx = np.empty_like(yn) if out is None else out._array
        lib.relu_grad(_ptr(gn), _ptr(yn), _ptr(dx), yn.size, self._parts(yn.size))
        return self._wrap(dx) if out is None else out

    def tanh_grad(self, g, y, out=None):
        gn, yn = g._array, y._array
        if yn.size < _MIN_PARALLEL:  # small: NumPy's three calls are cheaper than the checks
            return super().tanh_grad(g, y, out)
        lib = self._lib()
        if (lib is None or gn.dtype != np.float32 or yn.dtype != np.float32
                or gn.shape != yn.shape or gn.strides != yn.strides
                or not _dense(yn)
                or (out is not None and out._array.strides != yn.strides)):
            return super().tanh_grad(g, y, out)
        dx = np.empty_like(yn) if out is None else out._array
        lib.tanh_grad(_ptr(gn), _ptr(yn), _ptr(dx), yn.size, self._parts(yn.size))
        return self._wrap(dx) if out is None else out

    # ---- elementwise ----------------------------------------------------------------------
    def sum_scaled(self, arrays, scale, out):
        lib = self._lib()
        natives = [a._array for a in arrays]
        o = out._array
        if (lib is None or not natives or not _ok(o, *natives)
                or any(n.shape != o.shape for n in natives)):
            return super().sum_scaled(arrays, scale, out)
        ptrs = (ctypes.c_void_p * len(natives))(*[_ptr(n) for n in natives])
        lib.sum_scaled(ptrs, len(natives), scale, _ptr(o), o.size, self._parts(o.size))
        return out

    def _ewise(self, op: str, a, b, out=None):
        """a op b (op: add sub mul div rsub rdiv) for a float32 array `a` and a number or a
        float32 array of a's shape and strides, into a new array of a's layout (or `out`,
        of that layout too); None when it does not apply (NumPy's ufunc then runs)."""
        lib = self._lib()
        if lib is None or a.dtype != np.float32:
            return None
        if not _dense(a):
            return None
        if isinstance(b, np.ndarray):
            if b.dtype != np.float32:
                return None
            if b.shape != a.shape or b.strides != a.strides:
                return self._ewise_rows(lib, op, a, b, out)
            bp, s = _ptr(b), 0.0
        elif isinstance(b, (float, int)) and not isinstance(b, bool):
            bp, s = None, b
        else:
            return None
        if out is None:
            out = np.empty_like(a)
        elif out.strides != a.strides or out.shape != a.shape:
            return None
        lib.binary(_EWISE_OPS[op], _ptr(a), bp, s, _ptr(out), a.size, self._parts(a.size))
        return out

    def _sum_leading(self, a, k: int, out=None):
        if (a.dtype != np.float32 or not a.flags.c_contiguous or k >= a.ndim or not a.size
                or (out is not None and not _ok(out))):
            return None
        rows = a.shape[0] if k == 1 else a.size // math.prod(a.shape[k:])
        if rows < 2:
            return None
        if a.size < _MIN_PARALLEL:  # small: BLAS's product with ones beats NumPy's sum 2x
            ones = _ONES.get(rows)
            if ones is None:
                if len(_ONES) > 64:
                    _ONES.clear()
                ones = _ONES[rows] = np.ones(rows, np.float32)
            if out is None:
                r = ones @ a.reshape(rows, -1)
                return r if a.ndim == k + 1 else r.reshape(a.shape[k:])
            np.matmul(ones, a.reshape(rows, -1), out=out.reshape(-1))
            return out
        lib = self._lib()
        if lib is None:
            return None
        if out is None:
            out = np.empty(a.shape[k:], np.float32)
        if lib.col_sums(_ptr(a), _ptr(out), rows, out.size, self._parts(a.size)):
            return None
        return out

    def _ewise_rows(self, lib, op, a, b, out):
        """`_ewise` for a row-major `a` and a `b` that broadcasts along every axis but the
        last (a bias added to each row), else None."""
        c = a.shape[-1] if a.ndim else 0
        if (c == 0 or b.size != c or b.ndim > a.ndim or b.shape[-1] != c
                or not a.flags.c_contiguous or op not in ("add", "sub", "mul", "div")
                or (out is not None and not out.flags.c_contiguous)):
            return None
        row = np.ascontiguousarray(b.reshape(c))
        if out is None:
            out = np.empty_like(a)
        lib.binary_rows(_EWISE_OPS[op], _ptr(a), _ptr(row), _ptr(out), a.size // c, c,
                        self._parts(a.size))
        return out

    def _adam_update(self, w, g, m, v, lr, beta1, beta2, eps, step, weight_decay=0.0,
                     decoupled=False):
        lib = self._lib()
        if lib is None or not (_ok(w, g, m, v) and w.size == g.size == m.size == v.size):
            return super()._adam_update(w, g, m, v, lr, beta1, beta2, eps, step,
                                        weight_decay, decoupled)
        lib.adam(_ptr(w), _ptr(g), _ptr(m), _ptr(v), w.size, lr, beta1, beta2, eps,
                 weight_decay, int(bool(decoupled) and bool(weight_decay)),
                 1.0 - beta1 ** step, 1.0 - beta2 ** step, self._parts(w.size))

    def _sgd_update(self, w, g, u, lr, momentum, weight_decay, nesterov):
        lib = self._lib()
        if (lib is None or not _ok(w, g) or w.size != g.size
                or (u is not None and not (_ok(u) and u.size == w.size))):
            return super()._sgd_update(w, g, u, lr, momentum, weight_decay, nesterov)
        lib.sgd(_ptr(w), _ptr(g), None if u is None else _ptr(u), w.size, lr, momentum,
                weight_decay, int(bool(nesterov)), self._parts(w.size))

    # ---- softmax and softmax cross-entropy ------------------------------------------------
    @staticmethod
    def _labels(labels, z):
        """labels as contiguous int64 (the base kernels' cast) when they index the rows of
        z in range, else None (the base kernels then raise their own error)."""
        if labels.ndim != 1 or labels.shape[0] != z.shape[0] or labels.size == 0:
            return None
        lab = np.ascontiguousarray(labels, dtype=np.int64)
        return lab if 0 <= lab.min() and lab.max() < z.shape[1] else None

    def _softmax_cross_entropy_fwd(self, z, labels):
        lib = self._lib()
        lab = None if lib is None or z.ndim != 2 or not _ok(z) else self._labels(labels, z)
        if lab is None:
            return super()._softmax_cross_entropy_fwd(z, labels)
        n, k = z.shape
        lse, rows = np.empty(n, np.float32), np.empty(n, np.float32)
        if lib.softmax_ce_fwd(_ptr(z), _ptr(lab), _ptr(lse), _ptr(rows), n, k,
                              self._parts(z.size)):
            return super()._softmax_cross_entropy_fwd(z, labels)
        return np.asarray(rows.mean(), dtype=np.float32), lse

    def _softmax_cross_entropy_bwd(self, z, labels, lse, g):
        lib = self._lib()
        lab = (None if lib is None or z.ndim != 2 or not _ok(z, lse)
               else self._labels(labels, z))
        if lab is None:
            return super()._softmax_cross_entropy_bwd(z, labels, lse, g)
        n, k = z.shape
        out = np.empty_like(z)
        lib.softmax_ce_bwd(_ptr(z), _ptr(lab), _ptr(lse), float(g) / n, _ptr(out), n, k,
                           self._parts(z.size))
        return out

    def softmax(self, x, axes):
        lib = self._lib()
        a = x._array
        if (lib is None or axes is None or tuple(axes) != (a.ndim - 1,) or a.size == 0
                or not _ok(a)):
            return super().softmax(x, axes)
        out = np.empty_like(a)
        k = a.shape[-1]
        if lib.softmax_rows(_ptr(a), _ptr(out), a.size // k, k, self._parts(a.size)):
            return super().softmax(x, axes)
        return self._wrap(out)

    # ---- layer norm -----------------------------------------------------------------------
    def _layer_norm_fwd(self, x, weight=None, bias=None, eps=1e-5):
        lib = self._lib()
        if (lib is None or x.ndim == 0 or not _ok(x)
                or (weight is not None and not _ok(weight))
                or (bias is not None and not _ok(bias))):
            return super()._layer_norm_fwd(x, weight, bias, eps)
        d = x.shape[-1]
        rows = x.size // d
        y = np.empty_like(x)
        mean, rstd = np.empty(rows, np.float32), np.empty(rows, np.float32)
        lib.layer_norm_fwd(_ptr(x), None if weight is None else _ptr(weight),
                           None if bias is None else _ptr(bias), _ptr(y), _ptr(mean),
                           _ptr(rstd), rows, d, eps, self._parts(x.size))
        lead = x.shape[:-1]
        return y, mean.reshape(lead), rstd.reshape(lead)

    def _layer_norm_bwd(self, dy, x, mean, rstd, weight=None):
        lib = self._lib()
        if (lib is None or x.ndim == 0 or not _ok(dy, x, mean, rstd)
                or dy.shape != x.shape or (weight is not None and not _ok(weight))):
            return super()._layer_norm_bwd(dy, x, mean, rstd, weight)
        d = x.shape[-1]
        rows = x.size // d
        dx = np.empty_like(x)
        dw = db = None
        if weight is not None:
            dw, db = np.empty(d, np.float32), np.empty(d, np.float32)
        if lib.layer_norm_bwd(_ptr(dy), _ptr(x), _ptr(mean), _ptr(rstd),
                              None if weight is None else _ptr(weight), _ptr(dx),
                              None if dw is None else _ptr(dw),
                              None if db is None else _ptr(db), rows, d, self._parts(x.size)):
            raise MemoryError("layer_norm: out of memory for the partial sums")
        return dx, dw, db

    # ---- embeddings -------------------------------------------------------------------------
    def embedding_scatter(self, g, ids, num: int):
        lib = self._lib()
        gn, idn = g._array, ids._array
        d = gn.shape[-1] if gn.ndim else 0
        if (lib is None or gn.dtype != np.float32 or idn.dtype.kind not in "iu" or d == 0
                or idn.size * d != gn.size or idn.size == 0
                or not (0 <= idn.min() and idn.max() < num)):
            return super().embedding_scatter(g, ids, num)
        gc = np.ascontiguousarray(gn)
        idc = np.ascontiguousarray(idn, dtype=np.int64)
        out = np.zeros((num, d), dtype=np.float32)
        lib.embedding_scatter(_ptr(gc), _ptr(idc), _ptr(out), idc.size, d,
                              self._parts(gc.size))
        return self._wrap(out)

    # ---- LSTM time loops ------------------------------------------------------------------
    def lstm_fwd(self, xw, w_hh, h0, c0):
        lib = self._lib()
        x, w, h, c = xw._array, w_hh._array, h0._array, c0._array
        if lib is None or not _GEMM[0] or x.ndim != 3 or not _ok(x, w, h, c):
            return super().lstm_fwd(xw, w_hh, h0, c0)
        steps, batch, width = x.shape
        hid = width // 4
        hs = np.empty((steps, batch, hid), np.float32)
        cs, tcs, acts = np.empty_like(hs), np.empty_like(hs), np.empty_like(x)
        lib.lstm_fwd(_ptr(x), _ptr(w), _ptr(h), _ptr(c), _ptr(hs), _ptr(cs), _ptr(tcs),
                     _ptr(acts), steps, batch, hid, self._seq_parts(batch, x.size))
        return self._wrap(hs), self._wrap(cs), self._wrap(tcs), self._wrap(acts)

    def lstm_bwd(self, g_h, g_hl, g_cl, hs, cs, tcs, acts, w_hh, h0, c0):
        lib = self._lib()
        arrays = (cs._array, tcs._array, acts._array, w_hh._array, c0._array)
        if lib is None or not _GEMM[0] or not _ok(*arrays):
            return super().lstm_bwd(g_h, g_hl, g_cl, hs, cs, tcs, acts, w_hh, h0, c0)
        grads = [None if g is None else np.ascontiguousarray(g._array, dtype=np.float32)
                 for g in (g_h, g_hl, g_cl)]
        steps, batch, hid = cs.shape
        dgates = np.empty_like(arrays[2])
        dh0, dc0 = np.empty((batch, hid), np.float32), np.empty((batch, hid), np.float32)
        lib.lstm_bwd(*(None if g is None else _ptr(g) for g in grads),
                     *(_ptr(a) for a in arrays), _ptr(dgates), _ptr(dh0), _ptr(dc0), steps,
                     batch, hid, self._seq_parts(batch, dgates.size))
        dw = self._hidden_grad(dgates, hs._array, h0._array)
        return self._wrap(dgates), self._wrap(dw), self._wrap(dh0), self._wrap(dc0)

    def _seq_parts(self, batch: int, size: int) -> int:
        """Threads for a time loop split by batch rows (at least 8 rows each)."""
        return max(1, min(self._parts(size), batch // 8))


_EWISE_OPS = {"add": 0, "sub": 1, "mul": 2, "div": 3, "rsub": 4, "rdiv": 5}
