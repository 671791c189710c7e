"""The `needle` command: `needle train ...` and `needle eval CHECKPOINT`.

Errors the user can fix (bad flags, missing data, corrupt checkpoints) print one line on
stderr and exit with status 2, without a traceback.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import List, Optional

from .. import optim
from . import engine as train
from ..errors import UserError

# ---- plugins: each line imports a module that registers datasets/models/tasks in needle.train --
from ..distributed import abort_on_error as _abort_on_error  # noqa: E402
from ..distributed.plugin import trainer_plugin as _trainer_plugin  # noqa: E402
train.TRAINER_PLUGINS.append(_trainer_plugin)  # data parallel under mpiexec
from . import conv as _train_conv  # noqa: E402,F401  (--model cnn/resnet9, cifar10)
from . import lm as _train_lm  # noqa: E402  (--model lstm-lm/..., shakespeare, text)
train.TRAINER_PLUGINS.append(_train_lm.clip_plugin)  # gradient clipping for language models


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (argparse prints the whole usage otherwise)
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="needle", description="Train and evaluate needle models.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    t = sub.add_parser("train", help="train a model")
    t.add_argument("--model", default="mlp-resnet", choices=sorted(train.MODELS))
    t.add_argument("--dataset", default="mnist-small", metavar="NAME|DIR",
                   help=f"one of {', '.join(sorted(train.DATASETS))}, or a folder with "
                        f"train.txt and valid.txt/test.txt (same as --dataset text --data-dir "
                        f"DIR)")
    t.add_argument("--data-dir", default=None, help="folder holding the dataset files")
    t.add_argument("--epochs", type=int, default=10)
    t.add_argument("--batch-size", type=int, default=128)
    t.add_argument("--optimizer", default="adam", choices=sorted(optim.OPTIMIZERS))
    t.add_argument("--lr", type=float, default=0.002)
    t.add_argument("--weight-decay", type=float, default=0.0)
    t.add_argument("--schedule", default="constant", choices=("constant", "cosine"),
                   help="learning rate per epoch: constant, or cosine annealing to 0 over "
                        "--epochs")
    t.add_argument("--augment", default="none", choices=("none", "flip", "flip-shift"),
                   help="fashion-mnist training images: random left-right flips, and with "
                        "flip-shift also shifts of up to 2 pixels (cifar10 always flips and "
                        "shifts by up to 4)")
    t.add_argument("--hidden-dim", type=int, default=100)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--out", default="runs/latest", help="output folder")
    t.add_argument("--resume", default=None, metavar="CHECKPOINT",
                   help="continue from a checkpoint (e.g. OUT/last.safetensors)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    # language models (defaults in needle.train_lm.LM_DEFAULTS)
    t.add_argument("--bptt", type=int, default=None, help="LM: tokens per truncated window")
    t.add_argument("--clip", type=float, default=None, help="LM: max global gradient norm")
    t.add_argument("--num-layers", type=int, default=None, help="LM: recurrent/attention layers")
    t.add_argument("--embedding-dim", type=int, default=None, help="LM: embedding width")
    e = sub.add_parser("eval", help="evaluate a checkpoint")
    e.add_argument("checkpoint")
    e.add_argument("--dataset", default=None, metavar="NAME|DIR")
    e.add_argument("--data-dir", default=None)
    g = sub.add_parser("generate", help="sample text from a language-model checkpoint")
    g.add_argument("checkpoint")
    g.add_argument("--prompt", default="\n")
    g.add_argument("--tokens", type=int, default=200)
    g.add_argument("--temperature", type=float, default=0.8)
    g.add_argument("--seed", type=int, default=0)
    return parser


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


def _check_train_args(parser, args) -> None:
    for name in ("epochs", "batch_size", "hidden_dim"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.lr <= 0:
        parser.error(f"--lr must be > 0, got {args.lr}")


def _train(args) -> None:
    from tqdm import tqdm

    state = {}

    def on_start(trainer, start_epoch):
        state["trainer"] = trainer

    def on_batch(trainer, loss, n, correct):
        bar = state.get("bar")
        if bar is None:
            if not trainer.is_main:
                return
            bar = state["bar"] = tqdm(total=len(trainer.train_data), leave=False,
                                      desc=f"epoch {trainer.epoch + 1}/{args.epochs}",
                                      disable=args.no_progress, file=sys.stderr)
            state["sums"] = [0.0, 0, 0]
        s = state["sums"]
        s[0] += loss * n
        s[1] += correct
        s[2] += n
        bar.set_postfix(loss=f"{s[0] / s[2]:.4f}", acc=f"{s[1] / s[2]:.4f}", refresh=False)
        bar.update(1)

    def on_epoch(trainer, record):
        bar = state.pop("bar", None)
        if bar is not None:
            bar.close()
        if trainer.is_main:
            print(f"epoch {record['epoch']:3d}  train loss {record['train_loss']:.4f} "
                  f"acc {record['train_accuracy']:.4f}  valid loss {record['eval_loss']:.4f} "
                  f"acc {record['eval_accuracy']:.4f}  ({record['seconds']:.1f}s)", flush=True)
            if "eval_perplexity" in record:
                print(f"           perplexity train {record['train_perplexity']:.3f}  valid "
                      f"{record['eval_perplexity']:.3f}", flush=True)

    record = train.run_training(args, on_batch=on_batch, on_epoch=on_epoch, on_start=on_start)
    if state["trainer"].is_main:
        print(f"done: validation accuracy {record.get('eval_accuracy', float('nan')):.4f}; "
              f"metrics, curves.png and checkpoints in {args.out}")


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command in ("train", "eval"):
            _resolve_dataset(parser, args)
        if args.command == "train":
            _check_train_args(parser, args)
            _train(args)
        elif args.command == "generate":
            print(_train_lm.generate_text(args.checkpoint, args.prompt, args.tokens,
                                          args.temperature, args.seed))
        else:
            print(json.dumps(train.evaluate_checkpoint(args.checkpoint, args)))
    except UserError as e:  # anything else is a bug and keeps its traceback
        msg = e
        print(f"needle: error: {msg}", file=sys.stderr)
        _abort_on_error(str(msg), 2)  # other ranks would wait forever
        return 2
    except KeyboardInterrupt:
        print("needle: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
