"""Every differentiable op: a class with `compute` and `gradient`, and a lowercase function."""
from .ops_attention import ScaledDotProductAttention, scaled_dot_product_attention
from .ops_conv import (
    AvgPool2d, AvgPool2dAdjoint, Conv, GatherFlat, MaxPool2d, ScatterFlat, avg_pool2d, conv,
    max_pool2d,
)
from .ops_fused import FusedBackward, FusedOp, FusedTupleOp, Linear, linear, vjp_of
from .ops_indexing import (
    Dilate, Flip, GetItem, Pad, ScatterAdd, UnDilate, dilate, flip, getitem, pad, scatter_add,
    undilate,
)
from .ops_logarithmic import (
    LogSoftmax, LogSumExp, Softmax, SoftmaxCrossEntropy, logsoftmax, logsumexp, softmax,
    softmax_cross_entropy,
)
from .ops_mathematic import (
    AddScalar, BroadcastTo, DivScalar, EWiseAdd, EWiseDiv, EWiseMul, EWisePow, Exp, Log,
    MatMul, Max, Maximum, MulScalar, Negate, Permute, PowerScalar, ReLU, Reshape, ScalarPower,
    Sigmoid, Sqrt, Summation, Tanh, ToDevice, Transpose, add, add_scalar, broadcast_to, divide,
    divide_scalar, exp, keepdims_shape, log, matmul, max, maximum, mean, mul_scalar, multiply, negate,
    normalize_axes, permute, power, power_scalar, reduce_to_shape, relu, reshape, sigmoid, sqrt,
    summation, tanh, to_device, transpose,
)
from .ops_norm import (
    BatchNorm, LayerNorm, Standardize, batch_norm_train, layer_norm, standardize,
)
from .ops_sequence import (
    GRULayer, LSTMLayer, RNNLayer, gru_layer, lstm_layer, rnn_layer,
)
from .ops_tuple import (
    MakeTensorTuple, Split, Stack, TupleGetItem, make_tuple, split, stack, tuple_get_item,
)

__all__ = [name for name in dir() if not name.startswith("_")]
