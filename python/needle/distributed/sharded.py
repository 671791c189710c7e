"""A ZeRO-1 optimizer step: each rank updates, and keeps optimizer state for, only its shard of
the parameters (imports autograd and optim, not nn)."""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional

import numpy as np

from ..optim.optimizers import Optimizer
from . import comm as _comm
from .comm import DEFAULT_BUCKET_BYTES, allgather_object, allreduce_array, is_distributed
from .overlap import GradientReducer, resolve_transport
from .shm import sync_all

__all__ = ["ShardedOptimizer"]


class _Piece:
    """The part of one parameter inside this rank's shard of a bucket: elements [lo, hi) of
    the bucket, views of the flat parameter buffer (`w`) and of the reduced shard (`g`)."""

    __slots__ = ("param", "lo", "hi", "start", "w", "g", "state")

    def __init__(self, param, lo, hi, start, w, g):
        self.param, self.lo, self.hi, self.start = param, lo, hi, start
        self.w, self.g = w, g
        self.state: Dict[str, Any] = {}


class ShardedOptimizer:
    """Shard `optimizer`'s step over the ranks of a `DistributedDataParallel` model (ZeRO-1).

    The model's gradient buckets are reduce-scattered instead of all-reduced (overlapped with
    the backward as before): rank r receives the averaged gradient of its 1/N of each bucket
    only. `step()` applies `optimizer`'s own per-element rule (`_update`, with its current
    hyperparameters and step count) to that shard, whose optimizer state (momentum, Adam
    moments) lives on rank r alone, then all-gathers the updated parameters in place: the
    parameters live in one flat buffer per bucket (each parameter's data is a view of it), so
    the all-gather writes them directly. Per rank: 1/N of the update work and of the optimizer
    state; on the wire: a reduce-scatter plus an all-gather, the volume of one all-reduce.
    The rules are elementwise, so the weights equal the unsharded step's.

    `transport="auto"` (the default) picks `"shm"` when every rank is on this machine
    (`shm.shared_memory_available()`): the buckets and the parameters then live in MPI shared
    windows, each rank sums the ranks' gradients over its own shard straight from the others'
    memory, and a barrier stands for the all-gather (one copy of the parameters per machine);
    `"mpi"` uses `Ireduce_scatter_block` and `Iallgather`. `bucket_bytes` defaults to the
    model's (25 MiB at least with shared memory, where no bucket overlaps the backward). With
    `"shm"` the parameters must not be read between `allreduce_gradients()` and `step()`
    (other ranks are writing them), and a state dict is loaded on every rank.

    Usage (the loop is unchanged; with one process this is `optimizer` itself)::

        model = dist.DistributedDataParallel(net)
        opt = dist.ShardedOptimizer(ndl.optim.Adam(model.parameters(), lr=1e-3), model)
        ...; loss.backward(); model.allreduce_gradients(); opt.step()

    After `allreduce_gradients()`, `.grad` holds this rank's local gradient (the averaged one
    exists only in shards): use `opt.clip_grad_norm(max_norm)`, which works on the shards.
    `state_dict()` gathers the full state in `optimizer`'s own format (call it on every rank),
    so checkpoints load into an unsharded optimizer and back. Needs CPU parameters and an
    optimizer whose `step` is the base class's (SGD, Adam, AdamW, AdaGrad, RMSProp).
    """

    def __init__(self, optimizer: Optimizer, model, wait: str = "spin", test_every: int = 1,
                 transport: str = "auto", bucket_bytes: Optional[int] = None):
        if not isinstance(optimizer, Optimizer) or type(optimizer).step is not Optimizer.step:
            raise TypeError("ShardedOptimizer: needs an optimizer with an elementwise rule "
                            "(SGD, Adam, AdamW, AdaGrad, RMSProp), got "
                            f"{type(optimizer).__name__}")
        self.optimizer = optimizer
        self.model = model
        self.reducer = None
        self._pieces: List[_Piece] = []
        self._views: List = []
        if not is_distributed():
            return
        if not hasattr(model, "reducer"):
            raise TypeError("ShardedOptimizer: `model` must be a DistributedDataParallel, got "
                            f"{type(model).__name__}")
        if {id(p) for p in model.parameters()} != {id(p) for p in optimizer.params}:
            raise ValueError("ShardedOptimizer: the optimizer's parameters must be the model's")
        try:
            transport = self.transport = resolve_transport(optimizer.params, transport)
        except ValueError as e:
            raise ValueError(f"ShardedOptimizer: {e}") from None
        if model.reducer is not None:
            model.reducer.close()
        if bucket_bytes is None:  # shared memory overlaps nothing: few large buckets
            bucket_bytes = (max(model.bucket_bytes, DEFAULT_BUCKET_BYTES)
                            if transport == "shm" else model.bucket_bytes)
        self.reducer = GradientReducer(optimizer.params, bucket_bytes, shard=True,
                                       wait=wait, test_every=test_every, transport=transport)
        model.reducer = self.reducer
        self._plan_of = None

    # ---- what the trainer calls ----

    @property
    def params(self):
        return self.optimizer.params

    @property
    def lr(self) -> float:
        return self.optimizer.lr

    @lr.setter
    def lr(self, value: float) -> None:
        self.optimizer.lr = value

    def __getattr__(self, name):  # t, state, momentum, ...: the wrapped optimizer's
        if name == "optimizer":  # not yet set
            raise AttributeError(name)
        return getattr(self.optimizer, name)

    def reset_grad(self) -> None:
        self.optimizer.reset_grad()

    zero_grad = reset_grad

    def hyperparameters(self) -> Dict[str, Any]:
        return self.optimizer.hyperparameters()

    def step(self) -> None:
        """Update this rank's shard in place, then all-gather the parameters."""
        if self.reducer is None:
            self.optimizer.step()
            return
        if not hasattr(self.reducer, "has_grad"):
            raise RuntimeError("ShardedOptimizer.step: call model.allreduce_gradients() after "
                               "the backward first")
        self._build()
        opt = self.optimizer
        opt.t += 1
        for piece in self._pieces:
            if self.reducer.has_grad[piece.param]:
                g = piece.g if piece.g.dtype == piece.w.dtype else piece.g.astype(piece.w.dtype)
                opt._update(piece.w, g, piece.state)
        if self.transport == "shm":  # the parameters are shared: a barrier gathers them
            sync_all(self.reducer._shared)
        else:
            MPI, comm = _comm._state["MPI"], _comm._state["comm"]
            requests = [comm.Iallgather(MPI.IN_PLACE, flat) for flat in self._flat]
            _comm.comm_stats["calls"] += len(requests)
            _comm.comm_stats["bytes"] += sum(flat.nbytes for flat in self._flat)
            self.reducer._wait(requests)
        del self.reducer.has_grad

    def clip_grad_norm(self, max_norm: float = 0.25) -> float:
        """Scale the averaged gradients so that their global L2 norm is at most `max_norm`
        (the norm of the whole model's gradient: the shards' sums of squares, all-reduced)."""
        if self.reducer is None:
            return self.optimizer.clip_grad_norm(max_norm)
        self._build()
        local = 0.0
        for piece in self._pieces:
            if self.reducer.has_grad[piece.param]:
                local += float((piece.g * piece.g).sum().item())
        total = math.sqrt(float(allreduce_array(np.array([local]))[0]))
        if total > max_norm:
            scale = max_norm / (total + 1e-6)
            for b in range(len(self.reducer.buckets)):
                shard = self.reducer.shard_grad(b)
                shard *= scale
        return total

    def close(self) -> None:
        """Give every parameter its own copy of its data again and stop the sharded reducer
        (the model's all-reduce is then the blocking one). Shared windows stay mapped until
        MPI finalizes, so arrays taken from the parameters before stay valid. Take
        `state_dict()` before: the other ranks' shards of the state are not kept."""
        if self.reducer is None:
            return
        for p, view in zip(self.params, self._views):
            if view is not None and p.cached_data is view:
                p.cached_data = view.copy()
        self.reducer.close()
        if getattr(self.model, "reducer", None) is self.reducer:
            self.model.reducer = None  # the model's all-reduce is the blocking one again
        self.reducer = None
        self._views = []
        self._pieces = []

    def local_state_size(self) -> int:
        """Elements of optimizer state held on this rank (about 1/N of the unsharded
        optimizer's once every parameter has been updated)."""
        if self.reducer is None:
            return sum(v.size for e in self.optimizer.state.values() for v in e.values())
        return sum(v.size for piece in self._pieces for v in piece.state.values())

    # ---- the flat parameter buffers ----

    def _build(self) -> None:
        """Make every parameter a view of its bucket's flat buffer and cut this rank's shard
        into pieces; again whenever a parameter's data was replaced (a loaded state dict)."""
        reducer = self.reducer
        if self._plan_of is reducer.buckets and all(
                p.cached_data is v for p, v in zip(self.params, self._views)):
            self._restore_state()
            return
        full_state = self._full_state()
        rank = _comm._state["rank"]
        shared = self.transport == "shm"
        self._flat, self._pieces = [], []
        self._views = [None] * len(self.params)
        for b in range(len(reducer.buckets)):
            lay = reducer.layout(b)
            # one copy per machine with shared memory (rank 0 fills it: the ranks are equal)
            flat = lay.shared.extra[0] if shared else np.zeros(lay.padded, dtype=lay.dtype)
            flat_nd = lay.device.from_host(flat)
            lo_shard = rank * lay.chunk
            for i, off, n, shape in zip(lay.members, lay.offsets, lay.sizes, lay.shapes):
                view = flat_nd.select(slice(off, off + n)).reshape(shape)
                if not shared or rank == 0:
                    view.assign(self.params[i].realize_cached_data())
                self._views[i] = view
                lo, hi = max(off, lo_shard), min(off + n, lo_shard + lay.chunk)
                if lo < hi:
                    g = reducer.shard_grad(b).select(slice(lo - lo_shard, hi - lo_shard))
                    self._pieces.append(_Piece(i, lo - off, hi - off, lo,
                                               flat_nd.select(slice(lo, hi)), g))
            self._flat.append(flat)
        if shared:
            sync_all(reducer._shared)  # rank 0's copy is in before any rank updates
        for i, view in enumerate(self._views):
            self.params[i].cached_data = view
        self._plan_of = reducer.buckets
        self.optimizer.state.update(full_state)
        self._restore_state()

    def _full_state(self) -> Dict:
        """The pieces' state as whole-parameter arrays (this rank's part filled, the rest
        zero: only used to re-cut the pieces on this rank), merged with `optimizer.state`."""
        state = dict(self.optimizer.state)
        for piece in self._pieces:
            p = self.params[piece.param]
            if p in state or not piece.state:
                continue
            state[p] = {}
        for piece in self._pieces:
            p = self.params[piece.param]
            for k, v in piece.state.items():
                full = state[p].get(k)
                if full is None:
                    full = state[p][k] = p.realize_cached_data() * 0
                full.reshape((full.size,)).select(slice(piece.lo, piece.hi)).assign(v)
        return state

    def _restore_state(self) -> None:
        """Cut `optimizer.state` (set by `load_state_dict` or carried over from before
        sharding) into the pieces, and drop it: each rank keeps only its shard's state."""
        state = self.optimizer.state
        if not state:
            return
        for piece in self._pieces:
            entry = state.get(self.params[piece.param])
            if entry:
                piece.state = {k: v.reshape((v.size,)).select(slice(piece.lo, piece.hi))
                               .copy() for k, v in entry.items()}
        state.clear()

    # ---- checkpoints ----

    def state_dict(self) -> Dict[str, Any]:
        """The unsharded optimizer's `state_dict()` (gathered from every rank: call it on all
        of them, as every collective)."""
        if self.reducer is None or not self._pieces:
            return self.optimizer.state_dict()
        mine = [(piece.param, piece.lo, piece.hi, {k: v.numpy() for k, v in
                                                  piece.state.items()})
                for piece in self._pieces if piece.state]
        out = self.optimizer.state_dict()
        state = {}
        for parts in allgather_object(mine):
            for i, lo, hi, arrays in parts:
                shape = tuple(self.params[i].shape)
                entry = state.setdefault(i, {})
                for k, v in arrays.items():
                    full = entry.setdefault(k, np.zeros(int(np.prod(shape)), dtype=v.dtype))
                    full[lo:hi] = v
        out["state"] = {i: {k: v.reshape(tuple(self.params[i].shape)) for k, v in e.items()}
                        for i, e in sorted(state.items())}
        return out

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        """Load an (unsharded) optimizer state: this rank keeps its shard of it."""
        self.optimizer.load_state_dict(state_dict)
        for piece in self._pieces:
            piece.state = {}
        if self.reducer is not None and self._pieces:
            self._restore_state()
