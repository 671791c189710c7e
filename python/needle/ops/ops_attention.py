"""Scaled dot-product attention as one fused op (PyTorch's `F.scaled_dot_product_attention`).

softmax(q k^T * scale + mask) v over the last axis, computed stably once
(`Device.attention_fwd`), keeping the attention weights P. With dO the output gradient,
dV = P^T dO, dS = P * (dO V^T - rowsum(dO V^T * P)) * scale, dQ = dS K, dK = dS^T Q:
`backward_arrays` runs that on the saved P (`Device.attention_bwd`), `gradient_composed`
builds it from ops (differentiable again; see `FusedOp`).

A causal mask over a square (L, L) problem with L >= 64 runs in query blocks: block b attends
to keys [0, r1) only, so the score matmuls and the softmax skip the key blocks its queries
all mask out.
"""
from __future__ import annotations

import math

from ..autograd import NDArray, Tensor
from .ops_fused import FusedOp
from .ops_logarithmic import softmax
from .ops_mathematic import broadcast_to, matmul, summation, transpose


def attention_mask(mask, is_causal: bool, L: int, S: int, device, dtype):
    """The additive mask (an NDArray broadcastable to (..., L, S): 0 or -inf, or the float
    mask itself), or None. A boolean `mask` marks the positions that may be attended (True,
    PyTorch's SDPA); `mask` may be a Tensor, an NDArray or a NumPy array."""
    out = None
    if mask is not None:
        m = mask.realize_cached_data() if isinstance(mask, Tensor) else mask
        if not isinstance(m, NDArray):
            m = NDArray(m, device=device)
        elif m.device != device:
            m = m.to(device)
        out = device.additive_mask(m, False, dtype) if m.dtype.kind == "b" else m.astype(dtype)
    if is_causal:
        causal = device.causal_mask(L, S, dtype)
        out = causal if out is None else out + causal
    return out


class ScaledDotProductAttention(FusedOp):
    """q (..., L, E), k (..., S, E), v (..., S, Ev) -> (..., L, Ev).

    `mask` is a constant additive NDArray (see `attention_mask`) of a shape broadcastable to
    (..., L, S), or None. `causal_only`: `mask` is exactly the causal mask of a square
    (L, L) problem (the query-block fast path).
    """

    __slots__ = ("mask", "scale", "causal_only", "probs")

    def __init__(self, mask=None, scale=None, causal_only=False):
        self.mask = mask
        self.scale = scale
        self.causal_only = causal_only
        self.probs = None  # the forward's attention weights, kept for backward_arrays

    def _check(self, q: NDArray, k: NDArray, v: NDArray):
        if q.ndim < 2 or k.ndim != q.ndim or v.ndim != q.ndim:
            raise ValueError(f"scaled_dot_product_attention: q, k, v must have the same rank "
                             f">= 2, got {q.shape}, {k.shape}, {v.shape}")
        if q.shape[-1] != k.shape[-1] or k.shape[-2] != v.shape[-2] or \
                q.shape[:-2] != k.shape[:-2] or k.shape[:-2] != v.shape[:-2]:
            raise ValueError(f"scaled_dot_product_attention: expected q (..., L, E), "
                             f"k (..., S, E), v (..., S, Ev), got {q.shape}, {k.shape}, "
                             f"{v.shape}")

    def _scale(self, q_shape) -> float:
        return self.scale if self.scale is not None else 1.0 / math.sqrt(q_shape[-1])

    def _blocks(self, L: int):
        """Query row blocks (r0, r1) for the causal fast path, or None for one full block.

        With n blocks the score matmuls and the softmax cover (n + 1) / (2 n) of the full
        L x L matrix."""
        if not self.causal_only or L < 64:
            return None
        size = -(-L // min(8, L // 32))
        return [(r0, min(L, r0 + size)) for r0 in range(0, L, size)]

    def compute(self, q: NDArray, k: NDArray, v: NDArray):
        self._check(q, k, v)
        # the weights (B*H*L*S floats) are kept for the backward; a constant output drops
        # the op and them
        out, *self.probs = q.device.attention_fwd(q, k, v, self.mask, self._scale(q.shape),
                                                 self._blocks(q.shape[-2]))
        return out

    def backward_arrays(self, g, inputs, needs):
        q, k, v = inputs
        if self.probs is None:  # not computed here (e.g. lazy mode): recompute
            self.compute(q, k, v)
        return q.device.attention_bwd(g, q, k, v, self.probs, self._scale(q.shape),
                                      self._blocks(q.shape[-2]))

    def gradient_composed(self, out_grad, q, k, v):
        scale = self._scale(q.shape)
        s = matmul(q, transpose(k)) * scale
        if self.mask is not None:
            s = s + Tensor.make_const(self.mask.broadcast_to(s.shape))
        p = softmax(s, -1)
        dv = matmul(transpose(p), out_grad)
        dp = matmul(out_grad, transpose(v))
        inner = broadcast_to(summation(dp * p, -1, keepdims=True), p.shape)
        ds = p * (dp - inner) * scale
        return matmul(ds, k), matmul(transpose(ds), q), dv


def scaled_dot_product_attention(q, k, v, mask=None, is_causal=False, scale=None):
    """softmax(q k^T / sqrt(E) + mask) v; PyTorch's F.scaled_dot_product_attention semantics.

    q (..., L, E), k (..., S, E), v (..., S, Ev) -> (..., L, Ev). A boolean `mask` marks the
    positions that may be attended (True); a float mask is added to the scores.
    """
    data = q.realize_cached_data()
    L, S = q.shape[-2], k.shape[-2]
    additive = attention_mask(mask, is_causal, L, S, data.device, data.dtype)
    causal_only = is_causal and mask is None and L == S
    return ScaledDotProductAttention(additive, scale, causal_only)(q, k, v)
