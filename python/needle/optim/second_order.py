"""Second-order optimizers over a closure: LBFGS (PyTorch's algorithm, history and strong-Wolfe
line search) and NewtonCG (Hessian-free Newton: conjugate gradient on exact Hessian-vector
products from the double backward).

Both take `step(closure)`, where `closure()` re-evaluates the model and returns the loss (for
LBFGS it also runs `loss.backward()` after `opt.reset_grad()`, as in PyTorch; NewtonCG takes
the gradient itself and only needs the loss). Vectors are lists of NDArrays, one per
parameter; every update happens in place outside the graph, as in the first-order optimizers.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

from ..autograd import Tensor, enable_grad, gradients, no_grad
from .optimizers import Optimizer, _writable

__all__ = ["LBFGS", "NewtonCG"]


# ---- vectors as lists of NDArrays ---------------------------------------------------------------
def _dot(xs, ys) -> float:
    return sum(float((x * y).sum().item()) for x, y in zip(xs, ys))


def _abs_max(xs) -> float:
    return max(float(x.abs().max().item()) for x in xs)


def _abs_sum(xs) -> float:
    return sum(float(x.abs().sum().item()) for x in xs)


def _axpy(alpha: float, xs, ys) -> list:
    """alpha * xs + ys (new arrays)."""
    return [alpha * x + y for x, y in zip(xs, ys)]


def _scale(alpha: float, xs) -> list:
    return [alpha * x for x in xs]


def _flat_grad(params) -> list:
    """Each parameter's gradient as an NDArray in its dtype (zeros where it has none)."""
    out = []
    for p in params:
        w = p.realize_cached_data()
        if p.grad is None:
            out.append(w.device.zeros(w.shape, dtype=w.dtype))
            continue
        g = p.grad.realize_cached_data()
        out.append(g if g.dtype == w.dtype else g.astype(w.dtype))
    return out


def _add_to_params(params, t: float, d) -> None:
    for p, di in zip(params, d):
        _writable(p).__iadd__(t * di)


def _set_params(params, xs) -> None:
    for p, x in zip(params, xs):
        _writable(p).assign(x)


def _clone_params(params) -> list:
    return [p.realize_cached_data().copy() for p in params]


def _loss_value(loss) -> float:
    return float(loss.item() if hasattr(loss, "item") else loss)


# ---- strong-Wolfe line search (PyTorch's torch/optim/lbfgs.py, on Python floats) ----------------
def _cubic_interpolate(x1, f1, g1, x2, f2, g2, bounds=None) -> float:
    """The minimizer of the cubic through (x1, f1, g1), (x2, f2, g2), clamped to `bounds`."""
    if bounds is not None:
        lo, hi = bounds
    else:
        lo, hi = (x1, x2) if x1 <= x2 else (x2, x1)
    d1 = g1 + g2 - 3 * (f1 - f2) / (x1 - x2)
    d2_square = d1 ** 2 - g1 * g2
    if d2_square >= 0:
        d2 = math.sqrt(d2_square)
        if x1 <= x2:
            min_pos = x2 - (x2 - x1) * ((g2 + d2 - d1) / (g2 - g1 + 2 * d2))
        else:
            min_pos = x1 - (x1 - x2) * ((g1 + d2 - d1) / (g1 - g2 + 2 * d2))
        return min(max(min_pos, lo), hi)
    return (lo + hi) / 2.0


def _strong_wolfe(obj_func, x, t, d, f, g, gtd, c1=1e-4, c2=0.9, tolerance_change=1e-9,
                  max_ls=25):
    """Bracketing then zoom (Nocedal & Wright, alg. 3.5/3.6), step for step as PyTorch."""
    d_norm = _abs_max(d)
    f_new, g_new = obj_func(x, t, d)
    ls_func_evals = 1
    gtd_new = _dot(g_new, d)
    t_prev, f_prev, g_prev, gtd_prev = 0, f, g, gtd
    done = False
    ls_iter = 0
    bracket = bracket_f = bracket_g = bracket_gtd = None
    while ls_iter < max_ls:
        if f_new > (f + c1 * t * gtd) or (ls_iter > 1 and f_new >= f_prev):
            bracket, bracket_f = [t_prev, t], [f_prev, f_new]
            bracket_g, bracket_gtd = [g_prev, g_new], [gtd_prev, gtd_new]
            break
        if abs(gtd_new) <= -c2 * gtd:
            bracket, bracket_f, bracket_g = [t], [f_new], [g_new]
            done = True
            break
        if gtd_new >= 0:
            bracket, bracket_f = [t_prev, t], [f_prev, f_new]
            bracket_g, bracket_gtd = [g_prev, g_new], [gtd_prev, gtd_new]
            break
        min_step = t + 0.01 * (t - t_prev)
        max_step = t * 10
        tmp = t
        t = _cubic_interpolate(t_prev, f_prev, gtd_prev, t, f_new, gtd_new,
                               bounds=(min_step, max_step))
        t_prev, f_prev, g_prev, gtd_prev = tmp, f_new, g_new, gtd_new
        f_new, g_new = obj_func(x, t, d)
        ls_func_evals += 1
        gtd_new = _dot(g_new, d)
        ls_iter += 1
    if ls_iter == max_ls:
        bracket, bracket_f, bracket_g = [0, t], [f, f_new], [g, g_new]
        bracket_gtd = [gtd, gtd_new]

    insuf_progress = False
    low_pos, high_pos = (0, 1) if bracket_f[0] <= bracket_f[-1] else (1, 0)
    while not done and ls_iter < max_ls:
        if abs(bracket[1] - bracket[0]) * d_norm < tolerance_change:
            break
        t = _cubic_interpolate(bracket[0], bracket_f[0], bracket_gtd[0],
                               bracket[1], bracket_f[1], bracket_gtd[1])
        eps = 0.1 * (max(bracket) - min(bracket))
        if min(max(bracket) - t, t - min(bracket)) < eps:
            if insuf_progress or t >= max(bracket) or t <= min(bracket):
                if abs(t - max(bracket)) < abs(t - min(bracket)):
                    t = max(bracket) - eps
                else:
                    t = min(bracket) + eps
                insuf_progress = False
            else:
                insuf_progress = True
        else:
            insuf_progress = False
        f_new, g_new = obj_func(x, t, d)
        ls_func_evals += 1
        gtd_new = _dot(g_new, d)
        ls_iter += 1
        if f_new > (f + c1 * t * gtd) or f_new >= bracket_f[low_pos]:
            bracket[high_pos], bracket_f[high_pos] = t, f_new
            bracket_g[high_pos], bracket_gtd[high_pos] = g_new, gtd_new
            low_pos, high_pos = (0, 1) if bracket_f[0] <= bracket_f[1] else (1, 0)
        else:
            if abs(gtd_new) <= -c2 * gtd:
                done = True
            elif gtd_new * (bracket[high_pos] - bracket[low_pos]) >= 0:
                bracket[high_pos], bracket_f[high_pos] = bracket[low_pos], bracket_f[low_pos]
                bracket_g[high_pos] = bracket_g[low_pos]
                bracket_gtd[high_pos] = bracket_gtd[low_pos]
            bracket[low_pos], bracket_f[low_pos] = t, f_new
            bracket_g[low_pos], bracket_gtd[low_pos] = g_new, gtd_new
    return bracket_f[low_pos], bracket_g[low_pos], bracket[low_pos], ls_func_evals


class LBFGS(Optimizer):
    """Limited-memory BFGS with PyTorch's algorithm, defaults and closure API.

    `step(closure)` runs up to `max_iter` iterations (at most `max_eval` closure calls) and
    returns the first loss. The inverse-Hessian estimate keeps `history_size` pairs (s, y);
    `line_search_fn="strong_wolfe"` picks each step length by the strong Wolfe conditions,
    None takes fixed steps of `lr`. Iterates match `torch.optim.LBFGS` on the same problem.
    `state_dict()` keeps the hyperparameters and the step count, not the (s, y) history (a
    resumed run restarts the curvature estimate).

    >>> opt = LBFGS(model.parameters(), line_search_fn="strong_wolfe")
    >>> def closure():
    ...     opt.reset_grad(); loss = loss_fn(model(X), y); loss.backward(); return loss
    >>> opt.step(closure)
    """

    hyperparameter_names = ("lr", "max_iter", "max_eval", "tolerance_grad", "tolerance_change",
                            "history_size", "line_search_fn")

    def __init__(self, params, lr: float = 1.0, max_iter: int = 20,
                 max_eval: Optional[int] = None, tolerance_grad: float = 1e-7,
                 tolerance_change: float = 1e-9, history_size: int = 100,
                 line_search_fn: Optional[str] = None):
        super().__init__(params, lr)
        if line_search_fn not in (None, "strong_wolfe"):
            raise ValueError(f"LBFGS: line_search_fn must be None or 'strong_wolfe', got "
                             f"{line_search_fn!r}")
        if max_iter < 1 or history_size < 1:
            raise ValueError(f"LBFGS: max_iter and history_size must be >= 1, got {max_iter} "
                             f"and {history_size}")
        self.max_iter = max_iter
        self.max_eval = max_eval if max_eval is not None else max_iter * 5 // 4
        self.tolerance_grad = tolerance_grad
        self.tolerance_change = tolerance_change
        self.history_size = history_size
        self.line_search_fn = line_search_fn
        self.func_evals = 0
        self.n_iter = 0
        self._memory: dict = {}

    def _closure_loss(self, closure) -> float:
        with enable_grad():
            return _loss_value(closure())

    def _directional_evaluate(self, closure, x, t, d):
        _add_to_params(self.params, t, d)
        loss = self._closure_loss(closure)
        g = _flat_grad(self.params)
        _set_params(self.params, x)
        return loss, g

    def step(self, closure: Callable = None):  # noqa: C901 (PyTorch's one loop)
        if closure is None:
            raise TypeError("LBFGS.step needs a closure that re-evaluates the loss")
        self.t += 1
        mem = self._memory
        with enable_grad():
            orig_loss = closure()
        loss = _loss_value(orig_loss)
        current_evals = 1
        self.func_evals += 1
        flat_grad = _flat_grad(self.params)
        if _abs_max(flat_grad) <= self.tolerance_grad:
            return orig_loss
        d, t = mem.get("d"), mem.get("t")
        old_dirs, old_stps, ro = mem.get("old_dirs"), mem.get("old_stps"), mem.get("ro")
        h_diag = mem.get("H_diag")
        prev_flat_grad, prev_loss = mem.get("prev_flat_grad"), mem.get("prev_loss")
        n_iter = 0
        with no_grad():
            while n_iter < self.max_iter:
                n_iter += 1
                self.n_iter += 1
                if self.n_iter == 1:
                    d = _scale(-1.0, flat_grad)
                    old_dirs, old_stps, ro = [], [], []
                    h_diag = 1.0
                else:
                    y = _axpy(-1.0, prev_flat_grad, flat_grad)
                    s = _scale(t, d)
                    ys = _dot(y, s)
                    if ys > 1e-10:
                        if len(old_dirs) == self.history_size:
                            old_dirs.pop(0)
                            old_stps.pop(0)
                            ro.pop(0)
                        old_dirs.append(y)
                        old_stps.append(s)
                        ro.append(1.0 / ys)
                        h_diag = ys / _dot(y, y)
                    # two-loop recursion: d = -H g
                    al = [0.0] * len(old_dirs)
                    q = _scale(-1.0, flat_grad)
                    for i in range(len(old_dirs) - 1, -1, -1):
                        al[i] = _dot(old_stps[i], q) * ro[i]
                        q = _axpy(-al[i], old_dirs[i], q)
                    r = _scale(h_diag, q)
                    for i in range(len(old_dirs)):
                        be_i = _dot(old_dirs[i], r) * ro[i]
                        r = _axpy(al[i] - be_i, old_stps[i], r)
                    d = r
                prev_flat_grad = [g.copy() for g in flat_grad]
                prev_loss = loss
                t = (min(1.0, 1.0 / _abs_sum(flat_grad)) * self.lr if self.n_iter == 1
                     else self.lr)
                gtd = _dot(flat_grad, d)
                if gtd > -self.tolerance_change:
                    break
                ls_func_evals = 0
                if self.line_search_fn is not None:
                    x_init = _clone_params(self.params)

                    def obj_func(x, step, direction):
                        return self._directional_evaluate(closure, x, step, direction)

                    loss, flat_grad, t, ls_func_evals = _strong_wolfe(
                        obj_func, x_init, t, d, loss, flat_grad, gtd,
                        max_ls=self.max_eval - current_evals)
                    _add_to_params(self.params, t, d)
                    opt_cond = _abs_max(flat_grad) <= self.tolerance_grad
                else:
                    _add_to_params(self.params, t, d)
                    opt_cond = False
                    if n_iter != self.max_iter:
                        loss = self._closure_loss(closure)
                        flat_grad = _flat_grad(self.params)
                        opt_cond = _abs_max(flat_grad) <= self.tolerance_grad
                        ls_func_evals = 1
                current_evals += ls_func_evals
                self.func_evals += ls_func_evals
                if n_iter == self.max_iter or current_evals >= self.max_eval or opt_cond:
                    break
                if _abs_max(d) * abs(t) <= self.tolerance_change:
                    break
                if abs(loss - prev_loss) < self.tolerance_change:
                    break
        mem.update(d=d, t=t, old_dirs=old_dirs, old_stps=old_stps, ro=ro, H_diag=h_diag,
                   prev_flat_grad=prev_flat_grad, prev_loss=prev_loss)
        return orig_loss


class NewtonCG(Optimizer):
    """Hessian-free Newton: solve `(H + damping*I) p = -g` by conjugate gradient, then step.

    H·v comes exactly from the double backward (the gradient graph of the loss differentiated
    again), so H is never formed. CG stops after `max_cg_iter` iterations, on negative
    curvature, or when the residual is below `cg_tol * |g|`; the default `cg_tol=None` uses the
    forcing term `min(0.5, |g|)`, which keeps Newton's quadratic convergence near a strongly
    convex minimum. A backtracking (Armijo) line search from
    `lr` halves the step until the loss decreases (`line_search=False`: a fixed step `lr`).

    `step(closure)` is one Newton iteration; `closure()` returns the loss (a scalar Tensor
    built with gradients enabled) and returns that loss. `last_grad_norm` and `last_cg_iters`
    describe the iteration just taken.
    """

    hyperparameter_names = ("lr", "damping", "max_cg_iter", "cg_tol", "line_search")

    def __init__(self, params, lr: float = 1.0, damping: float = 0.0, max_cg_iter: int = 50,
                 cg_tol: Optional[float] = None, line_search: bool = True, c1: float = 1e-4,
                 max_ls: int = 30):
        super().__init__(params, lr)
        if damping < 0:
            raise ValueError(f"NewtonCG: damping must be >= 0, got {damping}")
        if max_cg_iter < 1:
            raise ValueError(f"NewtonCG: max_cg_iter must be >= 1, got {max_cg_iter}")
        self.damping = damping
        self.max_cg_iter = max_cg_iter
        self.cg_tol = cg_tol
        self.line_search = line_search
        self.c1 = c1
        self.max_ls = max_ls
        self.last_grad_norm = math.nan
        self.last_cg_iters = 0

    def _solve(self, grads, g) -> list:
        """CG on (H + damping I) p = -g; H v = d(grads . v)/dparams (the double backward)."""
        params = self.params
        gnorm = math.sqrt(_dot(g, g))
        tol = (self.cg_tol if self.cg_tol is not None else min(0.5, gnorm)) * gnorm

        def hvp(v):
            vt = [Tensor.make_const(x) for x in v]
            total = None
            for gi, vi in zip(grads, vt):
                term = (gi * vi).sum()
                total = term if total is None else total + term
            hv = gradients(total, params, create_graph=False)
            return [h.realize_cached_data().astype(x.dtype) + self.damping * x
                    for h, x in zip(hv, v)]

        p = [x * 0 for x in g]
        r = _scale(-1.0, g)  # residual -g - A p with p = 0
        d = [x.copy() for x in r]
        rr = _dot(r, r)
        it = 0
        while it < self.max_cg_iter and math.sqrt(rr) > tol:
            ad = hvp(d)
            curvature = _dot(d, ad)
            if curvature <= 0:  # negative curvature: keep what CG has (or steepest descent)
                if it == 0:
                    p = d
                break
            alpha = rr / curvature
            p = _axpy(alpha, d, p)
            r = _axpy(-alpha, ad, r)
            rr_new = _dot(r, r)
            d = _axpy(rr_new / rr, d, r)
            rr = rr_new
            it += 1
        self.last_cg_iters = it
        return p

    def step(self, closure: Callable = None):
        if closure is None:
            raise TypeError("NewtonCG.step needs a closure that returns the loss")
        self.t += 1
        params = self.params
        with enable_grad():
            loss = closure()
            grads = gradients(loss, params, create_graph=True)
        g = [x.realize_cached_data().astype(p.dtype) for x, p in zip(grads, params)]
        self.last_grad_norm = math.sqrt(_dot(g, g))
        with enable_grad():  # the Hessian-vector products differentiate the gradient graph
            p = self._solve(grads, g)
        with no_grad():
            f0 = _loss_value(loss)
            t = self.lr
            if not self.line_search:
                _add_to_params(params, t, p)
                return loss
            slope = _dot(g, p)
            x0 = _clone_params(params)
            for _ in range(self.max_ls):
                _add_to_params(params, t, p)
                f_new = _loss_value(closure())
                if f_new <= f0 + self.c1 * t * slope:
                    break
                _set_params(params, x0)
                t *= 0.5
            else:
                _add_to_params(params, t, p)  # the smallest step tried
        return loss
