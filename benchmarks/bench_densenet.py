"""Peak memory and time of one DenseNet training step, needle vs the same network in PyTorch.

Both networks: models.DenseNet defaults (growth 12, blocks (6, 6, 6), 24 stem features,
bottleneck 4k, compression 0.5; 175,690 parameters), (B, 1, 28, 28) float32 input, one
forward + backward + SGD step after one warm-up step. The torch network is written out here
layer for layer (torchvision's DenseNet layer order, concatenating with torch.cat, i.e.
torchvision's memory_efficient=False). Each library runs in its own fresh subprocess;
"peak" is the growth of the process's maximum RSS (getrusage) over its value after the model
and the batch were built, so it counts every activation kept for the backward.
Run: python benchmarks/bench_densenet.py [batch] [threads]
"""
import json
import os
import subprocess
import sys

BATCH = int(sys.argv[1]) if len(sys.argv) > 1 else 64
THREADS = int(sys.argv[2]) if len(sys.argv) > 2 else 1

_CHILD = r'''
import json, os, resource, sys, time
import numpy as np
lib, batch = sys.argv[1], int(sys.argv[2])
sys.path.insert(0, os.path.join(sys.argv[3], "python"))
x = np.random.RandomState(0).rand(batch, 1, 28, 28).astype(np.float32)
y = np.random.RandomState(1).randint(0, 10, batch)

def rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0

if lib == "needle":
    import needle as ndl
    from needle import models, nn, optim
    np.random.seed(0)
    model = models.DenseNet()
    opt = optim.SGD(model.parameters(), lr=0.01)
    X = ndl.Tensor(x, requires_grad=False)
    Y = ndl.Tensor(y, requires_grad=False)
    loss_fn = nn.SoftmaxLoss()
    def step():
        opt.reset_grad()
        loss = loss_fn(model(X), Y)
        loss.backward(create_graph=False)
        opt.step()
    params = model.num_parameters()
else:
    import torch
    torch.set_num_threads(int(sys.argv[4]))
    tnn = torch.nn
    class Layer(tnn.Module):
        def __init__(self, c, k, bn):
            super().__init__()
            self.n1, self.c1 = tnn.BatchNorm2d(c), tnn.Conv2d(c, bn * k, 1, bias=False)
            self.n2, self.c2 = tnn.BatchNorm2d(bn * k), tnn.Conv2d(bn * k, k, 3, padding=1,
                                                                   bias=False)
        def forward(self, x):
            return self.c2(torch.relu(self.n2(self.c1(torch.relu(self.n1(x))))))
    class Block(tnn.Module):
        def __init__(self, n, c, k, bn):
            super().__init__()
            self.layers = tnn.ModuleList([Layer(c + i * k, k, bn) for i in range(n)])
        def forward(self, x):
            feats = [x]
            for layer in self.layers:
                feats.append(layer(torch.cat(feats, 1)))
            return torch.cat(feats, 1)
    class Net(tnn.Module):
        def __init__(self, k=12, blocks=(6, 6, 6), c0=24, bn=4):
            super().__init__()
            mods, c = [tnn.Conv2d(1, c0, 3, padding=1, bias=False)], c0
            for i, n in enumerate(blocks):
                mods.append(Block(n, c, k, bn)); c += n * k
                if i + 1 < len(blocks):
                    mods += [tnn.BatchNorm2d(c), tnn.ReLU(), tnn.Conv2d(c, c // 2, 1, bias=False),
                             tnn.AvgPool2d(2)]
                    c //= 2
            mods += [tnn.BatchNorm2d(c), tnn.ReLU(), tnn.AdaptiveAvgPool2d(1), tnn.Flatten(),
                     tnn.Linear(c, 10)]
            self.net = tnn.Sequential(*mods)
        def forward(self, x):
            return self.net(x)
    torch.manual_seed(0)
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    X, Y = torch.tensor(x), torch.tensor(y)
    def step():
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(X), Y).backward()
        opt.step()
    params = sum(p.numel() for p in model.parameters())

base = rss_mb()
t0 = time.perf_counter(); step(); warm = time.perf_counter() - t0
t0 = time.perf_counter(); step(); sec = time.perf_counter() - t0
print(json.dumps({"lib": lib, "params": params, "peak_mb": rss_mb() - base, "step_s": sec,
                  "first_step_s": warm}))
'''


def run(lib):
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(THREADS)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", _CHILD, lib, str(BATCH), root, str(THREADS)],
                         env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    rows = [run("needle"), run("torch")]
    print(f"DenseNet training step, batch {BATCH}, 28x28x1, {THREADS} thread(s)")
    print(f"{'library':8s} {'params':>9s} {'peak MB':>9s} {'step s':>8s}")
    for r in rows:
        print(f"{r['lib']:8s} {r['params']:9d} {r['peak_mb']:9.1f} {r['step_s']:8.3f}")
    print(f"needle/torch peak memory: {rows[0]['peak_mb'] / rows[1]['peak_mb']:.2f}x, "
          f"step time: {rows[0]['step_s'] / rows[1]['step_s']:.2f}x")


if __name__ == "__main__":
    main()
