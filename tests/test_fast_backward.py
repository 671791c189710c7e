"""backward(create_graph=False) runs the reverse pass on NDArrays (each op's `gradient_nd`):
it must give the same leaf gradients as the default graph-building backward, for every op
that has a fast path, including broadcasting and batched shapes."""
import numpy as np
import pytest

import needle as ndl
from needle import ops

RNG = np.random.default_rng(7)


def _t(*shape, positive=False):
    x = RNG.standard_normal(shape)
    if positive:
        x = np.abs(x) + 0.5
    return ndl.Tensor(x.astype(np.float64))


CASES = {
    "add_broadcast": (lambda a, b: a + b, [(3, 4), (4,)], False),
    "add_scalar": (lambda a: a + 2.0, [(3, 4)], False),
    "mul_broadcast": (lambda a, b: a * b, [(2, 3, 4), (3, 1)], False),
    "mul_scalar": (lambda a: a * 3.0, [(3, 4)], False),
    "div": (lambda a, b: a / b, [(3, 4), (3, 4)], True),
    "div_scalar": (lambda a: a / 3.0, [(3, 4)], False),
    "power_scalar": (lambda a: a ** 1.5, [(3, 4)], True),
    "negate": (lambda a: -a, [(3, 4)], False),
    "exp": (lambda a: ops.exp(a), [(3, 4)], False),
    "log": (lambda a: ops.log(a), [(3, 4)], True),
    "relu": (lambda a: ops.relu(a), [(3, 4)], False),
    "tanh": (lambda a: ops.tanh(a), [(3, 4)], False),
    "sigmoid": (lambda a: ops.sigmoid(a), [(3, 4)], False),
    "matmul_batched": (lambda a, b: a @ b, [(2, 5, 4), (4, 3)], False),
    "matmul_bcast": (lambda a, b: a @ b, [(5, 4), (2, 2, 4, 3)], False),
    "summation_axes": (lambda a: ops.summation(a, (0, 2)), [(2, 3, 4)], False),
    "summation_keepdims": (lambda a: ops.summation(a, 1, keepdims=True), [(2, 3, 4)], False),
    "broadcast_to": (lambda a: ops.broadcast_to(a, (2, 3, 4)), [(3, 1)], False),
    "reshape": (lambda a: ops.reshape(a, (4, 6)), [(2, 3, 4)], False),
    "permute": (lambda a: ops.permute(a, (2, 0, 1)), [(2, 3, 4)], False),
    "transpose": (lambda a: ops.transpose(a), [(2, 3, 4)], False),
    "standardize_last": (lambda a: ops.standardize(a, -1), [(3, 5)], False),
    "standardize_batch": (lambda a: ops.standardize(a, (0, 2)), [(4, 3, 5)], False),
    "linear": (lambda a, w, b: ops.linear(a, w, b), [(2, 3, 4), (4, 5), (1, 5)], False),
    "linear_nobias": (lambda a, w: ops.linear(a, w), [(3, 4), (4, 5)], False),
    "layer_norm": (lambda a, w, b: ops.layer_norm(a, w, b), [(2, 3, 5), (5,), (5,)], False),
    "layer_norm_row_params": (lambda a, w, b: ops.layer_norm(a, w, b), [(3, 5), (1, 5), (1, 5)],
                              False),
    "layer_norm_plain": (lambda a: ops.layer_norm(a), [(3, 5)], False),
    "batch_norm": (lambda a, w, b: ops.batch_norm_train(a, w, b), [(6, 4), (4,), (4,)], False),
    "batch_norm_nchw": (lambda a, w, b: ops.batch_norm_train(a, w, b, (0, 2, 3)),
                        [(3, 4, 2, 5), (4,), (4,)], False),
    "logsoftmax": (lambda a: ops.logsoftmax(a), [(3, 5)], False),
    "logsumexp": (lambda a: ops.logsumexp(a, 1), [(3, 5)], False),
    "getitem_gather": (lambda a: a[np.array([0, 2, 2])], [(3, 4)], False),
    "stack": (lambda a, b: ops.stack([a, b], 1), [(3, 4), (3, 4)], False),
}


@pytest.mark.parametrize("name", list(CASES))
def test_fast_backward_matches_graph_backward(name):
    fn, shapes, positive = CASES[name]
    inputs = [_t(*s, positive=positive) for s in shapes]
    weights = None
    grads = []
    for create_graph in (True, False):
        xs = [ndl.Tensor(x.numpy()) for x in inputs]
        out = fn(*xs)
        if weights is None:
            weights = ndl.Tensor(RNG.standard_normal(out.shape))
        (out * weights).sum().backward(create_graph=create_graph)
        grads.append([x.grad.numpy() for x in xs])
    for slow, fast in zip(*grads):
        np.testing.assert_allclose(fast, slow, rtol=1e-10, atol=1e-12)


def test_fast_backward_sets_leaf_grads_as_constants():
    x = _t(3, 4)
    w = _t(4, 2)
    y = ops.tanh(x @ w).sum()
    y.backward(create_graph=False)
    assert x.grad.op is None and not x.grad.requires_grad
    assert w.grad.shape == (4, 2)


def test_softmax_cross_entropy_fast_matches_graph_and_torch():
    torch = pytest.importorskip("torch")
    z = RNG.standard_normal((6, 5))
    y = np.array([0, 4, 2, 2, 1, 3])
    out = []
    for create_graph in (True, False):
        zt = ndl.Tensor(z)
        ops.softmax_cross_entropy(zt, ndl.Tensor(y, requires_grad=False)).backward(
            create_graph=create_graph)
        out.append(zt.grad.numpy())
    tz = torch.tensor(z, requires_grad=True)
    torch.nn.functional.cross_entropy(tz, torch.tensor(y)).backward()
    np.testing.assert_allclose(out[0], tz.grad.numpy(), rtol=1e-10)
    np.testing.assert_allclose(out[1], tz.grad.numpy(), rtol=1e-10)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_recurrent_layer_backward_recomputes_dropped_gates(kind):
    """The LSTM/GRU layer ops keep their gates for the backward; without them (an op computed
    elsewhere, e.g. lazily) the backward recomputes them and gives the same gradients."""
    rng = np.random.default_rng(0)
    T, B, H = 4, 3, 5
    G = 4 if kind == "lstm" else 3
    arrays = [rng.standard_normal((T, B, G * H)), rng.standard_normal((H, G * H)) * 0.3]
    arrays += [rng.standard_normal(G * H)] if kind == "gru" else []
    arrays += [rng.standard_normal((B, H))] * (2 if kind == "lstm" else 1)
    layer = ops.lstm_layer if kind == "lstm" else ops.gru_layer
    grads = []
    for drop in (False, True):
        xs = [ndl.Tensor(a) for a in arrays]
        out = layer(*xs)
        if drop:
            out.op.__init__()  # forget what the forward kept
        (out * out).sum().backward(create_graph=False)
        grads.append([x.grad.numpy() for x in xs])
    for a, b in zip(*grads):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
