"""Run by tests/test_distributed.py, as one plain process or under `mpiexec -n N`.

Trains small models for a few steps with every (optimizer, norm, backward path, mode)
combination (mode: the all-reduce or the sharded optimizer step, each over MPI and over
shared memory), data-parallel over the job's ranks with local batch
`--local-batch`, and has rank 0 write the final parameters, the optimizer state, the per-step
global losses and gradient norms and the epoch shards of every rank to `--out` (an .npz). One
process with local batch N*B must give the same numbers as N with B. The sharded runs
(`ShardedOptimizer`, ZeRO-1, over MPI and over shared memory, several buckets each) also clip
the gradient norm, and one of their parameters gets no gradient in every other step.
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

CONFIGS = [(opt, norm, graph, shard) for opt in ("sgd", "adam")
           for norm in ("syncbn", "layernorm") for graph in (False, True)
           for shard in range(4)]
# (sharded optimizer step, transport) of each `shard` index
MODES = {0: (False, "mpi"), 1: (True, "mpi"), 2: (True, "shm"), 3: (False, "shm")}
CLIP_NORM = 3.0


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


def train(opt_name, norm, graph, mode, local_batch, steps, bucket_bytes):
    shard, transport = MODES[mode]
    # shared memory: a rank reads the gradients wholly in its own shard where the backward
    # left them; lowered from the default so that this small model's are (the 3-value extra
    # parameter too, which has no gradient in odd steps), while those across a shard
    # boundary are copied
    dist.overlap.KEEP_MIN = 3
    net = make_model(norm)
    # used in even steps only: a parameter that no rank has a gradient for in odd steps
    extra = ndl.nn.Parameter(np.full((3,), 0.5, dtype=np.float32))
    if shard:
        net.extra = extra  # found by parameters(), as an attribute
    model = dist.DistributedDataParallel(net, bucket_bytes=bucket_bytes, transport=transport)
    model.train()
    init0 = model.parameters()[0].numpy().copy()
    if opt_name == "sgd":
        opt = ndl.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    else:
        opt = ndl.optim.Adam(model.parameters(), lr=0.01, weight_decay=1e-3)
    if shard:
        opt = dist.ShardedOptimizer(opt, model, transport=transport, bucket_bytes=bucket_bytes)
    sampler = dist.distributed_sampler(96, shuffle=True, seed=7)
    loader = DataLoader(make_data(), batch_size=local_batch, sampler=sampler)
    loss_fn = nn.SoftmaxLoss()
    losses, norms = [], []
    step = 0
    while step < steps:
        for x, y in loader:
            logits = model(x)
            if shard and step % 2 == 0:
                logits = logits * ndl.ops.summation(extra).reshape((1, 1))
            loss = loss_fn(logits, y)
            opt.reset_grad()
            loss.backward(create_graph=graph)
            model.allreduce_gradients()
            if shard:
                norms.append(opt.clip_grad_norm(CLIP_NORM))
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
    out["norms"] = np.array(norms)
    out["init0"] = init0
    if shard:  # optimizer state elements held by each rank
        out["state_size"] = np.array(dist.allgather_object(opt.local_state_size()))
    for i, entry in opt.state_dict()["state"].items():
        for k, v in entry.items():
            out[f"state.{i}.{k}"] = v
    if shard:  # the parameters leave the shared buffers with their values
        opt.close()
        for i, p in enumerate(model.parameters()):
            if not np.array_equal(p.numpy(), out[f"p{i}"]):
                raise AssertionError(f"parameter {i} changed when the sharded optimizer closed")
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
    results = {"world_size": np.array(dist.world_size()), "clip_norm": np.array(CLIP_NORM)}
    for opt_name, norm, graph, shard in CONFIGS:
        res = train(opt_name, norm, graph, shard, args.local_batch, args.steps,
                    args.bucket_bytes)
        for k, v in res.items():
            results[f"{opt_name}.{norm}.{int(graph)}.{int(shard)}.{k}"] = v
    results.update(shards())
    results["comm_calls"] = np.array(dist.comm_stats["calls"])
    if dist.is_main_process():
        np.savez(args.out, **results)


if __name__ == "__main__":
    main()
