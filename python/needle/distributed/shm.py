"""Buffers in memory that every rank on one machine maps (MPI-3 shared windows): the sharded
optimizer's reduce-scatter and all-gather without MPI copying the data (imports no nn).

For one bucket, a window holds each rank's gradient region (the bucket's values, padded to a
multiple of the world size, then one flag per parameter), then the bucket's flat parameters
(sharded optimizer) or two result buffers (all-reduce: the gradients every rank then uses).
Rank r writes its gradients into its own region during the backward (the copy every
transport makes; a gradient that lies wholly in rank r's own shard is not copied, rank r
alone reading it), and after a barrier sums the ranks' contributions over its own shard
only: that is the reduce-scatter, reading each gradient once and writing 1/N of them. The parameters
are one copy per machine, every rank's parameter Tensors being views of it: a rank's update
of its shard is seen by all after the next barrier, which is the all-gather. For a plain
all-reduce, rank r writes its summed shard into the result buffer, and after a second barrier
every rank's gradients are views of the whole result: no copy back either.
"""
from __future__ import annotations

from typing import List

import numpy as np

from . import comm as _comm

__all__ = ["SharedBucket", "shared_memory_available", "sync_all"]


def shared_memory_available() -> bool:
    """True when every rank of the job runs on this machine (MPI's COMM_TYPE_SHARED covers
    the whole job) and the MPI library has shared windows."""
    if not _comm.is_distributed():
        return False
    MPI = _comm._state["MPI"]
    if not hasattr(getattr(MPI, "Win", None), "Allocate_shared"):
        return False
    return _comm.local_world_size() == _comm.world_size()


class SharedBucket:
    """One bucket's shared window: `grads[r]` (rank r's region: `padded` values, then
    `n_flags` flags) and `extra[k]` for k < n_extra (`padded` values each: the sharded
    optimizer's parameters, or the all-reduce's results), NumPy views of the shared memory."""

    def __init__(self, padded: int, n_flags: int, dtype, n_extra: int = 1):
        MPI, comm = _comm._state["MPI"], _comm._state["comm"]
        self.comm = comm
        size, rank = comm.Get_size(), comm.Get_rank()
        dtype = np.dtype(dtype)
        region = padded + n_flags
        total = size * region + n_extra * padded
        # rank 0 allocates the whole window; the others map it (contiguous, one segment)
        self.win = MPI.Win.Allocate_shared(total * dtype.itemsize if rank == 0 else 0,
                                           dtype.itemsize, comm=comm)
        memory, _ = self.win.Shared_query(0)
        flat = np.frombuffer(memory, dtype=dtype, count=total)
        self.grads: List[np.ndarray] = [flat[r * region:(r + 1) * region] for r in range(size)]
        start = size * region
        self.extra = [flat[start + k * padded:start + (k + 1) * padded] for k in range(n_extra)]
        # passive access epoch for the window's life (freed when MPI finalizes): loads and
        # stores, made visible by Sync and a barrier
        self.win.Lock_all(MPI.MODE_NOCHECK)



def sync_all(buckets: List[SharedBucket]) -> None:
    """Make every rank's stores to the buckets' windows visible to all: a memory sync of each
    window around one barrier (a rank passes only when all have written)."""
    for bucket in buckets:
        bucket.win.Sync()
    _comm._state["comm"].Barrier()
    for bucket in buckets:
        bucket.win.Sync()
