"""Convolution and pooling ops on strided views (im2col without a Python loop over pixels).

`conv(a, b, stride, padding)`: `a` NHWC, `b` (KH, KW, C_in, C_out). Forward is one strided
im2col view of the padded input, contracted with the weight in one matmul (tensordot). The
gradient is built from ops (a conv of the dilated/padded output gradient with the flipped
weight, and a conv of the input with the dilated output gradient), so it can be differentiated
again; `gradient_nd` computes both gradients with matmuls on im2col views and a col2im that loops
only over the KH x KW kernel offsets.

Pooling ops work on NCHW: `max_pool2d` (ties go to the first maximum in the window, as PyTorch
does), `avg_pool2d` (padding counted in the average, PyTorch's default) and their adjoints.
"""
from __future__ import annotations

import numpy as np

from ..autograd import NDArray, TensorOp, is_grad_enabled
from ..backend_ndarray import array_module
from .ops_indexing import GetItem, dilate, flip, pad
from .ops_mathematic import permute


# ---- strided views ---------------------------------------------------------------------------
def _windows(xn, kh: int, kw: int, stride: int, ax: int = 1):
    """View of shape x.shape[:ax] + (Ho, Wo) + (kh, kw) + x.shape[ax+2:] over axes ax, ax+1."""
    xp_ = _xp(xn)
    shape, strides = xn.shape, xn.strides
    ho = (shape[ax] - kh) // stride + 1
    wo = (shape[ax + 1] - kw) // stride + 1
    vshape = shape[:ax] + (ho, wo, kh, kw) + shape[ax + 2:]
    vstrides = (strides[:ax] + (strides[ax] * stride, strides[ax + 1] * stride,
                                strides[ax], strides[ax + 1]) + strides[ax + 2:])
    return xp_.lib.stride_tricks.as_strided(xn, vshape, vstrides)


def _xp(xn):
    """NumPy or CuPy for a native array (the backend decides; ops never import CuPy)."""
    return array_module(xn)


def _pad_hw(xn, lo: int, hi: int, ax: int = 1, value=0.0):
    """Zero-pad (or crop, for negative amounts) axes ax, ax+1 by lo before and hi after."""
    if lo == 0 and hi == 0:
        return xn
    xp_ = _xp(xn)
    if lo < 0 or hi < 0:
        sl = [slice(None)] * xn.ndim
        for a in (ax, ax + 1):
            sl[a] = slice(max(-lo, 0), xn.shape[a] - max(-hi, 0))
        xn = xn[tuple(sl)]
        lo, hi = max(lo, 0), max(hi, 0)
        if lo == 0 and hi == 0:
            return xn
    widths = [(0, 0)] * xn.ndim
    widths[ax] = widths[ax + 1] = (lo, hi)
    return xp_.pad(xn, widths, constant_values=value)


def _pad_or_crop(x, pads):
    """Tensor version of `_pad_hw` on axes 1, 2 of NHWC: pads = ((lo_h, hi_h), (lo_w, hi_w))."""
    if any(v > 0 for p in pads for v in p):
        x = pad(x, ((0, 0),) + tuple((max(lo, 0), max(hi, 0)) for lo, hi in pads) + ((0, 0),))
    if any(v < 0 for p in pads for v in p):
        index = (slice(None),) + tuple(
            slice(max(-lo, 0), n - max(-hi, 0)) for (lo, hi), n in zip(pads, x.shape[1:3])
        ) + (slice(None),)
        x = GetItem(index)(x)
    return x


def _dilate_hw(x, stride: int):
    """Insert stride-1 zeros between rows/columns of NHWC x (no trailing zeros)."""
    if stride == 1:
        return x
    h, w = x.shape[1:3]
    x = dilate(x, (1, 2), stride - 1)
    return GetItem((slice(None), slice(0, (h - 1) * stride + 1),
                    slice(0, (w - 1) * stride + 1), slice(None)))(x)


# ---- conv -------------------------------------------------------------------------------------
def _check_conv(a: NDArray, b: NDArray, stride: int, padding: int) -> None:
    if a.ndim != 4 or b.ndim != 4:
        raise ValueError(f"conv: expected NHWC input and (K, K, C_in, C_out) weight, got input "
                         f"{a.shape} and weight {b.shape}")
    if a.shape[3] != b.shape[2]:
        hint = ""
        if a.shape[1] == b.shape[2]:
            hint = " (the input looks like NCHW; conv expects NHWC)"
        raise ValueError(f"conv: input channels {a.shape[3]} (input {a.shape}, NHWC) do not "
                         f"match weight C_in {b.shape[2]} (weight {b.shape}, (K, K, C_in, "
                         f"C_out)){hint}")
    if stride < 1 or padding < 0:
        raise ValueError(f"conv: need stride >= 1 and padding >= 0, got stride {stride}, "
                         f"padding {padding}")
    for i in (0, 1):
        if a.shape[1 + i] + 2 * padding < b.shape[i]:
            raise ValueError(f"conv: kernel {b.shape[:2]} larger than the padded input "
                             f"{a.shape} with padding {padding}")
    if a.dtype != b.dtype:
        raise TypeError(f"conv: dtypes differ: input {a.dtype}, weight {b.dtype}")


class Conv(TensorOp):
    """2-D cross-correlation of NHWC `a` with (KH, KW, C_in, C_out) `b` (as torch conv2d)."""

    __slots__ = ("stride", "padding", "_cols")

    def __init__(self, stride: int = 1, padding: int = 0):
        self.stride = int(stride)
        self.padding = int(padding)
        self._cols = None  # the forward's im2col matrix, reused once by gradient_nd

    def compute(self, a: NDArray, b: NDArray):
        _check_conv(a, b, self.stride, self.padding)
        xn = _pad_hw(a.native, self.padding, self.padding)
        kh, kw = b.shape[:2]
        cols = _windows(xn, kh, kw, self.stride)  # (N, Ho, Wo, KH, KW, C) view
        n, ho, wo = cols.shape[:3]
        k = kh * kw * b.shape[2]
        cols = cols.reshape(n * ho * wo, k)
        if is_grad_enabled():
            self._cols = cols
        out = cols @ b.native.reshape(k, b.shape[3])
        return NDArray._wrap(out.reshape(n, ho, wo, b.shape[3]), a.device)

    def gradient(self, out_grad, node):
        a, b = node.inputs
        s, p = self.stride, self.padding
        kh, kw = b.shape[:2]
        h, w = a.shape[1:3]
        rh = (h + 2 * p - kh) % s
        rw = (w + 2 * p - kw) % s
        g = _dilate_hw(out_grad, s)  # (N, (Ho-1)s+1, (Wo-1)s+1, C_out)
        # input gradient: full correlation of g with the flipped, in/out-swapped kernel
        gp = _pad_or_crop(g, ((kh - 1 - p, kh - 1 - p + rh), (kw - 1 - p, kw - 1 - p + rw)))
        wt = permute(flip(b, (0, 1)), (0, 1, 3, 2))
        ga = conv(gp, wt, stride=1, padding=0)
        # weight gradient: batch and channels swap roles
        ap = permute(a, (3, 1, 2, 0))  # (C_in, H, W, N)
        gt = permute(g, (1, 2, 0, 3))  # (Ho', Wo', N, C_out)
        gb = conv(ap, gt, stride=1, padding=p)  # (C_in, KH + rh, KW + rw, C_out)
        if rh or rw:
            gb = GetItem((slice(None), slice(0, kh), slice(0, kw), slice(None)))(gb)
        return ga, permute(gb, (1, 2, 0, 3))

    def gradient_nd(self, g: NDArray, node):
        x_node, w_node = node.inputs
        a, b = x_node.cached_data, w_node.cached_data
        s, p = self.stride, self.padding
        kh, kw, cin, cout = b.shape
        gn = g.native
        n, ho, wo = gn.shape[:3]
        g2 = gn.reshape(n * ho * wo, cout)
        wn = b.native
        gb = dx = None
        cols, self._cols = self._cols, None
        if w_node.requires_grad:  # cols^T @ g on the im2col matrix of the padded input
            if cols is None or cols.shape[0] != n * ho * wo:
                xn = _pad_hw(a.native, p, p)
                cols = _windows(xn, kh, kw, s).reshape(n * ho * wo, kh * kw * cin)
            gb = (g2.T @ cols).T if cols.shape[1] < cout else cols.T @ g2
            gb = NDArray._wrap(gb.reshape(kh, kw, cin, cout), g.device)
        if x_node.requires_grad:
            dx = NDArray._wrap(_conv_input_grad(gn, wn, a.shape, s, p), g.device)
        return dx, gb


def _conv_input_grad(gn, wn, shape, s: int, p: int):
    """d(conv)/d(input) on native arrays: for stride 1 one im2col matmul of the padded output
    gradient with the flipped kernel; otherwise a col2im looping over the kernel offsets."""
    kh, kw, cin, cout = wn.shape
    n, ho, wo = gn.shape[:3]
    h, w = shape[1:3]
    if s == 1:
        gp = _pad_hw(gn, kh - 1 - p, kh - 1 - p, value=0.0) if kh == kw else None
        if gp is not None:
            cols = _windows(gp, kh, kw, 1).reshape(n * h * w, kh * kw * cout)
            wt = wn[::-1, ::-1].transpose(0, 1, 3, 2).reshape(kh * kw * cout, cin)
            return (cols @ wt).reshape(n, h, w, cin)
    g2 = gn.reshape(n * ho * wo, cout)
    hp, wp = h + 2 * p, w + 2 * p
    dx = _xp(gn).zeros((n, hp, wp, cin), dtype=gn.dtype)
    for i in range(kh):
        for j in range(kw):
            part = (g2 @ wn[i, j].T).reshape(n, ho, wo, cin)
            dx[:, i:i + s * (ho - 1) + 1:s, j:j + s * (wo - 1) + 1:s, :] += part
    return dx[:, p:p + h, p:p + w, :]


def conv(a, b, stride=1, padding=1):
    """NHWC conv; note the helper's default padding 1 (course), the op class default is 0."""
    return Conv(stride, padding)(a, b)


# ---- pooling (NCHW) ---------------------------------------------------------------------------
def _check_pool(op: str, x: NDArray, k: int, s: int, p: int) -> None:
    if x.ndim != 4:
        raise ValueError(f"{op}: expected NCHW input, got shape {x.shape}")
    if k < 1 or s < 1 or p < 0 or p > k // 2:
        raise ValueError(f"{op}: need kernel >= 1, stride >= 1 and 0 <= padding <= kernel // 2,"
                         f" got kernel {k}, stride {s}, padding {p}")
    if x.shape[2] + 2 * p < k or x.shape[3] + 2 * p < k:
        raise ValueError(f"{op}: kernel {k} larger than the padded input {x.shape} "
                         f"(padding {p})")


def _pool_out(n: int, k: int, s: int, p: int) -> int:
    return (n + 2 * p - k) // s + 1


class MaxPool2d(TensorOp):
    """Max over k x k windows of NCHW input; the gradient goes to the first maximum."""

    __slots__ = ("kernel", "stride", "padding", "_idx")

    def __init__(self, kernel: int, stride: int, padding: int = 0):
        self.kernel, self.stride, self.padding = int(kernel), int(stride), int(padding)
        self._idx = None

    def _argmax(self, x: NDArray):
        k, s, p = self.kernel, self.stride, self.padding
        xn = _pad_hw(x.native, p, p, ax=2, value=-np.inf)
        win = _windows(xn, k, k, s, ax=2)  # (N, C, Ho, Wo, k, k)
        nb, c, ho, wo = win.shape[:4]
        flat = win.reshape(nb, c, ho, wo, k * k)
        return flat, flat.argmax(axis=-1)

    def compute(self, x: NDArray):
        _check_pool("max_pool2d", x, self.kernel, self.stride, self.padding)
        flat, am = self._argmax(x)
        self._idx = self._flat_indices(x.shape, am)  # kept for the backward pass
        out = _xp(am).take_along_axis(flat, am[..., None], axis=-1)[..., 0]
        return NDArray._wrap(out, x.device)

    def indices(self, x: NDArray):
        """Flat indices into x (N*C*H*W) of each window's chosen maximum, shape of the output."""
        if self._idx is not None and self._idx.shape[:2] == x.shape[:2]:
            return self._idx
        _, am = self._argmax(x)
        return self._flat_indices(x.shape, am)

    def _flat_indices(self, shape, am):
        xp_ = _xp(am)
        nb, c, h, w = shape
        k, s, p = self.kernel, self.stride, self.padding
        ho, wo = am.shape[2:]
        rows = xp_.arange(ho).reshape(ho, 1) * s - p + am // k
        cols = xp_.arange(wo).reshape(1, wo) * s - p + am % k
        base = (xp_.arange(nb * c).reshape(nb, c, 1, 1)) * (h * w)
        return base + rows * w + cols

    def gradient(self, out_grad, node):
        x = node.inputs[0]
        idx = self.indices(x.realize_cached_data())
        return ScatterFlat(idx, x.shape)(out_grad)

    def gradient_nd(self, g: NDArray, node):
        x = node.inputs[0].cached_data
        return (ScatterFlat(self.indices(x), x.shape).compute(g),)


class ScatterFlat(TensorOp):
    """zeros(shape) with g added at flat indices `idx` (the adjoint of GatherFlat)."""

    __slots__ = ("idx", "shape")

    def __init__(self, idx, shape):
        self.idx, self.shape = idx, tuple(shape)

    def compute(self, g: NDArray):
        xp_ = _xp(g.native)
        size = int(np.prod(self.shape))
        out = xp_.bincount(self.idx.reshape(-1), weights=g.native.reshape(-1), minlength=size)
        return NDArray._wrap(out.astype(g.dtype).reshape(self.shape), g.device)

    def gradient(self, out_grad, node):
        return GatherFlat(self.idx)(out_grad)


class GatherFlat(TensorOp):
    """x.flat[idx] (shape of idx)."""

    __slots__ = ("idx",)

    def __init__(self, idx):
        self.idx = idx

    def compute(self, x: NDArray):
        return NDArray._wrap(x.native.reshape(-1)[self.idx], x.device)

    def gradient(self, out_grad, node):
        return ScatterFlat(self.idx, node.inputs[0].shape)(out_grad)


def _avg_pool_nd(xn, k: int, s: int, p: int):
    win = _windows(_pad_hw(xn, p, p, ax=2), k, k, s, ax=2)
    return win.mean(axis=(-2, -1), dtype=xn.dtype)


def _avg_pool_adjoint_nd(gn, shape, k: int, s: int, p: int):
    xp_ = _xp(gn)
    nb, c, h, w = shape
    ho, wo = gn.shape[2:]
    dx = xp_.zeros((nb, c, h + 2 * p, w + 2 * p), dtype=gn.dtype)
    gs = gn * (1.0 / (k * k))
    for i in range(k):
        for j in range(k):
            dx[:, :, i:i + s * (ho - 1) + 1:s, j:j + s * (wo - 1) + 1:s] += gs
    return dx[:, :, p:p + h, p:p + w]


class AvgPool2d(TensorOp):
    """Mean over k x k windows of NCHW input (zero padding counted, as PyTorch's default)."""

    __slots__ = ("kernel", "stride", "padding")

    def __init__(self, kernel: int, stride: int, padding: int = 0):
        self.kernel, self.stride, self.padding = int(kernel), int(stride), int(padding)

    def compute(self, x: NDArray):
        _check_pool("avg_pool2d", x, self.kernel, self.stride, self.padding)
        out = _avg_pool_nd(x.native, self.kernel, self.stride, self.padding)
        return NDArray._wrap(out, x.device)

    def gradient(self, out_grad, node):
        return AvgPool2dAdjoint(node.inputs[0].shape, self.kernel, self.stride,
                                self.padding)(out_grad)

    def gradient_nd(self, g: NDArray, node):
        shape = node.inputs[0].cached_data.shape
        dx = _avg_pool_adjoint_nd(g.native, shape, self.kernel, self.stride, self.padding)
        return (NDArray._wrap(dx, g.device),)


class AvgPool2dAdjoint(TensorOp):
    """The transpose of AvgPool2d: spreads each output gradient over its window."""

    __slots__ = ("shape", "kernel", "stride", "padding")

    def __init__(self, shape, kernel: int, stride: int, padding: int = 0):
        self.shape = tuple(shape)
        self.kernel, self.stride, self.padding = kernel, stride, padding

    def compute(self, g: NDArray):
        dx = _avg_pool_adjoint_nd(g.native, self.shape, self.kernel, self.stride, self.padding)
        return NDArray._wrap(dx, g.device)

    def gradient(self, out_grad, node):
        return AvgPool2d(self.kernel, self.stride, self.padding)(out_grad)


def max_pool2d(x, kernel_size, stride=None, padding=0):
    """NCHW max pooling; stride defaults to kernel_size (PyTorch)."""
    return MaxPool2d(kernel_size, kernel_size if stride is None else stride, padding)(x)


def avg_pool2d(x, kernel_size, stride=None, padding=0):
    """NCHW average pooling; stride defaults to kernel_size (PyTorch)."""
    return AvgPool2d(kernel_size, kernel_size if stride is None else stride, padding)(x)
