"""Fused recurrent layers: the whole time loop of one RNN/LSTM/GRU layer as a single op.

The input projection `X @ W_ih + b` for all time steps is one matmul done by the caller (it is
the op's input `xw`), so the loop only multiplies by `W_hh`. `compute` runs the loop on native
arrays and keeps the gates for the backward; `gradient_nd` is backpropagation through time
written by hand (one matmul per step, one matmul for dW_hh at the end); `gradient` re-runs
the layer with primitive ops and differentiates that, so the graph gradient is exact to every
order.

Weights use needle's (in, out) layout: `W_hh` is (H, G*H) with gate column blocks in PyTorch's
order (LSTM i, f, g, o; GRU r, z, n).
"""
from __future__ import annotations

from ..autograd import NDArray, TensorOp, gradients
from .ops_indexing import getitem
from .ops_mathematic import matmul, relu, reshape, sigmoid, tanh
from .ops_tuple import stack


def _check(name: str, xw: NDArray, w_hh: NDArray, gates: int, states) -> int:
    if xw.ndim != 3:
        raise ValueError(f"{name}: input projection must be (T, B, {gates}*H), got {xw.shape}")
    hidden = w_hh.shape[0]
    if w_hh.shape != (hidden, gates * hidden) or xw.shape[2] != gates * hidden:
        raise ValueError(f"{name}: W_hh {w_hh.shape} and input projection {xw.shape} do not "
                         f"fit hidden size {hidden} with {gates} gate block(s)")
    for s in states:
        if s.shape != (xw.shape[1], hidden):
            raise ValueError(f"{name}: initial state of shape {s.shape}, expected "
                             f"({xw.shape[1]}, {hidden}) (batch, hidden)")
    return hidden


def _sigmoid(xp, a):
    return 0.5 * (xp.tanh(0.5 * a) + 1.0)  # stable for large |a|, one transcendental


def _reference_gradient(fn, out_grad, node):
    """Gradient of `fn(*inputs)` (the layer written with primitive ops) against out_grad."""
    out = fn(*node.inputs)
    return tuple(gradients(out, list(node.inputs), out_grad))


# ---- Elman RNN -------------------------------------------------------------------------------
class RNNLayer(TensorOp):
    """h_t = act(xw_t + h_{t-1} W_hh); inputs xw (T, B, H), W_hh (H, H), h0 (B, H) -> (T, B, H)."""

    __slots__ = ("nonlinearity",)

    def __init__(self, nonlinearity: str = "tanh"):
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"RNN: nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        self.nonlinearity = nonlinearity

    def compute(self, xw: NDArray, w_hh: NDArray, h0: NDArray):
        _check("RNN", xw, w_hh, 1, (h0,))
        xp = xw.device.xp
        x, w, h = xw.native, w_hh.native, h0.native
        out = xp.empty(x.shape, dtype=x.dtype)
        for t in range(x.shape[0]):
            a = x[t] + h @ w
            h = xp.tanh(a, out=out[t]) if self.nonlinearity == "tanh" else \
                xp.maximum(a, 0, out=out[t])
        return NDArray._wrap(out, xw.device)

    def gradient_nd(self, g: NDArray, node):
        xw, w_hh, h0 = (x.cached_data for x in node.inputs)
        xp = xw.device.xp
        hs, w, gn = node.cached_data.native, w_hh.native, g.native
        dpre = xp.empty(hs.shape, dtype=hs.dtype)
        dh = xp.zeros(hs.shape[1:], dtype=hs.dtype)
        for t in range(hs.shape[0] - 1, -1, -1):
            dh = dh + gn[t]
            if self.nonlinearity == "tanh":
                dpre[t] = dh * (1 - hs[t] * hs[t])
            else:
                dpre[t] = dh * (hs[t] > 0)
            dh = dpre[t] @ w.T
        hprev = xp.concatenate([h0.native[None], hs[:-1]], axis=0).reshape(-1, hs.shape[2])
        dw = hprev.T @ dpre.reshape(-1, hs.shape[2])
        dev = xw.device
        return NDArray._wrap(dpre, dev), NDArray._wrap(dw, dev), NDArray._wrap(dh, dev)

    def gradient(self, out_grad, node):
        return _reference_gradient(self.reference, out_grad, node)

    def reference(self, xw, w_hh, h0):
        act = tanh if self.nonlinearity == "tanh" else relu
        h, outs = h0, []
        for t in range(xw.shape[0]):
            h = act(getitem(xw, t) + matmul(h, w_hh))
            outs.append(h)
        return stack(outs, 0)


def rnn_layer(xw, w_hh, h0, nonlinearity="tanh"):
    return RNNLayer(nonlinearity)(xw, w_hh, h0)


# ---- LSTM --------------------------------------------------------------------------------------
class LSTMLayer(TensorOp):
    """One LSTM layer over time; inputs xw (T, B, 4H), W_hh (H, 4H), h0, c0 (B, H).

    Output (T, B, 2H): `[..., :H]` is h_t and `[..., H:]` is c_t for every step.
    """

    __slots__ = ("acts",)

    def __init__(self):
        self.acts = None  # the forward's activated gates, kept for `gradient_nd`

    def _forward(self, xw: NDArray, w_hh: NDArray, h0: NDArray, c0: NDArray):
        hidden = _check("LSTM", xw, w_hh, 4, (h0, c0))
        xp = xw.device.xp
        x, w, h, c = xw.native, w_hh.native, h0.native, c0.native
        steps = x.shape[0]
        out = xp.empty(x.shape[:2] + (2 * hidden,), dtype=x.dtype)
        acts = xp.empty(x.shape, dtype=x.dtype)  # activated gates i, f, g, o
        for t in range(steps):
            a = acts[t]
            xp.add(x[t], h @ w, out=a)
            a[:, :2 * hidden] = _sigmoid(xp, a[:, :2 * hidden])
            a[:, 3 * hidden:] = _sigmoid(xp, a[:, 3 * hidden:])
            xp.tanh(a[:, 2 * hidden:3 * hidden], out=a[:, 2 * hidden:3 * hidden])
            c = a[:, hidden:2 * hidden] * c + a[:, :hidden] * a[:, 2 * hidden:3 * hidden]
            out[t, :, hidden:] = c
            h = out[t, :, :hidden]
            xp.multiply(a[:, 3 * hidden:], xp.tanh(c), out=h)
        return out, acts

    def compute(self, xw, w_hh, h0, c0):
        # the gates (T*B*4H floats) are kept for the backward; a constant output drops the op
        out, self.acts = self._forward(xw, w_hh, h0, c0)
        return NDArray._wrap(out, xw.device)

    def gradient_nd(self, g: NDArray, node):
        xw, w_hh, h0, c0 = (x.cached_data for x in node.inputs)
        xp = xw.device.xp
        if self.acts is None:  # not computed here (e.g. lazy mode): recompute, pure compute
            self.acts = self._forward(xw, w_hh, h0, c0)[1]
        out, acts = node.cached_data.native, self.acts
        hid = w_hh.shape[0]
        w, gn = w_hh.native, g.native
        steps = out.shape[0]
        dgates = xp.empty(acts.shape, dtype=acts.dtype)
        dh = xp.zeros(out.shape[1:2] + (hid,), dtype=out.dtype)
        dc = xp.zeros_like(dh)
        for t in range(steps - 1, -1, -1):
            a = acts[t]
            i, f, gg, o = a[:, :hid], a[:, hid:2 * hid], a[:, 2 * hid:3 * hid], a[:, 3 * hid:]
            c = out[t, :, hid:]
            c_prev = out[t - 1, :, hid:] if t > 0 else c0.native
            tc = xp.tanh(c)
            dh = dh + gn[t, :, :hid]
            dc = dc + gn[t, :, hid:] + dh * o * (1 - tc * tc)
            d = dgates[t]
            d[:, :hid] = dc * gg * i * (1 - i)
            d[:, hid:2 * hid] = dc * c_prev * f * (1 - f)
            d[:, 2 * hid:3 * hid] = dc * i * (1 - gg * gg)
            d[:, 3 * hid:] = dh * tc * o * (1 - o)
            dc = dc * f
            dh = d @ w.T
        hprev = xp.concatenate([h0.native[None], out[:-1, :, :hid]], axis=0).reshape(-1, hid)
        dw = hprev.T @ dgates.reshape(-1, 4 * hid)
        dev = xw.device
        return (NDArray._wrap(dgates, dev), NDArray._wrap(dw, dev), NDArray._wrap(dh, dev),
                NDArray._wrap(dc, dev))

    def gradient(self, out_grad, node):
        return _reference_gradient(self.reference, out_grad, node)

    @staticmethod
    def reference(xw, w_hh, h0, c0):
        hid = w_hh.shape[0]
        h, c, outs = h0, c0, []
        for t in range(xw.shape[0]):
            a = getitem(xw, t) + matmul(h, w_hh)
            i = sigmoid(getitem(a, (slice(None), slice(0, hid))))
            f = sigmoid(getitem(a, (slice(None), slice(hid, 2 * hid))))
            gg = tanh(getitem(a, (slice(None), slice(2 * hid, 3 * hid))))
            o = sigmoid(getitem(a, (slice(None), slice(3 * hid, 4 * hid))))
            c = f * c + i * gg
            h = o * tanh(c)
            outs.append(stack([h, c], 1))  # (B, 2, H)
        out = stack(outs, 0)
        return reshape(out, (xw.shape[0], xw.shape[1], 2 * hid))


def lstm_layer(xw, w_hh, h0, c0):
    return LSTMLayer()(xw, w_hh, h0, c0)


# ---- GRU ---------------------------------------------------------------------------------------
class GRULayer(TensorOp):
    """One GRU layer (PyTorch's equations); xw (T, B, 3H) = x W_ih + b_ih, W_hh (H, 3H),
    b_hh (3H,), h0 (B, H) -> (T, B, H).

    r = s(x_r + h W_hr + b_hr), z = s(x_z + h W_hz + b_hz), n = tanh(x_n + r (h W_hn + b_hn)),
    h' = (1 - z) n + z h.
    """

    __slots__ = ("saved",)

    def __init__(self):
        self.saved = None  # the forward's gates and h W_hn + b_hn, kept for `gradient_nd`

    def _forward(self, xw, w_hh, b_hh, h0):
        hid = _check("GRU", xw, w_hh, 3, (h0,))
        if b_hh.shape != (3 * hid,):
            raise ValueError(f"GRU: bias_hh of shape {b_hh.shape}, expected ({3 * hid},)")
        xp = xw.device.xp
        x, w, b, h = xw.native, w_hh.native, b_hh.native, h0.native
        out = xp.empty(x.shape[:2] + (hid,), dtype=x.dtype)
        acts = xp.empty(x.shape, dtype=x.dtype)  # r, z, n
        hhn = xp.empty(out.shape, dtype=x.dtype)  # h W_hn + b_hn
        for t in range(x.shape[0]):
            hh = h @ w + b
            a = acts[t]
            a[:, :2 * hid] = _sigmoid(xp, x[t, :, :2 * hid] + hh[:, :2 * hid])
            hhn[t] = hh[:, 2 * hid:]
            xp.tanh(x[t, :, 2 * hid:] + a[:, :hid] * hhn[t], out=a[:, 2 * hid:])
            z, n = a[:, hid:2 * hid], a[:, 2 * hid:]
            h = out[t]
            xp.add(n, z * (h0.native if t == 0 else out[t - 1]) - z * n, out=h)
        return out, acts, hhn

    def compute(self, xw, w_hh, b_hh, h0):
        out, *self.saved = self._forward(xw, w_hh, b_hh, h0)
        return NDArray._wrap(out, xw.device)

    def gradient_nd(self, g: NDArray, node):
        xw, w_hh, b_hh, h0 = (x.cached_data for x in node.inputs)
        xp = xw.device.xp
        if self.saved is None:  # not computed here (e.g. lazy mode): recompute
            self.saved = self._forward(xw, w_hh, b_hh, h0)[1:]
        out, (acts, hhn) = node.cached_data.native, self.saved
        hid = w_hh.shape[0]
        w, gn = w_hh.native, g.native
        dx = xp.empty(acts.shape, dtype=acts.dtype)
        dhh = xp.empty(acts.shape, dtype=acts.dtype)
        dh = xp.zeros(out.shape[1:], dtype=out.dtype)
        for t in range(out.shape[0] - 1, -1, -1):
            r, z, n = acts[t, :, :hid], acts[t, :, hid:2 * hid], acts[t, :, 2 * hid:]
            h_prev = out[t - 1] if t > 0 else h0.native
            dh = dh + gn[t]
            dn = dh * (1 - z) * (1 - n * n)
            dz = dh * (h_prev - n) * z * (1 - z)
            dr = dn * hhn[t] * r * (1 - r)
            dx[t, :, :hid], dx[t, :, hid:2 * hid], dx[t, :, 2 * hid:] = dr, dz, dn
            dhh[t, :, :2 * hid] = dx[t, :, :2 * hid]
            dhh[t, :, 2 * hid:] = dn * r
            dh = dh * z + dhh[t] @ w.T
        hprev = xp.concatenate([h0.native[None], out[:-1]], axis=0).reshape(-1, hid)
        flat = dhh.reshape(-1, 3 * hid)
        dev = xw.device
        return (NDArray._wrap(dx, dev), NDArray._wrap(hprev.T @ flat, dev),
                NDArray._wrap(flat.sum(axis=0), dev), NDArray._wrap(dh, dev))

    def gradient(self, out_grad, node):
        return _reference_gradient(self.reference, out_grad, node)

    @staticmethod
    def reference(xw, w_hh, b_hh, h0):
        hid = w_hh.shape[0]
        h, outs = h0, []

        def cols(a, k):
            return getitem(a, (slice(None), slice(k * hid, (k + 1) * hid)))

        for t in range(xw.shape[0]):
            x = getitem(xw, t)
            hh = matmul(h, w_hh) + b_hh
            r = sigmoid(cols(x, 0) + cols(hh, 0))
            z = sigmoid(cols(x, 1) + cols(hh, 1))
            n = tanh(cols(x, 2) + r * cols(hh, 2))
            h = n + z * h - z * n
            outs.append(h)
        return stack(outs, 0)


def gru_layer(xw, w_hh, b_hh, h0):
    return GRULayer()(xw, w_hh, b_hh, h0)

