"""Every differentiable op: a class with `compute` and `gradient`, and a lowercase function."""
from .ops_attention import ScaledDotProductAttention, scaled_dot_product_attention
from .ops_conv import (
    AvgPool2d, AvgPool2dAdjoint, Conv, GatherFlat, MaxPool2d, ScatterFlat, avg_pool2d, conv,
    conv_nchw, max_pool2d,
)
from .ops_fused import FusedBackward, FusedOp, FusedTupleOp, Linear, linear, vjp_of
from .ops_indexing import (
    Concatenate, Dilate, Flip, GetItem, Pad, ScatterAdd, UnDilate, concatenate, dilate, flip,
    getitem, pad, scatter_add, undilate,
)
from .ops_logarithmic import (
    LogSoftmax, LogSumExp, Softmax, SoftmaxCrossEntropy, logsoftmax, logsumexp, softmax,
    softmax_cross_entropy,
)
from .ops_mathematic import (
    AddScalar, BroadcastTo, DivScalar, Erf, EWiseAdd, EWiseDiv, EWiseMul, EWisePow, Exp, Log,
    MatMul, Max, Maximum, MulScalar, Negate, Permute, PowerScalar, ReLU, ReLUGrad, Reshape,
    ScalarPower, Sigmoid, Sqrt, Summation, Tanh, TanhGrad, ToDevice, Transpose, add,
    add_scalar, broadcast_to, divide, divide_scalar, erf, exp, keepdims_shape, log, matmul, max,
    maximum, mean, mul_scalar, multiply, negate, normalize_axes, permute, power, power_scalar,
    reduce_to_shape, relu, relu_grad, reshape, sigmoid, sqrt, summation, tanh, tanh_grad,
    to_device, transpose,
)
from .ops_norm import (
    BatchNorm, LayerNorm, Standardize, batch_norm_train, layer_norm, standardize,
)
from .ops_sequence import (
    EmbeddingLookup, EmbeddingScatter, GRULayer, LSTMLayer, RNNLayer, embedding, gru_layer,
    lstm_layer, rnn_layer,
)
from .ops_tuple import (
    MakeTensorTuple, Split, Stack, TupleGetItem, make_tuple, split, stack, tuple_get_item,
)

__all__ = [
    # functions
    "add", "add_scalar", "multiply", "mul_scalar", "power", "power_scalar", "divide",
    "divide_scalar", "negate", "log", "exp", "erf", "relu", "relu_grad", "tanh", "tanh_grad",
    "sigmoid",
    "sqrt",
    "maximum", "matmul", "linear", "summation", "mean", "max", "broadcast_to", "reshape",
    "transpose", "permute", "to_device", "getitem", "scatter_add", "flip", "pad", "dilate",
    "undilate", "concatenate",
    "logsumexp", "logsoftmax", "softmax", "softmax_cross_entropy", "standardize", "layer_norm",
    "batch_norm_train", "conv", "conv_nchw", "max_pool2d", "avg_pool2d",
    "scaled_dot_product_attention", "rnn_layer", "lstm_layer", "gru_layer", "embedding",
    "make_tuple", "tuple_get_item", "stack", "split",
    # helpers for writing gradient rules
    "reduce_to_shape", "keepdims_shape", "normalize_axes", "vjp_of",
    # op classes
    "EWiseAdd", "AddScalar", "EWiseMul", "MulScalar", "EWisePow", "PowerScalar", "ScalarPower",
    "EWiseDiv", "DivScalar", "Negate", "Log", "Exp", "Erf", "ReLU", "ReLUGrad", "Tanh",
    "TanhGrad",
    "Sigmoid",
    "Sqrt", "Maximum", "MatMul", "Linear", "Summation", "Max", "BroadcastTo", "Reshape",
    "Transpose", "Permute", "ToDevice", "GetItem", "ScatterAdd", "Flip", "Pad", "Dilate",
    "UnDilate", "Concatenate",
    "LogSumExp", "LogSoftmax", "Softmax", "SoftmaxCrossEntropy", "Standardize", "LayerNorm",
    "BatchNorm", "Conv", "MaxPool2d", "AvgPool2d", "AvgPool2dAdjoint", "ScatterFlat",
    "GatherFlat", "ScaledDotProductAttention", "RNNLayer", "LSTMLayer", "GRULayer",
    "EmbeddingLookup", "EmbeddingScatter",
    "MakeTensorTuple", "TupleGetItem", "Stack", "Split", "FusedOp", "FusedTupleOp",
    "FusedBackward",
]
