"""needle.init: the course's draw conventions (one global-RNG draw per call) and the formulas."""
import math

import numpy as np
import pytest

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
