"""needle vs PyTorch (CPU, 2 threads): one epoch of MLPResNet(784, 100) on Fashion-MNIST.

Batch 128, Adam(lr=1e-3), BatchNorm + Dropout as in the course model; the same data order and
the same initial weights (copied from needle) for both. Reports training samples/s and the
ratio (target: needle >= 0.8x PyTorch). needle runs twice per repeat: with its fast path
`backward(create_graph=False)` (the measurement this script always made) and with the default
`loss.backward()` a course user writes (issue 12 target: >= 0.9x); `--backward fast` or
`--backward default` runs one of them. The epochs alternate: needle fast, torch, needle default,
torch; the torch figure is the median of all its epochs. Each timed epoch runs in a fresh
process (this script with `--child`; a few untimed steps first): in one process the two
frameworks' idle threads slow each other down, by different amounts for different needle
versions (PyTorch's epoch here ran at 35k samples/s beside needle 61b6302, whose OpenBLAS
kept two spinning threads, and at 44-46k beside the current needle). `--in-process` times
them in this process instead.

Run: python benchmarks/bench_train.py [--data-dir DIR] [--samples N] [--threads T] [--profile]
     [--backward both|fast|default] [--in-process]
     python benchmarks/bench_train.py --graph-memory [--steps 200] [--gc off|on]
--graph-memory runs a course-style loop instead (MLPResNet on the shipped MNIST, DataLoader
batch 128, SGD 0.01, the default graph `loss.backward()`, the cyclic garbage collector off by
default) and prints the live Tensors (`needle.autograd.TENSOR_COUNTER`) and the peak RSS after
step 10 and after the last step: both stay flat when the graph frees itself by refcounting.
--threads sets PyTorch's threads; set OPENBLAS_NUM_THREADS/OMP_NUM_THREADS to the same value for
NumPy's BLAS (it reads them at import). On a loaded machine use 1: multi-threaded BLAS slows
down by 10x or more when the cores are oversubscribed.
The data folder comes from --data-dir, else $NEEDLE_FASHION_MNIST, else the Debian location
/usr/share/datasets/fashion-mnist; without it the MNIST test split shipped with needle stands in
(with a printed note). --samples N uses the first N training images (quick run).
"""
import argparse
import cProfile
import os
import pstats
import subprocess
import sys
import time

import numpy as np
import torch

from _common import print_table

import needle as ndl
import needle.nn as nn
from needle.models import MLPResNet

BATCH = 128


def load(data_dir, samples):
    try:
        paths = ndl.data.find_fashion_mnist(data_dir)
        X, y = ndl.data.parse_mnist(paths["train_images"], paths["train_labels"])
    except FileNotFoundError as e:
        X, y = ndl.data.parse_mnist(*ndl.data.shipped_mnist_test())
        print(f"note: {e}\nnote: using the MNIST test split shipped with needle instead "
              f"({len(X)} images)")
    return X[:samples], y[:samples]


def needle_epoch(model, opt, X, y, order, create_graph=False):
    loss_fn = nn.SoftmaxLoss()
    model.train()
    for s in range(0, len(order), BATCH):
        idx = order[s:s + BATCH]
        xb = ndl.Tensor(X[idx], requires_grad=False)
        yb = ndl.Tensor(y[idx], requires_grad=False)
        opt.reset_grad()
        loss = loss_fn(model(xb), yb)
        if create_graph:
            loss.backward()  # the default a course user writes
        else:
            loss.backward(create_graph=False)
        opt.step()


def torch_model(model):
    """The PyTorch twin of MLPResNet(784, 100) with needle's initial weights."""
    def lin(a, b, layer):
        m = torch.nn.Linear(a, b)
        m.weight.data = torch.tensor(layer.weight.numpy().T.copy())
        m.bias.data = torch.tensor(layer.bias.numpy().ravel().copy())
        return m

    class Block(torch.nn.Module):
        def __init__(self, seq):
            super().__init__()
            inner = seq.modules[0].fn.modules
            self.f = torch.nn.Sequential(lin(100, 50, inner[0]), torch.nn.BatchNorm1d(50),
                                         torch.nn.ReLU(), torch.nn.Dropout(0.1),
                                         lin(50, 100, inner[4]), torch.nn.BatchNorm1d(100))

        def forward(self, x):
            return torch.relu(self.f(x) + x)

    mods = model.modules
    return torch.nn.Sequential(lin(784, 100, mods[0]), torch.nn.ReLU(),
                               *[Block(b) for b in mods[2:-1]], lin(100, 10, mods[-1]))


def torch_epoch(model, opt, X, y, order):
    model.train()
    loss_fn = torch.nn.CrossEntropyLoss()
    for s in range(0, len(order), BATCH):
        idx = order[s:s + BATCH]
        xb, yb = torch.from_numpy(X[idx]), torch.from_numpy(y[idx].astype(np.int64))
        opt.zero_grad()
        loss_fn(model(xb), yb).backward()
        opt.step()


def graph_memory(steps: int, collector: bool) -> None:
    import gc
    import resource

    from needle import autograd

    if not collector:
        gc.disable()
    loader = ndl.data.DataLoader(ndl.data.MNISTDataset(*ndl.data.shipped_mnist_test()),
                                 batch_size=BATCH, shuffle=True)
    ndl.init.manual_seed(0)
    model = MLPResNet(784, 100)
    opt = ndl.optim.SGD(model.parameters(), lr=0.01)
    loss_fn = nn.SoftmaxLoss()
    counts, rss = [], []
    while len(counts) < steps:
        for xb, yb in loader:
            opt.reset_grad()
            loss_fn(model(xb.reshape((xb.shape[0], 784))), yb).backward()
            opt.step()
            counts.append(autograd.TENSOR_COUNTER)
            rss.append(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
            if len(counts) == steps:
                break
    k = min(9, steps - 1)
    print(f"graph-mode loop, {steps} steps, collector {'on' if collector else 'off'}: live "
          f"Tensors step {k + 1} {counts[k]}, step {steps} {counts[-1]} (max {max(counts)}); "
          f"peak RSS step {k + 1} {rss[k]:.1f} MiB, step {steps} {rss[-1]:.1f} MiB")


WARM_STEPS = 5  # untimed steps of a child before its timed epoch


def timed_epoch(spec: str, args, X, y, order) -> float:
    """Seconds of one epoch of `spec` ("torch", "needle-fast" or "needle-default") after
    WARM_STEPS untimed steps, in this process."""
    np.random.seed(0)
    model = MLPResNet(784, 100)
    warm = order[:WARM_STEPS * BATCH]
    if spec == "torch":
        tmodel = torch_model(model)
        topt = torch.optim.Adam(tmodel.parameters(), lr=1e-3)
        torch_epoch(tmodel, topt, X, y, warm)
        t0 = time.perf_counter()
        torch_epoch(tmodel, topt, X, y, order)
        return time.perf_counter() - t0
    opt = ndl.optim.Adam(model.parameters(), lr=1e-3)
    create_graph = spec == "needle-default"
    needle_epoch(model, opt, X, y, warm, create_graph)
    t0 = time.perf_counter()
    needle_epoch(model, opt, X, y, order, create_graph)
    return time.perf_counter() - t0


def child_epoch(spec: str, args) -> float:
    """`timed_epoch` of `spec` in a fresh process running this script."""
    cmd = [sys.executable, os.path.abspath(__file__), "--child", spec, "--samples",
           str(args.samples), "--threads", str(args.threads)]
    if args.data_dir:
        cmd += ["--data-dir", args.data_dir]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return float(out.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--graph-memory", action="store_true",
                    help="live Tensors and peak RSS of a graph-mode course loop")
    ap.add_argument("--steps", type=int, default=200, help="--graph-memory: steps")
    ap.add_argument("--gc", choices=("off", "on"), default="off",
                    help="--graph-memory: the cyclic garbage collector")
    ap.add_argument("--data-dir", default=os.environ.get("NEEDLE_FASHION_MNIST"))
    ap.add_argument("--samples", type=int, default=60000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--profile", action="store_true", help="cProfile one needle epoch")
    ap.add_argument("--backward", choices=("both", "fast", "default"), default="both",
                    help="needle's backward: backward(create_graph=False), loss.backward(), "
                         "or both")
    ap.add_argument("--in-process", action="store_true",
                    help="time both frameworks in this process (their threads interfere)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.graph_memory:
        graph_memory(args.steps, args.gc == "on")
        return
    torch.set_num_threads(args.threads)
    X, y = load(args.data_dir, args.samples)
    order = np.random.RandomState(0).permutation(len(X))
    if args.child:
        print(timed_epoch(args.child, args, X, y, order))
        return
    modes = {"both": (False, True), "fast": (False,), "default": (True,)}[args.backward]
    if not args.in_process:
        nt = {mode: [] for mode in modes}
        tt = []
        for _ in range(args.repeat):  # alternating, so machine noise hits both alike
            for mode in modes:
                nt[mode].append(child_epoch("needle-default" if mode else "needle-fast", args))
                tt.append(child_epoch("torch", args))
        report(nt, tt, len(X), args, "each epoch a fresh process")
        return
    np.random.seed(0)
    model = MLPResNet(784, 100)
    tmodel = torch_model(model)
    opt = ndl.optim.Adam(model.parameters(), lr=1e-3)
    topt = torch.optim.Adam(tmodel.parameters(), lr=1e-3)
    if args.profile:
        prof = cProfile.Profile()
        prof.runcall(needle_epoch, model, opt, X, y, order, modes[-1])
        pstats.Stats(prof).sort_stats("tottime").print_stats(18)
    nt = {mode: [] for mode in modes}
    tt = []
    for _ in range(args.repeat):  # interleaved, so machine noise hits both alike
        for mode in modes:
            t0 = time.perf_counter()
            needle_epoch(model, opt, X, y, order, create_graph=mode)
            nt[mode].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            torch_epoch(tmodel, topt, X, y, order)
            tt.append(time.perf_counter() - t0)
    report(nt, tt, len(X), args, "in one process")


def report(nt, tt, n, args, how):
    t_rate = n / np.median(tt)
    rows = []
    for mode, label, target in ((False, "training samples/s", ">= 0.8x"),
                                (True, "same, default loss.backward()", ">= 0.9x")):
        if mode in nt:
            n_rate = n / np.median(nt[mode])
            rows.append((label, n_rate, t_rate, "samples/s", f"{n_rate / t_rate:.2f}x", target))
    print_table(f"one epoch of MLPResNet(784, 100), {n} samples, batch {BATCH}, Adam "
                f"(median of {args.repeat}, {args.threads} threads, {how})", rows)
    if len(nt) == 2:
        ratio = np.median(nt[True]) / np.median(nt[False])
        print(f"needle time per epoch, default / fast backward: {ratio:.2f}x (target <= 1.25x)")


if __name__ == "__main__":
    main()
