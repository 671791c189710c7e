"""The memory plan: which intermediates of a plan live in memory allocated once and reused.

A value's memory is its *block*: the value and every view of it (reshapes, transposes,
broadcasts, slices, im2col windows), found by address in the recording
(`Recorder.memory_blocks`). A block is alive from the event that makes its first value to
the last event that reads any of them. An intermediate is *pooled* when

- its kernel has an out form (backend_ndarray/out_kernels.py: elementwise, fused, matmul,
  sum/max, copies, constructors), so a replay writes it into a given array;
- it is a float32, row-major array that owns its memory (not a view of something else);
- no value of its block outlives the replay: none is returned, none is a parameter's new
  `.grad`. Inputs, parameters, optimizer moments and running statistics are never pooled
  (they are not intermediates), so in-place kernels keep writing the state itself.

Pooled values live in one *arena* per device and dtype, a flat array allocated once when the
plan is built and held by the plan; each value has a byte range of it (its *slot*, a
row-major view of its shape). Two values may share bytes when their blocks' lifetimes do
not overlap; a value's bytes are free again after the last event of its block, never during
the event that makes it (an out kernel never writes over its inputs). Slots are placed
greedily by size (largest first, at the lowest offset clear of every slot whose lifetime
overlaps; TFLite's "greedy by size"), 16-byte aligned as malloc's blocks are.

`peak` counts the bytes of intermediates a replay holds at its fullest event: the arenas plus
the unpooled blocks alive then; `peak_unpooled` is the same count with no pool. Arena bytes
idle while the unpooled plan peaks would be bytes an unpooled plan gives back; so while some
event holds more than the unpooled peak, the values placed highest in the arena that are
not alive there are left to allocate as before, and placed again. The pooled peak is
therefore never above the unpooled one.
"""
from __future__ import annotations

from ..backend_ndarray.out_kernels import out_form
from ..backend_ndarray.recording import Ref

__all__ = ["MemoryPlan", "plan_memory"]


_ALIGN = 16  # bytes: slots are aligned as malloc aligns (and sized as it rounds)
_MAX_ROUNDS = 64  # placements tried before giving the pool up (the unpooled plan is kept)


class MemoryPlan:
    """`slots`: value id -> (arena index, byte offset); `forms`: value id -> its out kernel;
    `arenas`: [(device, dtype, nbytes)]; `peak` and `peak_unpooled`: bytes of intermediates
    at the fullest event, with and without the pool."""

    def __init__(self, slots, forms, arenas, peak, peak_unpooled):
        self.slots, self.forms, self.arenas = slots, forms, arenas
        self.peak, self.peak_unpooled = peak, peak_unpooled

    @property
    def pool_bytes(self) -> int:
        return sum(a[2] for a in self.arenas)


def plan_memory(rec, arg_vids, keep, reuse: bool = True) -> MemoryPlan:
    """The memory plan of the (fused) recording `rec`; `keep`: values that outlive a replay
    (outputs, gradients). `reuse=False`: no pool, only the unpooled peak is counted."""
    events, values = rec.events, rec.values
    n = len(events)
    made, last = _lifetimes(events, arg_vids)
    block_of = rec.memory_blocks()
    members = {}
    for v, b in block_of.items():
        members.setdefault(b, []).append(v)
    span = {}  # block -> (first event, last event, bytes) of intermediate blocks
    for b, vs in members.items():
        if not all(v in made for v in vs):
            continue  # holds an input or state: not an intermediate
        start = min(made[v] for v in vs)
        end = n if any(v in keep for v in vs) else max(max(last.get(v, made[v]), made[v])
                                                         for v in vs)
        lo = min(values[v].extent[0] for v in vs)
        hi = max(values[v].extent[1] for v in vs)
        span[b] = (start, end, _aligned(hi - lo))
    unpooled = _live(span.values(), n)
    limit = max(unpooled, default=0)
    peak_at = unpooled.index(limit) if unpooled else 0
    candidates = {}  # value id -> (arena key, out form, block)
    if reuse:
        for v, i in made.items():
            info = values[v]
            b = block_of.get(v)
            if (b is None or b not in span or span[b][1] == n or info.dtype != "float32"
                    or not info.owns or not info.contiguous
                    or span[b][2] != _aligned(info.nbytes) or events[i].outputs != v):
                continue
            form = out_form(events[i], values)
            if form is not None:
                candidates[v] = ((info.array.device.name, info.dtype), form, b)
    banned = set()
    for _ in range(_MAX_ROUNDS):
        chosen = {v: c for v, c in candidates.items() if v not in banned}
        slots, tops = _place(chosen, made, span, peak_at)
        pooled_blocks = {chosen[v][2] for v in slots}
        pool = sum(tops.values())
        live = [pool + x for x in _live([s for b, s in span.items()
                                          if b not in pooled_blocks], n)]
        peak = max(live, default=0)
        if peak <= limit:
            break
        # leave out what sits above the arena size that event can afford, unless alive there
        t = next(i for i, x in enumerate(live) if x > limit)
        over = live[t] - limit
        out = [v for v, (key, off) in slots.items()
               if off + _aligned(span[chosen[v][2]][2]) > tops[key] - over
               and not made[v] <= t <= span[chosen[v][2]][1]]
        if not out:  # everything above is alive there: the highest value goes
            out = [max(slots, key=lambda v: slots[v][1] + span[chosen[v][2]][2])]
        banned.update(out)
    else:
        slots, tops, peak = {}, {}, limit
    keys = sorted(tops)
    arenas = []
    for key in keys:
        device = next(values[v].array.device for v, (k, _) in slots.items() if k == key)
        arenas.append((device, key[1], tops[key]))
    slots = {v: (keys.index(k), off) for v, (k, off) in slots.items()}
    forms = {v: candidates[v][1] for v in slots}
    return MemoryPlan(slots, forms, arenas, peak, limit)


def _aligned(nbytes):
    return -(-nbytes // _ALIGN) * _ALIGN


def _place(chosen, made, span, peak_at):
    """(value id -> (arena key, offset), arena key -> bytes). The values alive at the
    unpooled peak (event `peak_at`) are placed first, greedy by size; the arena they need is
    then the most the others may use: they are placed the same way below that size, or left
    unpooled (a larger arena would hold more than the unpooled plan at its peak)."""
    def size(v):
        return -span[chosen[v][2]][2], made[v]

    alive = [v for v in chosen if made[v] <= peak_at <= span[chosen[v][2]][1]]
    others = [v for v in chosen if not made[v] <= peak_at <= span[chosen[v][2]][1]]
    placed = {}  # arena key -> [(first, last, offset, end offset)]
    slots, tops = {}, {}
    for group, capped in ((sorted(alive, key=size), False), (sorted(others, key=size), True)):
        for v in group:
            key, _, b = chosen[v]
            first, last, nbytes = span[b][0], span[b][1], _aligned(span[b][2])
            busy = sorted((lo, hi) for f, e, lo, hi in placed.get(key, ())
                          if f <= last and first <= e)
            off = 0
            for lo, hi in busy:
                if off + nbytes <= lo:
                    break
                off = max(off, hi)
            if capped and off + nbytes > tops.get(key, 0):
                continue
            placed.setdefault(key, []).append((first, last, off, off + nbytes))
            slots[v] = (key, off)
            tops[key] = max(tops.get(key, 0), off + nbytes)
    return slots, tops


def _lifetimes(events, arg_vids):
    """(value id -> index of the event that made it, value id -> last event reading it)."""
    seen = set(arg_vids)
    made, last = {}, {}
    for i, e in enumerate(events):
        for v in event_refs(e.args, e.kwargs):
            seen.add(v)
            last[v] = i
        outs = e.outputs if isinstance(e.outputs, tuple) else (e.outputs,)
        for v in outs:
            if v is not None and v not in seen:
                seen.add(v)
                made[v] = i
    return made, last


def _live(spans, n):
    """Bytes alive at each event, for (first, last, bytes) spans (last == n: to the end)."""
    delta = [0] * (n + 2)
    for start, end, nbytes in spans:
        delta[start] += nbytes
        delta[min(end, n) + 1] -= nbytes
    out, acc = [], 0
    for i in range(n + 1):
        acc += delta[i]
        out.append(acc)
    return out


def event_refs(args, kwargs):
    out = []

    def walk(x):
        if isinstance(x, Ref):
            out.append(x.vid)
        elif isinstance(x, (list, tuple)):
            for a in x:
                walk(a)
        elif isinstance(x, dict):
            for a in x.values():
                walk(a)

    walk(args)
    walk(kwargs)
    return out
