"""needle.nn layers and the Module system against PyTorch and the course contract."""
import numpy as np
import pytest
import torch

import needle as ndl
import needle.nn as nn
from needle.models import MLPResNet, ResidualBlock


def _t(a, grad=True):
    return ndl.Tensor(np.asarray(a, dtype=np.float32), requires_grad=grad)


def test_linear_draw_order_shapes_and_torch():
    np.random.seed(3)
    lin = nn.Linear(4, 3)
    np.random.seed(3)
    bw = np.sqrt(2) * np.sqrt(3 / 4)
    w = np.random.rand(4, 3) * 2 * bw - bw
    bb = np.sqrt(2) * np.sqrt(3 / 3)
    b = np.random.rand(3, 1) * 2 * bb - bb
    np.testing.assert_allclose(lin.weight.numpy(), w, rtol=1e-5, atol=1e-6)
    assert lin.bias.shape == (1, 3)
    np.testing.assert_allclose(lin.bias.numpy(), b.reshape(1, 3), rtol=1e-5, atol=1e-6)
    assert [p.shape for p in lin.parameters()] == [(4, 3), (1, 3)]
    x = np.random.randn(2, 5, 4).astype(np.float32)
    X = _t(x)
    out = lin(X)
    tl = torch.nn.Linear(4, 3)
    tl.weight.data = torch.tensor(lin.weight.numpy().T)
    tl.bias.data = torch.tensor(lin.bias.numpy().ravel())
    tx = torch.tensor(x, requires_grad=True)
    tout = tl(tx)
    np.testing.assert_allclose(out.numpy(), tout.detach().numpy(), rtol=1e-5, atol=1e-6)
    out.sum().backward()
    tout.sum().backward()
    np.testing.assert_allclose(lin.weight.grad.numpy(), tl.weight.grad.numpy().T, rtol=1e-5)
    np.testing.assert_allclose(X.grad.numpy(), tx.grad.numpy(), rtol=1e-5)
    lin.bias.data = _t(np.arange(3))  # a 1-D bias broadcasts too
    np.testing.assert_allclose(lin(_t(x[0])).numpy(), x[0] @ w + np.arange(3), rtol=1e-5,
                               atol=1e-5)
    assert nn.Linear(4, 3, bias=False).parameters()[0].shape == (4, 3)


@pytest.mark.parametrize("args,count", [
    ((15, 2, nn.BatchNorm1d), 111), ((784, 100, nn.LayerNorm1d), 159452)])
def test_residual_block_parameter_counts(args, count):
    assert sum(np.prod(p.shape) for p in ResidualBlock(*args).parameters()) == count


@pytest.mark.parametrize("args,count", [
    ((150, 100, 5, 10, nn.LayerNorm1d), 68360), ((10, 100, 1, 100, nn.BatchNorm1d), 21650)])
def test_mlp_resnet_parameter_counts(args, count):
    assert sum(np.prod(p.shape) for p in MLPResNet(*args).parameters()) == count


def test_mlp_resnet_construction_order():
    np.random.seed(0)
    model = MLPResNet(6, 8, num_blocks=1, num_classes=3)
    np.random.seed(0)
    draws = [(6, 8), (8, 1), (8, 4), (4, 1), (4, 8), (8, 1), (8, 3), (3, 1)]
    expected = [np.random.rand(*s) for s in draws]
    linears = [p for p in model.parameters() if p.shape[0] != 1 or p.ndim == 2]
    weights = [p.numpy() for p in linears if p.ndim == 2]
    assert len(weights) == len(expected)
    for got, u in zip(weights, expected):
        fan_in = u.shape[0]
        b = np.sqrt(2) * np.sqrt(3 / fan_in)
        np.testing.assert_allclose(got.reshape(u.shape), u * 2 * b - b, rtol=1e-5, atol=1e-6)


def test_batchnorm1d_train_eval_vs_torch():
    x = np.random.RandomState(0).randn(16, 5).astype(np.float32) * 3 + 1
    bn = nn.BatchNorm1d(5, momentum=0.2)
    tbn = torch.nn.BatchNorm1d(5, momentum=0.2)
    X, tx = _t(x), torch.tensor(x, requires_grad=True)
    y, ty = bn(X), tbn(tx)
    np.testing.assert_allclose(y.numpy(), ty.detach().numpy(), rtol=1e-4, atol=1e-5)
    w = np.random.RandomState(1).randn(16, 5).astype(np.float32)
    (y * _t(w, False)).sum().backward()
    (ty * torch.tensor(w)).sum().backward()
    np.testing.assert_allclose(X.grad.numpy(), tx.grad.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(bn.weight.grad.numpy(), tbn.weight.grad.numpy(), rtol=1e-4)
    np.testing.assert_allclose(bn.running_mean.numpy(), tbn.running_mean.numpy(), rtol=1e-5)
    # course convention: the running variance uses the biased batch variance
    np.testing.assert_allclose(bn.running_var.numpy(), 0.8 + 0.2 * x.var(0), rtol=1e-5)
    assert bn.parameters() == [bn.weight, bn.bias]
    bn.eval()
    expect = (x - bn.running_mean.numpy()) / np.sqrt(bn.running_var.numpy() + 1e-5)
    np.testing.assert_allclose(bn(_t(x)).numpy(), expect, rtol=1e-4, atol=1e-5)


def test_layernorm1d_vs_torch():
    x = np.random.RandomState(2).randn(6, 7).astype(np.float32)
    ln, tln = nn.LayerNorm1d(7), torch.nn.LayerNorm(7)
    X, tx = _t(x), torch.tensor(x, requires_grad=True)
    y, ty = ln(X), tln(tx)
    np.testing.assert_allclose(y.numpy(), ty.detach().numpy(), rtol=1e-4, atol=1e-5)
    (y * y).sum().backward()
    (ty * ty).sum().backward()
    np.testing.assert_allclose(X.grad.numpy(), tx.grad.numpy(), rtol=1e-3, atol=1e-4)
    with pytest.raises(ValueError, match="LayerNorm1d"):
        ln(_t(np.ones((2, 3))))


def test_dropout_draw_convention_and_eval():
    x = np.random.RandomState(3).randn(4, 6).astype(np.float32)
    d = nn.Dropout(0.3)
    np.random.seed(11)
    y = d(_t(x)).numpy()
    np.random.seed(11)
    mask = np.random.rand(4, 6) <= 0.7
    np.testing.assert_allclose(y, x * mask / 0.7, rtol=1e-6)
    d.eval()
    state = np.random.get_state()[2]
    np.testing.assert_array_equal(d(_t(x)).numpy(), x)
    assert np.random.get_state()[2] == state  # no draw in eval mode


def test_softmax_loss_and_mse_vs_torch():
    z = np.random.RandomState(4).randn(8, 5).astype(np.float32) * 4
    y = np.array([0, 4, 2, 1, 3, 3, 0, 2])
    Z, tz = _t(z), torch.tensor(z, requires_grad=True)
    loss = nn.SoftmaxLoss()(Z, ndl.Tensor(y.astype(np.uint8), requires_grad=False))
    tloss = torch.nn.functional.cross_entropy(tz, torch.tensor(y))
    assert loss.numpy() == pytest.approx(tloss.item(), rel=1e-5)
    loss.backward()
    tloss.backward()
    np.testing.assert_allclose(Z.grad.numpy(), tz.grad.numpy(), rtol=1e-4, atol=1e-6)
    t = np.random.RandomState(5).randn(8, 5).astype(np.float32)
    mse = nn.MSELoss()(_t(z), _t(t, False))
    assert mse.numpy() == pytest.approx(float(np.mean((z - t) ** 2)), rel=1e-5)


@pytest.mark.parametrize("layer,tfn", [
    (nn.ReLU(), torch.relu), (nn.Tanh(), torch.tanh), (nn.Sigmoid(), torch.sigmoid),
    (nn.GELU(approximate="tanh"), lambda t: torch.nn.functional.gelu(t, approximate="tanh")),
    (nn.GELU(), torch.nn.functional.gelu),
    (nn.Identity(), lambda t: t)])
def test_activations_vs_torch(layer, tfn):
    x = np.random.RandomState(6).randn(5, 4).astype(np.float32)
    X, tx = _t(x), torch.tensor(x, requires_grad=True)
    y, ty = layer(X), tfn(tx)
    np.testing.assert_allclose(y.numpy(), ty.detach().numpy(), rtol=1e-4, atol=1e-5)
    (y * y).sum().backward()
    (ty * ty).sum().backward()
    np.testing.assert_allclose(X.grad.numpy(), tx.grad.numpy(), rtol=1e-3, atol=1e-4)


def test_flatten_sequential_residual():
    x = np.random.RandomState(7).randn(2, 3, 4).astype(np.float32)
    assert nn.Flatten()(_t(x)).shape == (2, 12)
    np.random.seed(0)
    seq = nn.Sequential(nn.Flatten(), nn.Linear(12, 12), nn.ReLU())
    assert len(seq.modules) == 3 and isinstance(seq.modules[1], nn.Linear)
    res = nn.Residual(seq)
    expected = seq(_t(x)).numpy() + x.reshape(2, 12)
    np.testing.assert_allclose(res(_t(x.reshape(2, 12))).numpy(), expected, rtol=1e-6)


class _Holder(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = [nn.Linear(2, 2), {"a": nn.BatchNorm1d(2)}]
        self.pair = (nn.Parameter(ndl.Tensor(np.zeros(3, np.float32))), nn.Dropout())


def test_module_walks_lists_dicts_tuples_and_modes():
    np.random.seed(0)
    m = _Holder()
    names = [n for n, _ in m.named_parameters()]
    assert names == ["layers.0.weight", "layers.0.bias", "layers.1.a.weight",
                     "layers.1.a.bias", "pair.0"]
    assert len(m.parameters()) == 5
    m.eval()
    assert not m.pair[1].training and not m.layers[1]["a"].training
    m.train()
    assert all(mod.training for mod in m.modules_list())
    state = m.state_dict()
    assert "layers.1.a.running_mean" in state
    with pytest.raises(KeyError, match="missing keys"):
        m.load_state_dict({k: v for k, v in state.items() if k != "pair.0"})
    state["pair.0"] = np.zeros(4, np.float32)
    with pytest.raises(ValueError, match="pair.0"):
        m.load_state_dict(state)


def test_exact_gelu_and_erf_float64_vs_torch():
    """erf and exact GELU, values and first and second derivatives, at float64 tolerance on
    points spanning both branches of erf's kernel (series below |x| = 2, fraction above)."""
    x = np.concatenate([np.linspace(-6.5, 6.5, 131), np.random.RandomState(8).randn(40)])
    for fn, tfn in ((ndl.ops.erf, torch.erf), (nn.GELU(), torch.nn.functional.gelu)):
        X, tx = ndl.Tensor(x), torch.tensor(x, requires_grad=True)
        y, ty = fn(X), tfn(tx)
        assert y.dtype == "float64"
        np.testing.assert_allclose(y.numpy(), ty.detach().numpy(), rtol=1e-13, atol=1e-15)
        (g,) = ndl.autograd.gradients(y.sum(), [X])
        (tg,) = torch.autograd.grad(ty.sum(), tx, create_graph=True)
        np.testing.assert_allclose(g.numpy(), tg.detach().numpy(), rtol=1e-12, atol=1e-15)
        (gg,) = ndl.autograd.gradients(g.sum(), [X])
        (tgg,) = torch.autograd.grad(tg.sum(), tx)
        np.testing.assert_allclose(gg.numpy(), tgg.numpy(), rtol=1e-11, atol=1e-14)
    with pytest.raises(ValueError, match="GELU"):
        nn.GELU(approximate="erf")
