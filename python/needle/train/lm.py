"""Language-model training: truncated BPTT over batchified token streams (the course's hw4
`epoch_general_ptb` / `train_ptb` / `evaluate_ptb`), perplexity, and text generation.

The hidden state is carried from one window to the next and detached in between, so no graph
outlives its window. Gradients use the fast backward path (no gradient graph).
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import numpy as np

from .. import nn, optim
from ..autograd import no_grad
from ..data.text import get_batch
from ..errors import ConfigError, DataNotFoundError
from ..models.language import detach_state

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


# ---- `needle train` plugin: datasets, models and the language-model task -------------------------
# Imported once from cli.py's plugin section; registers names in needle.train.
from ..data.text import Corpus, batchify  # noqa: E402
from ..models.language import LanguageModel, generate  # noqa: E402
from .engine import (  # noqa: E402
    TASKS, DatasetInfo, Task, register_dataset, register_model,
)

LM_DEFAULTS = {"bptt": 64, "clip": 1.0, "num_layers": 2, "embedding_dim": 128}


def _opt(args, name):
    value = getattr(args, name, None)
    return LM_DEFAULTS[name] if value is None else value


def _text_info(name: str, corpus: Corpus) -> DatasetInfo:
    valid = corpus.valid if corpus.valid is not None else corpus.test
    return DatasetInfo(name, corpus.train, valid, task="language-model",
                       num_classes=len(corpus.dictionary),
                       extra={"dictionary": corpus.dictionary, "level": corpus.level})


@register_dataset("shakespeare")
def shakespeare(args) -> DatasetInfo:
    """The shipped tiny Shakespeare, character level, lines split 90/10 train/validation."""
    return _text_info("shakespeare", Corpus.shakespeare(level="char"))


@register_dataset("text")
def text_dir(args) -> DatasetInfo:
    """Word-level corpus from --data-dir DIR holding train.txt, valid.txt (or test.txt)."""
    folder = getattr(args, "data_dir", None)
    if not folder:
        raise DataNotFoundError("--dataset text: pass --data-dir DIR with train.txt and "
                                "valid.txt/test.txt (e.g. PTB)")
    return _text_info("text", Corpus(folder, level="word"))


def _lm_builder(seq_model: str):
    def build(info: DatasetInfo, args):
        if info.task != "language-model":
            raise ConfigError(f"a language model needs a text dataset (shakespeare, text), got "
                             f"{info.name}")
        return LanguageModel(_opt(args, "embedding_dim"), info.num_classes,
                             getattr(args, "hidden_dim", None) or 256, _opt(args, "num_layers"),
                             seq_model=seq_model, seq_len=_opt(args, "bptt"))
    return build


for _name, _kind in (("rnn-lm", "rnn"), ("lstm-lm", "lstm"), ("gru-lm", "gru"),
                     ("transformer-lm", "transformer")):
    register_model(_name)(_lm_builder(_kind))


class _Windows:
    """Successive bptt windows (X (L, B), y (L*B,)) over batchified ids; one pass per epoch."""

    def __init__(self, ids, batch_size: int, bptt: int):
        self.data = batchify(ids, batch_size)
        self.bptt = bptt
        if self.data.shape[0] < 2:
            raise ConfigError(f"language model: {len(ids)} tokens are too few for batch size "
                             f"{batch_size}")

    def __len__(self):
        return len(range(0, self.data.shape[0] - 1, self.bptt))

    def __iter__(self):
        for i in range(0, self.data.shape[0] - 1, self.bptt):
            yield get_batch(self.data, i, self.bptt)


class LanguageModelTask(Task):
    """Next-token cross-entropy with the hidden state carried (detached) across windows."""

    primary_metric = "loss"
    higher_is_better = False

    def __init__(self):
        self.loss_fn = nn.SoftmaxLoss()
        self.h = None

    def loaders(self, info, args):
        bptt = _opt(args, "bptt")
        return (_Windows(info.train, args.batch_size, bptt),
                _Windows(info.eval, args.batch_size, bptt))

    def start_epoch(self, training: bool) -> None:
        self.h = None

    def batch(self, model, batch):
        X, y = batch
        logits, h = model(X, self.h)
        self.h = detach_state(h)
        loss = self.loss_fn(logits, y)
        pred = logits.realize_cached_data().argmax(axis=1)
        correct = int((pred == y.realize_cached_data().astype(pred.dtype)).sum().item())
        return loss, y.shape[0], correct

    def metrics(self, loss_sum, correct, n):
        out = super().metrics(loss_sum, correct, n)
        out["perplexity"] = perplexity(out["loss"])
        return out


TASKS["language-model"] = LanguageModelTask


def clip_plugin(trainer, args) -> None:
    """Clip the global gradient norm (--clip, default 1.0) in language-model runs."""
    if isinstance(trainer.task, LanguageModelTask):
        max_norm = _opt(args, "clip")
        if max_norm and max_norm > 0:
            trainer.after_backward.append(lambda t: t.optimizer.clip_grad_norm(max_norm))


def generate_text(checkpoint: str, prompt: str, tokens: int, temperature: float = 1.0,
                  seed: int = 0) -> str:
    """Text sampled from a `needle train` language-model checkpoint after `prompt`."""
    from ..serialization import load_checkpoint
    from .engine import DATASETS, MODELS, _Namespace

    ckpt = load_checkpoint(checkpoint)
    config = _Namespace(**ckpt.meta.get("config", {}))
    if config.model not in MODELS or config.dataset not in DATASETS:
        raise ConfigError(f"{checkpoint}: not a language-model checkpoint known here (model "
                         f"{config.model!r}, dataset {config.dataset!r})")
    info = DATASETS[config.dataset](config)
    if info.task != "language-model":
        raise ConfigError(f"{checkpoint}: model {config.model!r} is not a language model")
    model = MODELS[config.model](info, config)
    model.load_state_dict(ckpt.model_state)
    vocab, char = info.extra["dictionary"], info.extra["level"] == "char"
    pieces = list(prompt) if char else prompt.split()
    unknown = [p for p in pieces if p not in vocab.word2idx]
    if unknown:
        raise ConfigError(f"generate: prompt tokens {unknown[:5]} are not in the vocabulary "
                         f"({len(vocab)} tokens)")
    ids = generate(model, [vocab.word2idx[p] for p in pieces], tokens, temperature,
                   np.random.default_rng(seed))
    words = [vocab.idx2word[i] for i in ids]
    return prompt + ("".join(words) if char else " " + " ".join(words))
