"""`CrossEntropyLoss` with PyTorch's signature, beside the course's `SoftmaxLoss`."""
from __future__ import annotations

from .. import init, ops
from ..autograd import Tensor
from ..errors import ConfigError
from . import functional as F
from .nn_basic import Module

__all__ = ["CrossEntropyLoss"]


class CrossEntropyLoss(Module):
    """`CrossEntropyLoss(reduction="mean", label_smoothing=0.0)` on logits (N, C).

    The target is either class ids (N,) (any numeric dtype) or class probabilities of the
    logits' shape, as in PyTorch. `reduction` is "mean", "sum" or "none" (a (N,) Tensor).
    With the defaults and class ids this is the course's `SoftmaxLoss` (one fused op).
    """

    def __init__(self, reduction: str = "mean", label_smoothing: float = 0.0):
        super().__init__()
        if reduction not in ("mean", "sum", "none"):
            raise ConfigError(f"CrossEntropyLoss: reduction must be 'mean', 'sum' or 'none', "
                              f"got {reduction!r}")
        if not 0.0 <= label_smoothing <= 1.0:
            raise ConfigError(f"CrossEntropyLoss: label_smoothing must be in [0, 1], got "
                              f"{label_smoothing}")
        self.reduction = reduction
        self.label_smoothing = float(label_smoothing)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        if logits.ndim != 2:
            raise ValueError(f"CrossEntropyLoss: expected logits (N, C), got shape "
                             f"{logits.shape}")
        n, c = logits.shape
        probs = tuple(target.shape) == tuple(logits.shape)
        if not probs and tuple(target.shape) != (n,):
            raise ValueError(f"CrossEntropyLoss: target of shape {target.shape} fits neither "
                             f"class ids ({n},) nor probabilities {logits.shape}")
        if not probs and self.reduction == "mean" and self.label_smoothing == 0.0:
            return F.softmax_loss(logits, target)
        if probs:
            q = target
        else:
            q = init.one_hot(c, target, device=logits.device, dtype=logits.dtype)
        if self.label_smoothing:
            q = q * (1.0 - self.label_smoothing) + self.label_smoothing / c
        per_row = -ops.summation(ops.logsoftmax(logits, axes=1) * q, axes=(1,))
        if self.reduction == "none":
            return per_row
        total = ops.summation(per_row)
        return total if self.reduction == "sum" else total / n
