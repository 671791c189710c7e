"""Device kernels for recurrent layers (RNN/LSTM/GRU time loops), attention and embeddings.

A mixin of `Device`: every method takes and returns NDArrays and is written once against
`self.xp`, so `cpu()` and `cuda()` share it; a backend overrides one only with a faster kernel
that gives the same numbers. Inside these methods `a._array` is the native strided view and
`self._wrap(native)` makes an NDArray of a native result.

The time loops do the least work per step that Python must drive: one matmul by W_hh and a
few in-place elementwise calls into preallocated (T, B, ...) buffers. Everything that does
not depend on the previous step (the input projection, the activation derivatives, the
gradient of W_hh) is computed for all steps at once, outside the loop. Weights are in
needle's (in, out) layout with PyTorch's gate column blocks (LSTM i, f, g, o; GRU r, z, n).
"""
from __future__ import annotations


class SequenceKernels:
    """Kernels for recurrent layers, attention and embeddings (NDArrays in and out)."""

    __slots__ = ()

    # ---- Elman RNN -------------------------------------------------------------------------
    def rnn_fwd(self, xw, w_hh, h0, relu: bool = False):
        """hs (T, B, H) with h_t = act(xw_t + h_{t-1} W_hh), act tanh (or relu)."""
        xp = self.xp
        x, w, h = xw._array, w_hh._array, h0._array
        hs = xp.empty(x.shape, dtype=x.dtype)
        for t in range(x.shape[0]):
            a = hs[t]
            self._mm(h, w, out=a)
            a += x[t]
            if relu:
                xp.maximum(a, 0, out=a)
            else:
                xp.tanh(a, out=a)
            h = a
        return self._wrap(hs)

    def rnn_bwd(self, g, g_last, hs, w_hh, h0, relu: bool = False):
        """(dxw, dW_hh, dh0) of `rnn_fwd` for the gradients of the outputs g (T, B, H) and
        of the last state g_last (B, H) (either may be None: zero)."""
        h, w = hs._array, w_hh._array
        gn = None if g is None else g._array
        # the activation's derivative at every step, from the outputs
        dpre = (h > 0).astype(h.dtype) if relu else 1 - h * h
        dh = self._state_grad(g_last, h.shape[1:], h.dtype)
        wt = w.T
        for t in range(h.shape[0] - 1, -1, -1):
            if gn is not None:
                dh += gn[t]
            d = dpre[t]
            d *= dh
            self._mm(d, wt, out=dh)
        return self._wrap(dpre), self._wrap(self._hidden_grad(dpre, h, h0._array)), \
            self._wrap(dh)

    def _state_grad(self, g, shape, dtype):
        """A writable copy of a state's gradient (zeros for None), to accumulate into."""
        if g is None:
            return self.xp.zeros(shape, dtype=dtype)
        return self.xp.array(g._array, dtype=dtype, copy=True)

    def _hidden_grad(self, d, hs, h0):
        """sum_t h_{t-1}^T d_t, the gradient of W_hh, without concatenating h0 and hs."""
        hid = hs.shape[2]
        dw = self._mm(h0.T, d[0])
        if hs.shape[0] > 1:
            dw += self._mm(hs[:-1].reshape(-1, hid).T, d[1:].reshape(-1, d.shape[2]))
        return dw

    # ---- LSTM ------------------------------------------------------------------------------
    def _lstm_affine(self, hid, dtype):
        """(scale, shift) (4H,) with sigmoid(a) = tanh(a s) s + shift on the i, f, o blocks
        (s = 1/2, shift = 1/2) and tanh(a) on the g block (s = 1, shift = 0): one tanh call
        activates all four gates."""
        xp = self.xp
        scale = xp.full((4 * hid,), 0.5, dtype=dtype)
        scale[2 * hid:3 * hid] = 1.0
        shift = xp.full((4 * hid,), 0.5, dtype=dtype)
        shift[2 * hid:3 * hid] = 0.0
        return scale, shift

    def lstm_fwd(self, xw, w_hh, h0, c0):
        """One LSTM layer over time: (hs, cs, tcs, acts), all (T, B, .) — the hidden states,
        the cell states, tanh of the cell states and the activated gates i, f, g, o (4H); the
        last three are what `lstm_bwd` needs."""
        xp = self.xp
        x, w, h, c = xw._array, w_hh._array, h0._array, c0._array
        steps, batch, width = x.shape
        hid = width // 4
        scale, shift = self._lstm_affine(hid, x.dtype)
        acts = x * scale  # the pre-activations, pre-scaled; the gates overwrite them
        ws = w * scale
        hs = xp.empty((steps, batch, hid), dtype=x.dtype)
        cs = xp.empty_like(hs)
        tcs = xp.empty_like(hs)
        tmp = xp.empty((batch, hid), dtype=x.dtype)
        hw = xp.empty((batch, width), dtype=x.dtype)
        for t in range(steps):
            a = acts[t]
            self._mm(h, ws, out=hw)
            a += hw
            xp.tanh(a, out=a)
            a *= scale
            a += shift
            i, f = a[:, :hid], a[:, hid:2 * hid]
            gg, o = a[:, 2 * hid:3 * hid], a[:, 3 * hid:]
            c_t, tc = cs[t], tcs[t]
            xp.multiply(f, c, out=c_t)
            xp.multiply(i, gg, out=tmp)
            c_t += tmp
            xp.tanh(c_t, out=tc)
            xp.multiply(o, tc, out=hs[t])
            h, c = hs[t], c_t
        return self._wrap(hs), self._wrap(cs), self._wrap(tcs), self._wrap(acts)

    def lstm_bwd(self, g_h, g_hl, g_cl, hs, cs, tcs, acts, w_hh, h0, c0):
        """(dxw, dW_hh, dh0, dc0) of `lstm_fwd` for the gradients of the hidden states
        g_h (T, B, H) and of the last hidden and cell states g_hl, g_cl (B, H) (any may be
        None: zero)."""
        xp = self.xp
        h, c, tc, a, w = hs._array, cs._array, tcs._array, acts._array, w_hh._array
        steps, batch, hid = h.shape
        i, f = a[..., :hid], a[..., hid:2 * hid]
        gg, o = a[..., 2 * hid:3 * hid], a[..., 3 * hid:]
        # d(pre-activation) = (dc or dh) * m: m for all steps at once (T, B, 4H)
        m = a * (1 - a)  # sigmoid' on i, f, o
        m[..., :hid] *= gg
        m[..., hid:2 * hid] *= _shifted(xp, c, c0._array)
        m[..., 2 * hid:3 * hid] = 1 - gg * gg
        m[..., 2 * hid:3 * hid] *= i
        m[..., 3 * hid:] *= tc
        k = o * (1 - tc * tc)  # d c_t / d h_t through h_t = o tanh(c_t)
        dgates = xp.empty_like(a)
        # (B, 3, H) views of the i, f, g blocks: one call scales all three by dc
        d3 = dgates.reshape(steps, batch, 4, hid)[:, :, :3]
        m3 = m.reshape(steps, batch, 4, hid)[:, :, :3]
        dh = self._state_grad(g_hl, (batch, hid), h.dtype)
        dc = self._state_grad(g_cl, (batch, hid), h.dtype)
        gn = None if g_h is None else g_h._array
        tmp = xp.empty_like(dh)
        wt = w.T
        for t in range(steps - 1, -1, -1):
            if gn is not None:
                dh += gn[t]
            xp.multiply(dh, k[t], out=tmp)
            dc += tmp
            xp.multiply(m3[t], dc[:, None, :], out=d3[t])
            xp.multiply(m[t, :, 3 * hid:], dh, out=dgates[t, :, 3 * hid:])
            dc *= f[t]
            self._mm(dgates[t], wt, out=dh)
        dw = self._hidden_grad(dgates, h, h0._array)
        return self._wrap(dgates), self._wrap(dw), self._wrap(dh), self._wrap(dc)

    # ---- GRU -------------------------------------------------------------------------------
    def gru_fwd(self, xw, w_hh, b_hh, h0):
        """One GRU layer (PyTorch's equations): (hs, acts, hhn) — the hidden states (T, B, H),
        the gates r, z, n (T, B, 3H) and h_{t-1} W_hn + b_hn (T, B, H), kept for `gru_bwd`."""
        xp = self.xp
        x, w, b, h = xw._array, w_hh._array, b_hh._array, h0._array
        steps, batch, width = x.shape
        hid = width // 3
        hs = xp.empty((steps, batch, hid), dtype=x.dtype)
        acts = xp.empty_like(x)
        hhn = xp.empty_like(hs)
        hh = xp.empty((batch, width), dtype=x.dtype)
        for t in range(steps):
            self._mm(h, w, out=hh)
            hh += b
            a = acts[t]
            rz = a[:, :2 * hid]
            xp.add(x[t, :, :2 * hid], hh[:, :2 * hid], out=rz)
            _sigmoid_(xp, rz)
            hhn[t] = hh[:, 2 * hid:]
            n = a[:, 2 * hid:]
            xp.multiply(a[:, :hid], hhn[t], out=n)
            n += x[t, :, 2 * hid:]
            xp.tanh(n, out=n)
            h_t = hs[t]  # h' = n + z (h - n)
            xp.subtract(h, n, out=h_t)
            h_t *= a[:, hid:2 * hid]
            h_t += n
            h = h_t
        return self._wrap(hs), self._wrap(acts), self._wrap(hhn)

    def gru_bwd(self, g, g_last, hs, acts, hhn, w_hh, h0):
        """(dxw, dW_hh, db_hh, dh0) of `gru_fwd` for the gradients of the outputs g
        (T, B, H) and of the last state g_last (B, H) (either may be None: zero)."""
        xp = self.xp
        h, a, w = hs._array, acts._array, w_hh._array
        gn = None if g is None else g._array
        steps, batch, hid = h.shape
        r, z, n = a[..., :hid], a[..., hid:2 * hid], a[..., 2 * hid:]
        # per-step multipliers, for all steps at once
        m_n = (1 - z) * (1 - n * n)  # dn = dh * m_n
        m_z = _shifted(xp, h, h0._array) - n
        m_z *= z * (1 - z)  # dz = dh * m_z
        m_r = hhn._array * r * (1 - r)  # dr = dn * m_r
        dx = xp.empty_like(a)
        dhh = xp.empty_like(a)  # the gradient of h W_hh + b_hh
        dh = self._state_grad(g_last, (batch, hid), h.dtype)
        tmp = xp.empty_like(dh)
        wt = w.T
        for t in range(steps - 1, -1, -1):
            if gn is not None:
                dh += gn[t]
            dn = dx[t, :, 2 * hid:]
            xp.multiply(dh, m_n[t], out=dn)
            xp.multiply(dh, m_z[t], out=dhh[t, :, hid:2 * hid])
            xp.multiply(dn, m_r[t], out=dhh[t, :, :hid])
            xp.multiply(dn, r[t], out=dhh[t, :, 2 * hid:])
            dh *= z[t]
            self._mm(dhh[t], wt, out=tmp)
            dh += tmp
        dx[..., :2 * hid] = dhh[..., :2 * hid]
        dw = self._hidden_grad(dhh, h, h0._array)
        db = dhh.reshape(-1, 3 * hid).sum(axis=0)
        return self._wrap(dx), self._wrap(dw), self._wrap(db), self._wrap(dh)

    # ---- attention -------------------------------------------------------------------------
    def causal_mask(self, rows: int, cols: int, dtype="float32"):
        """(rows, cols) additive mask: 0 where column j <= row i, -inf above the diagonal."""
        xp = self.xp
        return self._wrap(xp.triu(xp.full((rows, cols), -xp.inf, dtype=dtype), k=1))

    def additive_mask(self, mask, masked_value: bool, dtype="float32"):
        """A boolean mask as an additive float mask: -inf where mask == masked_value, else 0
        (PyTorch's SDPA masks False, MultiheadAttention masks True)."""
        xp = self.xp
        m = mask._array != 0 if masked_value else mask._array == 0
        return self._wrap(xp.where(m, -xp.inf, 0.0).astype(dtype))

    def attention_probs(self, q, k, mask, scale: float):
        """softmax(q k^T * scale + mask) over the last axis, stably; fully masked rows give
        zeros, not nan. q (..., L, E), k (..., S, E), mask additive (broadcastable) or None."""
        return self._wrap(_probs(self.xp, q._array, k._array,
                                 None if mask is None else mask._array, scale, self._mm))

    def attention_fwd(self, q, k, v, mask, scale: float, blocks=None):
        """(out (..., L, Ev), *probs): softmax(q k^T * scale + mask) v and the attention
        weights, one flat tuple (a recorded kernel returns NDArrays, not nested lists).

        `blocks` (query row ranges (r0, r1), for a causal (L, L) mask) makes block b attend
        to keys [0, r1) only, skipping the key blocks that all its queries mask out; `probs`
        is then one array per block. Pass the list of `probs` on to `attention_bwd`."""
        xp = self.xp
        qn, kn, vn = q._array, k._array, v._array
        mn = None if mask is None else mask._array
        if blocks is None:
            p = _probs(xp, qn, kn, mn, scale, self._mm)
            return self._wrap(self._mm(p, vn)), self._wrap(p)
        out = xp.empty(qn.shape[:-1] + (vn.shape[-1],), dtype=qn.dtype)
        probs = []
        for r0, r1 in blocks:
            p = _probs(xp, qn[..., r0:r1, :], kn[..., :r1, :], mn[r0:r1, :r1], scale,
                       self._mm)
            out[..., r0:r1, :] = self._mm(p, vn[..., :r1, :])
            probs.append(self._wrap(p))
        return (self._wrap(out), *probs)

    def attention_bwd(self, g, q, k, v, probs, scale: float, blocks=None):
        """(dq, dk, dv) of `attention_fwd` for the output gradient g, from its `probs`:
        dV = P^T dO, dS = P * (dO V^T - rowsum(dO V^T * P)) * scale, dQ = dS K, dK = dS^T Q."""
        xp = self.xp
        gn, qn, kn, vn = g._array, q._array, k._array, v._array
        if blocks is None:
            p = probs[0]._array
            dv = self._mm(xp.swapaxes(p, -1, -2), gn)
            ds = _scores_grad(xp, self._mm(gn, xp.swapaxes(vn, -1, -2)), p, scale)
            return (self._wrap(self._mm(ds, kn)), self._wrap(self._mm(xp.swapaxes(ds, -1, -2), qn)),
                    self._wrap(dv))
        dq = xp.empty_like(qn)
        dk = xp.zeros_like(kn)
        dv = xp.zeros_like(vn)
        for (r0, r1), p in zip(blocks, probs):
            p = p._array
            gb = gn[..., r0:r1, :]
            dv[..., :r1, :] += self._mm(xp.swapaxes(p, -1, -2), gb)
            ds = _scores_grad(xp, self._mm(gb, xp.swapaxes(vn[..., :r1, :], -1, -2)), p, scale)
            dq[..., r0:r1, :] = self._mm(ds, kn[..., :r1, :])
            dk[..., :r1, :] += self._mm(xp.swapaxes(ds, -1, -2), qn[..., r0:r1, :])
        return self._wrap(dq), self._wrap(dk), self._wrap(dv)

    # ---- embeddings ------------------------------------------------------------------------
    def embedding_ids(self, ids, num: int):
        """The ids (any shape, float or int) as int64, checked against a vocabulary of `num`:
        raises IndexError naming the first id out of range."""
        xp = self.xp
        i = ids._array
        if i.size:
            lo, hi = i.min(), i.max()
            if lo < 0 or hi >= num:
                bad = lo if lo < 0 else hi
                raise IndexError(f"Embedding: id {int(bad)} is out of range for a vocabulary "
                                 f"of size {num}")
        return self._wrap(xp.asarray(i).astype(xp.int64))

    def embedding_gather(self, weight, ids):
        """weight[ids]: rows of weight (V, D) for int64 ids of any shape -> ids.shape + (D,)."""
        return self._wrap(self.xp.take(weight._array, ids._array, axis=0))

    def embedding_scatter(self, g, ids, num: int):
        """The adjoint of `embedding_gather`: (num, D) zeros with the rows of g (ids.shape +
        (D,)) added at their ids; repeated ids accumulate (the device's `_scatter_rows`)."""
        d = g.shape[-1]
        out = self.xp.zeros((num, d), dtype=g.dtype)
        self._scatter_rows(out, ids._array.reshape(-1), g._array.reshape(-1, d))
        return self._wrap(out)


def _shifted(xp, states, first):
    """The states shifted by one step: (first, states[0], ..., states[T-2]) (T, B, H)."""
    out = xp.empty_like(states)
    out[0] = first
    out[1:] = states[:-1]
    return out


def _sigmoid_(xp, a):
    """sigmoid in place, stable for large |a| (one transcendental): 0.5 tanh(a / 2) + 0.5."""
    a *= 0.5
    xp.tanh(a, out=a)
    a *= 0.5
    a += 0.5
    return a


def _probs(xp, q, k, mask, scale, mm):
    s = mm(q, xp.swapaxes(k, -1, -2))
    s *= scale
    if mask is not None:
        s += mask
    return softmax_(xp, s, -1)


def softmax_(xp, s, axes):
    """softmax over `axes` in place on the native float array s, stably: a slice that is all
    -inf stays -inf through the shift, so exp gives zeros and the sum 0 (not nan)."""
    m = s.max(axis=axes, keepdims=True)
    s -= xp.where(xp.isfinite(m), m, 0)
    xp.exp(s, out=s)
    total = s.sum(axis=axes, keepdims=True)
    s /= xp.where(total == 0, 1, total)
    return s


def _scores_grad(xp, dp, p, scale):
    """The softmax backward in place on dP, times `scale`: P * (dP - rowsum(dP * P))."""
    dp -= xp.einsum("...ij,...ij->...i", dp, p)[..., None]
    dp *= p
    dp *= scale
    return dp
