"""How much of a CNN epoch `DataLoader(num_workers=N)` hides: `needle train --model cnn
--dataset fashion-mnist` steps with the loader in the training process and with N workers.

The recipe's own pieces (the fashion-mnist dataset with `--augment`, SmallResNet, Adam at the
CLI's defaults, batch 128) run `--steps` training steps per run; runs alternate between
num_workers=0 and N (`--repeat` pairs), so a change in the machine's load hits both alike.
Also timed: the loader alone (the batches without training) — the most there is to hide.
Prints the medians, their ratio, and the hidden share of the loader's time; per-epoch figures
scale the per-step medians to the epoch's 469 steps.

    python benchmarks/bench_dataloader.py --data-dir /work/shared/data/fashion-mnist \\
        [--workers 2 --augment flip-shift --steps 40 --repeat 5]
"""
from __future__ import annotations

import argparse
import itertools
import statistics
import time
import types

import _common  # noqa: F401 (puts ./python on sys.path)
from _common import machine


def _loader(info, args, workers: int):
    from needle.data import DataLoader

    return DataLoader(info.train, batch_size=args.batch_size, shuffle=True,
                      num_workers=workers)


def _run(trainer, loader, steps: int) -> float:
    """Wall seconds per training step, batches included (after one warm-up step)."""
    model, opt, task = trainer.model, trainer.optimizer, trainer.task
    model.train()
    it = iter(loader)
    batches = itertools.islice(it, steps + 1)
    start = None
    for i, batch in enumerate(batches):
        if i == 1:
            start = time.perf_counter()
        opt.reset_grad()
        loss, _, _ = task.batch(model, batch)
        loss.backward(create_graph=False)
        opt.step()
        loss.realize_cached_data().item()
    elapsed = time.perf_counter() - start
    if hasattr(it, "close"):
        it.close()
    return elapsed / steps


def _loader_alone(loader, steps: int) -> float:
    it = iter(loader)
    batches = itertools.islice(it, steps + 1)
    next(batches)
    t0 = time.perf_counter()
    for batch in batches:
        batch[0].realize_cached_data()
    elapsed = time.perf_counter() - t0
    if hasattr(it, "close"):
        it.close()
    return elapsed / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=None, help="folder with the Fashion-MNIST files")
    ap.add_argument("--augment", default="flip-shift", choices=("none", "flip", "flip-shift"))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=40, help="timed training steps per run")
    ap.add_argument("--repeat", type=int, default=5, help="pairs of runs (0 and N workers)")
    args = ap.parse_args()

    import needle as ndl
    from needle import optim
    from needle.train import engine
    from needle.train import conv as _conv  # noqa: F401 (registers --model cnn)

    ns = types.SimpleNamespace(data_dir=args.data_dir, augment=args.augment, hidden_dim=100)
    info = engine.DATASETS["fashion-mnist"](ns)
    ndl.init.manual_seed(0)
    model = engine.MODELS["cnn"](info, ns)
    trainer = engine.Trainer(model, optim.Adam(model.parameters(), lr=0.002),
                             engine.ClassificationTask(), None, None)
    steps_per_epoch = len(_loader(info, args, 0))
    step = {0: [], args.workers: []}
    alone = {0: [], args.workers: []}
    _run(trainer, _loader(info, args, 0), 5)  # warm-up: first-call costs, memory pools
    for _ in range(args.repeat):
        for w in (0, args.workers):
            step[w].append(_run(trainer, _loader(info, args, w), args.steps))
            alone[w].append(_loader_alone(_loader(info, args, w), args.steps))
    s0, sn = statistics.median(step[0]), statistics.median(step[args.workers])
    a0, an = statistics.median(alone[0]), statistics.median(alone[args.workers])
    print(f"\nCNN (SmallResNet) on fashion-mnist, batch {args.batch_size}, --augment "
          f"{args.augment}, {args.steps} steps x {args.repeat} pairs  ({machine()})")
    print(f"{'':34s}{'num_workers=0':>16s}{f'num_workers={args.workers}':>16s}{'ratio':>10s}")
    print(f"{'training step, ms (median)':34s}{s0 * 1e3:16.2f}{sn * 1e3:16.2f}"
          f"{s0 / sn:9.2f}x")
    print(f"{'loader alone, ms per batch':34s}{a0 * 1e3:16.2f}{an * 1e3:16.2f}"
          f"{a0 / an:9.2f}x")
    print(f"{'epoch estimate, s':34s}{s0 * steps_per_epoch:16.1f}"
          f"{sn * steps_per_epoch:16.1f}")
    hidden = (s0 - sn) / a0 if a0 > 0 else float("nan")
    print(f"batches take {100 * a0 / s0:.1f}% of a step with num_workers=0; "
          f"num_workers={args.workers} hides {100 * hidden:.0f}% of that "
          f"({(s0 - sn) * steps_per_epoch:+.1f} s per epoch of {steps_per_epoch} steps)")
    print("runs: num_workers=0 " + ", ".join(f"{1e3 * t:.1f}" for t in step[0])
          + f" ms; num_workers={args.workers} "
          + ", ".join(f"{1e3 * t:.1f}" for t in step[args.workers]) + " ms")


if __name__ == "__main__":
    main()
