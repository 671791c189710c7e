"""Optimizers, learning-rate schedules and gradient clipping.

Every optimizer is a stateful class over a plain update rule. Updates happen in place on each
parameter's NDArray (`p.realize_cached_data()`), outside the autograd graph: a step creates no
Tensor, never touches `p.grad`, and a training loop does not grow memory.

Update rules (course conventions where the course has one, PyTorch's otherwise):

- SGD: `g = grad + wd*p; u = m*u + (1-m)*g; p -= lr*u` (u starts at 0); Nesterov uses
  `p -= lr*(m*u + (1-m)*g)`.
- Adam: `t += 1` per `step()`; `g = grad + wd*p`; `m = b1*m + (1-b1)*g`;
  `v = b2*v + (1-b2)*g^2`; `p -= lr*(m/(1-b1^t)) / (sqrt(v/(1-b2^t)) + eps)`.
- AdamW: Adam without `wd` in `g`, and decoupled decay `p -= lr*wd*p` first (PyTorch).
- AdaGrad, RMSProp: PyTorch's rules (no lr decay; RMSProp not centered).
"""
from __future__ import annotations

from typing import Any, Dict, Iterable, List

import numpy as np

from ..autograd import Tensor
from ..backend_ndarray import NDArray
from .clipping import clip_grad_norm

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "AdaGrad", "RMSProp", "OPTIMIZERS"]


# Parameters below this many elements share one flat update (see Optimizer.step): there a
# kernel call's fixed cost (~1 us each, a dozen per Adam update) outweighs the packing copies.
FLAT_MAX_ELEMENTS = 1 << 16


def _writable(p: Tensor) -> NDArray:
    """The parameter's NDArray, replaced by an owned compact copy first if it is a view (a
    parameter made from a slice or a broadcast must not write through to another array)."""
    data = p.realize_cached_data()
    owned = data.as_owned()
    if owned is not data:
        p.cached_data = owned
    return owned


class Optimizer:
    """Base class: holds the parameter list, the learning rate and per-parameter state.

    `state` maps a parameter to a dict of NDArrays (momentum, moments, ...). Subclasses list
    their hyperparameter names in `hyperparameter_names` (saved by `state_dict`) and implement
    `_update(w, g, state)` on NDArrays, in place on `w` and the state.
    """

    hyperparameter_names: tuple = ("lr",)

    def __init__(self, params: Iterable[Tensor], lr: float):
        self.params: List[Tensor] = list(params)
        if not self.params:
            raise ValueError(f"{type(self).__name__}: got an empty parameter list")
        if lr < 0:
            raise ValueError(f"{type(self).__name__}: learning rate must be >= 0, got {lr}")
        self.lr = lr
        self.state: Dict[Tensor, Dict[str, Any]] = {}
        self.t = 0  # number of step() calls

    # ---- gradients -------------------------------------------------------------------------
    def reset_grad(self) -> None:
        """Set every parameter's `.grad` to None (course name)."""
        for p in self.params:
            p.grad = None

    zero_grad = reset_grad

    def clip_grad_norm(self, max_norm: float = 0.25) -> Tensor:
        """Rescale the gradients so that their global L2 norm is at most `max_norm`; returns
        the norm before clipping (a 0-d Tensor)."""
        return clip_grad_norm(self.params, max_norm)

    # ---- the step ----------------------------------------------------------------------------
    def step(self) -> None:
        """Update every parameter that has a gradient, in place; `p.grad` is left unchanged.

        An optimizer with a `_update_flat` rule (Adam, AdamW) updates its small parameters
        (under `FLAT_MAX_ELEMENTS`) of one device and dtype together: their gradients and
        weights are packed into one flat array each, the rule runs once over it (its state
        lives in flat arrays whose views are the per-parameter state), and the weights are
        written back. The rule is elementwise, so the numbers are those of one update per
        parameter, with a few kernel calls in all instead of a dozen per parameter. Large
        parameters, where a call's overhead is small against its work and packing would add
        passes over memory, are updated one by one."""
        self.t += 1
        groups: Dict[Any, list] = {}
        for p in self.params:
            if p.grad is None:
                continue
            w = _writable(p)
            g = p.grad.realize_cached_data()
            if g.shape != w.shape:
                raise ValueError(f"{type(self).__name__}.step: gradient of shape {g.shape} for a "
                                 f"parameter of shape {w.shape}")
            if g.dtype != w.dtype:
                g = g.astype(w.dtype)
            state = self.state.get(p)
            if state is None:
                state = self.state[p] = {}
            small = w.size < FLAT_MAX_ELEMENTS
            groups.setdefault((w.device, w.dtype, small), []).append((p, w, g, state))
        flat = getattr(self, "_update_flat", None)
        for (_, _, small), items in groups.items():
            if flat is not None and small and len(items) > 1:
                flat(items)
                continue
            for _, w, g, state in items:
                self._update(w, g, state)

    def _update(self, w, g, state: Dict[str, Any]) -> None:
        raise NotImplementedError

    # ---- state ---------------------------------------------------------------------------------
    def hyperparameters(self) -> Dict[str, Any]:
        return {name: getattr(self, name) for name in self.hyperparameter_names}

    def state_dict(self) -> Dict[str, Any]:
        """`{"name", "hyperparameters", "t", "state": {param index: {key: numpy array}}}`."""
        state = {}
        for i, p in enumerate(self.params):
            if p in self.state:
                state[i] = {k: v.numpy() for k, v in self.state[p].items()}
        return {"name": type(self).__name__, "hyperparameters": self.hyperparameters(),
                "t": self.t, "state": state}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        """Restore what `state_dict` returned (same parameter order and shapes)."""
        name = state_dict.get("name")
        if name != type(self).__name__:
            raise ValueError(f"{type(self).__name__}.load_state_dict: the state was saved by "
                             f"{name}")
        new_state = {}
        for key, entry in state_dict["state"].items():
            i = int(key)
            if not 0 <= i < len(self.params):
                raise ValueError(f"{type(self).__name__}.load_state_dict: parameter index {i} "
                                 f"out of range for {len(self.params)} parameters")
            p = self.params[i]
            arrays = {}
            for k, v in entry.items():
                v = np.asarray(v)
                if v.shape != tuple(p.shape):
                    raise ValueError(f"{type(self).__name__}.load_state_dict: state {k!r} of "
                                     f"parameter {i} has shape {v.shape}, the parameter "
                                     f"{tuple(p.shape)}")
                arrays[k] = NDArray(v, device=p.device, dtype=p.dtype)
            new_state[p] = arrays
        for k, v in state_dict["hyperparameters"].items():
            setattr(self, k, v)
        self.t = int(state_dict["t"])
        self.state = new_state


class SGD(Optimizer):
    """Stochastic gradient descent with the course's momentum rule (see module docstring)."""

    hyperparameter_names = ("lr", "momentum", "weight_decay", "nesterov")

    def __init__(self, params, lr: float = 0.01, momentum: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False):
        super().__init__(params, lr)
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"SGD: momentum must be in [0, 1), got {momentum}")
        if nesterov and momentum == 0.0:
            raise ValueError("SGD: nesterov=True needs a momentum > 0")
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.nesterov = nesterov

    def _update(self, w, g, state):
        u = None
        if self.momentum:
            u = state.get("u")
            if u is None:  # m * 0 + (1 - m) g: the course's first step, u = (1 - m) g
                u = state["u"] = w.device.zeros(w.shape, dtype=w.dtype)
        w.device.sgd_update(w, g, u, self.lr, self.momentum, self.weight_decay, self.nesterov)


class Adam(Optimizer):
    """Adam with bias correction; weight decay is added to the gradient (course rule)."""

    hyperparameter_names = ("lr", "beta1", "beta2", "eps", "weight_decay")
    decoupled = False

    def __init__(self, params, lr: float = 0.01, beta1: float = 0.9, beta2: float = 0.999,
                 eps: float = 1e-8, weight_decay: float = 0.0):
        super().__init__(params, lr)
        for name, b in (("beta1", beta1), ("beta2", beta2)):
            if not 0.0 <= b < 1.0:
                raise ValueError(f"{type(self).__name__}: {name} must be in [0, 1), got {b}")
        self.beta1 = beta1
        self.beta2 = beta2
        self.eps = eps
        self.weight_decay = weight_decay

    def _update(self, w, g, state):
        # the rule is `Device.adam_update` (one CuPy kernel per parameter on cuda()):
        # g += wd*w (or w *= 1 - lr*wd), m = b1 m + (1-b1) g, v = b2 v + (1-b2) g^2,
        # w -= lr / (1 - b1^t) * m / (sqrt(v / (1 - b2^t)) + eps)
        m = state.get("m")
        if m is None:
            m = state["m"] = w * 0
            v = state["v"] = w * 0
        else:
            v = state["v"]
        w.device.adam_update(w, g, m, v, self.lr, self.beta1, self.beta2, self.eps, self.t,
                                self.weight_decay, self.decoupled)

    def _update_flat(self, items) -> None:
        """`_update` for several parameters of one device and dtype at once (see `step`)."""
        ws = [w for _, w, _, _ in items]
        sizes = [w.size for w in ws]
        key = tuple(id(p) for p, _, _, _ in items)
        cache = getattr(self, "_flat_state", None)
        if cache is None:
            cache = self._flat_state = {}
        flat = cache.get(key)
        if flat is None or any(state.get("m") is not mv or state.get("v") is not vv
                               for (_, _, _, state), mv, vv in zip(items, *flat[2:])):
            flat = cache[key] = self._flat_moments(items, sizes)
        m, v = flat[0], flat[1]
        device = ws[0].device
        g = device.pack_flat([g for _, _, g, _ in items])
        w = device.pack_flat(ws)
        device.adam_update(w, g, m, v, self.lr, self.beta1, self.beta2, self.eps, self.t,
                           self.weight_decay, self.decoupled)
        device.unpack_flat(w, ws)

    @staticmethod
    def _flat_moments(items, sizes):
        """(m, v, m views, v views): one flat array for each moment, holding the current
        per-parameter state (zeros where there is none yet); the views become that state."""
        device, dtype = items[0][1].device, items[0][1].dtype
        out = []
        for name in ("m", "v"):
            flat = device.concatenate([
                (state[name] if name in state else w * 0).reshape((-1,))
                for _, w, _, state in items]).astype(dtype)
            views, off = [], 0
            for (_, w, _, state), n in zip(items, sizes):
                view = flat[off:off + n].reshape(w.shape)
                state[name] = view
                views.append(view)
                off += n
            out.append((flat, views))
        (m, mv), (v, vv) = out
        return m, v, mv, vv


class AdamW(Adam):
    """Adam with decoupled weight decay (`p -= lr*wd*p` before the Adam update), as PyTorch."""

    decoupled = True

    def __init__(self, params, lr: float = 0.001, beta1: float = 0.9, beta2: float = 0.999,
                 eps: float = 1e-8, weight_decay: float = 0.01):
        super().__init__(params, lr, beta1, beta2, eps, weight_decay)


class AdaGrad(Optimizer):
    """AdaGrad: `s += g^2; p -= lr*g/(sqrt(s)+eps)`; weight decay added to the gradient."""

    hyperparameter_names = ("lr", "eps", "weight_decay")

    def __init__(self, params, lr: float = 0.01, eps: float = 1e-10, weight_decay: float = 0.0):
        super().__init__(params, lr)
        self.eps = eps
        self.weight_decay = weight_decay

    def _update(self, w, g, state):
        if self.weight_decay:
            g = g + self.weight_decay * w
        s = state.get("sum")
        if s is None:
            s = state["sum"] = w * 0
        s += g * g
        denom = s ** 0.5
        denom += self.eps
        w -= self.lr * g / denom


class RMSProp(Optimizer):
    """RMSProp (PyTorch rule): `s = a*s + (1-a)*g^2; p -= lr*g/(sqrt(s)+eps)` (+ momentum)."""

    hyperparameter_names = ("lr", "alpha", "eps", "weight_decay", "momentum")

    def __init__(self, params, lr: float = 0.01, alpha: float = 0.99, eps: float = 1e-8,
                 weight_decay: float = 0.0, momentum: float = 0.0):
        super().__init__(params, lr)
        self.alpha = alpha
        self.eps = eps
        self.weight_decay = weight_decay
        self.momentum = momentum

    def _update(self, w, g, state):
        if self.weight_decay:
            g = g + self.weight_decay * w
        s = state.get("square_avg")
        if s is None:
            s = state["square_avg"] = w * 0
        s *= self.alpha
        s += (1.0 - self.alpha) * (g * g)
        denom = s ** 0.5
        denom += self.eps
        if self.momentum:
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = w * 0
            buf *= self.momentum
            buf += g / denom
            w -= self.lr * buf
        else:
            w -= self.lr * g / denom


OPTIMIZERS = {"sgd": SGD, "adam": Adam, "adamw": AdamW, "adagrad": AdaGrad,
              "rmsprop": RMSProp}


