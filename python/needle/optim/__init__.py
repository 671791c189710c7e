"""Optimizers, learning-rate schedules and gradient clipping.

optimizers.py: the first-order rules (SGD, Adam, AdamW, AdaGrad, RMSProp) over one base
class; second_order.py: LBFGS and NewtonCG (closure API); schedules.py: StepLR,
CosineAnnealing, LinearWarmup, ReduceLROnPlateau; clipping.py: clip_grad_norm,
clip_grad_value.
"""
from .clipping import clip_grad_norm, clip_grad_value
from .optimizers import OPTIMIZERS, SGD, AdaGrad, Adam, AdamW, Optimizer, RMSProp
from .schedules import CosineAnnealing, LinearWarmup, LRScheduler, ReduceLROnPlateau, StepLR
from .second_order import LBFGS, NewtonCG

__all__ = [
    "Optimizer", "SGD", "Adam", "AdamW", "AdaGrad", "RMSProp", "LBFGS", "NewtonCG",
    "clip_grad_norm", "clip_grad_value", "LRScheduler", "StepLR", "CosineAnnealing",
    "LinearWarmup", "ReduceLROnPlateau", "OPTIMIZERS",
]
