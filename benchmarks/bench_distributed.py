"""Data-parallel throughput: MLPResNet training with 1 and 2 MPI processes of 1 thread each.

Same global batch in both runs (local batch = global / N). Prints samples/s, the speedup, the
bytes all-reduced per step and the seconds per step spent in communication, and (for scale)
PyTorch's single-thread throughput on the same model and batch.

    python benchmarks/bench_distributed.py [--global-batch 512 --hidden 512 --steps 30]

The parent starts the workers: `python bench_distributed.py --worker` (1 process) and
`mpiexec -n 2 python bench_distributed.py --worker`; rank 0 prints one JSON line.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import _common  # noqa: F401 (puts ./python on sys.path)
from _common import machine, print_table

import numpy as np

THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def _data(n, dim, classes):
    rng = np.random.default_rng(0)
    return (rng.standard_normal((n, dim)).astype(np.float32),
            rng.integers(0, classes, n).astype(np.int64))


def worker(args) -> None:
    import needle as ndl
    import needle.distributed as dist
    from needle import nn
    from needle.data import DataLoader, NDArrayDataset
    from needle.models import MLPResNet

    n = dist.init()
    dist.install_excepthook()
    if args.global_batch % n:
        raise ValueError(f"global batch {args.global_batch} not divisible by {n} processes")
    ndl.manual_seed(0)
    model = dist.DistributedDataParallel(
        MLPResNet(args.dim, args.hidden, args.blocks, 10, drop_prob=0.0))
    model.train()
    opt = ndl.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    X, y = _data(args.global_batch * 8, args.dim, 10)
    loader = DataLoader(NDArrayDataset(X, y), batch_size=args.global_batch // n,
                        sampler=dist.distributed_sampler(len(X), seed=0), drop_last=True)
    loss_fn = nn.SoftmaxLoss()
    step_times, comm_times, nbytes = [], [], 0
    done = 0
    while done < args.warmup + args.steps:
        for xb, yb in loader:
            dist.barrier()  # time each step from a common start
            dist.reset_comm_stats()
            t0 = time.perf_counter()
            loss = loss_fn(model(xb), yb)
            opt.reset_grad()
            loss.backward(create_graph=False)
            model.allreduce_gradients()
            opt.step()
            dt = time.perf_counter() - t0
            if done >= args.warmup:
                step_times.append(dt)
                comm_times.append(dist.comm_stats["seconds"])
                nbytes = dist.comm_stats["bytes"]
            done += 1
            if done == args.warmup + args.steps:
                break
    # the job is as fast as its slowest rank
    step = max(dist.allgather_object(statistics.median(step_times)))
    comm = max(dist.allgather_object(statistics.median(comm_times)))
    if dist.is_main_process():
        print(json.dumps({"world_size": n, "step_s": step, "comm_s": comm,
                          "bytes_per_step": nbytes, "params": model.num_parameters(),
                          "samples_per_s": args.global_batch / step}))


def allreduce_worker(args) -> None:
    """Time `allreduce_array` on a buffer of `--allreduce-bytes` alone (no training)."""
    import needle.distributed as dist

    dist.init()
    buf = np.ones(args.allreduce_bytes // 4, dtype=np.float32)
    times = []
    for i in range(args.warmup + args.steps):
        dist.barrier()
        t0 = time.perf_counter()
        dist.allreduce_array(buf)
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    t = max(dist.allgather_object(statistics.median(times)))
    if dist.is_main_process():
        print(json.dumps({"allreduce_s": t}))


def torch_reference(args) -> float:
    import torch
    torch.set_num_threads(1)
    torch.manual_seed(0)
    h, d = args.hidden, args.dim

    def block():
        return torch.nn.Sequential(torch.nn.Linear(h, h // 2), torch.nn.BatchNorm1d(h // 2),
                                   torch.nn.ReLU(), torch.nn.Linear(h // 2, h),
                                   torch.nn.BatchNorm1d(h))

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inp = torch.nn.Linear(d, h)
            self.blocks = torch.nn.ModuleList(block() for _ in range(args.blocks))
            self.out = torch.nn.Linear(h, 10)

        def forward(self, x):
            x = torch.relu(self.inp(x))
            for b in self.blocks:
                x = torch.relu(x + b(x))
            return self.out(x)

    net = Net()
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    X, y = _data(args.global_batch, d, 10)
    xt, yt = torch.tensor(X), torch.tensor(y)
    times = []
    for i in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(net(xt), yt)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    return args.global_batch / statistics.median(times)


def _launch(cmd, args, extra=()) -> dict:
    env = dict(os.environ, **{v: "1" for v in THREAD_VARS})
    env.pop("NEEDLE_DISTRIBUTED", None)
    flags = ["--worker", "--global-batch", str(args.global_batch), "--dim", str(args.dim),
             "--hidden", str(args.hidden), "--blocks", str(args.blocks),
             "--steps", str(args.steps), "--warmup", str(args.warmup)] + list(extra)
    out = subprocess.run(cmd + [sys.executable, os.path.abspath(__file__)] + flags, env=env,
                         capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd) or 'python'} worker failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--allreduce-bytes", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--global-batch", type=int, default=512)
    ap.add_argument("--dim", type=int, default=784)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--blocks", type=int, default=3)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=3, help="runs per configuration (median)")
    args = ap.parse_args()
    if args.worker:
        allreduce_worker(args) if args.allreduce_bytes else worker(args)
        return
    import needle.distributed as dist

    results = {}
    for n in (1, 2):
        cmd = [] if n == 1 else dist.mpiexec_command(n)
        runs = [_launch(cmd, args) for _ in range(args.repeat)]
        results[n] = sorted(runs, key=lambda r: r["samples_per_s"])[len(runs) // 2]
    # The model the docs use: a step of N processes costs the compute of the local batch plus
    # the all-reduce. Measured apart (one process at a time: no contention for the cores).
    half = argparse.Namespace(**{**vars(args), "global_batch": args.global_batch // 2})
    local = sorted(_launch([], half)["step_s"] for _ in range(args.repeat))[args.repeat // 2]
    ar = _launch(dist.mpiexec_command(2), args,
                 ["--allreduce-bytes", str(results[2]["bytes_per_step"])])["allreduce_s"]
    for v in THREAD_VARS:
        os.environ[v] = "1"
    torch_sps = torch_reference(args)
    one, two = results[1], results[2]
    speedup = two["samples_per_s"] / one["samples_per_s"]
    title = (f"MLPResNet(784, {args.hidden}, {args.blocks} blocks), global batch "
             f"{args.global_batch}, 1 thread per process")
    print_table(title, [
        ("1 process: samples/s (torch: 1 thread)", one["samples_per_s"], torch_sps, "samples/s",
         f"{one['samples_per_s'] / torch_sps:.2f}x", "reference"),
        ("2 processes: samples/s", two["samples_per_s"], torch_sps, "samples/s",
         f"{speedup:.2f}x", ">= 1.7x over 1 process"),
    ])
    print(f"\nparameters: {two['params']}; all-reduced per step: {two['bytes_per_step']} bytes "
          f"({two['bytes_per_step'] / 2**20:.2f} MiB)")
    print(f"step time: 1 process {one['step_s'] * 1e3:.1f} ms; 2 processes "
          f"{two['step_s'] * 1e3:.1f} ms, of which communication {two['comm_s'] * 1e3:.2f} ms "
          f"({100 * two['comm_s'] / two['step_s']:.1f}%)")
    print(f"speedup 2 vs 1 process: {speedup:.2f}x (target >= 1.7x); {machine()}; "
          f"load average {os.getloadavg()[0]:.1f}")
    model = one["step_s"] / (local + ar)
    print(f"model: 1-process step at local batch {args.global_batch // 2}: {local * 1e3:.1f} ms; "
          f"all-reduce of {results[2]['bytes_per_step']} bytes alone: {ar * 1e3:.2f} ms; "
          f"projected 2-process speedup on 2 free cores: {model:.2f}x")


if __name__ == "__main__":
    main()
