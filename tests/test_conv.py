"""Conv, conv transpose, pooling, 2-D norms and activations against PyTorch (CPU, float64)."""
import numpy as np
import pytest
import torch

import needle as ndl
from needle import nn, ops
from needle.autograd import gradients
from needle.functional import gradcheck

RNG = np.random.default_rng(0)


def _t(a):
    return torch.tensor(a, requires_grad=True)


def _both_backward(make_out, inputs, gy):
    """Grads of sum(out * gy) for needle inputs, by the graph path and the NDArray fast path."""
    res = []
    for create_graph in (True, False):
        xs = [ndl.Tensor(a) for a in inputs]
        out = make_out(*xs)
        (out * ndl.Tensor(gy, requires_grad=False)).sum().backward(create_graph=create_graph)
        res.append((out.numpy(), [x.grad.numpy() for x in xs]))
    return res


CONV_CASES = [  # N, H, W, C_in, K, C_out, stride, padding
    (2, 7, 7, 3, 3, 4, 1, 1), (1, 8, 5, 1, 5, 2, 2, 3), (2, 9, 9, 2, 1, 3, 2, 3),
    (1, 11, 10, 3, 7, 2, 2, 0), (2, 6, 6, 2, 3, 2, 3, 2), (1, 5, 5, 1, 1, 1, 1, 0),
    (3, 13, 7, 4, 3, 5, 2, 1), (1, 14, 14, 2, 4, 3, 1, 2), (2, 10, 10, 3, 6, 2, 2, 3),
    (2, 5, 6, 2, 1, 2, 1, 2), (1, 6, 6, 3, 2, 2, 1, 3),
]


@pytest.mark.parametrize("n,h,w,c,k,co,s,p", CONV_CASES)
def test_conv_op_matches_torch(n, h, w, c, k, co, s, p):
    x = RNG.standard_normal((n, h, w, c))
    wt = RNG.standard_normal((k, k, c, co))
    tx, tw = _t(x.transpose(0, 3, 1, 2)), _t(wt.transpose(3, 2, 0, 1))
    ty = torch.nn.functional.conv2d(tx, tw, stride=s, padding=p)
    gy = RNG.standard_normal(ty.shape)
    (ty * torch.tensor(gy)).sum().backward()
    gy_nhwc = gy.transpose(0, 2, 3, 1)
    for out, (gx, gw) in _both_backward(
            lambda a, b: ops.conv(a, b, stride=s, padding=p), [x, wt], gy_nhwc):
        np.testing.assert_allclose(out, ty.detach().numpy().transpose(0, 2, 3, 1), atol=1e-10)
        np.testing.assert_allclose(gx, tx.grad.numpy().transpose(0, 2, 3, 1), atol=1e-10)
        np.testing.assert_allclose(gw, tw.grad.numpy().transpose(2, 3, 1, 0), atol=1e-10)


def _first_grads(f, arrays):
    xs = [ndl.Tensor(a) for a in arrays]
    return xs, gradients(f(*xs), xs, create_graph=True)


def _check_hvp(f, arrays, eps=1e-6, tol=1e-6):
    """Second order: reverse-over-reverse H u against central differences of the gradient."""
    rng = np.random.default_rng(1)
    us = [rng.standard_normal(a.shape) for a in arrays]
    xs, gs = _first_grads(f, arrays)
    dot = sum(((g * ndl.Tensor(u, requires_grad=False)).sum() for g, u in zip(gs, us)),
              start=ndl.Tensor(0.0, dtype="float64", requires_grad=False))
    hvp = [h.numpy() for h in gradients(dot, xs, create_graph=True)]
    _, gp = _first_grads(f, [a + eps * u for a, u in zip(arrays, us)])
    _, gm = _first_grads(f, [a - eps * u for a, u in zip(arrays, us)])
    for h, p_, m_ in zip(hvp, gp, gm):
        np.testing.assert_allclose(h, (p_.numpy() - m_.numpy()) / (2 * eps), atol=tol)


@pytest.mark.parametrize("s,p", [(1, 0), (1, 1), (2, 1), (2, 2)])
def test_conv_second_order(s, p):
    x = RNG.standard_normal((1, 5, 6, 2))
    w = RNG.standard_normal((3, 3, 2, 2))
    _check_hvp(lambda a, b: (ops.tanh(ops.conv(a, b, stride=s, padding=p)) ** 2).sum(), [x, w])


def test_conv_gradcheck_float64():
    x = RNG.standard_normal((2, 5, 4, 2))
    w = RNG.standard_normal((3, 3, 2, 3))
    assert gradcheck(lambda a, b: ops.conv(a, b, stride=2, padding=1), x, w)


def test_conv_errors_name_op_and_shapes():
    x = ndl.Tensor(np.zeros((2, 3, 8, 8), "float32"))  # NCHW given to NHWC op
    w = ndl.Tensor(np.zeros((3, 3, 3, 4), "float32"))
    with pytest.raises(ValueError, match=r"conv: .*\(2, 3, 8, 8\).*\(3, 3, 3, 4\).*NCHW"):
        ops.conv(x, w)
    with pytest.raises(ValueError, match=r"conv: input channels 5 .*weight C_in 3"):
        ops.conv(ndl.Tensor(np.zeros((1, 8, 8, 5), "float32")), w)
    layer = nn.Conv(3, 4, 3)
    with pytest.raises(ValueError, match=r"Conv: .*3 channels.*\(2, 8, 8, 3\)"):
        layer(ndl.Tensor(np.zeros((2, 8, 8, 3), "float32")))


@pytest.mark.parametrize("cin,cout,k,s,bias", [(3, 4, 3, 1, True), (1, 2, 5, 2, False),
                                               (2, 3, 4, 2, True), (4, 1, 1, 1, True)])
def test_conv_layer_matches_torch_conv2d(cin, cout, k, s, bias):
    np.random.seed(0)
    layer = nn.Conv(cin, cout, k, stride=s, bias=bias)
    assert layer.weight.shape == (k, k, cin, cout)
    bound_w = np.sqrt(2) * np.sqrt(3 / (cin * k * k))
    assert np.abs(layer.weight.numpy()).max() <= bound_w
    x = np.random.randn(2, cin, 9, 7).astype("float32")
    tl = torch.nn.Conv2d(cin, cout, k, stride=s, padding=k // 2, bias=bias)
    tl.weight.data = torch.tensor(layer.weight.numpy().transpose(3, 2, 0, 1))
    if bias:
        assert np.abs(layer.bias.numpy()).max() <= 1 / np.sqrt(cin * k * k)
        tl.bias.data = torch.tensor(layer.bias.numpy())
    X, tx = ndl.Tensor(x), _t(x)
    y, ty = layer(X), tl(tx)
    np.testing.assert_allclose(y.numpy(), ty.detach().numpy(), atol=1e-5)
    y.sum().backward()
    ty.sum().backward()
    np.testing.assert_allclose(X.grad.numpy(), tx.grad.numpy(), atol=1e-4)
    np.testing.assert_allclose(layer.weight.grad.numpy(),
                               tl.weight.grad.numpy().transpose(2, 3, 1, 0), atol=1e-3)


@pytest.mark.parametrize("cin,cout,k,s,p,op", [(2, 3, 3, 1, 0, 0), (3, 2, 3, 2, 1, 1),
                                               (1, 2, 4, 2, 1, 0), (2, 2, 5, 3, 2, 2),
                                               (2, 1, 1, 2, 0, 1), (1, 1, 3, 1, 2, 0)])
def test_conv_transpose_matches_torch(cin, cout, k, s, p, op):
    np.random.seed(1)
    layer = nn.ConvTranspose(cin, cout, k, stride=s, padding=p, output_padding=op,
                             dtype="float64")
    x = np.random.randn(2, cin, 5, 6)
    tl = torch.nn.ConvTranspose2d(cin, cout, k, stride=s, padding=p, output_padding=op,
                                  dtype=torch.float64)
    tl.weight.data = torch.tensor(layer.weight.numpy().transpose(2, 3, 0, 1))
    tl.bias.data = torch.tensor(layer.bias.numpy())
    ty = tl(_t(x))
    gy = np.random.randn(*ty.shape)
    tx = _t(x)
    ty = tl(tx)
    (ty * torch.tensor(gy)).sum().backward()
    for cg in (True, False):
        X = ndl.Tensor(x)
        layer.weight.grad = None
        y = layer(X)
        np.testing.assert_allclose(y.numpy(), ty.detach().numpy(), atol=1e-10)
        (y * ndl.Tensor(gy)).sum().backward(create_graph=cg)
        np.testing.assert_allclose(X.grad.numpy(), tx.grad.numpy(), atol=1e-10)
        np.testing.assert_allclose(layer.weight.grad.numpy(),
                                   tl.weight.grad.numpy().transpose(2, 3, 0, 1), atol=1e-10)
        np.testing.assert_allclose(layer.bias.grad.numpy(), tl.bias.grad.numpy(), atol=1e-10)


POOL_CASES = [(2, 1, 0), (3, 2, 1), (3, 1, 1), (2, 2, 1), (5, 2, 2), (1, 1, 0), (4, 3, 2)]


@pytest.mark.parametrize("k,s,p", POOL_CASES)
@pytest.mark.parametrize("kind", ["max", "avg"])
def test_pooling_matches_torch(kind, k, s, p):
    x = RNG.standard_normal((2, 3, 9, 8))
    if kind == "max":  # ties: a constant patch must send its gradient to one element
        x[0, 0, :4, :4] = 1.5
    tx = _t(x)
    tf = torch.nn.functional.max_pool2d if kind == "max" else torch.nn.functional.avg_pool2d
    ty = tf(tx, k, s, p)
    gy = RNG.standard_normal(ty.shape)
    (ty * torch.tensor(gy)).sum().backward()
    layer = (nn.MaxPool2d if kind == "max" else nn.AvgPool2d)(k, s, p)
    for out, (gx,) in _both_backward(layer, [x], gy):
        np.testing.assert_allclose(out, ty.detach().numpy(), atol=1e-12)
        np.testing.assert_allclose(gx, tx.grad.numpy(), atol=1e-12)


@pytest.mark.parametrize("kind", ["max", "avg"])
def test_pooling_second_order(kind):
    x = RNG.standard_normal((1, 2, 5, 5))
    f = ops.max_pool2d if kind == "max" else ops.avg_pool2d
    _check_hvp(lambda a: (ops.tanh(f(a, 3, 2, 1)) ** 2).sum(), [x])


def test_global_avg_pool_and_errors():
    x = RNG.standard_normal((2, 3, 5, 4))
    y = nn.AdaptiveAvgPool2d(1)(ndl.Tensor(x))
    np.testing.assert_allclose(y.numpy(), x.mean(axis=(2, 3), keepdims=True), atol=1e-12)
    with pytest.raises(ValueError, match="max_pool2d.*padding"):
        ops.max_pool2d(ndl.Tensor(x), 2, 2, 2)


def _norm_pair(kind, c):
    if kind == "bn":
        return nn.BatchNorm2d(c, dtype="float64"), torch.nn.BatchNorm2d(c, dtype=torch.float64)
    if kind == "gn":
        return (nn.GroupNorm(2, c, dtype="float64"),
                torch.nn.GroupNorm(2, c, dtype=torch.float64))
    if kind == "in":
        return nn.InstanceNorm2d(c), torch.nn.InstanceNorm2d(c)
    return (nn.InstanceNorm2d(c, affine=True, dtype="float64"),
            torch.nn.InstanceNorm2d(c, affine=True, dtype=torch.float64))


@pytest.mark.parametrize("kind", ["bn", "gn", "in", "in_affine"])
@pytest.mark.parametrize("n", [1, 3])
def test_norm_layers_match_torch_train_and_eval(kind, n):
    c = 4
    ours, theirs = _norm_pair(kind, c)
    if ours.weight is not None:
        w, b = RNG.standard_normal(c), RNG.standard_normal(c)
        ours.weight.data = ndl.Tensor(w)
        ours.bias.data = ndl.Tensor(b)
        theirs.weight.data, theirs.bias.data = torch.tensor(w), torch.tensor(b)
    for step in range(3):
        training = step < 2
        ours.train() if training else ours.eval()
        if kind == "bn" and not training:  # torch keeps the unbiased var; course the biased one
            theirs.running_var.data = torch.tensor(ours.running_var.numpy())
        theirs.train() if training else theirs.eval()
        x = RNG.standard_normal((n, c, 5, 3)) * 2 + 1
        if kind == "bn" and n == 1 and training:
            x = RNG.standard_normal((2, c, 5, 3))
        tx = _t(x)
        ty = theirs(tx)
        gy = RNG.standard_normal(ty.shape)
        (ty * torch.tensor(gy)).sum().backward()
        X = ndl.Tensor(x)
        y = ours(X)
        np.testing.assert_allclose(y.numpy(), ty.detach().numpy(), atol=1e-8)
        (y * ndl.Tensor(gy)).sum().backward()
        np.testing.assert_allclose(X.grad.numpy(), tx.grad.numpy(), atol=1e-8)
        if ours.weight is not None:
            np.testing.assert_allclose(ours.weight.grad.numpy(), theirs.weight.grad.numpy(),
                                       atol=1e-8)
            theirs.weight.grad = None
        if kind == "bn":  # torch stores the unbiased running var; course uses the biased one
            np.testing.assert_allclose(ours.running_mean.numpy(),
                                       theirs.running_mean.numpy(), atol=1e-10)


def test_batchnorm2d_running_var_is_biased():
    bn = nn.BatchNorm2d(3, dtype="float64")
    x = RNG.standard_normal((2, 3, 4, 5))
    bn(ndl.Tensor(x))
    want = 0.9 + 0.1 * x.var(axis=(0, 2, 3))
    np.testing.assert_allclose(bn.running_var.numpy(), want, atol=1e-12)


@pytest.mark.parametrize("name,tmod", [
    ("LeakyReLU", torch.nn.LeakyReLU(0.2)), ("ELU", torch.nn.ELU(0.7)),
    ("Softplus", torch.nn.Softplus(2.0)), ("Softsign", torch.nn.Softsign())])
def test_activations_match_torch(name, tmod):
    args = {"LeakyReLU": (0.2,), "ELU": (0.7,), "Softplus": (2.0,), "Softsign": ()}[name]
    layer = getattr(nn, name)(*args)
    x = RNG.standard_normal((4, 5)) * 5
    x[0, :3] = [30.0, -30.0, 0.3]
    tx = _t(x)
    ty = tmod(tx)
    ty.sum().backward()
    X = ndl.Tensor(x)
    y = layer(X)
    y.sum().backward()
    np.testing.assert_allclose(y.numpy(), ty.detach().numpy(), atol=1e-10)
    np.testing.assert_allclose(X.grad.numpy(), tx.grad.numpy(), atol=1e-10)


@pytest.mark.parametrize("k,stride", [(3, 1), (3, 2), (1, 1)])
def test_memory_efficient_conv_recomputes_im2col(k, stride):
    """`nn.Conv(memory_efficient=True)` keeps no im2col matrix for the backward (nor does
    any 1x1 stride-1 conv, whose matrix is its input) and gives the same gradients."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 3, 6, 6)).astype(np.float32)
    grads = []
    for efficient in (False, True):
        np.random.seed(0)
        conv = ndl.nn.Conv(3, 4, k, stride=stride, memory_efficient=efficient)
        xt = ndl.Tensor(x)
        out = conv(xt)
        saved = out.op._saved
        assert (saved is None) == (efficient or k == 1), (efficient, k)
        (out * out).sum().backward()
        grads.append([xt.grad.numpy(), conv.weight.grad.numpy(), conv.bias.grad.numpy()])
    for a, b in zip(*grads):
        np.testing.assert_array_equal(a, b)
