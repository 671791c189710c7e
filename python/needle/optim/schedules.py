"""Learning-rate schedules: StepLR, CosineAnnealing, LinearWarmup (wraps any schedule) and
ReduceLROnPlateau (PyTorch's semantics)."""
from __future__ import annotations

import math
from typing import Any, Dict, Optional

from .optimizers import Optimizer

__all__ = ["LRScheduler", "StepLR", "CosineAnnealing", "LinearWarmup", "ReduceLROnPlateau"]


# ---- learning-rate schedules -------------------------------------------------------------------

class LRScheduler:
    """Sets `optimizer.lr = base_lr * factor(t)` after each `step()` (t counts the calls).

    Call `step()` once per epoch or once per batch, as the schedule's unit is meant.
    Schedules compose: `LinearWarmup(opt, 5, after=CosineAnnealing(opt, 95))`.
    """

    def __init__(self, optimizer: Optimizer):
        self.optimizer = optimizer
        self.base_lr = optimizer.lr
        self.last_step = 0

    def factor(self, t: int) -> float:
        raise NotImplementedError

    def lr_at(self, t: int) -> float:
        return self.base_lr * self.factor(t)

    def step(self) -> None:
        self.last_step += 1
        self.optimizer.lr = self.lr_at(self.last_step)

    def state_dict(self) -> Dict[str, Any]:
        return {"base_lr": self.base_lr, "last_step": self.last_step}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.base_lr = float(state["base_lr"])
        self.last_step = int(state["last_step"])
        self.optimizer.lr = self.lr_at(self.last_step)


class StepLR(LRScheduler):
    """lr = base_lr * gamma^(t // step_size) (PyTorch's StepLR)."""

    def __init__(self, optimizer, step_size: int, gamma: float = 0.1):
        super().__init__(optimizer)
        if step_size < 1:
            raise ValueError(f"StepLR: step_size must be >= 1, got {step_size}")
        self.step_size = step_size
        self.gamma = gamma

    def factor(self, t):
        return self.gamma ** (t // self.step_size)


class CosineAnnealing(LRScheduler):
    """lr = eta_min + (base_lr - eta_min) * (1 + cos(pi * t / T_max)) / 2, held after T_max."""

    def __init__(self, optimizer, T_max: int, eta_min: float = 0.0):  # noqa: N803 (PyTorch)
        super().__init__(optimizer)
        if T_max < 1:
            raise ValueError(f"CosineAnnealing: T_max must be >= 1, got {T_max}")
        self.T_max = T_max
        self.eta_min = eta_min

    def lr_at(self, t):
        t = min(t, self.T_max)
        return self.eta_min + (self.base_lr - self.eta_min) * (
            1 + math.cos(math.pi * t / self.T_max)) / 2

    def factor(self, t):
        return self.lr_at(t) / self.base_lr if self.base_lr else 0.0


class LinearWarmup(LRScheduler):
    """Linear ramp from `start_factor*base_lr` to base_lr over `warmup_steps`, then `after`.

    During warm-up the factor is `start_factor + (1 - start_factor) * t / warmup_steps` (as
    PyTorch's LinearLR); from t = warmup_steps on, the lr is `after.lr_at(t - warmup_steps)`
    (or base_lr when `after` is None).
    """

    def __init__(self, optimizer, warmup_steps: int, after: Optional[LRScheduler] = None,
                 start_factor: float = 0.0):
        super().__init__(optimizer)
        if warmup_steps < 1:
            raise ValueError(f"LinearWarmup: warmup_steps must be >= 1, got {warmup_steps}")
        self.warmup_steps = warmup_steps
        self.after = after
        self.start_factor = start_factor
        optimizer.lr = self.lr_at(0)

    def lr_at(self, t):
        if t < self.warmup_steps:
            return self.base_lr * (self.start_factor
                                   + (1 - self.start_factor) * t / self.warmup_steps)
        if self.after is None:
            return self.base_lr
        return self.after.lr_at(t - self.warmup_steps)

    def factor(self, t):
        return self.lr_at(t) / self.base_lr if self.base_lr else 0.0


class ReduceLROnPlateau:
    """Multiply the lr by `factor` when a metric has stopped improving (PyTorch's semantics).

    Call `step(metric)` once per evaluation. The metric improves when it beats the best so
    far by `threshold` (relative, `best*(1 -/+ threshold)`, or absolute, `best -/+ threshold`,
    by `threshold_mode`; `mode="min"` for losses, `"max"` for accuracies). After more than
    `patience` evaluations without improvement the lr becomes `max(lr*factor, min_lr)` (a
    change smaller than `eps` is skipped) and `cooldown` evaluations follow in which bad
    evaluations are not counted.
    """

    def __init__(self, optimizer: Optimizer, mode: str = "min", factor: float = 0.1,
                 patience: int = 10, threshold: float = 1e-4, threshold_mode: str = "rel",
                 cooldown: int = 0, min_lr: float = 0.0, eps: float = 1e-8):
        if mode not in ("min", "max"):
            raise ValueError(f"ReduceLROnPlateau: mode must be 'min' or 'max', got {mode!r}")
        if threshold_mode not in ("rel", "abs"):
            raise ValueError(f"ReduceLROnPlateau: threshold_mode must be 'rel' or 'abs', got "
                             f"{threshold_mode!r}")
        if not 0.0 <= factor < 1.0:
            raise ValueError(f"ReduceLROnPlateau: factor must be in [0, 1), got {factor}")
        if patience < 0 or cooldown < 0:
            raise ValueError(f"ReduceLROnPlateau: patience and cooldown must be >= 0, got "
                             f"{patience} and {cooldown}")
        self.optimizer = optimizer
        self.mode, self.factor, self.patience = mode, factor, patience
        self.threshold, self.threshold_mode = threshold, threshold_mode
        self.cooldown, self.min_lr, self.eps = cooldown, min_lr, eps
        self.best = math.inf if mode == "min" else -math.inf
        self.num_bad_epochs = 0
        self.cooldown_counter = 0
        self.last_step = 0

    def is_better(self, a: float, best: float) -> bool:
        rel = self.threshold_mode == "rel"
        if self.mode == "min":
            return a < (best * (1.0 - self.threshold) if rel else best - self.threshold)
        return a > (best * (1.0 + self.threshold) if rel else best + self.threshold)

    def step(self, metric) -> None:
        current = float(metric.item() if hasattr(metric, "item") else metric)
        self.last_step += 1
        if self.is_better(current, self.best):
            self.best = current
            self.num_bad_epochs = 0
        else:
            self.num_bad_epochs += 1
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0
        if self.num_bad_epochs > self.patience:
            old = self.optimizer.lr
            new = max(old * self.factor, self.min_lr)
            if old - new > self.eps:
                self.optimizer.lr = new
            self.cooldown_counter = self.cooldown
            self.num_bad_epochs = 0

    _state_keys = ("best", "num_bad_epochs", "cooldown_counter", "last_step")

    def state_dict(self) -> Dict[str, Any]:
        return {k: getattr(self, k) for k in self._state_keys} | {"lr": self.optimizer.lr}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        for k in self._state_keys:
            setattr(self, k, type(getattr(self, k))(state[k]))
        self.optimizer.lr = float(state["lr"])
