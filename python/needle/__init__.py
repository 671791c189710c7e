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
# The course reaches the op functions (and its own op classes) as `needle.<name>`. Op classes
# whose names are also nn modules (Linear, Conv, LayerNorm, BatchNorm, ReLU, ...) stay in
# `needle.ops` only, so `needle.Linear` is never mistaken for `needle.nn.Linear`.
from .ops import (
    AddScalar, BroadcastTo, Dilate, DivScalar, EWiseAdd, EWiseDiv, EWiseMul, EWisePow, Exp,
    Flip, Log, LogSoftmax, LogSumExp, MakeTensorTuple, MatMul, MulScalar, Negate, PowerScalar,
    Reshape, Split, Stack, Summation, Transpose, TupleGetItem, UnDilate, add, add_scalar,
    broadcast_to, conv, dilate, divide, divide_scalar, exp, flip, log, logsoftmax, logsumexp,
    make_tuple, matmul, maximum, mean, mul_scalar, multiply, negate, pad, permute, power,
    power_scalar, relu, reshape, scaled_dot_product_attention, sigmoid, softmax, split, sqrt,
    stack, summation, tanh, transpose, tuple_get_item, undilate,
)
from . import init, nn, data
from . import optim
from .compile import compile  # noqa: A004 (needle.compile, as torch.compile)
from .init import manual_seed, ones, ones_like, zeros, zeros_like
from . import interop, onnx
from .interop import from_dlpack
from .serialization import load, save

__version__ = "0.1.0"

__all__ = [
    # values, graph and switches
    "Tensor", "TensorTuple", "Value", "Op", "TensorOp", "TensorTupleOp", "find_topo_sort",
    "no_grad", "enable_grad", "is_grad_enabled", "lazy_mode", "detect_anomaly",
    "set_detect_anomaly",
    # devices and arrays
    "Device", "NDArray", "cpu", "cuda", "cpu_numpy", "default_device", "all_devices",
    # subpackages
    "autograd", "backend_ndarray", "ops", "init", "nn", "optim", "data",
    # the step compiler
    "compile",
    # interop and PyTorch habits
    "interop", "onnx", "from_dlpack", "save", "load",
    # constructors
    "manual_seed", "ones", "zeros", "ones_like", "zeros_like",
    # op functions (course names)
    "add", "add_scalar", "multiply", "mul_scalar", "power", "power_scalar", "divide",
    "divide_scalar", "negate", "log", "exp", "relu", "tanh", "sigmoid", "sqrt", "maximum",
    "matmul", "summation", "mean", "broadcast_to", "reshape", "transpose", "permute", "pad",
    "flip", "dilate", "undilate", "conv", "logsumexp", "logsoftmax", "softmax", "stack",
    "split", "make_tuple", "tuple_get_item", "scaled_dot_product_attention",
    # the course's op classes
    "EWiseAdd", "AddScalar", "EWiseMul", "MulScalar", "EWisePow", "PowerScalar", "EWiseDiv",
    "DivScalar", "Negate", "Log", "Exp", "Transpose", "Reshape", "BroadcastTo", "Summation",
    "MatMul", "LogSoftmax", "LogSumExp", "Stack", "Split", "Flip", "Dilate", "UnDilate",
    "MakeTensorTuple", "TupleGetItem",
]
