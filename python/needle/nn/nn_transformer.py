"""Attention layers after PyTorch: MultiheadAttention, TransformerEncoderLayer, positional
embedding and a decoder-only (causal) Transformer stack.

Layouts differ from PyTorch only in weights: needle stores (in, out), so `in_proj_weight` is
(E, 3E) with column blocks q, k, v (PyTorch's (3E, E) transposed) and `out_proj` is a needle
`Linear` (weight (E, E) = PyTorch's transposed, bias (1, E)).
"""
from __future__ import annotations

import math
from typing import Optional

from .. import init, ops
from ..autograd import NDArray, Tensor
from ..ops.ops_attention import attention_mask
from . import functional as F
from .nn_basic import Dropout, LayerNorm1d, Linear, Module, Parameter


def _additive(mask, device, dtype):
    """A MultiheadAttention mask (Tensor, NDArray or NumPy array; boolean True = may NOT
    attend, or float) as an additive NDArray, or None."""
    if mask is None:
        return None
    m = mask.realize_cached_data() if isinstance(mask, Tensor) else mask
    if not isinstance(m, NDArray):
        m = NDArray(m, device=device)
    elif m.device != device:
        m = m.to(device)
    return device.additive_mask(m, True, dtype) if m.dtype.kind == "b" else m.astype(dtype)


class MultiheadAttention(Module):
    """PyTorch's `nn.MultiheadAttention(embed_dim, num_heads, dropout, bias, batch_first)`.

    `forward(query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
    average_attn_weights=True, is_causal=False)` -> (output, weights or None). Inputs are
    (L, N, E), or (N, L, E) with batch_first. As in PyTorch, a boolean `attn_mask` /
    `key_padding_mask` marks positions that may NOT be attended (True); float masks are added.
    """

    def __init__(self, embed_dim, num_heads, dropout=0.0, bias=True, batch_first=False,
                 device=None, dtype="float32"):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"MultiheadAttention: embed_dim {embed_dim} is not divisible by "
                             f"num_heads {num_heads}")
        self.embed_dim, self.num_heads = embed_dim, num_heads
        self.head_dim = embed_dim // num_heads
        self.dropout, self.batch_first = dropout, batch_first
        self.in_proj_weight = Parameter(init.xavier_uniform(embed_dim, 3 * embed_dim,
                                                            device=device, dtype=dtype))
        self.in_proj_bias = (Parameter(init.zeros(3 * embed_dim, device=device, dtype=dtype))
                             if bias else None)
        self.out_proj = Linear(embed_dim, embed_dim, bias=bias, device=device, dtype=dtype)
        if bias:
            self.out_proj.bias = Parameter(init.zeros(1, embed_dim, device=device, dtype=dtype))

    def _project(self, x: Tensor, block: Optional[int]) -> Tensor:
        """x (N, L, E) times the q/k/v block(s) of in_proj (all three when block is None)."""
        E = self.embed_dim
        w, b = self.in_proj_weight, self.in_proj_bias
        if block is not None:
            w = w[:, block * E:(block + 1) * E]
            b = None if b is None else b[block * E:(block + 1) * E]
        return F.linear(x, w, b)

    def _heads(self, x: Tensor) -> Tensor:  # (N, L, E) -> (N, h, L, d)
        N, L, _ = x.shape
        return ops.permute(ops.reshape(x, (N, L, self.num_heads, self.head_dim)), (0, 2, 1, 3))

    def _mask(self, attn_mask, key_padding_mask, is_causal, N, L, S, data):
        """The additive mask (an NDArray broadcastable to (N, heads, L, S)) or None."""
        device, dtype = data.device, data.dtype
        out = _additive(attn_mask, device, dtype)
        if out is not None and out.ndim == 3:  # (N * heads, L, S)
            out = out.reshape((N, self.num_heads, L, S))
        kp = _additive(key_padding_mask, device, dtype)
        if kp is not None:
            kp = kp.reshape((N, 1, 1, S))
            out = kp if out is None else out + kp
        if is_causal and attn_mask is None:
            out = attention_mask(out, True, L, S, device, dtype)
        return out

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True,
                attn_mask=None, average_attn_weights=True, is_causal=False):
        if query.ndim != 3 or query.shape[-1] != self.embed_dim:
            raise ValueError(f"MultiheadAttention: expected query (L, N, {self.embed_dim}) "
                             f"(or (N, L, E) with batch_first), got {query.shape}")
        self_attn = query is key and key is value
        if not self.batch_first:
            query = ops.permute(query, (1, 0, 2))
            key = query if self_attn else ops.permute(key, (1, 0, 2))
            value = query if self_attn else ops.permute(value, (1, 0, 2))
        N, L, E = query.shape
        S = key.shape[1]
        if self_attn:
            qkv = self._project(query, None)  # one matmul for q, k and v
            q, k, v = (qkv[:, :, i * E:(i + 1) * E] for i in range(3))
        else:
            q, k, v = (self._project(x, i) for i, x in enumerate((query, key, value)))
        q, k, v = self._heads(q), self._heads(k), self._heads(v)
        mask = self._mask(attn_mask, key_padding_mask, is_causal, N, L, S,
                          q.realize_cached_data())
        if self.training and self.dropout > 0:
            scores = ops.matmul(q, ops.transpose(k)) * (1.0 / math.sqrt(self.head_dim))
            if mask is not None:
                scores = scores + Tensor.make_const(mask.broadcast_to(scores.shape))
            probs = F.dropout(ops.softmax(scores, -1), self.dropout, True)
            out = ops.matmul(probs, v)
        elif is_causal and attn_mask is None and key_padding_mask is None and L == S:
            out = ops.scaled_dot_product_attention(q, k, v, is_causal=True)  # block fast path
        else:
            out = ops.scaled_dot_product_attention(q, k, v, mask=mask)
        out = ops.reshape(ops.permute(out, (0, 2, 1, 3)), (N, L, E))
        out = self.out_proj(out)
        if not self.batch_first:
            out = ops.permute(out, (1, 0, 2))
        weights = self._weights(q, k, mask, average_attn_weights) if need_weights else None
        return out, weights

    def _weights(self, q, k, mask, average):
        """The attention weights (N, L, S) (or (N, h, L, S)) as a constant Tensor."""
        qd = q.realize_cached_data()
        p = qd.device.attention_probs(qd, k.realize_cached_data(), mask,
                                      1.0 / math.sqrt(self.head_dim))
        return Tensor.make_const(p.mean(1) if average else p)


class TransformerEncoderLayer(Module):
    """PyTorch's `nn.TransformerEncoderLayer(d_model, nhead, dim_feedforward, dropout,
    activation, layer_norm_eps, batch_first, norm_first, bias)`.

    Post-norm: x = norm1(x + sa(x)); x = norm2(x + ff(x)). Pre-norm (norm_first): x = x +
    sa(norm1(x)); x = x + ff(norm2(x)). 'gelu' is the tanh approximation (PyTorch: erf).
    """

    def __init__(self, d_model, nhead, dim_feedforward=2048, dropout=0.1, activation="relu",
                 layer_norm_eps=1e-5, batch_first=False, norm_first=False, bias=True,
                 device=None, dtype="float32"):
        super().__init__()
        kw = dict(device=device, dtype=dtype)
        self.self_attn = MultiheadAttention(d_model, nhead, dropout, bias, batch_first, **kw)
        self.linear1 = Linear(d_model, dim_feedforward, bias=bias, **kw)
        self.dropout = Dropout(dropout)
        self.linear2 = Linear(dim_feedforward, d_model, bias=bias, **kw)
        self.norm_first = norm_first
        self.norm1 = LayerNorm1d(d_model, eps=layer_norm_eps, **kw)
        self.norm2 = LayerNorm1d(d_model, eps=layer_norm_eps, **kw)
        self.dropout1 = Dropout(dropout)
        self.dropout2 = Dropout(dropout)
        if activation not in ("relu", "gelu") and not callable(activation):
            raise ValueError(f"TransformerEncoderLayer: activation must be 'relu', 'gelu' or "
                             f"a callable, got {activation!r}")
        self.activation = activation

    def _act(self, x):
        if self.activation == "relu":
            return ops.relu(x)
        if self.activation == "gelu":
            return F.gelu(x, "tanh")
        return self.activation(x)

    def _sa(self, x, mask, padding, is_causal):
        out, _ = self.self_attn(x, x, x, key_padding_mask=padding, need_weights=False,
                                attn_mask=mask, is_causal=is_causal)
        return self.dropout1(out)

    def _ff(self, x):
        return self.dropout2(self.linear2(self.dropout(self._act(self.linear1(x)))))

    def forward(self, src, src_mask=None, src_key_padding_mask=None, is_causal=False):
        x = src
        if self.norm_first:
            x = x + self._sa(self.norm1(x), src_mask, src_key_padding_mask, is_causal)
            return x + self._ff(self.norm2(x))
        x = self.norm1(x + self._sa(x, src_mask, src_key_padding_mask, is_causal))
        return self.norm2(x + self._ff(x))


class PositionalEmbedding(Module):
    """Learned positions: adds `weight[t]` (max_len, dim) ~ N(0, 0.02^2) to (T, B, D) input
    (or (B, T, D) with batch_first)."""

    def __init__(self, max_len, dim, batch_first=False, device=None, dtype="float32"):
        super().__init__()
        self.max_len, self.dim, self.batch_first = max_len, dim, batch_first
        self.weight = Parameter(init.randn(max_len, dim, std=0.02, device=device, dtype=dtype))

    def forward(self, x: Tensor) -> Tensor:
        T = x.shape[1] if self.batch_first else x.shape[0]
        if T > self.max_len:
            raise ValueError(f"PositionalEmbedding: sequence of length {T} exceeds max_len "
                             f"{self.max_len}")
        pos = self.weight[:T]
        pos = ops.reshape(pos, (1, T, self.dim) if self.batch_first else (T, 1, self.dim))
        return x + ops.broadcast_to(pos, x.shape)


class Transformer(Module):
    """Decoder-only stack: positions, `num_layers` pre-norm causal encoder layers, final norm.

    `forward(x (T, B, D), h=None)` -> (y (T, B, D), None) (or (B, T, D) with batch_first);
    D = embedding_size, feed-forward width = hidden_size.
    """

    def __init__(self, embedding_size, hidden_size, num_layers, num_head=8, dropout=0.0,
                 causal=True, device=None, dtype="float32", batch_first=False,
                 sequence_len=2048):
        super().__init__()
        kw = dict(device=device, dtype=dtype)
        self.causal, self.batch_first = causal, batch_first
        self.pos = PositionalEmbedding(sequence_len, embedding_size, batch_first, **kw)
        self.layers = [TransformerEncoderLayer(embedding_size, num_head, hidden_size, dropout,
                                               "relu", batch_first=batch_first,
                                               norm_first=True, **kw)
                       for _ in range(num_layers)]
        self.norm = LayerNorm1d(embedding_size, **kw)

    def forward(self, x: Tensor, h=None):
        x = self.pos(x)
        for layer in self.layers:
            x = layer(x, is_causal=self.causal)
        return self.norm(x), None
