"""Transfer learning with `needle train`: a CNN (`--model cnn`, SmallResNet) trained on MNIST
(`mnist-small`), then trained on Fashion-MNIST for the same number of steps three ways:

- scratch: a fresh initialization;
- frozen: `--init-from` the MNIST checkpoint and `--freeze` every convolutional stage
  (model.modules.0, 2, 3, 4), so only the 650-parameter linear head trains (the BatchNorm
  running statistics still follow the new images, as in PyTorch with requires_grad=False);
- frozen, lr x10: the same at ten times the learning rate (a lone linear head takes it);
- fine-tuned: `--init-from` the MNIST checkpoint, every parameter trained.

Accuracy is on the whole Fashion-MNIST test set (10000 images). Seconds are wall time of the
whole run (training and the evaluation), for direction only.

    python benchmarks/bench_transfer.py [--pretrain-steps 300] [--steps 150] [--batch-size 64]
        [--data-dir /work/shared/data/fashion-mnist] [--out DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "python"))

from needle.models import SmallResNet  # noqa: E402
from needle.train import cli  # noqa: E402

FEATURES = ("model.modules.0", "model.modules.2", "model.modules.3", "model.modules.4")


def _run(argv):
    t0 = time.perf_counter()
    code = cli.main(["train", *argv, "--no-progress", "--no-summary"])
    if code != 0:
        raise SystemExit(f"needle train {' '.join(argv)}: exit {code}")
    out = argv[argv.index("--out") + 1]
    with open(os.path.join(out, "metrics.jsonl")) as f:
        record = json.loads(f.read().splitlines()[-1])
    return record, time.perf_counter() - t0


def _trainable(frozen) -> int:
    return sum(p.size for name, p in SmallResNet().named_parameters()
               if not any(name.startswith(f) for f in frozen))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pretrain-steps", type=int, default=300)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=0.002)
    ap.add_argument("--data-dir", default="/work/shared/data/fashion-mnist")
    ap.add_argument("--out", default=None, help="folder for the runs (default: a temp folder)")
    args = ap.parse_args()
    root = args.out or tempfile.mkdtemp(prefix="bench_transfer_")
    common = ["--model", "cnn", "--batch-size", str(args.batch_size), "--epochs", "100",
              "--seed", "0"]
    lr = ["--lr", str(args.lr)]
    mnist, t = _run([*common, *lr, "--dataset", "mnist-small", "--max-steps",
                     str(args.pretrain_steps), "--out", os.path.join(root, "mnist")])
    print(f"pretrained on mnist-small: {args.pretrain_steps} steps, validation accuracy "
          f"{mnist['eval_accuracy']:.4f} ({t:.0f}s)", flush=True)
    ckpt = os.path.join(root, "mnist", "last.safetensors")
    fashion = [*common, "--dataset", "fashion-mnist", "--data-dir", args.data_dir,
               "--max-steps", str(args.steps)]
    freeze = ["--init-from", ckpt] + [a for f in FEATURES for a in ("--freeze", f)]
    arms = [("scratch", lr, ()),
            ("frozen features", freeze + lr, FEATURES),
            ("frozen, lr x10", freeze + ["--lr", str(10 * args.lr)], FEATURES),
            ("fine-tuned", ["--init-from", ckpt] + lr, ())]
    print(f"\nFashion-MNIST, {args.steps} steps of batch {args.batch_size} each, test accuracy "
          f"on 10000 images")
    print(f"{'start':<16} {'trained params':>14} {'test acc':>9} {'test loss':>10} "
          f"{'train acc':>10} {'seconds':>8}")
    for name, extra, frozen in arms:
        rec, t = _run([*fashion, *extra, "--out",
                       os.path.join(root, name.replace(" ", "-").replace(",", ""))])
        print(f"{name:<16} {_trainable(frozen):>14,} {rec['eval_accuracy']:>9.4f} "
              f"{rec['eval_loss']:>10.4f} {rec['train_accuracy']:>10.4f} {t:>8.0f}", flush=True)


if __name__ == "__main__":
    main()
