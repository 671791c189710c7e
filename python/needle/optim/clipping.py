"""Gradient clipping: by global L2 norm and by value (PyTorch's clip_grad_norm_ and
clip_grad_value_, which replace each gradient by a new constant Tensor here)."""
from __future__ import annotations

import math
from typing import Iterable

from ..autograd import Tensor

__all__ = ["clip_grad_norm", "clip_grad_value"]


def clip_grad_norm(params: Iterable[Tensor], max_norm: float) -> float:
    """Scale all gradients by `max_norm / total_norm` when the global L2 norm exceeds it.

    Returns the total norm before clipping. Gradients are replaced by new constant Tensors
    (never modified in place: two parameters may share one gradient array).
    """
    params = [p for p in params if p.grad is not None]
    total = 0.0
    for p in params:
        g = p.grad.realize_cached_data()
        total += float((g * g).sum().item())
    total = math.sqrt(total)
    if total > max_norm:
        scale = max_norm / (total + 1e-6)
        for p in params:
            data = p.grad.realize_cached_data()
            p.grad = Tensor.make_const(data * scale)
    return total


def clip_grad_value(params: Iterable[Tensor], clip_value: float) -> None:
    """Clamp every gradient element to [-clip_value, clip_value] (PyTorch's clip_grad_value_).

    Gradients are replaced by new constant Tensors, as in `clip_grad_norm`.
    """
    if clip_value < 0:
        raise ValueError(f"clip_grad_value: clip_value must be >= 0, got {clip_value}")
    for p in params:
        if p.grad is None:
            continue
        data = p.grad.realize_cached_data()
        p.grad = Tensor.make_const(data.maximum(-clip_value).minimum(clip_value))
