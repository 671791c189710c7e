"""Function transforms over needle code: grad, vjp, jvp, hvp, and a numerical gradcheck.

Each takes a Python function of Tensors. `jvp` computes forward-mode derivatives J·v by
transposing the reverse pass (differentiating the vector-Jacobian product with respect to its
cotangent): it needs no per-op forward rules because every op's gradient is itself made of
differentiable ops.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from .autograd import Tensor, gradients


def _leaves(primals) -> list:
    """Fresh leaves that require grad, sharing the primals' storage."""
    out = []
    for p in primals:
        if not isinstance(p, Tensor):
            p = Tensor(p)
        out.append(Tensor(p.realize_cached_data(), requires_grad=True))
    return out


def _dot(xs, ys) -> Tensor:
    total = None
    for x, y in zip(xs, ys):
        term = (x * y).sum()
        total = term if total is None else total + term
    return total


def vjp(f: Callable, *primals):
    """`(f(*primals), vjp_fn)`; `vjp_fn(cotangent)` returns u^T J for each primal."""
    xs = _leaves(primals)
    out = f(*xs)

    def vjp_fn(cotangent):
        if not isinstance(cotangent, Tensor):
            cotangent = Tensor(cotangent, device=out.device, dtype=out.dtype)
        return tuple(gradients(out, xs, cotangent))

    return out, vjp_fn


def grad(f: Callable, argnums=0, create_graph: bool = True) -> Callable:
    """A function returning d f / d args[argnums] (f must return a scalar Tensor)."""

    def grad_fn(*args):
        xs = _leaves(args)
        out = f(*xs)
        if out.size != 1:
            raise ValueError(f"grad: f must return a single number, got shape {out.shape}")
        gs = gradients(out, xs, create_graph=create_graph)
        if isinstance(argnums, int):
            return gs[argnums]
        return tuple(gs[i] for i in argnums)

    return grad_fn


def jvp(f: Callable, primals: Sequence, tangents: Sequence):
    """Forward mode: `(f(*primals), J·tangents)` with J the Jacobian of f at `primals`."""
    xs = _leaves(primals)
    out = f(*xs)
    d = out.realize_cached_data()
    u = Tensor(d.device.zeros(d.shape, dtype=d.dtype), requires_grad=True)  # dummy cotangent
    vjps = gradients(out, xs, u, create_graph=True)  # linear in u
    ts = [t if isinstance(t, Tensor) else Tensor(t, device=x.device, dtype=x.dtype)
          for t, x in zip(tangents, xs)]
    (jv,) = gradients(_dot(vjps, ts), [u], create_graph=True)
    return out.detach(), jv


def hvp(f: Callable, primals: Sequence, v: Sequence):
    """`(f(*primals), H·v)` for a scalar function f: the Hessian-vector product."""
    xs = _leaves(primals)
    out = f(*xs)
    gs = gradients(out, xs, create_graph=True)
    vs = [t if isinstance(t, Tensor) else Tensor(t, device=x.device, dtype=x.dtype)
          for t, x in zip(v, xs)]
    return out.detach(), tuple(gradients(_dot(gs, vs), xs, create_graph=True))


class GradcheckError(AssertionError):
    """Analytic and numerical gradients disagree."""


def gradcheck(f: Callable, *inputs, eps: float = 1e-6, atol: float = 1e-5,
              rtol: float = 1e-3, raise_exception: bool = True, seed: int = 0) -> bool:
    """Compare reverse-mode gradients of f with central differences.

    f(*inputs) may return any shape: it is contracted with fixed random weights, so every
    output element is checked. Use float64 inputs for tight tolerances.
    """
    xs = [x if isinstance(x, Tensor) else Tensor(x) for x in inputs]
    out = f(*xs)
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(out.shape).astype(out.dtype)

    def scalar(values):
        arrays = [Tensor(v, device=x.device, requires_grad=False) for v, x in zip(values, xs)]
        return float((f(*arrays).numpy().astype(np.float64) * w).sum())

    analytic = gradients(out, xs, Tensor(w, device=out.device), create_graph=False)
    base = [x.numpy().copy() for x in xs]
    for i, x in enumerate(xs):
        numeric = np.zeros(base[i].shape, dtype=np.float64)
        flat = numeric.reshape(-1)
        for j in range(base[i].size):
            vals = [b.copy() for b in base]
            vals[i].reshape(-1)[j] += eps
            plus = scalar(vals)
            vals[i].reshape(-1)[j] -= 2 * eps
            minus = scalar(vals)
            flat[j] = (plus - minus) / (2 * eps)
        got = analytic[i].numpy().astype(np.float64)
        if not np.allclose(got, numeric, atol=atol, rtol=rtol):
            if not raise_exception:
                return False
            err = np.abs(got - numeric).max()
            raise GradcheckError(
                f"gradcheck: input {i} of shape {base[i].shape}: analytic and numerical "
                f"gradients differ by up to {err:.3g}\nanalytic:\n{got}\nnumerical:\n{numeric}")
    return True
