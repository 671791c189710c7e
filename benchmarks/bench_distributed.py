"""Data-parallel throughput: MLPResNet training with 1 and 2 MPI processes of 1 thread each.

Same global batch in both runs (local batch = global / N). Prints samples/s, the speedup with
the all-reduce overlapped with the backward (buckets, the default) and without, the bytes
all-reduced per step, and where a step's time goes in each run: forward, backward (which
starts the buckets' all-reduce), the rest of the all-reduce after the backward, the
optimizer step, and the wait at the per-step barrier (the other rank's lag). The projected
speedup is the 1-process step over (a 1-process step at the local batch + the all-reduce
alone); the phase table shows which phase grows when two processes share the machine. For
scale, PyTorch's single-thread throughput on the same model and batch. `--demo` also times
one epoch of the default `needle train` (MLPResNet(784, 100) on mnist-small, batch 128) with
1 and 2 processes.

    python benchmarks/bench_distributed.py [--global-batch 512 --hidden 512 --steps 30]

The parent starts the workers: `python bench_distributed.py --worker` (1 process) and
`mpiexec -n 2 python bench_distributed.py --worker`; rank 0 prints one JSON line. Timings
need two otherwise idle cores: on a loaded machine they measure the scheduler.
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
PHASES = ("forward", "backward", "allreduce after backward", "optimizer", "barrier wait")


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
    threads = dist.set_threads_per_rank()
    if args.global_batch % n:
        raise ValueError(f"global batch {args.global_batch} not divisible by {n} processes")
    ndl.manual_seed(0)
    model = dist.DistributedDataParallel(
        MLPResNet(args.dim, args.hidden, args.blocks, 10, drop_prob=0.0),
        overlap=bool(args.overlap))
    model.train()
    opt = ndl.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    X, y = _data(args.global_batch * 8, args.dim, 10)
    loader = DataLoader(NDArrayDataset(X, y), batch_size=args.global_batch // n,
                        sampler=dist.distributed_sampler(len(X), seed=0), drop_last=True)
    loss_fn = nn.SoftmaxLoss()
    phases = {k: [] for k in PHASES}
    step_times, comm_times, nbytes = [], [], 0
    done = 0
    while done < args.warmup + args.steps:
        for xb, yb in loader:
            t_wait = time.perf_counter()
            dist.barrier()  # time each step from a common start
            dist.reset_comm_stats()
            t0 = time.perf_counter()
            opt.reset_grad()
            loss = loss_fn(model(xb), yb)
            t1 = time.perf_counter()
            loss.backward(create_graph=False)
            t2 = time.perf_counter()
            model.allreduce_gradients()
            t3 = time.perf_counter()
            opt.step()
            t4 = time.perf_counter()
            if done >= args.warmup:
                step_times.append(t4 - t0)
                comm_times.append(dist.comm_stats["seconds"])
                nbytes = dist.comm_stats["bytes"]
                for k, v in zip(PHASES, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t0 - t_wait)):
                    phases[k].append(v)
            done += 1
            if done == args.warmup + args.steps:
                break
    # the job is as fast as its slowest rank
    step = max(dist.allgather_object(statistics.median(step_times)))
    comm = max(dist.allgather_object(statistics.median(comm_times)))
    per_rank = dist.allgather_object({k: statistics.median(v) for k, v in phases.items()})
    if dist.is_main_process():
        print(json.dumps({"world_size": n, "step_s": step, "comm_s": comm,
                          "bytes_per_step": nbytes, "params": model.num_parameters(),
                          "samples_per_s": args.global_batch / step, "threads": threads,
                          "phases": {k: max(r[k] for r in per_rank) for k in PHASES}}))


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
             "--steps", str(args.steps), "--warmup", str(args.warmup),
             "--overlap", str(args.overlap)] + list(extra)
    out = subprocess.run(cmd + [sys.executable, os.path.abspath(__file__)] + flags, env=env,
                         capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd) or 'python'} worker failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _demo_epoch(n: int) -> float:
    """Seconds of epoch 1 of the default `needle train` with `n` processes (from its
    metrics.jsonl: training plus validation, without start-up)."""
    import tempfile

    import needle.distributed as dist

    with tempfile.TemporaryDirectory() as out:
        env = dict(os.environ, **{v: "1" for v in THREAD_VARS},
                   PYTHONPATH=os.path.join(os.path.dirname(os.path.dirname(
                       os.path.abspath(__file__))), "python"))
        env.pop("NEEDLE_DISTRIBUTED", None)
        cmd = ([] if n == 1 else dist.mpiexec_command(n)) + [
            sys.executable, "-m", "needle", "train", "--epochs", "1", "--no-progress",
            "--out", out]
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        if r.returncode != 0:
            raise RuntimeError(f"needle train with {n} processes failed:\n{r.stderr}")
        with open(os.path.join(out, "metrics.jsonl")) as f:
            return float(json.loads(f.readline())["seconds"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--allreduce-bytes", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--overlap", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--global-batch", type=int, default=512)
    ap.add_argument("--dim", type=int, default=784)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--blocks", type=int, default=3)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=3, help="runs per configuration (median)")
    ap.add_argument("--demo", action="store_true",
                    help="also time an epoch of the default `needle train`, 1 vs 2 processes")
    args = ap.parse_args()
    if args.worker:
        allreduce_worker(args) if args.allreduce_bytes else worker(args)
        return
    import needle.distributed as dist

    def median_run(cmd, run_args):
        runs = [_launch(cmd, run_args) for _ in range(args.repeat)]
        return sorted(runs, key=lambda r: r["samples_per_s"])[len(runs) // 2]

    no_overlap = argparse.Namespace(**{**vars(args), "overlap": 0})
    half = argparse.Namespace(**{**vars(args), "global_batch": args.global_batch // 2})
    # interleaved, so that a change in the machine's load hits every configuration alike
    results = {"1": [], "2": [], "2 no overlap": [], "local": []}
    for _ in range(args.repeat):
        results["1"].append(_launch([], args))
        results["2"].append(_launch(dist.mpiexec_command(2), args))
        results["2 no overlap"].append(_launch(dist.mpiexec_command(2), no_overlap))
        results["local"].append(_launch([], half))
    med = {k: sorted(v, key=lambda r: r["samples_per_s"])[len(v) // 2]
           for k, v in results.items()}
    one, two, plain, local = med["1"], med["2"], med["2 no overlap"], med["local"]
    # The model the docs use: a step of N processes costs the compute of the local batch plus
    # the all-reduce. Measured apart (one process at a time: no contention for the cores).
    ar = _launch(dist.mpiexec_command(2), args,
                 ["--allreduce-bytes", str(two["bytes_per_step"])])["allreduce_s"]
    for v in THREAD_VARS:
        os.environ[v] = "1"
    torch_sps = torch_reference(args)
    speedup = two["samples_per_s"] / one["samples_per_s"]
    speedup_plain = plain["samples_per_s"] / one["samples_per_s"]
    title = (f"MLPResNet(784, {args.hidden}, {args.blocks} blocks), global batch "
             f"{args.global_batch}, 1 thread per process")
    print_table(title, [
        ("1 process: samples/s (torch: 1 thread)", one["samples_per_s"], torch_sps, "samples/s",
         f"{one['samples_per_s'] / torch_sps:.2f}x", "reference"),
        ("2 processes, overlapped all-reduce", two["samples_per_s"], torch_sps, "samples/s",
         f"{speedup:.2f}x", ">= 1.8x over 1 process"),
        ("2 processes, all-reduce after backward", plain["samples_per_s"], torch_sps,
         "samples/s", f"{speedup_plain:.2f}x", "over 1 process"),
    ])
    print(f"\nparameters: {two['params']}; all-reduced per step: {two['bytes_per_step']} bytes "
          f"({two['bytes_per_step'] / 2**20:.2f} MiB); threads per process: {two['threads']}")
    print("\nwhere a step's time goes (ms; the slower rank's median per phase):")
    cols = (("1 proc, batch " + str(args.global_batch), one),
            ("1 proc, batch " + str(args.global_batch // 2), local),
            ("2 procs, overlap", two), ("2 procs, no overlap", plain))
    print(f"{'phase':28s}" + "".join(f"{name:>24s}" for name, _ in cols))
    for k in PHASES + ("step",):
        vals = [r["step_s"] if k == "step" else r["phases"][k] for _, r in cols]
        print(f"{k:28s}" + "".join(f"{1e3 * v:24.2f}" for v in vals))
    print(f"time in MPI calls per step: overlap {two['comm_s'] * 1e3:.2f} ms, no overlap "
          f"{plain['comm_s'] * 1e3:.2f} ms ({100 * plain['comm_s'] / plain['step_s']:.1f}% of "
          f"its step)")
    compute_two = sum(two["phases"][k] for k in ("forward", "backward", "optimizer"))
    compute_local = sum(local["phases"][k] for k in ("forward", "backward", "optimizer"))
    print(f"forward + backward + optimizer at local batch {args.global_batch // 2}: "
          f"{compute_local * 1e3:.1f} ms alone, {compute_two * 1e3:.1f} ms with 2 processes "
          f"sharing the machine ({compute_two / compute_local:.2f}x: contention for cores, "
          f"caches and memory bandwidth)")
    model = one["step_s"] / (local["step_s"] + ar)
    print(f"model: 1-process step at local batch {args.global_batch // 2}: "
          f"{local['step_s'] * 1e3:.1f} ms; all-reduce of {two['bytes_per_step']} bytes alone: "
          f"{ar * 1e3:.2f} ms; projected 2-process speedup on 2 free cores: {model:.2f}x")
    print(f"speedup 2 vs 1 process: {speedup:.2f}x overlapped, {speedup_plain:.2f}x not "
          f"(target >= 1.8x); {machine()}; load average {os.getloadavg()[0]:.1f}")
    if args.demo:
        t1 = statistics.median(_demo_epoch(1) for _ in range(args.repeat))
        t2 = statistics.median(_demo_epoch(2) for _ in range(args.repeat))
        verdict = "one process is faster" if t1 < t2 else "two processes are faster"
        print(f"default demo (needle train, MLPResNet(784, 100), mnist-small, batch 128), "
              f"epoch 1: 1 process {t1:.2f} s, 2 processes {t2:.2f} s ({t1 / t2:.2f}x): "
              f"{verdict}")


if __name__ == "__main__":
    main()
