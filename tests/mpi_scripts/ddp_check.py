"""Run by tests/test_distributed.py, as one plain process or under `mpiexec -n N`.

Trains small models for a few steps with every (optimizer, norm, backward path) combination,
data-parallel over the job's ranks with local batch `--local-batch`, and has rank 0 write the
final parameters, the per-step global losses and the epoch shards of every rank to `--out`
(an .npz). One process with local batch N*B must give the same numbers as N with B.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "python"))

import numpy as np  # noqa: E402

import needle as ndl  # noqa: E402
import needle.distributed as dist  # noqa: E402
from needle import nn  # noqa: E402
from needle.data import DataLoader, NDArrayDataset  # noqa: E402

CONFIGS = [(opt, norm, graph) for opt in ("sgd", "adam")
           for norm in ("syncbn", "layernorm") for graph in (False, True)]


def make_data(n=96, dim=10, classes=3):
    rng = np.random.default_rng(1234)
    X = rng.standard_normal((n, dim)).astype(np.float32)
    y = rng.integers(0, classes, n).astype(np.int64)
    return NDArrayDataset(X, y)


def make_model(norm):
    Norm = nn.SyncBatchNorm if norm == "syncbn" else nn.LayerNorm1d
    # a different seed per rank: broadcast_parameters must make rank 0's weights everyone's
    ndl.manual_seed(dist.rank())
    # no bias right before a BatchNorm: its exact gradient is 0, and Adam would turn the
    # float rounding left in it into full-size steps that differ between 1 and N processes
    bias = norm != "syncbn"
    return nn.Sequential(nn.Linear(10, 16, bias=bias), Norm(16), nn.ReLU(),
                         nn.Residual(nn.Sequential(nn.Linear(16, 16, bias=bias), Norm(16),
                                                   nn.ReLU())),
                         nn.Linear(16, 3))


def train(opt_name, norm, graph, local_batch, steps, bucket_bytes):
    model = dist.DistributedDataParallel(make_model(norm), bucket_bytes=bucket_bytes)
    model.train()
    init0 = model.parameters()[0].numpy().copy()
    if opt_name == "sgd":
        opt = ndl.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    else:
        opt = ndl.optim.Adam(model.parameters(), lr=0.01, weight_decay=1e-3)
    sampler = dist.distributed_sampler(96, shuffle=True, seed=7)
    loader = DataLoader(make_data(), batch_size=local_batch, sampler=sampler)
    loss_fn = nn.SoftmaxLoss()
    losses = []
    step = 0
    while step < steps:
        for x, y in loader:
            loss = loss_fn(model(x), y)
            opt.reset_grad()
            loss.backward(create_graph=graph)
            model.allreduce_gradients()
            opt.step()
            losses.append(float(dist.allreduce_array(np.array([loss.numpy()],
                                                              dtype=np.float64))[0]
                                / dist.world_size()))
            step += 1
            if step == steps:
                break
    out = {f"p{i}": p.numpy() for i, p in enumerate(model.parameters())}
    for name, b in model.named_buffers():
        out[f"buf.{name}"] = b.numpy()
    out["losses"] = np.array(losses)
    out["init0"] = init0
    return out


def shards(n=23, epochs=2):
    out = {}
    for drop_last in (False, True):
        sampler = dist.distributed_sampler(n, shuffle=True, seed=3, drop_last=drop_last)
        for e in range(epochs):
            sampler.set_epoch(e)
            got = dist.allgather_object(sampler.indices().tolist())
            for r, idx in enumerate(got):
                out[f"shard.{int(drop_last)}.{e}.{r}"] = np.array(idx, dtype=np.int64)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--local-batch", type=int, required=True)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--bucket-bytes", type=int, default=1024)  # several buckets per step
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    dist.init()
    dist.install_excepthook()
    results = {"world_size": np.array(dist.world_size())}
    for opt_name, norm, graph in CONFIGS:
        res = train(opt_name, norm, graph, args.local_batch, args.steps, args.bucket_bytes)
        for k, v in res.items():
            results[f"{opt_name}.{norm}.{int(graph)}.{k}"] = v
    results.update(shards())
    results["comm_calls"] = np.array(dist.comm_stats["calls"])
    if dist.is_main_process():
        np.savez(args.out, **results)


if __name__ == "__main__":
    main()
