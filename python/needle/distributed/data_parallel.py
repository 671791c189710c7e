"""Data parallelism on the MPI primitives: parameter broadcast, bucketed gradient all-reduce,
DistributedDataParallel and the per-rank data sampler (imports autograd, not nn)."""
from __future__ import annotations

from typing import Dict, Iterable, List, Optional, Sequence

import numpy as np

from ..autograd import Tensor
from . import comm as _comm
from .comm import DEFAULT_BUCKET_BYTES, init, is_distributed, rank, world_size
from .overlap import OVERLAP_BUCKET_BYTES, GradientReducer, resolve_transport

__all__ = ["broadcast_parameters", "allreduce_gradients", "DistributedDataParallel",
           "distributed_sampler", "gradient_bytes"]


def _buckets(tensors: Sequence[Tensor], bucket_bytes: int) -> List[List[int]]:
    """Indices of `tensors` grouped by device and dtype, each group cut at `bucket_bytes`."""
    groups: Dict[tuple, List[int]] = {}
    for i, t in enumerate(tensors):
        data = t.realize_cached_data()
        groups.setdefault((str(data.device), np.dtype(data.dtype).str), []).append(i)
    out = []
    for idx in groups.values():
        bucket, size = [], 0
        for i in idx:
            nbytes = tensors[i].realize_cached_data().nbytes
            if bucket and size + nbytes > bucket_bytes:
                out.append(bucket)
                bucket, size = [], 0
            bucket.append(i)
            size += nbytes
        out.append(bucket)
    return out


def broadcast_parameters(model, root: int = 0) -> None:
    """Overwrite every parameter and buffer of `model` with rank `root`'s values, in place.

    One `Bcast` per device/dtype group (all tensors packed into one buffer). `model` is a
    Module or a list of Tensors. No-op with one process.
    """
    if not is_distributed():
        return
    if hasattr(model, "named_parameters"):
        tensors = [p for _, p in model.named_parameters()]
        tensors += [b for _, b in model.named_buffers()]
    else:
        tensors = list(model)
    for bucket in _buckets(tensors, 2 ** 62):
        datas = [tensors[i].realize_cached_data() for i in bucket]
        sizes = [d.size for d in datas]
        buf = datas[0].device.pack_host(datas, sizes, datas[0].dtype)
        _comm._timed(lambda: _comm._state["comm"].Bcast(buf, root=root), buf.nbytes)
        off = 0
        for i, d, n in zip(bucket, datas, sizes):
            owned = d.as_owned()  # written in place (a view must not write through)
            owned.assign(buf[off:off + n].reshape(d.shape))
            tensors[i].cached_data = owned
            off += n


def allreduce_gradients(model, bucket_bytes: int = DEFAULT_BUCKET_BYTES,
                        average: bool = True) -> None:
    """Average (or sum) `.grad` of every parameter across ranks with one Allreduce per bucket.

    Gradients are packed into contiguous host buffers of about `bucket_bytes` (one per
    device/dtype group and size cut), reduced in place through the buffer protocol, scaled
    by 1/world_size and handed back as views of the reduced buffer (new constant Tensors).
    A parameter without a gradient on some rank counts as zero there; it keeps `grad=None`
    only when no rank has a gradient for it (every rank calls this in the same order, so the
    buffers line up). `model` is a Module or a list of parameters. No-op with one process.
    """
    if not is_distributed():
        return
    params = model.parameters() if hasattr(model, "parameters") else list(model)
    if not params:
        return
    MPI, comm, size = _comm._state["MPI"], _comm._state["comm"], _comm._state["size"]
    buckets = _buckets(params, bucket_bytes)
    for bucket in buckets:
        datas = [params[i].realize_cached_data() for i in bucket]
        device = datas[0].device
        grads = [None if params[i].grad is None else params[i].grad.realize_cached_data()
                 for i in bucket]
        sizes = [d.size for d in datas]
        flags = [0.0 if g is None else 1.0 for g in grads]
        # the "has a gradient" flags travel in the same call, after the values
        buf = device.pack_host(grads, sizes, datas[0].dtype, extra=np.asarray(flags))
        _comm._timed(lambda: comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM), buf.nbytes)
        n_values = int(sum(sizes))
        if average:
            buf[:n_values] *= buf.dtype.type(1.0 / size)
        values = device.from_host(buf[:n_values])  # views of it become the gradients
        off = 0
        for i, d, n, flag in zip(bucket, datas, sizes, buf[n_values:]):
            if flag > 0:
                g = values.select(slice(off, off + n)).reshape(d.shape)
                params[i].grad = Tensor.make_const(g)
            off += n


class DistributedDataParallel:
    """Wrap a Module for data-parallel training: same calls, gradients averaged on demand.

    On construction, rank 0's parameters and buffers are broadcast to every rank. Calling the
    wrapper runs the module; after `loss.backward()`, call `allreduce_gradients()` (the
    trainer's after-backward hook does) before the optimizer step; with `overlap=True` the
    all-reduce of each bucket starts during the fast backward (`GradientReducer`), with
    `overlap=False` all of it runs in that call. `bucket_bytes` defaults to 1 MiB with
    overlap (buckets must be a fraction of the model to start early), 25 MiB without (fewest
    calls); `wait` and `transport` are the reducer's (see `GradientReducer`: "auto" sums the
    gradients in shared memory when every rank is on this machine, with one 25 MiB bucket by
    default, as nothing overlaps there). Wrapping the optimizer in
    `ShardedOptimizer(opt, model)` makes the step ZeRO-1 (each rank updates 1/N of the
    parameters). Attributes not found on the
    wrapper (parameters(), train(), state_dict(), ...) come from the wrapped `module`, so
    checkpoints have the same keys as the plain model's.
    """

    def __init__(self, module, bucket_bytes: Optional[int] = None, broadcast: bool = True,
                 overlap: bool = True, wait: str = "spin", transport: str = "auto"):
        init()
        self.module = module
        transport = resolve_transport(module.parameters(), transport) if overlap else "mpi"
        # buckets overlap the backward over MPI only: shared memory takes the fewest
        default = (OVERLAP_BUCKET_BYTES if overlap and transport == "mpi"
                   else DEFAULT_BUCKET_BYTES)
        self.bucket_bytes = int(bucket_bytes or default)
        if broadcast:
            broadcast_parameters(module)
        self.reducer = None
        if overlap and is_distributed():
            self.reducer = GradientReducer(module.parameters(), self.bucket_bytes, wait=wait,
                                           transport=transport)

    def __call__(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    forward = __call__

    def allreduce_gradients(self) -> None:
        """Average the gradients over ranks; with `overlap` (the default) the buckets whose
        gradients the fast backward finished early are already on their way."""
        if self.reducer is not None:
            self.reducer.finish()
        else:
            allreduce_gradients(self.module, self.bucket_bytes)

    def __getattr__(self, name):
        if name == "module":  # not yet set: avoid recursion during unpickling
            raise AttributeError(name)
        return getattr(self.module, name)


def distributed_sampler(dataset, shuffle: bool = True, seed: int = 0, drop_last: bool = False):
    """A `needle.data.DistributedSampler` for this process's rank and the job's world size."""
    from ..data import DistributedSampler  # noqa: PLC0415 (data imports are heavier)
    return DistributedSampler(dataset, num_replicas=world_size(), rank=rank(),
                              shuffle=shuffle, seed=seed, drop_last=drop_last)


def gradient_bytes(params: Iterable[Tensor]) -> int:
    """Bytes one `allreduce_gradients` call sends into the reduction (values only)."""
    return int(sum(p.realize_cached_data().nbytes for p in params))
