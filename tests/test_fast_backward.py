"""backward(create_graph=False) runs each op's one gradient rule on NDArrays: it must give the
same leaf gradients as the default graph-building backward, for every op, including
broadcasting and batched shapes. Fused ops run their fast kernel on both paths, so their kernel
(`backward_arrays`) is also checked against their composed rule (`gradient_composed`)."""
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
    "relu_grad": (lambda a: ops.relu_grad(a * 2.0, ops.relu(a).detach()), [(3, 4)], False),
    "tanh_grad": (lambda g, y: ops.tanh_grad(g, ops.tanh(y)), [(3, 4), (3, 4)], False),
    "tanh": (lambda a: ops.tanh(a), [(3, 4)], False),
    "erf": (lambda a: ops.erf(a), [(3, 4)], False),
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
    "softmax_cross_entropy": (lambda z: ops.softmax_cross_entropy(
        z, ndl.Tensor(np.array([1, 0, 4]), requires_grad=False)), [(3, 5)], False),
    "getitem_gather": (lambda a: a[np.array([0, 2, 2])], [(3, 4)], False),
    "getitem_basic": (lambda a: a[1:, ::2], [(3, 4)], False),
    "scatter_add": (lambda a: ops.scatter_add(a, (np.array([0, 2, 0]),), (4, 5)), [(3, 5)],
                    False),
    "stack": (lambda a, b: ops.stack([a, b], 1), [(3, 4), (3, 4)], False),
    "concatenate": (lambda a, b, c: ops.concatenate([a, b, c], 1), [(3, 2), (3, 4), (3, 1)],
                    False),
    "split": (lambda a: ops.split(a, 1)[2], [(3, 4)], False),
    "make_tuple": (lambda a, b: ops.make_tuple(a, b)[1] * ops.make_tuple(a, b)[0],
                   [(3, 4), (3, 4)], False),
    "power": (lambda a, b: ops.power(a, b), [(3, 4), (3, 4)], True),
    "scalar_power": (lambda a: 2.0 ** a, [(3, 4)], False),
    "maximum": (lambda a, b: ops.maximum(a, b), [(3, 4), (4,)], False),
    "sqrt": (lambda a: ops.sqrt(a), [(3, 4)], True),
    "max_axes": (lambda a: ops.max(a, (1,)), [(3, 4, 2)], False),
    "max_keepdims": (lambda a: ops.max(a, 0, keepdims=True), [(3, 4)], False),
    "softmax": (lambda a: ops.softmax(a, -1), [(3, 5)], False),
    "flip": (lambda a: ops.flip(a, (0, 1)), [(3, 4)], False),
    "pad": (lambda a: ops.pad(a, ((1, 0), (0, 2))), [(3, 4)], False),
    "dilate": (lambda a: ops.dilate(a, (0, 1), 1), [(3, 4)], False),
    "undilate": (lambda a: ops.undilate(a, (1,), 1), [(3, 4)], False),
    "to_device": (lambda a: ops.to_device(a, ndl.cuda.simulated()), [(3, 4)], False),
    "conv": (lambda a, w: ops.conv(a, w, stride=1, padding=1), [(2, 5, 5, 3), (3, 3, 3, 4)],
             False),
    "conv_stride2": (lambda a, w: ops.conv(a, w, stride=2, padding=1),
                     [(2, 6, 6, 3), (3, 3, 3, 4)], False),
    "max_pool2d": (lambda a: ops.max_pool2d(a, 2), [(2, 3, 4, 4)], False),
    "avg_pool2d": (lambda a: ops.avg_pool2d(a, 3, 1, 1), [(2, 3, 4, 4)], False),
    "attention": (lambda q, k, v: ops.scaled_dot_product_attention(q, k, v),
                  [(2, 5, 4), (2, 6, 4), (2, 6, 3)], False),
    "attention_causal": (lambda q, k, v: ops.scaled_dot_product_attention(q, k, v,
                                                                          is_causal=True),
                         [(2, 5, 4), (2, 5, 4), (2, 5, 3)], False),
    "rnn_layer": (lambda x, w, h: ops.rnn_layer(x, w, h)[0], [(4, 2, 3), (3, 3), (2, 3)], False),
    "lstm_layer": (lambda x, w, h, c: ops.lstm_layer(x, w, h, c)[0],
                   [(4, 2, 12), (3, 12), (2, 3), (2, 3)], False),
    "gru_layer": (lambda x, w, b, h: ops.gru_layer(x, w, b, h)[0],
                  [(4, 2, 9), (3, 9), (9,), (2, 3)], False),
    "conv_nchw": (lambda a, w, b: ops.conv_nchw(a, w, b, stride=2, padding=1),
                  [(2, 3, 6, 6), (3, 3, 3, 4), (4,)], False),
    "embedding": (lambda w: ops.embedding(w, np.array([[1, 4, 1], [0, 4, 4]])) ** 2,
                  [(5, 3)], False),
}

# Ops reached only as the gradient of another op (their own rule runs in a second backward,
# which `test_second_backward_fast_matches_graph` covers) or abstract bases.
NOT_A_FORWARD_CASE = {"FusedOp", "FusedTupleOp", "FusedBackward", "AvgPool2dAdjoint",
                      "ScatterFlat", "GatherFlat", "TupleGetItem", "MakeTensorTuple",
                      "EmbeddingScatter"}


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
        res = layer(*xs)
        if drop:
            res.op.__init__()  # forget what the forward kept
        out = res[0]
        (out * out).sum().backward(create_graph=False)
        grads.append([x.grad.numpy() for x in xs])
    for a, b in zip(*grads):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def _op_types(out):
    return {type(n.op).__name__ for n in ndl.autograd.find_topo_sort([out]) if n.op is not None}


def test_every_op_has_a_case():
    seen = set()
    for fn, shapes, positive in CASES.values():
        seen |= _op_types(fn(*[_t(*s, positive=positive) for s in shapes]))
    op_classes = {n for n in ops.__all__ if isinstance(getattr(ops, n), type)
                  and issubclass(getattr(ops, n), ndl.autograd.Op)}
    missing = op_classes - seen - NOT_A_FORWARD_CASE
    assert not missing, f"ops with no case comparing the two backward paths: {sorted(missing)}"


@pytest.mark.parametrize("name", list(CASES))
def test_fused_kernel_matches_composed_rule(name):
    fn, shapes, positive = CASES[name]
    out = fn(*[_t(*s, positive=positive) for s in shapes])
    fused = [n for n in ndl.autograd.find_topo_sort([out])
             if isinstance(n.op, (ops.FusedOp, ops.FusedTupleOp))]
    for node in fused:
        data = node.realize_cached_data()
        if isinstance(data, tuple):
            g = tuple(ndl.Tensor(RNG.standard_normal(d.shape), requires_grad=False)
                      for d in data)
            g_nd = tuple(t.realize_cached_data() for t in g)
            g = ops.make_tuple(*g)
        else:
            g = ndl.Tensor(RNG.standard_normal(data.shape), requires_grad=False)
            g_nd = g.realize_cached_data()
        needs = node.needs_input_grad
        values = tuple(x.realize_cached_data() for x in node.inputs)
        fast = node.op.backward_arrays(g_nd, values, needs)
        composed = node.op.gradient_composed(g, *node.inputs)
        for f, c, n in zip(fast, composed, needs):
            if n:
                np.testing.assert_allclose(f.numpy(), c.numpy(), rtol=1e-9, atol=1e-11,
                                           err_msg=f"{node.op!r}")


@pytest.mark.parametrize("name", ["linear", "layer_norm", "batch_norm", "conv_stride2",
                                  "max_pool2d", "avg_pool2d", "attention", "lstm_layer",
                                  "logsumexp", "mul_broadcast", "stack"])
def test_second_backward_fast_matches_graph(name):
    """A gradient graph (made by the default backward) backpropagated again, on both paths."""
    fn, shapes, positive = CASES[name]
    inputs = [_t(*s, positive=positive) for s in shapes]
    weights, grads = None, []
    for create_graph in (True, False):
        xs = [ndl.Tensor(x.numpy()) for x in inputs]
        out = fn(*xs)
        if weights is None:
            weights = ndl.Tensor(RNG.standard_normal(out.shape))
        (first,) = ndl.autograd.gradients((out * out * weights).sum(), xs[:1])
        (first * first).sum().backward(create_graph=create_graph)
        grads.append([None if x.grad is None else x.grad.numpy() for x in xs])
    for slow, fast in zip(*grads):
        if slow is not None:
            np.testing.assert_allclose(fast, slow, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("uses,shape", [(2, (3, 4)), (7, (8, 8)), (40, (4,)), (5, (300, 300))])
def test_a_node_used_many_times_sums_its_partials_once(uses, shape):
    """A weight used at every step of a chain gets one partial per use; the fast backward
    sums them once (`Device.add_n`: stacked when small, in place when large) and must give
    the graph backward's gradient."""
    x0 = RNG.standard_normal(shape).astype(np.float32)
    w0 = (RNG.standard_normal(shape) * 0.5).astype(np.float32)
    grads = []
    for create_graph in (True, False):
        x, w = ndl.Tensor(x0), ndl.Tensor(w0)
        y = x
        for _ in range(uses):
            y = ops.tanh(y * w + w)
        y.sum().backward(create_graph=create_graph)
        grads.append((x.grad.numpy(), w.grad.numpy()))
    for a, b in zip(*grads):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_add_n_equals_sequential_sums():
    dev = ndl.cpu()
    for shapes, dtype in [([(8, 8)] * 6, "float32"), ([(300, 300)] * 4, "float32"),
                          ([(3, 4), (4,), (3, 4)], "float32"), ([(5,)] * 4, "float64")]:
        arrays = [RNG.standard_normal(s).astype(dtype) for s in shapes]
        got = dev.add_n([ndl.NDArray(a) for a in arrays]).numpy()
        want = arrays[0]
        for a in arrays[1:]:
            want = want + a
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    mixed = [ndl.NDArray(np.ones(3, np.float32)), ndl.NDArray(np.ones(3, np.float64)),
             ndl.NDArray(np.ones(3, np.float32))]
    assert dev.add_n(mixed).dtype == np.float64  # promoted as `+` promotes
