"""Gradient clipping: by global L2 norm and by value (PyTorch's clip_grad_norm_ and
clip_grad_value_, which replace each gradient by a new constant Tensor here)."""
from __future__ import annotations

from typing import Iterable

from ..autograd import Tensor

__all__ = ["clip_grad_norm", "clip_grad_value"]


def clip_grad_norm(params: Iterable[Tensor], max_norm: float) -> Tensor:
    """Scale all gradients by `min(1, max_norm / (total_norm + 1e-6))`: their global L2 norm
    is at most `max_norm` afterwards (PyTorch's `clip_grad_norm_`).

    Returns the total norm before clipping as a 0-d float32 Tensor (`float(...)` reads it).
    Computed on the device without reading a value back, so it runs inside `needle.compile`
    and costs no host synchronisation on a GPU. Gradients are replaced by new constant
    Tensors (never modified in place: two parameters may share one gradient array); under
    the limit the scale is exactly 1, so their values do not change.
    """
    if not max_norm >= 0:  # negative or nan
        raise ValueError(f"clip_grad_norm: max_norm must be >= 0, got {max_norm}")
    grads = [(p, p.grad.realize_cached_data()) for p in params if p.grad is not None]
    if not grads:
        return Tensor(0.0, dtype="float32", requires_grad=False)
    squares = None
    for _, g in grads:
        g32 = g if g.dtype == "float32" else g.astype("float32")
        s = (g32 * g32).sum()
        squares = s if squares is None else squares + s
    total = squares.sqrt()
    scale = (max_norm / (total + 1e-6)).minimum(1.0)
    for p, g in grads:
        p.grad = Tensor.make_const(g * (scale if g.dtype == "float32" else scale.astype(g.dtype)))
    return Tensor.make_const(total)


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
