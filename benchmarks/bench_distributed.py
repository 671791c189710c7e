"""Data-parallel throughput: MLPResNet training with 1 and 2 MPI processes of 1 thread each.

Same global batch in both runs (local batch = global / N). Prints samples/s and the speedup of
each 2-process variant side by side (`--variants`; see VARIANTS: the all-reduce after the
backward, overlapped with it, and the ZeRO-1 sharded optimizer step over MPI and over shared
memory), the bytes sent per step, and where a step's time goes in each run: forward, backward
(which starts the buckets' communication), the rest of it after the backward, the optimizer
step, and the wait at the per-step barrier (the other rank's lag). Beside them: one process at
the local batch, and two plain processes at the local batch at once without MPI, which is
what sharing the machine costs before any communication. The projected speedup is the
1-process step over (a 1-process step at the local batch + the all-reduce alone). For scale,
PyTorch's single-thread throughput on the same model and batch. `--interleaved` also runs
every configuration in one 2-process job, rotating them every few steps, so that a loaded
machine's changing load hits all of them alike (`--only-interleaved`: just that, in seconds).
`--demo` also times one epoch of the default `needle train` (MLPResNet(784, 100) on
mnist-small, batch 128) with 1 and 2 processes.

    python benchmarks/bench_distributed.py [--global-batch 512 --hidden 512 --steps 30]
    python benchmarks/bench_distributed.py --only-interleaved --steps 5 --rounds 10

The parent starts the workers: `python bench_distributed.py --worker` (1 process) and
`mpiexec -n 2 python bench_distributed.py --worker`; rank 0 prints one JSON line. Timings
need two otherwise idle cores: on a loaded machine they measure the scheduler (the
"2 plain procs at once" column shows how far from idle the machine was).
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
# the 2-process configurations compared side by side (`--variants` picks some)
VARIANTS = {
    "blocking": dict(overlap=False, transport="mpi", shard=False, wait="spin",
                     what="one MPI all-reduce after the backward"),
    "overlap": dict(overlap=True, transport="mpi", shard=False, wait="spin",
                    what="MPI all-reduce overlapped with the backward, 1 MiB buckets"),
    "overlap-yield": dict(overlap=True, transport="mpi", shard=False, wait="yield",
                          what="overlapped, waiting with naps instead of MPI's busy wait"),
    "shm": dict(overlap=True, transport="shm", shard=False, wait="spin",
                what="all-reduce in shared memory (DistributedDataParallel's default on one "
                     "machine; needle train's)"),
    "sharded-mpi": dict(overlap=True, transport="mpi", shard=True, wait="spin",
                        what="ZeRO-1: overlapped reduce-scatter, sharded optimizer step, "
                             "all-gather of the parameters"),
    "sharded-shm": dict(overlap=True, transport="shm", shard=True, wait="spin",
                        what="ZeRO-1 in shared memory: each rank sums its shard from the "
                             "others' buffers, one parameter copy per machine"),
}


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
    variant = VARIANTS[args.variant]
    model = dist.DistributedDataParallel(
        MLPResNet(args.dim, args.hidden, args.blocks, 10, drop_prob=0.0),
        overlap=variant["overlap"], wait=variant["wait"], transport=variant["transport"])
    model.train()
    opt = ndl.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    if variant["shard"]:
        opt = dist.ShardedOptimizer(opt, model, wait=variant["wait"],
                                    transport=variant["transport"])
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


def _nap_barrier(dist) -> None:
    """A barrier that waits in short sleeps: the idle rank of a 1-process phase must leave
    its core free, as in a real 1-process run (MPI's own barrier spins)."""
    request = dist.get_comm().Ibarrier()
    while not request.Test():
        time.sleep(200e-6)


def interleaved_worker(args) -> None:
    """One 2-process job that rotates every configuration `--rounds` times, `--steps` timed
    steps each: 1 process at the global and at the local batch (rank 1 sleeping), 2 plain
    processes at the local batch (no communication), and every variant. Configurations
    measured seconds apart share the machine's load, which a loaded machine's separate runs
    do not. Rank 0 prints one JSON line: the median step (slower rank) per configuration."""
    import needle as ndl
    import needle.distributed as dist
    from needle import nn
    from needle.models import MLPResNet

    if dist.init() != 2:
        raise RuntimeError("--interleaved runs under mpiexec -n 2")
    dist.install_excepthook()
    dist.set_threads_per_rank()
    names = [v for v in args.variants.split(",") if v]
    X, y = _data(args.global_batch, args.dim, 10)
    local = args.global_batch // 2
    lo = dist.rank() * local
    batches = {"full": (ndl.Tensor(X, requires_grad=False), ndl.Tensor(y)),
               "local": (ndl.Tensor(X[lo:lo + local], requires_grad=False),
                         ndl.Tensor(y[lo:lo + local]))}
    loss_fn = nn.SoftmaxLoss()

    def build(variant):
        ndl.manual_seed(0)
        net = MLPResNet(args.dim, args.hidden, args.blocks, 10, drop_prob=0.0)
        v = VARIANTS.get(variant)
        if v is None:  # a plain model: no communication at all
            model, opt = net, ndl.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
        else:
            model = dist.DistributedDataParallel(net, overlap=v["overlap"], wait=v["wait"],
                                                 transport=v["transport"])
            opt = ndl.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
            if v["shard"]:
                opt = dist.ShardedOptimizer(opt, model, transport=v["transport"])
        model.train()
        return model, opt

    configs = {"1 proc, batch full": ("solo", "full", build(None)),
               "1 proc, batch local": ("solo", "local", build(None)),
               "2 plain procs at once": ("pair", "local", build(None))}
    for name in names:
        configs[name] = ("ddp", "local", build(name))
    times = {k: [] for k in configs}
    for rnd in range(args.rounds + 1):  # round 0 warms up
        for key, (kind, batch, (model, opt)) in configs.items():
            xb, yb = batches[batch]
            for _ in range(args.steps):
                if kind == "solo":
                    _nap_barrier(dist)
                    if dist.rank() != 0:
                        continue
                else:
                    dist.barrier()
                t0 = time.perf_counter()
                opt.reset_grad()
                loss_fn(model(xb), yb).backward(create_graph=False)
                if kind == "ddp":
                    model.allreduce_gradients()
                opt.step()
                if rnd > 0:
                    times[key].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) if v else 0.0 for k, v in times.items()}
    both = dist.allgather_object(med)
    if dist.is_main_process():
        print(json.dumps({k: max(r[k] for r in both) for k in configs}))


def interleaved(args) -> None:
    import needle.distributed as dist

    env = dict(os.environ, **{v: "1" for v in THREAD_VARS})
    env.pop("NEEDLE_DISTRIBUTED", None)
    flags = ["--interleaved-worker", "--global-batch", str(args.global_batch), "--dim",
             str(args.dim), "--hidden", str(args.hidden), "--blocks", str(args.blocks),
             "--steps", str(args.steps), "--rounds", str(args.rounds),
             "--variants", args.variants]
    load = os.getloadavg()[0]
    out = subprocess.run(dist.mpiexec_command(2) + [sys.executable, os.path.abspath(__file__)]
                         + flags, env=env, capture_output=True, text=True, timeout=900)
    if out.returncode != 0:
        raise RuntimeError(f"interleaved job failed:\n{out.stderr}")
    med = json.loads(out.stdout.strip().splitlines()[-1])
    one = med["1 proc, batch full"]
    print(f"\ninterleaved in one 2-process job ({args.rounds} rounds of {args.steps} steps per "
          f"configuration; ms per step, the slower rank's median; load average {load:.1f} "
          f"before, {os.getloadavg()[0]:.1f} after; {machine()}):")
    for key, t in med.items():
        label = key.replace("full", str(args.global_batch)).replace(
            "local", str(args.global_batch // 2))
        speed = f"{one / t:.2f}x over 1 process" if key in VARIANTS or key.startswith(
            "2 plain") else ""
        print(f"  {label:28s} {1e3 * t:8.2f}  {speed}")
    share = med["2 plain procs at once"] / med["1 proc, batch local"]
    print(f"  sharing the machine costs {share:.2f}x (2 plain processes at the local batch at "
          f"once against one alone): the ceiling without communication is "
          f"{one / med['2 plain procs at once']:.2f}x")


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
             "--variant", args.variant] + list(extra)
    out = subprocess.run(cmd + [sys.executable, os.path.abspath(__file__)] + flags, env=env,
                         capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd) or 'python'} worker failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _launch_pair(args) -> dict:
    """Two plain (non-MPI) workers started at once; the slower one's result."""
    env = dict(os.environ, **{v: "1" for v in THREAD_VARS}, NEEDLE_DISTRIBUTED="0")
    flags = ["--worker", "--global-batch", str(args.global_batch), "--dim", str(args.dim),
             "--hidden", str(args.hidden), "--blocks", str(args.blocks),
             "--steps", str(args.steps), "--warmup", str(args.warmup)]
    procs = [subprocess.Popen([sys.executable, os.path.abspath(__file__)] + flags, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outs):
        if p.returncode != 0:
            raise RuntimeError(f"paired worker failed:\n{err}")
    runs = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
    return max(runs, key=lambda r: r["step_s"])


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
    ap.add_argument("--interleaved-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--interleaved", action="store_true",
                    help="also measure every configuration in one 2-process job, rotating "
                         "them every --steps steps (a loaded machine's load then hits all "
                         "alike); --only-interleaved skips the separate runs")
    ap.add_argument("--only-interleaved", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--rounds", type=int, default=10,
                    help="rotations of the interleaved job")
    ap.add_argument("--variant", default="overlap", choices=sorted(VARIANTS),
                    help=argparse.SUPPRESS)
    ap.add_argument("--variants", default="blocking,overlap,shm,sharded-mpi,sharded-shm",
                    help="2-process configurations to compare, comma-separated: "
                         + ", ".join(f"{k} ({v['what']})" for k, v in VARIANTS.items()))
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
    if args.interleaved_worker:
        interleaved_worker(args)
        return
    import needle.distributed as dist

    if args.only_interleaved:
        interleaved(args)
        return

    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown or not names:
        ap.error(f"--variants: unknown {unknown}; choose from {', '.join(VARIANTS)}")
    half = argparse.Namespace(**{**vars(args), "global_batch": args.global_batch // 2})
    mpiexec = dist.mpiexec_command(2)
    # interleaved, so that a change in the machine's load hits every configuration alike;
    # "pair": two plain processes at the local batch at once, no MPI: what sharing the
    # machine alone costs
    results = {k: [] for k in ["1", "local", "pair"] + names}
    for _ in range(args.repeat):
        results["1"].append(_launch([], args))
        results["local"].append(_launch([], half))
        results["pair"].append(_launch_pair(half))
        for name in names:
            run_args = argparse.Namespace(**{**vars(args), "variant": name})
            results[name].append(_launch(mpiexec, run_args))
    med = {k: sorted(v, key=lambda r: r["samples_per_s"])[len(v) // 2]
           for k, v in results.items()}
    one, local, pair = med["1"], med["local"], med["pair"]
    # The model the docs use: a step of N processes costs the compute of the local batch plus
    # the all-reduce. Measured apart (one process at a time: no contention for the cores).
    # the all-reduce's payload (a sharded variant hands a reduce-scatter and an all-gather of
    # the same size to MPI, the parts of an all-reduce; shared memory hands it nothing)
    sent = max((med[n]["bytes_per_step"] for n in names if not VARIANTS[n]["shard"]
                and VARIANTS[n]["transport"] == "mpi"),
               default=0) or 4 * med[names[0]]["params"]
    ar = _launch(mpiexec, args, ["--allreduce-bytes", str(sent)])["allreduce_s"]
    for v in THREAD_VARS:
        os.environ[v] = "1"
    torch_sps = torch_reference(args)
    title = (f"MLPResNet(784, {args.hidden}, {args.blocks} blocks), global batch "
             f"{args.global_batch}, 1 thread per process")
    rows = [("1 process: samples/s (torch: 1 thread)", one["samples_per_s"], torch_sps,
             "samples/s", f"{one['samples_per_s'] / torch_sps:.2f}x", "reference")]
    for name in names:
        rows.append((f"2 processes, {name}", med[name]["samples_per_s"], torch_sps,
                     "samples/s", f"{med[name]['samples_per_s'] / one['samples_per_s']:.2f}x",
                     ">= 1.8x over 1 process"))
    print_table(title, rows)
    for name in names:
        print(f"  {name}: {VARIANTS[name]['what']}")
    first = med[names[0]]
    print(f"\nparameters: {first['params']}; bytes handed to MPI collectives per step "
          "(a reduce-scatter plus an all-gather move what one all-reduce does): " + ", ".join(
        f"{n} {med[n]['bytes_per_step'] / 2**20:.2f} MiB" for n in names)
        + f"; threads per process: {first['threads']}")
    print("\nwhere a step's time goes (ms; the slower rank's median per phase):")
    cols = [("1 proc, batch " + str(args.global_batch), one),
            ("1 proc, batch " + str(args.global_batch // 2), local),
            ("2 plain procs at once", pair)] + [("2 procs, " + n, med[n]) for n in names]
    width = max(14, max(len(c) for c, _ in cols) + 2)
    print(f"{'phase':26s}" + "".join(f"{name:>{width}s}" for name, _ in cols))
    for k in PHASES + ("step",):
        vals = [r["step_s"] if k == "step" else r["phases"][k] for _, r in cols]
        print(f"{k:26s}" + "".join(f"{1e3 * v:{width}.2f}" for v in vals))
    print("time in MPI calls per step: " + ", ".join(
        f"{n} {med[n]['comm_s'] * 1e3:.2f} ms" for n in names))
    share = pair["step_s"] / local["step_s"]
    print(f"two plain processes at batch {args.global_batch // 2} at once, no MPI: "
          f"{pair['step_s'] * 1e3:.1f} ms per step against {local['step_s'] * 1e3:.1f} ms "
          f"alone ({share:.2f}x: what sharing the machine costs, before any communication)")
    model = one["step_s"] / (local["step_s"] + ar)
    ceiling = one["step_s"] / (pair["step_s"] + ar)
    print(f"model: 1-process step at local batch {args.global_batch // 2}: "
          f"{local['step_s'] * 1e3:.1f} ms; all-reduce of {sent} bytes "
          f"alone: {ar * 1e3:.2f} ms; projected 2-process speedup on 2 free cores: "
          f"{model:.2f}x; with the measured sharing cost: {ceiling:.2f}x")
    best = max(names, key=lambda n: med[n]["samples_per_s"])
    print("speedup 2 vs 1 process: " + ", ".join(
        f"{n} {med[n]['samples_per_s'] / one['samples_per_s']:.2f}x" for n in names)
        + f" (best: {best}; target >= 1.8x); {machine()}; load average "
        f"{os.getloadavg()[0]:.1f}")
    if args.interleaved:
        interleaved(args)
    if args.demo:
        t1 = statistics.median(_demo_epoch(1) for _ in range(args.repeat))
        t2 = statistics.median(_demo_epoch(2) for _ in range(args.repeat))
        verdict = "one process is faster" if t1 < t2 else "two processes are faster"
        print(f"default demo (needle train, MLPResNet(784, 100), mnist-small, batch 128), "
              f"epoch 1: 1 process {t1:.2f} s, 2 processes {t2:.2f} s ({t1 / t2:.2f}x): "
              f"{verdict}")


if __name__ == "__main__":
    main()
