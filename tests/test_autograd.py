"""Tensor and the graph: construction, the operator→op mapping, topological order, backward
semantics (overwrite, gradients as graphs, second derivatives), switches (no_grad, lazy mode,
the create_graph=False fast path) and memory (TENSOR_COUNTER).

Contract: needle_api.md sections 0 and 5.
"""
import gc

import numpy as np
import pytest

import needle as ndl
from needle import autograd, ops
from needle import backend_ndarray as nd

RNG = np.random.default_rng(1)


def _t(*shape, dtype=np.float64, **kw):
    return ndl.Tensor(RNG.standard_normal(shape).astype(dtype), **kw)


# ---- construction ---------------------------------------------------------------------------

def test_tensor_defaults():
    t = _t(3, 2)
    assert t.requires_grad is True
    assert t.op is None and t.is_leaf()
    assert t.grad is None
    assert list(t.inputs) == []
    assert t.shape == (3, 2)
    assert t.device == ndl.cpu() and t.device == nd.cpu()
    assert isinstance(t.cached_data, nd.NDArray)
    assert isinstance(t.realize_cached_data(), nd.NDArray)
    t.requires_grad = False
    assert t.requires_grad is False


def test_float64_survives():
    x = np.random.randn(5, 4)
    t = ndl.Tensor(x)
    assert np.dtype(t.dtype) == np.float64
    assert t.numpy().dtype == np.float64
    np.testing.assert_array_equal(t.numpy(), x)
    y = (t * 2 + 1).exp().sum()
    assert np.dtype(y.dtype) == np.float64
    y.backward()
    assert np.dtype(t.grad.dtype) == np.float64


@pytest.mark.parametrize("dtype", ["float32", np.float32])
def test_dtype_argument_and_string_comparison(dtype):
    t = ndl.Tensor(np.random.randn(3), dtype=dtype)
    assert t.dtype == "float32"
    assert t.numpy().dtype == np.float32
    assert ndl.Tensor(np.ones(3, np.float32)).dtype == "float32"


def test_construction_from_lists_scalars_ndarray_and_tensor():
    a = ndl.Tensor([[1.0, 2.0], [3.0, 4.0]])
    assert a.shape == (2, 2)
    np.testing.assert_array_equal(a.numpy(), [[1, 2], [3, 4]])
    s = ndl.Tensor(2.5)
    assert s.shape == ()
    assert float(s.numpy()) == 2.5
    z = ndl.Tensor(np.array(3.0))
    assert z.shape == ()
    b = ndl.Tensor(nd.array([1.0, 2.0]), device=ndl.cpu())
    np.testing.assert_array_equal(b.numpy(), [1.0, 2.0])
    c = ndl.Tensor(b)
    np.testing.assert_array_equal(c.numpy(), b.numpy())


def test_integer_tensors_work():
    t = ndl.Tensor(np.array([1, 2, 3], dtype=np.uint8))
    np.testing.assert_array_equal(t.numpy(), [1, 2, 3])
    six = ndl.Tensor([6])
    np.testing.assert_array_equal((six * six).numpy(), [36])


def test_tensor_identity_semantics():
    a = _t(2)
    b = ndl.Tensor(a.numpy())
    assert a is not b
    assert {a: 1, b: 2}[a] == 1


# ---- graph structure -------------------------------------------------------------------------

def test_find_topo_sort_course_example():
    a = _t(3)
    b = _t(3)
    c = 3 * a * a + 4 * b * a - a
    total, neg_a = c.inputs
    aa3, ba4 = total.inputs
    a3 = aa3.inputs[0]
    b4 = ba4.inputs[0]
    expected = [a, a3, aa3, b, b4, ba4, total, neg_a, c]
    order = autograd.find_topo_sort([c])
    assert len(order) == len(expected)
    assert all(x is y for x, y in zip(order, expected))
    assert isinstance(c.op, ops.EWiseAdd) and isinstance(neg_a.op, ops.Negate)
    assert isinstance(total.op, ops.EWiseAdd)
    assert isinstance(aa3.op, ops.EWiseMul) and isinstance(a3.op, ops.MulScalar)
    assert aa3.inputs[1] is a and ba4.inputs[1] is a and neg_a.inputs[0] is a


def test_find_topo_sort_multiple_outputs_each_node_once():
    a = _t(2)
    b = a * a
    c = b + a
    d = b * 2
    order = autograd.find_topo_sort([c, d])
    assert [id(x) for x in order] == [id(a), id(b), id(c), id(d)]


def test_deep_graph_is_not_recursive():
    x = _t(2)
    y = x
    for _ in range(3000):
        y = y + 1.0
    assert len(autograd.find_topo_sort([y])) == 3001
    y.backward()
    np.testing.assert_allclose(x.grad.numpy(), np.ones(2))


@pytest.mark.parametrize(
    "build, op_name, n_inputs",
    [
        (lambda a, b: a + b, "EWiseAdd", 2),
        (lambda a, b: a + 2.0, "AddScalar", 1),
        (lambda a, b: 2.0 + a, "AddScalar", 1),
        (lambda a, b: a - 2.0, "AddScalar", 1),
        (lambda a, b: a * b, "EWiseMul", 2),
        (lambda a, b: a * 2.0, "MulScalar", 1),
        (lambda a, b: 2.0 * a, "MulScalar", 1),
        (lambda a, b: a / b, "EWiseDiv", 2),
        (lambda a, b: a / 2.0, "DivScalar", 1),
        (lambda a, b: a ** b, "EWisePow", 2),
        (lambda a, b: a ** 2, "PowerScalar", 1),
        (lambda a, b: -a, "Negate", 1),
        (lambda a, b: a @ b, "MatMul", 2),
    ],
)
def test_operator_to_op_class(build, op_name, n_inputs):
    a = ndl.Tensor(np.abs(RNG.standard_normal((3, 3))) + 0.5)
    b = ndl.Tensor(np.abs(RNG.standard_normal((3, 3))) + 0.5)
    out = build(a, b)
    assert type(out.op) is getattr(ops, op_name)
    assert len(out.inputs) == n_inputs


def test_subtraction_is_add_of_negate():
    a, b = _t(2, 2), _t(2, 2)
    c = a - b
    assert type(c.op) is ops.EWiseAdd
    assert c.inputs[0] is a
    assert type(c.inputs[1].op) is ops.Negate and c.inputs[1].inputs[0] is b
    sub_s = a - 3.0
    assert type(sub_s.op) is ops.AddScalar
    np.testing.assert_allclose(sub_s.numpy(), a.numpy() - 3.0)


def test_reflected_scalar_operators_values_and_grads():
    x = np.abs(RNG.standard_normal((2, 3))) + 0.5
    for fn, dfn in [
        (lambda t: 2.0 - t, lambda v: -np.ones_like(v)),
        (lambda t: 2.0 / t, lambda v: -2.0 / v ** 2),
        (lambda t: 2.0 ** t, lambda v: np.log(2.0) * 2.0 ** v),
        (lambda t: 3.0 + t, lambda v: np.ones_like(v)),
        (lambda t: 3.0 * t, lambda v: 3.0 * np.ones_like(v)),
    ]:
        t = ndl.Tensor(x)
        y = fn(t)
        np.testing.assert_allclose(y.numpy(), fn(x), rtol=1e-12)
        y.backward()
        np.testing.assert_allclose(t.grad.numpy(), dfn(x), rtol=1e-12)


# ---- backward ----------------------------------------------------------------------------------

def test_backward_on_non_scalar_output_seeds_ones():
    x = _t(3, 4)
    y = x * x
    y.backward()
    np.testing.assert_allclose(x.grad.numpy(), 2 * x.numpy())
    assert x.grad.shape == x.shape


def test_backward_with_explicit_out_grad():
    x = _t(3, 4)
    g = RNG.standard_normal((3, 4))
    (x * x).backward(ndl.Tensor(g))
    np.testing.assert_allclose(x.grad.numpy(), 2 * x.numpy() * g)


def test_backward_overwrites_grad():
    x = _t(3)
    y = (x * x).sum()
    y.backward()
    y.backward()
    np.testing.assert_allclose(x.grad.numpy(), 2 * x.numpy())
    (x * 5.0).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), 5.0 * np.ones(3))


def test_shared_node_sums_adjoints():
    x = _t(4)
    b = x * x
    y = (b + b * x + x).sum()
    y.backward()
    v = x.numpy()
    np.testing.assert_allclose(x.grad.numpy(), 2 * v + 3 * v ** 2 + 1)


def test_gradient_of_gradient_course_example():
    x2 = ndl.Tensor([6])
    x3 = ndl.Tensor([0])
    y = x2 * x2 + x2 * x3
    y.backward()
    grad_x2 = x2.grad
    grad_x3 = x3.grad
    grad_x2.backward()
    x2_val, x3_val = x2.numpy(), x3.numpy()
    assert y.numpy() == x2_val * x2_val + x2_val * x3_val
    assert grad_x2.numpy() == 2 * x2_val + x3_val
    assert grad_x3.numpy() == x2_val
    assert x2.grad.numpy() == 2
    assert x3.grad.numpy() == 1


@pytest.mark.parametrize("cube", [lambda x: x * x * x, lambda x: x ** 3,
                                  lambda x: ops.power_scalar(x, 3)])
def test_second_derivative_of_cube(cube):
    v = np.array([-1.5, 0.5, 2.0])
    x = ndl.Tensor(v)
    y = cube(x)
    y.backward()
    np.testing.assert_allclose(x.grad.numpy(), 3 * v ** 2)
    x.grad.backward()
    np.testing.assert_allclose(x.grad.numpy(), 6 * v)


def test_gradient_as_tuple():
    a, b = _t(2, 3), _t(2, 3)
    out = a * b
    g = out.op.gradient_as_tuple(ndl.Tensor(np.ones((2, 3))), out)
    assert isinstance(g, tuple) and len(g) == 2
    np.testing.assert_allclose(g[0].numpy(), b.numpy())
    np.testing.assert_allclose(g[1].numpy(), a.numpy())
    e = ops.exp(a)
    g1 = e.op.gradient_as_tuple(ndl.Tensor(np.ones((2, 3))), e)
    assert isinstance(g1, tuple) and len(g1) == 1
    np.testing.assert_allclose(g1[0].numpy(), np.exp(a.numpy()))


# ---- detach, data, constants ---------------------------------------------------------------------

def test_detach():
    x = _t(3)
    y = x * 2
    d = y.detach()
    assert d.op is None and d.requires_grad is False
    np.testing.assert_array_equal(d.numpy(), y.numpy())
    z = (d * x).sum()
    z.backward()
    np.testing.assert_allclose(x.grad.numpy(), y.numpy())


def test_data_getter_shares_storage_and_setter_replaces():
    x = _t(2, 3)
    d = x.data
    assert d is not x
    assert d.op is None and d.requires_grad is False
    assert d.realize_cached_data()._handle.ptr() == x.realize_cached_data()._handle.ptr()
    new = _t(4, 5)
    x.data = new
    assert x.shape == (4, 5)
    np.testing.assert_array_equal(x.numpy(), new.numpy())
    assert x.requires_grad is True


def test_requires_grad_false_inputs_give_constants():
    a = _t(3, requires_grad=False)
    b = _t(3, requires_grad=False)
    c = a * b + 1.0
    assert c.requires_grad is False
    assert c.op is None
    x = _t(3)
    y = (a * x).sum()
    assert y.requires_grad is True
    y.backward()
    np.testing.assert_allclose(x.grad.numpy(), a.numpy())


def test_no_grad_records_nothing():
    x = _t(3)
    with autograd.no_grad():
        y = x * 2 + 1
        assert not autograd.is_grad_enabled()
    assert autograd.is_grad_enabled()
    assert y.requires_grad is False and y.op is None
    np.testing.assert_allclose(y.numpy(), x.numpy() * 2 + 1)
    z = x * 2
    assert z.requires_grad is True


def test_no_grad_restores_on_exception():
    with pytest.raises(RuntimeError), autograd.no_grad():
        raise RuntimeError("boom")
    assert autograd.is_grad_enabled()


# ---- TensorTuple -------------------------------------------------------------------------------

def test_tensor_tuple():
    a, b = _t(2), _t(3)
    tt = ndl.make_tuple(a, b)
    assert isinstance(tt, ndl.TensorTuple)
    assert len(tt) == 2
    np.testing.assert_array_equal(tt[1].numpy(), b.numpy())
    parts = tt.tuple()
    assert isinstance(parts, tuple) and len(parts) == 2
    np.testing.assert_array_equal(parts[0].numpy(), a.numpy())
    d = tt.detach()
    assert isinstance(d, ndl.TensorTuple) and d.op is None
    assert len(d) == 2
    y = (tt[0].sum() + (tt[1] * 2.0).sum())
    y.backward()
    np.testing.assert_allclose(a.grad.numpy(), np.ones(2))
    np.testing.assert_allclose(b.grad.numpy(), 2 * np.ones(3))


# ---- memory --------------------------------------------------------------------------------------

def _train_steps(w, x, n):
    for _ in range(n):
        loss = ops.relu(x @ w).sum()
        loss.backward()
        w.data = w.data - 0.01 * w.grad.data
        w.grad = None


def test_tensor_counter_does_not_grow():
    w = _t(4, 3)
    x = _t(8, 4, requires_grad=False)
    _train_steps(w, x, 3)
    gc.collect()
    before = autograd.TENSOR_COUNTER
    _train_steps(w, x, 30)
    gc.collect()
    assert autograd.TENSOR_COUNTER - before <= 0


def test_tensor_counter_counts_creation_and_collection():
    gc.collect()
    before = autograd.TENSOR_COUNTER
    ts = [_t(2) for _ in range(10)]
    assert autograd.TENSOR_COUNTER == before + 10
    del ts
    gc.collect()
    assert autograd.TENSOR_COUNTER == before


# ---- modes ---------------------------------------------------------------------------------------

def test_lazy_mode_defers_compute():
    assert autograd.LAZY_MODE is False
    x = _t(3)
    with autograd.lazy_mode():
        assert autograd.LAZY_MODE is True
        y = (x * 2.0).exp()
        assert y.cached_data is None
    assert autograd.LAZY_MODE is False
    np.testing.assert_allclose(y.numpy(), np.exp(2 * x.numpy()))
    y.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), 2 * np.exp(2 * x.numpy()))


def test_fast_path_matches_default_backward():
    w1, w2 = _t(5, 4), _t(4, 2)
    x = _t(6, 5, requires_grad=False)

    def loss():
        return (ops.tanh(x @ w1) @ w2).exp().sum()

    loss().backward()
    g1, g2 = w1.grad.numpy(), w2.grad.numpy()
    loss().backward(create_graph=False)
    np.testing.assert_allclose(w1.grad.numpy(), g1, rtol=1e-12)
    np.testing.assert_allclose(w2.grad.numpy(), g2, rtol=1e-12)
    # the fast path builds no gradient graph
    assert w1.grad.op is None and w1.grad.requires_grad is False
