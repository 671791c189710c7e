"""Scaled dot-product attention as one fused op (PyTorch's `F.scaled_dot_product_attention`).

softmax(q k^T * scale + mask) v over the last axis, computed stably once. The gradient is
written by hand: with P the attention weights and dO the output gradient,
dV = P^T dO, dS = P * (dO V^T - rowsum(dO V^T * P)), dQ = dS K * scale, dK = dS^T Q * scale;
`gradient` builds it from ops (differentiable again), `gradient_nd` on native arrays.
"""
from __future__ import annotations

import math

import numpy as np

from ..autograd import NDArray, Tensor, TensorOp
from .ops_logarithmic import softmax
from .ops_mathematic import broadcast_to, matmul, summation, transpose


def _additive_mask(mask, is_causal: bool, L: int, S: int, device, dtype):
    """The mask as a native additive array (0 or -inf / the float mask), or None."""
    xp = device.xp
    out = None
    if mask is not None:
        m = mask.realize_cached_data() if isinstance(mask, Tensor) else mask
        m = m.native if isinstance(m, NDArray) else xp.asarray(m)
        if m.dtype == np.bool_:
            out = xp.where(m, 0.0, -np.inf).astype(dtype)  # True = may attend (PyTorch SDPA)
        else:
            out = m.astype(dtype)
    if is_causal:
        causal = xp.triu(xp.full((L, S), -np.inf, dtype=dtype), k=1)
        out = causal if out is None else out + causal
    return out


def _attention_probs(xp, q, k, mask, scale):
    """softmax(q k^T * scale + mask) over the last axis, on native arrays, stably; fully
    masked rows give zeros, not nan."""
    s = q @ xp.swapaxes(k, -1, -2)
    s *= scale
    if mask is not None:
        s += mask
    m = s.max(axis=-1, keepdims=True)
    m = xp.where(xp.isfinite(m), m, 0)
    s -= m
    xp.exp(s, out=s)
    total = s.sum(axis=-1, keepdims=True)
    s /= xp.where(total == 0, 1, total)
    return s


def _scores_grad_(xp, dp, p):
    """The softmax backward in place: dP -> dS = P * (dP - rowsum(dP * P))."""
    dp -= xp.einsum("...ij,...ij->...i", dp, p)[..., None]
    dp *= p
    return dp


class ScaledDotProductAttention(TensorOp):
    """q (..., L, E), k (..., S, E), v (..., S, Ev) -> (..., L, Ev).

    `mask` is a constant: boolean (True = may attend) or float (added to the scores), of a
    shape broadcastable to (..., L, S). `is_causal` masks positions j > i.
    """

    __slots__ = ("mask", "is_causal", "scale", "probs", "causal_only")

    def __init__(self, mask=None, is_causal: bool = False, scale=None, causal_only=False):
        self.mask = mask  # native additive array or None (set by the function below)
        self.is_causal = is_causal
        self.scale = scale
        # `mask` is exactly the causal mask of a square (L, L) problem: the fast paths work in
        # query blocks and skip the key blocks that every query of the block masks out
        self.causal_only = causal_only
        self.probs = None  # the forward's attention weights, kept for `gradient_nd`

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

    def _probs(self, q: NDArray, k: NDArray):
        return _attention_probs(q.device.xp, q.native, k.native, self.mask,
                                self._scale(q.shape))

    def _blocks(self, L: int):
        """Query row blocks (r0, r1) for the causal fast path, or None for one full block.

        Block b attends to keys [0, r1) only; with n blocks the score matmuls and the softmax
        cover (n + 1) / (2 n) of the full L x L matrix."""
        if not self.causal_only or L < 64:
            return None
        size = -(-L // min(8, L // 32))
        return [(r0, min(L, r0 + size)) for r0 in range(0, L, size)]

    def _causal_forward(self, q: NDArray, k: NDArray, v: NDArray, blocks):
        xp = q.device.xp
        qn, kn, vn = q.native, k.native, v.native
        scale = self._scale(q.shape)
        out = xp.empty(q.shape[:-1] + (v.shape[-1],), dtype=qn.dtype)
        probs = []
        for r0, r1 in blocks:
            s = _attention_probs(xp, qn[..., r0:r1, :], kn[..., :r1, :],
                                 self.mask[r0:r1, :r1], scale)
            out[..., r0:r1, :] = s @ vn[..., :r1, :]
            probs.append(s)
        return out, probs

    def _causal_backward(self, g, q: NDArray, k: NDArray, v: NDArray, blocks, probs):
        xp = q.device.xp
        qn, kn, vn = q.native, k.native, v.native
        scale = self._scale(q.shape)
        dq = xp.empty_like(qn)
        dk = xp.zeros_like(kn)
        dv = xp.zeros_like(vn)
        for (r0, r1), p in zip(blocks, probs):
            gb = g[..., r0:r1, :]
            dv[..., :r1, :] += xp.swapaxes(p, -1, -2) @ gb
            ds = _scores_grad_(xp, gb @ xp.swapaxes(vn[..., :r1, :], -1, -2), p)
            ds *= scale
            dq[..., r0:r1, :] = ds @ kn[..., :r1, :]
            dk[..., :r1, :] += xp.swapaxes(ds, -1, -2) @ qn[..., r0:r1, :]
        return dq, dk, dv

    def compute(self, q: NDArray, k: NDArray, v: NDArray):
        self._check(q, k, v)
        blocks = self._blocks(q.shape[-2])
        if blocks is not None:
            out, self.probs = self._causal_forward(q, k, v, blocks)
            return NDArray._wrap(out, q.device)
        # kept for the backward (B*H*L*S floats); a constant output (no grad) drops the op
        self.probs = p = self._probs(q, k)
        return NDArray._wrap(p @ v.native, q.device)

    def gradient_nd(self, g: NDArray, node):
        q, k, v = (x.cached_data for x in node.inputs)
        xp = q.device.xp
        blocks = self._blocks(q.shape[-2])
        if blocks is not None:
            probs = self.probs
            if probs is None:
                probs = self._causal_forward(q, k, v, blocks)[1]
            dq, dk, dv = self._causal_backward(g.native, q, k, v, blocks, probs)
            dev = q.device
            return NDArray._wrap(dq, dev), NDArray._wrap(dk, dev), NDArray._wrap(dv, dev)
        p = self.probs if self.probs is not None else self._probs(q, k)
        gn = g.native
        dv = xp.swapaxes(p, -1, -2) @ gn
        ds = _scores_grad_(xp, gn @ xp.swapaxes(v.native, -1, -2), p)
        scale = self._scale(q.shape)
        dq = ds @ k.native
        dq *= scale
        dk = xp.swapaxes(ds, -1, -2) @ q.native
        dk *= scale
        dev = q.device
        return NDArray._wrap(dq, dev), NDArray._wrap(dk, dev), NDArray._wrap(dv, dev)

    def gradient(self, out_grad, node):
        q, k, v = node.inputs
        scale = self._scale(q.shape)
        s = matmul(q, transpose(k)) * scale
        if self.mask is not None:
            data = q.realize_cached_data()
            mask = NDArray._wrap(data.device.xp.broadcast_to(self.mask, s.shape), data.device)
            s = s + Tensor.make_const(mask)
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
    additive = _additive_mask(mask, is_causal, L, S, data.device, data.dtype)
    causal_only = is_causal and mask is None and L == S
    return ScaledDotProductAttention(additive, is_causal, scale, causal_only)(q, k, v)
