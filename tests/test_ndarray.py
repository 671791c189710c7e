"""NDArray: construction, strided views over one handle, in-place writes, kernels.

Oracle: NumPy. Strides are in elements, so they must equal NumPy's byte strides divided by the
item size for the same logical array (0 on broadcast axes); every view must report the base
buffer's pointer (contract section 4 and fact 9).
"""
import importlib.util

import numpy as np
import pytest

import needle as ndl
from needle import backend_ndarray as nd

RNG = np.random.default_rng(0)


def _np_strides(a: np.ndarray) -> tuple:
    return tuple(s // a.itemsize for s in a.strides)


def _randn(*shape) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


# ---- construction ---------------------------------------------------------------------------

def test_array_from_numpy_float64_becomes_float32():
    x = np.random.randn(3, 4)
    a = nd.array(x)
    assert isinstance(a, nd.NDArray)
    assert a.dtype == "float32"
    assert a.shape == (3, 4)
    assert a.ndim == 2 and a.size == 12
    np.testing.assert_allclose(a.numpy(), x.astype(np.float32))
    assert a.numpy().dtype == np.float32


def test_array_from_nested_list():
    a = nd.array([[1, 2, 3], [4, 5, 6]])
    assert a.shape == (2, 3)
    assert a.dtype == "float32"
    np.testing.assert_array_equal(a.numpy(), np.array([[1, 2, 3], [4, 5, 6]], np.float32))


def test_ndarray_constructor_copies():
    x = _randn(4, 5)
    a = nd.NDArray(x)
    assert a.device == nd.cpu()
    x[0, 0] = 100.0
    assert a.numpy()[0, 0] != 100.0
    b = nd.NDArray(a)
    np.testing.assert_array_equal(b.numpy(), a.numpy())
    b[0:1, 0:1] = 7.0
    assert a.numpy()[0, 0] != 7.0


def test_ndarray_is_subclassable():
    class _Sub(nd.NDArray):
        def slices(self):
            return tuple(self.process_slice(slice(None), d) for d in range(len(self.shape)))

    s = _Sub(_randn(3, 2))
    assert s.shape == (3, 2)
    assert s.slices() == (slice(0, 3, 1), slice(0, 2, 1))


def test_numpy_interop():
    x = _randn(3, 4)
    a = nd.array(x)
    np.testing.assert_array_equal(np.array(a), x)
    np.testing.assert_allclose(a, x)
    np.testing.assert_array_equal(np.asarray(a.permute((1, 0))), x.T)


def test_make_view_over_handle():
    x = np.arange(12, dtype=np.float32)
    a = nd.array(x)
    v = nd.NDArray.make((3, 2), strides=(1, 4), device=a.device, handle=a._handle, offset=2)
    ref = np.lib.stride_tricks.as_strided(x[2:], shape=(3, 2), strides=(4, 16))
    np.testing.assert_array_equal(v.numpy(), ref)
    assert v._handle.ptr() == a._handle.ptr()
    fresh = nd.NDArray.make((2, 5))
    assert fresh.shape == (2, 5) and fresh.strides == (5, 1) and fresh.is_compact()


# ---- views: strides, offset, shared handle ------------------------------------------------

def test_compact_strides_and_handle_size():
    a = nd.array(_randn(2, 3, 4))
    assert a.strides == (12, 4, 1)
    assert a._offset == 0
    assert a._handle.size == 24
    assert a.is_compact()
    assert a.compact() is a


def test_reshape_is_view():
    x = _randn(4, 6)
    a = nd.array(x)
    b = a.reshape((2, 3, 4))
    assert b.shape == (2, 3, 4)
    assert b.strides == _np_strides(x.reshape(2, 3, 4))
    assert b._handle.ptr() == a._handle.ptr()
    np.testing.assert_array_equal(b.numpy(), x.reshape(2, 3, 4))


@pytest.mark.parametrize("axes", [(1, 0, 2), (2, 0, 1), (2, 1, 0), (0, 1, 2)])
def test_permute_is_view(axes):
    x = _randn(2, 3, 4)
    a = nd.array(x)
    b = a.permute(axes)
    ref = x.transpose(axes)
    assert b.shape == ref.shape
    assert b.strides == _np_strides(ref)
    assert b._handle.ptr() == a._handle.ptr()
    np.testing.assert_array_equal(b.numpy(), ref)
    assert b.is_compact() == (axes == (0, 1, 2))


@pytest.mark.parametrize(
    "shape, new_shape",
    [((1, 3), (4, 3)), ((3, 1), (3, 5)), ((2, 1, 3), (2, 4, 3)), ((1,), (4, 1)), ((3,), (2, 3))],
)
def test_broadcast_to_is_view_with_zero_strides(shape, new_shape):
    x = _randn(*shape)
    a = nd.array(x)
    b = a.broadcast_to(new_shape)
    ref = np.broadcast_to(x, new_shape)
    assert b.shape == new_shape
    assert b.strides == _np_strides(ref)
    assert b._handle.ptr() == a._handle.ptr()
    assert not b.is_compact()
    np.testing.assert_array_equal(b.numpy(), ref)
    c = b.compact()
    assert c.is_compact()
    np.testing.assert_array_equal(c.numpy(), ref)


@pytest.mark.parametrize(
    "idx",
    [
        (slice(1, None, 2), slice(None, 4)),
        (slice(2, None), slice(1, 5, 3)),
        (slice(None, None, 3), slice(None)),
        (1, slice(2, 6)),
        (slice(3, 5), 4),
    ],
)
def test_getitem_is_view_with_offset(idx):
    x = _randn(6, 7)
    a = nd.array(x)
    b = a[idx]
    # an int keeps its axis with length 1
    np_idx = tuple(slice(i, i + 1) if isinstance(i, int) else i for i in idx)
    ref = x[np_idx]
    assert b.shape == ref.shape
    assert b.strides == _np_strides(ref)
    assert b._handle.ptr() == a._handle.ptr()
    starts = [i if isinstance(i, int) else (i.start or 0) for i in idx]
    expected_offset = starts[0] * 7 + starts[1]
    assert b._offset == expected_offset
    np.testing.assert_array_equal(b.numpy(), ref)


def test_getitem_int_keeps_axis():
    x = _randn(3, 4, 5)
    a = nd.array(x)
    b = a[1, 2, 3]
    assert b.shape == (1, 1, 1)
    assert b.numpy().item() == x[1, 2, 3]
    c = a[0, :, 1:3]
    assert c.shape == (1, 4, 2)
    np.testing.assert_array_equal(c.numpy(), x[0:1, :, 1:3])


def test_views_of_views_share_handle():
    x = _randn(4, 6, 5)
    a = nd.array(x)
    v = a.permute((2, 0, 1))[1:4, ::2, 3:]
    ref = x.transpose(2, 0, 1)[1:4, ::2, 3:]
    assert v._handle.ptr() == a._handle.ptr()
    assert v.strides == _np_strides(ref)
    np.testing.assert_array_equal(v.numpy(), ref)
    w = v.compact()
    assert w.is_compact()
    assert w._handle.ptr() != a._handle.ptr()
    np.testing.assert_array_equal(w.numpy(), ref)


def test_offset_slice_is_not_compact():
    a = nd.array(_randn(4, 5))
    assert not a[1:3, :].is_compact()
    assert not a[:, ::2].is_compact()
    assert a[:, :].is_compact()


@pytest.mark.parametrize("n", [1, 5, 8])
def test_process_slice(n):
    a = nd.array(_randn(n, 3))
    for slc in [slice(None), slice(1, None, 2), slice(None, 4), slice(2, None), slice(0, n, 3)]:
        s = a.process_slice(slc, 0)
        assert s.start >= 0 and s.stop >= 0 and s.step >= 1
        assert list(range(n))[s] == list(range(n))[slc]
    s = a.process_slice(slice(None), 1)
    assert (s.start, s.stop, s.step) == (0, 3, 1)


# ---- in-place writes -----------------------------------------------------------------------

@pytest.mark.parametrize(
    "idx",
    [(slice(1, None, 2), slice(None, 4)), (slice(2, None), slice(1, 5, 3)), (3, slice(None))],
)
def test_setitem_ndarray_in_place(idx):
    x = _randn(6, 7)
    y = _randn(6, 7)
    a = nd.array(x)
    b = nd.array(y)
    ptr = a._handle.ptr()
    a[idx] = b[idx]
    np_idx = tuple(slice(i, i + 1) if isinstance(i, int) else i for i in idx)
    x[np_idx] = y[np_idx]
    assert a._handle.ptr() == ptr
    np.testing.assert_array_equal(a.numpy(), x)


def test_setitem_scalar_in_place():
    x = _randn(5, 6)
    a = nd.array(x)
    ptr = a._handle.ptr()
    a[1:4, ::2] = -3.5
    x[1:4, ::2] = -3.5
    assert a._handle.ptr() == ptr
    np.testing.assert_array_equal(a.numpy(), x)


def test_setitem_through_view_writes_base():
    x = _randn(3, 4)
    a = nd.array(x)
    v = a.permute((1, 0))
    v[0:2, 1:3] = 0.0
    x.T[0:2, 1:3] = 0.0
    np.testing.assert_array_equal(a.numpy(), x)


def test_setitem_from_noncompact_source():
    x = _randn(4, 4)
    a = nd.array(np.zeros((4, 4), np.float32))
    a[:, :] = nd.array(x).permute((1, 0))
    np.testing.assert_array_equal(a.numpy(), x.T)


@pytest.mark.parametrize("shape", [(), (5,), (2, 3, 4)])
def test_flat_add_writes_through(shape):
    x = _randn(*shape)
    a = nd.array(x)
    t = ndl.Tensor(a, device=ndl.cpu())
    data = t.realize_cached_data()
    for j in range(data.size):
        data.flat[j] += 0.5
    np.testing.assert_allclose(t.numpy(), x + 0.5, rtol=1e-6)
    b = nd.array(x)
    flat = b.flat
    flat[0] -= 1.0
    assert b.numpy().reshape(-1)[0] == pytest.approx(float(x.reshape(-1)[0]) - 1.0)


# ---- elementwise, scalar, comparison --------------------------------------------------------

def _pair(shape=(3, 4)):
    x = _randn(*shape)
    y = _randn(*shape)
    return x, y, nd.array(x), nd.array(y)


@pytest.mark.parametrize(
    "fn",
    [
        lambda a, b: a + b, lambda a, b: a - b, lambda a, b: a * b, lambda a, b: a / b,
        lambda a, b: a + 1.5, lambda a, b: a - 2.0, lambda a, b: a * -3.0, lambda a, b: a / 4.0,
        lambda a, b: -a,
    ],
)
def test_elementwise_and_scalar_ops(fn):
    x, y, a, b = _pair()
    out = fn(a, b)
    assert isinstance(out, nd.NDArray)
    assert out.dtype == "float32"
    np.testing.assert_allclose(out.numpy(), fn(x, y), rtol=1e-6, atol=1e-6)


def test_ops_on_noncompact_views():
    x, y, a, b = _pair((4, 4))
    lhs = a.permute((1, 0))[:, 1:3]
    rhs = b[::2, :].permute((1, 0))
    np.testing.assert_allclose((lhs + rhs).numpy(), x.T[:, 1:3] + y[::2, :].T, rtol=1e-6)
    row = nd.array(y[0:1, :]).broadcast_to((4, 4))
    np.testing.assert_allclose((a * row).numpy(), x * y[0:1, :], rtol=1e-6)
    np.testing.assert_allclose(a.permute((1, 0)).exp().numpy(), np.exp(x.T), rtol=1e-6)


@pytest.mark.parametrize("name", ["eq", "ge", "ne", "gt", "lt", "le"])
def test_comparisons_give_float_ones_and_zeros(name):
    x = np.array([[1, 2, 3], [3, 2, 1]], np.float32)
    y = np.array([[3, 2, 1], [3, 2, 1]], np.float32)
    a, b = nd.array(x), nd.array(y)
    op = {"eq": "__eq__", "ge": "__ge__", "ne": "__ne__", "gt": "__gt__", "lt": "__lt__",
          "le": "__le__"}[name]
    out = getattr(a, op)(b)
    assert out.dtype == "float32"
    ref = getattr(x, op)(y).astype(np.float32)
    np.testing.assert_array_equal(out.numpy(), ref)
    out_s = getattr(a, op)(2.0)
    np.testing.assert_array_equal(out_s.numpy(), getattr(x, op)(2.0).astype(np.float32))


def test_unary_math_and_maximum_and_power():
    x = np.abs(_randn(3, 5)) + 0.1
    y = _randn(3, 5)
    a, b = nd.array(x), nd.array(y)
    np.testing.assert_allclose(a.log().numpy(), np.log(x), rtol=1e-6)
    np.testing.assert_allclose(b.exp().numpy(), np.exp(y), rtol=1e-6)
    np.testing.assert_allclose(b.tanh().numpy(), np.tanh(y), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(a.maximum(b).numpy(), np.maximum(x, y))
    np.testing.assert_allclose(b.maximum(0.0).numpy(), np.maximum(y, 0.0))
    np.testing.assert_allclose((a ** 5.0).numpy(), x ** 5.0, rtol=1e-5)
    np.testing.assert_allclose((a ** 0.5).numpy(), x ** 0.5, rtol=1e-6)


# ---- reductions ------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["sum", "max"])
@pytest.mark.parametrize("axis", [None, 0, 1, 2, (1,)])
@pytest.mark.parametrize("keepdims", [False, True])
def test_reductions(method, axis, keepdims):
    x = _randn(3, 4, 5)
    a = nd.array(x)
    out = getattr(a, method)(axis=axis, keepdims=keepdims)
    ref = getattr(x, method)(axis=axis, keepdims=keepdims)
    if axis is None and not keepdims:
        assert out.size == 1
        np.testing.assert_allclose(out.numpy().reshape(()), ref, rtol=1e-5)
    else:
        assert out.shape == ref.shape
        np.testing.assert_allclose(out.numpy(), ref, rtol=1e-5, atol=1e-6)


def test_reduction_of_noncompact_view():
    x = _randn(4, 6)
    a = nd.array(x).permute((1, 0))[1::2, :]
    ref = x.T[1::2, :]
    np.testing.assert_allclose(a.sum(axis=1, keepdims=True).numpy(),
                               ref.sum(axis=1, keepdims=True), rtol=1e-5)
    np.testing.assert_allclose(a.max(axis=0).numpy().reshape(-1), ref.max(axis=0))


# ---- matmul, pad, flip -----------------------------------------------------------------------

@pytest.mark.parametrize(
    "m, n, p", [(1, 1, 1), (8, 8, 8), (16, 16, 16), (3, 5, 7), (9, 17, 2), (64, 32, 16)]
)
def test_matmul_2d(m, n, p):
    x, y = _randn(m, n), _randn(n, p)
    out = nd.array(x) @ nd.array(y)
    assert out.shape == (m, p)
    np.testing.assert_allclose(out.numpy(), x @ y, rtol=1e-4, atol=1e-4)


def test_matmul_noncompact_inputs():
    x, y = _randn(5, 3), _randn(4, 5)
    out = nd.array(x).permute((1, 0)) @ nd.array(y).permute((1, 0))
    np.testing.assert_allclose(out.numpy(), x.T @ y.T, rtol=1e-5, atol=1e-5)


def test_matmul_batched():
    x, y = _randn(2, 3, 4), _randn(2, 4, 5)
    out = nd.array(x) @ nd.array(y)
    assert out.shape == (2, 3, 5)
    np.testing.assert_allclose(out.numpy(), x @ y, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("m, n, p", [(1, 1, 1), (2, 2, 3), (1, 2, 1), (3, 3, 3)])
def test_matmul_tiled(m, n, p):
    device = nd.cpu()
    assert hasattr(device, "matmul_tiled")
    t = device.__tile_size__
    assert isinstance(t, int)
    a = nd.array(_randn(m, n, t, t), device=device)
    b = nd.array(_randn(n, p, t, t), device=device)
    c = nd.NDArray.make((m, p, t, t), device=device)
    device.matmul_tiled(a._handle, b._handle, c._handle, m * t, n * t, p * t)
    lhs = a.numpy().transpose(0, 2, 1, 3).reshape(m * t, n * t)
    rhs = b.numpy().transpose(0, 2, 1, 3).reshape(n * t, p * t)
    out = c.numpy().transpose(0, 2, 1, 3).reshape(m * t, p * t)
    np.testing.assert_allclose(lhs @ rhs, out, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "shape, pads",
    [((2, 3), ((1, 1), (0, 2))), ((2, 3, 4), ((0, 0), (2, 1), (1, 0))), ((3,), ((0, 3),))],
)
def test_pad(shape, pads):
    x = _randn(*shape)
    out = nd.array(x).pad(pads)
    np.testing.assert_array_equal(out.numpy(), np.pad(x, pads))


@pytest.mark.parametrize("axes", [(0,), (1,), (0, 2), (0, 1, 2)])
def test_flip(axes):
    x = _randn(2, 3, 4)
    a = nd.array(x)
    out = a.flip(axes)
    assert out.is_compact()
    np.testing.assert_array_equal(out.numpy(), np.flip(x, axes))
    np.testing.assert_array_equal(a.numpy(), x)  # the input is untouched


# ---- devices ---------------------------------------------------------------------------------

def test_cpu_device():
    dev = nd.cpu()
    assert dev.enabled() is True
    assert repr(dev) == "cpu()" and str(dev) == "cpu()"
    assert nd.cpu() == nd.cpu()
    assert ndl.cpu() == nd.cpu()
    assert nd.array([1.0]).device == ndl.cpu()


def test_cuda_device_object_without_gpu():
    dev = nd.cuda()
    enabled = dev.enabled()
    assert isinstance(enabled, bool)
    if importlib.util.find_spec("cupy") is None:
        assert enabled is False
    assert repr(dev) == "cuda()" and str(dev) == "cuda()"
    assert nd.cuda() == ndl.cuda()
    assert nd.cuda() != nd.cpu()


# ---- behaviour at the edges of the contract: right answer or a clear error, never silence ----

def test_flat_on_noncompact_view_writes_through_or_raises():
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    a = nd.array(x).permute((1, 0))
    try:
        flat = a.flat
        flat[1] += 100.0
    except (ValueError, AssertionError, NotImplementedError):
        return
    expected = x.T.copy()
    expected.reshape(-1)[1] += 100.0
    np.testing.assert_array_equal(a.numpy(), expected)


def test_getitem_negative_step_matches_numpy_or_raises():
    x = np.arange(5, dtype=np.float32)
    a = nd.array(x)
    try:
        out = a[::-1]
    except (ValueError, IndexError, NotImplementedError):
        return
    np.testing.assert_array_equal(out.numpy(), x[::-1])


def test_getitem_negative_start():
    x = np.arange(5, dtype=np.float32)
    a = nd.array(x)
    np.testing.assert_array_equal(a[-3:].numpy(), x[-3:])
    np.testing.assert_array_equal(a[-1].numpy(), x[-1:])
    assert a.process_slice(slice(-3, None), 0) == slice(2, 5, 1)
