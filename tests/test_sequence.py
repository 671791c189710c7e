"""Recurrent layers and Embedding against PyTorch with copied weights (outputs, final states,
gradients of inputs and weights), on both backward paths."""
import numpy as np
import pytest
import torch

import needle as ndl
import needle.nn as nn

KINDS = {"rnn": (nn.RNN, torch.nn.RNN, "rnn_cells"),
         "lstm": (nn.LSTM, torch.nn.LSTM, "lstm_cells"),
         "gru": (nn.GRU, torch.nn.GRU, "gru_cells")}
CELLS = {"rnn": (nn.RNNCell, torch.nn.RNNCell), "lstm": (nn.LSTMCell, torch.nn.LSTMCell),
         "gru": (nn.GRUCell, torch.nn.GRUCell)}


def _t(a):
    return ndl.Tensor(np.ascontiguousarray(a.detach().numpy()))


def _copy(cell, tw_ih, tw_hh, tb_ih, tb_hh):
    """Replace the cell's attributes by plain Tensors (as the course tests do)."""
    cell.W_ih, cell.W_hh = _t(tw_ih.T), _t(tw_hh.T)
    if tb_ih is not None:
        cell.bias_ih, cell.bias_hh = _t(tb_ih), _t(tb_hh)


def _close(a, b, tol=1e-4):
    np.testing.assert_allclose(np.asarray(a), b.detach().numpy(), rtol=tol, atol=tol)


@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("bias", [True, False])
def test_cell_matches_torch(kind, with_state, bias):
    rng = np.random.default_rng(0)
    B, D, H = 3, 4, 5
    ours_cls, torch_cls = CELLS[kind]
    kw = {"nonlinearity": "relu"} if kind == "rnn" else {}
    cell, tcell = ours_cls(D, H, bias=bias, **kw), torch_cls(D, H, bias=bias, **kw)
    _copy(cell, tcell.weight_ih, tcell.weight_hh, tcell.bias_ih, tcell.bias_hh)
    x = rng.standard_normal((B, D)).astype(np.float32)
    X, tx = ndl.Tensor(x), torch.tensor(x, requires_grad=True)
    states = [rng.standard_normal((B, H)).astype(np.float32) for _ in range(2)]
    if kind == "lstm":
        h = (ndl.Tensor(states[0]), ndl.Tensor(states[1])) if with_state else None
        th = tuple(torch.tensor(s) for s in states) if with_state else None
        (h1, c1), (th1, tc1) = cell(X, h), tcell(tx, th)
        loss, tloss = (h1 * h1).sum() + c1.sum(), (th1 * th1).sum() + tc1.sum()
        _close(c1.numpy(), tc1)
    else:
        h = ndl.Tensor(states[0]) if with_state else None
        h1 = cell(X, h)
        th1 = tcell(tx, torch.tensor(states[0]) if with_state else None)
        loss, tloss = (h1 * h1).sum(), (th1 * th1).sum()
    _close(h1.numpy(), th1)
    loss.backward()
    tloss.backward()
    _close(X.grad.numpy(), tx.grad)
    _close(cell.W_ih.grad.numpy(), tcell.weight_ih.grad.T)
    _close(cell.W_hh.grad.numpy(), tcell.weight_hh.grad.T)
    if bias:
        _close(cell.bias_hh.grad.numpy(), tcell.bias_hh.grad)


@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("layers", [1, 2, 3])
@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("create_graph", [True, False])
def test_multilayer_matches_torch(kind, layers, with_state, create_graph):
    rng = np.random.default_rng(layers)
    T, B, D, H = 6, 3, 4, 5
    ours_cls, torch_cls, cells = KINDS[kind]
    model, tmodel = ours_cls(D, H, layers), torch_cls(D, H, layers)
    for k, cell in enumerate(getattr(model, cells)):
        _copy(cell, *(getattr(tmodel, f"{n}_l{k}") for n in
                      ("weight_ih", "weight_hh", "bias_ih", "bias_hh")))
    x = rng.standard_normal((T, B, D)).astype(np.float32)
    X, tx = ndl.Tensor(x), torch.tensor(x, requires_grad=True)
    s = [rng.standard_normal((layers, B, H)).astype(np.float32) for _ in range(2)]
    if kind == "lstm":
        h = (ndl.Tensor(s[0]), ndl.Tensor(s[1])) if with_state else None
        th = (torch.tensor(s[0]), torch.tensor(s[1])) if with_state else None
        (out, (hn, cn)), (tout, (thn, tcn)) = model(X, h), tmodel(tx, th)
        _close(cn.numpy(), tcn)
        loss = (out * out).sum() + hn.sum() + (cn * cn).sum()
        tloss = (tout * tout).sum() + thn.sum() + (tcn * tcn).sum()
    else:
        h = ndl.Tensor(s[0]) if with_state else None
        out, hn = model(X, h)
        tout, thn = tmodel(tx, torch.tensor(s[0]) if with_state else None)
        loss, tloss = (out * out).sum() + (hn * hn).sum(), (tout * tout).sum() + (thn * thn).sum()
    assert out.shape == (T, B, H) and hn.shape == (layers, B, H)
    _close(out.numpy(), tout)
    _close(hn.numpy(), thn)
    loss.backward(create_graph=create_graph)
    tloss.backward()
    _close(X.grad.numpy(), tx.grad)
    for k, cell in enumerate(getattr(model, cells)):
        _close(cell.W_ih.grad.numpy(), getattr(tmodel, f"weight_ih_l{k}").grad.T)
        _close(cell.W_hh.grad.numpy(), getattr(tmodel, f"weight_hh_l{k}").grad.T)
        _close(cell.bias_ih.grad.numpy(), getattr(tmodel, f"bias_ih_l{k}").grad)
        _close(cell.bias_hh.grad.numpy(), getattr(tmodel, f"bias_hh_l{k}").grad)


def _layer_case(kind, rng, T=3, B=2, H=3):
    """The fused layer op for `kind` and float64 inputs (xw, W_hh, ...)."""
    g = {"rnn": 1, "lstm": 4, "gru": 3}[kind]
    xw = rng.standard_normal((T, B, g * H))
    w = rng.standard_normal((H, g * H)) * 0.5
    h0 = rng.standard_normal((B, H))
    if kind == "rnn":
        return ndl.ops.rnn_layer, [xw, w, h0]
    if kind == "lstm":
        return ndl.ops.lstm_layer, [xw, w, h0, rng.standard_normal((B, H))]
    return ndl.ops.gru_layer, [xw, w, rng.standard_normal(g * H), h0]


def _layer_loss(out):
    """A scalar that uses every output of a layer op (hs, the final state(s))."""
    loss = (out[0] * out[0]).sum()
    for k in range(1, len(out)):
        loss = loss + (out[k] * out[k]).sum() * (0.5 * k)
    return loss


@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
def test_recurrent_layer_ops_gradcheck(kind):
    """The fused layer ops' gradients (both backward paths) against central differences."""
    f, arrays = _layer_case(kind, np.random.default_rng(1))
    args = [ndl.Tensor(a) for a in arrays]
    grads_graph = ndl.autograd.gradients(_layer_loss(f(*args)), list(args))
    _layer_loss(f(*args)).backward(create_graph=False)
    for k, (a, gg) in enumerate(zip(arrays, grads_graph)):
        num = np.zeros(a.shape)
        for i in range(a.size):
            vals = [x.copy() for x in arrays]
            vals[k].reshape(-1)[i] += 1e-6
            up = _layer_loss(f(*[ndl.Tensor(v) for v in vals])).numpy()
            vals[k].reshape(-1)[i] -= 2e-6
            down = _layer_loss(f(*[ndl.Tensor(v) for v in vals])).numpy()
            num.reshape(-1)[i] = (up - down) / 2e-6
        np.testing.assert_allclose(gg.numpy(), num, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(args[k].grad.numpy(), num, rtol=1e-5, atol=1e-6)


def _torch_layer(kind, xw, w, *rest):
    """The same layer in torch (autograd reference for second derivatives)."""
    h = rest[-1] if kind != "lstm" else rest[0]
    hid = w.shape[0]
    outs = []
    c = rest[1] if kind == "lstm" else None
    for t in range(xw.shape[0]):
        if kind == "rnn":
            h = torch.tanh(xw[t] + h @ w)
        elif kind == "lstm":
            a = xw[t] + h @ w
            i, f, g, o = (a[:, k * hid:(k + 1) * hid] for k in range(4))
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
        else:
            hh = h @ w + rest[0]
            r = torch.sigmoid(xw[t][:, :hid] + hh[:, :hid])
            z = torch.sigmoid(xw[t][:, hid:2 * hid] + hh[:, hid:2 * hid])
            n = torch.tanh(xw[t][:, 2 * hid:] + r * hh[:, 2 * hid:])
            h = n + z * h - z * n
        outs.append(h)
    return [torch.stack(outs, 0), h] + ([c] if kind == "lstm" else [])


@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("create_graph", [True, False])
def test_recurrent_layer_ops_second_order_match_torch(kind, create_graph):
    """d/d(inputs) of |d loss / d xw|^2 (the gradient graph backpropagated again) vs torch."""
    f, arrays = _layer_case(kind, np.random.default_rng(2))
    args = [ndl.Tensor(a) for a in arrays]
    (gx,) = ndl.autograd.gradients(_layer_loss(f(*args)), args[:1])
    (gx * gx).sum().backward(create_graph=create_graph)
    targs = [torch.tensor(a, requires_grad=True) for a in arrays]
    tout = _torch_layer(kind, *targs)
    tloss = (tout[0] * tout[0]).sum()
    for k in range(1, len(tout)):
        tloss = tloss + (tout[k] * tout[k]).sum() * (0.5 * k)
    (tgx,) = torch.autograd.grad(tloss, targs[:1], create_graph=True)
    _close(gx.numpy(), tgx, tol=1e-9)
    (tgx * tgx).sum().backward()
    for a, t in zip(args, targs):
        _close(a.grad.numpy(), t.grad, tol=1e-9)


@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
def test_recurrent_layer_default_backward_is_one_fused_node(kind):
    """The default (graph) backward of a layer op is one FusedBackward node, not a graph of
    per-step ops (that is what makes it cost what the fast path costs)."""
    counts = []
    for T in (2, 7):
        f, arrays = _layer_case(kind, np.random.default_rng(3), T=T)
        args = [ndl.Tensor(a) for a in arrays]
        (gx,) = ndl.autograd.gradients(_layer_loss(f(*args)), args[:1])
        kinds = [type(n.op).__name__ for n in ndl.autograd.find_topo_sort([gx])
                 if n.op is not None]
        assert kinds.count("FusedBackward") == 1
        counts.append(len(kinds))
    assert counts[0] == counts[1]  # no node per time step


def test_recurrent_shape_errors_name_the_layer():
    with pytest.raises(ValueError, match="LSTM"):
        nn.LSTM(4, 5)(ndl.Tensor(np.zeros((3, 2, 7), np.float32)))
    with pytest.raises(ValueError, match="GRU: initial state"):
        nn.GRU(4, 5, 2)(ndl.Tensor(np.zeros((3, 2, 4), np.float32)),
                        ndl.Tensor(np.zeros((1, 2, 5), np.float32)))


def test_init_ranges_and_parameters():
    np.random.seed(0)
    lstm = nn.LSTM(10, 16, 2)
    assert len(lstm.parameters()) == 8
    k = 1 / 4
    for p in lstm.parameters():
        assert np.abs(p.numpy()).max() <= k
    assert lstm.lstm_cells[1].W_ih.shape == (16, 64)


def test_embedding_gather_and_repeated_id_gradient():
    np.random.seed(0)
    emb = nn.Embedding(7, 3)
    ids = np.array([[1, 4], [1, 1], [6, 0]], dtype=np.float32)
    temb = torch.nn.Embedding(7, 3)
    temb.weight.data = torch.tensor(emb.weight.numpy())
    out = emb(ndl.Tensor(ids))
    tout = temb(torch.tensor(ids, dtype=torch.long))
    assert out.shape == (3, 2, 3)
    _close(out.numpy(), tout)
    w = np.random.randn(3, 2, 3).astype(np.float32)
    (out * ndl.Tensor(w)).sum().backward()
    (tout * torch.tensor(w)).sum().backward()
    _close(emb.weight.grad.numpy(), temb.weight.grad)
    assert np.allclose(emb.weight.grad.numpy()[1], w[0, 0] + w[1, 0] + w[1, 1])


def test_embedding_out_of_range_id_names_id_and_vocab():
    emb = nn.Embedding(5, 2)
    with pytest.raises(IndexError, match="id 9 .* size 5"):
        emb(ndl.Tensor(np.array([[1.0], [9.0]], dtype=np.float32)))
    with pytest.raises(IndexError, match="id -1"):
        emb(ndl.Tensor(np.array([[-1.0]], dtype=np.float32)))
