"""The CUDA C sources of `cuda()`'s fused kernels, and how each is launched.

Every kernel is a complete `extern "C" __global__` function, compiled as it stands by CuPy's
`RawKernel` on a GPU (cuda_kernels.py) and by NVRTC without one (tests/test_nvrtc.py, through
cuda_compile.py). This module imports neither CuPy nor anything that needs a driver: the
sources are plain strings, and the launch geometry is plain Python shared by the CuPy launch
and by the NumPy loop-for-loop references of cuda_reference.py.

`KERNELS` maps each entry point to its source; `fused_elementwise_source` writes the source of
one of `needle.compile`'s fused elementwise groups. Conventions: float32 and int64 (`long long`)
arrays, C-contiguous; sizes as `long long`; grid-stride loops for the elementwise kernels.
"""
from __future__ import annotations

__all__ = ["KERNELS", "ROW_BLOCK", "ELEMENTWISE_BLOCK", "COLUMN_BLOCK", "elementwise_launch",
           "column_chunks", "fused_elementwise_source", "FUSED_NAME"]

ROW_BLOCK = 512  # threads per row for the row-wise kernels (a multiple of 32, at most 1024)
ELEMENTWISE_BLOCK = 256  # threads per block of the grid-stride elementwise kernels
_ELEMENTWISE_MAX_GRID = 8192  # enough blocks to fill an H100/H200 several times over
COLUMN_BLOCK = 256  # columns per block of the column-sum kernel
_COLUMN_ROWS = 64  # rows per chunk of the column-sum kernel (at least)
_MAX_GRID_Y = 65535


def elementwise_launch(n: int) -> tuple[int, int]:
    """(blocks, threads) for a grid-stride kernel over n elements."""
    blocks = min(max(-(-n // ELEMENTWISE_BLOCK), 1), _ELEMENTWISE_MAX_GRID)
    return blocks, ELEMENTWISE_BLOCK


def column_chunks(rows: int) -> tuple[int, int]:
    """(rows per chunk, chunks) for `ndl_dot_xhat_partial`: each thread sums one column over
    one chunk of rows, so a tall matrix still gets many threads; chunks <= 65535 (grid y)."""
    per = max(_COLUMN_ROWS, -(-rows // _MAX_GRID_Y))
    return per, max(-(-rows // per), 1)


# Block-wide sum and max over blockDim.x threads (a multiple of 32): a butterfly of warp
# shuffles within each warp (lane l adds lane l ^ o, o = 16, 8, 4, 2, 1), lane 0 of each warp
# writes its warp's value to shared memory, then warp 0 runs the same butterfly over those
# partials (missing warps give the identity). `sh` is a __shared__ float[32]; every thread
# gets the result. Only NVRTC built-ins are used (no <math.h> macros such as INFINITY).
_BLOCK_REDUCE = r"""
#define NDL_BLOCK_REDUCE(NAME, OP, IDENT)                                           \
__device__ __forceinline__ float NAME(float v, float* sh) {                        \
    for (int o = 16; o > 0; o >>= 1) v = OP(v, __shfl_xor_sync(0xffffffffu, v, o)); \
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;                     \
    __syncthreads();                                                                \
    if (lane == 0) sh[warp] = v;                                                    \
    __syncthreads();                                                                \
    if (warp == 0) {                                                                \
        const int nw = blockDim.x >> 5;                                             \
        float u = lane < nw ? sh[lane] : (IDENT);                                   \
        for (int o = 16; o > 0; o >>= 1) u = OP(u, __shfl_xor_sync(0xffffffffu, u, o)); \
        if (lane == 0) sh[0] = u;                                                   \
    }                                                                               \
    __syncthreads();                                                                \
    return sh[0];                                                                   \
}
#define NDL_ADD(a, b) ((a) + (b))
#define NDL_NEG_INF __int_as_float(0xff800000)
NDL_BLOCK_REDUCE(block_sum, NDL_ADD, 0.0f)
NDL_BLOCK_REDUCE(block_max, fmaxf, NDL_NEG_INF)
"""

# One block per row of z (B, K): two-pass logsumexp (max, then sum), then the row's loss.
_SOFTMAX_CE_FWD = _BLOCK_REDUCE + r"""
extern "C" __global__ void ndl_softmax_ce_fwd(
        const float* __restrict__ z, const long long* __restrict__ y,
        float* __restrict__ lse, float* __restrict__ loss, const long long k) {
    __shared__ float sh[32];
    const float* zr = z + (long long)blockIdx.x * k;
    float m = NDL_NEG_INF;
    for (long long j = threadIdx.x; j < k; j += blockDim.x) m = fmaxf(m, zr[j]);
    m = block_max(m, sh);
    const float shift = fabsf(m) == __int_as_float(0x7f800000) ? 0.0f : m;  // +-inf
    float s = 0.0f;
    for (long long j = threadIdx.x; j < k; j += blockDim.x) s += expf(zr[j] - shift);
    s = block_sum(s, sh);
    if (threadIdx.x == 0) {
        const float l = logf(s) + shift;
        lse[blockIdx.x] = l;
        loss[blockIdx.x] = l - zr[y[blockIdx.x]];
    }
}
"""

# Grid-stride over the B*K entries of z: dz = (exp(z - lse[row]) - onehot) * g[0] / B.
# g is a 1-element device array, so the upstream gradient needs no host sync.
_SOFTMAX_CE_BWD = r"""
extern "C" __global__ void ndl_softmax_ce_bwd(
        const float* __restrict__ z, const float* __restrict__ lse,
        const long long* __restrict__ y, const float* __restrict__ g,
        float* __restrict__ dz, const long long k, const long long b) {
    const float scale = g[0] / (float)b;
    const long long n = b * k;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        const long long r = i / k, c = i - r * k;
        const float p = expf(z[i] - lse[r]);
        dz[i] = (p - (c == y[r] ? 1.0f : 0.0f)) * scale;
    }
}
"""

# One block per row of x (N, D): mean, variance (two passes, no cancellation), normalize.
_LAYER_NORM_FWD = _BLOCK_REDUCE + r"""
extern "C" __global__ void ndl_layer_norm_fwd(
        const float* __restrict__ x, const float* __restrict__ w, const float* __restrict__ b,
        float* __restrict__ out, float* __restrict__ mean, float* __restrict__ rstd,
        const long long d, const float eps) {
    __shared__ float sh[32];
    const long long row = blockIdx.x;
    const float* xr = x + row * d;
    float* yr = out + row * d;
    float s = 0.0f;
    for (long long j = threadIdx.x; j < d; j += blockDim.x) s += xr[j];
    const float mu = block_sum(s, sh) / (float)d;
    float q = 0.0f;
    for (long long j = threadIdx.x; j < d; j += blockDim.x) {
        const float c = xr[j] - mu;
        q += c * c;
    }
    const float rs = rsqrtf(block_sum(q, sh) / (float)d + eps);
    for (long long j = threadIdx.x; j < d; j += blockDim.x)
        yr[j] = (xr[j] - mu) * rs * w[j] + b[j];
    if (threadIdx.x == 0) {
        mean[row] = mu;
        rstd[row] = rs;
    }
}
"""

# One block per row: dx = rstd * (dxh - mean(dxh) - xh * mean(dxh * xh)), dxh = dy * w.
_LAYER_NORM_BWD = _BLOCK_REDUCE + r"""
extern "C" __global__ void ndl_layer_norm_bwd(
        const float* __restrict__ dy, const float* __restrict__ x, const float* __restrict__ w,
        const float* __restrict__ mean, const float* __restrict__ rstd,
        float* __restrict__ dx, const long long d) {
    __shared__ float sh[32];
    const long long row = blockIdx.x;
    const float* xr = x + row * d;
    const float* gr = dy + row * d;
    float* dr = dx + row * d;
    const float mu = mean[row], rs = rstd[row];
    float a = 0.0f, c = 0.0f;
    for (long long j = threadIdx.x; j < d; j += blockDim.x) {
        const float g = gr[j] * w[j];
        a += g;
        c += g * (xr[j] - mu) * rs;
    }
    a = block_sum(a, sh) / (float)d;
    c = block_sum(c, sh) / (float)d;
    for (long long j = threadIdx.x; j < d; j += blockDim.x)
        dr[j] = rs * (gr[j] * w[j] - a - (xr[j] - mu) * rs * c);
}
"""

# Column sums of dy * (x - mean) * rstd over a (rows, C) matrix, in two stages: thread
# (column j, chunk blockIdx.y) sums its chunk's rows in order into partial[chunk, j]; the
# caller sums `partial` over chunks. The statistics are per row (layer norm's dweight) or per
# column (batch norm's). Adjacent threads read adjacent columns: coalesced loads.
_DOT_XHAT_PARTIAL = r"""
extern "C" __global__ void ndl_dot_xhat_partial(
        const float* __restrict__ dy, const float* __restrict__ x,
        const float* __restrict__ mean, const float* __restrict__ rstd,
        float* __restrict__ partial, const long long rows, const long long c,
        const long long rows_per_chunk, const int stats_per_row) {
    const long long j = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    if (j >= c) return;
    const long long r0 = (long long)blockIdx.y * rows_per_chunk;
    const long long r1 = r0 + rows_per_chunk < rows ? r0 + rows_per_chunk : rows;
    float acc = 0.0f;
    for (long long r = r0; r < r1; ++r) {
        const long long s = stats_per_row ? r : j;
        acc += dy[r * c + j] * (x[r * c + j] - mean[s]) * rstd[s];
    }
    partial[(long long)blockIdx.y * c + j] = acc;
}
"""

# Grid-stride over the N*C entries of x: y = (x - mean[col]) * rstd[col] * w[col] + b[col].
_BATCH_NORM_FWD = r"""
extern "C" __global__ void ndl_batch_norm_fwd(
        const float* __restrict__ x, const float* __restrict__ mean,
        const float* __restrict__ rstd, const float* __restrict__ w,
        const float* __restrict__ b, float* __restrict__ y, const long long n,
        const long long c) {
    const long long size = n * c;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < size;
         i += (long long)gridDim.x * blockDim.x) {
        const long long j = i % c;
        y[i] = (x[i] - mean[j]) * rstd[j] * w[j] + b[j];
    }
}
"""

# Grid-stride: dx = w * rstd * (dy - (db + (x - mean) * rstd * dw) / N), per-column vectors.
_BATCH_NORM_BWD = r"""
extern "C" __global__ void ndl_batch_norm_bwd(
        const float* __restrict__ dy, const float* __restrict__ x,
        const float* __restrict__ mean, const float* __restrict__ rstd,
        const float* __restrict__ w, const float* __restrict__ db,
        const float* __restrict__ dw, float* __restrict__ dx, const long long n,
        const long long c) {
    const long long size = n * c;
    const float fn = (float)n;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < size;
         i += (long long)gridDim.x * blockDim.x) {
        const long long j = i % c;
        dx[i] = w[j] * rstd[j] * (dy[i] - (db[j] + (x[i] - mean[j]) * rstd[j] * dw[j]) / fn);
    }
}
"""

# Grid-stride, in place on w, m, v (Chainer's pattern: the state is read and written):
# g' = g + wd w; m = b1 m + (1 - b1) g'; v = b2 v + (1 - b2) g'^2;
# w = w keep - lr_t m / (sqrt(v inv_bc2) + eps), lr_t and inv_bc2 carrying the bias correction
# and keep = 1 - lr wd for decoupled (AdamW) decay.
_ADAM = r"""
extern "C" __global__ void ndl_adam(
        float* __restrict__ w, float* __restrict__ m, float* __restrict__ v,
        const float* __restrict__ g, const long long n, const float lr_t, const float b1,
        const float b2, const float inv_bc2, const float eps, const float wd,
        const float keep) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        const float wi = w[i];
        const float gg = g[i] + wd * wi;
        const float mi = b1 * m[i] + (1.0f - b1) * gg;
        const float vi = b2 * v[i] + (1.0f - b2) * gg * gg;
        m[i] = mi;
        v[i] = vi;
        w[i] = wi * keep - lr_t * mi / (sqrtf(vi * inv_bc2) + eps);
    }
}
"""

KERNELS: dict[str, str] = {
    "ndl_softmax_ce_fwd": _SOFTMAX_CE_FWD,
    "ndl_softmax_ce_bwd": _SOFTMAX_CE_BWD,
    "ndl_layer_norm_fwd": _LAYER_NORM_FWD,
    "ndl_layer_norm_bwd": _LAYER_NORM_BWD,
    "ndl_dot_xhat_partial": _DOT_XHAT_PARTIAL,
    "ndl_batch_norm_fwd": _BATCH_NORM_FWD,
    "ndl_batch_norm_bwd": _BATCH_NORM_BWD,
    "ndl_adam": _ADAM,
}
"""Entry point -> complete CUDA C source, for `cupy.RawKernel(source, name)` or NVRTC."""


# ---- generated kernels: needle.compile's fused elementwise groups ----------------------------
FUSED_NAME = "ndl_fused"


def _fused_params(params: str) -> tuple[list[str], list[str]]:
    """('float32 in0, float32 in1, float32 s0') -> (['in0', 'in1'], ['s0'])."""
    names = [p.split()[-1] for p in params.split(",") if p.strip()]
    inputs = [n for n in names if n.startswith("in")]
    scalars = [n for n in names if n.startswith("s")]
    if len(inputs) + len(scalars) != len(names):
        raise ValueError(f"fused kernel parameters {params!r}: expected in<i> and s<j> names")
    return inputs, scalars


def fused_elementwise_source(params: str, body: str, preamble: str = "") -> str:
    """The complete source of one fused elementwise group (fused_elementwise.py's
    `elementwise_kernel(params, body, name, preamble)` hook): `body` reads the float32
    values `in<i>` and `s<j>` and assigns `out`. A grid-stride loop over the n output
    elements; each input is read at its own element strides (broadcast axes have stride 0),
    all given in `meta` = shape (ndim) followed by each input's strides (ndim each), so one
    source serves every layout."""
    inputs, scalars = _fused_params(params)
    args = (["const long long n", "const int ndim", "const long long* __restrict__ meta"]
            + [f"const float* __restrict__ {x}_" for x in inputs]
            + [f"const float {s}" for s in scalars] + ["float* __restrict__ out_"])
    offsets = "".join(f"        long long o{k} = 0;\n" for k in range(len(inputs)))
    steps = "".join(f"            o{k} += c * meta[{k + 1} * ndim + d];\n"
                    for k in range(len(inputs)))
    loads = "".join(f"        const float {x} = {x}_[o{k}];\n" for k, x in enumerate(inputs))
    return (f"{preamble}\n"
            f'extern "C" __global__ void {FUSED_NAME}(\n        ' + ",\n        ".join(args)
            + ") {\n"
            "    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;\n"
            "         i += (long long)gridDim.x * blockDim.x) {\n"
            "        long long rem = i;\n"
            f"{offsets}"
            "        for (int d = ndim - 1; d >= 0; --d) {\n"
            "            const long long c = rem % meta[d];\n"
            "            rem /= meta[d];\n"
            f"{steps}"
            "        }\n"
            f"{loads}"
            "        float out;\n"
            f"        {body}\n"
            "        out_[i] = out;\n"
            "    }\n"
            "}\n")
