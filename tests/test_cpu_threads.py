"""The CPU device's row-parallel kernels give the one-thread kernels' numbers."""
import numpy as np
import pytest

import needle as ndl
from needle.backend_ndarray import cpu


@pytest.fixture
def threads():
    dev = cpu()
    saved = dev.get_num_threads()

    def use(n):
        dev.set_num_threads(n)

    yield use
    dev.set_num_threads(saved)


def _nd(a):
    return ndl.NDArray(a, device=cpu())


def _both(threads, fn):
    threads(1)
    one = fn()
    threads(3)  # three blocks: uneven row counts per block
    many = fn()
    return one, many


def test_softmax_cross_entropy_rows_in_blocks(threads):
    rng = np.random.default_rng(0)
    z = _nd((rng.standard_normal((301, 1000)) * 3).astype(np.float32))
    y = _nd(rng.integers(0, 1000, 301).astype(np.int64))
    dev = cpu()
    one, many = _both(threads, lambda: dev.softmax_cross_entropy_fwd(z, y))
    np.testing.assert_array_equal(one[0].numpy(), many[0].numpy())
    np.testing.assert_array_equal(one[1].numpy(), many[1].numpy())
    g1, g2 = _both(threads, lambda: dev.softmax_cross_entropy_bwd(z, y, one[1], 0.5))
    np.testing.assert_array_equal(g1.numpy(), g2.numpy())
    # and against the definition
    zn, yn = z.numpy().astype(np.float64), y.numpy()
    p = np.exp(zn - zn.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    np.testing.assert_allclose(one[0].numpy(), -np.log(p[np.arange(301), yn]).mean(),
                               rtol=1e-5)
    p[np.arange(301), yn] -= 1
    np.testing.assert_allclose(g1.numpy(), p * 0.5 / 301, rtol=1e-4, atol=1e-9)


def test_layer_norm_rows_in_blocks(threads):
    rng = np.random.default_rng(1)
    x = _nd(rng.standard_normal((7, 97, 512)).astype(np.float32))
    dy = _nd(rng.standard_normal((7, 97, 512)).astype(np.float32))
    w = _nd(rng.standard_normal(512).astype(np.float32))
    b = _nd(rng.standard_normal(512).astype(np.float32))
    dev = cpu()
    f1, f2 = _both(threads, lambda: dev.layer_norm_fwd(x, w, b))
    # row means are BLAS matrix-vector products: rounding may depend on the block start
    for a, c in zip(f1, f2):
        np.testing.assert_allclose(a.numpy(), c.numpy(), rtol=1e-5, atol=2e-6)
    b1, b2 = _both(threads, lambda: dev.layer_norm_bwd(dy, x, f1[1], f1[2], w))
    np.testing.assert_allclose(b1[0].numpy(), b2[0].numpy(), rtol=1e-5, atol=2e-6)
    for a, c in zip(b1[1:], b2[1:]):  # sums over every row: block partial sums added
        np.testing.assert_allclose(a.numpy(), c.numpy(), rtol=1e-5, atol=1e-4)
    nb1, nb2 = _both(threads, lambda: dev.layer_norm_bwd(dy, x, f1[1], f1[2]))
    np.testing.assert_allclose(nb1[0].numpy(), nb2[0].numpy(), rtol=1e-5, atol=2e-6)
    assert nb2[1] is None and nb2[2] is None


@pytest.mark.parametrize("decoupled", [False, True])
def test_adam_update_in_blocks(threads, decoupled):
    rng = np.random.default_rng(2)
    shape = (700, 600)
    start = [rng.standard_normal(shape).astype(np.float32) for _ in range(3)]
    start[2] = np.abs(start[2])
    g = _nd(rng.standard_normal(shape).astype(np.float32))
    results = []
    for n in (1, 2):
        threads(n)
        w, m, v = (_nd(a.copy()) for a in start)
        cpu().adam_update(w, g, m, v, 1e-3, 0.9, 0.999, 1e-8, 3, 1e-2, decoupled)
        results.append([a.numpy() for a in (w, m, v)])
    for a, c in zip(*results):
        np.testing.assert_array_equal(a, c)


def test_thread_count_is_checked(threads):
    with pytest.raises(ValueError, match="at least 1 thread"):
        cpu().set_num_threads(0)


def test_row_scatter_equals_add_at():
    """The CPU device sums sorted runs of ids; NumPy's `add.at` is the reference (equal up to
    the rounding of a different summation order within a run)."""
    rng = np.random.default_rng(3)
    for n_ids, vocab in ((2048, 10000), (2048, 128), (1, 5), (0, 4)):
        ids = rng.integers(0, vocab, n_ids).astype(np.int64)
        values = rng.standard_normal((n_ids, 16)).astype(np.float32)
        expected = np.zeros((vocab, 16), np.float32)
        np.add.at(expected, ids, values)
        got = cpu().embedding_scatter(_nd(values), _nd(ids), vocab).numpy()
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
