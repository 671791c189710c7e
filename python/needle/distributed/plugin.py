"""The trainer plugin that makes `needle train` data-parallel under an MPI launcher (above nn)."""
from __future__ import annotations

import numpy as np

from ..data import DistributedSampler
from ..errors import ConfigError
from ..nn import convert_sync_batchnorm
from .comm import (
    DEFAULT_BUCKET_BYTES, allreduce_array, init, install_excepthook, is_main_process, rank,
    set_threads_per_rank,
)
from .data_parallel import broadcast_parameters, distributed_sampler
from .overlap import OVERLAP_BUCKET_BYTES, GradientReducer, resolve_transport

__all__ = ["trainer_plugin"]


def trainer_plugin(trainer, args) -> None:
    """Make a `needle.train.Trainer` data-parallel when the process runs under an MPI launcher.

    With one process this changes nothing. With N: a failing rank aborts the job; only rank 0
    is `is_main` (progress bar, metrics, plots, checkpoints); BatchNorm1d/2d layers become
    SyncBatchNorm and rank 0's weights are broadcast, so N processes train the model one
    process would; `--batch-size` stays the global batch (each rank loads batch/N samples of
    its `DistributedSampler` shard, reshuffled per epoch from `--seed`); gradients are averaged
    during and after every backward (`GradientReducer`: in shared memory when every rank is on
    this machine, else buckets start their all-reduce while the backward runs); each rank
    gets its share of the machine's cores (`set_threads_per_rank`,
    `trainer.threads_per_rank`). Validation is sharded: rank r evaluates samples r, r + N, ...
    and the loss and accuracy sums are all-reduced, so the metrics are the whole set's,
    computed in 1/N of the time. `trainer.world_size` says N.
    Checkpoints hold the plain model, so `--resume` works with any N.
    """
    n = init()
    if n == 1:
        return
    install_excepthook()
    trainer.threads_per_rank = set_threads_per_rank()
    trainer.is_main = is_main_process()
    model = convert_sync_batchnorm(trainer.model)
    if model is not trainer.model:
        raise TypeError("needle.distributed.trainer_plugin: the root model is a BatchNorm1d")
    broadcast_parameters(model)
    trainer.world_size = n
    data = trainer.train_data
    if _is_plain_loader(data):
        if data.batch_size % n:
            raise ConfigError(f"--batch-size {data.batch_size} is the global batch and must be "
                             f"a multiple of the {n} processes")
        trainer.train_data = _shard_loader(
            data, data.batch_size // n,
            distributed_sampler(data.dataset, shuffle=data.shuffle,
                                seed=int(getattr(args, "seed", 0) or 0)))
    data = trainer.eval_data
    if _is_plain_loader(data):  # each rank evaluates 1/n of the set; the sums are reduced
        trainer.eval_data = _shard_loader(data, data.batch_size, DistributedSampler(
            data.dataset, num_replicas=n, rank=rank(), shuffle=False, pad=False))
        trainer.reduce_eval_sums = _allreduce_sums
    # every rank on this machine: the gradients are summed in shared memory (one bucket)
    transport = resolve_transport(model.parameters(), "auto")
    default = OVERLAP_BUCKET_BYTES if transport == "mpi" else DEFAULT_BUCKET_BYTES
    bucket_bytes = int(getattr(args, "bucket_bytes", None) or default)
    reducer = GradientReducer(model.parameters(), bucket_bytes, transport=transport)
    trainer.after_backward.append(lambda t: reducer.finish())


def _is_plain_loader(data) -> bool:
    """A DataLoader over a dataset with no sampler of its own (the recipes' loaders)."""
    return getattr(data, "sampler", "absent") is None and hasattr(data, "dataset")


def _shard_loader(data, batch_size: int, sampler):
    return type(data)(data.dataset, batch_size=batch_size, drop_last=data.drop_last,
                      sampler=sampler, device=data.device, dtype=data.dtype,
                      num_workers=getattr(data, "num_workers", 0),
                      prefetch_factor=getattr(data, "prefetch_factor", 2))


def _allreduce_sums(sums: tuple) -> tuple:
    """(loss_sum, correct, n) summed over ranks (float64: exact for counts below 2**53)."""
    total = allreduce_array(np.array(sums, dtype=np.float64))
    return float(total[0]), int(round(total[1])), int(round(total[2]))
