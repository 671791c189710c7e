"""needle vs PyTorch (CPU, 2 threads) on the core: per-op overhead and a large matmul.

(a) a chain of 200 add/mul/tanh ops on 8x8 float32 tensors, forward + backward, in
    microseconds per op (needle's default backward, which builds a gradient graph, and its fast
    path `backward(create_graph=False)`);
(b) a 2048x2048 float32 matmul, forward + backward.
Run: python benchmarks/bench_ops.py
"""
import numpy as np
import torch

from _common import median_time, print_table

import needle as ndl

torch.set_num_threads(2)
N_OPS = 200


def chain_needle(x, w, create_graph):
    y = x
    for i in range(N_OPS // 3):
        y = y + w
        y = y * w
        y = ndl.tanh(y)
    y.sum().backward(create_graph=create_graph)


def chain_torch(x, w):
    y = x
    for i in range(N_OPS // 3):
        y = y + w
        y = y * w
        y = torch.tanh(y)
    y.sum().backward()


def main():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((8, 8)).astype(np.float32)
    b = rng.standard_normal((8, 8)).astype(np.float32) * 0.5
    nx, nw = ndl.Tensor(a), ndl.Tensor(b)
    tx = torch.tensor(a, requires_grad=True)
    tw = torch.tensor(b, requires_grad=True)
    n = 3 * (N_OPS // 3)
    t_graph = median_time(lambda: chain_needle(nx, nw, True), repeat=21) / n * 1e6
    t_fast = median_time(lambda: chain_needle(nx, nw, False), repeat=21) / n * 1e6
    t_torch = median_time(lambda: chain_torch(tx, tw), repeat=21) / n * 1e6

    m = rng.standard_normal((2048, 2048)).astype(np.float32)
    k = rng.standard_normal((2048, 2048)).astype(np.float32)
    na, nb = ndl.Tensor(m), ndl.Tensor(k)
    ta = torch.tensor(m, requires_grad=True)
    tb = torch.tensor(k, requires_grad=True)

    def mm_needle():
        (na @ nb).backward(create_graph=False)

    def mm_torch():
        out = ta @ tb
        out.backward(torch.ones_like(out))

    t_mm = median_time(mm_needle, repeat=5, warmup=1)
    t_mm_torch = median_time(mm_torch, repeat=5, warmup=1)
    print_table("bench_ops: needle vs torch", [
        ("(a) 8x8 add/mul/tanh chain, default backward", t_graph, t_torch, "us/op",
         f"{t_graph / t_torch:.2f}x", "<= 2x"),
        ("(a) same, backward(create_graph=False)", t_fast, t_torch, "us/op",
         f"{t_fast / t_torch:.2f}x", "<= 2x"),
        ("(b) 2048^3 matmul fwd+bwd", t_mm * 1e3, t_mm_torch * 1e3, "ms",
         f"{t_mm / t_mm_torch:.2f}x", "<= 1.10x"),
    ])


if __name__ == "__main__":
    main()
