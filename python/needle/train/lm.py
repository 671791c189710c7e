"""Language-model recipes for `needle train`: `--dataset shakespeare|text`, `--model
rnn-lm|lstm-lm|gru-lm|transformer-lm` with their flags, the language-model task (truncated
BPTT over batchified token streams), perplexity and text generation; and the course's hw4
loops (`epoch_general_ptb` / `train_ptb` / `evaluate_ptb`) on the Trainer.

The hidden state is carried from one window to the next and detached in between, so no graph
outlives its window. Gradients use the fast backward path (no gradient graph). Imported once
from `recipes.py`.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import numpy as np

from .. import nn, optim
from ..autograd import Tensor
from ..data.text import Corpus, batchify, get_batch
from ..errors import ConfigError, DataNotFoundError
from ..models.language import LanguageModel, detach_state, flatten_state, generate
from ..models.language import unflatten_state
from .engine import (
    TASKS, DatasetInfo, Task, Trainer, rebuild_checkpoint, register_dataset, register_flags,
    register_model,
)
from .flags import NONNEG_FLOAT, POS_INT

__all__ = ["epoch_general_ptb", "train_ptb", "evaluate_ptb", "perplexity", "LanguageModelTask",
           "LM_DEFAULTS", "generate_text", "clip_plugin"]


def perplexity(avg_loss: float) -> float:
    """exp(mean cross-entropy in nats), capped to stay finite."""
    return math.exp(min(avg_loss, 700.0))


# ---- `needle train` recipes: datasets, models, flags and the language-model task ------------

LM_DEFAULTS = {"bptt": 64, "clip": 1.0, "num_layers": 2, "embedding_dim": 128, "hidden_dim": 100}


@register_flags("bptt", "clip", "num_layers", "embedding_dim")
def _flags(parser, command: str) -> None:
    lm = "language models only; default %s"
    parser.add_argument("--bptt", type=POS_INT, default=None,
                        help=f"tokens per truncated window ({lm % LM_DEFAULTS['bptt']})")
    if command == "train":
        parser.add_argument("--clip", type=NONNEG_FLOAT, default=None,
                            help=f"max global gradient norm, 0 for none "
                                 f"({lm % LM_DEFAULTS['clip']})")
    parser.add_argument("--num-layers", type=POS_INT, default=None,
                        help=f"recurrent/attention layers ({lm % LM_DEFAULTS['num_layers']})")
    parser.add_argument("--embedding-dim", type=POS_INT, default=None,
                        help=f"embedding width ({lm % LM_DEFAULTS['embedding_dim']})")


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
                             _opt(args, "hidden_dim"), _opt(args, "num_layers"),
                             seq_model=seq_model, seq_len=_opt(args, "bptt"))
    return build


for _name, _kind in (("rnn-lm", "rnn"), ("lstm-lm", "lstm"), ("gru-lm", "gru"),
                     ("transformer-lm", "transformer")):
    register_model(_name, default_dataset="shakespeare")(_lm_builder(_kind))


class _Windows:
    """Successive bptt windows (X (L, B), y (L*B,)) over batchified ids (nbatch, B); one pass
    per epoch."""

    def __init__(self, data, bptt: int, device=None, dtype="float32"):
        self.data, self.bptt, self.device, self.dtype = data, bptt, device, dtype

    @classmethod
    def of_ids(cls, ids, batch_size: int, bptt: int):
        data = batchify(ids, batch_size)
        if data.shape[0] < 2:
            raise ConfigError(f"language model: {len(ids)} tokens are too few for batch size "
                              f"{batch_size}")
        return cls(data, bptt)

    def __len__(self):
        return len(range(0, self.data.shape[0] - 1, self.bptt))

    def __iter__(self):
        for i in range(0, self.data.shape[0] - 1, self.bptt):
            yield get_batch(self.data, i, self.bptt, device=self.device, dtype=self.dtype)


class LanguageModelTask(Task):
    """Next-token cross-entropy with the hidden state carried (detached) across windows."""

    primary_metric = "loss"
    higher_is_better = False
    compilable = True

    def __init__(self, loss_fn: Optional[nn.Module] = None):
        self.loss_fn = nn.SoftmaxLoss() if loss_fn is None else loss_fn
        self.h = None
        self._spec = None  # the nesting of the last carried state (see carry)

    def carry(self) -> tuple:
        tensors, self._spec = flatten_state(self.h)
        return tuple(tensors)

    def set_carry(self, tensors: tuple) -> None:
        self.h = unflatten_state(self._spec, tensors) if tensors else None

    def loaders(self, info, args):
        bptt = _opt(args, "bptt")
        return (_Windows.of_ids(info.train, args.batch_size, bptt),
                _Windows.of_ids(info.eval, args.batch_size, bptt))

    def start_epoch(self, training: bool) -> None:
        self.h = None

    def batch(self, model, batch):
        X, y = batch
        logits, h = model(X, self.h)
        self.h = detach_state(h)
        loss = self.loss_fn(logits, y)
        pred = logits.realize_cached_data().argmax(axis=1)
        correct = Tensor.make_const((pred == y.realize_cached_data().astype(pred.dtype)).sum())
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
                  seed: int = 0, compiled: bool = False) -> str:
    """Text sampled from a `needle train` language-model checkpoint after `prompt`; with
    `compiled`, the per-token forward runs under needle.compile (the same text)."""
    _, config, info, model = rebuild_checkpoint(checkpoint)
    if info.task != "language-model":
        raise ConfigError(f"{checkpoint}: model {config.model!r} is not a language model")
    vocab, char = info.extra["dictionary"], info.extra["level"] == "char"
    pieces = list(prompt) if char else prompt.split()
    unknown = [p for p in pieces if p not in vocab.word2idx]
    if unknown:
        raise ConfigError(f"generate: prompt tokens {unknown[:5]} are not in the vocabulary "
                         f"({len(vocab)} tokens)")
    ids = generate(model, [vocab.word2idx[p] for p in pieces], tokens, temperature,
                   np.random.default_rng(seed), compiled=compiled)
    words = [vocab.idx2word[i] for i in ids]
    return prompt + ("".join(words) if char else " " + " ".join(words))


# ---- the course's hw4 loops, on the Trainer ------------------------------------------------------

def epoch_general_ptb(data, model, seq_len=40, loss_fn=None, opt=None, clip=None, device=None,
                      dtype="float32", on_batch: Optional[Callable] = None):
    """One pass over `data` (nbatch, B) in windows of `seq_len`; trains when `opt` is given.

    Runs on the Trainer with the language-model task (the hidden state carried, detached,
    from window to window). Returns (avg_acc, avg_loss) over all predicted tokens. `clip` is
    a max global gradient norm. `on_batch(i, n_windows, loss)` is called after every window
    (progress bars).
    """
    np.random.seed(4)  # course convention
    data = np.asarray(data)
    if data.ndim != 2 or data.shape[0] < 2:
        raise ValueError(f"epoch_general_ptb: data of shape {data.shape} has no window of "
                         f"targets (expected (nbatch >= 2, batch) from batchify)")
    windows = _Windows(data, seq_len, device=device, dtype=dtype)
    trainer = Trainer(model, opt, LanguageModelTask(loss_fn), windows, windows)
    if clip is not None:
        trainer.after_backward.append(lambda t: t.optimizer.clip_grad_norm(clip))
    report = None
    if on_batch is not None:
        count = iter(range(len(windows)))

        def report(t, loss, n, correct):
            on_batch(next(count), len(windows), loss)
    if opt is None:
        metrics = trainer.evaluate(on_batch=report)
    else:
        if report is not None:
            trainer.on_batch.append(report)
        metrics = trainer.train_epoch()
    return metrics["accuracy"], metrics["loss"]


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
