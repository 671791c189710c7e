"""The training engine behind the `needle` command: registries, tasks and the Trainer.

Extending it takes one import line (in `cli.py`'s plugin section) of a module that calls:

- `register_dataset(name)(factory)`: `factory(args) -> DatasetInfo` (train/eval data, task);
- `register_model(name)(builder)`: `builder(info, args) -> nn.Module`;
- `TASKS[name] = TaskClass`: how batches become a loss and metrics (classification here; a
  language-model task keeps hidden state across batches);
- `TRAINER_PLUGINS.append(fn)`: `fn(trainer, args)` after the trainer is built, e.g. to set
  `trainer.is_main` (rank 0 writes files), append a gradient all-reduce to
  `trainer.after_backward`, or swap `trainer.train_data` for a loader with a sampler.

Nothing here prints; the CLI passes callbacks (`on_batch`, `on_epoch`) for progress output.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Optional

import numpy as np

from .. import init, nn, optim
from ..autograd import no_grad
from ..data import DataLoader, MNISTDataset, find_fashion_mnist, shipped_mnist_test
from ..data.data_basic import NDArrayDataset
from ..data.data_transforms import RandomCrop, RandomFlipHorizontal
from ..errors import ConfigError
from ..serialization import load_checkpoint, save_checkpoint

__all__ = [
    "DatasetInfo", "Task", "ClassificationTask", "Trainer", "DATASETS", "MODELS", "TASKS",
    "TRAINER_PLUGINS", "register_dataset", "register_model", "run_training", "evaluate_checkpoint",
]


@dataclass
class DatasetInfo:
    """A dataset ready for a task: `train`/`eval` datasets plus what models need to know."""

    name: str
    train: Any
    eval: Any
    task: str = "classification"
    input_shape: tuple = ()
    num_classes: int = 0
    extra: Dict[str, Any] = field(default_factory=dict)


DATASETS: Dict[str, Callable[[Any], DatasetInfo]] = {}
MODELS: Dict[str, Callable[[DatasetInfo, Any], nn.Module]] = {}
TRAINER_PLUGINS: List[Callable[["Trainer", Any], None]] = []


def register_dataset(name: str):
    def deco(fn):
        DATASETS[name] = fn
        return fn
    return deco


def register_model(name: str):
    def deco(fn):
        MODELS[name] = fn
        return fn
    return deco


# ---- tasks --------------------------------------------------------------------------------------

class Task:
    """How a batch becomes a loss, and how per-batch counts become epoch metrics."""

    primary_metric = "accuracy"
    higher_is_better = True

    def loaders(self, info: DatasetInfo, args) -> tuple:
        """(train iterable, eval iterable); each is iterated once per epoch."""
        raise NotImplementedError

    def start_epoch(self, training: bool) -> None:
        """Reset per-epoch state (e.g. a language model's hidden state)."""

    def batch(self, model, batch) -> tuple:
        """Return (scalar loss Tensor, number of samples, number correct)."""
        raise NotImplementedError

    def metrics(self, loss_sum: float, correct: float, n: int) -> Dict[str, float]:
        return {"loss": loss_sum / max(n, 1), "accuracy": correct / max(n, 1)}


class ClassificationTask(Task):
    """Logits (B, K) against integer labels (B,), softmax cross-entropy."""

    def __init__(self):
        self.loss_fn = nn.SoftmaxLoss()

    def loaders(self, info, args):
        train = DataLoader(info.train, batch_size=args.batch_size, shuffle=True)
        evaluate = DataLoader(info.eval, batch_size=max(args.batch_size, 1000), shuffle=False)
        return train, evaluate

    def batch(self, model, batch):
        X, y = batch[0], batch[1]
        logits = model(X)
        loss = self.loss_fn(logits, y)
        pred = logits.realize_cached_data().argmax(axis=1)
        correct = int((pred == y.realize_cached_data().astype(pred.dtype)).sum().item())
        return loss, y.shape[0], correct


TASKS: Dict[str, type] = {"classification": ClassificationTask}


# ---- the trainer -------------------------------------------------------------------------------

class Trainer:
    """Runs epochs: forward, `loss.backward(create_graph=False)`, hooks, `optimizer.step()`.

    `after_backward` callbacks run as `fn(trainer)` between backward and step (gradient
    all-reduce, clipping); `on_batch` callbacks get `(trainer, loss, n, correct)`.
    """

    def __init__(self, model: nn.Module, optimizer: optim.Optimizer, task: Task,
                 train_data: Iterable, eval_data: Iterable, scheduler=None):
        self.model = model
        self.optimizer = optimizer
        self.task = task
        self.train_data = train_data
        self.eval_data = eval_data
        self.scheduler = scheduler
        self.after_backward: List[Callable[["Trainer"], None]] = []
        self.on_batch: List[Callable[..., None]] = []
        self.is_main = True
        self.epoch = 0
        self.global_step = 0

    def train_epoch(self) -> Dict[str, float]:
        model, opt, task = self.model, self.optimizer, self.task
        model.train()
        task.start_epoch(True)
        loss_sum, correct_sum, n_sum = 0.0, 0, 0
        for batch in self.train_data:
            opt.reset_grad()
            loss, n, correct = task.batch(model, batch)
            loss.backward(create_graph=False)
            for hook in self.after_backward:
                hook(self)
            opt.step()
            self.global_step += 1
            value = float(loss.realize_cached_data().item())
            loss_sum += value * n
            correct_sum += correct
            n_sum += n
            for cb in self.on_batch:
                cb(self, value, n, correct)
        if self.scheduler is not None:
            self.scheduler.step()
        self.epoch += 1
        return task.metrics(loss_sum, correct_sum, n_sum)

    def evaluate(self, data: Optional[Iterable] = None) -> Dict[str, float]:
        model, task = self.model, self.task
        model.eval()
        task.start_epoch(False)
        loss_sum, correct_sum, n_sum = 0.0, 0, 0
        with no_grad():
            for batch in (self.eval_data if data is None else data):
                loss, n, correct = task.batch(model, batch)
                loss_sum += float(loss.realize_cached_data().item()) * n
                correct_sum += correct
                n_sum += n
        return task.metrics(loss_sum, correct_sum, n_sum)


# ---- datasets and models -------------------------------------------------------------------------

MNIST_SMALL_TRAIN = 8000  # of the 10000 shipped t10k images; the rest validate


@register_dataset("mnist-small")
def mnist_small(args) -> DatasetInfo:
    """The shipped MNIST t10k set: first 8000 images train, last 2000 validate."""
    ds = MNISTDataset(*shipped_mnist_test())
    X, y = ds.images.reshape(len(ds), -1), ds.labels
    k = MNIST_SMALL_TRAIN
    return DatasetInfo("mnist-small", NDArrayDataset(X[:k], y[:k]),
                       NDArrayDataset(X[k:], y[k:]), input_shape=(784,), num_classes=10)


def _augmentation(kind):
    """The training transforms of --augment none|flip|flip-shift (None: none)."""
    if kind in (None, "none"):
        return None
    if kind == "flip":
        return [RandomFlipHorizontal()]
    if kind == "flip-shift":
        return [RandomFlipHorizontal(), RandomCrop(2)]
    raise ConfigError(f"--augment: unknown augmentation {kind!r} (none, flip, flip-shift)")


@register_dataset("fashion-mnist")
def fashion_mnist(args) -> DatasetInfo:
    """Fashion-MNIST 60000/10000 from --data-dir or the Debian location. --augment flip: the
    training images are flipped left-right (p=0.5); flip-shift: also shifted by up to 2 pixels."""
    paths = find_fashion_mnist(getattr(args, "data_dir", None))
    train = MNISTDataset(paths["train_images"], paths["train_labels"],
                         transforms=_augmentation(getattr(args, "augment", None)))
    test = MNISTDataset(paths["test_images"], paths["test_labels"])
    return DatasetInfo("fashion-mnist", train, test, input_shape=(784,), num_classes=10)


@register_model("mlp-resnet")
def mlp_resnet(info: DatasetInfo, args) -> nn.Module:
    from ..models import MLPResNet

    return MLPResNet(int(np.prod(info.input_shape)), getattr(args, "hidden_dim", 100),
                     num_classes=info.num_classes)


# ---- a whole run -------------------------------------------------------------------------------

def _build(args):
    info = DATASETS[args.dataset](args)
    model = MODELS[args.model](info, args)
    opt_cls = optim.OPTIMIZERS[args.optimizer]
    optimizer = opt_cls(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    task = TASKS[info.task]()
    train_data, eval_data = task.loaders(info, args)
    return info, model, optimizer, task, train_data, eval_data


def _scheduler(optimizer: optim.Optimizer, args):
    """--schedule: None (constant) or a per-epoch CosineAnnealing over --epochs."""
    schedule = getattr(args, "schedule", None) or "constant"
    if schedule == "constant":
        return None
    if schedule == "cosine":
        return optim.CosineAnnealing(optimizer, T_max=args.epochs)
    raise ConfigError(f"--schedule: unknown schedule {schedule!r} (constant, cosine)")


def _config(args) -> Dict[str, Any]:
    keys = ("model", "dataset", "data_dir", "hidden_dim", "optimizer", "lr", "weight_decay",
            "batch_size", "epochs", "seed", "schedule", "augment",
            "bptt", "clip", "num_layers", "embedding_dim")  # language-model options
    return {k: getattr(args, k, None) for k in keys}


def _plot(path: str, history: List[Dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, key in zip(axes, ("loss", "accuracy")):
        ax.plot(epochs, [h[f"train_{key}"] for h in history], "o-", label="train")
        ax.plot(epochs, [h[f"eval_{key}"] for h in history], "s-", label="validation")
        ax.set_xlabel("epoch")
        ax.set_ylabel(key)
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)


def run_training(args, on_batch=None, on_epoch=None, on_start=None) -> Dict[str, Any]:
    """Train as `needle train` does; write OUT/metrics.jsonl, curves.png, best and last.

    Callbacks: `on_start(trainer, start_epoch)`, `on_batch(trainer, loss, n, correct)`,
    `on_epoch(trainer, record)`. Returns the last epoch's record.
    """
    init.manual_seed(args.seed)
    info, model, optimizer, task, train_data, eval_data = _build(args)
    trainer = Trainer(model, optimizer, task, train_data, eval_data,
                      scheduler=_scheduler(optimizer, args))
    for plugin in TRAINER_PLUGINS:
        plugin(trainer, args)
    history: List[Dict[str, Any]] = []
    if args.resume:
        ckpt = load_checkpoint(args.resume)
        model.load_state_dict(ckpt.model_state)
        if ckpt.optimizer_state is not None:
            optimizer.load_state_dict(ckpt.optimizer_state)
        if ckpt.rng_state is not None:
            init.set_rng_state(ckpt.rng_state)
        trainer.epoch = int(ckpt.meta.get("epoch", 0))
        trainer.global_step = int(ckpt.meta.get("global_step", 0))
        history = list(ckpt.meta.get("history", []))
        if trainer.scheduler is not None:  # the lr of the epoch we resume at
            trainer.scheduler.last_step = trainer.epoch
            optimizer.lr = trainer.scheduler.lr_at(trainer.epoch)
        for loader in (trainer.train_data,):
            if hasattr(loader, "set_epoch"):
                loader.set_epoch(trainer.epoch)
    out = args.out
    metrics_path = os.path.join(out, "metrics.jsonl")
    if trainer.is_main:
        os.makedirs(out, exist_ok=True)
        with open(metrics_path, "w") as f:
            f.writelines(json.dumps(h) + "\n" for h in history)
    if on_batch is not None:
        trainer.on_batch.append(on_batch)
    if on_start is not None:
        on_start(trainer, trainer.epoch)
    key = f"eval_{task.primary_metric}"
    best = max((h[key] for h in history), default=None) if history else None
    record: Dict[str, Any] = history[-1] if history else {}
    while trainer.epoch < args.epochs:
        t0 = time.perf_counter()
        lr = optimizer.lr  # the rate this epoch trains at (a scheduler moves it at the end)
        train_metrics = trainer.train_epoch()
        eval_metrics = trainer.evaluate()
        record = {"epoch": trainer.epoch, **{f"train_{k}": v for k, v in train_metrics.items()},
                  **{f"eval_{k}": v for k, v in eval_metrics.items()},
                  "seconds": round(time.perf_counter() - t0, 3), "lr": lr}
        history.append(record)
        improved = best is None or (record[key] > best if task.higher_is_better
                                    else record[key] < best)
        if improved:
            best = record[key]
        if trainer.is_main:
            with open(metrics_path, "a") as f:
                f.write(json.dumps(record) + "\n")
            meta = {"epoch": trainer.epoch, "global_step": trainer.global_step,
                    "config": _config(args), "history": history, "metrics": record}
            save_checkpoint(os.path.join(out, "last.safetensors"), model, optimizer, meta=meta)
            if improved:
                save_checkpoint(os.path.join(out, "best.safetensors"), model, optimizer,
                                meta=meta)
            _plot(os.path.join(out, "curves.png"), history)
        if on_epoch is not None:
            on_epoch(trainer, record)
    return record


def evaluate_checkpoint(path: str, args) -> Dict[str, Any]:
    """Rebuild the model saved in `path`, load its weights and evaluate it.

    `args.dataset` / `args.data_dir` override the checkpoint's own when not None.
    """
    ckpt = load_checkpoint(path)
    config = dict(ckpt.meta.get("config", {}))
    for k in ("dataset", "data_dir"):
        if getattr(args, k, None) is not None:
            config[k] = getattr(args, k)
    if config.get("model") not in MODELS or config.get("dataset") not in DATASETS:
        raise ConfigError(f"{path}: checkpoint names model {config.get('model')!r} and dataset "
                         f"{config.get('dataset')!r}, not both known here")
    run_args = _Namespace(**config)
    info = DATASETS[run_args.dataset](run_args)
    model = MODELS[run_args.model](info, run_args)
    model.load_state_dict(ckpt.model_state)
    task = TASKS[info.task]()
    run_args.batch_size = run_args.batch_size or 128
    _, eval_data = task.loaders(info, run_args)
    trainer = Trainer(model, None, task, (), eval_data)
    return {"checkpoint": path, "dataset": run_args.dataset, "epoch": ckpt.meta.get("epoch"),
            **{f"eval_{k}": v for k, v in trainer.evaluate().items()}}


class _Namespace:
    def __init__(self, **kw):
        self.__dict__.update(kw)

    def __getattr__(self, name):  # missing options read as None
        return None
