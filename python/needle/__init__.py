"""needle: a small deep-learning framework you can read end to end.

NDArrays on devices (`cpu()`, `cuda()`), Tensors with reverse- and forward-mode automatic
differentiation, every op as a class with its gradient, and on top of them `nn`, `optim`,
`data`, models and the `needle` command.
"""
from . import backend_ndarray
from .autograd import (
    Op, Tensor, TensorOp, TensorTuple, TensorTupleOp, Value, detect_anomaly, enable_grad,
    find_topo_sort, is_grad_enabled, lazy_mode, no_grad, set_detect_anomaly,
)
from .backend_ndarray import (
    Device, NDArray, all_devices, cpu, cpu_numpy, cuda, default_device,
)
from . import autograd, ops
from .ops import *  # noqa: F401,F403  (the course exposes every op at top level)
from . import init, nn, data
from . import optim
from .init import manual_seed, ones, ones_like, zeros, zeros_like

__version__ = "0.1.0"
