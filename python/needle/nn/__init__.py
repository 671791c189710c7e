"""Neural-network modules: Module, Parameter and layers; `nn.functional` holds their math."""
from . import functional
from .nn_basic import (
    GELU, BatchNorm1d, Dropout, Flatten, Identity, LayerNorm, LayerNorm1d, Linear, Module,
    MSELoss, Parameter, ReLU, Residual, Sequential, Sigmoid, SoftmaxLoss, Tanh,
)
