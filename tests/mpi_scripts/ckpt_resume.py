"""Run by tests/test_distributed.py: write a checkpoint under N processes, resume under M.

`--phase write`: data-parallel training for `--steps` steps with global batch `--global-batch`
(local batch global/N); rank 0 alone writes the checkpoint (model, optimizer, step) with
`needle.serialization` (atomic), then every rank computes the next batch's global loss, which
rank 0 stores in `<ckpt>.next_loss.npy`.
`--phase resume`: load the checkpoint, skip the `step` batches already seen (same sampler
seed, same global order) and print the next batch's global loss as `NEXT_LOSS <value>`.
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
from needle.serialization import load_checkpoint, save_checkpoint  # noqa: E402


def setup(global_batch):
    rng = np.random.default_rng(99)
    X = rng.standard_normal((120, 12)).astype(np.float32)
    y = rng.integers(0, 4, 120).astype(np.int64)
    ndl.manual_seed(0)
    model = dist.DistributedDataParallel(nn.Sequential(
        nn.Linear(12, 32, bias=False), nn.SyncBatchNorm(32), nn.ReLU(), nn.Linear(32, 4)))
    opt = ndl.optim.Adam(model.parameters(), lr=0.01)
    n = dist.world_size()
    if global_batch % n:
        raise ValueError(f"global batch {global_batch} is not a multiple of {n} processes")
    loader = DataLoader(NDArrayDataset(X, y), batch_size=global_batch // n,
                        sampler=dist.distributed_sampler(120, shuffle=True, seed=5))
    return model, opt, loader


def global_loss(model, batch):
    x, y = batch
    loss = nn.SoftmaxLoss()(model(x), y)
    total = dist.allreduce_array(np.array([float(loss.numpy())]))
    return loss, float(total[0]) / dist.world_size()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--phase", choices=("write", "resume"), required=True)
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--global-batch", type=int, default=16)
    args = ap.parse_args()
    dist.init()
    dist.install_excepthook()
    model, opt, loader = setup(args.global_batch)
    model.train()
    batches = iter(loader)
    if args.phase == "write":
        for _ in range(args.steps):
            loss, _ = global_loss(model, next(batches))
            opt.reset_grad()
            loss.backward(create_graph=False)
            model.allreduce_gradients()
            opt.step()
        if dist.is_main_process():
            save_checkpoint(args.ckpt, model, opt, meta={"step": args.steps})
        dist.barrier()
        _, next_loss = global_loss(model, next(batches))
        if dist.is_main_process():
            np.save(args.ckpt + ".next_loss.npy", np.array(next_loss))
    else:
        ck = load_checkpoint(args.ckpt)
        model.load_state_dict(ck.model_state)
        opt.load_state_dict(ck.optimizer_state)
        for _ in range(int(ck.meta["step"])):
            next(batches)
        _, next_loss = global_loss(model, next(batches))
        if dist.is_main_process():
            print(f"NEXT_LOSS {next_loss!r}")


if __name__ == "__main__":
    main()
