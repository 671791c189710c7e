"""Gradients of gradients, op by op, against PyTorch's double backward (float64).

For an op f with inputs x_i, output weights w and probe vectors u_i, we back-propagate
s = sum_i <u_i, d<w, f>/dx_i> through needle's gradient graph (which is itself made of ops)
and compare d s / d x_i with torch.autograd.grad(create_graph=True) followed by backward.
Also: the course's flat-perturbation gradient checker on float64 data.
"""
import numpy as np
import pytest
import torch
from test_ops import randn

import needle as ndl
from needle import ops


def check_second_order(nfn, tfn, *inputs, rtol=1e-8, atol=1e-10):
    ts = [ndl.Tensor(x) for x in inputs]
    out = nfn(*ts)
    w = np.asarray(np.random.randn(*out.shape))
    us = [np.random.randn(*x.shape) for x in inputs]
    out.backward(ndl.Tensor(w, requires_grad=False))
    firsts = [t.grad for t in ts]
    for t in ts:
        t.grad = None  # an input that s does not reach keeps None (zero second derivative)
    s = None
    for g, u in zip(firsts, us):
        term = ops.summation(g * ndl.Tensor(u, requires_grad=False))
        s = term if s is None else s + term
    s.backward()

    tt = [torch.tensor(x, requires_grad=True) for x in inputs]
    tout = tfn(*tt)
    tg = torch.autograd.grad(tout, tt, torch.tensor(w), create_graph=True, allow_unused=True)
    ts_ = sum((g * torch.tensor(u)).sum() for g, u in zip(tg, us) if g is not None)
    if not ts_.requires_grad:  # a linear op: all second derivatives vanish
        expected = [np.zeros_like(x) for x in inputs]
    else:
        sec = torch.autograd.grad(ts_, tt, allow_unused=True)
        expected = [np.zeros_like(x) if g is None else g.numpy() for g, x in zip(sec, inputs)]
    for i, (t, e) in enumerate(zip(ts, expected)):
        got = np.zeros_like(e) if t.grad is None else t.grad.numpy()
        np.testing.assert_allclose(got, e, rtol=rtol, atol=atol,
                                   err_msg=f"second-order gradient of input {i}")


UNARY = [
    ("exp", ops.exp, torch.exp, {}),
    ("log", ops.log, torch.log, {"positive": True}),
    ("tanh", ops.tanh, torch.tanh, {}),
    ("sigmoid", ops.sigmoid, torch.sigmoid, {}),
    ("relu", ops.relu, torch.relu, {"away_from_zero": True}),
    ("negate", ops.negate, torch.neg, {}),
    ("power_scalar_3", lambda t: ops.power_scalar(t, 3), lambda t: t ** 3, {}),
    ("power_scalar_-1.5", lambda t: ops.power_scalar(t, -1.5), lambda t: t ** -1.5,
     {"positive": True}),
    ("divide_scalar", lambda t: ops.divide_scalar(t, 3.0), lambda t: t / 3.0, {}),
    ("logsumexp", lambda t: ops.logsumexp(t, 1), lambda t: torch.logsumexp(t, 1), {}),
    ("logsoftmax", ops.logsoftmax, lambda t: torch.log_softmax(t, 1), {}),
    ("max", lambda t: ops.max(t, 1), lambda t: t.amax(1), {}),
    ("mean", lambda t: ops.mean(t, 0), lambda t: t.mean(0), {}),
    ("broadcast_sum", lambda t: ops.summation(ops.broadcast_to(t, (2, 3, 4)) ** 2, (0, 2)),
     lambda t: (t.broadcast_to((2, 3, 4)) ** 2).sum((0, 2)), {}),
    ("transpose_reshape", lambda t: ops.reshape(ops.transpose(t), (12,)) ** 2,
     lambda t: t.transpose(0, 1).reshape(12) ** 2, {}),
]


@pytest.mark.parametrize("name, nfn, tfn, dom", UNARY, ids=[u[0] for u in UNARY])
def test_unary_second_order(name, nfn, tfn, dom):
    check_second_order(nfn, tfn, randn(3, 4, **dom))


BINARY = [
    ("multiply", ops.multiply, torch.mul, {}, {}),
    ("divide", ops.divide, torch.div, {}, {"away_from_zero": True}),
    ("power", ops.power, torch.pow, {"positive": True}, {}),
    ("matmul", ops.matmul, torch.matmul, {}, {}),
    ("tanh_matmul", lambda a, b: ops.tanh(a @ b), lambda a, b: torch.tanh(a @ b), {}, {}),
]


@pytest.mark.parametrize("name, nfn, tfn, da, db", BINARY, ids=[b[0] for b in BINARY])
def test_binary_second_order(name, nfn, tfn, da, db):
    if "matmul" in name:
        a, b = randn(3, 4, **da), randn(4, 2, **db)
    else:
        a, b = randn(3, 4, **da), randn(3, 4, **db)
    check_second_order(nfn, tfn, a, b)


def test_stack_split_second_order():
    check_second_order(lambda a, b: ops.stack([a * a, b], 1) ** 2,
                       lambda a, b: torch.stack([a * a, b], 1) ** 2, randn(2, 3), randn(2, 3))


# ---- the course's gradient checker: perturb stored data through .flat ----------------------

def _course_gradient_check(f, *args, eps=1e-4, tol=1e-6):
    out = f(*args)
    numerical = []
    for a in args:
        data = a.realize_cached_data()
        g = np.zeros(a.shape)
        for j in range(data.size):
            data.flat[j] += eps
            f1 = float(f(*args).numpy().sum())
            data.flat[j] -= 2 * eps
            f2 = float(f(*args).numpy().sum())
            data.flat[j] += eps
            g.flat[j] = (f1 - f2) / (2 * eps)
        numerical.append(g)
    grads = out.op.gradient_as_tuple(ndl.Tensor(np.ones(out.shape)), out)
    for g, n in zip(grads, numerical):
        assert np.linalg.norm(g.numpy() - n) < tol, (g.numpy(), n)


@pytest.mark.parametrize(
    "f, shapes",
    [
        (ops.divide, [(5, 4), (5, 4)]),
        (lambda a: ops.divide_scalar(a, 3.2), [(5, 4)]),
        (ops.matmul, [(5, 4), (4, 3)]),
        (ops.matmul, [(6, 5, 4), (4, 3)]),
        (lambda a: ops.summation(a, (1,)), [(5, 4)]),
        (lambda a: ops.broadcast_to(a, (3, 3, 3)), [(3, 1)]),
        (lambda a: ops.broadcast_to(a, (3, 3, 3)), [()]),
        (lambda a: ops.reshape(a, (4, 5)), [(5, 4)]),
        (lambda a: ops.transpose(a, (0, 2)), [(3, 5, 4)]),
        (ops.negate, [(2, 3)]),
        (lambda a: ops.logsumexp(a, (1, 2)), [(3, 4, 2)]),
        (lambda a: ops.logsumexp(a, None), [(3, 4)]),
    ],
)
def test_course_gradient_checker_on_float64(f, shapes):
    rng = np.random.default_rng(5)
    args = [ndl.Tensor(rng.standard_normal(s) + (2.0 if f is ops.divide else 0.0))
            for s in shapes]
    _course_gradient_check(f, *args)


def _torch_bn_train(x, w, b, axes):
    mean = x.mean(dim=axes, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=axes, keepdim=True)
    shape = [1 if i in axes else n for i, n in enumerate(x.shape)]
    return (x - mean) / torch.sqrt(var + 1e-5) * w.reshape(shape) + b.reshape(shape)


@pytest.mark.parametrize("kind", ["layer_norm", "batch_norm", "batch_norm_nchw"])
def test_fused_norm_first_and_second_order_vs_torch(kind):
    """The fused LayerNorm / BatchNorm ops: outputs and first derivatives (both backward
    paths) against torch, then second derivatives of x, weight and bias."""
    rng = np.random.default_rng(3)
    if kind == "layer_norm":
        x = rng.standard_normal((2, 3, 5))
        nfn = lambda a, w, b: ops.layer_norm(a, w, b)  # noqa: E731
        tfn = lambda a, w, b: torch.nn.functional.layer_norm(a, (5,), w, b)  # noqa: E731
        d = 5
    else:
        axes = (0,) if kind == "batch_norm" else (0, 2, 3)
        x = rng.standard_normal((6, 4) if kind == "batch_norm" else (3, 4, 2, 3))
        nfn = lambda a, w, b: ops.batch_norm_train(a, w, b, axes)  # noqa: E731
        tfn = lambda a, w, b: _torch_bn_train(a, w, b, axes)  # noqa: E731
        d = 4
    w, b = rng.standard_normal(d), rng.standard_normal(d)
    g = rng.standard_normal(x.shape)
    tt = [torch.tensor(a, requires_grad=True) for a in (x, w, b)]
    tfn(*tt).backward(torch.tensor(g))
    for create_graph in (True, False):
        ts = [ndl.Tensor(a) for a in (x, w, b)]
        out = nfn(*ts)
        np.testing.assert_allclose(out.numpy(), tfn(*[torch.tensor(a) for a in (x, w, b)])
                                   .numpy(), rtol=1e-10, atol=1e-10)
        out.backward(ndl.Tensor(g, requires_grad=False), create_graph=create_graph)
        for t, ref in zip(ts, tt):
            np.testing.assert_allclose(t.grad.numpy(), ref.grad.numpy(), rtol=1e-8,
                                       atol=1e-10)
    check_second_order(nfn, tfn, x, w, b, rtol=1e-7, atol=1e-9)


def test_linear_op_second_order_vs_torch():
    rng = np.random.default_rng(5)
    x, w, b = rng.standard_normal((2, 3, 4)), rng.standard_normal((4, 5)), \
        rng.standard_normal((1, 5))
    check_second_order(lambda a, c, d: ops.linear(a, c, d) ** 2,
                       lambda a, c, d: (a @ c + d) ** 2, x, w, b)


def test_batch_norm_train_updates_running_stats_once():
    x = np.random.default_rng(0).standard_normal((8, 3)).astype(np.float32)
    rm = ndl.Tensor(np.zeros(3, np.float32), requires_grad=False)
    rv = ndl.Tensor(np.ones(3, np.float32), requires_grad=False)
    out = ops.batch_norm_train(ndl.Tensor(x), axes=(0,), running_mean=rm, running_var=rv,
                               momentum=0.25)
    out.sum().backward()
    np.testing.assert_allclose(rm.numpy(), 0.25 * x.mean(0), rtol=1e-6)
    np.testing.assert_allclose(rv.numpy(), 0.75 + 0.25 * x.var(0), rtol=1e-6)


@pytest.mark.parametrize("kind", ["linear", "layer_norm", "conv"])
def test_second_order_without_create_graph(kind):
    """The outer backward of a second derivative may itself record nothing
    (`create_graph=False`): the fused ops' composed rules are still recorded to be
    differentiated, so the result equals the recording outer backward's."""
    rng = np.random.default_rng(11)
    if kind == "linear":
        shapes = [(3, 4), (4, 5), (1, 5)]
        fn = lambda a, w, b: ops.linear(a, w, b) ** 2  # noqa: E731
    elif kind == "layer_norm":
        shapes = [(3, 6), (6,), (6,)]
        fn = lambda a, w, b: ops.layer_norm(a, w, b) ** 3  # noqa: E731
    else:
        shapes = [(2, 5, 5, 3), (3, 3, 3, 2)]
        fn = lambda a, w: ops.conv(a, w, stride=1, padding=1) ** 2  # noqa: E731
    arrays = [rng.standard_normal(s) for s in shapes]
    results = []
    for create_graph in (True, False):
        ts = [ndl.Tensor(a) for a in arrays]
        out = fn(*ts).sum()
        firsts = ndl.autograd.gradients(out, ts)
        s = sum((ops.summation(g * g) for g in firsts[1:]), ops.summation(firsts[0] * firsts[0]))
        seconds = ndl.autograd.gradients(s, ts, create_graph=create_graph)
        results.append([g.numpy() for g in seconds])
    for a, b in zip(*results):
        assert np.abs(a).max() > 0
        np.testing.assert_allclose(b, a, rtol=1e-10, atol=1e-12)
