"""Language-model training: truncated BPTT over batchified token streams (the course's hw4
`epoch_general_ptb` / `train_ptb` / `evaluate_ptb`), perplexity, and text generation.

The hidden state is carried from one window to the next and detached in between, so no graph
outlives its window. Gradients use the fast backward path (no gradient graph).
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import numpy as np

from . import nn, optim
from .autograd import no_grad
from .data.text import get_batch
from .models.language import detach_state

__all__ = ["epoch_general_ptb", "train_ptb", "evaluate_ptb", "perplexity"]


def perplexity(avg_loss: float) -> float:
    """exp(mean cross-entropy in nats), capped to stay finite."""
    return math.exp(min(avg_loss, 700.0))


def epoch_general_ptb(data, model, seq_len=40, loss_fn=None, opt=None, clip=None, device=None,
                      dtype="float32", on_batch: Optional[Callable] = None):
    """One pass over `data` (nbatch, B) in windows of `seq_len`; trains when `opt` is given.

    Returns (avg_acc, avg_loss) over all predicted tokens. `clip` is a max global gradient
    norm. `on_batch(i, n_windows, loss)` is called after every window (progress bars).
    """
    np.random.seed(4)  # course convention
    loss_fn = loss_fn if loss_fn is not None else nn.SoftmaxLoss()
    data = np.asarray(data)
    model.train(opt is not None)
    h = None
    total_loss, correct, count = 0.0, 0, 0
    starts = range(0, data.shape[0] - 1, seq_len)
    for k, i in enumerate(starts):
        X, y = get_batch(data, i, seq_len, device=device, dtype=dtype)
        if opt is None:
            with no_grad():
                logits, h = model(X, h)
                loss = loss_fn(logits, y)
        else:
            logits, h = model(X, h)
            loss = loss_fn(logits, y)
            opt.reset_grad()
            loss.backward(create_graph=False)
            if clip is not None:
                opt.clip_grad_norm(clip)
            opt.step()
        h = detach_state(h)
        n = y.shape[0]
        value = float(loss.numpy())
        total_loss += value * n
        correct += int((logits.numpy().argmax(axis=1) == y.numpy()).sum())
        count += n
        if on_batch is not None:
            on_batch(k, len(starts), value)
    if count == 0:
        raise ValueError(f"epoch_general_ptb: data of shape {data.shape} has no window of "
                         f"targets")
    return correct / count, total_loss / count


def train_ptb(model, data, seq_len=40, n_epochs=1, optimizer=optim.SGD, lr=4.0,
              weight_decay=0.0, loss_fn=nn.SoftmaxLoss, clip=None, device=None,
              dtype="float32"):
    """Train for `n_epochs`; returns (avg_acc, avg_loss) of the last epoch."""
    np.random.seed(4)
    opt = optimizer(model.parameters(), lr=lr, weight_decay=weight_decay)
    result = (0.0, 0.0)
    for _ in range(n_epochs):
        result = epoch_general_ptb(data, model, seq_len, loss_fn(), opt, clip, device, dtype)
    return result


def evaluate_ptb(model, data, seq_len=40, loss_fn=nn.SoftmaxLoss, device=None,
                 dtype="float32"):
    """(avg_acc, avg_loss) of `model` on `data` without training."""
    np.random.seed(4)
    return epoch_general_ptb(data, model, seq_len, loss_fn(), None, None, device, dtype)
