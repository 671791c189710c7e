"""The trainer plugin that makes `needle train` data-parallel under an MPI launcher (above nn)."""
from __future__ import annotations

from ..errors import ConfigError
from ..nn import convert_sync_batchnorm
from .comm import DEFAULT_BUCKET_BYTES, init, install_excepthook, is_main_process
from .data_parallel import allreduce_gradients, broadcast_parameters, distributed_sampler

__all__ = ["trainer_plugin"]


def trainer_plugin(trainer, args) -> None:
    """Make a `needle.train.Trainer` data-parallel when the process runs under an MPI launcher.

    With one process this changes nothing. With N: a failing rank aborts the job; only rank 0
    is `is_main` (progress bar, metrics, plots, checkpoints); BatchNorm1d/2d layers become
    SyncBatchNorm and rank 0's weights are broadcast, so N processes train the model one
    process would; `--batch-size` stays the global batch (each rank loads batch/N samples of
    its `DistributedSampler` shard, reshuffled per epoch from `--seed`); gradients are averaged
    after every backward. Checkpoints hold the plain model, so `--resume` works with any N.
    """
    n = init()
    if n == 1:
        return
    install_excepthook()
    trainer.is_main = is_main_process()
    model = convert_sync_batchnorm(trainer.model)
    if model is not trainer.model:
        raise TypeError("needle.distributed.trainer_plugin: the root model is a BatchNorm1d")
    broadcast_parameters(model)
    data = trainer.train_data
    if getattr(data, "sampler", "absent") is None and hasattr(data, "dataset"):
        if data.batch_size % n:
            raise ConfigError(f"--batch-size {data.batch_size} is the global batch and must be "
                             f"a multiple of the {n} processes")
        loader_cls = type(data)
        trainer.train_data = loader_cls(
            data.dataset, batch_size=data.batch_size // n, drop_last=data.drop_last,
            sampler=distributed_sampler(data.dataset, shuffle=data.shuffle,
                                        seed=int(getattr(args, "seed", 0) or 0)),
            device=data.device, dtype=data.dtype)
    bucket_bytes = int(getattr(args, "bucket_bytes", None) or DEFAULT_BUCKET_BYTES)
    trainer.after_backward.append(lambda t: allreduce_gradients(t.model, bucket_bytes))
