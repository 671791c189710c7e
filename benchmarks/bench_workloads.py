"""needle vs PyTorch (CPU) on the four training workloads of issue 12, side by side in one run.

Workloads (`--workload mlp|cnn|lstm|transformer|all`):
  mlp          MLPResNet(784, 100, 3 blocks, BatchNorm1d, dropout 0.1) (`needle.models`) on
               Fashion-MNIST, batch 128, Adam lr 1e-3 weight decay 1e-3; by default one epoch of
               468 steps, the first 5 untimed; samples/s.
  cnn          ConvBN(1->16) -> ConvBN(16->32, s2) -> x + ConvBN(32->32)(ConvBN(32->32)(x)) ->
               ConvBN(32->64, s2) -> mean over H, W -> Linear(64, 10), ConvBN = 3x3 conv with
               bias and padding 1, BatchNorm2d, ReLU; Fashion-MNIST, batch 64, SGD lr 0.05
               momentum 0.9; samples/s. Written with `nn.Conv` (NCHW) as a course user would.
  lstm         Embedding(10000, 256) -> 2-layer LSTM(256) -> Linear(256, 10000)
               (`needle.models.LanguageModel`), T=35, B=32, zero initial state every step, SGD
               lr 1.0; tokens/s. Token ids are random (uniform over the vocabulary).
  transformer  token + learned position embeddings (d=256, T=128, B=16, vocabulary 10000), 2
               pre-LayerNorm blocks, 4 heads as matmul -> softmax -> matmul with an additive
               causal mask (no fused attention op), MLP 256->1024->256 with ReLU, final LayerNorm,
               Linear(256, 10000); Adam lr 1e-3; tokens/s; random token ids. Written from
               nn.Linear, nn.LayerNorm1d, nn.Embedding, ops.softmax, matmul, reshape and
               permute; the PyTorch twin is written the same way (not nn.MultiheadAttention).
The models, their PyTorch twins, data and optimizers are in benchmarks/_workloads.py.

Every timed step makes Tensors from the NumPy batch, zeroes the gradients, runs forward, the
loss, `loss.backward()`, the optimizer step, and reads the loss back as a Python float. Both
frameworks start from the same initial weights (needle's, copied into torch; needle's Linear
weights are (in, out)) and see the same batches. Each run builds fresh models from seed 0.

needle modes: `default` (`loss.backward()`, the graph-building course default), `fast`
(`loss.backward(create_graph=False)`) and `compiled` (`needle.compile` over the fast step; it
is skipped with a note while `needle.compile` does not exist). PyTorch: eager, and
`torch.compile(model)` with `--torch-compile`. The runs alternate (needle default, torch,
needle fast, torch, [needle compiled, torch], [torch compiled]), `--repeat` times; the table
shows medians and the ratios needle/torch for each mode and needle's default/fast time.
Each timed run is a fresh child process of this script (`--in-process` times them all here):
measured on 2 cores, timing both frameworks in one process slowed both by 2-5x (the idle
worker threads of PyTorch's OpenMP pool and of NumPy's OpenBLAS compete for the cores).

Before timing, each workload checks that the first step's loss agrees between the frameworks
(within 1e-4 relative; dropout is set to 0 for that check only, since the two frameworks draw
different masks). A mismatch is printed and makes the exit status 1.

Notes: SGD momentum follows each framework's own documented rule, with torch's `dampening`
set to the momentum so both compute u = m u + (1 - m) g (needle's course rule; torch starts
its buffer at g on the first step instead of (1 - m) g). Fashion-MNIST comes from --data-dir,
$NEEDLE_FASHION_MNIST or /usr/share/datasets/fashion-mnist; without it the MNIST test split
shipped with needle stands in (printed as a note; same shapes and cost).

Run: python benchmarks/bench_workloads.py [--workload all] [--steps N] [--repeat 3]
     [--threads 2] [--modes default,fast,compiled] [--torch-compile] [--json PATH]
--threads sets torch's threads and NumPy's BLAS threads (OPENBLAS/OMP/MKL_NUM_THREADS are set
before NumPy is imported).
"""
import os
import sys


def _threads_from_argv(argv) -> int:
    for i, arg in enumerate(argv):
        if arg == "--threads" and i + 1 < len(argv):
            return int(argv[i + 1])
        if arg.startswith("--threads="):
            return int(arg.split("=", 1)[1])
    return 2


THREADS = _threads_from_argv(sys.argv[1:])
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = str(THREADS)  # NumPy's BLAS reads these at import

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

from _common import machine, print_table  # noqa: E402
from _workloads import WORKLOADS, Workload  # noqa: E402

import needle as ndl  # noqa: E402

CHECK_RTOL = 1e-4
NEEDLE_MODES = ("default", "fast", "compiled")
# issue 12's targets: needle default backward() vs torch eager, and default / fast time
TARGETS = {"mlp": 0.9, "cnn": 0.8, "lstm": 0.8, "transformer": 0.9}
DEFAULT_OVER_FAST = 1.25


# ---- steps and runs ---------------------------------------------------------------------------
def needle_stepper(wl: Workload, model, opt, mode: str):
    """A function (x_np, y_np) -> loss float doing one whole needle training step."""
    def default(x_np, y_np):
        x = ndl.Tensor(x_np, requires_grad=False)
        y = ndl.Tensor(y_np, requires_grad=False)
        opt.reset_grad()
        loss = wl.needle_loss(model, x, y)
        loss.backward()  # what a course user writes: builds the gradient graph
        opt.step()
        return loss.item()

    def fast(x_np, y_np):
        x = ndl.Tensor(x_np, requires_grad=False)
        y = ndl.Tensor(y_np, requires_grad=False)
        opt.reset_grad()
        loss = wl.needle_loss(model, x, y)
        loss.backward(create_graph=False)
        opt.step()
        return loss.item()

    if mode == "default":
        return default
    if mode == "fast":
        return fast

    # mode "compiled": the hook for needle.compile (a later issue). Assumed interface: it wraps
    # a function of Tensors doing one step and returns a callable with the same signature.
    def train_step(x, y):
        opt.reset_grad()
        loss = wl.needle_loss(model, x, y)
        loss.backward(create_graph=False)
        opt.step()
        return loss

    compiled_step = ndl.compile(train_step)

    def compiled(x_np, y_np):
        x = ndl.Tensor(x_np, requires_grad=False)
        y = ndl.Tensor(y_np, requires_grad=False)
        return compiled_step(x, y).item()

    return compiled


def torch_stepper(wl: Workload, model, opt):
    def step(x_np, y_np):
        x, y = wl.torch_inputs(x_np, y_np)
        opt.zero_grad()
        loss = wl.torch_loss(model, x, y)
        loss.backward()
        opt.step()
        return loss.item()
    return step


def make_run(wl: Workload, framework: str, mode: str):
    """A fresh model pair from seed 0 and the step function of (framework, mode)."""
    model = wl.needle_model()
    model.train()
    if framework == "needle":
        return needle_stepper(wl, model, wl.needle_optimizer(model), mode)
    tmodel = wl.torch_model(model)
    tmodel.train()
    if mode == "compiled":
        tmodel = torch.compile(tmodel)
    return torch_stepper(wl, tmodel, wl.torch_optimizer(tmodel))


def timed_run(wl: Workload, framework: str, mode: str, steps: int, warmup: int,
              isolate: bool = False) -> float:
    """Throughput (items/s) of `steps` timed steps after `warmup` untimed ones; with `isolate`,
    in a fresh Python process that loads only this run's framework state."""
    if isolate:
        return _isolated_run(wl, framework, mode, steps, warmup)
    step = make_run(wl, framework, mode)
    for k in range(warmup):
        step(*wl.batch(k))
    t0 = time.perf_counter()
    for k in range(warmup, warmup + steps):
        step(*wl.batch(k))
    return steps * wl.items / (time.perf_counter() - t0)


def _isolated_run(wl: Workload, framework: str, mode: str, steps: int, warmup: int) -> float:
    """`timed_run` in a child process (`--child`); the child prints `rate <items/s>`."""
    cmd = [sys.executable, os.path.abspath(__file__), "--child",
           f"{wl.name},{framework},{mode},{steps},{warmup}", "--threads", str(THREADS)]
    if wl.args.data_dir:
        cmd += ["--data-dir", wl.args.data_dir]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    rates = [line.split()[1] for line in proc.stdout.splitlines() if line.startswith("rate ")]
    if proc.returncode != 0 or not rates:
        raise RuntimeError(f"{wl.name} {framework} {mode}: the child process failed "
                           f"(exit {proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return float(rates[-1])


def _child(spec: str, args) -> int:
    name, framework, mode, steps, warmup = spec.split(",")
    rate = timed_run(WORKLOADS[name](args), framework, mode, int(steps), int(warmup))
    print(f"rate {rate!r}", flush=True)
    return 0


def check_first_loss(wl: Workload) -> dict:
    """The first step's loss in both frameworks from the same weights and batch (no dropout)."""
    model = wl.needle_model(check=True)
    tmodel = wl.torch_model(model)
    model.train()
    tmodel.train()
    x_np, y_np = wl.batch(0)
    a = wl.needle_loss(model, ndl.Tensor(x_np, requires_grad=False),
                       ndl.Tensor(y_np, requires_grad=False)).item()
    with torch.no_grad():
        b = wl.torch_loss(tmodel, *wl.torch_inputs(x_np, y_np)).item()
    rel = abs(a - b) / max(abs(b), 1e-12)
    ok = rel <= CHECK_RTOL
    print(f"check {wl.name}: first-step loss needle {a:.7f} torch {b:.7f} "
          f"(relative difference {rel:.2e}) {'ok' if ok else 'MISMATCH'}")
    return {"needle": a, "torch": b, "relative_difference": rel, "ok": ok}


def schedule(needle_modes, torch_compile: bool):
    """One repeat's runs, alternating frameworks: needle m1, torch, needle m2, torch, ..."""
    runs = []
    for mode in needle_modes:
        runs += [("needle", mode), ("torch", "eager")]
    if torch_compile:
        runs.append(("torch", "compiled"))
    return runs


def bench_workload(wl: Workload, args) -> dict:
    steps = args.steps or wl.steps
    warmup = wl.warmup if args.warmup is None else args.warmup
    check = check_first_loss(wl)
    modes = [m for m in args.modes if m != "compiled" or hasattr(ndl, "compile")]
    if "compiled" in args.modes and "compiled" not in modes:
        print(f"{wl.name}: needle.compile does not exist yet; the compiled mode is skipped")
    runs = schedule(modes, args.torch_compile)
    rates = {f"{fw} {mode}": [] for fw, mode in runs}
    for r in range(args.repeat):
        for fw, mode in runs:
            key = f"{fw} {mode}"
            if key not in rates:
                continue  # dropped after an error in an earlier repeat
            try:
                rate = timed_run(wl, fw, mode, steps, warmup, isolate=not args.in_process)
            except Exception as e:  # a compiler may be missing or fail: skip it, say why
                if mode != "compiled":
                    raise
                print(f"{wl.name}: {key} failed ({type(e).__name__}: {e}); skipped")
                del rates[key]
                continue
            rates[key].append(rate)
            print(f"{wl.name} repeat {r + 1}/{args.repeat}: {key:16s} {rate:10.1f} {wl.unit}",
                  flush=True)
    medians = {k: statistics.median(v) for k, v in rates.items() if v}
    return {"unit": wl.unit, "items_per_step": wl.items, "steps": steps, "warmup": warmup,
            "check": check, "rates": rates, "median": medians}


def rows_for(name: str, res: dict):
    """Table rows: needle/torch for each needle mode against each torch mode measured."""
    med, unit, rows = res["median"], res["unit"], []
    for tmode, tlabel in (("eager", "torch eager"), ("compiled", "torch.compile")):
        if f"torch {tmode}" not in med:
            continue
        for nmode in NEEDLE_MODES:
            if f"needle {nmode}" not in med:
                continue
            a, b = med[f"needle {nmode}"], med[f"torch {tmode}"]
            target = f">= {TARGETS[name]}x" if (nmode, tmode) == ("default", "eager") else ""
            rows.append((f"{name}: needle {nmode} / {tlabel}", a, b, unit, f"{a / b:.2f}x",
                         target))
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workload", choices=[*WORKLOADS, "all"], default="all")
    ap.add_argument("--steps", type=int, default=None,
                    help="timed steps per run (default per workload: mlp 463, i.e. one epoch "
                         "of 468 with the 5 warm-up steps; cnn 40; lstm 12; transformer 10)")
    ap.add_argument("--warmup", type=int, default=None,
                    help="untimed steps per run (default: mlp 5, cnn 3, lstm 2, transformer 2)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--modes", default="default,fast,compiled",
                    help="needle modes, comma-separated, from " + ",".join(NEEDLE_MODES))
    ap.add_argument("--torch-compile", action="store_true",
                    help="also time torch.compile(model)")
    ap.add_argument("--data-dir", default=os.environ.get("NEEDLE_FASHION_MNIST"))
    ap.add_argument("--json", metavar="PATH", help="write the numbers to PATH")
    ap.add_argument("--in-process", action="store_true",
                    help="time every run in this process (by default each timed run is a fresh "
                         "child process: in one process the two frameworks' idle BLAS/OpenMP "
                         "worker threads slow each other down)")
    ap.add_argument("--child", metavar="SPEC", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        torch.set_num_threads(args.threads)
        return _child(args.child, args)
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in args.modes if m not in NEEDLE_MODES]
    if bad:
        ap.error(f"--modes: unknown mode(s) {bad}; choose from {list(NEEDLE_MODES)}")
    torch.set_num_threads(args.threads)
    names = list(WORKLOADS) if args.workload == "all" else [args.workload]

    results = {}
    for name in names:
        results[name] = bench_workload(WORKLOADS[name](args), args)

    where = "in this process" if args.in_process else "each in a fresh process"
    title = (f"issue 12 workloads, medians of {args.repeat} alternating runs ({where}), "
             f"{args.threads} thread(s) (higher is better)")
    print_table(title, [row for name in names for row in rows_for(name, results[name])])
    speed_rows = []
    for name in names:
        med = results[name]["median"]
        if "needle default" in med and "needle fast" in med:
            d, f = med["needle default"], med["needle fast"]
            speed_rows.append((f"{name}: time default / fast", d, f, results[name]["unit"],
                               f"{f / d:.2f}x", f"<= {DEFAULT_OVER_FAST}x"))
    if speed_rows:
        print_table("needle: loss.backward() against backward(create_graph=False)", speed_rows,
                    columns=("default", "fast"))

    if args.json:
        out = {"machine": machine(), "threads": args.threads, "repeat": args.repeat,
               "isolated_runs": not args.in_process,
               "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
               "torch": torch.__version__, "workloads": results}
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
        print(f"wrote {args.json}")
    mismatched = [n for n in names if not results[n]["check"]["ok"]]
    if mismatched:
        print(f"first-step loss mismatch in: {', '.join(mismatched)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
