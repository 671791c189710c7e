"""The gradient all-reduce overlapped with the backward pass, bucket by bucket (as PyTorch's
DDP reducer): imports autograd and graph, not nn."""
from __future__ import annotations

import time
import weakref
from typing import Dict, List, Sequence, Tuple

import numpy as np

from ..autograd import Tensor
from ..graph import LEAF_GRAD_HOOKS
from . import comm as _comm
from .comm import broadcast_object

__all__ = ["GradientReducer", "OVERLAP_BUCKET_BYTES"]

OVERLAP_BUCKET_BYTES = 2 ** 20  # small enough that a 5 MiB model's buckets start in turn


def _discard(hook) -> None:
    if hook in LEAF_GRAD_HOOKS:
        LEAF_GRAD_HOOKS.remove(hook)


class GradientReducer:
    """Average `.grad` of `params` across ranks, starting each bucket's all-reduce during the
    backward pass.

    The reducer listens to the fast backward (`graph.LEAF_GRAD_HOOKS`): when the last gradient
    of a bucket is final, the bucket is packed into a host buffer and a non-blocking
    `Iallreduce` starts while the backward goes on computing the earlier layers; each later
    gradient tests the pending requests, which is what lets MPI progress them. `finish()`
    (after the backward, before the optimizer step) starts the buckets not started yet — all
    of them after a graph backward (`create_graph=True`), which calls no hook — waits, and
    assigns the averaged gradients exactly as `allreduce_gradients` does (a parameter without
    a gradient on a rank counts as zero there; it keeps `grad=None` only when no rank has one).

    Buckets hold about `bucket_bytes` (default 1 MiB: a bucket has to be a fraction of the
    model to start before the backward ends; each costs one more MPI call) of one device and
    dtype, in the order rank 0's first
    backward produced the gradients (broadcast at the first `finish()`, which overlaps
    nothing), then in reverse parameter order. Every rank starts the buckets in index order,
    as MPI requires of collectives: a complete bucket waits for the ones before it. Call
    `finish()` after every backward.
    """

    def __init__(self, params: Sequence[Tensor], bucket_bytes: int = OVERLAP_BUCKET_BYTES,
                 average: bool = True):
        self.params = list(params)
        self.bucket_bytes = int(bucket_bytes)
        self.average = average
        self._index = {id(p): i for i, p in enumerate(self.params)}
        self._arrival: List[int] = []
        self._planned = False
        self._plan(list(reversed(range(len(self.params)))))
        self._reset()
        ref = weakref.ref(self)

        def hook(leaf, grad):
            reducer = ref()
            if reducer is not None:
                reducer._on_grad(leaf, grad)

        self._hook = hook
        LEAF_GRAD_HOOKS.append(hook)
        self._finalizer = weakref.finalize(self, _discard, hook)

    def close(self) -> None:
        """Stop listening to the backward (also done when the reducer is garbage-collected)."""
        self._finalizer()

    # ---- planning ----

    def _plan(self, order: List[int]) -> None:
        groups: Dict[tuple, List[int]] = {}
        for i in order:
            data = self.params[i].realize_cached_data()
            groups.setdefault((str(data.device), np.dtype(data.dtype).str), []).append(i)
        buckets: List[List[int]] = []
        for idx in groups.values():
            bucket, size = [], 0
            for i in idx:
                nbytes = self.params[i].realize_cached_data().nbytes
                if bucket and size + nbytes > self.bucket_bytes:
                    buckets.append(bucket)
                    bucket, size = [], 0
                bucket.append(i)
                size += nbytes
            buckets.append(bucket)
        self.buckets = buckets
        self._where: Dict[int, Tuple[int, int]] = {
            i: (b, pos) for b, bucket in enumerate(buckets) for pos, i in enumerate(bucket)}
        self._meta = []
        for bucket in buckets:
            datas = [self.params[i].realize_cached_data() for i in bucket]
            self._meta.append((datas[0].device, datas[0].dtype, [d.size for d in datas],
                               [d.shape for d in datas]))

    def _reset(self) -> None:
        self._grads = [[None] * len(b) for b in self.buckets]
        self._missing = [len(b) for b in self.buckets]
        self._started = 0
        self._pending: List[tuple] = []
        self._seen = set()

    # ---- during the backward ----

    def _on_grad(self, leaf, grad) -> None:
        i = self._index.get(id(leaf))
        if i is None or self.params[i] is not leaf:
            return
        if i in self._seen:
            raise RuntimeError(f"GradientReducer: parameter {i} got a second gradient before "
                               f"finish(); call allreduce_gradients() after every backward")
        self._seen.add(i)
        if not self._planned:
            self._arrival.append(i)
            return
        b, pos = self._where[i]
        self._grads[b][pos] = grad
        self._missing[b] -= 1
        while self._started < len(self.buckets) and self._missing[self._started] == 0:
            self._start(self._started)
        if self._pending:
            t0 = time.perf_counter()
            _comm._state["MPI"].Request.Testall([req for _, _, req in self._pending])
            _comm.comm_stats["seconds"] += time.perf_counter() - t0

    def _start(self, b: int) -> None:
        device, dtype, sizes, _ = self._meta[b]
        grads = self._grads[b]
        for pos, i in enumerate(self.buckets[b]):
            if grads[pos] is None and self.params[i].grad is not None:
                grads[pos] = self.params[i].grad.realize_cached_data()
        flags = np.array([0.0 if g is None else 1.0 for g in grads])
        buf = device.pack_host(grads, sizes, dtype, extra=flags)
        MPI = _comm._state["MPI"]
        t0 = time.perf_counter()
        request = _comm._state["comm"].Iallreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
        _comm.comm_stats["seconds"] += time.perf_counter() - t0
        _comm.comm_stats["calls"] += 1
        _comm.comm_stats["bytes"] += buf.nbytes
        self._pending.append((b, buf, request))
        self._started += 1

    # ---- after the backward ----

    def finish(self) -> None:
        """Wait for every bucket's all-reduce and assign the averaged gradients."""
        if not _comm.is_distributed():
            self._reset()
            return
        if not self._planned:
            order = list(broadcast_object(self._arrival))
            arrived = set(order)  # reverse parameter order for the rest (the first plan's)
            order += [i for i in reversed(range(len(self.params))) if i not in arrived]
            self._plan(order)
            self._planned = True
            self._reset()
        for b in range(self._started, len(self.buckets)):
            self._start(b)
        t0 = time.perf_counter()
        _comm._state["MPI"].Request.Waitall([req for _, _, req in self._pending])
        _comm.comm_stats["seconds"] += time.perf_counter() - t0
        scale = 1.0 / _comm._state["size"]
        for b, buf, _ in self._pending:
            device, dtype, sizes, shapes = self._meta[b]
            n_values = int(sum(sizes))
            if self.average:
                buf[:n_values] *= buf.dtype.type(scale)
            values = device.from_host(buf[:n_values])  # views of it become the gradients
            off = 0
            for i, n, shape, flag in zip(self.buckets[b], sizes, shapes, buf[n_values:]):
                if flag > 0:
                    g = values.select(slice(off, off + n)).reshape(shape)
                    self.params[i].grad = Tensor.make_const(g)
                off += n
        self._reset()
