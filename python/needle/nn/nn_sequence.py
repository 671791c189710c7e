"""Recurrent layers (RNN, LSTM, GRU, their cells) and Embedding.

Weights use the course's (in, out) layout: `W_ih` is (input_size, G*hidden) and `W_hh` is
(hidden, G*hidden), the transposes of PyTorch's `weight_ih`/`weight_hh`; gate column blocks
follow PyTorch's order (LSTM i, f, g, o; GRU r, z, n). Every weight and bias is drawn from
U(-1/sqrt(hidden), 1/sqrt(hidden)) in the order W_ih, W_hh, bias_ih, bias_hh. `forward` reads
the current attributes, so weights may be replaced after construction.

Multi-layer modules project the whole input sequence with one matmul per layer and run the
time loop as one fused op (`ops.rnn_layer`, `ops.lstm_layer`, `ops.gru_layer`).
"""
from __future__ import annotations

import math
from typing import List, Optional, Tuple

from .. import init, ops
from ..autograd import Tensor
from ..ops.ops_sequence import embedding
from .nn_basic import Module, Parameter


def _uniform(shape, k, device, dtype) -> Parameter:
    return Parameter(init.rand(*shape, low=-k, high=k, device=device, dtype=dtype))


def _zeros_state(batch: int, hidden: int, like: Tensor) -> Tensor:
    data = like.realize_cached_data()
    return Tensor.make_const(data.device.zeros((batch, hidden), dtype=data.dtype))


def _check_input(name: str, x: Tensor, ndim: int, features: int) -> None:
    if x.ndim != ndim or x.shape[-1] != features:
        want = "(B, in)" if ndim == 2 else "(T, B, in)"
        raise ValueError(f"{name}: expected input {want} with in={features}, got shape {x.shape}")


class _RecurrentCell(Module):
    """Shared parameters of the cells: W_ih (in, G*H), W_hh (H, G*H), bias_ih, bias_hh (G*H,)."""

    gates = 1

    def __init__(self, input_size, hidden_size, bias=True, device=None, dtype="float32"):
        super().__init__()
        self.input_size = input_size
        self.hidden_size = hidden_size
        k = 1.0 / math.sqrt(hidden_size)
        width = self.gates * hidden_size
        self.W_ih = _uniform((input_size, width), k, device, dtype)
        self.W_hh = _uniform((hidden_size, width), k, device, dtype)
        self.bias_ih = _uniform((width,), k, device, dtype) if bias else None
        self.bias_hh = _uniform((width,), k, device, dtype) if bias else None

    def _project(self, x: Tensor, fold_hh_bias: bool = True) -> Tensor:
        """x @ W_ih + bias_ih (+ bias_hh) for x (N, in), as one fused linear op."""
        if self.bias_ih is None:
            return ops.linear(x, self.W_ih)
        bias = self.bias_ih + self.bias_hh if fold_hh_bias else self.bias_ih
        return ops.linear(x, self.W_ih, bias)


class RNNCell(_RecurrentCell):
    """h' = act(x W_ih + b_ih + h W_hh + b_hh), act 'tanh' or 'relu'; x (B, in), h (B, H)."""

    def __init__(self, input_size, hidden_size, bias=True, nonlinearity="tanh", device=None,
                 dtype="float32"):
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"RNNCell: nonlinearity must be 'tanh' or 'relu', got "
                             f"{nonlinearity!r}")
        super().__init__(input_size, hidden_size, bias, device, dtype)
        self.nonlinearity = nonlinearity

    def forward(self, X: Tensor, h: Optional[Tensor] = None) -> Tensor:
        _check_input("RNNCell", X, 2, self.input_size)
        if h is None:
            h = _zeros_state(X.shape[0], self.hidden_size, X)
        a = self._project(X) + ops.matmul(h, self.W_hh)
        return ops.tanh(a) if self.nonlinearity == "tanh" else ops.relu(a)


def _gate(a: Tensor, k: int, hidden: int) -> Tensor:
    return a[:, k * hidden:(k + 1) * hidden]


class LSTMCell(_RecurrentCell):
    """One LSTM step; `forward(X (B, in), h=(h0, c0) or None)` -> (h', c'), gates i, f, g, o."""

    gates = 4

    def forward(self, X: Tensor, h: Optional[Tuple[Tensor, Tensor]] = None):
        _check_input("LSTMCell", X, 2, self.input_size)
        H = self.hidden_size
        if h is None:
            h0 = c0 = _zeros_state(X.shape[0], H, X)
        else:
            h0, c0 = h
        a = self._project(X) + ops.matmul(h0, self.W_hh)  # (B, 4H): one matmul for all gates
        i, f = ops.sigmoid(_gate(a, 0, H)), ops.sigmoid(_gate(a, 1, H))
        g, o = ops.tanh(_gate(a, 2, H)), ops.sigmoid(_gate(a, 3, H))
        c = f * c0 + i * g
        return o * ops.tanh(c), c


class GRUCell(_RecurrentCell):
    """One GRU step with PyTorch's equations (gates r, z, n); `forward(X, h=None)` -> h'."""

    gates = 3

    def forward(self, X: Tensor, h: Optional[Tensor] = None) -> Tensor:
        _check_input("GRUCell", X, 2, self.input_size)
        H = self.hidden_size
        if h is None:
            h = _zeros_state(X.shape[0], H, X)
        x = self._project(X, fold_hh_bias=False)
        hh = ops.matmul(h, self.W_hh)
        if self.bias_hh is not None:
            hh = hh + self.bias_hh
        r = ops.sigmoid(_gate(x, 0, H) + _gate(hh, 0, H))
        z = ops.sigmoid(_gate(x, 1, H) + _gate(hh, 1, H))
        n = ops.tanh(_gate(x, 2, H) + r * _gate(hh, 2, H))
        return n + z * h - z * n


def _layer_states(h0: Optional[Tensor], layers: int, batch: int, hidden: int, x: Tensor,
                  name: str) -> List[Tensor]:
    if h0 is None:
        zero = _zeros_state(batch, hidden, x)
        return [zero] * layers
    if tuple(h0.shape) != (layers, batch, hidden):
        raise ValueError(f"{name}: initial state of shape {h0.shape}, expected "
                         f"(num_layers, B, hidden) = {(layers, batch, hidden)}")
    return [h0[k] for k in range(layers)]


class _Recurrent(Module):
    cell_class = RNNCell

    def _build(self, input_size, hidden_size, num_layers, device, dtype, **cell_kwargs):
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        return [self.cell_class(input_size if k == 0 else hidden_size, hidden_size,
                                device=device, dtype=dtype, **cell_kwargs)
                for k in range(num_layers)]

    def _inputs(self, X: Tensor, cell) -> Tensor:
        """The input projection of the whole sequence: (T, B, G*H) from one matmul."""
        T, B, _ = X.shape
        xw = cell._project(ops.reshape(X, (T * B, X.shape[2])),
                           fold_hh_bias=not isinstance(cell, GRUCell))
        return ops.reshape(xw, (T, B, xw.shape[1]))


class RNN(_Recurrent):
    """Multi-layer Elman RNN; `forward(X (T, B, in), h0 (L, B, H) or None)` ->
    (output (T, B, H) of the last layer, h_n (L, B, H)). Cells in list `rnn_cells`."""

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, nonlinearity="tanh",
                 device=None, dtype="float32"):
        super().__init__()
        self.nonlinearity = nonlinearity
        self.rnn_cells = self._build(input_size, hidden_size, num_layers, device, dtype,
                                     bias=bias, nonlinearity=nonlinearity)

    def forward(self, X: Tensor, h0: Optional[Tensor] = None):
        _check_input("RNN", X, 3, self.input_size)
        B = X.shape[1]
        states = _layer_states(h0, self.num_layers, B, self.hidden_size, X, "RNN")
        finals = []
        for cell, h in zip(self.rnn_cells, states):
            out = ops.rnn_layer(self._inputs(X, cell), cell.W_hh, h, self.nonlinearity)
            X = out[0]  # (T, B, H)
            finals.append(out[1])
        return X, ops.stack(finals, 0)


class LSTM(_Recurrent):
    """Multi-layer LSTM; `forward(X (T, B, in), h=(h0, c0) each (L, B, H) or None)` ->
    (output (T, B, H), (h_n, c_n)). Cells in list `lstm_cells`."""

    cell_class = LSTMCell

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, device=None,
                 dtype="float32"):
        super().__init__()
        self.lstm_cells = self._build(input_size, hidden_size, num_layers, device, dtype,
                                      bias=bias)

    def forward(self, X: Tensor, h: Optional[Tuple[Tensor, Tensor]] = None):
        _check_input("LSTM", X, 3, self.input_size)
        B = X.shape[1]
        H, L = self.hidden_size, self.num_layers
        h0, c0 = (None, None) if h is None else h
        hs = _layer_states(h0, L, B, H, X, "LSTM")
        cs = _layer_states(c0, L, B, H, X, "LSTM")
        h_n, c_n = [], []
        for cell, h_init, c_init in zip(self.lstm_cells, hs, cs):
            out = ops.lstm_layer(self._inputs(X, cell), cell.W_hh, h_init, c_init)
            X = out[0]  # (T, B, H)
            h_n.append(out[1])
            c_n.append(out[2])
        return X, (ops.stack(h_n, 0), ops.stack(c_n, 0))


class GRU(_Recurrent):
    """Multi-layer GRU (PyTorch's equations); `forward(X (T, B, in), h0 (L, B, H) or None)` ->
    (output (T, B, H), h_n (L, B, H)). Cells in list `gru_cells`."""

    cell_class = GRUCell

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, device=None,
                 dtype="float32"):
        super().__init__()
        self.gru_cells = self._build(input_size, hidden_size, num_layers, device, dtype,
                                     bias=bias)

    def forward(self, X: Tensor, h0: Optional[Tensor] = None):
        _check_input("GRU", X, 3, self.input_size)
        B = X.shape[1]
        states = _layer_states(h0, self.num_layers, B, self.hidden_size, X, "GRU")
        finals = []
        for cell, h in zip(self.gru_cells, states):
            b_hh = cell.bias_hh
            if b_hh is None:
                data = X.realize_cached_data()
                b_hh = Tensor.make_const(data.device.zeros((3 * self.hidden_size,),
                                                           dtype=data.dtype))
            out = ops.gru_layer(self._inputs(X, cell), cell.W_hh, b_hh, h)
            X = out[0]  # (T, B, H)
            finals.append(out[1])
        return X, ops.stack(finals, 0)


class Embedding(Module):
    """Lookup table: ids (T, B) (float or int) -> (T, B, embedding_dim); weight ~ N(0, 1).

    A gather (`weight[ids]`) whose gradient is a scatter-add of the output gradient into the
    rows of the ids (repeated ids accumulate); no one-hot matrix is built.
    """

    def __init__(self, num_embeddings, embedding_dim, device=None, dtype="float32"):
        super().__init__()
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.weight = Parameter(init.randn(num_embeddings, embedding_dim, device=device,
                                           dtype=dtype))

    def forward(self, x: Tensor) -> Tensor:
        return embedding(self.weight, x)
