"""C kernels of the CPU device for the loops NumPy runs badly: conv windows and batch norm.

im2col copies windows of C channels at a time (64-128 bytes for the usual widths), and batch
norm over channels-last memory reduces and scales rows of C values: NumPy runs each as a
strided loop of C elements with per-row overhead, at well under a tenth of memory bandwidth.
The same loops in C, compiled once with `-O3 -march=native` (c_build.py), run near it. Each
kernel takes a range of images or rows, so `RowThreads` splits a call over the device's
threads (ctypes releases the GIL for the call).

Only float32 C-contiguous operands take these kernels; anything else, and every call when no
C compiler works (or NEEDLE_CPU_C=0), runs the NumPy kernels of the base classes. The
statistics are accumulated in float64 per channel: at least as accurate as NumPy's float32
sums. im2col and col2im give NumPy's numbers exactly (copies, and the same additions in the
same order per element).
"""
from __future__ import annotations

import ctypes
import os

import numpy as np

from .c_build import build_library, c_compiler

_SOURCE = r"""
#include <string.h>
typedef long long ll;

/* cols[n, ho, wo, i, j, :] = x[n, ho*s + i - p, wo*s + j - p, :], zero outside; n in [n0, n1).
   x is (N, H, W, C), cols (N, HO, WO, KH, KW, C), both C-contiguous. */
void im2col(const float *x, float *cols, ll n0, ll n1, ll H, ll W, ll C, ll KH, ll KW,
            ll S, ll P, ll HO, ll WO) {
  const ll run = KW * C;
  for (ll n = n0; n < n1; ++n) {
    const float *xn = x + n * H * W * C;
    float *dst = cols + n * HO * WO * KH * run;
    for (ll ho = 0; ho < HO; ++ho) {
      for (ll wo = 0; wo < WO; ++wo) {
        const ll x0 = wo * S - P;
        for (ll i = 0; i < KH; ++i, dst += run) {
          const ll y = ho * S + i - P;
          if (y < 0 || y >= H) { memset(dst, 0, run * sizeof(float)); continue; }
          const float *row = xn + y * W * C;
          if (x0 >= 0 && x0 + KW <= W) { memcpy(dst, row + x0 * C, run * sizeof(float)); continue; }
          for (ll j = 0; j < KW; ++j) {
            const ll xx = x0 + j;
            if (xx < 0 || xx >= W) memset(dst + j * C, 0, C * sizeof(float));
            else memcpy(dst + j * C, row + xx * C, C * sizeof(float));
          }
        }
      }
    }
  }
}

/* dx[n] = sum over windows of d[n] (the adjoint of im2col); n in [n0, n1). d is read in
   memory order, each window added onto dx in turn. */
void col2im(const float *d, float *dx, ll n0, ll n1, ll H, ll W, ll C, ll KH, ll KW,
            ll S, ll P, ll HO, ll WO) {
  for (ll n = n0; n < n1; ++n) {
    float *dxn = dx + n * H * W * C;
    const float *g = d + n * HO * WO * KH * KW * C;
    memset(dxn, 0, H * W * C * sizeof(float));
    for (ll ho = 0; ho < HO; ++ho)
      for (ll wo = 0; wo < WO; ++wo)
        for (ll i = 0; i < KH; ++i) {
          const ll y = ho * S + i - P;
          for (ll j = 0; j < KW; ++j, g += C) {
            const ll xx = wo * S + j - P;
            if (y < 0 || y >= H || xx < 0 || xx >= W) continue;
            float *o = dxn + (y * W + xx) * C;
            for (ll c = 0; c < C; ++c) o[c] += g[c];
          }
        }
  }
}

/* Batch norm over the rows [r0, r1) of x (rows, C), channels last. */
void bn_sum(const float *x, ll r0, ll r1, ll C, double *sum) {
  for (ll c = 0; c < C; ++c) sum[c] = 0.0;
  for (ll r = r0; r < r1; ++r) {
    const float *xr = x + r * C;
    for (ll c = 0; c < C; ++c) sum[c] += xr[c];
  }
}

void bn_sqdev(const float *x, ll r0, ll r1, ll C, const float *mean, double *sq) {
  for (ll c = 0; c < C; ++c) sq[c] = 0.0;
  for (ll r = r0; r < r1; ++r) {
    const float *xr = x + r * C;
    for (ll c = 0; c < C; ++c) { const float t = xr[c] - mean[c]; sq[c] += (double)t * t; }
  }
}

/* y = (x - mean) * scale + shift */
void bn_apply(const float *x, float *y, ll r0, ll r1, ll C, const float *mean,
              const float *scale, const float *shift) {
  for (ll r = r0; r < r1; ++r) {
    const float *xr = x + r * C;
    float *yr = y + r * C;
    for (ll c = 0; c < C; ++c) yr[c] = (xr[c] - mean[c]) * scale[c] + shift[c];
  }
}

/* db = sum dy, dw = sum dy * (x - mean) * rstd over the rows */
void bn_bwd_sums(const float *dy, const float *x, ll r0, ll r1, ll C, const float *mean,
                 const float *rstd, double *db, double *dw) {
  for (ll c = 0; c < C; ++c) { db[c] = 0.0; dw[c] = 0.0; }
  for (ll r = r0; r < r1; ++r) {
    const float *g = dy + r * C, *xr = x + r * C;
    for (ll c = 0; c < C; ++c) {
      db[c] += g[c];
      dw[c] += (double)g[c] * ((xr[c] - mean[c]) * rstd[c]);
    }
  }
}

/* dx = scale * (dy - mdb - xh * mdw), xh = (x - mean) * rstd, mdb = db / N, mdw = dw / N */
void bn_bwd_dx(const float *dy, const float *x, float *dx, ll r0, ll r1, ll C,
               const float *mean, const float *rstd, const float *scale, const float *mdb,
               const float *mdw) {
  for (ll r = r0; r < r1; ++r) {
    const float *g = dy + r * C, *xr = x + r * C;
    float *o = dx + r * C;
    for (ll c = 0; c < C; ++c) {
      const float xh = (xr[c] - mean[c]) * rstd[c];
      o[c] = scale[c] * (g[c] - mdb[c] - xh * mdw[c]);
    }
  }
}

/* ---- direct convolution, NHWC, vectorized over 16 output channels (GCC/clang vectors) ---- */
/* 16 floats: one AVX-512 register, two AVX2 ones; unaligned loads and stores via memcpy */
typedef float v16 __attribute__((vector_size(64)));
static inline v16 ld(const float *p) { v16 v; memcpy(&v, p, sizeof v); return v; }
static inline void st(float *p, v16 v) { memcpy(p, &v, sizeof v); }
#define AI static inline __attribute__((always_inline))

/* PB (<= 8) output pixels x NV (<= 2) * 16 output channels, accumulated over every tap and input channel */
AI void fwd_block(const int pb, const int nv, const float *const *xb, const float *w,
                  const float *bias, float *const *ob, ll CI, ll KH, ll KW, ll WP, ll CO,
                  ll co) {
  v16 acc[8][2];
  for (int p = 0; p < pb; ++p)
    for (int v = 0; v < nv; ++v) acc[p][v] = bias ? ld(bias + co + 16 * v) : (v16){0};
  for (ll i = 0; i < KH; ++i)
    for (ll j = 0; j < KW; ++j) {
      const ll xoff = (i * WP + j) * CI;
      const float *wt = w + (i * KW + j) * CI * CO + co;
      for (ll ci = 0; ci < CI; ++ci) {
        const v16 w0 = ld(wt + ci * CO);
        const v16 w1 = nv > 1 ? ld(wt + ci * CO + 16) : (v16){0};
        for (int p = 0; p < pb; ++p) {
          const float xv = xb[p][xoff + ci];
          acc[p][0] += xv * w0;
          if (nv > 1) acc[p][1] += xv * w1;
        }
      }
    }
  for (int p = 0; p < pb; ++p)
    for (int v = 0; v < nv; ++v) st(ob[p] + co + 16 * v, acc[p][v]);
}

/* out (N, HO, WO, CO) = the correlation of the padded xp (N, HP, WP, CI) with
   w (KH, KW, CI, CO), plus bias (CO,) or NULL; images n in [n0, n1); CO % 16 == 0 */
void conv_fwd(const float *xp, const float *w, const float *bias, float *out, ll n0, ll n1,
              ll HP, ll WP, ll CI, ll KH, ll KW, ll CO, ll S, ll HO, ll WO) {
  const ll per = HO * WO, total = (n1 - n0) * per;
  for (ll q0 = 0; q0 < total; q0 += 8) {
    const int pb = total - q0 < 8 ? (int)(total - q0) : 8;
    const float *xb[8];
    float *ob[8];
    for (int p = 0; p < pb; ++p) {
      const ll q = q0 + p, n = n0 + q / per, r = q % per, ho = r / WO, wo = r % WO;
      xb[p] = xp + ((n * HP + ho * S) * WP + wo * S) * CI;
      ob[p] = out + (n0 * per + q) * CO;
    }
    ll co = 0;
    if (pb == 8) {
      for (; co + 32 <= CO; co += 32) fwd_block(8, 2, xb, w, bias, ob, CI, KH, KW, WP, CO, co);
      for (; co < CO; co += 16) fwd_block(8, 1, xb, w, bias, ob, CI, KH, KW, WP, CO, co);
    } else {
      for (int p = 0; p < pb; ++p)
        for (ll c = 0; c < CO; c += 16) fwd_block(1, 1, xb + p, w, bias, ob + p, CI, KH, KW, WP, CO, c);
    }
  }
}

/* dst[c, :] += sum over the output pixels of image n of xp[window + xoff + ci + c] * g[pixel]
   for c < cb: CB input channels x NV*16 output channels of one tap's weight gradient */
AI void wgt_block(const int cb, const int nv, const float *xp, const float *g, ll n, ll HP,
                  ll WP, ll CI, ll CO, ll S, ll HO, ll WO, ll xoff, ll ci, ll co, float *dst) {
  v16 acc[8][2];
  for (int c = 0; c < cb; ++c)
    for (int v = 0; v < nv; ++v) acc[c][v] = ld(dst + c * CO + 16 * v);
  for (ll ho = 0; ho < HO; ++ho) {
    const float *xr = xp + ((n * HP + ho * S) * WP) * CI + xoff + ci;
    const float *gr = g + ((n * HO + ho) * WO) * CO + co;
    for (ll wo = 0; wo < WO; ++wo) {
      const float *xq = xr + wo * S * CI;
      const v16 g0 = ld(gr + wo * CO);
      const v16 g1 = nv > 1 ? ld(gr + wo * CO + 16) : (v16){0};
      for (int c = 0; c < cb; ++c) {
        acc[c][0] += xq[c] * g0;
        if (nv > 1) acc[c][1] += xq[c] * g1;
      }
    }
  }
  for (int c = 0; c < cb; ++c)
    for (int v = 0; v < nv; ++v) st(dst + c * CO + 16 * v, acc[c][v]);
}

/* dw (KH, KW, CI, CO) = the weight gradient of conv_fwd over images [n0, n1): the sum over
   output pixels of each tap's input window times g (N, HO, WO, CO); overwrites dw. One image
   at a time, so its input and output gradient stay in cache across the taps. CO % 16 == 0 */
void conv_wgrad(const float *xp, const float *g, float *dw, ll n0, ll n1, ll HP, ll WP, ll CI,
                ll KH, ll KW, ll CO, ll S, ll HO, ll WO) {
  memset(dw, 0, KH * KW * CI * CO * sizeof(float));
  for (ll n = n0; n < n1; ++n)
    for (ll i = 0; i < KH; ++i)
      for (ll j = 0; j < KW; ++j) {
        const ll xoff = (i * WP + j) * CI;
        float *dt = dw + (i * KW + j) * CI * CO;
        for (ll co = 0; co < CO;) {
          const int nv = CO - co >= 32 ? 2 : 1;
          ll ci = 0;
          for (; ci + 8 <= CI; ci += 8) {
            float *dst = dt + ci * CO + co;
            if (nv == 2) wgt_block(8, 2, xp, g, n, HP, WP, CI, CO, S, HO, WO, xoff, ci, co, dst);
            else wgt_block(8, 1, xp, g, n, HP, WP, CI, CO, S, HO, WO, xoff, ci, co, dst);
          }
          for (; ci < CI; ++ci) {
            float *dst = dt + ci * CO + co;
            if (nv == 2) wgt_block(1, 2, xp, g, n, HP, WP, CI, CO, S, HO, WO, xoff, ci, co, dst);
            else wgt_block(1, 1, xp, g, n, HP, WP, CI, CO, S, HO, WO, xoff, ci, co, dst);
          }
          co += 16 * nv;
        }
      }
}

/* For PB output pixels: each tap's window of dxp += wt[tap] (CO, CI) applied to the pixel's
   g row, for NV*16 input channels from ci */
AI void dgrad_block(const int pb, const int nv, const float *const *gb, const float *wt,
                    float *const *db, ll CI, ll CO, ll KH, ll KW, ll WP, ll ci) {
  for (ll i = 0; i < KH; ++i)
    for (ll j = 0; j < KW; ++j) {
      v16 acc[8][2];
      for (int p = 0; p < pb; ++p) for (int v = 0; v < nv; ++v) acc[p][v] = (v16){0};
      const float *wp = wt + (i * KW + j) * CO * CI + ci;
      for (ll co = 0; co < CO; ++co) {
        const v16 w0 = ld(wp + co * CI);
        const v16 w1 = nv > 1 ? ld(wp + co * CI + 16) : (v16){0};
        for (int p = 0; p < pb; ++p) {
          const float gv = gb[p][co];
          acc[p][0] += gv * w0;
          if (nv > 1) acc[p][1] += gv * w1;
        }
      }
      const ll off = (i * WP + j) * CI + ci;
      for (int p = 0; p < pb; ++p)
        for (int v = 0; v < nv; ++v) {
          float *d = db[p] + off + 16 * v;
          st(d, ld(d) + acc[p][v]);
        }
    }
}

/* dxp (N, HP, WP, CI), zeroed here for images [n0, n1), = the adjoint of conv_fwd applied to
   g (N, HO, WO, CO) with wt (KH, KW, CO, CI) (the weight, its last two axes swapped);
   CI % 16 == 0 */
void conv_dgrad(const float *g, const float *wt, float *dxp, ll n0, ll n1, ll HP, ll WP,
                ll CI, ll KH, ll KW, ll CO, ll S, ll HO, ll WO) {
  memset(dxp + n0 * HP * WP * CI, 0, (n1 - n0) * HP * WP * CI * sizeof(float));
  const ll per = HO * WO, total = (n1 - n0) * per;
  for (ll q0 = 0; q0 < total; q0 += 8) {
    const int pb = total - q0 < 8 ? (int)(total - q0) : 8;
    const float *gb[8];
    float *db[8];
    for (int p = 0; p < pb; ++p) {
      const ll q = q0 + p, n = n0 + q / per, r = q % per, ho = r / WO, wo = r % WO;
      gb[p] = g + (n0 * per + q) * CO;
      db[p] = dxp + ((n * HP + ho * S) * WP + wo * S) * CI;
    }
    ll ci = 0;
    if (pb == 8) {
      for (; ci + 32 <= CI; ci += 32) dgrad_block(8, 2, gb, wt, db, CI, CO, KH, KW, WP, ci);
      for (; ci < CI; ci += 16) dgrad_block(8, 1, gb, wt, db, CI, CO, KH, KW, WP, ci);
    } else {
      for (int p = 0; p < pb; ++p)
        for (ll c = 0; c < CI; c += 16) dgrad_block(1, 1, gb + p, wt, db + p, CI, CO, KH, KW, WP, c);
    }
  }
}
"""

_LL, _P = ctypes.c_longlong, ctypes.c_void_p
_SIGNATURES = {
    "im2col": [_P, _P] + [_LL] * 11,
    "col2im": [_P, _P] + [_LL] * 11,
    "conv_fwd": [_P, _P, _P, _P] + [_LL] * 11,
    "conv_wgrad": [_P, _P, _P] + [_LL] * 11,
    "conv_dgrad": [_P, _P, _P] + [_LL] * 11,
    "bn_sum": [_P, _LL, _LL, _LL, _P],
    "bn_sqdev": [_P, _LL, _LL, _LL, _P, _P],
    "bn_apply": [_P, _P, _LL, _LL, _LL, _P, _P, _P],
    "bn_bwd_sums": [_P, _P, _LL, _LL, _LL, _P, _P, _P, _P],
    "bn_bwd_dx": [_P, _P, _P, _LL, _LL, _LL, _P, _P, _P, _P, _P],
}
_LIB = []  # [library or None], built on first use


def library():
    """The compiled kernels (a ctypes library with the functions above), or None."""
    if not _LIB:
        lib = None
        if os.environ.get("NEEDLE_CPU_C", "1").strip() != "0":
            lib = build_library(_SOURCE, c_compiler(), "cpu", ("-O3", "-march=native"))
        if lib is not None:
            for name, args in _SIGNATURES.items():
                fn = getattr(lib, name)
                fn.argtypes, fn.restype = args, None
        _LIB.append(lib)
    return _LIB[0]


def _ptr(a) -> int:
    return a.ctypes.data


def _sum_in_order(parts):
    """parts[0] + parts[1] + ... (a new array), in block order."""
    total = parts[0].copy()
    for part in parts[1:]:
        total += part
    return total


def _ok(*arrays) -> bool:
    return all(a.dtype == np.float32 and a.flags.c_contiguous for a in arrays)


class CKernels:
    """CPUDevice's C overrides; each falls back to the next class's kernel (NumPy)."""

    __slots__ = ()

    # ---- convolution windows: blocks of images --------------------------------------------
    def _im2col_into(self, a, cols, stride, ph, pw):
        lib = library()
        if lib is None or a.dtype != np.float32 or not cols.flags.c_contiguous:
            return super()._im2col_into(a, cols, stride, ph, pw)
        if ph != pw:
            return super()._im2col_into(a, cols, stride, ph, pw)
        a = np.ascontiguousarray(a)
        n, h, w, c = a.shape
        ho, wo, kh, kw = cols.shape[1:5]
        dims = (h, w, c, kh, kw, stride, ph, ho, wo)
        self._split(lambda lo, hi: lib.im2col(_ptr(a), _ptr(cols), lo, hi, *dims), n,
                    cols.size)

    def _col2im(self, d, dx, s, p):
        lib = library()
        if lib is None or not (_ok(dx) and d.dtype == np.float32):
            return super()._col2im(d, dx, s, p)
        d = np.ascontiguousarray(d)
        n, ho, wo, kh, kw, c = d.shape
        dims = (dx.shape[1], dx.shape[2], c, kh, kw, s, p, ho, wo)
        self._split(lambda lo, hi: lib.col2im(_ptr(d), _ptr(dx), lo, hi, *dims), n, d.size)

    # ---- direct convolution: blocks of images --------------------------------------------
    def _direct(self, lib, x, w) -> bool:
        """Whether the C kernels run this convolution: float32 operands and a multiple of
        16 output channels (the kernels' vector width)."""
        return (lib is not None and x.dtype == np.float32 and w.dtype == np.float32
                and w.shape[3] % 16 == 0)

    @staticmethod
    def _padded(a, p: int):
        """NHWC native `a` zero-padded by p on H and W, C-contiguous (a copy, or `a`)."""
        if p == 0:
            return np.ascontiguousarray(a)
        n, h, w, c = a.shape
        out = np.zeros((n, h + 2 * p, w + 2 * p, c), dtype=a.dtype)
        out[:, p:p + h, p:p + w] = a
        return out

    def conv_forward(self, x, w, bias, stride, padding):
        lib = library()
        if not self._direct(lib, x, w):
            return super().conv_forward(x, w, bias, stride, padding)
        kh, kw, cin, cout = w.shape
        xpad = self._padded(x._array, padding)
        n, hp, wp = xpad.shape[:3]
        ho, wo = (hp - kh) // stride + 1, (wp - kw) // stride + 1
        wn = np.ascontiguousarray(w._array)
        bn = None if bias is None else np.ascontiguousarray(bias._array.reshape(cout),
                                                            dtype=np.float32)
        out = np.empty((n, ho, wo, cout), dtype=np.float32)
        dims = (hp, wp, cin, kh, kw, cout, stride, ho, wo)
        b_ptr = None if bn is None else _ptr(bn)
        self._split(lambda lo, hi: lib.conv_fwd(_ptr(xpad), _ptr(wn), b_ptr, _ptr(out), lo,
                                                hi, *dims), n, out.size * kh * kw)
        return self._wrap(out), self._wrap(xpad)

    def conv_saved(self, x, w, stride, padding):
        if not self._direct(library(), x, w):
            return super().conv_saved(x, w, stride, padding)
        return self._wrap(self._padded(x._array, padding))

    def conv_weight_grad(self, saved, g, w_shape, stride, padding):
        lib = library()
        if saved.ndim != 4 or lib is None:  # an im2col matrix (the base class's form)
            return super().conv_weight_grad(saved, g, w_shape, stride, padding)
        xpad = saved._array
        gn = np.ascontiguousarray(g._array, dtype=np.float32)
        kh, kw, cin, cout = w_shape
        n, hp, wp = xpad.shape[:3]
        ho, wo = gn.shape[1:3]
        dims = (hp, wp, cin, kh, kw, cout, stride, ho, wo)
        k = self._threads.blocks(n, gn.size * kh * kw)
        parts = np.empty((k,) + tuple(w_shape), dtype=np.float32)
        bounds = [n * i // k for i in range(k + 1)]

        def block(i):
            lib.conv_wgrad(_ptr(xpad), _ptr(gn), _ptr(parts[i]), bounds[i], bounds[i + 1],
                           *dims)

        if k == 1:
            block(0)
            return self._wrap(parts[0])
        self._threads.run(lambda lo, hi: [block(i) for i in range(lo, hi)], k, k)
        return self._wrap(_sum_in_order(parts))

    def conv_input_grad(self, g, w, shape, stride, padding):
        lib = library()
        kh, kw, cin, cout = w.shape
        if (lib is None or g.dtype != np.float32 or w.dtype != np.float32
                or cin % 16 != 0):
            return super().conv_input_grad(g, w, shape, stride, padding)
        gn = np.ascontiguousarray(g._array)
        wt = np.ascontiguousarray(w._array.transpose(0, 1, 3, 2))  # (KH, KW, C_out, C)
        n, h, wd = shape[:3]
        p = padding
        dxp = np.empty((n, h + 2 * p, wd + 2 * p, cin), dtype=np.float32)
        ho, wo = gn.shape[1:3]
        dims = (h + 2 * p, wd + 2 * p, cin, kh, kw, cout, stride, ho, wo)
        self._split(lambda lo, hi: lib.conv_dgrad(_ptr(gn), _ptr(wt), _ptr(dxp), lo, hi,
                                                  *dims), n, gn.size * kh * kw)
        if p == 0:
            return self._wrap(dxp)
        return self._wrap(np.ascontiguousarray(dxp[:, p:p + h, p:p + wd]))

    def _split(self, fn, n_rows, n_elements):
        k = self._threads.blocks(n_rows, n_elements)
        if k == 1:
            fn(0, n_rows)
        else:
            self._threads.run(fn, n_rows, k)

    def _split_sums(self, fn, n_rows, n_elements, width, count=1):
        """Per-block float64 partial sums of `count` (width,) vectors, added in block order."""
        k = self._threads.blocks(n_rows, n_elements)
        parts = np.zeros((k, count, width))
        bounds = [n_rows * i // k for i in range(k + 1)]

        def block(i):
            fn(bounds[i], bounds[i + 1], *(_ptr(parts[i, j]) for j in range(count)))

        if k == 1:
            block(0)
        else:
            self._threads.run(lambda lo, hi: [block(i) for i in range(lo, hi)], k, k)
        return parts.sum(axis=0)

    # ---- batch norm over channels-last rows -----------------------------------------------
    def _batch_norm_fwd(self, x, weight=None, bias=None, eps=1e-5, axes=(0,)):
        lib = library()
        x2 = None if lib is None else self._rows_by_channel(x, axes)
        if x2 is None or not _ok(x2):
            return super()._batch_norm_fwd(x, weight, bias, eps, axes)
        rows, c = x2.shape
        mean = (self._split_sums(lambda lo, hi, s: lib.bn_sum(_ptr(x2), lo, hi, c, s),
                                 rows, x2.size, c)[0] / rows).astype(np.float32)
        var64 = self._split_sums(
            lambda lo, hi, s: lib.bn_sqdev(_ptr(x2), lo, hi, c, _ptr(mean), s),
            rows, x2.size, c)[0] / rows
        var = var64.astype(np.float32)
        rstd = (1.0 / np.sqrt(var + eps)).astype(np.float32)
        scale = rstd if weight is None else np.ascontiguousarray(rstd * weight.reshape(c))
        shift = (np.zeros(c, np.float32) if bias is None
                 else np.ascontiguousarray(bias.reshape(c), dtype=np.float32))
        scale = scale.astype(np.float32, copy=False)
        y = np.empty_like(x2)
        args = (_ptr(mean), _ptr(scale), _ptr(shift))
        self._split(lambda lo, hi: lib.bn_apply(_ptr(x2), _ptr(y), lo, hi, c, *args),
                    rows, x2.size)
        return self._as_layout(y, x), mean, rstd, var

    def _batch_norm_bwd(self, dy, x, mean, rstd, weight=None, axes=(0,)):
        lib = library()
        x2 = None if lib is None else self._rows_by_channel(x, axes)
        dy2 = None if x2 is None else self._rows_by_channel(dy, axes)
        if dy2 is None or not _ok(x2, dy2, mean, rstd):
            return super()._batch_norm_bwd(dy, x, mean, rstd, weight, axes)
        rows, c = x2.shape
        mean, rstd = mean.reshape(c), rstd.reshape(c)
        sums = self._split_sums(
            lambda lo, hi, db, dw: lib.bn_bwd_sums(_ptr(dy2), _ptr(x2), lo, hi, c,
                                                   _ptr(mean), _ptr(rstd), db, dw),
            rows, x2.size, c, count=2)
        db, dw = sums[0].astype(np.float32), sums[1].astype(np.float32)
        scale = rstd if weight is None else rstd * weight.reshape(c)
        scale = np.ascontiguousarray(scale, dtype=np.float32)
        mdb, mdw = db / np.float32(rows), dw / np.float32(rows)
        dx = np.empty_like(x2)
        args = tuple(_ptr(v) for v in (mean, rstd, scale, mdb, mdw))
        self._split(lambda lo, hi: lib.bn_bwd_dx(_ptr(dy2), _ptr(x2), _ptr(dx), lo, hi, c,
                                                 *args), rows, x2.size)
        dx = self._as_layout(dx, x)
        if weight is None:
            return dx, None, None
        return dx, dw.reshape(weight.shape), db.reshape(weight.shape)
