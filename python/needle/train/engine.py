"""The training engine behind the `needle` command: registries, tasks and the Trainer.

It knows no dataset, model or recipe flag: recipes register them. Extending it takes one
import line (in `recipes.py`) of a module that calls:

- `register_dataset(name)(factory)`: `factory(args) -> DatasetInfo` (train/eval data, task);
- `register_model(name)(builder)`: `builder(info, args) -> nn.Module`;
- `register_flags(*config_keys)(fn)`: `fn(parser, command)` adds the recipe's own flags to
  `needle train` and `needle summary`; the keys are stored in checkpoints;
- `TASKS[name] = TaskClass`: how batches become a loss and metrics (classification here; a
  language-model task keeps hidden state across batches);
- `TRAINER_PLUGINS.append(fn)`: `fn(trainer, args)` after the trainer is built, e.g. to set
  `trainer.is_main` (rank 0 writes files), append a gradient all-reduce to
  `trainer.after_backward`, or swap `trainer.train_data` for a loader with a sampler.

Nothing here prints; the CLI passes callbacks (`on_batch`, `on_epoch`) for progress output.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Optional

from .. import init, nn, optim
from ..autograd import Tensor, no_grad
from ..compile import compile as _compile
from ..data import DataLoader
from ..errors import ConfigError, UserError
from ..serialization import load_checkpoint, save_checkpoint
from .run_config import add_config_keys, apply_resume_config, check_data_matches
from .run_config import check_finite_record, data_signature, run_config
from .run_files import TensorBoardLog, plot_curves, remove_stale_temps, write_metrics
from .transfer import freeze_parameters, init_from_checkpoint

__all__ = [
    "DatasetInfo", "Task", "ClassificationTask", "Trainer", "DATASETS", "MODELS",
    "MODEL_DATASETS", "TASKS", "TRAINER_PLUGINS", "RECIPE_FLAGS", "register_dataset",
    "register_model", "register_flags", "run_training", "evaluate_checkpoint", "prepare_run",
    "DivergedError", "rebuild_checkpoint",
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


MODEL_DATASETS: Dict[str, str] = {}  # model -> the dataset `needle summary` shows it on


def register_model(name: str, default_dataset: Optional[str] = None):
    """Decorator for `builder(info, args) -> nn.Module`; `default_dataset` is the dataset
    `needle summary --model NAME` builds it for when none is named."""
    def deco(fn):
        MODELS[name] = fn
        if default_dataset is not None:
            MODEL_DATASETS[name] = default_dataset
        return fn
    return deco


# fn(parser, command): a recipe's own flags on the `train` and `summary` parsers (command is
# "train" or "summary"); they are added after the trainer's own flags, in import order.
RECIPE_FLAGS: List[Callable[[Any, str], None]] = []


def register_flags(*config_keys: str):
    """Decorator for a recipe's `fn(parser, command)` that declares its CLI flags;
    `config_keys` (the flags' dests) are stored in every checkpoint's configuration, so a
    resumed or evaluated run rebuilds the model with them."""
    def deco(fn):
        RECIPE_FLAGS.append(fn)
        add_config_keys(config_keys)
        return fn
    return deco


# ---- tasks --------------------------------------------------------------------------------------

class Task:
    """How a batch becomes a loss, and how per-batch counts become epoch metrics."""

    primary_metric = "accuracy"
    higher_is_better = True
    curve_metrics = None  # the metrics curves.png plots beside the loss (None: the default)
    # True when `batch` computes everything on the device (no value read into Python), so the
    # Trainer may run it under needle.compile (`--compile`)
    compilable = False

    def loaders(self, info: DatasetInfo, args) -> tuple:
        """(train iterable, eval iterable); each is iterated once per epoch."""
        raise NotImplementedError

    def start_epoch(self, training: bool) -> None:
        """Reset per-epoch state (e.g. a language model's hidden state)."""

    def batch(self, model, batch) -> tuple:
        """Return (scalar loss Tensor, number of samples, number correct: a number, or a
        0-d Tensor counted on the device, which a compiled step can return)."""
        raise NotImplementedError

    def carry(self) -> tuple:
        """The Tensors this task carries from one batch to the next (a language model's
        hidden state), flat; a compiled step takes them in and gives the new ones back."""
        return ()

    def set_carry(self, tensors: tuple) -> None:
        """Restore what `carry` returned (the compiled step's outputs)."""

    def metrics(self, loss_sum: float, correct: float, n: int) -> Dict[str, float]:
        return {"loss": loss_sum / max(n, 1), "accuracy": correct / max(n, 1)}

    def write_artifacts(self, folder: str, title: str) -> Dict[str, bool]:
        """Files besides the curves written after every epoch (e.g. predicted masks):
        {file name: written}; False when a file was skipped (matplotlib missing)."""
        return {}


class ClassificationTask(Task):
    """Logits (B, K) against integer labels (B,); the loss is `loss_fn` (a loss module,
    default softmax cross-entropy)."""

    compilable = True

    def __init__(self, loss_fn: Optional[nn.Module] = None):
        self.loss_fn = nn.SoftmaxLoss() if loss_fn is None else loss_fn

    def loaders(self, info, args):
        train = DataLoader(info.train, batch_size=args.batch_size, shuffle=True,
                           num_workers=int(getattr(args, "workers", 0) or 0))
        evaluate = DataLoader(info.eval, batch_size=max(args.batch_size, 1000), shuffle=False)
        return train, evaluate

    def batch(self, model, batch):
        X, y = batch[0], batch[1]
        logits = model(X)
        loss = self.loss_fn(logits, y)
        pred = logits.realize_cached_data().argmax(axis=1)
        correct = Tensor.make_const((pred == y.realize_cached_data().astype(pred.dtype)).sum())
        return loss, y.shape[0], correct


def _count(value) -> float:
    """A task's `correct` (a number or a 0-d Tensor) as a Python number."""
    if isinstance(value, Tensor):
        v = float(value.realize_cached_data().item())
        return int(v) if v.is_integer() else v
    return value


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
        # (loss_sum, correct, n) -> the same summed over every process evaluating a shard
        self.reduce_eval_sums: Optional[Callable[[tuple], tuple]] = None
        self.world_size = 1  # processes training together (set by the data-parallel plugin)
        self.is_main = True
        self.epoch = 0
        self.global_step = 0
        # fn(trainer) -> a reason to stop (e.g. "--max-steps 100 reached") or None, after
        # every step; the epoch then ends early and `stopped` holds the reason
        self.stop_check: Optional[Callable[["Trainer"], Optional[str]]] = None
        self.stopped: Optional[str] = None
        # True: the training step runs under needle.compile (recorded once, then replayed)
        self.compile = False
        self._compiled = self._compiled_eval = None
        self.last_samples = 0  # samples (or tokens) the last train_epoch/evaluate counted

    def _step(self, batch):
        """One training step on `batch`: (loss, samples, correct)."""
        opt = self.optimizer
        opt.reset_grad()
        loss, n, correct = self.task.batch(self.model, batch)
        loss.backward(create_graph=False)
        for hook in self.after_backward:
            hook(self)
        opt.step()
        return loss, n, correct

    def _step_function(self):
        """`_step`, or its `needle.compile`d form when `compile` is set: the batch's Tensors
        and the task's carried Tensors in; the loss, the device-side count, the sample count
        (a constant of each recorded plan: it depends on shapes only) and the new carried
        Tensors out; the values are read after it."""
        if not self.compile:
            return self._step
        if self._compiled is None:
            def train_step(X, y, *carry):
                self.task.set_carry(carry)
                loss, n, correct = self._step((X, y))
                return (loss, correct, n) + tuple(self.task.carry())

            self._compiled = _compile(train_step, track=(self.model, self.optimizer))
        return self._compiled_call(self._compiled)

    def _compiled_call(self, compiled):
        def step(batch):
            out = compiled(batch[0], batch[1], *self.task.carry())
            self.task.set_carry(tuple(out[3:]))
            return out[0], out[2], out[1]
        return step

    def _eval_function(self):
        """`task.batch` (under no_grad), or its compiled form when `compile` is set."""
        if not self.compile:
            return lambda batch: self.task.batch(self.model, batch)
        if self._compiled_eval is None:
            def eval_step(X, y, *carry):
                self.task.set_carry(carry)
                loss, n, correct = self.task.batch(self.model, (X, y))
                return (loss, correct, n) + tuple(self.task.carry())

            self._compiled_eval = _compile(eval_step, track=(self.model,))
        return self._compiled_call(self._compiled_eval)

    def train_epoch(self) -> Dict[str, float]:
        model, task = self.model, self.task
        model.train()
        task.start_epoch(True)
        step = self._step_function()
        loss_sum, correct_sum, n_sum = 0.0, 0, 0
        for batch in self.train_data:
            loss, n, correct = step(batch)
            correct = _count(correct)
            self.global_step += 1
            value = float(loss.realize_cached_data().item())
            loss_sum += value * n
            correct_sum += correct
            n_sum += n
            for cb in self.on_batch:
                cb(self, value, n, correct)
            if self.stop_check is not None:
                self.stopped = self.stop_check(self)
                if self.stopped is not None:
                    break
        if self.scheduler is not None:
            self.scheduler.step()
        self.epoch += 1
        self.last_samples = n_sum
        return task.metrics(loss_sum, correct_sum, n_sum)

    def evaluate(self, data: Optional[Iterable] = None,
                 on_batch: Optional[Callable[..., None]] = None) -> Dict[str, float]:
        """Metrics over `data` (default: eval_data) in eval mode, without a graph;
        `on_batch(trainer, loss, n, correct)` after every batch, as in training."""
        model, task = self.model, self.task
        model.eval()
        task.start_epoch(False)
        loss_sum, correct_sum, n_sum = 0.0, 0, 0
        with no_grad():
            step = self._eval_function()
            for batch in (self.eval_data if data is None else data):
                loss, n, correct = step(batch)
                value, correct = float(loss.realize_cached_data().item()), _count(correct)
                loss_sum += value * n
                correct_sum += correct
                n_sum += n
                if on_batch is not None:
                    on_batch(self, value, n, correct)
        if data is None and self.reduce_eval_sums is not None:  # eval_data is a shard
            loss_sum, correct_sum, n_sum = self.reduce_eval_sums((loss_sum, correct_sum, n_sum))
        self.last_samples = n_sum
        return task.metrics(loss_sum, correct_sum, n_sum)


# ---- a whole run -------------------------------------------------------------------------------

def _build(args):
    info = DATASETS[args.dataset](args)
    model = MODELS[args.model](info, args)
    report = {"init_loaded": None, "init_skipped": None, "frozen": []}
    if getattr(args, "init_from", None) and not getattr(args, "resume", None):
        report["init_loaded"], report["init_skipped"] = init_from_checkpoint(model,
                                                                             args.init_from)
    if getattr(args, "freeze", None):
        report["frozen"] = freeze_parameters(model, args.freeze)
    args.transfer_report = report
    params = [p for p in model.parameters() if p.requires_grad]
    opt_cls = optim.OPTIMIZERS[args.optimizer]
    optimizer = opt_cls(params, lr=args.lr, weight_decay=args.weight_decay)
    task = TASKS[info.task]()
    train_data, eval_data = task.loaders(info, args)
    return info, model, optimizer, task, train_data, eval_data


def _scheduler(optimizer: optim.Optimizer, args):
    """--schedule: None (constant) or a per-epoch CosineAnnealing over --epochs; with
    --warmup-epochs W, a linear ramp over the first W epochs in front (lr (t+1)/(W+1) of
    --lr in epoch t < W), then the schedule over the remaining epochs."""
    schedule = getattr(args, "schedule", None) or "constant"
    warmup = getattr(args, "warmup_epochs", None) or 0
    if schedule not in ("constant", "cosine"):
        raise ConfigError(f"--schedule: unknown schedule {schedule!r} (constant, cosine)")
    if warmup and warmup >= args.epochs:
        raise ConfigError(f"--warmup-epochs {warmup} must be fewer than --epochs "
                          f"{args.epochs}")
    after = (optim.CosineAnnealing(optimizer, T_max=args.epochs - warmup)
             if schedule == "cosine" else None)
    if not warmup:
        return after
    return optim.LinearWarmup(optimizer, warmup, after=after, start_factor=1 / (warmup + 1))


def _config(args) -> Dict[str, Any]:
    return run_config(args)


class DivergedError(UserError, FloatingPointError):
    """An epoch's loss or metrics came out nan or inf (too high a learning rate, usually)."""


def _stop_check(args, t_start: float) -> Optional[Callable[["Trainer"], Optional[str]]]:
    """The per-step check of --max-steps / --max-time: the reason to stop, or None."""
    max_steps, max_time = getattr(args, "max_steps", None), getattr(args, "max_time", None)
    if max_steps is None and max_time is None:
        return None

    def check(trainer):
        if max_steps is not None and trainer.global_step >= max_steps:
            return f"--max-steps {max_steps} reached"
        if max_time is not None and time.perf_counter() - t_start >= max_time:
            return f"--max-time {max_time:g}s reached"
        return None
    return check


def prepare_run(args):
    """Build (info, trainer, checkpoint or None, extended_from) for `args`; with --resume the
    model is rebuilt from the checkpoint's stored configuration (see run_config)."""
    out = args.out
    if os.path.exists(out) and not os.path.isdir(out):
        raise ConfigError(f"--out {out}: is a file, not a folder")
    ckpt, extended_from = None, None
    if getattr(args, "resume", None):
        ckpt = load_checkpoint(args.resume)
        extended_from = apply_resume_config(args, ckpt.meta, args.resume)
    init.manual_seed(args.seed)
    info, model, optimizer, task, train_data, eval_data = _build(args)
    trainer = Trainer(model, optimizer, task, train_data, eval_data,
                      scheduler=_scheduler(optimizer, args))
    for plugin in TRAINER_PLUGINS:
        plugin(trainer, args)
    if getattr(args, "compile", False):
        if not task.compilable:
            raise ConfigError(f"--compile: supported for the classification and language "
                              f"models, not for --model {args.model} ({type(task).__name__} "
                              f"reads values on the host)")
        if trainer.world_size > 1:
            raise ConfigError("--compile: not with data-parallel runs (the gradient "
                              "all-reduce runs between backward and step)")
        trainer.compile = True
    if ckpt is not None:
        check_data_matches(args.resume, ckpt.meta, info, ckpt.model_state, model)
        model.load_state_dict(ckpt.model_state)
        if ckpt.optimizer_state is not None:
            optimizer.load_state_dict(ckpt.optimizer_state)
        if ckpt.rng_state is not None:
            init.set_rng_state(ckpt.rng_state)
        trainer.epoch = int(ckpt.meta.get("epoch", 0))
        trainer.global_step = int(ckpt.meta.get("global_step", 0))
        if trainer.scheduler is not None:  # the lr of the epoch we resume at
            trainer.scheduler.last_step = trainer.epoch
            optimizer.lr = trainer.scheduler.lr_at(trainer.epoch)
        for loader in (trainer.train_data,):
            if hasattr(loader, "set_epoch"):
                loader.set_epoch(trainer.epoch)
    return info, trainer, ckpt, extended_from


def run_training(args, on_batch=None, on_epoch=None, on_start=None) -> Dict[str, Any]:
    """Train as `needle train` does; write OUT/metrics.jsonl, metrics.csv, curves.png,
    best.safetensors and last.safetensors (and OUT/tensorboard with `--log tensorboard`).

    Callbacks: `on_start(trainer, start_epoch)`, `on_batch(trainer, loss, n, correct)`,
    `on_epoch(trainer, record)`. Returns the last epoch's record; the run's summary (best
    epoch, why it stopped, whether a plot was written) is in `args.run_summary`.
    A record with a nan/inf metric raises DivergedError before any checkpoint is replaced.
    """
    t_start = time.perf_counter()
    info, trainer, ckpt, extended_from = prepare_run(args)
    model, optimizer, task = trainer.model, trainer.optimizer, trainer.task
    history: List[Dict[str, Any]] = list(ckpt.meta.get("history", [])) if ckpt else []
    out = args.out
    tb = None
    if trainer.is_main:
        os.makedirs(out, exist_ok=True)  # files are written once an epoch has finished
        if "tensorboard" in (getattr(args, "log", None) or ()):
            tb = TensorBoardLog(out, purge_step=trainer.global_step + 1 if ckpt else None)
    if on_batch is not None:
        trainer.on_batch.append(on_batch)
    if tb is not None:
        trainer.on_batch.append(lambda t, loss, n, correct: tb.step(t.global_step, loss))
    trainer.stop_check = _stop_check(args, t_start)
    summary = {"extended_from": extended_from, "stopped": None, "plot": None,
               "model_name": args.model, "dataset": info.name, "trainer": trainer}
    args.run_summary = summary
    if on_start is not None:
        on_start(trainer, trainer.epoch)
    key = f"eval_{task.primary_metric}"
    better = (lambda a, b: a > b) if task.higher_is_better else (lambda a, b: a < b)
    best = None
    for h in history:
        if best is None or better(h[key], best[key]):
            best = h
    record: Dict[str, Any] = history[-1] if history else {}
    patience = getattr(args, "early_stopping", None)
    best_state = None  # the best epoch's weights, restored when early stopping ends the run
    if patience and best is not None and ckpt is not None and best is not history[-1]:
        best_state = load_checkpoint(os.path.join(out, "best.safetensors")).model_state \
            if os.path.isfile(os.path.join(out, "best.safetensors")) else None
    title = f"{os.path.basename(os.path.abspath(out))}: {args.model} on {info.name}"
    try:
        while trainer.epoch < args.epochs and summary["stopped"] is None:
            t0 = time.perf_counter()
            lr = optimizer.lr  # the rate this epoch trains at (a scheduler moves it at the end)
            train_metrics = trainer.train_epoch()
            eval_metrics = trainer.evaluate()
            record = {"epoch": trainer.epoch,
                      **{f"train_{k}": v for k, v in train_metrics.items()},
                      **{f"eval_{k}": v for k, v in eval_metrics.items()},
                      "seconds": round(time.perf_counter() - t0, 3), "lr": lr,
                      "step": trainer.global_step}
            if trainer.stopped is not None:
                summary["stopped"] = trainer.stopped
                record["stopped"] = trainer.stopped
            bad = check_finite_record(record)
            if bad is not None:
                kept = (f"{out}/last.safetensors keeps epoch {history[-1]['epoch']}"
                        if history else "no checkpoint written")
                raise DivergedError(f"epoch {record['epoch']}: {bad}; stopped before "
                                    f"writing checkpoints ({kept}); try a smaller --lr")
            history.append(record)
            improved = best is None or better(record[key], best[key])
            if improved:
                best = record
                if patience:
                    best_state = model.state_dict()
            elif patience and record["epoch"] - best["epoch"] >= patience and \
                    summary["stopped"] is None:
                summary["stopped"] = record["stopped"] = (
                    f"--early-stopping {patience}: no better validation {task.primary_metric} "
                    f"in {patience} epochs since epoch {best['epoch']}")
            if trainer.is_main:
                write_metrics(out, history)
                meta = {"epoch": trainer.epoch, "global_step": trainer.global_step,
                        "config": _config(args), "data": data_signature(info),
                        "history": history, "metrics": record}
                for name in ("last.safetensors",) + (("best.safetensors",) if improved else ()):
                    remove_stale_temps(out, name)
                    save_checkpoint(os.path.join(out, name), model, optimizer, meta=meta)
                summary["plot"] = plot_curves(os.path.join(out, "curves.png"), history, title,
                                              metrics=task.curve_metrics)
                summary["artifacts"] = task.write_artifacts(out, title)
                if tb is not None:
                    tb.epoch(record)
            if on_epoch is not None:
                on_epoch(trainer, record)
    finally:
        if tb is not None:
            tb.close()
    if patience and summary["stopped"] and best_state is not None and \
            summary["stopped"].startswith("--early-stopping"):
        model.load_state_dict(best_state)  # the model ends with the best epoch's weights
        summary["restored"] = best["epoch"]
    summary["best"] = best
    summary["metric"] = task.primary_metric
    return record


def rebuild_checkpoint(path: str, overrides: Optional[Dict[str, Any]] = None) -> tuple:
    """(checkpoint, run arguments, DatasetInfo, model with its weights) of the run saved in
    `path`, from the configuration it stores; `overrides` entries that are not None replace
    it (`needle eval --dataset`). A dataset that does not fit the checkpoint raises
    ConfigError."""
    ckpt = load_checkpoint(path)
    config = dict(ckpt.meta.get("config", {}))
    config.update({k: v for k, v in (overrides or {}).items() if v is not None})
    if config.get("model") not in MODELS or config.get("dataset") not in DATASETS:
        raise ConfigError(f"{path}: checkpoint names model {config.get('model')!r} and dataset "
                          f"{config.get('dataset')!r}, not both known here")
    run_args = _Namespace(**config)
    info = DATASETS[run_args.dataset](run_args)
    model = MODELS[run_args.model](info, run_args)
    check_data_matches(path, ckpt.meta, info, ckpt.model_state, model)
    model.load_state_dict(ckpt.model_state)
    return ckpt, run_args, info, model


def evaluate_checkpoint(path: str, args) -> Dict[str, Any]:
    """Rebuild the model saved in `path`, load its weights and evaluate it.

    `args.dataset` / `args.data_dir` override the checkpoint's own when not None; a dataset
    that does not fit the checkpoint (other inputs or classes) raises ConfigError. With
    `args.tta` ("flip" or "crop") the result also holds the accuracy of the predictions
    averaged over the test-time views (`train.tta.tta_accuracy`) beside the plain one.
    """
    ckpt, run_args, info, model = rebuild_checkpoint(
        path, {k: getattr(args, k, None) for k in ("dataset", "data_dir")})
    task = TASKS[info.task]()
    run_args.batch_size = run_args.batch_size or 128
    _, eval_data = task.loaders(info, run_args)
    tta = getattr(args, "tta", None)
    if tta:
        from .tta import check_tta

        check_tta(path, info, tta)  # before the (long) plain evaluation
    trainer = Trainer(model, None, task, (), eval_data)
    result = {"checkpoint": path, "dataset": run_args.dataset, "epoch": ckpt.meta.get("epoch"),
              **{f"eval_{k}": v for k, v in trainer.evaluate().items()}}
    if tta:
        from .tta import tta_accuracy

        result.update(tta_accuracy(model, info, tta, batch_size=max(run_args.batch_size, 500)))
    return result


class _Namespace:
    def __init__(self, **kw):
        self.__dict__.update(kw)

    def __getattr__(self, name):  # missing options read as None
        return None
