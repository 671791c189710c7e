"""Second- vs first-order optimizers in needle: iterations and wall time to a gradient norm
of 1e-6 on two full-batch float64 problems.

(a) L2-regularized logistic regression, 2000 x 20 synthetic data (strongly convex);
(b) a small tanh MLP, 2-16-16-1, fit to y = sin(x1) cos(x2) on 256 points (non-convex).
NewtonCG (Hessian-free, CG on double-backward Hessian-vector products), LBFGS (strong Wolfe,
history 20), SGD (momentum 0.9) and Adam, each capped at an iteration budget; an "iteration"
is one update of the parameters (NewtonCG: one Newton step, its CG inner steps counted
separately; LBFGS: one two-loop direction with its line search). Time is wall time of the
whole run, including the gradient-norm checks.
Run: python benchmarks/bench_second_order.py [threads]
"""
import os
import sys
import time

THREADS = int(sys.argv[1]) if len(sys.argv) > 1 else 1
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = str(THREADS)

import numpy as np  # noqa: E402

from _common import machine  # noqa: E402

import needle as ndl  # noqa: E402
import needle.nn as nn  # noqa: E402
from needle import optim  # noqa: E402

TARGET = 1e-6


def logistic_problem(seed=0, n=2000, d=20, l2=1e-3):
    rng = np.random.RandomState(seed)
    x = rng.randn(n, d)
    y = (x @ rng.randn(d) + 0.5 * rng.randn(n) > 0).astype(np.float64).reshape(n, 1)
    w = nn.Parameter(ndl.Tensor(np.zeros((d, 1))))
    xt, yt = ndl.Tensor(x, requires_grad=False), ndl.Tensor(y, requires_grad=False)

    def loss():
        z = xt @ w
        return ((ndl.ops.log(ndl.ops.exp(z) + 1.0) - yt * z).sum() / n
                + (w * w).sum() * (l2 / 2))

    return [w], loss


def mlp_problem(seed=0, n=256):
    rng = np.random.RandomState(seed)
    x = rng.uniform(-2, 2, (n, 2))
    y = (np.sin(x[:, :1]) * np.cos(x[:, 1:]))
    sizes = [2, 16, 16, 1]
    params = []
    for a, b in zip(sizes, sizes[1:]):
        params.append(nn.Parameter(ndl.Tensor(rng.randn(a, b) / np.sqrt(a))))
        params.append(nn.Parameter(ndl.Tensor(np.zeros((1, b)))))
    xt, yt = ndl.Tensor(x, requires_grad=False), ndl.Tensor(y, requires_grad=False)

    def loss():
        h = xt
        for i in range(0, len(params), 2):
            h = h @ params[i] + params[i + 1]
            if i + 2 < len(params):
                h = ndl.ops.tanh(h)
        d = h - yt
        return (d * d).sum() / n

    return params, loss


def grad_norm(params, loss_fn) -> float:
    for p in params:
        p.grad = None
    loss_fn().backward(create_graph=False)
    return float(np.sqrt(sum(float((p.grad.numpy() ** 2).sum()) for p in params)))


def run(make, name, cap, damping):
    params, loss_fn = make()
    t0 = time.perf_counter()
    it, extra = 0, ""
    if name == "NewtonCG":
        opt = optim.NewtonCG(params, max_cg_iter=100, damping=damping)
        cg = 0
        while it < cap and grad_norm(params, loss_fn) > TARGET:
            opt.step(loss_fn)
            cg += opt.last_cg_iters
            it += 1
        extra = f"{cg} CG steps"
    elif name == "LBFGS":
        opt = optim.LBFGS(params, line_search_fn="strong_wolfe", history_size=20, max_iter=1,
                          max_eval=26, tolerance_grad=0.0, tolerance_change=0.0)

        def closure():
            opt.reset_grad()
            loss = loss_fn()
            loss.backward(create_graph=False)
            return loss

        while it < cap and grad_norm(params, loss_fn) > TARGET:
            opt.step(closure)
            it += 1
        extra = f"{opt.func_evals} evals"
    else:
        opt = (optim.SGD(params, lr=0.5, momentum=0.9) if name == "SGD"
               else optim.Adam(params, lr=0.01))
        while it < cap:
            opt.reset_grad()
            loss_fn().backward(create_graph=False)
            g = float(np.sqrt(sum(float((p.grad.numpy() ** 2).sum()) for p in params)))
            if g <= TARGET:
                break
            opt.step()
            it += 1
    elapsed = time.perf_counter() - t0
    final = grad_norm(params, loss_fn)
    reached = final <= TARGET
    return it, elapsed, final, reached, extra


def main():
    print(f"gradient norm target {TARGET:g}; {machine()}, {THREADS} thread(s)")
    print(f"{'problem':22s} {'optimizer':10s} {'iters':>7s} {'time s':>8s} {'|g| final':>10s}"
          f"  note")
    # NewtonCG damping: none on the strongly convex problem, 1e-3 on the MLP (indefinite H)
    for label, make, damping in (("logistic 2000x20", logistic_problem, 0.0),
                                 ("tanh MLP 2-16-16-1", mlp_problem, 1e-3)):
        for name, cap in (("NewtonCG", 500), ("LBFGS", 5000), ("SGD", 20000),
                          ("Adam", 20000)):
            it, sec, final, reached, extra = run(make, name, cap, damping)
            note = extra if reached else f"not reached in {cap} iters {extra}".strip()
            print(f"{label:22s} {name:10s} {it:7d} {sec:8.2f} {final:10.2e}  {note}")


if __name__ == "__main__":
    main()
