"""Module system and the basic layers: Linear, activations, norms, dropout, losses."""
from __future__ import annotations

from typing import Any, Dict, List

import numpy as np

from .. import init, ops
from ..autograd import Tensor
from . import functional as F


class Parameter(Tensor):
    """A Tensor that a Module trains (found by `Module.parameters()`)."""

    __slots__ = ()
    # it outlives its gradients: a graph backward may keep it strongly (autograd._weak_copies)
    weak_in_grad_graph = False


def _walk(value: Any, prefix: str):
    """Yield (dotted name, object) for every Parameter/Module/Tensor under `value`."""
    if isinstance(value, (Parameter, Module)):
        yield prefix, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _walk(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from _walk(v, f"{prefix}.{i}" if prefix else str(i))


_STRUCTURE_VERSION = [0]


def structure_version() -> int:
    """A number that changes whenever any Module gains, replaces or deletes a Parameter,
    submodule or container attribute, or changes its `training` flag: what `needle.compile`
    checks instead of walking the module tree on every call. (Items appended to a list
    attribute in place are not seen.)"""
    return _STRUCTURE_VERSION[0]


class Module:
    """A layer or model: holds Parameters, buffers and submodules; `forward` does the math.

    Parameters and submodules are found by walking the instance's attributes (in definition
    order), descending into Modules, dicts, lists and tuples. Buffers (state that is saved but
    not trained, such as BatchNorm's running statistics) are registered by name.
    """

    def __init__(self):
        self.training = True

    def __setattr__(self, name, value):
        if name == "training" or isinstance(value, (Parameter, Module, list, tuple, dict)) \
                or isinstance(self.__dict__.get(name), (Parameter, Module, list, tuple, dict)):
            _STRUCTURE_VERSION[0] += 1
        object.__setattr__(self, name, value)

    def __delattr__(self, name):
        _STRUCTURE_VERSION[0] += 1
        object.__delattr__(self, name)

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__}.forward is not implemented")

    # ---- traversal ---------------------------------------------------------------------
    def _children_items(self):
        for name, value in vars(self).items():
            if name.startswith("__"):
                continue
            yield from _walk(value, name)

    def named_parameters(self, prefix: str = "") -> List[tuple]:
        out, seen = [], set()
        for name, obj in self._children_items():
            full = f"{prefix}{name}"
            if isinstance(obj, Parameter):
                if id(obj) not in seen:
                    seen.add(id(obj))
                    out.append((full, obj))
            else:
                for sub_name, p in obj.named_parameters(prefix=full + "."):
                    if id(p) not in seen:
                        seen.add(id(p))
                        out.append((sub_name, p))
        return out

    def parameters(self) -> List[Parameter]:
        """Every Parameter, in attribute-definition order, each once."""
        return [p for _, p in self.named_parameters()]

    def children(self) -> List["Module"]:
        return [obj for _, obj in self._children_items() if isinstance(obj, Module)]

    def named_modules(self, prefix: str = ""):
        yield prefix.rstrip("."), self
        for name, obj in self._children_items():
            if isinstance(obj, Module):
                yield from obj.named_modules(prefix=f"{prefix}{name}.")

    def modules_list(self) -> List["Module"]:
        return [m for _, m in self.named_modules()]

    def _children(self) -> List["Module"]:  # course name
        return [m for _, m in list(self.named_modules())[1:]]

    def register_buffer(self, name: str, tensor: Tensor) -> None:
        """Keep `tensor` as state saved in state_dict but not trained."""
        names = self.__dict__.setdefault("_buffer_names", [])
        if name not in names:
            names.append(name)
        setattr(self, name, tensor)

    def named_buffers(self):
        for prefix, m in self.named_modules():
            for name in m.__dict__.get("_buffer_names", []):
                yield (f"{prefix}.{name}" if prefix else name), getattr(m, name)

    # ---- modes -------------------------------------------------------------------------
    def train(self, mode: bool = True) -> "Module":
        for m in self.modules_list():
            m.training = mode
        return self

    def eval(self) -> "Module":
        return self.train(False)

    # ---- state ---------------------------------------------------------------------------
    def state_dict(self) -> Dict[str, np.ndarray]:
        """Parameters and buffers by dotted name, as NumPy copies."""
        out = {name: p.numpy().copy() for name, p in self.named_parameters()}
        for name, b in self.named_buffers():
            out[name] = b.numpy().copy()
        return out

    def load_state_dict(self, state: Dict[str, Any], strict: bool = True) -> None:
        """Copy values into parameters and buffers; checks keys and shapes first.

        Nothing is written unless every key and shape matches (with `strict`).
        """
        targets = dict(self.named_parameters())
        targets.update(dict(self.named_buffers()))
        missing = [k for k in targets if k not in state]
        unexpected = [k for k in state if k not in targets]
        if strict and (missing or unexpected):
            raise KeyError(f"load_state_dict: missing keys {missing}, unexpected keys "
                           f"{unexpected} for {type(self).__name__}")
        updates = []
        for name, t in targets.items():
            if name not in state:
                continue
            value = np.asarray(state[name].numpy() if isinstance(state[name], Tensor)
                               else state[name])
            if tuple(value.shape) != tuple(t.shape):
                raise ValueError(f"load_state_dict: {name} has shape {tuple(value.shape)} in "
                                 f"the state, {tuple(t.shape)} in the model")
            updates.append((t, value))
        for t, value in updates:
            data = t.realize_cached_data()
            t.cached_data = type(data)(value.astype(data.dtype), device=data.device)

    def to(self, device) -> "Module":
        """Move every parameter and buffer to `device` in place."""
        for _, t in list(self.named_parameters()) + list(self.named_buffers()):
            t.cached_data = t.realize_cached_data().to(device)
        return self

    def num_parameters(self) -> int:
        return int(sum(np.prod(p.shape) for p in self.parameters()))

    # ---- PyTorch habits ----------------------------------------------------------------
    def modules(self) -> List["Module"]:
        """This module and every submodule (PyTorch's name). `Sequential` keeps the course's
        `modules` attribute (its layers), which hides this method: use `modules_list()`."""
        return self.modules_list()

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Forget every parameter's gradient (PyTorch's default sets `.grad` to None)."""
        for p in self.parameters():
            if set_to_none or p.grad is None:
                p.grad = None
            else:
                p.grad = p.grad * 0

    def requires_grad_(self, requires_grad: bool = True) -> "Module":
        """Set `requires_grad` of every parameter (False freezes them: the backward gives
        them no gradient and optimizers skip them); returns self, as PyTorch."""
        for p in self.parameters():
            p.requires_grad = bool(requires_grad)
        return self

    def apply(self, fn) -> "Module":
        """Call `fn` on every submodule, children first, then on this module (as PyTorch)."""
        for child in self.children():
            child.apply(fn)
        fn(self)
        return self

    def extra_repr(self) -> str:
        """The constructor settings shown in `repr` (plain int/float/bool/str attributes)."""
        keep = []
        for k, v in vars(self).items():
            if k.startswith("_") or k == "training":
                continue
            if isinstance(v, (bool, int, float, str)) or (
                    isinstance(v, tuple) and v and all(isinstance(x, int) for x in v)):
                keep.append(f"{k}={v!r}")
        return ", ".join(keep)

    def __repr__(self):
        """A tree of submodules with parameter counts, as PyTorch prints it."""
        total = self.num_parameters()
        count = f"  # {total:,} parameters" if total else ""
        kids = [(n, m) for n, m in self._children_items() if isinstance(m, Module)]
        if not kids:
            return f"{type(self).__name__}({self.extra_repr()}){count}"
        lines = [f"{type(self).__name__}({self.extra_repr()}{count}"]
        for name, m in kids:
            lines.append(f"  ({name}): " + repr(m).replace("\n", "\n  "))
        lines.append(")")
        return "\n".join(lines)


class Identity(Module):
    def forward(self, x):
        return x


class Linear(Module):
    """y = x W + b with W (in_features, out_features) and b (1, out_features) (course layout).

    W = kaiming_uniform(in, out); then b = kaiming_uniform(out, 1) reshaped (course draws).
    """

    def __init__(self, in_features, out_features, bias=True, device=None, dtype="float32"):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.weight = Parameter(init.kaiming_uniform(in_features, out_features, device=device,
                                                     dtype=dtype))
        self.bias = None
        if bias:
            b = init.kaiming_uniform(out_features, 1, device=device, dtype=dtype)
            self.bias = Parameter(ops.reshape(b, (1, out_features)))

    def forward(self, X: Tensor) -> Tensor:
        return F.linear(X, self.weight, self.bias)


class Flatten(Module):
    """(B, d1, d2, ...) -> (B, d1 * d2 * ...)."""

    def forward(self, X):
        return ops.reshape(X, (X.shape[0], -1))


class ReLU(Module):
    def forward(self, x):
        return ops.relu(x)


class Tanh(Module):
    def forward(self, x):
        return ops.tanh(x)


class Sigmoid(Module):
    def forward(self, x):
        return ops.sigmoid(x)


class GELU(Module):
    """GELU(approximate="none"): exact erf form (PyTorch's default); "tanh": the approximation."""

    def __init__(self, approximate: str = "none"):
        super().__init__()
        if approximate not in ("none", "tanh"):
            raise ValueError(f"GELU: approximate must be 'none' or 'tanh', got {approximate!r}")
        self.approximate = approximate

    def forward(self, x):
        return F.gelu(x, self.approximate)


class Sequential(Module):
    def __init__(self, *modules):
        super().__init__()
        self.modules = modules

    def forward(self, x):
        for module in self.modules:
            x = module(x)
        return x

    def __getitem__(self, i):
        return self.modules[i]

    def __len__(self):
        return len(self.modules)


class Residual(Module):
    """fn(x) + x."""

    def __init__(self, fn: Module):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x) + x


class SoftmaxLoss(Module):
    """Mean softmax cross-entropy of logits (B, K) against integer class ids y (B,)."""

    def forward(self, logits: Tensor, y: Tensor):
        return F.softmax_loss(logits, y)


class MSELoss(Module):
    def forward(self, pred, target):
        return F.mse_loss(pred, target)


class LayerNorm1d(Module):
    """Normalize each row (the last axis) then w * x_hat + b; weight/bias (dim,)."""

    def __init__(self, dim, eps=1e-5, device=None, dtype="float32"):
        super().__init__()
        self.dim = dim
        self.eps = eps
        self.weight = Parameter(init.ones(dim, device=device, dtype=dtype))
        self.bias = Parameter(init.zeros(dim, device=device, dtype=dtype))

    def forward(self, x):
        if x.shape[-1] != self.dim:
            raise ValueError(f"LayerNorm1d: expected last dimension {self.dim}, got input of "
                             f"shape {x.shape}")
        return F.layer_norm(x, self.weight, self.bias, self.eps)


LayerNorm = LayerNorm1d


class BatchNorm1d(Module):
    """Batch normalization over axis 0 of (B, dim) input, with running statistics."""

    def __init__(self, dim, eps=1e-5, momentum=0.1, device=None, dtype="float32"):
        super().__init__()
        self.dim = dim
        self.eps = eps
        self.momentum = momentum
        self.weight = Parameter(init.ones(dim, device=device, dtype=dtype))
        self.bias = Parameter(init.zeros(dim, device=device, dtype=dtype))
        self.register_buffer("running_mean", init.zeros(dim, device=device, dtype=dtype))
        self.register_buffer("running_var", init.ones(dim, device=device, dtype=dtype))

    def forward(self, x):
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"BatchNorm1d: expected input (batch, {self.dim}), got {x.shape}")
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                            self.training, self.momentum, self.eps, axes=(0,))


class Dropout(Module):
    """Training: zero with probability p, scale survivors by 1/(1-p). Eval: identity."""

    def __init__(self, p=0.5):
        super().__init__()
        self.p = p

    def forward(self, x):
        return F.dropout(x, self.p, self.training)
