"""Attention op, MultiheadAttention and TransformerEncoderLayer against PyTorch."""
import numpy as np
import pytest
import torch
import torch.nn.functional as TF

import needle as ndl
import needle.nn as nn
from needle.functional import gradcheck


def _close(a, b, tol=1e-4):
    np.testing.assert_allclose(np.asarray(a), b.detach().numpy(), rtol=tol, atol=tol)


def _t(a):
    return ndl.Tensor(np.ascontiguousarray(a.detach().numpy()))


@pytest.mark.parametrize("is_causal", [False, True])
@pytest.mark.parametrize("create_graph", [True, False])
@pytest.mark.parametrize("shape", [((2, 3, 5, 4), (2, 3, 5, 4)), ((2, 4, 3), (2, 6, 3)),
                                   # causal L >= 64: the query-block path (uneven last block)
                                   ((2, 2, 100, 8), (2, 2, 100, 8)), ((1, 64, 4), (1, 64, 4))])
def test_sdpa_matches_torch(is_causal, create_graph, shape):
    rng = np.random.default_rng(0)
    qs, ks = shape
    q = rng.standard_normal(qs).astype(np.float32)
    k = rng.standard_normal(ks).astype(np.float32)
    v = rng.standard_normal(ks[:-1] + (2,)).astype(np.float32)
    Q, K, V = (ndl.Tensor(a) for a in (q, k, v))
    tq, tk, tv = (torch.tensor(a, requires_grad=True) for a in (q, k, v))
    out = ndl.scaled_dot_product_attention(Q, K, V, is_causal=is_causal)
    tout = TF.scaled_dot_product_attention(tq, tk, tv, is_causal=is_causal)
    _close(out.numpy(), tout)
    w = rng.standard_normal(tout.shape).astype(np.float32)
    (out * ndl.Tensor(w)).sum().backward(create_graph=create_graph)
    (tout * torch.tensor(w)).sum().backward()
    for a, b in ((Q, tq), (K, tk), (V, tv)):
        _close(a.grad.numpy(), b.grad)


@pytest.mark.parametrize("kind", ["bool", "float"])
def test_sdpa_masks_match_torch(kind):
    rng = np.random.default_rng(1)
    q, k, v = (rng.standard_normal((2, 4, 3)).astype(np.float32) for _ in range(3))
    allowed = rng.random((4, 4)) > 0.3
    allowed[:, 0] = True
    mask = allowed if kind == "bool" else rng.standard_normal((4, 4)).astype(np.float32)
    Q, K, V = (ndl.Tensor(a) for a in (q, k, v))
    tq, tk, tv = (torch.tensor(a, requires_grad=True) for a in (q, k, v))
    out = ndl.scaled_dot_product_attention(Q, K, V, mask=mask)
    tout = TF.scaled_dot_product_attention(tq, tk, tv, attn_mask=torch.tensor(mask))
    _close(out.numpy(), tout)
    out.sum().backward(create_graph=False)
    tout.sum().backward()
    _close(Q.grad.numpy(), tq.grad)
    _close(K.grad.numpy(), tk.grad)


def test_sdpa_is_stable_and_second_order():
    q = ndl.Tensor(np.full((1, 2, 2), 1e4, np.float32))
    assert np.isfinite(ndl.scaled_dot_product_attention(q, q, q).numpy()).all()
    rng = np.random.default_rng(2)
    args = [ndl.Tensor(rng.standard_normal((2, 3, 2))) for _ in range(3)]
    assert gradcheck(
        lambda a, b, c: ndl.scaled_dot_product_attention(a, b, c, is_causal=True), *args)


def test_sdpa_shape_error():
    a = ndl.Tensor(np.zeros((2, 3, 4), np.float32))
    b = ndl.Tensor(np.zeros((2, 3, 5), np.float32))
    with pytest.raises(ValueError, match="scaled_dot_product_attention"):
        ndl.scaled_dot_product_attention(a, b, b)


def _copy_mha(mha, tmha):
    mha.in_proj_weight = _t(tmha.in_proj_weight.T)
    mha.in_proj_bias = _t(tmha.in_proj_bias)
    mha.out_proj.weight = _t(tmha.out_proj.weight.T)
    mha.out_proj.bias = _t(tmha.out_proj.bias)


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("cross", [False, True])
def test_multihead_attention_matches_torch(batch_first, cross):
    torch.manual_seed(0)
    rng = np.random.default_rng(3)
    E, h, L, S, N = 8, 2, 4, 5, 3
    mha = nn.MultiheadAttention(E, h, batch_first=batch_first)
    tmha = torch.nn.MultiheadAttention(E, h, batch_first=batch_first)
    _copy_mha(mha, tmha)

    def shape(n):
        return (N, n, E) if batch_first else (n, N, E)

    q = rng.standard_normal(shape(L)).astype(np.float32)
    kv = rng.standard_normal(shape(S)).astype(np.float32) if cross else q
    Q = ndl.Tensor(q)
    KV = ndl.Tensor(kv) if cross else Q
    tq = torch.tensor(q, requires_grad=True)
    tkv = torch.tensor(kv, requires_grad=True) if cross else tq
    pad = np.zeros((N, S if cross else L), bool)
    pad[0, -1] = True
    out, wts = mha(Q, KV, KV, key_padding_mask=pad)
    tout, twts = tmha(tq, tkv, tkv, key_padding_mask=torch.tensor(pad))
    _close(out.numpy(), tout)
    _close(wts.numpy(), twts)
    (out * out).sum().backward()
    (tout * tout).sum().backward()
    _close(Q.grad.numpy(), tq.grad)
    _close(mha.in_proj_weight.grad.numpy(), tmha.in_proj_weight.grad.T)
    _close(mha.out_proj.weight.grad.numpy(), tmha.out_proj.weight.grad.T)


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("causal", [False, True])
def test_transformer_encoder_layer_matches_torch(norm_first, batch_first, causal):
    torch.manual_seed(1)
    rng = np.random.default_rng(4)
    E, h, F, N = 8, 2, 16, 3
    L = 70 if causal else 5  # causal at L >= 64 runs attention's query-block fast path
    layer = nn.TransformerEncoderLayer(E, h, F, 0.0, batch_first=batch_first,
                                       norm_first=norm_first)
    tlayer = torch.nn.TransformerEncoderLayer(E, h, F, 0.0, batch_first=batch_first,
                                              norm_first=norm_first)
    _copy_mha(layer.self_attn, tlayer.self_attn)
    for name in ("linear1", "linear2"):
        getattr(layer, name).weight = _t(getattr(tlayer, name).weight.T)
        getattr(layer, name).bias = _t(getattr(tlayer, name).bias)
    x = rng.standard_normal((N, L, E) if batch_first else (L, N, E)).astype(np.float32)
    X, tx = ndl.Tensor(x), torch.tensor(x, requires_grad=True)
    mask = torch.nn.Transformer.generate_square_subsequent_mask(L) if causal else None
    out = layer(X, is_causal=causal)
    tout = tlayer(tx, src_mask=mask, is_causal=causal)
    _close(out.numpy(), tout)
    (out * out).sum().backward(create_graph=False)
    (tout * tout).sum().backward()
    _close(X.grad.numpy(), tx.grad)
    _close(layer.linear1.weight.grad.numpy(), tlayer.linear1.weight.grad.T)
    _close(layer.norm1.weight.grad.numpy(), tlayer.norm1.weight.grad)


def test_layer_norm_last_axis_any_rank():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 3, 4, 6)).astype(np.float32)
    out = nn.LayerNorm1d(6)(ndl.Tensor(x))
    _close(out.numpy(), TF.layer_norm(torch.tensor(x), (6,)))


def test_positional_embedding_and_transformer_shapes():
    np.random.seed(0)
    model = nn.Transformer(8, 16, 2, num_head=2, sequence_len=10)
    y, h = model(ndl.Tensor(np.random.randn(6, 3, 8).astype(np.float32)))
    assert y.shape == (6, 3, 8) and h is None
    with pytest.raises(ValueError, match="max_len"):
        model(ndl.Tensor(np.zeros((11, 1, 8), np.float32)))


def test_transformer_is_causal():
    """Changing a later token leaves earlier outputs unchanged."""
    np.random.seed(0)
    model = nn.Transformer(8, 16, 2, num_head=2, sequence_len=10)
    x = np.random.randn(5, 2, 8).astype(np.float32)
    y1, _ = model(ndl.Tensor(x))
    x[3:] += np.random.randn(2, 2, 8).astype(np.float32)
    y2, _ = model(ndl.Tensor(x))
    np.testing.assert_allclose(y1.numpy()[:3], y2.numpy()[:3], atol=1e-6)
    assert not np.allclose(y1.numpy()[3:], y2.numpy()[3:])
