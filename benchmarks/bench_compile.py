"""needle.compile vs needle eager, PyTorch eager and torch.compile (CPU), side by side in one run.

Cases:
  chain        200 small elementwise ops (16 x 16 float32: * 1.01, + 0.1, tanh in turn) on
               x * w, summed, forward + backward; microseconds per op (per forward op, its
               backward included).
  mlp, cnn, lstm, transformer
               the four training steps of benchmarks/_workloads.py (bench_workloads.py's
               docstring describes them); items/s. needle eager is the fast backward
               (`loss.backward(create_graph=False)`), needle compiled is `needle.compile` over
               that step; torch.compile wraps the model (Inductor) and its compile time falls
               in the untimed warm-up steps.
  capture      time of the first three calls of the compiled MLPResNet step: the eager first
               call, the recording call and the first replay (torch.compile's compile time is
               printed next to it when it runs).
  memory       the compiled MLPResNet step (or `--memory-workload cnn|lstm|transformer`)
               with its memory pool (`reuse_buffers=True`, the default) against the same plan
               without it, in this process: ms per replay in alternating blocks, minor page
               faults per replay (getrusage), and the plan's pool and peak bytes. Needle only.

The runs alternate (needle eager, needle compiled, torch eager, torch.compile), `--repeat`
times; the table shows medians and the ratios compiled needle / each peer. Each timed
training run is a fresh child process (bench_workloads.py's `--child`; `--in-process` times
them here): in one process the two frameworks' idle BLAS/OpenMP threads slow each other down.

Run: python benchmarks/bench_compile.py [--cases chain,mlp,cnn,lstm,transformer,capture]
     [--steps N] [--repeat 3] [--threads 2] [--no-torch-compile]
     python benchmarks/bench_compile.py --cases memory [--memory-workload mlp] [--steps 200]
"""
import os
import sys

import bench_workloads as bw  # sets the BLAS thread variables from --threads first

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from _common import machine  # noqa: E402
from _workloads import WORKLOADS  # noqa: E402

import needle as ndl  # noqa: E402
from needle import ops  # noqa: E402

CHAIN_OPS = 200
# issue 13's targets: compiled needle over each peer (items/s; for the chain, torch eager's
# microseconds per op over needle compiled's)
TARGETS = {("mlp", "torch eager"): 1.5, ("mlp", "torch.compile"): 1.0,
           ("transformer", "torch eager"): 1.2, ("cnn", "torch eager"): 1.0,
           ("lstm", "torch eager"): 1.0, ("chain", "torch eager"): 2.0}


# ---- the 200-op chain -----------------------------------------------------------------------
def _chain(y, tanh, k):
    for i in range(k):
        y = y * 1.01 if i % 3 == 0 else y + 0.1 if i % 3 == 1 else tanh(y)
    return y


def chain_steps(k=CHAIN_OPS):
    """{mode: step()} for the chain, each doing forward + backward once."""
    rng = np.random.default_rng(0)
    x_np = rng.standard_normal((16, 16)).astype(np.float32)
    w = ndl.Tensor(rng.standard_normal((16, 16)).astype(np.float32))
    x = ndl.Tensor(x_np, requires_grad=False)

    def needle_step(x):
        loss = _chain(x * w, ops.tanh, k).sum()
        loss.backward(create_graph=False)
        return loss, w.grad

    compiled = ndl.compile(needle_step)
    tw = torch.tensor(w.numpy(), requires_grad=True)
    tx = torch.tensor(x_np)

    def torch_step(x):
        tw.grad = None
        loss = _chain(x * tw, torch.tanh, k).sum()
        loss.backward()
        return loss, tw.grad

    tcompiled = torch.compile(torch_step)
    return {"needle eager": lambda: needle_step(x), "needle compiled": lambda: compiled(x),
            "torch eager": lambda: torch_step(tx), "torch.compile": lambda: tcompiled(tx)}


def time_chain(step, reps=50, warmup=5):
    for _ in range(warmup):
        step()
    t0 = time.perf_counter()
    for _ in range(reps):
        step()
    return (time.perf_counter() - t0) / reps / CHAIN_OPS * 1e6  # us per op


# ---- the training steps -----------------------------------------------------------------------
def workload_runs(wl):
    return {"needle eager": ("needle", "fast"), "needle compiled": ("needle", "compiled"),
            "torch eager": ("torch", "eager"), "torch.compile": ("torch", "compiled")}


def capture_time(wl):
    """Seconds of (first eager call, recording call, first replay) of the compiled step."""
    step = bw.make_run(wl, "needle", "compiled")
    times = []
    for k in range(3):
        t0 = time.perf_counter()
        step(*wl.batch(k))
        times.append(time.perf_counter() - t0)
    return times


def memory_ab(wl, steps, repeat):
    """{reuse_buffers: (ms per replay medians, minor faults per replay medians, plan)}: the
    compiled step with and without the pool, `steps` replays per block, blocks alternating."""
    import resource

    runs = {}
    for reuse in (True, False):
        model = wl.needle_model()
        model.train()
        opt = wl.needle_optimizer(model)

        def train_step(x, y, model=model, opt=opt):
            opt.reset_grad()
            loss = wl.needle_loss(model, x, y)
            loss.backward(create_graph=False)
            opt.step()
            return loss

        step = ndl.compile(train_step, reuse_buffers=reuse, track=(model, opt))
        batches = [tuple(ndl.Tensor(a, requires_grad=False) for a in wl.batch(k))
                   for k in range(4)]
        for k in range(4):  # eager, recorded, replayed
            step(*batches[k % len(batches)]).numpy()
        runs[reuse] = (step, batches, [], [])
    for _ in range(repeat):
        for reuse, (step, batches, times, faults) in runs.items():
            f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            t0 = time.perf_counter()
            for k in range(steps):
                step(*batches[k % len(batches)]).numpy()
            times.append((time.perf_counter() - t0) / steps * 1e3)
            faults.append((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / steps)
    return {reuse: (statistics.median(t), statistics.median(f), step.plan)
            for reuse, (step, _, t, f) in runs.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", default="chain,mlp,cnn,lstm,transformer,capture")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per training run")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-torch-compile", action="store_true")
    ap.add_argument("--data-dir", default=os.environ.get("NEEDLE_FASHION_MNIST"))
    ap.add_argument("--memory-workload", default="mlp",
                    help="the training step of the memory case (mlp, cnn, lstm, transformer)")
    ap.add_argument("--in-process", action="store_true",
                    help="time the training steps in this process (by default each timed run "
                         "is a fresh child process, as in bench_workloads.py)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    peers = ["torch eager"] + ([] if args.no_torch_compile else ["torch.compile"])
    modes = ["needle eager", "needle compiled", *peers]
    results = {}
    if "chain" in cases:
        steps = chain_steps()
        per = {m: [] for m in modes}
        for r in range(args.repeat):
            for m in modes:
                per[m].append(time_chain(steps[m]))
                print(f"chain repeat {r + 1}/{args.repeat}: {m:16s} {per[m][-1]:8.2f} us/op",
                      flush=True)
        results["chain"] = ("us/op", {m: statistics.median(v) for m, v in per.items()})
    for name in ("mlp", "cnn", "lstm", "transformer"):
        if name not in cases:
            continue
        wl = WORKLOADS[name](args)
        steps = args.steps or wl.steps
        runs = workload_runs(wl)
        per = {m: [] for m in modes}
        for r in range(args.repeat):
            for m in modes:
                per[m].append(bw.timed_run(wl, *runs[m], steps, wl.warmup,
                                           isolate=not args.in_process))
                print(f"{name} repeat {r + 1}/{args.repeat}: {m:16s} {per[m][-1]:10.1f} "
                      f"{wl.unit}", flush=True)
        results[name] = (wl.unit, {m: statistics.median(v) for m, v in per.items()})
    if "capture" in cases:
        wl = WORKLOADS["mlp"](args)
        eager, record, replay = capture_time(wl)
        print(f"capture (MLPResNet step): first eager call {eager:.3f} s, recording call "
              f"{record:.3f} s, first replay {replay:.3f} s; recording + first replay "
              f"{record + replay:.3f} s (target < 2 s)")

    if "memory" in cases:
        wl = WORKLOADS[args.memory_workload](args)
        steps = args.steps or 200
        res = memory_ab(wl, steps, args.repeat)
        print(f"\nmemory pool, {args.memory_workload} step, medians of {args.repeat} "
              f"alternating blocks of {steps} replays ({machine()}, {args.threads} threads)")
        for reuse, (ms, faults, plan) in res.items():
            pooled = sum(len(s[5]) for s in plan.pool)
            mib = 2 ** 20
            print(f"  reuse_buffers={str(reuse):5s} {ms:8.3f} ms/step {faults:8.1f} minor "
                  f"faults/step  pool {plan.pool_bytes / mib:6.2f} MiB ({pooled} values in "
                  f"{len(plan.pool)} slots)  peak of intermediates "
                  f"{plan.peak_bytes / mib:6.2f} MiB (unpooled "
                  f"{plan.peak_bytes_unpooled / mib:6.2f})")
        print(f"  pooled / unpooled step time: {res[True][0] / res[False][0]:.3f}")

    print(f"\nneedle.compile, medians of {args.repeat} alternating runs ({machine()}, "
          f"{args.threads} threads)")
    print(f"{'case':12s} {'mode':16s} {'value':>12s} {'unit':>10s}  compiled needle / mode")
    for name, (unit, med) in results.items():
        for m in modes:
            a, b = med["needle compiled"], med[m]
            ratio = b / a if unit == "us/op" else a / b  # > 1: compiled needle is ahead
            target = TARGETS.get((name, m))
            print(f"{name:12s} {m:16s} {med[m]:12.2f} {unit:>10s}  {ratio:5.2f}x"
                  + (f"  (target >= {target}x)" if target else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
