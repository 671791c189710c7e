"""Devices: one object per backend, holding the array module and the kernels ops need.

A device wraps an array module with NumPy's interface (`numpy` for `cpu()`, `cupy` for
`cuda()`); every kernel is written once against `self.xp`, so CPU and CUDA share the code and
a new backend is a new subclass. Random draws always come from NumPy's global generator (the
course's convention, so seeded runs give the same numbers on every device) and are then moved
to the device.
"""
from __future__ import annotations

import numpy as np

from .comm_kernels import CommKernels
from .conv_kernels import ConvKernels
from .cpu_c import CKernels
from .cpu_c_conv import CConvKernels
from .cpu_parallel import ParallelCPUKernels, RowThreads, keep_freed_memory
from .seq_kernels import SequenceKernels, softmax_

# add_n stacks its terms when they hold at most this many elements in all
_ADD_N_STACKED = 1 << 16
_NDARRAY = None  # ndarray.NDArray, imported on first use (ndarray.py imports this module)


def _ndarray_class():
    global _NDARRAY
    from .ndarray import NDArray

    _NDARRAY = NDArray
    return NDArray


def _natives(*arrays):
    """The native arrays of NDArrays (None stays None)."""
    return [None if a is None else a._array for a in arrays]


def _keep_shape(shape, axes):
    """(`shape` with the axes in `axes` set to 1, the number of elements those axes hold):
    the shape of keepdims statistics and the count they average over."""
    n = 1
    for i in axes:
        n *= shape[i]
    return tuple(1 if i in axes else d for i, d in enumerate(shape)), n


def _einsum_sum(xp, axes, a, b=None):
    """sum over `axes` of a (or of a * b) in one pass, as an einsum (no temporary product);
    the result keeps the other axes in order."""
    letters = "abcdefghijklmnopqrstuvwxyz"[:a.ndim]
    out = "".join(c for i, c in enumerate(letters) if i not in axes)
    if b is None:
        return xp.einsum(f"{letters}->{out}", a)
    return xp.einsum(f"{letters},{letters}->{out}", a, b)


class Device(ConvKernels, SequenceKernels, CommKernels):
    """A backend: the array module `xp` and the kernels that ops call.

    Kernels beyond the NDArray methods live here and in the mixins (conv_kernels.py,
    seq_kernels.py, comm_kernels.py), grouped by the layers that use them."""

    name = "device"
    xp = np

    def __eq__(self, other):
        return isinstance(other, Device) and self.name == other.name

    def __hash__(self):
        return hash(self.name)

    def __repr__(self):
        return f"{self.name}()"

    def __str__(self):
        return self.__repr__()

    def describe(self) -> str:
        """One line for a run's log: the device and how it computes."""
        return self.name

    def enabled(self) -> bool:
        return True

    # ---- buffers -------------------------------------------------------------------------
    def data_ptr(self, array) -> int:
        """Address of the first element of a native array."""
        return array.__array_interface__["data"][0]

    def as_strided(self, flat, shape, strides, offset):
        """A view of the 1-D buffer `flat` with element strides, starting at `offset`."""
        itemsize = flat.dtype.itemsize
        return self.xp.lib.stride_tricks.as_strided(
            flat[offset:], shape=shape, strides=tuple(s * itemsize for s in strides))

    def to_numpy(self, array) -> np.ndarray:
        return np.asarray(array)

    def from_numpy(self, array: np.ndarray):
        """A compact native copy of a NumPy array, on this device."""
        return np.array(array, copy=True, order="C")

    # ---- constructors (NDArray results) --------------------------------------------------
    def empty(self, shape, dtype="float32"):
        return self._wrap(self.xp.empty(shape, dtype=dtype))

    def full(self, shape, fill_value, dtype="float32"):
        return self._wrap(self.xp.full(shape, fill_value, dtype=dtype))

    def zeros(self, shape, dtype="float32"):
        return self._wrap(self.xp.zeros(shape, dtype=dtype))

    def ones(self, shape, dtype="float32"):
        return self._wrap(self.xp.ones(shape, dtype=dtype))

    def rand(self, *shape, dtype="float32"):
        """Uniform [0, 1): one `np.random.rand(*shape)` draw (course RNG convention)."""
        return self._wrap(self.from_numpy(np.random.rand(*shape).astype(dtype)))

    def randn(self, *shape, dtype="float32"):
        """Standard normal: one `np.random.randn(*shape)` draw (course RNG convention)."""
        return self._wrap(self.from_numpy(np.random.randn(*shape).astype(dtype)))

    def one_hot(self, n, i, dtype="float32"):
        """Rows of the n x n identity selected by the integer array `i` (an NDArray or a
        NumPy array)."""
        idx = self.xp.asarray(getattr(i, "_array", i)).astype(np.int64)
        return self._wrap(self.xp.eye(n, dtype=dtype)[idx])

    def _wrap(self, array):
        out = object.__new__(_NDARRAY or _ndarray_class())  # NDArray._wrap, one call less
        out._array, out._device, out._root = array, self, None
        return out

    # ---- joins and selection (ndarray.py's module functions; NDArrays in and out) ----------
    def stack(self, arrays, axis=0):
        return self._wrap(self.xp.stack([a._array for a in arrays], axis=axis))

    def concatenate(self, arrays, axis=0):
        return self._wrap(self.xp.concatenate([a._array for a in arrays], axis=axis))

    def pack_flat(self, arrays, out=None):
        """One new compact 1-d array (or `out`, filled and returned): every NDArray of
        `arrays` flattened, in order (an optimizer's flat update packs its parameters and
        gradients this way)."""
        parts = [a._array.reshape(-1) for a in arrays]
        if out is not None:
            self.xp.concatenate(parts, out=out._array)
            return out
        return self._wrap(self.xp.concatenate(parts))

    def unpack_flat(self, flat, arrays) -> None:
        """The inverse of `pack_flat`, in place: consecutive pieces of the 1-d `flat` written
        into the NDArrays of `arrays` (each keeps its identity and strides)."""
        src, off = flat._array, 0
        for a in arrays:
            n = a.size
            a._array[...] = src[off:off + n].reshape(a.shape)
            off += n

    def sum_scaled(self, arrays, scale, out):
        """out = (arrays[0] + arrays[1] + ...) * scale, the terms added in order and written
        into the NDArray `out` of their shape (which may be one of them); returns out. One pass
        where the device has the kernel (a data-parallel reduce of gradient shards)."""
        xp, o = self.xp, out._array
        natives = [a._array for a in arrays]
        if len(natives) == 1:
            xp.multiply(natives[0], scale, out=o)
            return out
        if len(natives) == 2:
            xp.add(natives[0], natives[1], out=o)
        else:  # out may be a later term: the partial sums go to a temporary
            acc = natives[0] + natives[1]
            for n in natives[2:]:
                acc += n
            o[...] = acc
        if scale != 1:
            xp.multiply(o, scale, out=o)
        return out

    def add_n(self, arrays):
        """The sum of a list of NDArrays (broadcast as `+` does), a new array. Many small
        arrays of one shape and dtype are stacked and summed in one reduction (a weight that
        a small graph uses at every step gets one partial gradient per use); otherwise each
        term is added into the first sum in place: one temporary, not one per term."""
        natives = [a._array for a in arrays]
        first = natives[0]
        if (len(natives) > 2 and first.size * len(natives) <= _ADD_N_STACKED
                and all(n.shape == first.shape and n.dtype == first.dtype for n in natives)):
            xp = self.xp  # NumPy's array() of a list beats its stack() 2x on small arrays
            return self._wrap((np.array(natives) if xp is np else xp.stack(natives)).sum(axis=0))
        out = arrays[0] + arrays[1]
        for a in arrays[2:]:
            if a.shape == out.shape and a.dtype == out.dtype:
                out += a
            else:
                out = out + a
        return out

    def where(self, cond, a, b):
        """a where cond != 0, else b (a and b NDArrays or numbers)."""
        return self._wrap(self.xp.where(cond._array != 0, getattr(a, "_array", a),
                                        getattr(b, "_array", b)))

    def einsum(self, subscripts: str, *arrays):
        return self._wrap(self.xp.asarray(self.xp.einsum(subscripts,
                                                         *[a._array for a in arrays])))

    # ---- kernels beyond NumPy's ufuncs ---------------------------------------------------
    def tanh_grad(self, g, y, out=None):
        """g (1 - y^2): tanh's backward from its output y (the shape of g); into `out` when
        given."""
        yn = y._array
        r = (1.0 - yn * yn) * g._array
        if out is not None:
            self.xp.copyto(out._array, r)
            return out
        return self._wrap(self.xp.asarray(r))

    def _mm(self, a, b, out=None):
        """Native matrix product `a @ b` (NumPy's matmul semantics), into `out` when given;
        every product of the device's kernels goes through it (cpu(): needle's threads)."""
        return self.xp.matmul(a, b, out=out)

    def _ewise(self, op: str, a, b, out=None):
        """A device's own kernel for the native `a op b` of a large array (op: add sub mul
        div rsub rdiv), or None: NDArray then calls the array module's ufunc. None here."""
        return None

    def _column_sums(self, a2):
        """The native sums over the rows of the matrix a2 (the device's kernel when it has
        one)."""
        r = self._sum_leading(a2, 1)
        return a2.sum(axis=0) if r is None else r

    def _sum_leading(self, a, k: int, out=None):
        """A device's own kernel for the native sum of an array over its first k axes (the
        column sums of a matrix: a bias's gradient), into `out` when given, or None: NDArray
        then calls the array module's sum. None here."""
        return None

    def softmax(self, x, axes):
        """exp(x) / sum(exp(x)) over `axes` (a tuple), stably; a slice that is all -inf gives
        zeros, not nan."""
        a = x._array
        s = a.astype(np.result_type(a.dtype, np.float32), copy=True)
        return self._wrap(softmax_(self.xp, s, axes))

    def relu(self, x, out=None):
        """max(x, 0), in the layout of x (a NaN stays NaN); into the NDArray `out` when
        given (then returned)."""
        if out is not None:
            self.xp.maximum(x._array, 0, out=out._array)
            return out
        return self._wrap(self.xp.maximum(x._array, 0))

    def relu_grad(self, g, y, out=None):
        """g where y > 0, else 0: ReLU's backward from its output y (the shape of g); into
        `out` when given."""
        gn = g._array
        r = self.xp.where(y._array > 0, gn, self.xp.zeros((), dtype=gn.dtype))
        if out is not None:
            self.xp.copyto(out._array, r)
            return out
        return self._wrap(r)

    def scatter_add(self, out, index, values):
        """out[index] += values, accumulating repeated indices."""
        self.xp.add.at(out, index, values)

    def _scatter_rows(self, out, rows, values):
        """out[rows[k]] += values[k] for every k (native arrays; repeated rows accumulate)."""
        self.xp.add.at(out, rows, values)

    def matmul_tiled(self, a, b, out, m, n, p):
        """Multiply compact tiled matrices: a (m/t, n/t, t, t) x b (n/t, p/t, t, t) -> out."""
        t = self.__tile_size__
        at = a.array.reshape(m // t, n // t, t, t)
        bt = b.array.reshape(n // t, p // t, t, t)
        out.array[:] = self.xp.einsum("ikab,kjbc->ijac", at, bt).reshape(-1)

    # ---- fused kernels: NDArrays in and out -------------------------------------------------
    # The public methods take and return NDArrays (None stays None); each runs a private
    # method on the native arrays, written here as a composition over `xp` (what runs on
    # cpu() and in CI). A backend may override the private method with a single kernel
    # (cuda(): CuPy kernels in cuda_kernels.py) and must give the same numbers. Docs:
    # docs/cuda.md lists the op that calls each one.
    def softmax_cross_entropy_fwd(self, z, labels):
        """(mean cross-entropy as a 0-d array, per-row logsumexp (B,)); labels int64 (B,)."""
        return self._wrap_all(self._softmax_cross_entropy_fwd(z._array, labels._array))

    def softmax_cross_entropy_bwd(self, z, labels, lse, g):
        """d(loss)/dz for the loss of `softmax_cross_entropy_fwd` and upstream gradient g."""
        return self._wrap(self._softmax_cross_entropy_bwd(
            z._array, labels._array, lse._array, getattr(g, "_array", g)))

    def layer_norm_fwd(self, x, weight=None, bias=None, eps=1e-5):
        """(y, mean, rstd) of layer norm over the last axis; weight/bias (D,) or None."""
        return self._wrap_all(self._layer_norm_fwd(*_natives(x, weight, bias), eps))

    def layer_norm_bwd(self, dy, x, mean, rstd, weight=None):
        """(dx, dweight, dbias) of `layer_norm_fwd` (the last two None without weight)."""
        return self._wrap_all(self._layer_norm_bwd(*_natives(dy, x, mean, rstd, weight)))

    def batch_norm_fwd(self, x, weight=None, bias=None, eps=1e-5, axes=(0,)):
        """(y, mean, rstd, var) of training-mode batch norm over `axes` (see the private
        method); nothing is updated in place: the caller owns the running statistics."""
        return self._wrap_all(self._batch_norm_fwd(*_natives(x, weight, bias), eps, axes))

    def batch_norm_bwd(self, dy, x, mean, rstd, weight=None, axes=(0,)):
        """(dx, dweight, dbias) of `batch_norm_fwd` (the last two None without weight)."""
        return self._wrap_all(self._batch_norm_bwd(*_natives(dy, x, mean, rstd, weight),
                                                   axes))

    def adam_update(self, w, g, m, v, lr, beta1, beta2, eps, step, weight_decay=0.0,
                    decoupled=False):
        """One Adam step in place on the NDArrays w, m and v (see the private method)."""
        self._adam_update(w._array, g._array, m._array, v._array, lr, beta1, beta2, eps,
                          step, weight_decay, decoupled)

    def sgd_update(self, w, g, u, lr, momentum=0.0, weight_decay=0.0, nesterov=False):
        """One SGD step in place on the NDArrays w and u (u None without momentum), the rule
        of needle.optim.SGD: g' = g + wd w; u = m u + (1 - m) g'; w -= lr u (Nesterov:
        w -= lr (m u + (1 - m) g')), or w -= lr g' when m is 0."""
        self._sgd_update(w._array, g._array, None if u is None else u._array, lr, momentum,
                         weight_decay, nesterov)

    def _sgd_update(self, w, g, u, lr, momentum, weight_decay, nesterov):
        if weight_decay:
            g = g + weight_decay * w
        if u is None:
            w -= lr * g
            return
        u *= momentum
        u += (1.0 - momentum) * g
        if nesterov:
            w -= lr * (momentum * u + (1.0 - momentum) * g)
        else:
            w -= lr * u

    def _wrap_all(self, arrays):
        return tuple(None if a is None else self._wrap(a) for a in arrays)

    def _softmax_cross_entropy_fwd(self, z, labels):
        """Mean over rows of logsumexp(z_i) - z_i[labels_i]; z (B, K), labels (B,) ints.

        Returns (loss as a 0-d array of z's dtype, lse (B,)); pass lse on to the backward.
        """
        lse, per_row = self._softmax_cross_entropy_rows(z, labels)
        return self.xp.asarray(per_row.mean(), dtype=z.dtype), lse

    def _softmax_cross_entropy_rows(self, z, labels):
        """(logsumexp of each row of z, each row's loss lse_i - z_i[labels_i])."""
        xp = self.xp
        labels = labels.astype(np.int64, copy=False)
        m = z.max(axis=1, keepdims=True)
        e = z - m
        xp.exp(e, out=e)
        lse = xp.log(e.sum(axis=1)) + m[:, 0]
        picked = xp.take_along_axis(z, labels[:, None], axis=1)[:, 0]
        return lse, lse - picked

    def _softmax_cross_entropy_bwd(self, z, labels, lse, g):
        """d(loss)/dz = (softmax(z) - onehot(labels)) * g / B, with lse from the forward."""
        out = self.xp.empty(z.shape, dtype=z.dtype)
        scale = self.xp.asarray(g, dtype=z.dtype) / z.shape[0]
        self._softmax_cross_entropy_bwd_rows(z, labels, lse, scale, out)
        return out

    def _softmax_cross_entropy_bwd_rows(self, z, labels, lse, scale, out):
        """out = (softmax(z) - onehot(labels)) * scale, row by row, with lse of the rows."""
        xp = self.xp
        labels = labels.astype(np.int64, copy=False)
        xp.subtract(z, lse[:, None], out=out)
        xp.exp(out, out=out)
        out[xp.arange(z.shape[0]), labels] -= 1
        out *= scale

    def _layer_norm_fwd(self, x, weight=None, bias=None, eps=1e-5, out=None):
        """y = (x - mean) * rstd * weight + bias over the last axis of x (..., D).

        weight/bias are (D,) or None. Returns (y, mean, rstd), the statistics of shape
        x.shape[:-1]. Row sums are BLAS matrix-vector products and `einsum`s (one pass each).
        """
        xp = self.xp
        d = x.shape[-1]
        x2 = x.reshape(-1, d)
        mean = x2 @ xp.full((d,), 1.0 / d, dtype=x.dtype)
        y = xp.subtract(x2, mean[:, None], out=out)  # `out`: (rows, D) to write y into
        var = xp.einsum("ij,ij->i", y, y) / d
        rstd = (1.0 / xp.sqrt(var + eps)).astype(x.dtype)
        y *= rstd[:, None]
        if weight is not None:
            y *= weight
        if bias is not None:
            y += bias
        lead = x.shape[:-1]
        return y.reshape(x.shape), mean.reshape(lead), rstd.reshape(lead)

    def _layer_norm_bwd(self, dy, x, mean, rstd, weight=None, out=None):
        """Gradients of `layer_norm_fwd`: (dx, dweight, dbias); the last two None without weight.

        dx = rstd * (dxh - mean(dxh) - xh * mean(dxh * xh)), xh = (x - mean) * rstd and
        dxh = dy * weight, means over the last axis.
        """
        xp = self.xp
        d = x.shape[-1]
        x2, dy2 = x.reshape(-1, d), dy.reshape(-1, d)
        r = rstd.reshape(-1, 1)
        xh = x2 - mean.reshape(-1, 1)
        xh *= r
        if weight is not None:
            dw = xp.einsum("ij,ij->j", dy2, xh)
            db = self._column_sums(dy2)
            dxh = dy2 * weight
        else:
            dw = db = None
            dxh = dy2
        c1 = dxh @ xp.full((d,), 1.0 / d, dtype=x.dtype)
        c2 = xp.einsum("ij,ij->i", dxh, xh) / d
        xh *= c2[:, None]
        dx = xp.subtract(dxh, c1[:, None], out=out)  # `out`: (rows, D) to write dx into
        dx -= xh
        dx *= r
        return dx.reshape(x.shape), dw, db

    def _batch_norm_fwd(self, x, weight=None, bias=None, eps=1e-5, axes=(0,)):
        """Training-mode batch norm: statistics over `axes` of x ((0,) for (N, C), (0, 2, 3)
        for NCHW); y = (x - mean) * rstd * w + b with w, b of the channel shape (C,).

        Returns (y, mean (C,), rstd (C,), var (C,)), var the biased batch variance (what the
        course's running statistics average).
        """
        xp = self.xp
        axes = tuple(axes)
        keep, n = _keep_shape(x.shape, axes)
        mean = _einsum_sum(xp, axes, x) / n  # (C,)
        y = x - mean.reshape(keep)
        var = _einsum_sum(xp, axes, y, y) / n
        rstd = (1.0 / xp.sqrt(var + eps)).astype(x.dtype)
        y *= rstd.reshape(keep)
        if weight is not None:
            y *= weight.reshape(keep)
        if bias is not None:
            y += bias.reshape(keep)
        return y, mean, rstd, var

    def _batch_norm_bwd(self, dy, x, mean, rstd, weight=None, axes=(0,)):
        """Gradients of `batch_norm_fwd`: (dx, dweight, dbias); the last two None without weight.

        With db = sum dy and dw = sum dy * xh over `axes` (N values each):
        dx = w * rstd * (dy - (db + xh * dw) / N).
        """
        axes = tuple(axes)
        keep, n = _keep_shape(x.shape, axes)
        xp = self.xp
        mean, rstd = mean.reshape(keep), rstd.reshape(keep)
        xh = x - mean
        xh *= rstd
        db = _einsum_sum(xp, axes, dy).reshape(keep)
        dw = _einsum_sum(xp, axes, dy, xh).reshape(keep)
        scale = rstd * weight.reshape(keep) if weight is not None else rstd
        xh *= dw
        xh += db
        xh *= -1.0 / n
        xh += dy
        xh *= scale
        if weight is None:
            return xh, None, None
        return xh, dw.reshape(weight.shape), db.reshape(weight.shape)

    def _adam_update(self, w, g, m, v, lr, beta1, beta2, eps, step, weight_decay=0.0,
                     decoupled=False):
        """One Adam step in place on w, m and v (the rule of needle.optim.Adam/AdamW).

        g' = g + wd * w (or, decoupled, w *= 1 - lr * wd); m = b1 m + (1 - b1) g';
        v = b2 v + (1 - b2) g'^2; w -= lr / (1 - b1^t) * m / (sqrt(v / (1 - b2^t)) + eps).
        Two scratch buffers hold every temporary.
        """
        xp = self.xp
        tmp, tmp2 = xp.empty_like(w), xp.empty_like(w)
        if weight_decay:
            if decoupled:
                w *= 1.0 - lr * weight_decay
            else:
                xp.multiply(w, weight_decay, out=tmp2)
                tmp2 += g
                g = tmp2
        m *= beta1
        xp.multiply(g, 1.0 - beta1, out=tmp)
        m += tmp
        v *= beta2
        xp.multiply(g, g, out=tmp)
        tmp *= 1.0 - beta2
        v += tmp
        xp.divide(v, 1.0 - beta2 ** step, out=tmp)
        xp.sqrt(tmp, out=tmp)
        tmp += eps
        xp.multiply(m, lr / (1.0 - beta1 ** step), out=tmp2)
        tmp2 /= tmp
        w -= tmp2


class CPUDevice(CConvKernels, CKernels, ParallelCPUKernels, Device):
    """The CPU backend over NumPy (and the BLAS NumPy links); its heavy kernels are C on
    its own threads (cpu_c.py, cpu_c_conv.py), with the NumPy kernels (cpu_parallel.py's
    row-parallel ones, the base class's) where no C compiler works."""

    name = "cpu"
    xp = np
    __tile_size__ = 8
    _threads = RowThreads()


_CPU = CPUDevice()
keep_freed_memory()


def cpu() -> CPUDevice:
    """The CPU device."""
    return _CPU


def cpu_numpy() -> CPUDevice:
    """Alias of `cpu()`: the course's NumPy backend is this device."""
    return _CPU


def default_device() -> Device:
    return _CPU
