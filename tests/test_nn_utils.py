"""nn.utils: weight_norm (values and first-order gradients against torch, second order by
finite differences of the gradient), Module.requires_grad_ and load_matching_state_dict."""
import numpy as np
import pytest
import torch

import needle as ndl
import needle.nn as nn
from needle.autograd import gradients

RNG = np.random.RandomState(0)


def _linear64(n_in=4, n_out=3):
    layer = nn.Linear(n_in, n_out, dtype="float64")
    layer.weight = nn.Parameter(ndl.Tensor(RNG.randn(n_in, n_out)))
    layer.bias = nn.Parameter(ndl.Tensor(RNG.randn(1, n_out)))
    return layer


@pytest.mark.parametrize("dim,tdim", [(1, 0), (0, 1), (None, None)])
def test_weight_norm_linear_matches_torch(dim, tdim):
    layer = _linear64()
    w0, b0 = layer.weight.numpy().copy(), layer.bias.numpy().copy()
    nn.utils.weight_norm(layer, dim=dim)
    names = [n for n, _ in layer.named_parameters()]
    assert "weight" not in names and {"weight_g", "weight_v"} <= set(names)
    tl = torch.nn.Linear(4, 3).double()
    with torch.no_grad():
        tl.weight.copy_(torch.tensor(w0.T))
        tl.bias.copy_(torch.tensor(b0.reshape(-1)))
    tl = torch.nn.utils.weight_norm(tl, dim=tdim)  # dim=None: the whole tensor, as ours
    np.testing.assert_allclose(layer.weight_g.numpy().reshape(-1),
                               tl.weight_g.detach().numpy().reshape(-1), rtol=1e-12)
    x = RNG.randn(5, 4)
    # change g and v away from their initial values so that g != |v|
    g_new = layer.weight_g.numpy() * 1.7 + 0.1
    v_new = layer.weight_v.numpy() + 0.3 * RNG.randn(4, 3)
    layer.weight_g.data = ndl.Tensor(g_new)
    layer.weight_v.data = ndl.Tensor(v_new)
    with torch.no_grad():
        tl.weight_g.copy_(torch.tensor(g_new.T if tdim is not None else g_new.reshape(())))
        tl.weight_v.copy_(torch.tensor(v_new.T))
    X, tx = ndl.Tensor(x), torch.tensor(x, requires_grad=True)
    y, ty = layer(X), tl(tx)
    np.testing.assert_allclose(y.numpy(), ty.detach().numpy(), rtol=1e-12)
    (y * y).sum().backward()
    (ty * ty).sum().backward()
    np.testing.assert_allclose(X.grad.numpy(), tx.grad.numpy(), rtol=1e-10)
    tg = tl.weight_g.grad.numpy()
    np.testing.assert_allclose(layer.weight_g.grad.numpy().reshape(-1),
                               (tg.T if tdim is not None else tg).reshape(-1), rtol=1e-10)
    np.testing.assert_allclose(layer.weight_v.grad.numpy(), tl.weight_v.grad.numpy().T,
                               rtol=1e-10, atol=1e-12)


def test_weight_norm_second_derivatives_by_finite_differences():
    layer = nn.utils.weight_norm(_linear64(), dim=1)
    x = ndl.Tensor(RNG.randn(5, 4), requires_grad=False)
    u_g, u_v = RNG.randn(1, 3), RNG.randn(4, 3)

    def first(g, v):
        """<grad of the loss at (g, v), (u_g, u_v)>, as a graph."""
        layer.weight_g.data, layer.weight_v.data = ndl.Tensor(g), ndl.Tensor(v)
        out = layer(x)
        loss = (ndl.ops.tanh(out) * out).sum()
        gg, gv = gradients(loss, [layer.weight_g, layer.weight_v], create_graph=True)
        return (gg * ndl.Tensor(u_g, requires_grad=False)).sum() + (
            gv * ndl.Tensor(u_v, requires_grad=False)).sum()

    g0, v0 = layer.weight_g.numpy().copy() * 1.3, layer.weight_v.numpy().copy()
    s = first(g0, v0)
    hg, hv = gradients(s, [layer.weight_g, layer.weight_v])
    hg, hv = hg.numpy(), hv.numpy()
    eps = 1e-5
    for analytic, which, shape in ((hg, 0, g0.shape), (hv, 1, v0.shape)):
        numeric = np.zeros(shape)
        for idx in np.ndindex(*shape):
            args_p, args_m = [g0.copy(), v0.copy()], [g0.copy(), v0.copy()]
            args_p[which][idx] += eps
            args_m[which][idx] -= eps
            numeric[idx] = (first(*args_p).numpy() - first(*args_m).numpy()) / (2 * eps)
        np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-8)


def test_weight_norm_conv_remove_and_errors():
    conv = nn.Conv(2, 3, 3, dtype="float32")
    w0 = conv.weight.numpy().copy()
    x = ndl.Tensor(RNG.randn(1, 2, 5, 5).astype(np.float32), requires_grad=False)
    y0 = conv(x).numpy()
    nn.utils.weight_norm(conv, dim=3)
    assert conv.weight_g.shape == (1, 1, 1, 3)
    np.testing.assert_allclose(conv(x).numpy(), y0, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="already"):
        nn.utils.weight_norm(conv, dim=3)
    nn.utils.remove_weight_norm(conv)
    assert isinstance(conv.weight, nn.Parameter)
    np.testing.assert_allclose(conv.weight.numpy(), w0, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="weight_norm"):
        nn.utils.weight_norm(conv, name="nothing")
    with pytest.raises(ValueError, match="out of range"):
        nn.utils.weight_norm(conv, dim=4)


def test_requires_grad_freezes_parameters():
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    assert model.requires_grad_(False) is model
    assert not any(p.requires_grad for p in model.parameters())
    model.modules[2].requires_grad_(True)
    x = ndl.Tensor(RNG.randn(5, 4).astype(np.float32), requires_grad=False)
    model(x).sum().backward()
    assert model.modules[0].weight.grad is None
    assert model.modules[2].weight.grad is not None
    from needle import optim
    w_frozen = model.modules[0].weight.numpy().copy()
    optim.SGD(model.parameters(), lr=0.1).step()
    np.testing.assert_array_equal(model.modules[0].weight.numpy(), w_frozen)


def test_load_matching_state_dict_reports_what_was_skipped():
    src = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 10))
    dst = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 5))
    state = src.state_dict()
    state["extra.weight"] = np.zeros(3, dtype=np.float32)
    loaded, skipped = nn.utils.load_matching_state_dict(dst, state)
    assert loaded == ["modules.0.bias", "modules.0.weight"]
    assert "modules.2.weight: (8, 10) there, (8, 5) here" in skipped
    assert "extra.weight: not in this model" in skipped
    np.testing.assert_array_equal(dst.modules[0].weight.numpy(), src.modules[0].weight.numpy())
    assert not np.array_equal(dst.modules[2].bias.numpy()[:, :5],
                              src.modules[2].bias.numpy()[:, :5])
