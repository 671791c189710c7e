"""The `needle` command: `needle train`, `needle eval CHECKPOINT`, `needle generate CHECKPOINT`
and `needle summary --model NAME`.

Errors the user can fix (bad flags, missing data, corrupt checkpoints) print one line on
stderr and exit with status 2, without a traceback; a rejected invocation writes nothing.
"""
from __future__ import annotations

import argparse
import difflib
import json
import os
import sys
import time
from typing import List, Optional

from .. import __version__, optim
from . import engine as train
from ..distributed import abort_on_error as _abort_on_error
from ..errors import UserError
from .flags import NONNEG_FLOAT, NONNEG_INT, POS_FLOAT, POS_INT

from . import recipes as _recipes  # registers the datasets, models, flags and plugins

class AnomalyError(UserError, FloatingPointError):
    """`--detect-anomaly` found an op whose output or gradient is nan/inf."""


INSTALL_HINT = "pip install -e '.[train]' in a clone"


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)  # `--epoch` is a typo, not `--epochs`
        kwargs.setdefault("formatter_class", _Help)
        super().__init__(*args, **kwargs)

    def error(self, message):  # one line, exit 2 (argparse prints the whole usage otherwise)
        self.exit(2, f"{self.prog}: error: {message}\n")


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Every flag's help ends with its default, unless the default is None or a flag."""

    def _get_help_string(self, action):
        if action.default is None or isinstance(action.default, bool) or \
                "(default:" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


_HIDDEN_HELP = (f"hidden width (default {_recipes.mnist.MLP_RESNET_HIDDEN_DIM} for mlp-resnet, "
                f"{_recipes.lm.LM_DEFAULTS['hidden_dim']} for the language models)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="needle", description="Train, evaluate and sample needle models. "
                     "Run `needle COMMAND --help` for a command's flags.")
    parser.add_argument("--version", action="version", version=f"needle {__version__}")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser, metavar="COMMAND")
    t = sub.add_parser(
        "train", help="train a model",
        description="Train a model; writes OUT/metrics.jsonl, metrics.csv, curves.png, "
                    "last.safetensors and best.safetensors after every epoch.")
    t.add_argument("--model", default="mlp-resnet", choices=sorted(train.MODELS),
                   help="the model to train")
    t.add_argument("--dataset", default="mnist-small", metavar="NAME|DIR",
                   help=f"one of {', '.join(sorted(train.DATASETS))}, or a folder with "
                        f"train.txt and valid.txt or test.txt (same as --dataset text "
                        f"--data-dir DIR)")
    t.add_argument("--data-dir", default=None, help="folder holding the dataset files")
    t.add_argument("--epochs", type=POS_INT, default=10, help="epochs to train")
    t.add_argument("--max-steps", type=POS_INT, default=None,
                   help="stop after this many optimizer steps in all (the epoch it ends in is "
                        "evaluated and saved)")
    t.add_argument("--max-time", type=POS_FLOAT, default=None, metavar="SECONDS",
                   help="stop after the step that passes this many seconds of wall time")
    t.add_argument("--batch-size", type=POS_INT, default=128, help="samples per batch")
    t.add_argument("--optimizer", default="adam", choices=sorted(optim.OPTIMIZERS),
                   help="optimizer")
    t.add_argument("--lr", type=POS_FLOAT, default=0.002, help="learning rate")
    t.add_argument("--weight-decay", type=NONNEG_FLOAT, default=0.0,
                   help="L2 weight decay added to the gradient")
    t.add_argument("--schedule", default="constant", choices=("constant", "cosine"),
                   help="learning rate per epoch: constant, or cosine annealing to 0 over "
                        "--epochs")
    t.add_argument("--warmup-epochs", type=NONNEG_INT, default=0, metavar="W",
                   help="linear learning-rate warm-up over the first W epochs (lr (t+1)/(W+1) "
                        "of --lr in epoch t), in front of --schedule, which then runs over the "
                        "remaining epochs")
    t.add_argument("--early-stopping", type=POS_INT, default=None, metavar="PATIENCE",
                   help="stop when the validation metric (accuracy; mean IoU for "
                        "segmentation; loss for language models) "
                        "has not improved for PATIENCE epochs, and end with the best epoch's "
                        "weights")
    t.add_argument("--init-from", default=None, metavar="CHECKPOINT",
                   help="start from the weights of another run's checkpoint where names and "
                        "shapes match (the skipped ones are listed)")
    t.add_argument("--freeze", action="append", default=None, metavar="PREFIX",
                   help="do not train parameters whose names start with PREFIX (repeatable; "
                        "`needle summary` shows the names)")
    t.add_argument("--hidden-dim", type=POS_INT, default=None,
                   help=_HIDDEN_HELP)
    t.add_argument("--seed", type=NONNEG_INT, default=0,
                   help="seed of initialization, shuffling and dropout")
    t.add_argument("--out", default="runs/latest",
                   help="output folder (with --resume: the checkpoint's folder)")
    t.add_argument("--resume", default=None, metavar="CHECKPOINT",
                   help="continue from a checkpoint (e.g. OUT/last.safetensors) with the "
                        "configuration stored in it; --epochs N extends a finished run")
    t.add_argument("--log", action="append", choices=("tensorboard",), default=None,
                   help="also write TensorBoard event files to OUT/tensorboard (needs "
                        "tensorboardX: pip install -e '.[tensorboard]')")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.add_argument("--workers", type=NONNEG_INT, default=0,
                   help="processes preparing training batches ahead of the loop (0: in the "
                        "training process)")
    t.add_argument("--no-summary", action="store_true",
                   help="do not print the model summary at the start")
    t.add_argument("--compile", action="store_true",
                   help="record the training step once with needle.compile and replay it "
                        "(classification models; the same numbers as without)")
    t.add_argument("--detect-anomaly", action="store_true",
                   help="stop at the first op whose output or gradient is nan/inf, naming it")
    for declare in train.RECIPE_FLAGS:  # each recipe's own flags
        declare(t, "train")
    e = sub.add_parser("eval", help="evaluate a checkpoint",
                       description="Evaluate a checkpoint on its validation data (or on "
                                   "--dataset); prints one JSON line.")
    e.add_argument("checkpoint", help="a .safetensors file written by `needle train`")
    e.add_argument("--dataset", default=None, metavar="NAME|DIR",
                   help="evaluate on this dataset instead of the checkpoint's own (it must "
                        "have the same inputs and classes)")
    e.add_argument("--data-dir", default=None,
                   help="folder holding the dataset files (default: the checkpoint's)")
    e.add_argument("--tta", default=None, choices=("flip", "crop"),
                   help="also report the accuracy of predictions averaged over test-time "
                        "views: flip (the image and its mirror) or crop (AlexNet's ten "
                        "patches: centre and corner shifts and their mirrors)")
    g = sub.add_parser("generate", help="sample text from a language-model checkpoint",
                       description="Sample text from a language-model checkpoint.")
    g.add_argument("checkpoint", help="a language-model checkpoint from `needle train`")
    g.add_argument("--prompt", default="\n", help="text the sample continues (default: a newline)")
    g.add_argument("--tokens", type=POS_INT, default=200, help="tokens to sample")
    g.add_argument("--temperature", type=POS_FLOAT, default=0.8,
                   help="softmax temperature (lower: more conservative)")
    g.add_argument("--seed", type=NONNEG_INT, default=0, help="sampling seed")
    g.add_argument("--compile", action="store_true",
                   help="run the per-token forward under needle.compile (the same text)")
    s = sub.add_parser("summary", help="print a model's layers, output shapes and parameters",
                       description="Print a model's layers, output shapes on one batch and "
                                   "parameter counts (as `needle train` does at its start).")
    s.add_argument("--model", required=True, choices=sorted(train.MODELS), help="the model")
    s.add_argument("--dataset", default=None, metavar="NAME|DIR",
                   help="dataset that fixes the input and output sizes (default: mnist-small, "
                        "shakespeare for language models, mnist-seg for fcn)")
    s.add_argument("--data-dir", default=None, help="folder holding the dataset files")
    s.add_argument("--batch-size", type=POS_INT, default=128, help="samples per batch")
    s.add_argument("--hidden-dim", type=POS_INT, default=None, help=_HIDDEN_HELP)
    for declare in train.RECIPE_FLAGS:
        declare(s, "summary")
    s.add_argument("--depth", type=POS_INT, default=3, help="module nesting shown")
    x = sub.add_parser("export", help="write a checkpoint's model as ONNX",
                       description="Trace a checkpoint's model (eval mode) on one batch of its "
                                   "data and write it as ONNX (needs the onnx extra).")
    x.add_argument("checkpoint", help="a .safetensors file written by `needle train`")
    x.add_argument("--format", default="onnx", choices=["onnx"], help="output format")
    x.add_argument("--output", default=None, help="output file (default: CHECKPOINT.onnx)")
    x.add_argument("--batch-size", type=POS_INT, default=1, help="batch size of the graph")
    return parser


def _subparser(parser, name):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices.get(name)
    return None


def _reject_unknown(parser, command, extra) -> None:
    """Unknown flags: one line naming the first, with the closest real flag if there is one."""
    sub = _subparser(parser, command) if command else None
    target = sub if sub is not None else parser
    flag = extra[0].split("=", 1)[0]
    options = [o for a in target._actions for o in a.option_strings if o.startswith("--")]
    close = difflib.get_close_matches(flag, options, n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]}?" if close and flag.startswith("-") else ""
    target.error(f"unrecognized argument {extra[0]!r}{hint}")


def _explicit_flags(parser, command, argv) -> set:
    """The dests of the options typed on the command line (for --resume's checks)."""
    sub = _subparser(parser, command)
    typed = {a.split("=", 1)[0] for a in argv if a.startswith("--")}
    return {a.dest for a in sub._actions if typed.intersection(a.option_strings)}


def _resolve_dataset(parser, args) -> None:
    """`--dataset DIR` (a folder of text files) means `--dataset text --data-dir DIR`."""
    name = args.dataset
    if name is None or name in train.DATASETS:
        return
    if os.path.isdir(name):
        if args.data_dir is not None:
            parser.error(f"--dataset {name} is a folder; do not also pass --data-dir")
        args.dataset, args.data_dir = "text", name
        return
    parser.error(f"--dataset: {name!r} is neither a dataset name "
                 f"({', '.join(sorted(train.DATASETS))}) nor a folder")

def _lm(trainer) -> bool:
    return trainer.task.primary_metric == "loss"  # language models: perplexity, not accuracy


def _print_summary(trainer, args) -> None:
    from ..backend_ndarray import cpu
    from .summary import model_summary

    model, task = trainer.model, trainer.task
    batch = next(iter(trainer.eval_data), None)
    if batch is None:
        return

    def forward():
        task.start_epoch(False)
        task.batch(model, batch)
        task.start_epoch(False)
    summary = model_summary(model, forward, title=f"model {args.model} on {args.dataset}")
    print(summary, flush=True)
    print(cpu().describe(), flush=True)  # after the summary's forward: the BLAS is chosen


def _train(args) -> None:
    from .progress import ProgressBar

    state = {}

    def on_start(trainer, start_epoch):
        state["trainer"] = trainer
        if not trainer.is_main:
            return
        if trainer.world_size > 1:
            print(f"data parallel: {trainer.world_size} processes (MPI), "
                  f"{getattr(trainer, 'threads_per_rank', 1)} thread(s) each; metrics and "
                  f"checkpoints from rank 0", flush=True)
        report = getattr(args, "transfer_report", None) or {}
        if report.get("init_loaded") is not None:
            skipped = report["init_skipped"]
            print(f"init-from {args.init_from}: loaded {len(report['init_loaded'])} tensors"
                  + (f"; skipped {len(skipped)}: {'; '.join(skipped)}" if skipped else ""),
                  flush=True)
        if report.get("frozen"):
            print(f"frozen: {len(report['frozen'])} parameters ({', '.join(args.freeze)}*)",
                  flush=True)
        if not args.no_summary:
            _print_summary(trainer, args)
        summary = args.run_summary
        if args.resume:
            extended = summary["extended_from"]
            more = f" (extended from {extended} epochs)" if extended is not None else ""
            print(f"resuming {args.resume} at epoch {start_epoch} of {args.epochs}{more}",
                  flush=True)
        state["epoch_start"] = time.perf_counter()

    def on_batch(trainer, loss, n, correct):
        bar = state.get("bar")
        if bar is None:
            if not trainer.is_main or args.no_progress:
                return
            bar = state["bar"] = ProgressBar(
                len(trainer.train_data), f"epoch {trainer.epoch + 1}/{args.epochs}",
                unit="tok" if _lm(trainer) else "samples", perplexity=_lm(trainer),
                start=state.get("epoch_start"))
        bar.update(n, loss, correct)

    def on_epoch(trainer, record):
        bar = state.pop("bar", None)
        if bar is not None:
            bar.close()
        state["epoch_start"] = time.perf_counter()  # the next epoch's training starts now
        if not trainer.is_main:
            return
        if "eval_mean_iou" in record:
            print(f"epoch {record['epoch']:3d}  train loss {record['train_loss']:.4f} "
                  f"pixel acc {record['train_pixel_accuracy']:.4f} mIoU "
                  f"{record['train_mean_iou']:.4f}  valid loss {record['eval_loss']:.4f} "
                  f"pixel acc {record['eval_pixel_accuracy']:.4f} mIoU "
                  f"{record['eval_mean_iou']:.4f}  ({record['seconds']:.1f}s)", flush=True)
        elif "eval_perplexity" in record:
            print(f"epoch {record['epoch']:3d}  train loss {record['train_loss']:.4f} "
                  f"ppl {record['train_perplexity']:.3f}  valid loss "
                  f"{record['eval_loss']:.4f} ppl {record['eval_perplexity']:.3f}  "
                  f"({record['seconds']:.1f}s)", flush=True)
        else:
            print(f"epoch {record['epoch']:3d}  train loss {record['train_loss']:.4f} "
                  f"acc {record['train_accuracy']:.4f}  valid loss "
                  f"{record['eval_loss']:.4f} acc {record['eval_accuracy']:.4f}  "
                  f"({record['seconds']:.1f}s)", flush=True)

    try:
        if args.detect_anomaly:
            from ..autograd import detect_anomaly

            try:
                with detect_anomaly():
                    train.run_training(args, on_batch=on_batch, on_epoch=on_epoch,
                                       on_start=on_start)
            except FloatingPointError as e:  # the report asked for: one line, no traceback
                if isinstance(e, UserError):
                    raise
                raise AnomalyError(f"--detect-anomaly: {e}") from None
        else:
            train.run_training(args, on_batch=on_batch, on_epoch=on_epoch, on_start=on_start)
    finally:
        bar = state.pop("bar", None)
        if bar is not None:
            bar.close()
    trainer = state.get("trainer")
    if trainer is None or not trainer.is_main:
        return
    summary = args.run_summary
    if summary.get("stopped"):
        print(f"stopped: {summary['stopped']}", flush=True)
    if summary.get("restored") is not None:
        print(f"restored the weights of epoch {summary['restored']} (best.safetensors)",
              flush=True)
    if summary.get("plot") is False:
        print(f"note: curves.png not written: matplotlib is not installed ({INSTALL_HINT})",
              flush=True)
    artifacts = summary.get("artifacts") or {}
    for name, written in artifacts.items():
        if written is False:
            print(f"note: {name} not written: matplotlib is not installed ({INSTALL_HINT})",
                  flush=True)
    best = summary.get("best")
    files = "metrics, " + ("curves.png, " if summary.get("plot") else "") + \
        "".join(f"{name}, " for name, written in artifacts.items() if written) + "checkpoints"
    if best is None:
        print(f"done: no epoch trained; {files} in {args.out}")
    elif "eval_mean_iou" in best:
        print(f"done: best epoch {best['epoch']} of {trainer.epoch}: validation mean IoU "
              f"{best['eval_mean_iou']:.4f} (pixel accuracy {best['eval_pixel_accuracy']:.4f}"
              f"); {files} in {args.out}")
    elif "eval_perplexity" in best:
        print(f"done: best epoch {best['epoch']} of {trainer.epoch}: validation perplexity "
              f"{best['eval_perplexity']:.3f} (loss {best['eval_loss']:.4f}); {files} in "
              f"{args.out}")
    else:
        print(f"done: best epoch {best['epoch']} of {trainer.epoch}: validation accuracy "
              f"{best['eval_accuracy']:.4f} (loss {best['eval_loss']:.4f}); {files} in "
              f"{args.out}")


def _summary_command(args) -> str:
    """`needle summary --model NAME`: the table `needle train` prints at its start."""
    from .summary import model_summary

    if args.dataset is None:
        args.dataset = train.MODEL_DATASETS.get(args.model, "mnist-small")
    info = train.DATASETS[args.dataset](args)
    model = train.MODELS[args.model](info, args)
    task = train.TASKS[info.task]()
    _, eval_data = task.loaders(info, args)
    batch = next(iter(eval_data))

    def forward():
        task.start_epoch(False)
        task.batch(model, batch)
    return model_summary(model, forward, max_depth=args.depth,
                         title=f"model {args.model} on {info.name}")


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    if not argv:
        parser.print_help()
        return 2
    args, extra = parser.parse_known_args(argv)
    if extra:
        _reject_unknown(parser, args.command, extra)
    if args.command is None:
        parser.error("name a command: train, eval, generate, summary or export")
    try:
        if args.command in ("train", "eval", "summary"):
            _resolve_dataset(parser, args)
        if args.command == "train":
            args.explicit_flags = _explicit_flags(parser, "train", argv)
            if args.resume and args.init_from:
                _subparser(parser, "train").error(
                    "--init-from and --resume: a resumed run starts from its own checkpoint")
            if args.resume and "out" not in args.explicit_flags:  # continue in its folder
                args.out = os.path.dirname(args.resume) or "."
            _train(args)
        elif args.command == "generate":
            print(_recipes.lm.generate_text(args.checkpoint, args.prompt, args.tokens,
                                            args.temperature, args.seed, args.compile))
        elif args.command == "summary":
            print(_summary_command(args))
        elif args.command == "export":
            from ..onnx.cli import export_checkpoint
            print(export_checkpoint(args.checkpoint, args.format, args.output, args.batch_size,
                                    registry=train))
        else:
            print(json.dumps(train.evaluate_checkpoint(args.checkpoint, args)))
    except UserError as e:  # anything else is a bug and keeps its traceback
        msg = e
        _abort_on_error(str(msg), 2)  # under mpiexec: one report, then every rank ends
        print(f"needle: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("needle: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
