"""Reductions against PyTorch: summation, mean, max over int/tuple/None axes; logsumexp and
logsoftmax, including numerical stability at 1e5..1e10 and finite gradients with -inf."""
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from test_ops import HYP, check_vs_torch, randn

import needle as ndl
from needle import ops

AXES_3D = [None, 0, 1, 2, (0,), (1, 2), (0, 2), (0, 1, 2)]


def _torch_dims(axes, ndim):
    if axes is None:
        return tuple(range(ndim))
    return (axes,) if isinstance(axes, int) else tuple(axes)


def _reduced_shape_ok(out, expected_shape):
    """A full reduction may give shape () or (1,) (contract section 6)."""
    return tuple(out.shape) == expected_shape or (expected_shape == () and out.shape == (1,))


@pytest.mark.parametrize("axes", AXES_3D)
def test_summation_vs_torch(axes):
    x = randn(3, 4, 5)
    t = ndl.Tensor(x)
    out = ops.summation(t, axes=axes)
    ref = torch.tensor(x).sum(dim=_torch_dims(axes, 3))
    assert _reduced_shape_ok(out, tuple(ref.shape))
    np.testing.assert_allclose(out.numpy().reshape(ref.shape), ref.numpy(), rtol=1e-12)
    g = np.asarray(np.random.randn(*out.shape))
    out.backward(ndl.Tensor(g))
    np.testing.assert_allclose(t.grad.numpy(), np.broadcast_to(
        g.reshape(np.sum(x, axis=axes, keepdims=True).shape), x.shape))


@pytest.mark.parametrize("axes", [0, 1, (0, 1), -1])
def test_summation_positional_and_method(axes):
    x = randn(4, 3)
    check_vs_torch(lambda t: ops.summation(t, axes), lambda t: t.sum(dim=axes), x)
    check_vs_torch(lambda t: t.sum(axes), lambda t: t.sum(dim=axes), x)


@pytest.mark.parametrize("axes", [a for a in AXES_3D if a is not None])
def test_mean_vs_torch(axes):
    check_vs_torch(lambda t: ops.mean(t, axes), lambda t: t.mean(dim=axes), randn(3, 4, 5))


def test_mean_all():
    x = randn(3, 4)
    out = ops.mean(ndl.Tensor(x))
    np.testing.assert_allclose(out.numpy().reshape(()), x.mean(), rtol=1e-12)


@pytest.mark.parametrize("axes", [0, 1, 2, (1, 2)])
def test_max_vs_torch(axes):
    check_vs_torch(lambda t: ops.max(t, axes), lambda t: t.amax(dim=axes), randn(3, 4, 5))


def test_max_all_and_keepdims():
    x = randn(3, 4)
    t = ndl.Tensor(x)
    out = ops.max(t)
    np.testing.assert_allclose(out.numpy().reshape(()), x.max())
    out.backward()
    expected = (x == x.max()).astype(np.float64)
    np.testing.assert_allclose(t.grad.numpy(), expected)
    check_vs_torch(lambda u: ops.max(u, 1, keepdims=True),
                   lambda u: u.amax(dim=1, keepdim=True), x)


@given(shape=st.lists(st.integers(1, 5), min_size=1, max_size=4).map(tuple), data=st.data())
@HYP
def test_summation_random_axes(shape, data):
    axes = tuple(sorted(data.draw(st.sets(st.integers(0, len(shape) - 1), min_size=1))))
    check_vs_torch(lambda t: ops.summation(t, axes), lambda t: t.sum(dim=axes), randn(*shape))


# ---- logsumexp / logsoftmax ----------------------------------------------------------------------

@pytest.mark.parametrize("axes", [None, 0, 1, 2, (0, 2), (1, 2)])
def test_logsumexp_vs_torch(axes):
    x = randn(3, 4, 5)
    dims = _torch_dims(axes, 3)
    t = ndl.Tensor(x)
    out = ops.logsumexp(t, axes=axes)
    tx = torch.tensor(x, requires_grad=True)
    ref = torch.logsumexp(tx, dim=dims)
    assert _reduced_shape_ok(out, tuple(ref.shape))
    np.testing.assert_allclose(out.numpy().reshape(ref.shape), ref.detach().numpy(),
                               rtol=1e-12)
    g = np.asarray(np.random.randn(*ref.shape))
    out.backward(ndl.Tensor(g.reshape(out.shape)))
    ref.backward(torch.tensor(g))
    np.testing.assert_allclose(t.grad.numpy(), tx.grad.numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("scale", [1e5, 1e8, 1e10])
def test_logsumexp_is_stable(scale):
    x = randn(4, 6) * scale
    check_vs_torch(lambda t: ops.logsumexp(t, 1), lambda t: torch.logsumexp(t, dim=1), x,
                   rtol=1e-9, atol=1e-6)
    x32 = ndl.Tensor(x, dtype="float32")
    out = ops.logsumexp(x32, (0, 1))
    assert np.all(np.isfinite(out.numpy()))
    np.testing.assert_allclose(out.numpy().reshape(()), x.max(), rtol=1e-5)


def test_logsumexp_rows_with_some_neg_inf():
    x = np.array([[-np.inf, 1.0, 2.0], [0.5, -np.inf, -np.inf], [3.0, 2.0, 1.0]])
    check_vs_torch(lambda t: ops.logsumexp(t, 1), lambda t: torch.logsumexp(t, dim=1), x)


def test_logsumexp_row_of_all_neg_inf_has_finite_gradient():
    x = np.array([[-np.inf, -np.inf, -np.inf], [1.0, 2.0, 3.0]])
    t = ndl.Tensor(x)
    with np.errstate(divide="ignore"):
        out = ops.logsumexp(t, 1)
    assert out.numpy()[0] == -np.inf
    np.testing.assert_allclose(out.numpy()[1], np.log(np.exp([1.0, 2.0, 3.0]).sum()))
    out.backward()
    assert np.all(np.isfinite(t.grad.numpy())), t.grad.numpy()
    np.testing.assert_allclose(t.grad.numpy()[1], np.exp([1.0, 2.0, 3.0]) /
                               np.exp([1.0, 2.0, 3.0]).sum())


def test_logsumexp_keeps_float32():
    t = ndl.Tensor(randn(3, 4), dtype="float32")
    out = ops.logsumexp(t, 1)
    assert out.dtype == "float32"
    out.sum().backward()
    assert t.grad.dtype == "float32"


def test_logsoftmax_vs_torch():
    check_vs_torch(ops.logsoftmax, lambda t: torch.log_softmax(t, dim=1), randn(5, 7))


@pytest.mark.parametrize("scale", [1e5, 1e10])
def test_logsoftmax_is_stable(scale):
    x = randn(4, 6) * scale
    check_vs_torch(ops.logsoftmax, lambda t: torch.log_softmax(t, dim=1), x,
                   rtol=1e-9, atol=1e-6)


def test_logsoftmax_with_neg_inf_entries():
    x = np.array([[-np.inf, 1.0, 2.0], [0.0, 0.0, -np.inf]])
    t = ndl.Tensor(x)
    out = ops.logsoftmax(t)
    ref = torch.log_softmax(torch.tensor(x), dim=1).numpy()
    np.testing.assert_allclose(out.numpy(), ref)
    g = np.where(np.isfinite(x), 1.0, 0.0)  # the usual masked-loss seed
    out.backward(ndl.Tensor(g))
    assert np.all(np.isfinite(t.grad.numpy())), t.grad.numpy()


def test_softmax_vs_torch():
    softmax = getattr(ops, "softmax", None)
    if softmax is None:
        pytest.skip("needle.ops has no softmax")
    check_vs_torch(softmax, lambda t: torch.softmax(t, dim=-1), randn(3, 4, 5))


def test_softmax_cross_entropy_vs_torch():
    sce = getattr(ops, "softmax_cross_entropy", None)
    if sce is None:
        pytest.skip("needle.ops has no softmax_cross_entropy")
    logits = randn(6, 5)
    y = np.array([0, 4, 2, 2, 1, 3])
    t = ndl.Tensor(logits)
    out = sce(t, ndl.Tensor(y, requires_grad=False))
    tl = torch.tensor(logits, requires_grad=True)
    ref = torch.nn.functional.cross_entropy(tl, torch.tensor(y))
    np.testing.assert_allclose(out.numpy().reshape(()), ref.item(), rtol=1e-10)
    out.backward()
    ref.backward()
    np.testing.assert_allclose(t.grad.numpy(), tl.grad.numpy(), rtol=1e-9, atol=1e-12)
