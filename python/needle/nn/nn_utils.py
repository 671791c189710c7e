"""Module utilities (`needle.nn.utils`): weight normalization and loading the matching part of
another model's state dict (transfer learning)."""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

from ..autograd import Tensor
from .nn_basic import Module, Parameter

__all__ = ["weight_norm", "remove_weight_norm", "load_matching_state_dict"]


def _norm_except(v: Tensor, dim: Optional[int]) -> Tensor:
    """The L2 norm of `v` over every axis but `dim` (all axes when dim is None), kept as 1s."""
    if dim is None:
        axes = tuple(range(v.ndim))
    else:
        axes = tuple(i for i in range(v.ndim) if i != dim)
    return ((v * v).sum(axes, keepdims=True)) ** 0.5


def _weight(module: Module, name: str, dim: Optional[int]) -> Tensor:
    g = getattr(module, name + "_g")
    v = getattr(module, name + "_v")
    return v * (g / _norm_except(v, dim))


def weight_norm(module: Module, name: str = "weight", dim: Optional[int] = 0) -> Module:
    """Reparametrize `module.<name>` as `g * v / |v|` (PyTorch's nn.utils.weight_norm).

    The Parameter `name` is replaced by Parameters `name_g` (the norms, shape 1 on every axis
    but `dim`) and `name_v` (the direction, initially the weight), and `name` becomes a plain
    Tensor recomputed from them before every forward, so gradients (of any order) reach g
    and v. The norm is taken over every axis except `dim` of the tensor as needle stores it
    (`dim=None`: the whole tensor): PyTorch's dim=0 on its (out, in) Linear weight is dim=1
    on needle's (in, out) one, and dim=3 on a conv's (K, K, C_in, C_out) weight. Returns
    `module`.
    """
    hooks = module.__dict__.setdefault("_weight_norm", {})
    if name in hooks:
        raise ValueError(f"weight_norm: {name} of {type(module).__name__} is already "
                         f"weight-normalized")
    weight = getattr(module, name, None)
    if not isinstance(weight, Parameter):
        raise ValueError(f"weight_norm: {type(module).__name__} has no Parameter named "
                         f"{name!r}")
    if dim is not None:
        if not -weight.ndim <= dim < weight.ndim:
            raise ValueError(f"weight_norm: dim {dim} is out of range for {name} of shape "
                             f"{weight.shape}")
        dim %= weight.ndim
    data = weight.realize_cached_data()
    v = Parameter(data.copy(), requires_grad=True)
    g = Parameter(_norm_except(Tensor(data, requires_grad=False), dim).realize_cached_data(),
                  requires_grad=True)
    delattr(module, name)
    setattr(module, name + "_g", g)
    setattr(module, name + "_v", v)
    hooks[name] = dim
    setattr(module, name, _weight(module, name, dim))
    if "_forward_before_weight_norm" not in module.__dict__:
        original = module.forward
        module.__dict__["_forward_before_weight_norm"] = original

        def forward(*args, **kwargs):
            for n, d in module.__dict__["_weight_norm"].items():
                setattr(module, n, _weight(module, n, d))
            return original(*args, **kwargs)

        module.forward = forward
    return module


def remove_weight_norm(module: Module, name: str = "weight") -> Module:
    """Undo `weight_norm`: `name` becomes a Parameter again holding g * v / |v|."""
    hooks = module.__dict__.get("_weight_norm", {})
    if name not in hooks:
        raise ValueError(f"remove_weight_norm: {name} of {type(module).__name__} is not "
                         f"weight-normalized")
    dim = hooks.pop(name)
    w = _weight(module, name, dim).realize_cached_data()
    delattr(module, name + "_g")
    delattr(module, name + "_v")
    setattr(module, name, Parameter(w, requires_grad=True))
    if not hooks:
        module.forward = module.__dict__.pop("_forward_before_weight_norm")
        del module.__dict__["forward"]
        del module.__dict__["_weight_norm"]
    return module


def load_matching_state_dict(module: Module, state: Dict[str, Any]
                             ) -> Tuple[List[str], List[str]]:
    """Copy into `module` every entry of `state` whose name and shape match its own.

    Returns (loaded names, skipped descriptions); a skipped entry says why, e.g.
    'head.weight: (64, 10) there, (64, 5) here', 'fc.bias: not in the state' or
    'extra.weight: not in this model'. What `needle train --init-from` reports.
    """
    mine = module.state_dict()
    matching, skipped = {}, []
    for name, value in mine.items():
        theirs = state.get(name)
        if theirs is None:
            skipped.append(f"{name}: not in the state")
        elif tuple(theirs.shape) != tuple(value.shape):
            skipped.append(f"{name}: {tuple(theirs.shape)} there, {tuple(value.shape)} here")
        else:
            matching[name] = theirs
    skipped += [f"{name}: not in this model" for name in state if name not in mine]
    module.load_state_dict(matching, strict=False)
    return sorted(matching), skipped
