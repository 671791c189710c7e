"""needle.optim against PyTorch (where the rules agree) and NumPy replicas (course rules)."""
import gc
import math

import numpy as np
import pytest
import torch

import needle as ndl
import needle.nn as nn
from needle import autograd, optim

RNG = np.random.RandomState(0)
X = RNG.randn(8, 5).astype(np.float32)
Y = RNG.randn(8, 3).astype(np.float32)
W0 = RNG.randn(5, 3).astype(np.float32)
B0 = RNG.randn(1, 3).astype(np.float32)


def _needle_run(opt_cls, steps=5, **kw):
    w, b = nn.Parameter(ndl.Tensor(W0.copy())), nn.Parameter(ndl.Tensor(B0.copy()))
    opt = opt_cls([w, b], **kw)
    x, y = ndl.Tensor(X, requires_grad=False), ndl.Tensor(Y, requires_grad=False)
    for _ in range(steps):
        opt.reset_grad()
        d = x @ w + b - y
        (d * d).sum().backward(create_graph=False)
        opt.step()
    return w.numpy(), b.numpy(), opt


def _torch_run(opt_cls, steps=5, **kw):
    w = torch.tensor(W0.copy(), requires_grad=True)
    b = torch.tensor(B0.copy(), requires_grad=True)
    opt = opt_cls([w, b], **kw)
    x, y = torch.tensor(X), torch.tensor(Y)
    for _ in range(steps):
        opt.zero_grad()
        ((x @ w + b - y) ** 2).sum().backward()
        opt.step()
    return w.detach().numpy(), b.detach().numpy()


def _grads(w, b):
    d = X @ w + b - Y
    return 2 * X.T @ d, 2 * d.sum(0, keepdims=True)


@pytest.mark.parametrize("needle_cls,torch_cls,kw,tkw", [
    (optim.Adam, torch.optim.Adam, dict(lr=0.01), dict(lr=0.01)),
    (optim.Adam, torch.optim.Adam, dict(lr=0.01, beta1=0.8, beta2=0.99, weight_decay=0.1),
     dict(lr=0.01, betas=(0.8, 0.99), weight_decay=0.1)),
    (optim.AdamW, torch.optim.AdamW, dict(lr=0.01, weight_decay=0.1),
     dict(lr=0.01, weight_decay=0.1)),
    (optim.AdaGrad, torch.optim.Adagrad, dict(lr=0.1, weight_decay=0.01),
     dict(lr=0.1, weight_decay=0.01)),
    (optim.RMSProp, torch.optim.RMSprop, dict(lr=0.01), dict(lr=0.01)),
    (optim.RMSProp, torch.optim.RMSprop, dict(lr=0.01, momentum=0.9, weight_decay=0.01),
     dict(lr=0.01, momentum=0.9, weight_decay=0.01)),
    (optim.SGD, torch.optim.SGD, dict(lr=0.01, weight_decay=0.1),
     dict(lr=0.01, weight_decay=0.1)),
])
def test_matches_torch(needle_cls, torch_cls, kw, tkw):
    w, b, _ = _needle_run(needle_cls, **kw)
    tw, tb = _torch_run(torch_cls, **tkw)
    np.testing.assert_allclose(w, tw, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(b, tb, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_course_momentum_rule(nesterov):
    lr, m, wd = 0.01, 0.9, 0.05
    w, b = W0.astype(np.float64), B0.astype(np.float64)
    uw, ub = 0.0, 0.0
    for _ in range(4):
        gw, gb = _grads(w, b)
        gw, gb = gw + wd * w, gb + wd * b
        uw, ub = m * uw + (1 - m) * gw, m * ub + (1 - m) * gb
        if nesterov:
            w, b = w - lr * (m * uw + (1 - m) * gw), b - lr * (m * ub + (1 - m) * gb)
        else:
            w, b = w - lr * uw, b - lr * ub
    nw, nb, _ = _needle_run(optim.SGD, steps=4, lr=lr, momentum=m, weight_decay=wd,
                            nesterov=nesterov)
    np.testing.assert_allclose(nw, w, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(nb, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("create_graph", [False, True])
def test_step_keeps_grad_and_tensor_count(create_graph):
    np.random.seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3))
    opt = optim.Adam(model.parameters(), lr=0.01)
    x = ndl.Tensor(X, requires_grad=False)
    y = ndl.Tensor(np.arange(8) % 3, requires_grad=False)
    loss_fn = nn.SoftmaxLoss()
    counts = []
    for _ in range(6):
        opt.reset_grad()
        loss_fn(model(x), y).backward(create_graph=create_graph)
        before = [p.grad.detach().numpy().copy() for p in model.parameters()]
        opt.step()
        after = [p.grad.detach().numpy() for p in model.parameters()]
        for g0, g1 in zip(before, after):
            np.testing.assert_array_equal(g0, g1)
        del before, after
        if create_graph:  # graph gradients of intermediate nodes form reference cycles
            gc.collect()
        counts.append(autograd.TENSOR_COUNTER)
    assert counts[-1] == counts[2], counts


def test_reset_grad_and_zero_grad():
    w, b, opt = _needle_run(optim.SGD, steps=1, lr=0.1)
    assert all(p.grad is not None for p in opt.params)
    opt.zero_grad()
    assert all(p.grad is None for p in opt.params)


def test_state_dict_round_trip_continues_identically():
    _, _, opt = _needle_run(optim.Adam, steps=3, lr=0.01)
    state = opt.state_dict()
    assert state["t"] == 3 and set(state["state"][0]) == {"m", "v"}
    w2, b2 = (nn.Parameter(ndl.Tensor(p.numpy())) for p in opt.params)
    opt2 = optim.Adam([w2, b2], lr=0.5)
    opt2.load_state_dict(state)
    assert opt2.lr == 0.01 and opt2.t == 3
    for o, ws in ((opt, opt.params), (opt2, [w2, b2])):
        x, y = ndl.Tensor(X, requires_grad=False), ndl.Tensor(Y, requires_grad=False)
        o.reset_grad()
        d = x @ ws[0] + ws[1] - y
        (d * d).sum().backward()
        o.step()
    np.testing.assert_array_equal(opt.params[0].numpy(), w2.numpy())
    with pytest.raises(ValueError, match="saved by Adam"):
        optim.SGD([w2], lr=0.1).load_state_dict(state)


def _grads_in_both():
    """(w, b, tw, tb): the same least-squares gradients in needle and in torch."""
    w, b = nn.Parameter(ndl.Tensor(W0.copy())), nn.Parameter(ndl.Tensor(B0.copy()))
    tw, tb = torch.tensor(W0.copy(), requires_grad=True), torch.tensor(B0.copy(),
                                                                       requires_grad=True)
    d = ndl.Tensor(X, requires_grad=False) @ w + b
    (d * d).sum().backward()
    ((torch.tensor(X) @ tw + tb) ** 2).sum().backward()
    return w, b, tw, tb


def test_clip_grad_norm_matches_torch():
    w, b, tw, tb = _grads_in_both()
    total = optim.clip_grad_norm([w, b], 0.5)
    ttotal = torch.nn.utils.clip_grad_norm_([tw, tb], 0.5)
    assert isinstance(total, ndl.Tensor) and total.shape == ()
    assert float(total) == pytest.approx(float(ttotal), rel=1e-5)
    np.testing.assert_allclose(w.grad.numpy(), tw.grad.numpy(), rtol=1e-5)
    np.testing.assert_allclose(b.grad.numpy(), tb.grad.numpy(), rtol=1e-5)


def test_invalid_hyperparameters():
    p = nn.Parameter(ndl.Tensor(W0))
    with pytest.raises(ValueError, match="momentum"):
        optim.SGD([p], momentum=1.5)
    with pytest.raises(ValueError, match="beta1"):
        optim.Adam([p], beta1=1.0)
    with pytest.raises(ValueError, match="empty"):
        optim.Adam([])


def _lrs(sched, opt, n):
    out = []
    for _ in range(n):
        out.append(opt.lr)
        sched.step()
    return out


def _torch_lrs(make, n):
    p = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([p], lr=0.1)
    sched = make(opt)
    out = []
    for _ in range(n):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_step_lr_and_cosine_match_torch():
    opt = optim.SGD([nn.Parameter(ndl.Tensor(W0))], lr=0.1)
    ours = _lrs(optim.StepLR(opt, 3, gamma=0.5), opt, 10)
    theirs = _torch_lrs(lambda o: torch.optim.lr_scheduler.StepLR(o, 3, gamma=0.5), 10)
    np.testing.assert_allclose(ours, theirs, rtol=1e-12)
    opt = optim.SGD([nn.Parameter(ndl.Tensor(W0))], lr=0.1)
    ours = _lrs(optim.CosineAnnealing(opt, 8, eta_min=0.01), opt, 9)
    theirs = _torch_lrs(
        lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, 8, eta_min=0.01), 9)
    np.testing.assert_allclose(ours, theirs, rtol=1e-9)


def test_linear_warmup_then_cosine():
    opt = optim.SGD([nn.Parameter(ndl.Tensor(W0))], lr=0.1)
    sched = optim.LinearWarmup(opt, 4, after=optim.CosineAnnealing(opt, 6))
    lrs = _lrs(sched, opt, 11)
    expected = [0.1 * t / 4 for t in range(4)] + [
        0.1 * (1 + math.cos(math.pi * t / 6)) / 2 for t in range(7)]
    np.testing.assert_allclose(lrs, expected, rtol=1e-12, atol=1e-15)
    theirs = _torch_lrs(lambda o: torch.optim.lr_scheduler.LinearLR(
        o, start_factor=0.25, total_iters=3), 5)
    opt = optim.SGD([nn.Parameter(ndl.Tensor(W0))], lr=0.1)
    np.testing.assert_allclose(_lrs(optim.LinearWarmup(opt, 3, start_factor=0.25), opt, 5),
                               theirs, rtol=1e-12)


def test_clip_grad_value_matches_torch():
    w, b, tw, tb = _grads_in_both()
    before = w.grad.numpy().copy()
    optim.clip_grad_value([w, b], 2.5)
    torch.nn.utils.clip_grad_value_([tw, tb], 2.5)
    assert np.abs(before).max() > 2.5  # the clip changed something
    np.testing.assert_allclose(w.grad.numpy(), tw.grad.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(b.grad.numpy(), tb.grad.numpy(), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="clip_grad_value"):
        optim.clip_grad_value([w], -1.0)


def _plateau_metrics(n=40, seed=0):
    """A noisy loss that improves, stalls and improves again (each branch of the rule)."""
    rng = np.random.RandomState(seed)
    trend = np.concatenate([np.linspace(1.0, 0.5, 10), np.full(15, 0.5),
                            np.linspace(0.5, 0.3, 15)])[:n]
    return list(trend + 0.01 * rng.rand(n))


@pytest.mark.parametrize("kw", [
    dict(patience=4),
    dict(mode="min", factor=0.5, patience=2, threshold=1e-3, cooldown=1, min_lr=0.004),
    dict(mode="min", factor=0.3, patience=1, threshold=0.01, threshold_mode="abs"),
    dict(mode="max", factor=0.5, patience=3, threshold=1e-2, cooldown=2),
    dict(mode="max", factor=0.2, patience=0, threshold=0.02, threshold_mode="abs", min_lr=1e-3),
])
def test_reduce_lr_on_plateau_matches_torch(kw):
    metrics = _plateau_metrics()
    if kw.get("mode") == "max":
        metrics = [-m for m in metrics]
    opt = optim.SGD([nn.Parameter(ndl.Tensor(W0))], lr=0.1)
    sched = optim.ReduceLROnPlateau(opt, **kw)
    p = torch.zeros(1, requires_grad=True)
    topt = torch.optim.SGD([p], lr=0.1)
    tsched = torch.optim.lr_scheduler.ReduceLROnPlateau(topt, **kw)
    ours, theirs = [], []
    for m in metrics:
        sched.step(m)
        tsched.step(m)
        ours.append(opt.lr)
        theirs.append(topt.param_groups[0]["lr"])
    assert len(set(theirs)) > 1  # the sequence does reduce
    np.testing.assert_allclose(ours, theirs, rtol=1e-12)


def test_reduce_lr_on_plateau_state_round_trip_and_errors():
    metrics = _plateau_metrics()
    opt = optim.SGD([nn.Parameter(ndl.Tensor(W0))], lr=0.1)
    sched = optim.ReduceLROnPlateau(opt, patience=2, factor=0.5)
    for m in metrics[:20]:
        sched.step(m)
    state = sched.state_dict()
    opt2 = optim.SGD([nn.Parameter(ndl.Tensor(W0))], lr=0.1)
    sched2 = optim.ReduceLROnPlateau(opt2, patience=2, factor=0.5)
    sched2.load_state_dict(state)
    for m in metrics[20:]:
        sched.step(m)
        sched2.step(m)
        assert opt2.lr == opt.lr
    for bad in (dict(mode="mid"), dict(threshold_mode="x"), dict(factor=1.0),
                dict(patience=-1)):
        with pytest.raises(ValueError, match="ReduceLROnPlateau"):
            optim.ReduceLROnPlateau(opt, **bad)


def test_linear_warmup_wraps_step_lr_like_torch_sequential():
    opt = optim.SGD([nn.Parameter(ndl.Tensor(W0))], lr=0.1)
    sched = optim.LinearWarmup(opt, 3, after=optim.StepLR(opt, 2, gamma=0.5),
                               start_factor=0.25)
    ours = _lrs(sched, opt, 10)
    theirs = _torch_lrs(lambda o: torch.optim.lr_scheduler.SequentialLR(
        o, [torch.optim.lr_scheduler.LinearLR(o, start_factor=0.25, total_iters=3),
            torch.optim.lr_scheduler.StepLR(o, 2, gamma=0.5)], milestones=[3]), 10)
    np.testing.assert_allclose(ours, theirs, rtol=1e-12)


@pytest.mark.parametrize("cls", [optim.Adam, optim.AdamW])
def test_adam_flat_step_equals_one_update_per_parameter(cls):
    """Adam's step packs the parameters of one device and dtype into one flat update; the
    numbers are bit for bit those of `_update` run per parameter, also across a state dict
    saved and loaded in between (the loaded arrays become the flat state's views)."""
    rng = np.random.default_rng(0)
    shapes = [(5, 3), (3,), (300, 300), (4, 4, 2), (1,)]  # (300, 300): updated on its own
    init = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    grads = [[rng.standard_normal(s).astype(np.float32) for s in shapes] for _ in range(6)]

    def params():
        return [nn.Parameter(ndl.Tensor(a.copy())) for a in init]

    ps, qs = params(), params()
    opt, ref = cls(ps, lr=0.01, weight_decay=0.1), cls(qs, lr=0.01, weight_decay=0.1)
    for k, gs in enumerate(grads):
        for p, q, g in zip(ps, qs, gs):
            p.grad, q.grad = ndl.Tensor(g), ndl.Tensor(g)
        opt.step()
        ref.t += 1
        for q in qs:  # the per-parameter rule
            st = ref.state.setdefault(q, {})
            ref._update(q.realize_cached_data(), q.grad.realize_cached_data(), st)
        if k == 2:  # round-trip the state: later steps must use the loaded moments
            saved = opt.state_dict()
            opt = cls(ps, lr=0.01, weight_decay=0.1)
            opt.load_state_dict(saved)
    for p, q in zip(ps, qs):
        np.testing.assert_array_equal(p.numpy(), q.numpy())
    for i, q in enumerate(qs):
        for key in ("m", "v"):
            np.testing.assert_array_equal(opt.state_dict()["state"][i][key],
                                          ref.state[q][key].numpy())
