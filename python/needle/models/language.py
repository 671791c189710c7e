"""Language models: embedding -> recurrent or Transformer body -> linear to the vocabulary."""
from __future__ import annotations

import numpy as np

from .. import nn, ops
from ..autograd import Tensor, no_grad

SEQ_MODELS = ("rnn", "lstm", "gru", "transformer")


class LanguageModel(nn.Module):
    """`LanguageModel(embedding_size, output_size, hidden_size, num_layers=1, seq_model='rnn',
    seq_len=40, device=None, dtype="float32")` (course contract, section 11).

    Embedding(output_size, embedding_size) -> RNN / LSTM / GRU(embedding_size, hidden_size,
    num_layers) or a causal Transformer (width embedding_size, feed-forward hidden_size) ->
    Linear to output_size. `forward(x (T, B) float ids, h=None)` -> (logits (T*B, output_size),
    h) with h (L, B, H) for rnn/gru, a tuple (h, c) for lstm, None for the transformer.
    """

    def __init__(self, embedding_size, output_size, hidden_size, num_layers=1,
                 seq_model="rnn", seq_len=40, device=None, dtype="float32", num_head=4,
                 dropout=0.0):
        super().__init__()
        if seq_model not in SEQ_MODELS:
            raise ValueError(f"LanguageModel: seq_model must be one of {SEQ_MODELS}, got "
                             f"{seq_model!r}")
        self.seq_model_name = seq_model
        self.output_size, self.seq_len = output_size, seq_len
        kw = dict(device=device, dtype=dtype)
        self.embedding = nn.Embedding(output_size, embedding_size, **kw)
        if seq_model == "rnn":
            self.seq_model = nn.RNN(embedding_size, hidden_size, num_layers, **kw)
        elif seq_model == "lstm":
            self.seq_model = nn.LSTM(embedding_size, hidden_size, num_layers, **kw)
        elif seq_model == "gru":
            self.seq_model = nn.GRU(embedding_size, hidden_size, num_layers, **kw)
        else:
            self.seq_model = nn.Transformer(embedding_size, hidden_size, num_layers,
                                            num_head=num_head, dropout=dropout,
                                            sequence_len=max(seq_len, 1), **kw)
        width = embedding_size if seq_model == "transformer" else hidden_size
        self.linear = nn.Linear(width, output_size, **kw)

    def forward(self, x: Tensor, h=None):
        T, B = x.shape
        out, h = self.seq_model(self.embedding(x), h)  # (T, B, width)
        logits = self.linear(ops.reshape(out, (T * B, out.shape[2])))
        return logits, h


def detach_state(h):
    """The hidden state cut from the graph (truncated BPTT between batches)."""
    if h is None:
        return None
    if isinstance(h, tuple):
        return tuple(detach_state(x) for x in h)
    return h.detach()


def flatten_state(h):
    """(the Tensors of a hidden state, None, a Tensor or nested tuples, in order; its spec for
    `unflatten_state`)."""
    if h is None:
        return [], None
    if isinstance(h, tuple):
        tensors, specs = [], []
        for x in h:
            t, spec = flatten_state(x)
            tensors += t
            specs.append(spec)
        return tensors, tuple(specs)
    return [h], "tensor"


def unflatten_state(spec, tensors):
    """The hidden state of `spec` (from `flatten_state`) holding `tensors`, in order."""
    it = iter(tensors)

    def build(sp):
        if sp is None:
            return None
        if sp == "tensor":
            return next(it)
        return tuple(build(x) for x in sp)
    return build(spec)


def generate(model: LanguageModel, prompt_ids, n_tokens: int, temperature: float = 1.0,
             rng: np.random.Generator | None = None, compiled: bool = False) -> list:
    """Sample `n_tokens` ids after `prompt_ids` (non-empty list); greedy when temperature is 0.

    Recurrent models feed one token at a time carrying the state; the Transformer re-reads the
    last `seq_len` tokens each step. With `compiled`, each step's forward runs under
    `needle.compile` (recorded once per input shape, then replayed): the same logits, so the
    same samples for the same `rng`.
    """
    if not prompt_ids:
        raise ValueError("generate: the prompt must contain at least one token")
    rng = rng or np.random.default_rng()
    device = model.linear.weight.device
    model.eval()
    ids = list(prompt_ids)
    transformer = model.seq_model_name == "transformer"
    spec = {}

    def forward(x, *state):
        logits, h = model(x, unflatten_state(spec.get("h"), state) if state else None)
        tensors, spec["h"] = flatten_state(h)
        return (logits, *tensors)

    if compiled:
        from ..compile import compile as _compile

        forward = _compile(forward, track=(model,), cache_size=max(8, model.seq_len + 1))
    with no_grad():
        state = ()
        context = ids if transformer else ids[:-1]
        if context and not transformer:
            out = forward(Tensor(np.array(context, dtype="float32")[:, None], device=device))
            state = tuple(out[1:])
        for _ in range(n_tokens):
            window = ids[-model.seq_len:] if transformer else ids[-1:]
            out = forward(Tensor(np.array(window, dtype="float32")[:, None], device=device),
                          *(() if transformer else state))
            state = tuple(out[1:])
            z = out[0].numpy()[-1].astype(np.float64)
            if temperature <= 0:
                nxt = int(z.argmax())
            else:
                z = z / temperature
                p = np.exp(z - z.max())
                nxt = int(rng.choice(len(p), p=p / p.sum()))
            ids.append(nxt)
    return ids[len(prompt_ids):]
