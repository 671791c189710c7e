"""Device kernels for convolution and pooling (im2col windows, col2im, pooling windows).

A mixin of `Device`: every method takes and returns NDArrays and is written once against
`self.xp`, so `cpu()` and `cuda()` share it; a backend overrides one only with a faster kernel
that gives the same numbers. Inside these methods `a._array` is the native strided view and
`self._wrap(native)` makes an NDArray of a native result.

Layouts: the conv kernels work on NHWC (channels last, what im2col + one matmul wants); an
NCHW array whose memory is NHWC (a permuted view, what `ops.conv_nchw` returns) costs no copy.
The pooling kernels work on NCHW.
"""
from __future__ import annotations


def _out_size(n: int, k: int, s: int, p: int) -> int:
    return (n + 2 * p - k) // s + 1


def _valid_range(n_out: int, n_in: int, offset: int, s: int, p: int):
    """Output positions o with 0 <= o * s + offset - p < n_in (kernel tap `offset`)."""
    lo = max(0, -((offset - p) // s))
    hi = min(n_out, (n_in - 1 - offset + p) // s + 1)
    return lo, max(hi, lo)


_GW_BLOCK = 256  # rows per block of the weight-gradient GEMM


class ConvKernels:
    """Kernels for convolution and pooling (im2col windows, col2im, pooling windows)."""

    __slots__ = ()

    # ---- strided windows ----------------------------------------------------------------
    def _windows(self, a, kh: int, kw: int, stride: int, ax: int):
        """Native view a.shape[:ax] + (Ho, Wo, kh, kw) + a.shape[ax+2:] over axes ax, ax+1."""
        shape, st = a.shape, a.strides
        ho = (shape[ax] - kh) // stride + 1
        wo = (shape[ax + 1] - kw) // stride + 1
        vshape = shape[:ax] + (ho, wo, kh, kw) + shape[ax + 2:]
        vstrides = (st[:ax] + (st[ax] * stride, st[ax + 1] * stride, st[ax], st[ax + 1])
                    + st[ax + 2:])
        return self.xp.lib.stride_tricks.as_strided(a, vshape, vstrides)

    def _pad_hw(self, a, ph: int, pw: int, ax: int, value=0.0):
        """Native copy of `a` with axis ax padded by ph and axis ax+1 by pw on both sides
        with `value` (`a` itself when both are 0)."""
        if ph == 0 and pw == 0:
            return a
        shape = list(a.shape)
        h, w = shape[ax], shape[ax + 1]
        shape[ax], shape[ax + 1] = h + 2 * ph, w + 2 * pw
        out = self.xp.full(tuple(shape), value, dtype=a.dtype)
        out[(slice(None),) * ax + (slice(ph, ph + h), slice(pw, pw + w))] = a
        return out

    def _im2col(self, a, kh: int, kw: int, stride: int, ph: int, pw: int):
        """Native im2col matrix of NHWC `a` padded by (ph, pw): (N*Ho*Wo, kh*kw*C)."""
        n, h, w, c = a.shape
        ho, wo = _out_size(h, kh, stride, ph), _out_size(w, kw, stride, pw)
        cols = self.xp.empty((n, ho, wo, kh, kw, c), dtype=a.dtype)
        self._im2col_into(a, cols, stride, ph, pw)
        return cols.reshape(n * ho * wo, -1), (n, ho, wo)

    def _im2col_into(self, a, cols, stride: int, ph: int, pw: int):
        """cols (N, Ho, Wo, kh, kw, C) = the windows of NHWC `a` padded by (ph, pw)."""
        kh, kw = cols.shape[3:5]
        cols[...] = self._windows(self._pad_hw(a, ph, pw, 1), kh, kw, stride, 1)

    # ---- convolution (NHWC) -------------------------------------------------------------
    def conv_im2col(self, x, kh: int, kw: int, stride: int, padding: int):
        """The im2col matrix of NHWC `x` (any strides): (N*Ho*Wo, kh*kw*C), compact, rows
        ordered (n, ho, wo) and columns (i, j, c), so `cols @ w.reshape(-1, C_out)` is the
        convolution with a (kh, kw, C, C_out) weight. Zero padding `padding` on H and W. A
        1x1 kernel at stride 1 without padding gives x itself as (N*H*W, C) (a view when x is
        NHWC in memory)."""
        if kh == kw == 1 and stride == 1 and padding == 0:
            return x.reshape((-1, x.shape[3]))
        return self._wrap(self._im2col(x._array, kh, kw, stride, padding, padding)[0])

    def conv_col2im(self, dcols, shape, kh: int, kw: int, stride: int, padding: int):
        """The adjoint of `conv_im2col`: dcols (N*Ho*Wo, kh*kw*C) summed back onto the NHWC
        input of shape `shape`. One strided add per kernel tap (kh*kw of them), each over
        only the positions inside the unpadded input, so no padded buffer is needed."""
        n, h, w, c = shape
        ho = _out_size(h, kh, stride, padding)
        wo = _out_size(w, kw, stride, padding)
        d = dcols._array.reshape(n, ho, wo, kh, kw, c)
        dx = self.xp.empty((n, h, w, c), dtype=d.dtype)
        self._col2im(d, dx, stride, padding)
        return self._wrap(dx)

    def _col2im(self, d, dx, s: int, p: int):
        """dx (N, H, W, C) = the sum of d (N, Ho, Wo, kh, kw, C) back onto the input."""
        n, ho, wo, kh, kw, c = d.shape
        h, w = dx.shape[1:3]
        if s == 1 and ho == h and wo == w:  # tap (p, p) covers every pixel: it initialises dx
            dx[...] = d[:, :, :, p, p]
            skip = (p, p)
        else:
            dx[...] = 0
            skip = None
        for i in range(kh):
            r0, r1 = _valid_range(ho, h, i, s, p)
            if r0 == r1:
                continue
            for j in range(kw):
                if (i, j) == skip:
                    continue
                c0, c1 = _valid_range(wo, w, j, s, p)
                if c0 == c1:
                    continue
                y0, x0 = r0 * s + i - p, c0 * s + j - p
                dx[:, y0:y0 + (r1 - r0 - 1) * s + 1:s, x0:x0 + (c1 - c0 - 1) * s + 1:s] += \
                    d[:, r0:r1, c0:c1, i, j]

    def conv_forward(self, x, w, bias, stride: int, padding: int):
        """(out, saved): the convolution of NHWC `x` (any strides) with a (kh, kw, C, C_out)
        weight plus `bias` (C_out,) or None, as a compact NHWC array, and the operand its
        weight gradient needs (`conv_weight_grad`). Here `saved` is the im2col matrix and
        the output one matmul with it; a backend with direct kernels saves what those
        need (cpu_c.py: the padded input)."""
        kh, kw, cin, cout = w.shape
        cols = self.conv_im2col(x, kh, kw, stride, padding)
        out = cols @ w.reshape((kh * kw * cin, cout))
        if bias is not None:
            out += bias.reshape((cout,))
        n, h, wd = x.shape[:3]
        ho, wo = _out_size(h, kh, stride, padding), _out_size(wd, kw, stride, padding)
        return out.reshape((n, ho, wo, cout)), cols

    def conv_saved(self, x, w, stride: int, padding: int):
        """The `saved` operand `conv_forward(x, w, ...)` returns, made again (a backward
        whose forward kept nothing)."""
        return self.conv_im2col(x, w.shape[0], w.shape[1], stride, padding)

    def conv_weight_grad(self, saved, g, w_shape, stride: int, padding: int):
        """The weight gradient, of `w_shape` (kh, kw, C, C_out), of `conv_forward` for the
        NHWC output gradient g, from the forward's `saved` operand: cols^T @ g. A GEMM whose
        inner dimension is the number of output pixels is slow in one call (OpenBLAS: 2-3x
        off its peak); it runs as one batched matmul over blocks of `_GW_BLOCK` rows,
        summed."""
        xp = self.xp
        a, g = saved._array, g._array.reshape(-1, w_shape[3])
        m, k = a.shape
        nb = m // _GW_BLOCK
        if nb < 2:
            return self._wrap((a.T @ g).reshape(w_shape))
        cut = nb * _GW_BLOCK
        blocks = a[:cut].reshape(nb, _GW_BLOCK, k).transpose(0, 2, 1)
        out = xp.matmul(blocks, g[:cut].reshape(nb, _GW_BLOCK, -1)).sum(axis=0)
        if cut < m:
            out += a[cut:].T @ g[cut:]
        return self._wrap(out.reshape(w_shape))

    def conv_weight_bias_grad(self, saved, g, w_shape, stride: int, padding: int):
        """(the weight gradient of `conv_weight_grad`, the bias gradient (C_out,): the sum of
        the NHWC output gradient g over its pixels). Here two passes over g; a backend with
        a direct kernel sums the bias in the weight gradient's pass."""
        cout = w_shape[3]
        g2 = g._array.reshape(-1, cout)
        db = self._column_sums(g2)
        return self.conv_weight_grad(saved, g, w_shape, stride, padding), self._wrap(db)

    def conv_input_grad(self, g, w, shape, stride: int, padding: int):
        """d(conv)/d(input) for the NHWC output gradient g and weight w (KH, KW, C, C_out),
        onto an NHWC input of `shape`. Either one im2col matmul of the padded g with the
        flipped, transposed kernel (stride 1, padding < K, C >= C_out), or `g @ w^T` summed
        back by `conv_col2im`: both do the same arithmetic, and the second writes a matrix
        of C instead of C_out columns per tap."""
        kh, kw, cin, cout = w.shape
        if stride == 1 and padding < kh and padding < kw and cin >= cout:
            cols, (n, h, wd) = self._im2col(g._array, kh, kw, 1, kh - 1 - padding,
                                            kw - 1 - padding)
            wt = self.xp.ascontiguousarray(w._array[::-1, ::-1].transpose(0, 1, 3, 2))
            dx = cols @ wt.reshape(kh * kw * cout, cin)
            return self._wrap(dx.reshape(n, h, wd, cin))
        dcols = g.reshape((-1, cout)) @ w.reshape((kh * kw * cin, cout)).transpose()
        return self.conv_col2im(dcols, shape, kh, kw, stride, padding)

    # ---- pooling (NCHW) -----------------------------------------------------------------
    def max_pool2d(self, x, k: int, stride: int, padding: int):
        """(max over k x k windows of NCHW x, flat int64 indices into x of each window's first
        maximum), both of the output shape (N, C, Ho, Wo); padding counts as -inf."""
        a = x._array
        xp = self.xp
        nb, c, h, w = a.shape
        a = self._pad_hw(a, padding, padding, 2, value=-float("inf"))
        win = self._windows(a, k, k, stride, 2)
        ho, wo = win.shape[2:4]
        flat = win.reshape(nb, c, ho, wo, k * k)
        am = flat.argmax(axis=-1)
        out = xp.take_along_axis(flat, am[..., None], axis=-1)[..., 0]
        rows = xp.arange(ho).reshape(ho, 1) * stride - padding + am // k
        cols = xp.arange(wo).reshape(1, wo) * stride - padding + am % k
        base = xp.arange(nb * c).reshape(nb, c, 1, 1) * (h * w)
        return self._wrap(out), self._wrap(base + rows * w + cols)

    def scatter_flat(self, g, idx, shape):
        """zeros(shape) with g added at the flat indices `idx` (same shape as g), repeated
        indices summed (the adjoint of `gather_flat`)."""
        size = 1
        for d in shape:
            size *= d
        gn = g._array
        out = self.xp.bincount(idx._array.reshape(-1), weights=gn.reshape(-1), minlength=size)
        return self._wrap(out.astype(gn.dtype).reshape(tuple(shape)))

    def gather_flat(self, x, idx):
        """x.flat[idx], of the shape of idx."""
        return self._wrap(self.xp.ascontiguousarray(x._array).reshape(-1)[idx._array])

    def avg_pool2d(self, x, k: int, stride: int, padding: int):
        """Mean over k x k windows of NCHW x, zero padding counted (PyTorch's default)."""
        a = x._array
        win = self._windows(self._pad_hw(a, padding, padding, 2), k, k, stride, 2)
        return self._wrap(win.mean(axis=(-2, -1), dtype=a.dtype))

    def avg_pool2d_adjoint(self, g, shape, k: int, stride: int, padding: int):
        """The transpose of `avg_pool2d`: each output gradient spread evenly over its window,
        summed onto an NCHW array of `shape`."""
        gn = g._array * (1.0 / (k * k))
        nb, c, h, w = shape
        s, p = stride, padding
        ho, wo = gn.shape[2:]
        dx = self.xp.zeros((nb, c, h, w), dtype=gn.dtype)
        for i in range(k):
            r0, r1 = _valid_range(ho, h, i, s, p)
            for j in range(k):
                c0, c1 = _valid_range(wo, w, j, s, p)
                if r0 == r1 or c0 == c1:
                    continue
                y0, x0 = r0 * s + i - p, c0 * s + j - p
                dx[:, :, y0:y0 + (r1 - r0 - 1) * s + 1:s, x0:x0 + (c1 - c0 - 1) * s + 1:s] += \
                    gn[:, :, r0:r1, c0:c1]
        return self._wrap(dx)
