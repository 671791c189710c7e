"""optim.LBFGS against torch.optim.LBFGS, and optim.NewtonCG against Newton's method's
definition (quadratic convergence on a strongly convex problem)."""
import numpy as np
import pytest
import torch

import needle as ndl
import needle.nn as nn
from needle import optim

RNG = np.random.RandomState(0)
N, D = 64, 6
X = RNG.randn(N, D)
Y = (X @ RNG.randn(D) + 0.5 * RNG.randn(N) > 0).astype(np.float64).reshape(N, 1)
W0 = 0.1 * RNG.randn(D, 1)
L2 = 1e-2  # makes the problem strongly convex


def _needle_loss(w, x, y):
    """Mean logistic loss + L2/2 |w|^2: softplus(z) - y z, softplus = log(1 + exp(z))."""
    z = x @ w
    return ((ndl.ops.log(ndl.ops.exp(z) + 1.0) - y * z).sum() / N
            + (w * w).sum() * (L2 / 2))


def _torch_loss(w, x, y):
    z = x @ w
    return (torch.nn.functional.softplus(z) - y * z).sum() / N + (w * w).sum() * (L2 / 2)


def _needle_setup():
    w = nn.Parameter(ndl.Tensor(W0.copy()))
    x = ndl.Tensor(X, requires_grad=False)
    y = ndl.Tensor(Y, requires_grad=False)
    return w, x, y


@pytest.mark.parametrize("kw", [
    dict(line_search_fn="strong_wolfe"),
    dict(line_search_fn="strong_wolfe", history_size=3, max_iter=7),
    dict(lr=0.5, history_size=5, max_iter=6),
])
def test_lbfgs_iterates_match_torch(kw):
    w, x, y = _needle_setup()
    opt = optim.LBFGS([w], **kw)

    def closure():
        opt.reset_grad()
        loss = _needle_loss(w, x, y)
        loss.backward()
        return loss

    tw = torch.tensor(W0.copy(), requires_grad=True)
    tx, ty = torch.tensor(X), torch.tensor(Y)
    topt = torch.optim.LBFGS([tw], **kw)

    def tclosure():
        topt.zero_grad()
        loss = _torch_loss(tw, tx, ty)
        loss.backward()
        return loss

    for _ in range(4):
        l0 = opt.step(closure)
        t0 = topt.step(tclosure)
        assert float(l0.numpy()) == pytest.approx(t0.item(), rel=1e-10)
        np.testing.assert_allclose(w.numpy(), tw.detach().numpy(), rtol=1e-8, atol=1e-10)
    assert opt.func_evals == topt.state[tw]["func_evals"]
    assert opt.n_iter == topt.state[tw]["n_iter"]


def test_lbfgs_reaches_the_minimum():
    w, x, y = _needle_setup()
    opt = optim.LBFGS([w], line_search_fn="strong_wolfe", tolerance_grad=1e-10,
                      tolerance_change=1e-14, max_iter=100)

    def closure():
        opt.reset_grad()
        loss = _needle_loss(w, x, y)
        loss.backward()
        return loss

    for _ in range(3):
        opt.step(closure)
    closure()
    assert np.abs(w.grad.numpy()).max() < 1e-7


def _newton_run(damping=0.0, steps=8, **kw):
    w, x, y = _needle_setup()
    opt = optim.NewtonCG([w], damping=damping, **kw)
    norms = []
    for _ in range(steps):
        opt.step(lambda: _needle_loss(w, x, y))
        norms.append(opt.last_grad_norm)
    return norms, w, opt


def test_newton_cg_converges_quadratically():
    norms, w, opt = _newton_run(steps=7)
    # the final point is the minimum: the gradient (checked in torch) vanishes to float64
    # rounding of a sum over the samples (1e-12..4e-12 depending on the CPU's BLAS kernels)
    tw = torch.tensor(w.numpy(), requires_grad=True)
    _torch_loss(tw, torch.tensor(X), torch.tensor(Y)).backward()
    assert np.abs(tw.grad.numpy()).max() < 1e-10
    # quadratic: once close, |g_{k+1}| <= C |g_k|^2 with a bounded C, and the number of
    # correct digits roughly doubles per step
    tail = [(a, b) for a, b in zip(norms, norms[1:]) if 1e-13 < b and a < 1e-2]
    assert len(tail) >= 2, norms
    ratios = [b / a ** 2 for a, b in tail]
    assert max(ratios) < 10.0, (norms, ratios)
    assert all(np.log(b) / np.log(a) > 1.6 for a, b in tail), norms
    assert opt.last_cg_iters <= D  # CG on a D-dimensional problem needs at most D steps


def test_newton_cg_cg_cap_and_damping_slow_it_to_linear():
    exact, _, _ = _newton_run(steps=7)
    capped, _, opt = _newton_run(steps=7, max_cg_iter=1)
    assert opt.last_cg_iters == 1
    assert capped[-1] > 1e3 * max(exact[-1], 1e-16)  # one CG step: steepest descent-like
    damped, _, _ = _newton_run(damping=1.0, steps=7)
    assert damped[-1] > 1e3 * max(exact[-1], 1e-16)
    assert damped[-1] < damped[0]  # still a descent method


def test_newton_cg_hessian_vector_products_match_torch():
    w, x, y = _needle_setup()
    opt = optim.NewtonCG([w], max_cg_iter=D, cg_tol=1e-14, line_search=False)
    opt.step(lambda: _needle_loss(w, x, y))
    # one exact Newton step from W0: W0 - H^{-1} g, with H and g from torch
    tw = torch.tensor(W0.copy(), requires_grad=True)
    f = lambda v: _torch_loss(v.reshape(D, 1), torch.tensor(X), torch.tensor(Y))  # noqa: E731
    h = torch.autograd.functional.hessian(f, tw.reshape(-1).detach()).numpy()
    g = torch.autograd.grad(f(tw.reshape(-1)), tw)[0].numpy().reshape(-1)
    expected = W0.reshape(-1) - np.linalg.solve(h, g)
    np.testing.assert_allclose(w.numpy().reshape(-1), expected, rtol=1e-9, atol=1e-12)


def test_second_order_errors():
    w, _, _ = _needle_setup()
    with pytest.raises(ValueError, match="LBFGS"):
        optim.LBFGS([w], line_search_fn="armijo")
    with pytest.raises(ValueError, match="NewtonCG"):
        optim.NewtonCG([w], damping=-1.0)
    with pytest.raises(TypeError, match="closure"):
        optim.LBFGS([w]).step()
    with pytest.raises(TypeError, match="closure"):
        optim.NewtonCG([w]).step()
