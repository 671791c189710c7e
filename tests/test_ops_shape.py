"""Matmul and the shape/layout ops against PyTorch and NumPy: broadcast_to, reshape,
transpose (course semantics), permute, stack/split, flip, pad, dilate/undilate, getitem, conv."""
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from test_ops import HYP, check_vs_torch, randn

import needle as ndl
from needle import ops

# ---- matmul -------------------------------------------------------------------------------------

MATMUL_SHAPES = [
    ((3, 4), (4, 5)),
    ((1, 1), (1, 1)),
    ((16, 16), (16, 16)),
    ((6, 6, 5, 4), (6, 6, 4, 3)),
    ((6, 6, 5, 4), (4, 3)),
    ((5, 4), (6, 6, 4, 3)),
    ((3, 5, 4), (4, 3)),
    ((5, 4), (3, 4, 2)),
    ((1, 5, 4), (6, 4, 3)),
    ((6, 1, 5, 4), (1, 7, 4, 3)),
]


@pytest.mark.parametrize("sa, sb", MATMUL_SHAPES)
def test_matmul_vs_torch(sa, sb):
    check_vs_torch(ops.matmul, torch.matmul, randn(*sa), randn(*sb))
    check_vs_torch(lambda a, b: a @ b, torch.matmul, randn(*sa), randn(*sb))


@given(m=st.integers(1, 6), n=st.integers(1, 6), p=st.integers(1, 6),
       batch=st.lists(st.integers(1, 3), max_size=2).map(tuple))
@HYP
def test_matmul_random_shapes(m, n, p, batch):
    check_vs_torch(ops.matmul, torch.matmul, randn(*batch, m, n), randn(*batch, n, p))


def test_matmul_float32_keeps_dtype():
    a = ndl.Tensor(randn(4, 3), dtype="float32")
    b = ndl.Tensor(randn(3, 2), dtype="float32")
    out = a @ b
    assert out.dtype == "float32"
    np.testing.assert_allclose(out.numpy(), a.numpy() @ b.numpy(), rtol=1e-6)
    out.sum().backward()
    assert a.grad.dtype == "float32" and b.grad.dtype == "float32"


# ---- broadcast_to / reshape ---------------------------------------------------------------------

@pytest.mark.parametrize(
    "shape, new_shape",
    [((1, 3), (3, 3, 3)), ((1,), (3, 3, 3)), ((), (3, 3, 3)), ((3, 1), (3, 4)),
     ((2, 1, 4), (2, 3, 4)), ((4,), (2, 4)), ((2, 3), (2, 3))],
)
def test_broadcast_to_vs_torch(shape, new_shape):
    x = randn(*shape)
    check_vs_torch(lambda t: ops.broadcast_to(t, new_shape),
                   lambda t: t.broadcast_to(new_shape), x)
    check_vs_torch(lambda t: ops.broadcast_to(t, shape=new_shape),
                   lambda t: t.broadcast_to(new_shape), x)
    check_vs_torch(lambda t: t.broadcast_to(new_shape), lambda t: t.broadcast_to(new_shape), x)


@pytest.mark.parametrize(
    "shape, new_shape",
    [((2, 3, 4), (6, 4)), ((6,), (2, 3)), ((2, 3), (3, 2)), ((1, 5), (5,)), ((4,), (1, 4, 1))],
)
def test_reshape_vs_torch(shape, new_shape):
    x = randn(*shape)
    check_vs_torch(lambda t: ops.reshape(t, new_shape), lambda t: t.reshape(new_shape), x)
    check_vs_torch(lambda t: ops.reshape(t, shape=new_shape), lambda t: t.reshape(new_shape), x)
    check_vs_torch(lambda t: t.reshape(new_shape), lambda t: t.reshape(new_shape), x)


def test_reshape_of_noncompact_input():
    check_vs_torch(lambda t: ops.reshape(ops.transpose(t), (12,)),
                   lambda t: t.transpose(0, 1).reshape(12), randn(3, 4))


# ---- transpose / permute ------------------------------------------------------------------------

@pytest.mark.parametrize(
    "shape, axes",
    [((3, 4), None), ((2, 3, 4), None), ((2, 3, 4), (0, 1)), ((2, 3, 4), (0, 2)),
     ((2, 3, 4, 5), None), ((2, 3, 4, 5), (1, 3)), ((2, 3, 4, 5), (0, 3))],
)
def test_transpose_swaps_two_axes(shape, axes):
    i, j = axes if axes is not None else (len(shape) - 2, len(shape) - 1)
    x = randn(*shape)
    check_vs_torch(lambda t: ops.transpose(t, axes), lambda t: t.transpose(i, j), x)
    check_vs_torch(lambda t: ops.transpose(t, axes=axes), lambda t: t.transpose(i, j), x)
    check_vs_torch(lambda t: t.transpose(axes), lambda t: t.transpose(i, j), x)


@pytest.mark.parametrize("axes", [(1, 0, 2), (2, 0, 1), (0, 1, 2), (2, 1, 0)])
def test_permute_vs_torch(axes):
    check_vs_torch(lambda t: ops.permute(t, axes), lambda t: t.permute(axes), randn(2, 3, 4))


# ---- stack / split -------------------------------------------------------------------------------

@pytest.mark.parametrize("axis, n", [(0, 3), (1, 2), (2, 4), (0, 1)])
def test_stack_vs_torch(axis, n):
    xs = [randn(2, 3) for _ in range(n)]
    check_vs_torch(lambda *ts: ops.stack(list(ts), axis),
                   lambda *ts: torch.stack(ts, dim=axis), *xs)
    check_vs_torch(lambda *ts: ops.stack(ts, axis=axis),
                   lambda *ts: torch.stack(ts, dim=axis), *xs)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_split_vs_torch(axis):
    x = randn(3, 2, 4)
    t = ndl.Tensor(x)
    parts = ops.split(t, axis)
    assert isinstance(parts, ndl.TensorTuple)
    ref = torch.unbind(torch.tensor(x), dim=axis)
    assert len(parts) == len(ref)
    for p, r in zip(parts.tuple(), ref):
        assert p.shape == tuple(r.shape)
        np.testing.assert_array_equal(p.numpy(), r.numpy())
    weights = [np.random.randn(*r.shape) for r in ref]
    y = ops.summation(parts[0] * ndl.Tensor(weights[0]))
    for k in range(1, len(ref)):
        y = y + ops.summation(parts[k] * ndl.Tensor(weights[k]))
    y.backward()
    tx = torch.tensor(x, requires_grad=True)
    sum(u.mul(torch.tensor(w)).sum() for u, w in zip(torch.unbind(tx, axis), weights)).backward()
    np.testing.assert_allclose(t.grad.numpy(), tx.grad.numpy(), rtol=1e-12)


def test_stack_gradient_is_tuple_and_split_inverts_stack():
    xs = [ndl.Tensor(randn(2, 3)) for _ in range(3)]
    s = ops.stack(xs, 1)
    g = s.op.gradient_as_tuple(ndl.Tensor(np.ones(s.shape)), s)
    if isinstance(g[0], ndl.TensorTuple):
        g = g[0].tuple()
    assert len(g) == 3 and all(gi.shape == (2, 3) for gi in g)
    back = ops.split(s, 1)
    for a, b in zip(xs, back.tuple()):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


# ---- flip / pad / dilate / undilate --------------------------------------------------------------

@pytest.mark.parametrize("axes", [(0,), (1,), (0, 2), (0, 1, 2), (1, 2)])
def test_flip_vs_torch(axes):
    check_vs_torch(lambda t: ops.flip(t, axes), lambda t: torch.flip(t, axes), randn(2, 3, 4))
    check_vs_torch(lambda t: ops.flip(t, axes=axes), lambda t: torch.flip(t, axes),
                   randn(2, 3, 4))


@pytest.mark.parametrize(
    "shape, pads",
    [((2, 3), ((1, 1), (0, 2))), ((2, 3, 4), ((0, 0), (2, 1), (1, 0))),
     ((1, 4, 4, 2), ((0, 0), (1, 1), (1, 1), (0, 0)))],
)
def test_pad_vs_numpy_and_gradient(shape, pads):
    x = randn(*shape)
    t = ndl.Tensor(x)
    out = ops.pad(t, pads)
    np.testing.assert_array_equal(out.numpy(), np.pad(x, pads))
    g = np.random.randn(*out.shape)
    out.backward(ndl.Tensor(g))
    np.testing.assert_allclose(
        t.grad.numpy(), g[tuple(slice(lo, lo + n) for (lo, _), n in zip(pads, shape))])


def _np_dilate(x, axes, d):
    shape = [n * (1 + d) if i in axes else n for i, n in enumerate(x.shape)]
    out = np.zeros(shape)
    out[tuple(slice(None, None, d + 1) if i in axes else slice(None)
              for i in range(x.ndim))] = x
    return out


@pytest.mark.parametrize("axes, d", [((0,), 1), ((1,), 2), ((0, 1), 1), ((0, 1), 0),
                                     ((1, 2), 1), ((2,), 3)])
def test_dilate_and_undilate(axes, d):
    x = randn(2, 3, 4)
    t = ndl.Tensor(x)
    out = ops.dilate(t, axes, d)
    expected = _np_dilate(x, axes, d)
    assert out.shape == expected.shape
    np.testing.assert_array_equal(out.numpy(), expected)
    g = np.random.randn(*expected.shape)
    out.backward(ndl.Tensor(g))
    keep = tuple(slice(None, None, d + 1) if i in axes else slice(None) for i in range(3))
    np.testing.assert_allclose(t.grad.numpy(), g[keep])
    # undilate inverts dilate; its gradient dilates
    u = ndl.Tensor(expected)
    back = ops.undilate(u, axes, d)
    np.testing.assert_array_equal(back.numpy(), x)
    gb = np.random.randn(*x.shape)
    back.backward(ndl.Tensor(gb))
    np.testing.assert_allclose(u.grad.numpy(), _np_dilate(gb, axes, d))
    out_kw = ops.dilate(t, axes=axes, dilation=d)
    np.testing.assert_array_equal(out_kw.numpy(), expected)


# ---- getitem ------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "idx",
    [(slice(1, 3), slice(None)), (slice(None, None, 2), slice(1, None, 2)),
     (1, slice(None)), (slice(None), 2), (slice(None, None, -1), slice(None))],
    ids=["rows", "steps", "int-row", "int-col", "reverse"],
)
def test_getitem_vs_torch(idx):
    x = randn(4, 5)
    if any(isinstance(i, slice) and (i.step or 1) < 0 for i in idx):
        # torch has no negative steps: compare with NumPy and the scatter gradient
        t = ndl.Tensor(x)
        out = t[idx]
        np.testing.assert_array_equal(out.numpy(), x[idx])
        out.backward()
        expected = np.zeros_like(x)
        expected[idx] = 1.0
        np.testing.assert_array_equal(t.grad.numpy(), expected)
        return
    check_vs_torch(lambda t: t[idx], lambda t: t[idx], x)
    check_vs_torch(lambda t: ops.getitem(t, idx), lambda t: t[idx], x)


def test_getitem_integer_array_gather_accumulates_gradient():
    x = randn(5, 3)
    rows = np.array([0, 2, 2, 4])
    check_vs_torch(lambda t: t[rows], lambda t: t[torch.tensor(rows)], x)


# ---- conv ----------------------------------------------------------------------------------------

@pytest.mark.xfail(not hasattr(ops, "conv"), strict=True,
                   reason="needle.ops.conv is missing (contract section 6, issue 2 item 4)")
@pytest.mark.parametrize(
    "n, h, w, cin, cout, k, stride, padding",
    [(2, 5, 5, 3, 4, 3, 1, 1), (1, 8, 8, 2, 3, 3, 2, 1), (2, 7, 6, 3, 2, 1, 1, 0),
     (1, 6, 6, 2, 2, 5, 1, 2), (1, 9, 9, 1, 2, 3, 3, 0)],
)
def test_conv_vs_torch(n, h, w, cin, cout, k, stride, padding):
    conv = ops.conv
    x, wt = randn(n, h, w, cin), randn(k, k, cin, cout)

    def tconv(a, b):
        out = torch.nn.functional.conv2d(a.permute(0, 3, 1, 2), b.permute(3, 2, 0, 1),
                                         stride=stride, padding=padding)
        return out.permute(0, 2, 3, 1)

    check_vs_torch(lambda a, b: conv(a, b, stride=stride, padding=padding), tconv, x, wt,
                   rtol=1e-9, atol=1e-9)
