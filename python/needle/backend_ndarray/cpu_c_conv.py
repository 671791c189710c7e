"""CPUDevice's C kernels for convolution, pooling and batch norm (csrc/conv.c, norm.c).

Direct NHWC convolution (forward, weight and input gradients, vectorized over 16 output
channels), im2col/col2im and zero padding over blocks of images, batch norm over
channels-last rows (one shifted float64 pass for the statistics), and max pooling in one
strided pass over any memory order (a channels-last input gives a channels-last result) with
its gradient scatter. Each method falls back to the NumPy kernel of the next class
(ParallelCPUKernels, Device) for what it does not take.
"""
from __future__ import annotations

import ctypes

import numpy as np

from .cpu_c import _dense, _memory_order, _ok, _ptr


def _dims(values, itemsize: int = 0):
    """A C array of int64: `values`, or byte strides divided by `itemsize`."""
    return (ctypes.c_longlong * len(values))(*(v // itemsize if itemsize else v
                                               for v in values))


def _like_order(a, shape, dtype):
    """An empty array of `shape` whose memory order of axes is that of `a` (a channels-last
    NCHW view gives a channels-last result)."""
    order = _memory_order(a)
    back = sorted(range(a.ndim), key=lambda i: order[i])
    return np.empty(tuple(shape[i] for i in order), dtype).transpose(back)


class CConvKernels:
    """CPUDevice's C convolution and batch norm kernels; `_lib` and `_parts` come from
    cpu_c.CKernels."""

    __slots__ = ()

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
        return self._wrap(self._wgrad(lib, saved, g, w_shape, stride, False)[0])

    def conv_weight_bias_grad(self, saved, g, w_shape, stride, padding):
        lib = self._lib()
        if saved.ndim != 4 or lib is None:
            return super().conv_weight_bias_grad(saved, g, w_shape, stride, padding)
        dw, db = self._wgrad(lib, saved, g, w_shape, stride, True)
        return self._wrap(dw), self._wrap(db)

    def _wgrad(self, lib, saved, g, w_shape, stride, bias: bool):
        """(dw, db or None) from the padded input `saved` in one pass over g."""
        xpad = saved._array
        gn = np.ascontiguousarray(g._array, dtype=np.float32)
        kh, kw, cin, cout = w_shape
        n, hp, wp = xpad.shape[:3]
        ho, wo = gn.shape[1:3]
        size = kh * kw * cin * cout
        dw = np.empty(size + cout, dtype=np.float32)  # the kernel's room for a bias sum
        db = np.empty(cout, dtype=np.float32) if bias else None
        lib.conv_wgrad(_ptr(xpad), _ptr(gn), _ptr(dw), None if db is None else _ptr(db), n,
                       hp, wp, cin, kh, kw, cout, stride, ho, wo,
                       self._parts(gn.size * kh * kw * cin // 16))
        return dw[:size].reshape(w_shape), db

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
            if lib.conv_dgrad(_ptr(gn), _ptr(wt), _ptr(dx), *dims):
                raise MemoryError(f"conv: out of memory for the input gradient of {shape}")
        else:
            wn = np.ascontiguousarray(w._array)
            lib.conv_dgrad_small(_ptr(gn), _ptr(wn), _ptr(dx), *dims)
        return self._wrap(dx)

    # ---- max pooling (NCHW shapes, any memory order) ------------------------------------
    def max_pool2d(self, x, k: int, stride: int, padding: int):
        lib = self._lib()
        a = x._array
        if lib is None or a.dtype != np.float32 or a.ndim != 4 or padding >= k:
            return super().max_pool2d(x, k, stride, padding)
        n, c, h, w = a.shape
        ho, wo = (h + 2 * padding - k) // stride + 1, (w + 2 * padding - k) // stride + 1
        out = _like_order(a, (n, c, ho, wo), np.float32)
        idx = _like_order(a, (n, c, ho, wo), np.int64)
        lib.max_pool2d(_ptr(a), _ptr(out), _ptr(idx), _dims(a.shape), _dims(a.strides, 4),
                       _dims(out.strides, 4), k, stride, padding, ho, wo,
                       self._parts(out.size * k * k))
        return self._wrap(out), self._wrap(idx)

    def scatter_flat(self, g, idx, shape):
        lib = self._lib()
        gn, ix = g._array, idx._array
        if (lib is None or gn.dtype != np.float32 or ix.dtype != np.int64 or len(shape) != 4
                or gn.ndim != 4 or gn.shape != ix.shape):
            return super().scatter_flat(g, idx, shape)
        if not (tuple(st * 2 for st in gn.strides) == ix.strides and _dense(gn)):
            gn, ix = np.ascontiguousarray(gn), np.ascontiguousarray(ix)
        # the gradient of a pooled channels-last array is channels-last (what the conv before
        # it reads without a copy)
        dx = _like_order(gn, tuple(shape), np.float32)  # dense: the kernel zeroes it
        # batch-outermost memory whose batch is dx's (a max pool's gradient): by batch rows
        rows = gn.shape[0] if (gn.shape[0] == shape[0]
                               and gn.strides[0] == max(gn.strides)) else 1
        if lib.scatter_flat(_ptr(gn), _ptr(ix), _ptr(dx), gn.size, rows, _dims(shape),
                            _dims(dx.strides, 4), self._parts(dx.size)):
            raise IndexError(f"scatter_flat: an index is outside an array of shape {tuple(shape)}")
        return self._wrap(dx)

    # ---- batch norm over channels-last rows -----------------------------------------------
    def _batch_norm_fwd(self, x, weight=None, bias=None, eps=1e-5, axes=(0,)):
        lib = self._lib()
        x2 = None if lib is None else self._rows_by_channel(x, axes)
        if (x2 is None or not _ok(x2) or (weight is not None and not _ok(weight))
                or (bias is not None and not _ok(bias))):
            return super()._batch_norm_fwd(x, weight, bias, eps, axes)
        rows, c = x2.shape
        y = np.empty_like(x2)
        mean, rstd, var = np.empty(c, np.float32), np.empty(c, np.float32), np.empty(
            c, np.float32)
        if lib.bn_forward(_ptr(x2), None if weight is None else _ptr(weight),
                          None if bias is None else _ptr(bias), eps, _ptr(y), _ptr(mean),
                          _ptr(rstd), _ptr(var), rows, c, self._parts(x2.size)):
            raise MemoryError("batch_norm: out of memory for the partial sums")
        return self._as_layout(y, x), mean, rstd, var

    def _batch_norm_bwd(self, dy, x, mean, rstd, weight=None, axes=(0,)):
        lib = self._lib()
        x2 = None if lib is None else self._rows_by_channel(x, axes)
        dy2 = None if x2 is None else self._rows_by_channel(dy, axes)
        if (dy2 is None or not _ok(x2, dy2, mean, rstd)
                or (weight is not None and not _ok(weight))):
            return super()._batch_norm_bwd(dy, x, mean, rstd, weight, axes)
        rows, c = x2.shape
        dx = np.empty_like(x2)
        dw = db = None
        if weight is not None:
            dw, db = np.empty(weight.shape, np.float32), np.empty(weight.shape, np.float32)
        if lib.bn_backward(_ptr(dy2), _ptr(x2), _ptr(mean), _ptr(rstd),
                           None if weight is None else _ptr(weight), _ptr(dx),
                           None if dw is None else _ptr(dw), None if db is None else _ptr(db),
                           rows, c, self._parts(x2.size)):
            raise MemoryError("batch_norm: out of memory for the partial sums")
        return self._as_layout(dx, x), dw, db
