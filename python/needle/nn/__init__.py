"""Neural-network modules: Module, Parameter and layers; `nn.functional` holds their math."""
from . import functional
from .nn_basic import (
    GELU, BatchNorm1d, Dropout, Flatten, Identity, LayerNorm, LayerNorm1d, Linear, Module,
    MSELoss, Parameter, ReLU, Residual, Sequential, Sigmoid, SoftmaxLoss, Tanh,
)
from . import functional_conv
from .nn_conv import (
    ELU, AdaptiveAvgPool2d, AvgPool2d, BatchNorm2d, Conv, ConvTranspose, ConvTranspose2d,
    GroupNorm, InstanceNorm2d, LeakyReLU, MaxPool2d, Softplus, Softsign,
)
from .nn_loss import CrossEntropyLoss
from .nn_distributed import SyncBatchNorm, convert_sync_batchnorm
from .nn_sequence import GRU, LSTM, RNN, Embedding, GRUCell, LSTMCell, RNNCell
from .nn_transformer import (
    MultiheadAttention, PositionalEmbedding, Transformer, TransformerEncoderLayer,
)
from . import nn_utils
from . import nn_utils as utils

__all__ = [
    "Module", "Parameter", "Identity", "Sequential", "Residual", "Flatten", "Linear", "ReLU",
    "Sigmoid", "Tanh", "GELU", "ELU", "LeakyReLU", "Softplus", "Softsign", "Dropout",
    "BatchNorm1d", "BatchNorm2d", "LayerNorm", "LayerNorm1d", "GroupNorm", "InstanceNorm2d",
    "SyncBatchNorm", "convert_sync_batchnorm", "Conv", "ConvTranspose", "ConvTranspose2d",
    "MaxPool2d",
    "AvgPool2d", "AdaptiveAvgPool2d", "RNN", "LSTM", "GRU", "RNNCell", "LSTMCell", "GRUCell",
    "Embedding", "MultiheadAttention", "PositionalEmbedding", "Transformer",
    "TransformerEncoderLayer", "SoftmaxLoss", "CrossEntropyLoss", "MSELoss", "functional",
    "functional_conv", "nn_utils", "utils",
]
