"""needle vs PyTorch on one CUDA GPU (eager, float32, TF32 off for both), in one run.

Cases (issue 4): a 4096^3 matmul; softmax cross-entropy forward+backward on (8192, 4096);
layer norm forward+backward on (8192, 4096); an MLPResNet training step at batch 1024 (Adam).
For softmax-CE and layer norm it also times the fused device kernels alone
(`cuda().softmax_cross_entropy_fwd/bwd`, `cuda().layer_norm_fwd/bwd`), the kernels the ops
call (docs/cuda.md). Times are per call, after warm-up, with the device synchronized.

Run: python benchmarks/bench_cuda.py   (exits 0 with a message where no GPU is available)
`--simulate` runs the same code at small sizes on `cuda.simulated()` against torch on the CPU
(a smoke test of this script where there is no GPU; its numbers mean nothing).
"""
import os
import statistics
import sys
import time

os.environ["CUPY_TF32"] = "0"  # before CuPy loads: cuBLAS in full float32, as torch below

from _common import print_table  # noqa: E402  (puts ./python on sys.path)

import numpy as np  # noqa: E402

import needle as ndl  # noqa: E402

TDEV = "cuda"  # torch's device ("cpu" with --simulate)


def gpu_time(fn, sync, iters: int = 20, repeat: int = 5, warmup: int = 3) -> float:
    """Median over `repeat` batches of the mean seconds per fn() call, synchronized."""
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(iters):
            fn()
        sync()
        times.append((time.perf_counter() - t0) / iters)
    return statistics.median(times)


def _row(name, t_ndl, t_torch, target):
    return (name, t_ndl * 1e3, t_torch * 1e3, "ms", f"{t_ndl / t_torch:.2f}x", target)


def bench_matmul(dev, torch, nsync, tsync, n=4096):
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((n, n)).astype(np.float32) for _ in range(2))
    na, nb = (ndl.Tensor(x, device=dev, requires_grad=False) for x in (a, b))
    ta, tb = (torch.tensor(x, device=TDEV) for x in (a, b))
    t_n = gpu_time(lambda: na @ nb, nsync)
    t_t = gpu_time(lambda: ta @ tb, tsync)
    flop = 2 * n ** 3
    print(f"matmul {n}^3: needle {flop / t_n / 1e12:.1f} TFLOP/s, "
          f"torch {flop / t_t / 1e12:.1f} TFLOP/s")
    return [_row(f"matmul {n}^3", t_n, t_t, "<= 1.10x")]


def bench_softmax_ce(dev, torch, nsync, tsync, shape=(8192, 4096)):
    rng = np.random.default_rng(0)
    z = rng.standard_normal(shape).astype(np.float32)
    y = rng.integers(0, shape[1], shape[0])
    nz = ndl.Tensor(z, device=dev)
    ny = ndl.Tensor(y.astype(np.float32), device=dev, requires_grad=False)
    tz = torch.tensor(z, device=TDEV, requires_grad=True)
    ty = torch.tensor(y, device=TDEV)

    def needle_op():
        ndl.ops.softmax_cross_entropy(nz, ny).backward(create_graph=False)

    zn, yn = nz.cached_data, ndl.backend_ndarray.array(y, dtype="int64", device=dev)

    def needle_kernels():
        loss, lse = dev.softmax_cross_entropy_fwd(zn, yn)
        dev.softmax_cross_entropy_bwd(zn, yn, lse, 1.0)

    def torch_op():
        torch.nn.functional.cross_entropy(tz, ty).backward()

    t_t = gpu_time(torch_op, tsync)
    return [_row(f"softmax-CE fwd+bwd {shape}, op", gpu_time(needle_op, nsync), t_t,
                 "<= 1.00x"),
            _row("softmax-CE fwd+bwd, device kernels", gpu_time(needle_kernels, nsync), t_t,
                 "<= 1.00x")]


def bench_layer_norm(dev, torch, nsync, tsync, shape=(8192, 4096)):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    ln = ndl.nn.LayerNorm1d(shape[1], device=dev)
    nx = ndl.Tensor(x, device=dev)
    ndy = ndl.Tensor(dy, device=dev, requires_grad=False)
    tln = torch.nn.LayerNorm(shape[1]).to(TDEV)
    tx = torch.tensor(x, device=TDEV, requires_grad=True)
    tdy = torch.tensor(dy, device=TDEV)

    def needle_op():
        ln(nx).backward(ndy, create_graph=False)

    xn, dyn = nx.cached_data, ndy.cached_data  # the device kernels take NDArrays
    w, b = ln.weight.cached_data, ln.bias.cached_data

    def needle_kernels():
        _, mean, rstd = dev.layer_norm_fwd(xn, w, b, 1e-5)
        dev.layer_norm_bwd(dyn, xn, mean, rstd, w)

    def torch_op():
        tln(tx).backward(tdy)

    t_t = gpu_time(torch_op, tsync)
    return [_row(f"layer norm fwd+bwd {shape}, module", gpu_time(needle_op, nsync), t_t,
                 "<= 1.00x"),
            _row("layer norm fwd+bwd, device kernels", gpu_time(needle_kernels, nsync), t_t,
                 "<= 1.00x")]


def _torch_mlp_resnet(torch, dim, hidden, blocks, classes, drop=0.1):
    nn = torch.nn

    class Residual(nn.Module):
        def __init__(self, fn):
            super().__init__()
            self.fn = fn

        def forward(self, x):
            return x + self.fn(x)

    def block():
        return nn.Sequential(Residual(nn.Sequential(
            nn.Linear(hidden, hidden // 2), nn.BatchNorm1d(hidden // 2), nn.ReLU(),
            nn.Dropout(drop), nn.Linear(hidden // 2, hidden), nn.BatchNorm1d(hidden))), nn.ReLU())

    return nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), *[block() for _ in range(blocks)],
                         nn.Linear(hidden, classes))


def bench_mlp_resnet(dev, torch, nsync, tsync, batch=1024, dim=784, hidden=100, blocks=3):
    try:
        from needle.models import MLPResNet
    except ImportError as e:
        print(f"MLPResNet step: skipped ({e})")
        return []
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, dim)).astype(np.float32)
    y = rng.integers(0, 10, batch)
    model = MLPResNet(dim, hidden, blocks, 10, device=dev)
    opt = ndl.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = ndl.nn.SoftmaxLoss()
    nx = ndl.Tensor(x, device=dev, requires_grad=False)
    ny = ndl.Tensor(y.astype(np.float32), device=dev, requires_grad=False)

    def needle_step():
        opt.reset_grad()
        loss_fn(model(nx), ny).backward(create_graph=False)
        opt.step()

    tmodel = _torch_mlp_resnet(torch, dim, hidden, blocks, 10).to(TDEV)
    topt = torch.optim.Adam(tmodel.parameters(), lr=1e-3)
    tx, ty = torch.tensor(x, device=TDEV), torch.tensor(y, device=TDEV)

    def torch_step():
        topt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(tmodel(tx), ty).backward()
        topt.step()

    before = ndl.cuda.memory_stats()["allocated"]
    t_n = gpu_time(needle_step, nsync)
    after = ndl.cuda.memory_stats()
    print(f"MLPResNet step: needle pool allocated {before} -> {after['allocated']} bytes "
          f"(peak {after['peak']})")
    return [_row(f"MLPResNet train step, batch {batch}", t_n, gpu_time(torch_step, tsync),
                 "<= 1.50x")]


def _simulate() -> int:
    """The whole script at small sizes over cuda.simulated() and torch on the CPU."""
    global TDEV
    import torch

    TDEV = "cpu"
    dev = ndl.cuda.simulated()
    sync = dev.synchronize
    rows = (bench_matmul(dev, torch, sync, sync, n=64)
            + bench_softmax_ce(dev, torch, sync, sync, shape=(64, 32))
            + bench_layer_norm(dev, torch, sync, sync, shape=(64, 32))
            + bench_mlp_resnet(dev, torch, sync, sync, batch=32, dim=20, hidden=16, blocks=1))
    print_table("simulated: cuda.simulated() vs torch CPU (smoke test, not a measurement)", rows)
    return 0


def main() -> int:
    if "--simulate" in sys.argv[1:]:
        return _simulate()
    dev = ndl.cuda()
    if not dev.enabled():
        print("bench_cuda: needs CUDA (CuPy and an NVIDIA GPU); needle.cuda().enabled() is "
              "False here, so nothing was timed.")
        return 0
    try:
        import torch
    except ImportError:
        torch = None
    if torch is None or not torch.cuda.is_available():
        print("bench_cuda: needs a CUDA build of PyTorch to compare against; nothing was timed.")
        return 0
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    nsync, tsync = dev.synchronize, torch.cuda.synchronize
    rows = []
    for case in (bench_matmul, bench_softmax_ce, bench_layer_norm, bench_mlp_resnet):
        rows += case(dev, torch, nsync, tsync)
    print_table(f"needle vs PyTorch {torch.__version__} on {torch.cuda.get_device_name()} "
                f"(float32, TF32 off)", rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
