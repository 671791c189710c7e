"""Convolution and pooling ops (im2col on strided views, one matmul per conv).

`conv(a, b, stride, padding)`: `a` NHWC, `b` (KH, KW, C_in, C_out). `conv_nchw(x, w, bias,
stride, padding)` is the same op on NCHW input and output (what `nn.Conv` calls) with the bias
added in place: its output is an NCHW view of NHWC memory, so a net of them never copies
between layouts. Both are one fused op, `Conv`: the forward is `Device.conv_forward`, which
returns the output and the operand its weight gradient needs (the im2col matrix for NumPy's
im2col + matmul kernels, the padded input for the CPU's direct C kernels, cpu_c.py); the fast
backward hands that to `Device.conv_weight_grad` (`conv_weight_bias_grad` with a bias: one
pass over the output gradient for both) and computes the input gradient with
`Device.conv_input_grad`; the composed gradient (a conv of the dilated, padded output
gradient with the flipped weight, and a conv of the input with the dilated output gradient) is
what second derivatives differentiate.

Pooling ops work on NCHW: `max_pool2d` (ties go to the first maximum in the window, as PyTorch
does), `avg_pool2d` (padding counted in the average, PyTorch's default) and their adjoints.
"""
from __future__ import annotations

from ..autograd import NDArray, TensorOp, Value, is_grad_enabled
from .ops_fused import FusedOp
from .ops_indexing import GetItem, dilate, flip, pad
from .ops_mathematic import permute, reshape, summation
from .ops_shape import promote_pair

_TO_NHWC = (0, 2, 3, 1)
_TO_NCHW = (0, 3, 1, 2)


def pad_or_crop_hw(x, pads):
    """Pad (positive amounts) or crop (negative) axes 1, 2 of NHWC `x`, as ops:
    pads = ((lo_h, hi_h), (lo_w, hi_w))."""
    if any(v > 0 for p in pads for v in p):
        x = pad(x, ((0, 0),) + tuple((max(lo, 0), max(hi, 0)) for lo, hi in pads) + ((0, 0),))
    if any(v < 0 for p in pads for v in p):
        index = (slice(None),) + tuple(
            slice(max(-lo, 0), n - max(-hi, 0)) for (lo, hi), n in zip(pads, x.shape[1:3])
        ) + (slice(None),)
        x = GetItem(index)(x)
    return x


def dilate_hw(x, stride: int):
    """Insert stride-1 zeros between rows/columns of NHWC x (no trailing zeros), as ops."""
    if stride == 1:
        return x
    h, w = x.shape[1:3]
    x = dilate(x, (1, 2), stride - 1)
    return GetItem((slice(None), slice(0, (h - 1) * stride + 1),
                    slice(0, (w - 1) * stride + 1), slice(None)))(x)


# ---- conv -------------------------------------------------------------------------------------
def _check_conv(a: NDArray, b: NDArray, bias, stride: int, padding: int, nchw: bool) -> None:
    """`a` is the input seen as NHWC (a view of NCHW input when `nchw`)."""
    layout = "NCHW" if nchw else "NHWC"
    if a.ndim != 4 or b.ndim != 4:
        shape = a.permute(_TO_NCHW).shape if nchw and a.ndim == 4 else a.shape
        raise ValueError(f"conv: expected {layout} input and (K, K, C_in, C_out) weight, got "
                         f"input {shape} and weight {b.shape}")
    if a.shape[3] != b.shape[2]:
        shape = a.permute(_TO_NCHW).shape if nchw else a.shape
        hint = ""
        if not nchw and a.shape[1] == b.shape[2]:
            hint = " (the input looks like NCHW; conv expects NHWC)"
        raise ValueError(f"conv: input channels {a.shape[3]} (input {shape}, {layout}) do not "
                         f"match weight C_in {b.shape[2]} (weight {b.shape}, (K, K, C_in, "
                         f"C_out)){hint}")
    if stride < 1 or padding < 0:
        raise ValueError(f"conv: need stride >= 1 and padding >= 0, got stride {stride}, "
                         f"padding {padding}")
    for i in (0, 1):
        if a.shape[1 + i] + 2 * padding < b.shape[i]:
            raise ValueError(f"conv: kernel {b.shape[:2]} larger than the padded input "
                             f"{a.shape} with padding {padding}")
    if bias is not None and bias.size != b.shape[3]:
        raise ValueError(f"conv: bias of shape {bias.shape} for {b.shape[3]} output channels")


class Conv(FusedOp):
    """2-D cross-correlation (as torch conv2d) of `a` with a (KH, KW, C_in, C_out) weight `b`,
    plus an optional bias (C_out elements). `a` and the output are NHWC, or NCHW when `nchw`.

    The forward keeps the device's saved operand (im2col matrix or padded input) for the
    weight gradient; the backward recomputes it when missing, so a graph can be
    backpropagated twice.
    """

    __slots__ = ("stride", "padding", "nchw", "save_cols", "_saved")

    def __init__(self, stride: int = 1, padding: int = 0, nchw: bool = False,
                 save_cols: bool = True):
        self.stride = int(stride)
        self.padding = int(padding)
        self.nchw = bool(nchw)
        # False: the backward recomputes the im2col matrix (kh*kw times the input's size)
        # instead of keeping it from the forward: less memory, one more im2col per backward
        self.save_cols = bool(save_cols)
        self._saved = None  # (input, its im2col matrix) of the last forward

    def __repr__(self):
        return "ConvNCHW" if self.nchw else "Conv"

    def compute(self, a: NDArray, b: NDArray, bias: NDArray = None):
        x = a.permute(_TO_NHWC) if self.nchw and a.ndim == 4 else a
        _check_conv(x, b, bias, self.stride, self.padding, self.nchw)
        if x.dtype != b.dtype:  # promote as the elementwise ops do (float64 x, float32 w)
            x, b = promote_pair(x, b)
        out, saved = a.device.conv_forward(x, b, bias, self.stride, self.padding)
        # a 1x1 stride-1 conv's saved operand is its input: the graph holds that already
        pointwise = b.shape[0] == b.shape[1] == 1 and self.stride == 1 and self.padding == 0
        keep = self.save_cols and not pointwise and is_grad_enabled()
        self._saved = (a, saved) if keep else None
        return out.permute(_TO_NCHW) if self.nchw else out

    def _forward_state(self, a: NDArray, b: NDArray) -> NDArray:
        """What the weight gradient needs from the forward (the device's `saved` operand:
        the im2col matrix, or the padded input), kept or made again."""
        saved = self._saved
        if saved is not None and saved[0] is a:
            return saved[1]
        x = a.permute(_TO_NHWC) if self.nchw else a
        if x.dtype != b.dtype:
            x, b = promote_pair(x, b)
        return a.device.conv_saved(x, b, self.stride, self.padding)

    def backward_arrays(self, g, inputs, needs):
        a, b = inputs[0], inputs[1]
        kh, kw, cin, cout = b.shape
        gh = g.permute(_TO_NHWC) if self.nchw else g
        gw = gx = gb = None
        bias = len(inputs) == 3 and needs[2]
        if needs[1] and bias:  # one pass over g for both
            gw, gb = a.device.conv_weight_bias_grad(self._forward_state(a, b), gh, b.shape,
                                                    self.stride, self.padding)
            gb = gb.reshape(inputs[2].shape)
        elif needs[1]:
            gw = a.device.conv_weight_grad(self._forward_state(a, b), gh, b.shape,
                                           self.stride, self.padding)
        if needs[0]:
            shape = a.permute(_TO_NHWC).shape if self.nchw else a.shape
            gx = a.device.conv_input_grad(gh, b, shape, self.stride, self.padding)
            if self.nchw:
                gx = gx.permute(_TO_NCHW)
        if len(inputs) == 2:
            return gx, gw
        if bias and gb is None:  # the bias alone
            g2 = gh.reshape((-1, cout))  # (N*Ho*Wo, C_out); a view when g is NHWC in memory
            gb = g2.sum((0,)).reshape(inputs[2].shape)
        return gx, gw, gb

    def gradient_composed(self, out_grad, a, b, bias=None):
        if self.nchw:
            a, out_grad = permute(a, _TO_NHWC), permute(out_grad, _TO_NHWC)
        s, p = self.stride, self.padding
        kh, kw = b.shape[:2]
        h, w = a.shape[1:3]
        rh = (h + 2 * p - kh) % s
        rw = (w + 2 * p - kw) % s
        g = dilate_hw(out_grad, s)  # (N, (Ho-1)s+1, (Wo-1)s+1, C_out)
        # input gradient: full correlation of g with the flipped, in/out-swapped kernel
        gp = pad_or_crop_hw(g, ((kh - 1 - p, kh - 1 - p + rh), (kw - 1 - p, kw - 1 - p + rw)))
        wt = permute(flip(b, (0, 1)), (0, 1, 3, 2))
        ga = conv(gp, wt, stride=1, padding=0)
        # weight gradient: batch and channels swap roles
        ap = permute(a, (3, 1, 2, 0))  # (C_in, H, W, N)
        gt = permute(g, (1, 2, 0, 3))  # (Ho', Wo', N, C_out)
        gb = conv(ap, gt, stride=1, padding=p)  # (C_in, KH + rh, KW + rw, C_out)
        if rh or rw:
            gb = GetItem((slice(None), slice(0, kh), slice(0, kw), slice(None)))(gb)
        gb = permute(gb, (1, 2, 0, 3))
        if self.nchw:
            ga = permute(ga, _TO_NCHW)
        if bias is None:
            return ga, gb
        return ga, gb, reshape(summation(out_grad, (0, 1, 2)), bias.shape)


def conv(a, b, stride=1, padding=1):
    """NHWC conv; note the helper's default padding 1 (course), the op class default is 0."""
    return Conv(stride, padding)(a, b)


def conv_nchw(x, weight, bias=None, stride=1, padding=0, save_cols=True):
    """NCHW conv with a (K, K, C_in, C_out) weight and an optional (C_out,) bias, one op (the
    output is an NCHW view of NHWC memory). Equals torch conv2d with weight permuted
    (3, 2, 0, 1). `save_cols=False` recomputes the im2col matrix in the backward."""
    op = Conv(stride, padding, nchw=True, save_cols=save_cols)
    return op(x, weight) if bias is None else op(x, weight, bias)


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


def _value(x) -> NDArray:
    """A rule's input as an NDArray (a Tensor on the graph path, an NDArray on the fast one)."""
    return x.realize_cached_data() if isinstance(x, Value) else x


class MaxPool2d(TensorOp):
    """Max over k x k windows of NCHW input; the gradient goes to the first maximum."""

    __slots__ = ("kernel", "stride", "padding", "_saved")
    array_rule = True

    def __init__(self, kernel: int, stride: int, padding: int = 0):
        self.kernel, self.stride, self.padding = int(kernel), int(stride), int(padding)
        self._saved = None  # (input, flat indices of the chosen maxima)

    def compute(self, x: NDArray):
        _check_pool("max_pool2d", x, self.kernel, self.stride, self.padding)
        out, idx = x.device.max_pool2d(x, self.kernel, self.stride, self.padding)
        self._saved = (x, idx)  # kept for the backward pass
        return out

    def indices(self, x: NDArray) -> NDArray:
        """Flat indices into x (N*C*H*W) of each window's chosen maximum, shape of the output."""
        if self._saved is not None and self._saved[0] is x:
            return self._saved[1]
        return x.device.max_pool2d(x, self.kernel, self.stride, self.padding)[1]

    def gradient(self, out_grad, node):
        x = _value(node.inputs[0])
        return ScatterFlat(self.indices(x), x.shape)(out_grad)


class ScatterFlat(TensorOp):
    """zeros(shape) with g added at flat indices `idx` (an int NDArray; the adjoint of
    GatherFlat)."""

    __slots__ = ("idx", "shape")
    array_rule = True

    def __init__(self, idx: NDArray, shape):
        self.idx, self.shape = idx, tuple(shape)

    def compute(self, g: NDArray):
        return g.device.scatter_flat(g, self.idx, self.shape)

    def gradient(self, out_grad, node):
        return GatherFlat(self.idx)(out_grad)


class GatherFlat(TensorOp):
    """x.flat[idx] (shape of idx, an int NDArray)."""

    __slots__ = ("idx",)
    array_rule = True

    def __init__(self, idx: NDArray):
        self.idx = idx

    def compute(self, x: NDArray):
        return x.device.gather_flat(x, self.idx)

    def gradient(self, out_grad, node):
        return ScatterFlat(self.idx, node.inputs[0].shape)(out_grad)


class AvgPool2d(TensorOp):
    """Mean over k x k windows of NCHW input (zero padding counted, as PyTorch's default)."""

    __slots__ = ("kernel", "stride", "padding")
    array_rule = True

    def __init__(self, kernel: int, stride: int, padding: int = 0):
        self.kernel, self.stride, self.padding = int(kernel), int(stride), int(padding)

    def compute(self, x: NDArray):
        _check_pool("avg_pool2d", x, self.kernel, self.stride, self.padding)
        return x.device.avg_pool2d(x, self.kernel, self.stride, self.padding)

    def gradient(self, out_grad, node):
        return AvgPool2dAdjoint(node.inputs[0].shape, self.kernel, self.stride,
                                self.padding)(out_grad)


class AvgPool2dAdjoint(TensorOp):
    """The transpose of AvgPool2d: spreads each output gradient over its window."""

    __slots__ = ("shape", "kernel", "stride", "padding")
    array_rule = True

    def __init__(self, shape, kernel: int, stride: int, padding: int = 0):
        self.shape = tuple(shape)
        self.kernel, self.stride, self.padding = kernel, stride, padding

    def compute(self, g: NDArray):
        return g.device.avg_pool2d_adjoint(g, self.shape, self.kernel, self.stride,
                                           self.padding)

    def gradient(self, out_grad, node):
        return AvgPool2d(self.kernel, self.stride, self.padding)(out_grad)


def max_pool2d(x, kernel_size, stride=None, padding=0):
    """NCHW max pooling; stride defaults to kernel_size (PyTorch)."""
    return MaxPool2d(kernel_size, kernel_size if stride is None else stride, padding)(x)


def avg_pool2d(x, kernel_size, stride=None, padding=0):
    """NCHW average pooling; stride defaults to kernel_size (PyTorch)."""
    return AvgPool2d(kernel_size, kernel_size if stride is None else stride, padding)(x)
