"""needle vs PyTorch (CPU, 2 threads) on convolutions.

(a) conv forward + backward, batch 64, 32 -> 32 channels, 28x28, 3x3, stride 1, padding 1
    (needle: `ops.conv` on NHWC with `backward(create_graph=False)`; torch: conv2d on NCHW);
    (a') the same with needle's default `backward()` (which builds the gradient graph);
(b) one training step of the small residual CNN (`needle.models.SmallResNet`, the same layout
    in torch), batch 64 of 1x28x28 images, SGD with momentum, in samples/s, with needle's
    `backward(create_graph=False)`; (b') the same with the default `loss.backward()`;
(c) peak resident memory of 30 steps of (b), each framework alone in a fresh subprocess that
    imports both libraries: VmHWM from /proc/self/status (resource.getrusage's maxrss is used
    where /proc is missing; on Linux it would include the parent's peak, inherited over fork).
Run: python benchmarks/bench_conv.py
"""
import os

os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "2")
os.environ.setdefault("MKL_NUM_THREADS", "2")

import resource  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from _common import median_time, print_table  # noqa: E402

import needle as ndl  # noqa: E402
from needle import nn, ops  # noqa: E402
from needle.models import SmallResNet  # noqa: E402

torch.set_num_threads(2)
BATCH = 64


def torch_small_resnet():
    """The torch twin of SmallResNet (same layers, default torch init)."""
    t = torch.nn

    def cbn(a, b, s=1):
        return t.Sequential(t.Conv2d(a, b, 3, s, 1), t.BatchNorm2d(b), t.ReLU())

    class Res(t.Module):
        def __init__(self, c):
            super().__init__()
            self.fn = t.Sequential(cbn(c, c), cbn(c, c))

        def forward(self, x):
            return self.fn(x) + x

    return t.Sequential(cbn(1, 32), t.MaxPool2d(2), Res(32), cbn(32, 64, 2), Res(64),
                        t.AdaptiveAvgPool2d(1), t.Flatten(), t.Linear(64, 10))


def needle_step_fn(create_graph=False):
    np.random.seed(0)
    model = SmallResNet()
    opt = ndl.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    loss_fn = nn.SoftmaxLoss()
    x = ndl.Tensor(np.random.rand(BATCH, 1, 28, 28).astype("float32"), requires_grad=False)
    y = ndl.Tensor(np.random.randint(0, 10, BATCH).astype("float32"), requires_grad=False)

    def step():
        opt.reset_grad()
        loss = loss_fn(model(x), y)
        if create_graph:
            loss.backward()  # the default a course user writes
        else:
            loss.backward(create_graph=False)
        opt.step()
    return step


def torch_step_fn():
    torch.manual_seed(0)
    model = torch_small_resnet()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x = torch.rand(BATCH, 1, 28, 28)
    y = torch.randint(0, 10, (BATCH,))

    def step():
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return step


def _peak_rss_kib() -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return float(line.split()[1])
    except OSError:
        pass
    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def paired_medians(fa, fb, repeat: int = 11, warmup: int = 2):
    """Median times of fa and fb measured alternately (a noisy shared machine drifts; pairing
    exposes both to the same load)."""
    for _ in range(warmup):
        fa()
        fb()
    ta, tb = [], []
    for _ in range(repeat):
        ta.append(median_time(fa, repeat=1, warmup=0))
        tb.append(median_time(fb, repeat=1, warmup=0))
    return statistics.median(ta), statistics.median(tb)


def peak_rss_mb(framework: str) -> float:
    out = subprocess.run([sys.executable, __file__, "--rss", framework], check=True,
                         capture_output=True, text=True).stdout
    return float(out.strip().splitlines()[-1])


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--rss":
        step = needle_step_fn() if sys.argv[2] == "needle" else torch_step_fn()
        for _ in range(30):
            step()
        print(_peak_rss_kib() / 1024)
        return
    rng = np.random.default_rng(0)
    x = rng.standard_normal((BATCH, 28, 28, 32)).astype(np.float32)
    w = (rng.standard_normal((3, 3, 32, 32)) * 0.1).astype(np.float32)
    nx, nw = ndl.Tensor(x), ndl.Tensor(w)
    tx = torch.tensor(x.transpose(0, 3, 1, 2).copy(), requires_grad=True)
    tw = torch.tensor(w.transpose(3, 2, 0, 1).copy(), requires_grad=True)

    def conv_needle():
        ops.conv(nx, nw, stride=1, padding=1).sum().backward(create_graph=False)

    def conv_needle_default():
        ops.conv(nx, nw, stride=1, padding=1).sum().backward()

    def conv_torch():
        torch.nn.functional.conv2d(tx, tw, stride=1, padding=1).sum().backward()

    t_conv, t_conv_torch = paired_medians(conv_needle, conv_torch)
    t_conv_default, t_conv_torch2 = paired_medians(conv_needle_default, conv_torch)
    t_step, t_step_torch = paired_medians(needle_step_fn(), torch_step_fn())
    sps, sps_torch = BATCH / t_step, BATCH / t_step_torch
    t_step_default, t_step_torch2 = paired_medians(needle_step_fn(create_graph=True),
                                                   torch_step_fn())
    sps_default, sps_torch2 = BATCH / t_step_default, BATCH / t_step_torch2
    rss, rss_torch = peak_rss_mb("needle"), peak_rss_mb("torch")
    print_table("bench_conv: needle vs torch", [
        ("(a) conv 64x32x28x28, 3x3 s1, fwd+bwd", t_conv * 1e3, t_conv_torch * 1e3, "ms",
         f"{t_conv / t_conv_torch:.2f}x", "<= 2x"),
        ("(a') same, default backward()", t_conv_default * 1e3, t_conv_torch2 * 1e3, "ms",
         f"{t_conv_default / t_conv_torch2:.2f}x", "<= 2x"),
        ("(b) SmallResNet SGD step, batch 64", sps, sps_torch, "samples/s",
         f"{sps / sps_torch:.2f}x", ">= 0.5x"),
        ("(b') same, default loss.backward()", sps_default, sps_torch2, "samples/s",
         f"{sps_default / sps_torch2:.2f}x", ">= 0.8x"),
        ("(c) peak RSS, 30 steps of (b)", rss, rss_torch, "MiB", f"{rss / rss_torch:.2f}x",
         "<= 2x"),
    ])


if __name__ == "__main__":
    main()
