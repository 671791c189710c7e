"""The graph backward frees itself by reference counting (no garbage collector needed), and
anomaly detection on the fast backward names the op whose gradient went non-finite."""
import gc

import numpy as np
import pytest
import torch

import needle as ndl
from needle import autograd, nn, ops, optim
from needle.data import DataLoader, NDArrayDataset


@pytest.fixture
def no_collector():
    """The cyclic garbage collector off for the test: only reference counting frees."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _course_loop(steps, create_graph=True):
    """A hw2-style loop (DataLoader, Sequential with residual/batch norm/dropout, SGD,
    `loss.backward()`); returns the live Tensor count after every step."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((256, 20)).astype("float32")
    y = rng.integers(0, 5, 256).astype("uint8")
    loader = DataLoader(NDArrayDataset(X, y), batch_size=32, shuffle=True)
    ndl.init.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(20, 32), nn.ReLU(),
        nn.Residual(nn.Sequential(nn.Linear(32, 32), nn.BatchNorm1d(32), nn.ReLU())),
        nn.Dropout(0.1), nn.Linear(32, 5))
    opt = optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = nn.SoftmaxLoss()
    counts = []
    while len(counts) < steps:
        for xb, yb in loader:
            opt.reset_grad()
            loss = loss_fn(model(xb), yb)
            loss.backward(create_graph=create_graph)
            opt.step()
            counts.append(autograd.TENSOR_COUNTER)
            if len(counts) == steps:
                break
    return counts


@pytest.mark.parametrize("create_graph", [True, False])
def test_course_loop_live_tensors_stay_flat_without_gc(no_collector, create_graph):
    counts = _course_loop(120, create_graph)
    # After the first epoch (optimizer state made), every step ends with the same live set.
    assert max(counts[16:]) == min(counts[16:]), counts[::8]


def test_input_batch_that_requires_grad_is_freed_with_its_step(no_collector):
    """The course's `Tensor(batch)` requires a gradient by default, so `backward()` gives the
    batch a `.grad` graph. That graph reaches the leaves only weakly: a conv/batch-norm loop
    leaves no reference cycle behind (with cycles, each step's activations stayed alive until
    a collection: memory grew and steps slowed ~6x with the collector off)."""
    rng = np.random.default_rng(0)
    ndl.init.manual_seed(0)
    model = nn.Sequential(nn.Conv(1, 8, 3), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Conv(8, 16, 3, stride=2), nn.BatchNorm2d(16), nn.ReLU(),
                          nn.Flatten(), nn.Linear(16 * 4 * 4, 10))
    opt = optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    counts = []
    gc.collect()
    for _ in range(12):
        x = ndl.Tensor(rng.standard_normal((4, 1, 8, 8)).astype("float32"))
        y = ndl.Tensor(rng.integers(0, 10, 4), requires_grad=False)
        opt.reset_grad()
        loss = nn.SoftmaxLoss()(model(x), y)
        loss.backward()
        assert x.grad is not None and x.grad.op is not None  # a graph (second derivatives)
        opt.step()
        counts.append(autograd.TENSOR_COUNTER)
    assert max(counts[2:]) == min(counts[2:]), counts
    assert gc.collect() == 0  # nothing was left for the collector


def test_leaf_grad_graph_reaches_its_leaf_while_it_lives(no_collector):
    """x.grad.backward() after y.backward() still puts d(sum x.grad)/dx in x.grad (the graph
    reaches x through a weak alias), and dropping x frees x and its gradient graph."""
    import weakref

    a = np.array([0.5, -1.0, 2.0], dtype="float32")
    x = ndl.Tensor(a)
    (ops.exp(x) * x).sum().backward()  # x.grad = (1 + x) e^x
    np.testing.assert_allclose(x.grad.numpy(), (1 + a) * np.exp(a), rtol=1e-6)
    x.grad.sum().backward()  # x.grad = (2 + x) e^x
    np.testing.assert_allclose(x.grad.numpy(), (2 + a) * np.exp(a), rtol=1e-6)
    ref = weakref.ref(x)
    before = autograd.TENSOR_COUNTER
    del x
    assert ref() is None and autograd.TENSOR_COUNTER < before


def test_intermediate_grads_keep_their_values(no_collector):
    """Each reached node still gets `.grad` (course semantics), equal to PyTorch's
    retain_grad() values; the leaf's gradient is still a graph (second derivatives)."""
    rng = np.random.default_rng(1)
    a = rng.standard_normal((3, 4)).astype("float32")
    w = rng.standard_normal((4, 2)).astype("float32")
    x, W = ndl.Tensor(a), ndl.Tensor(w)
    h = ops.exp(x @ W)
    loss = (h * h).sum()
    loss.backward()
    tx, tw = torch.tensor(a, requires_grad=True), torch.tensor(w, requires_grad=True)
    th = torch.exp(tx @ tw)
    th.retain_grad()
    (th * th).sum().backward()
    np.testing.assert_allclose(h.grad.numpy(), th.grad.numpy(), rtol=1e-5)
    np.testing.assert_allclose(W.grad.numpy(), tw.grad.numpy(), rtol=1e-5)
    assert h.grad.op is None  # a value, holding no graph that reaches h's users
    assert W.grad.op is not None  # a graph: x.grad.backward() gives second derivatives


def test_dropped_graph_is_freed_at_once(no_collector):
    """After `del loss` and reset of the leaves' grads nothing of the step stays alive."""
    W = ndl.Tensor(np.ones((4, 3), dtype="float32"))
    X = ndl.Tensor(np.ones((2, 4), dtype="float32"), requires_grad=False)
    before = autograd.TENSOR_COUNTER
    loss = ops.exp(ops.tanh(X @ W)).sum()
    loss.backward()
    W.grad = None
    del loss
    assert autograd.TENSOR_COUNTER == before


def test_fast_backward_anomaly_names_the_op_of_an_overflowing_sum():
    """Two finite partials of one input that overflow when summed: the graph backward flags
    its EWiseAdd node; the fast backward names the op whose partial made the sum non-finite."""
    for create_graph, name in ((True, "EWiseAdd"), (False, "MulScalar")):
        x = ndl.Tensor(np.array([[1e-10]], dtype="float32"))
        y = (x * 2e38).sum() + (x * 2e38).sum()  # forward finite (4e28), gradient 4e38 = inf
        with autograd.detect_anomaly(), np.errstate(over="ignore"), \
                pytest.raises(FloatingPointError) as info:
            y.backward(create_graph=create_graph)
        assert name in str(info.value), str(info.value)
    # without anomaly detection the inf goes through, as in PyTorch
    x = ndl.Tensor(np.array([[1e-10]], dtype="float32"))
    with np.errstate(over="ignore"):
        ((x * 2e38).sum() + (x * 2e38).sum()).backward(create_graph=False)
    tx = torch.tensor([[1e-10]], requires_grad=True)
    ((tx * 2e38).sum() + (tx * 2e38).sum()).backward()
    assert np.isinf(x.grad.numpy()).all() and torch.isinf(tx.grad).all()


def test_fast_backward_anomaly_names_the_op_of_a_nan_partial():
    x = ndl.Tensor(np.array([0.0, 1.0], dtype="float32"))
    y = ops.power_scalar(x, 0.5).sum()
    with autograd.detect_anomaly(), np.errstate(divide="ignore", invalid="ignore"), \
            pytest.raises(FloatingPointError) as info:
        y.backward(create_graph=False)
    assert "PowerScalar" in str(info.value) and "gradient" in str(info.value)
