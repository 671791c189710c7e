"""needle.functional: gradcheck (central differences), grad, vjp, jvp (forward mode), hvp.

Oracles: central differences, PyTorch's torch.autograd.functional, and the identity
<J v, u> = <v, J^T u> tying forward mode to reverse mode.
"""
import numpy as np
import pytest
import torch

import needle as ndl
from needle import functional as F
from needle import ops

RNG = np.random.default_rng(3)


def _t(*shape, positive=False):
    x = RNG.standard_normal(shape)
    return ndl.Tensor(np.abs(x) + 0.5 if positive else x)


def _np(x):
    return x.numpy() if isinstance(x, ndl.Tensor) else np.asarray(x)


def _as_tuple(x):
    if isinstance(x, ndl.TensorTuple):
        return x.tuple()
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


# ---- gradcheck -----------------------------------------------------------------------------------

GRADCHECK_CASES = [
    ("add", lambda a, b: a + b, [(3, 4), (3, 4)], {}),
    ("multiply", lambda a, b: a * b, [(3, 4), (3, 4)], {}),
    ("divide", ops.divide, [(3, 4), (3, 4)], {"positive": True}),
    ("power", ops.power, [(3, 4), (3, 4)], {"positive": True}),
    ("power_scalar", lambda a: ops.power_scalar(a, -1.5), [(3, 4)], {"positive": True}),
    ("exp", ops.exp, [(3, 4)], {}),
    ("log", ops.log, [(3, 4)], {"positive": True}),
    ("tanh", ops.tanh, [(3, 4)], {}),
    ("sigmoid", ops.sigmoid, [(3, 4)], {}),
    ("matmul", ops.matmul, [(2, 3, 4), (4, 5)], {}),
    ("summation", lambda a: ops.summation(a, (0, 2)), [(2, 3, 4)], {}),
    ("mean", lambda a: ops.mean(a, 1), [(2, 3, 4)], {}),
    ("max", lambda a: ops.max(a, 1), [(3, 5)], {}),
    ("broadcast_to", lambda a: ops.broadcast_to(a, (2, 3, 4)), [(3, 1)], {}),
    ("reshape", lambda a: ops.reshape(a, (6, 2)), [(3, 4)], {}),
    ("transpose", lambda a: ops.transpose(a, (0, 2)), [(2, 3, 4)], {}),
    ("permute", lambda a: ops.permute(a, (2, 0, 1)), [(2, 3, 4)], {}),
    ("logsumexp", lambda a: ops.logsumexp(a, 1), [(3, 5)], {}),
    ("logsoftmax", ops.logsoftmax, [(3, 5)], {}),
    ("stack", lambda a, b: ops.stack([a, b], 1), [(3, 4), (3, 4)], {}),
    ("split", lambda a: ops.split(a, 1)[2], [(3, 4)], {}),
    ("flip", lambda a: ops.flip(a, (0, 1)), [(3, 4)], {}),
    ("pad", lambda a: ops.pad(a, ((1, 0), (2, 1))), [(3, 4)], {}),
    ("dilate", lambda a: ops.dilate(a, (0, 1), 1), [(3, 4)], {}),
    ("undilate", lambda a: ops.undilate(a, (1,), 1), [(3, 4)], {}),
    ("getitem", lambda a: a[1:3, ::2], [(3, 4)], {}),
    ("mlp", lambda x, w: ops.logsumexp(ops.relu(x @ w) * 2.0, 1), [(4, 3), (3, 5)], {}),
]


@pytest.mark.parametrize("name, fn, shapes, dom", GRADCHECK_CASES,
                         ids=[c[0] for c in GRADCHECK_CASES])
def test_gradcheck_every_op(name, fn, shapes, dom):
    inputs = [_t(*s, **dom) for s in shapes]
    if name == "max":  # keep the maximum of each row well separated from the rest
        x = inputs[0].numpy()
        x[np.arange(3), np.argmax(x, 1)] += 1.0
        inputs = [ndl.Tensor(x)]
    assert F.gradcheck(fn, *inputs)


class _WrongExp(ndl.autograd.TensorOp):
    """exp with a gradient that is off by a factor of two."""

    def compute(self, a):
        return a.exp()

    def gradient(self, out_grad, node):
        return out_grad * node * 2.0


def test_gradcheck_catches_a_wrong_gradient():
    x = _t(3, 2)
    with pytest.raises(AssertionError) as info:
        F.gradcheck(lambda a: _WrongExp()(a), x)
    assert "gradcheck" in str(info.value) and "(3, 2)" in str(info.value)
    assert F.gradcheck(lambda a: _WrongExp()(a), x, raise_exception=False) is False


def test_gradcheck_message_has_line_breaks():
    with pytest.raises(AssertionError) as info:
        F.gradcheck(lambda a: _WrongExp()(a), _t(2))
    assert "\\n" not in str(info.value)
    assert "\n" in str(info.value)


def test_gradcheck_accepts_float32_with_loose_tolerance():
    x = ndl.Tensor(RNG.standard_normal((3, 4)), dtype="float32")
    assert F.gradcheck(ops.tanh, x, eps=1e-2, atol=1e-2, rtol=1e-2)


# ---- grad / vjp ---------------------------------------------------------------------------------

def test_grad_matches_backward():
    x = _t(3, 4)

    def f(a):
        return (ops.tanh(a) * a).sum()

    g = F.grad(f)(x)
    g = _as_tuple(g)[0]
    y = f(x)
    y.backward()
    np.testing.assert_allclose(_np(g), x.grad.numpy(), rtol=1e-12)


def test_vjp_vs_torch():
    x, w = RNG.standard_normal((4, 3)), RNG.standard_normal((3, 2))
    v = RNG.standard_normal((4, 2))

    def f(a, b):
        return ops.tanh(a @ b)

    out, vjp_fn = F.vjp(f, ndl.Tensor(x), ndl.Tensor(w))
    got = _as_tuple(vjp_fn(ndl.Tensor(v)))
    t_out, t_vjp = torch.autograd.functional.vjp(
        lambda a, b: torch.tanh(a @ b), (torch.tensor(x), torch.tensor(w)), torch.tensor(v))
    np.testing.assert_allclose(_np(out), t_out.numpy(), rtol=1e-12)
    assert len(got) == 2
    for g, e in zip(got, t_vjp):
        np.testing.assert_allclose(_np(g), e.numpy(), rtol=1e-10, atol=1e-12)


# ---- jvp: forward mode ---------------------------------------------------------------------------

JVP_CASES = [
    ("tanh_matmul", lambda a, b: ops.tanh(a @ b), lambda a, b: torch.tanh(a @ b),
     [(4, 3), (3, 2)]),
    ("logsoftmax", lambda a: ops.logsoftmax(a * a), lambda a: torch.log_softmax(a * a, 1),
     [(3, 5)]),
    ("reduce_broadcast", lambda a: ops.summation(ops.exp(a) / (a * a + 1.0), 0),
     lambda a: (torch.exp(a) / (a * a + 1.0)).sum(0), [(3, 4)]),
    ("sigmoid_transpose", lambda a: ops.transpose(ops.sigmoid(a)) ** 2,
     lambda a: torch.sigmoid(a).transpose(0, 1) ** 2, [(3, 4)]),
]


@pytest.mark.parametrize("name, nfn, tfn, shapes", JVP_CASES, ids=[c[0] for c in JVP_CASES])
def test_jvp_vs_torch_and_reverse_mode(name, nfn, tfn, shapes):
    xs = [RNG.standard_normal(s) for s in shapes]
    vs = [RNG.standard_normal(s) for s in shapes]
    out, jv = F.jvp(nfn, tuple(ndl.Tensor(x) for x in xs), tuple(ndl.Tensor(v) for v in vs))
    t_out, t_jv = torch.autograd.functional.jvp(
        tfn, tuple(torch.tensor(x) for x in xs), tuple(torch.tensor(v) for v in vs))
    np.testing.assert_allclose(_np(out), t_out.numpy(), rtol=1e-12)
    np.testing.assert_allclose(_np(jv), t_jv.numpy(), rtol=1e-9, atol=1e-12)
    # <J v, u> == <v, J^T u>
    u = RNG.standard_normal(t_out.shape)
    _, vjp_fn = F.vjp(nfn, *(ndl.Tensor(x) for x in xs))
    jtu = _as_tuple(vjp_fn(ndl.Tensor(u)))
    lhs = float(np.sum(_np(jv) * u))
    rhs = float(sum(np.sum(_np(g) * v) for g, v in zip(jtu, vs)))
    assert lhs == pytest.approx(rhs, rel=1e-9, abs=1e-12)


# ---- hvp: second order ---------------------------------------------------------------------------

def test_hvp_of_two_layer_tanh_mlp_vs_torch():
    x = RNG.standard_normal((5, 4))
    y = RNG.standard_normal((5, 2))
    w1, w2 = RNG.standard_normal((4, 6)) * 0.5, RNG.standard_normal((6, 2)) * 0.5
    v1, v2 = RNG.standard_normal((4, 6)), RNG.standard_normal((6, 2))
    xn, yn = ndl.Tensor(x, requires_grad=False), ndl.Tensor(y, requires_grad=False)
    xt, yt = torch.tensor(x), torch.tensor(y)

    def loss(a, b):
        return ops.summation((ops.tanh(xn @ a) @ b - yn) ** 2) / 5.0

    def tloss(a, b):
        return ((torch.tanh(xt @ a) @ b - yt) ** 2).sum() / 5.0

    out, hv = F.hvp(loss, (ndl.Tensor(w1), ndl.Tensor(w2)), (ndl.Tensor(v1), ndl.Tensor(v2)))
    t_out, t_hv = torch.autograd.functional.hvp(
        tloss, (torch.tensor(w1), torch.tensor(w2)), (torch.tensor(v1), torch.tensor(v2)))
    np.testing.assert_allclose(_np(out).reshape(()), t_out.numpy(), rtol=1e-12)
    hv = _as_tuple(hv)
    assert len(hv) == 2
    for g, e in zip(hv, t_hv):
        np.testing.assert_allclose(_np(g), e.numpy(), rtol=1e-9, atol=1e-12)


def test_hvp_by_hand_equals_functional():
    """The same product built from backward() alone: grad, dot with v, backward again."""
    w = _t(3, 3)
    v = RNG.standard_normal((3, 3))
    x = ndl.Tensor(RNG.standard_normal((4, 3)), requires_grad=False)

    def f(a):
        return ops.summation(ops.tanh(x @ a) ** 2)

    f(w).backward()
    g = w.grad
    w.grad = None
    ops.summation(g * ndl.Tensor(v, requires_grad=False)).backward()
    by_hand = w.grad.numpy()
    _, hv = F.hvp(f, (w,), (ndl.Tensor(v),))
    np.testing.assert_allclose(_np(_as_tuple(hv)[0]), by_hand, rtol=1e-10, atol=1e-12)
