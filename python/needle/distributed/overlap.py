"""The gradient all-reduce overlapped with the backward pass, bucket by bucket (as PyTorch's
DDP reducer), and its reduce-scatter form for the sharded optimizer: imports autograd and
graph, not nn."""
from __future__ import annotations

import time
import weakref
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..autograd import Tensor
from ..graph import LEAF_GRAD_HOOKS
from . import comm as _comm
from .comm import broadcast_object
from .shm import SharedBucket, shared_memory_available, sync_all

__all__ = ["GradientReducer", "OVERLAP_BUCKET_BYTES", "WAIT_MODES"]

OVERLAP_BUCKET_BYTES = 2 ** 20  # small enough that a 5 MiB model's buckets start in turn
WAIT_MODES = ("spin", "yield")
YIELD_SECONDS = 20e-6  # the nap between two tests of a "yield" wait
KEEP_MIN = 1 << 14  # values: a smaller gradient in a rank's own shard is copied all the same


def _discard(hook) -> None:
    if hook in LEAF_GRAD_HOOKS:
        LEAF_GRAD_HOOKS.remove(hook)


def host_resident(device) -> bool:
    """Whether `device.from_host(buffer)` is a view of the NumPy buffer (the CPU), so that
    gradients can be written straight into the buffer MPI sends."""
    probe = np.zeros(1, dtype=np.float32)
    device.from_host(probe).assign(1.0)
    return bool(probe[0] == 1.0)


def resolve_transport(params: Sequence[Tensor], transport: str) -> str:
    """`transport` ("mpi", "shm" or "auto": shared memory when every rank is on this machine
    and every parameter on the CPU) as "mpi" or "shm"."""
    if transport not in ("auto", "mpi", "shm"):
        raise ValueError(f"transport must be 'auto', 'mpi' or 'shm', got {transport!r}")
    if transport != "auto":
        return transport
    if not shared_memory_available():
        return "mpi"
    on_cpu = all(host_resident(p.realize_cached_data().device) for p in params)
    return "shm" if on_cpu else "mpi"


class _Bucket:
    """One bucket's layout and its host buffers: values (padded to a multiple of the world
    size, for a reduce-scatter), then one "has a gradient" flag per parameter."""

    def __init__(self, params: List[Tensor], members: List[int], world: int, phases: int):
        datas = [params[i].realize_cached_data() for i in members]
        self.members = members
        self.device, self.dtype = datas[0].device, datas[0].dtype
        self.sizes = [d.size for d in datas]
        self.shapes = [d.shape for d in datas]
        self.offsets = [int(o) for o in np.cumsum([0] + self.sizes[:-1])]
        self.n_values = int(sum(self.sizes))
        self.chunk = -(-self.n_values // world)  # one rank's shard of a reduce-scatter
        self.padded = self.chunk * world
        self.host = host_resident(self.device)
        self.buffers: List[Optional[np.ndarray]] = [None] * phases
        self.slots: List[Optional[list]] = [None] * phases
        self.values: List = [None] * phases
        self.shared = None  # a shm.SharedBucket when the ranks share memory
        if self.host:  # written in place by the hooks: one buffer per phase, kept
            for k in range(phases):
                self.use_buffer(k, np.zeros(self.padded + len(members), dtype=self.dtype))

    def use_buffer(self, k: int, buf: np.ndarray) -> None:
        """Make `buf` (values, then flags) phase k's buffer, with views for each gradient."""
        values = self.device.from_host(buf[:self.padded])
        self.buffers[k], self.values[k] = buf, values
        self.slots[k] = [values.select(slice(o, o + n)).reshape(s) for o, n, s
                         in zip(self.offsets, self.sizes, self.shapes)]

    def flags(self, buf: np.ndarray) -> np.ndarray:
        return buf[self.padded:]


def _own_segments(lay: _Bucket, lo: int):
    """This rank's shard [lo, lo + chunk) of a bucket cut into segments (start, end, pos) in
    shard coordinates: pos is the member whose whole gradient the segment is (kept by this
    rank: no other rank reads it), None for a run read from the rank's shared region; and,
    per member, whether it is kept. Gradients under KEEP_MIN values are copied all the same:
    a run of them is one segment."""
    hi = lo + lay.chunk
    kept = [lo <= off and off + n <= hi and n >= KEEP_MIN
            for off, n in zip(lay.offsets, lay.sizes)]
    segments, at = [], lo
    for pos, (off, n) in enumerate(zip(lay.offsets, lay.sizes)):
        if kept[pos]:
            if off > at:
                segments.append((at - lo, off - lo, None))
            segments.append((off - lo, off + n - lo, pos))
            at = off + n
    if at < hi:
        segments.append((at - lo, hi - lo, None))
    return segments, kept


class GradientReducer:
    """Average `.grad` of `params` across ranks, starting each bucket's all-reduce during the
    backward pass.

    The reducer listens to the fast backward (`graph.LEAF_GRAD_HOOKS`): each gradient is
    written into its slot of its bucket's host buffer the moment it is final (on the CPU the
    buffer is what MPI sends: no packing later), and when a bucket is complete a non-blocking
    `Iallreduce` starts while the backward goes on computing the earlier layers; later
    gradients test the pending requests (every `test_every`-th one; 0: never), which is what
    lets MPI progress them. `finish()` (after the backward, before the optimizer step) starts
    the buckets not started yet — all of them after a graph backward (`create_graph=True`),
    which calls no hook — waits (`wait="spin"`: in MPI's busy wait; `"yield"`: tests with
    short naps, leaving the core to a process that shares it), scales by 1/world_size and
    assigns the averaged gradients as views of the buffer (a parameter without a gradient on
    a rank counts as zero there; it keeps `grad=None` only when no rank has one). The CPU
    buffers alternate between two sets, so the gradients of one step stay valid while the
    next backward fills the other.

    With `shard=True` (used by `ShardedOptimizer`) a bucket is reduce-scattered instead:
    rank r keeps the sum of elements [r*chunk, (r+1)*chunk) of the bucket (`shard_grad`), and
    `.grad` keeps this rank's local gradient.

    `transport="shm"` (what "auto", the default, picks when every rank is on this machine:
    `shm.shared_memory_available()`, and the parameters on the CPU) puts the buckets in
    MPI-3 shared windows: the hooks write into this rank's region the gradients other ranks
    read (a gradient of at least KEEP_MIN values wholly inside this rank's own shard stays
    where the backward left it), and `finish()` waits at a barrier and sums the ranks'
    contributions over this rank's shard itself, one pass per run of the shard, with no MPI
    data movement (and no overlap, there being nothing left to overlap but the barrier). Without
    `shard`, each rank writes its summed shard into a shared result buffer and, after a
    second barrier, every rank's gradients are views of the whole result (two result buffers
    alternate, as the host buffers do).

    Buckets hold about `bucket_bytes` (default 1 MiB: a bucket has to be a fraction of the
    model to start before the backward ends; each costs one more MPI call) of one device and
    dtype, in the order rank 0's first backward produced the gradients (broadcast at the
    first `finish()`, which overlaps nothing), then in reverse parameter order. Every rank
    starts the buckets in index order, as MPI requires of collectives: a complete bucket
    waits for the ones before it. Call `finish()` after every backward.
    """

    def __init__(self, params: Sequence[Tensor], bucket_bytes: int = OVERLAP_BUCKET_BYTES,
                 average: bool = True, test_every: int = 1, wait: str = "spin",
                 shard: bool = False, transport: str = "auto"):
        if wait not in WAIT_MODES:
            raise ValueError(f"GradientReducer: wait must be one of {WAIT_MODES}, got {wait!r}")
        self.params = list(params)
        try:
            self.transport = resolve_transport(self.params, transport)
        except ValueError as e:
            raise ValueError(f"GradientReducer: {e}") from None
        self.bucket_bytes = int(bucket_bytes)
        self.average = average
        self.test_every = int(test_every)
        self.wait = wait
        self.shard = bool(shard)
        self._index = {id(p): i for i, p in enumerate(self.params)}
        self._arrival: List[int] = []
        self._planned = False
        self._phase = 0
        self._segments: List[tuple] = []  # shared memory: per bucket, _own_segments
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
        # a reduce-scatter needs equal shards: pad to a multiple of the world size
        split = self.shard or self.transport == "shm"
        world = _comm._state["size"] if split and _comm.is_distributed() else 1
        # the sharded optimizer keeps its reduced shards until the step: one buffer set
        phases = self._phases = 1 if self.shard else 2
        self._layout = [_Bucket(self.params, bucket, world, phases) for bucket in buckets]
        if self.shard:
            if not all(lay.host for lay in self._layout):
                raise ValueError("GradientReducer(shard=True): the sharded optimizer needs "
                                 "parameters on the CPU (a host-resident device)")
            self._shard_host = [np.zeros(lay.chunk, dtype=lay.dtype) for lay in self._layout]
            self._shards = [lay.device.from_host(h)
                            for lay, h in zip(self._layout, self._shard_host)]

    def _share(self) -> None:
        """Move the buckets into shared windows (collective: once, after the final plan)."""
        rank = _comm._state["rank"]
        self._shared = []
        self._rank_chunks, self._results, self._segments = [], [], []
        for lay in self._layout:
            # the sharded optimizer's parameters, or two result buffers (one per phase)
            lay.shared = SharedBucket(lay.padded, len(lay.members), lay.dtype,
                                      n_extra=1 if self.shard else 2)
            for k in range(self._phases):  # the hooks write into this rank's region
                lay.use_buffer(k, lay.shared.grads[rank])
            self._shared.append(lay.shared)
            lo = rank * lay.chunk
            # every rank's gradients in this rank's shard
            self._rank_chunks.append([lay.device.from_host(g[lo:lo + lay.chunk])
                                      for g in lay.shared.grads])
            self._segments.append(_own_segments(lay, lo))
            if not self.shard:  # the result: this rank's chunk, and the whole as gradients
                results = [lay.device.from_host(r) for r in lay.shared.extra]
                self._results.append(
                    ([r.select(slice(lo, lo + lay.chunk)) for r in results],
                     [[r.select(slice(o, o + n)).reshape(sh) for o, n, sh
                       in zip(lay.offsets, lay.sizes, lay.shapes)] for r in results]))

    def _reset(self) -> None:
        self._filled = [[False] * len(b) for b in self.buckets]
        self._grads: List[list] = [[None] * len(b) for b in self.buckets]
        # shared memory: the gradients that lie wholly in this rank's shard stay where the
        # backward put them (nobody else reads them); the others go into the shared region
        self._kept: List[list] = [[None] * len(b) for b in self.buckets]
        self._missing = [len(b) for b in self.buckets]
        self._started = 0
        self._arrived = 0
        self._pending: List[tuple] = []
        self._seen = set()

    # ---- during the backward ----

    def _keeps(self, b: int, pos: int) -> bool:
        """Whether member `pos` of bucket b stays where the backward leaves it (shared
        memory: wholly in this rank's own shard)."""
        return bool(self._segments) and self._segments[b][1][pos]

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
        lay = self._layout[b]
        if self._keeps(b, pos):
            self._kept[b][pos] = grad
        elif lay.host:
            lay.slots[self._phase][pos].assign(grad)
        else:
            self._grads[b][pos] = grad
        self._filled[b][pos] = True
        self._missing[b] -= 1
        while self._started < len(self.buckets) and self._missing[self._started] == 0:
            self._start(self._started)
        self._arrived += 1
        if (self._pending and self.test_every and self.transport == "mpi"
                and self._arrived % self.test_every == 0):
            t0 = time.perf_counter()
            _comm._state["MPI"].Request.Testall([req for _, _, req in self._pending])
            _comm.comm_stats["seconds"] += time.perf_counter() - t0

    def _start(self, b: int) -> None:
        lay = self._layout[b]
        flags = np.ones(len(lay.members), dtype=lay.dtype)
        for pos, i in enumerate(lay.members):
            if self._filled[b][pos]:
                continue
            grad = self.params[i].grad  # set by a graph backward or by hand
            data = None if grad is None else grad.realize_cached_data()
            if self._keeps(b, pos):
                self._kept[b][pos] = data
            elif lay.host:
                lay.slots[self._phase][pos].assign(0.0 if data is None else data)
            else:
                self._grads[b][pos] = data
            flags[pos] = 0.0 if data is None else 1.0
        if lay.host:
            buf = lay.buffers[self._phase]
            lay.flags(buf)[...] = flags
        else:
            buf = lay.device.pack_host(self._grads[b] + [None],
                                       lay.sizes + [lay.padded - lay.n_values], lay.dtype,
                                       extra=flags)
        if self.transport == "shm":  # summed after the barrier in finish()
            self._pending.append((b, buf, None))
            self._started += 1
            return
        MPI, comm = _comm._state["MPI"], _comm._state["comm"]
        t0 = time.perf_counter()
        if self.shard:
            request = comm.Ireduce_scatter_block(buf[:lay.padded], self._shard_host[b],
                                                 op=MPI.SUM)
        else:
            request = comm.Iallreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
        _comm.comm_stats["seconds"] += time.perf_counter() - t0
        _comm.comm_stats["calls"] += 1
        _comm.comm_stats["bytes"] += buf.nbytes
        self._pending.append((b, buf, request))
        self._started += 1

    # ---- after the backward ----

    def _wait(self, requests) -> None:
        requests = [r for r in requests if r is not None]
        if not requests:
            return
        MPI = _comm._state["MPI"]
        t0 = time.perf_counter()
        if self.wait == "spin":
            MPI.Request.Waitall(requests)
        else:
            while not MPI.Request.Testall(requests):
                time.sleep(YIELD_SECONDS)
        _comm.comm_stats["seconds"] += time.perf_counter() - t0

    def finish(self) -> None:
        """Wait for every bucket's all-reduce and assign the averaged gradients (with
        `shard=True`: keep the averaged shards and the global "has a gradient" flags)."""
        if not _comm.is_distributed():
            self._reset()
            return
        if not self._planned:
            order = list(broadcast_object(self._arrival))
            arrived = set(order)  # reverse parameter order for the rest (the first plan's)
            order += [i for i in reversed(range(len(self.params))) if i not in arrived]
            self._plan(order)
            if self.transport == "shm":
                self._share()
            self._planned = True
            self._reset()
        for b in range(self._started, len(self.buckets)):
            self._start(b)
        self._wait([req for _, _, req in self._pending])
        scale = 1.0 / _comm._state["size"]
        if self.transport == "shm":
            self._reduce_shared(scale)
            if not self.shard:
                self._assign_shared()
        elif self.shard:
            self._finish_shards(scale)
        else:
            for b, buf, _ in self._pending:
                self._assign(b, buf, scale)
        self._reset()
        self._phase = (self._phase + 1) % self._phases

    def _assign(self, b: int, buf: np.ndarray, scale: float) -> None:
        lay = self._layout[b]
        if lay.host:
            values, slots = lay.values[self._phase], lay.slots[self._phase]
            if self.average:
                values *= scale
        else:
            values = lay.device.from_host(buf[:lay.padded])  # views of it become the grads
            if self.average:
                values *= scale
            slots = [values.select(slice(o, o + n)).reshape(s) for o, n, s
                     in zip(lay.offsets, lay.sizes, lay.shapes)]
        for i, slot, flag in zip(lay.members, slots, lay.flags(buf)):
            if flag > 0:
                self.params[i].grad = Tensor.make_const(slot)

    def _finish_shards(self, scale: float) -> None:
        flags = np.concatenate([lay.flags(buf) for lay, buf in
                                ((self._layout[b], buf) for b, buf, _ in self._pending)])
        _comm.allreduce_array(flags)  # which parameters have a gradient on some rank
        self.has_grad = {}
        off = 0
        for b, _, _ in self._pending:
            lay = self._layout[b]
            for i, flag in zip(lay.members, flags[off:off + len(lay.members)]):
                self.has_grad[i] = bool(flag > 0)
            off += len(lay.members)
            if self.average:
                self._shards[b] *= scale

    def _reduce_shared(self, scale: float) -> None:
        """This rank's shard of each bucket: the ranks' regions summed in rank order and
        scaled, one pass per segment (this rank's own part of a kept gradient read where the
        backward left it)."""
        t0 = time.perf_counter()
        sync_all(self._shared)  # every rank's gradients are in
        self.has_grad = {}
        rank = _comm._state["rank"]
        factor = scale if self.average else 1.0
        for b, lay in enumerate(self._layout):
            shard = self._shards[b] if self.shard else self._results[b][0][self._phase]
            chunks = self._rank_chunks[b]
            for start, end, pos in self._segments[b][0]:
                part = slice(start, end)
                terms = []
                for r, chunk in enumerate(chunks):
                    if r != rank or pos is None:
                        terms.append(chunk.select(part))
                    elif self._kept[b][pos] is not None:  # else no gradient here: zero
                        terms.append(self._kept[b][pos].reshape((end - start,)))
                lay.device.sum_scaled(terms, factor, shard.select(part))
            flags = [lay.flags(g) for g in lay.shared.grads]
            for pos, i in enumerate(lay.members):
                self.has_grad[i] = any(f[pos] > 0 for f in flags)
        sync_all(self._shared)  # no rank writes its region again before all have summed
        _comm.comm_stats["seconds"] += time.perf_counter() - t0

    def _assign_shared(self) -> None:
        """Every rank's gradients: views of the shared result of this phase (all summed)."""
        for b, lay in enumerate(self._layout):
            slots = self._results[b][1][self._phase]
            for i, slot in zip(lay.members, slots):
                if self.has_grad[i]:
                    self.params[i].grad = Tensor.make_const(slot)
        del self.has_grad

    def shard_grad(self, b: int):
        """Bucket b's reduced (averaged) shard of this rank, a 1-D NDArray of `chunk` values:
        elements [rank*chunk, (rank+1)*chunk) of the bucket's flattened gradients."""
        return self._shards[b]

    def layout(self, b: int) -> _Bucket:
        return self._layout[b]
