"""needle.init: the course's draw conventions (one global-RNG draw per call) and the formulas."""
import math

import numpy as np
import pytest
import torch

import needle as ndl
from needle import init


def test_kaiming_uniform_golden():
    np.random.seed(42)
    w = init.kaiming_uniform(3, 5)
    assert w.shape == (3, 5) and w.dtype == "float32" and not w.requires_grad
    assert w.numpy()[0, 0] == pytest.approx(-0.3549, abs=1e-4)


@pytest.mark.parametrize("fn,kind,scale", [
    (lambda: init.xavier_uniform(4, 6, gain=2.0), "rand", 2.0 * math.sqrt(6 / 10)),
    (lambda: init.kaiming_uniform(4, 6), "rand", math.sqrt(2) * math.sqrt(3 / 4)),
    (lambda: init.xavier_normal(4, 6, gain=0.5), "randn", 0.5 * math.sqrt(2 / 10)),
    (lambda: init.kaiming_normal(4, 6), "randn", math.sqrt(2) / 2),
])
def test_one_draw_in_row_major_order(fn, kind, scale):
    np.random.seed(7)
    got = fn().numpy()
    np.random.seed(7)
    if kind == "rand":
        expected = np.random.rand(4, 6) * 2 * scale - scale
    else:
        expected = np.random.randn(4, 6) * scale
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
    # exactly one draw: the next number matches the replica's next number
    assert np.random.rand() == pytest.approx(_next_after(kind))


def _next_after(kind):
    np.random.seed(7)
    (np.random.rand if kind == "rand" else np.random.randn)(4, 6)
    return np.random.rand()


def test_kaiming_uniform_with_shape_uses_fans_for_bound():
    np.random.seed(0)
    w = init.kaiming_uniform(3 * 9, 8 * 9, shape=(3, 3, 3, 8)).numpy()
    bound = math.sqrt(2) * math.sqrt(3 / 27)
    np.random.seed(0)
    np.testing.assert_allclose(w, np.random.rand(3, 3, 3, 8) * 2 * bound - bound, rtol=1e-6,
                               atol=1e-6)


def test_constructors():
    np.random.seed(1)
    r = init.rand(2, 3, low=-2, high=4).numpy()
    np.random.seed(1)
    np.testing.assert_allclose(r, np.random.rand(2, 3) * 6 - 2, rtol=1e-6)
    assert init.ones(2, 2).numpy().sum() == 4 and init.zeros(3).numpy().sum() == 0
    np.testing.assert_array_equal(init.constant(2, c=3.5).numpy(), [3.5, 3.5])
    np.random.seed(2)
    b = init.randb(1000, p=0.3).numpy()
    np.random.seed(2)
    np.testing.assert_array_equal(b, np.random.rand(1000) <= 0.3)
    oh = init.one_hot(4, ndl.Tensor(np.array([3, 0, 1]), requires_grad=False)).numpy()
    np.testing.assert_array_equal(oh, np.eye(4, dtype=np.float32)[[3, 0, 1]])
    t = ndl.Tensor(np.ones((2, 3), np.float32))
    assert init.zeros_like(t).shape == (2, 3) and init.ones_like(t).numpy().sum() == 6


def test_manual_seed_and_rng_state_reproduce():
    init.manual_seed(5)
    a = init.randn(3).numpy()
    state = init.get_rng_state()
    b = init.randn(3).numpy()
    init.manual_seed(5)
    np.testing.assert_array_equal(init.randn(3).numpy(), a)
    init.set_rng_state(state)
    np.testing.assert_array_equal(init.randn(3).numpy(), b)


def test_unknown_nonlinearity():
    with pytest.raises(ValueError, match="nonlinearity"):
        init.kaiming_uniform(3, 4, nonlinearity="swish")


# ---- course dtypes (needle_api.md section 0, fact 2) ---------------------------------------------
def test_lists_and_scalars_take_numpy_dtype_on_cpu():
    for value in ([[1.0, 2.0]], 3.5, [1, 2, 3], [True, False], np.float32(2.0)):
        t = ndl.Tensor(value)
        assert t.dtype == np.asarray(value).dtype, value
        np.testing.assert_array_equal(t.numpy(), np.asarray(value))
    assert ndl.Tensor([1.0, 2.0], dtype="float32").dtype == "float32"
    assert ndl.Tensor(np.ones(3, dtype=np.float32)).dtype == "float32"
    # hw1-style finite differences at eps 1e-4 hold to 1e-6 only in float64
    x = ndl.Tensor([[0.3, -1.2], [2.0, 0.7]])
    y = (ndl.ops.exp(x) * x).sum()
    y.backward()
    eps = 1e-4
    xv = np.array([[0.3, -1.2], [2.0, 0.7]])
    num = np.zeros_like(xv)
    for idx in np.ndindex(*xv.shape):
        d = np.zeros_like(xv)
        d[idx] = eps
        num[idx] = ((np.exp(xv + d) * (xv + d)).sum() - (np.exp(xv - d) * (xv - d)).sum()) / (
            2 * eps)
    np.testing.assert_allclose(x.grad.numpy(), num, rtol=1e-6, atol=1e-6)


def test_needle_made_values_stay_float32():
    assert init.rand(2, 3).dtype == "float32"
    assert init.zeros(2).dtype == "float32" and init.ones(2, 2).dtype == "float32"
    assert ndl.nn.Linear(3, 2).weight.dtype == "float32"
    x32 = ndl.Tensor(np.ones((2, 3), dtype=np.float32))
    for y in (x32 + 1.5, x32 * 2, x32 / 3.0, x32 ** 2, 2.0 - x32):
        assert y.dtype == "float32"


@pytest.mark.parametrize("kind", ["matmul", "linear", "conv", "layer"])
def test_float64_input_through_float32_weights_promotes_like_torch(kind):
    rng = np.random.RandomState(0)
    if kind == "conv":
        x, w = rng.randn(2, 3, 5, 5), rng.randn(3, 3, 3, 4).astype(np.float32)
        X, W = ndl.Tensor(x), ndl.Tensor(w)
        y = ndl.nn.functional_conv.conv2d(X, W, padding=1)
        tx, tw = torch_tensor(x), torch_tensor(w.astype(np.float64))
        ty = torch.nn.functional.conv2d(tx, tw.permute(3, 2, 0, 1), padding=1)
    elif kind == "layer":
        np.random.seed(0)
        layer = ndl.nn.Linear(4, 3)
        x = rng.randn(5, 4)
        X, W = ndl.Tensor(x), layer.weight
        y = layer(X)
        tx, tw = torch_tensor(x), torch_tensor(layer.weight.numpy().astype(np.float64))
        ty = tx @ tw + torch.tensor(layer.bias.numpy().astype(np.float64))
    else:
        x, w = rng.randn(5, 4), rng.randn(4, 3).astype(np.float32)
        X, W = ndl.Tensor(x), ndl.Tensor(w)
        y = X @ W if kind == "matmul" else ndl.ops.linear(X, W)
        tx, tw = torch_tensor(x), torch_tensor(w.astype(np.float64))
        ty = tx @ tw
    assert y.dtype == "float64"
    np.testing.assert_allclose(y.numpy(), ty.detach().numpy(), rtol=1e-12, atol=1e-12)
    (y * y).sum().backward()
    (ty * ty).sum().backward()
    np.testing.assert_allclose(X.grad.numpy(), tx.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(W.grad.numpy(), tw.grad.numpy(), rtol=1e-10, atol=1e-10)


def torch_tensor(a):
    return torch.tensor(a, requires_grad=True)
