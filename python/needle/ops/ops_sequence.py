"""Fused recurrent layers (the whole time loop of one RNN/LSTM/GRU layer as a single op) and
the embedding lookup.

The input projection `X @ W_ih + b` for all time steps is one matmul done by the caller (it is
the op's input `xw`), so the loop only multiplies by `W_hh`. `compute` runs the loop (a Device
kernel, `Device.lstm_fwd` etc.) and keeps the gates for the backward; `backward_arrays` is
backpropagation through time on the saved gates (`Device.lstm_bwd`: one matmul per step, one
for dW_hh at the end); `gradient_composed` re-runs the layer with primitive ops and
differentiates that, so second and higher derivatives are exact (see `FusedOp`).

Weights use needle's (in, out) layout: `W_hh` is (H, G*H) with gate column blocks in PyTorch's
order (LSTM i, f, g, o; GRU r, z, n).
"""
from __future__ import annotations

from ..autograd import NDArray, TensorOp, partials
from .ops_fused import FusedTupleOp
from .ops_indexing import getitem
from .ops_mathematic import matmul, relu, sigmoid, tanh
from .ops_tuple import stack


def _check(name: str, xw: NDArray, w_hh: NDArray, gates: int, states) -> int:
    if xw.ndim != 3:
        raise ValueError(f"{name}: input projection must be (T, B, {gates}*H), got {xw.shape}")
    hidden = w_hh.shape[0]
    if w_hh.ndim != 2 or w_hh.shape != (hidden, gates * hidden) or \
            xw.shape[2] != gates * hidden:
        raise ValueError(f"{name}: W_hh {w_hh.shape} and input projection {xw.shape} do not "
                         f"fit hidden size {hidden} with {gates} gate block(s)")
    if xw.shape[0] == 0:
        raise ValueError(f"{name}: empty sequence (input projection {xw.shape})")
    for s in states:
        if s.shape != (xw.shape[1], hidden):
            raise ValueError(f"{name}: initial state of shape {s.shape}, expected "
                             f"({xw.shape[1]}, {hidden}) (batch, hidden)")
    for a in (w_hh,) + tuple(states):
        if a.dtype != xw.dtype:
            raise TypeError(f"{name}: dtypes differ: input projection {xw.dtype}, "
                            f"got {a.dtype}")
    return hidden


def _cols(a, k: int, hid: int):
    """Gate block k of a (B, G*H) tensor."""
    return getitem(a, (slice(None), slice(k * hid, (k + 1) * hid)))


def _composed(reference, out_grads, inputs):
    """The partials of `reference(*inputs)` (a list of outputs) contracted with `out_grads`,
    built from ops (differentiable again); None where an output's gradient is None."""
    outs = reference(*inputs)
    pairs = [(o, g) for o, g in zip(outs, out_grads) if g is not None]
    return partials([o for o, _ in pairs], [g for _, g in pairs], list(inputs))


# ---- Elman RNN -------------------------------------------------------------------------------
class RNNLayer(FusedTupleOp):
    """h_t = act(xw_t + h_{t-1} W_hh); inputs xw (T, B, H), W_hh (H, H), h0 (B, H) ->
    (hs (T, B, H), h_T (B, H)): every step's state and the last one."""

    __slots__ = ("nonlinearity", "saved")

    def __init__(self, nonlinearity: str = "tanh"):
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"RNN: nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        self.nonlinearity = nonlinearity
        self.saved = None  # the outputs (all the backward needs), kept by compute

    def compute(self, xw: NDArray, w_hh: NDArray, h0: NDArray):
        _check("RNN", xw, w_hh, 1, (h0,))
        self.saved = xw.device.rnn_fwd(xw, w_hh, h0, self.nonlinearity == "relu")
        return self.saved, self.saved.select(-1)

    def backward_arrays(self, g, inputs, needs):
        xw, w_hh, h0 = inputs
        if self.saved is None:  # not computed here (e.g. lazy mode): recompute
            self.compute(xw, w_hh, h0)
        return xw.device.rnn_bwd(g[0], g[1], self.saved, w_hh, h0,
                                 self.nonlinearity == "relu")

    def gradient_composed(self, out_grad, xw, w_hh, h0):
        return _composed(self.reference, [out_grad[0], out_grad[1]], (xw, w_hh, h0))

    def reference(self, xw, w_hh, h0):
        """The layer written with primitive ops (what second derivatives differentiate)."""
        act = tanh if self.nonlinearity == "tanh" else relu
        h, outs = h0, []
        for t in range(xw.shape[0]):
            h = act(getitem(xw, t) + matmul(h, w_hh))
            outs.append(h)
        return [stack(outs, 0), h]


def rnn_layer(xw, w_hh, h0, nonlinearity="tanh"):
    """One Elman RNN layer over time: xw (T, B, H) = x W_ih + b, W_hh (H, H), h0 (B, H) ->
    a TensorTuple (hs (T, B, H), h_T (B, H))."""
    return RNNLayer(nonlinearity)(xw, w_hh, h0)


# ---- LSTM --------------------------------------------------------------------------------------
class LSTMLayer(FusedTupleOp):
    """One LSTM layer over time; inputs xw (T, B, 4H) = x W_ih + b, W_hh (H, 4H), h0, c0 (B, H)
    -> (hs (T, B, H), h_T, c_T (B, H)): every step's hidden state, the last hidden and cell
    states."""

    __slots__ = ("saved",)

    def __init__(self):
        self.saved = None  # (hs, cs, tanh(cs), gates), kept by compute for backward_arrays

    def compute(self, xw, w_hh, h0, c0):
        _check("LSTM", xw, w_hh, 4, (h0, c0))
        self.saved = xw.device.lstm_fwd(xw, w_hh, h0, c0)
        hs, cs = self.saved[0], self.saved[1]
        return hs, hs.select(-1), cs.select(-1)

    def backward_arrays(self, g, inputs, needs):
        xw, w_hh, h0, c0 = inputs
        if self.saved is None:  # not computed here (e.g. lazy mode): recompute, pure compute
            self.compute(xw, w_hh, h0, c0)
        return xw.device.lstm_bwd(g[0], g[1], g[2], *self.saved, w_hh, h0, c0)

    def gradient_composed(self, out_grad, xw, w_hh, h0, c0):
        return _composed(self.reference, [out_grad[i] for i in range(3)], (xw, w_hh, h0, c0))

    @staticmethod
    def reference(xw, w_hh, h0, c0):
        """The layer written with primitive ops: [hs, h_T, c_T]."""
        hid = w_hh.shape[0]
        h, c, outs = h0, c0, []
        for t in range(xw.shape[0]):
            a = getitem(xw, t) + matmul(h, w_hh)
            i, f = sigmoid(_cols(a, 0, hid)), sigmoid(_cols(a, 1, hid))
            gg, o = tanh(_cols(a, 2, hid)), sigmoid(_cols(a, 3, hid))
            c = f * c + i * gg
            h = o * tanh(c)
            outs.append(h)
        return [stack(outs, 0), h, c]


def lstm_layer(xw, w_hh, h0, c0):
    """One LSTM layer over time (see `LSTMLayer`): a TensorTuple (hs (T, B, H), h_T, c_T
    (B, H))."""
    return LSTMLayer()(xw, w_hh, h0, c0)


# ---- GRU ---------------------------------------------------------------------------------------
class GRULayer(FusedTupleOp):
    """One GRU layer (PyTorch's equations); xw (T, B, 3H) = x W_ih + b_ih, W_hh (H, 3H),
    b_hh (3H,), h0 (B, H) -> (hs (T, B, H), h_T (B, H)).

    r = s(x_r + h W_hr + b_hr), z = s(x_z + h W_hz + b_hz), n = tanh(x_n + r (h W_hn + b_hn)),
    h' = (1 - z) n + z h.
    """

    __slots__ = ("saved",)

    def __init__(self):
        self.saved = None  # (hs, gates, h W_hn + b_hn), kept by compute for backward_arrays

    def compute(self, xw, w_hh, b_hh, h0):
        hid = _check("GRU", xw, w_hh, 3, (h0,))
        if b_hh.shape != (3 * hid,):
            raise ValueError(f"GRU: bias_hh of shape {b_hh.shape}, expected ({3 * hid},)")
        self.saved = xw.device.gru_fwd(xw, w_hh, b_hh, h0)
        return self.saved[0], self.saved[0].select(-1)

    def backward_arrays(self, g, inputs, needs):
        xw, w_hh, b_hh, h0 = inputs
        if self.saved is None:  # not computed here (e.g. lazy mode): recompute
            self.compute(xw, w_hh, b_hh, h0)
        hs, acts, hhn = self.saved
        return xw.device.gru_bwd(g[0], g[1], hs, acts, hhn, w_hh, h0)

    def gradient_composed(self, out_grad, xw, w_hh, b_hh, h0):
        return _composed(self.reference, [out_grad[0], out_grad[1]], (xw, w_hh, b_hh, h0))

    @staticmethod
    def reference(xw, w_hh, b_hh, h0):
        """The layer written with primitive ops: [hs, h_T]."""
        hid = w_hh.shape[0]
        h, outs = h0, []
        for t in range(xw.shape[0]):
            x = getitem(xw, t)
            hh = matmul(h, w_hh) + b_hh
            r = sigmoid(_cols(x, 0, hid) + _cols(hh, 0, hid))
            z = sigmoid(_cols(x, 1, hid) + _cols(hh, 1, hid))
            n = tanh(_cols(x, 2, hid) + r * _cols(hh, 2, hid))
            h = n + z * h - z * n
            outs.append(h)
        return [stack(outs, 0), h]


def gru_layer(xw, w_hh, b_hh, h0):
    """One GRU layer over time (see `GRULayer`): a TensorTuple (hs (T, B, H), h_T (B, H))."""
    return GRULayer()(xw, w_hh, b_hh, h0)


# ---- embedding ---------------------------------------------------------------------------------
class EmbeddingLookup(TensorOp):
    """weight[ids]: rows of weight (V, D) for int64 ids (an NDArray of any shape, checked by
    `embedding`) -> ids.shape + (D,). The adjoint scatters rows back (`EmbeddingScatter`)."""

    __slots__ = ("ids",)
    array_rule = True

    def __init__(self, ids: NDArray):
        self.ids = ids

    def compute(self, weight: NDArray):
        if weight.ndim != 2:
            raise ValueError(f"embedding: weight must be (num_embeddings, dim), got "
                             f"{weight.shape}")
        return weight.device.embedding_gather(weight, self.ids)

    def gradient(self, out_grad, node):
        return EmbeddingScatter(self.ids, node.inputs[0].shape[0])(out_grad)


class EmbeddingScatter(TensorOp):
    """(num, D) zeros with the rows of g (ids.shape + (D,)) added at their ids (repeated ids
    accumulate): the adjoint of `EmbeddingLookup`, whose adjoint it is in turn."""

    __slots__ = ("ids", "num")
    array_rule = True

    def __init__(self, ids: NDArray, num: int):
        self.ids = ids
        self.num = num

    def compute(self, g: NDArray):
        return g.device.embedding_scatter(g, self.ids, self.num)

    def gradient(self, out_grad, node):
        return EmbeddingLookup(self.ids)(out_grad)


def embedding(weight, ids):
    """weight[ids] for a weight (V, D) and ids (any shape; float or int values, an NDArray or
    a constant Tensor) -> ids.shape + (D,); an id outside [0, V) raises IndexError."""
    data = weight.realize_cached_data() if hasattr(weight, "realize_cached_data") else weight
    ids = ids.realize_cached_data() if hasattr(ids, "realize_cached_data") else ids
    if not isinstance(ids, NDArray):
        ids = NDArray(ids, device=data.device)
    elif ids.device != data.device:
        ids = ids.to(data.device)
    return EmbeddingLookup(data.device.embedding_ids(ids, data.shape[0]))(weight)
