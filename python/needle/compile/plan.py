"""A plan: the recorded kernel calls of one step as one flat Python function.

`build_plan` turns a recording (backend_ndarray/recording.py) into the source of a function
`replay(a0, a1, ...)` whose arguments are the NDArrays of the step's Tensor inputs, and
`exec`s it once. Every value gets a name: `a<i>` for the inputs, `x<i>` for state and
constants that existed before the step (parameters, optimizer moments, running statistics,
the model's constant tensors: the plan holds these NDArrays and the kernels update them in
place), `v<i>` for what the kernels produce, and `s<i>` for the scalar slots read at the top
of each replay. Each line calls the original NDArray method or Device kernel. A value is
deleted right after its last use, so the replay holds no more memory than the eager step.
The memory plan (memory.py) gives most intermediates a slot `b<j>` of an arena the plan
holds; their line calls the kernel's out form instead (`v3 = nd_mul_out(v1, v2, out=b0)`).

The source is the plan: `print(compiled.plan)` shows it with the buffer table.
"""
from __future__ import annotations

import math

from ..backend_ndarray.recording import Ref
from .memory import event_refs, plan_memory
from .scalars import Sym

__all__ = ["Plan", "build_plan"]


class Plan:
    """One recorded step ready to replay; `str(plan)` is the readable listing."""

    def __init__(self, replay, source, n_kernels, buffers, memory, pool, arenas, guards,
                 state, out_spec, signature):
        self.replay = replay  # replay(*input NDArrays) -> tuple of output NDArrays
        self.source = source
        self.n_kernels = n_kernels
        self.buffers = buffers  # [(name, kind, shape, dtype, nbytes)]
        # the memory plan (memory.py): intermediates' bytes at the fullest event, with the
        # pool and without it; the arenas: [(name, device, dtype, nbytes, NDArray)]; the
        # slots: [(name, arena index, byte offset, shape, nbytes, value names, NDArray view)]
        self.peak_bytes = memory.peak
        self.peak_bytes_unpooled = memory.peak_unpooled
        self.arenas = arenas
        self.pool = pool
        self.pool_bytes = memory.pool_bytes
        self.guards = guards  # [(check() -> bool, description)]
        self.state = state  # names of the values updated in place
        self.out_spec = out_spec
        self.signature = signature
        self.replays = 0

    def guards_hold(self):
        """None when every branch guard holds, else the description of the first that fails."""
        for check, text in self.guards:
            if not check():
                return text
        return None

    def __str__(self):
        kinds = {}
        for _, kind, _, _, nbytes in self.buffers:
            n, b = kinds.get(kind, (0, 0))
            kinds[kind] = (n + 1, b + nbytes)
        lines = [f"plan for {self.signature}",
                 f"  {self.n_kernels} kernel calls ({self.source.count('= fused')} of them "
                 f"fused elementwise groups); peak of intermediates {_size(self.peak_bytes)}"
                 f" ({_size(self.peak_bytes_unpooled)} without the pool)",
                 f"  pool: {len(self.arenas)} arena(s), {_size(self.pool_bytes)}, "
                 f"{len(self.pool)} slots holding {sum(len(p[5]) for p in self.pool)} "
                 f"intermediates"]
        for kind, (n, b) in sorted(kinds.items()):
            lines.append(f"  {kind:<13} {n:5d} buffers {_size(b):>10}")
        if self.guards:
            lines.append("  branch guards: " + "; ".join(t for _, t in self.guards))
        lines.append("")
        lines.append(self.source.rstrip())
        lines.append("")
        lines.append("buffers:")
        for name, kind, shape, dtype, nbytes in self.buffers:
            lines.append(f"  {name:<6} {kind:<13} {str(shape):<20} {dtype:<8} {_size(nbytes)}")
        if self.pool:
            lines.append("")
            lines.append("pool (allocated once; each slot's values take turns in its bytes):")
        for name, device, dtype, nbytes, _ in self.arenas:
            lines.append(f"  {name:<9} {device} {dtype} {_size(nbytes)}")
        for name, k, off, shape, nbytes, users, _ in self.pool:
            where = f"arena{k}[{off}:{off + nbytes}]"
            lines.append(f"  {name:<6} {where:<24} {str(shape):<18} {_size(nbytes):>10}  "
                         + " ".join(users))
        return "\n".join(lines)

    __repr__ = __str__


def _size(n):
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def build_plan(rec, arg_vids, out_vids, out_spec, grads, attr_updates, guards, signature,
               on_bad_view, reuse_buffers=True):
    """The Plan of a finished recording.

    arg_vids: value id of each input NDArray, in the order `replay` takes them.
    out_vids: value ids of the returned Tensors; grads: [(parameter, grad Tensor, vid)]
    whose `.grad` the replay sets to a constant of the new gradient; attr_updates: [(obj,
    name, value)] applied after the scalar slots are read (a Sym, or a plain value); guards:
    branch guards.
    """
    events = rec.events
    names, ns, buffers = {}, {}, []
    for i, v in enumerate(arg_vids):
        names.setdefault(v, f"a{i}")
    consts = {}

    def const(x):
        if _literal(x):
            return repr(x)
        key = id(x)
        if key not in consts:
            is_device = type(x).__name__.endswith("Device") and hasattr(x, "name")
            consts[key] = x.name if is_device and x.name not in ns else f"k{len(consts)}"
            ns[consts[key]] = x
        return consts[key]

    fn_names, out_names = {}, {}

    def out_name(e, base, form):
        if id(form) not in out_names:
            n, k = f"{base}_out", 1
            while n in ns:
                k += 1
                n = f"{base}_out{k}"
            out_names[id(form)] = n
            ns[n] = form
        return out_names[id(form)]

    def fn_name(e):
        key = id(e.fn)
        if key not in fn_names:
            owner, _, method = e.name.rpartition(".")
            base = ("nd_" if owner == "NDArray" else "dev_" if owner else "") + method.strip("_")
            n = base
            k = 1
            while n in ns:
                k += 1
                n = f"{base}{k}"
            fn_names[key] = n
            ns[n] = e.fn
        return fn_names[key]

    syms = {}
    prologue = []

    def sym(s):
        if id(s) not in syms:
            syms[id(s)] = f"s{len(syms)}"
            ns[f"r{len(syms) - 1}"] = s.read
            prologue.append(f"    {syms[id(s)]} = r{len(syms) - 1}()  # {s.text}")
        return syms[id(s)]

    written = set()
    n_ext = [0]

    def name(v):
        if v not in names:  # first seen as an input: state or a constant
            if on_bad_view is not None and rec.views_recorded_memory(v):
                on_bad_view(v)
            names[v] = f"x{n_ext[0]}"
            n_ext[0] += 1
            ns[names[v]] = rec.values[v].array
        return names[v]

    def arg(x):
        if isinstance(x, Ref):
            return name(x.vid)
        if isinstance(x, Sym):
            return sym(x)
        if isinstance(x, list):
            return "[" + ", ".join(arg(a) for a in x) + "]"
        if isinstance(x, tuple) and any(isinstance(a, (Ref, Sym, list, tuple)) for a in x):
            return "(" + "".join(arg(a) + ", " for a in x) + ")"
        return const(x)

    # last use of each produced value (outputs and gradients stay alive)
    last_use = {}
    for i, e in enumerate(events):
        for v in event_refs(e.args, e.kwargs):
            last_use[v] = i
    keep = set(out_vids) | {v for _, _, v in grads}
    mem = plan_memory(rec, arg_vids, keep, reuse_buffers)
    arenas = [device.empty((nbytes // _ITEMSIZE[dtype],), dtype=dtype)  # held by the plan
              for device, dtype, nbytes in mem.arenas]
    slot_names, slots = {}, []  # (arena, offset, shape) -> name; [(name, arena, offset, v)]
    for v, (k, off) in sorted(mem.slots.items(), key=lambda s: s[1]):
        info = rec.values[v]
        where = (k, off, info.shape)
        if where not in slot_names:
            slot_names[where] = f"b{len(slot_names)}"
            lo = off // _ITEMSIZE[info.dtype]
            ns[slot_names[where]] = arenas[k][lo:lo + info.nbytes // _ITEMSIZE[info.dtype]
                                              ].reshape(info.shape)
        slots.append((slot_names[where], k, off, v))
    slot_of = {v: name for name, _, _, v in slots}

    body, produced_names = [], set()
    n_val = 0
    for i, e in enumerate(events):
        call_args = [arg(a) for a in e.args] + [f"{k}={arg(a)}" for k, a in e.kwargs.items()]
        ins = set(event_refs(e.args, e.kwargs))
        outs = e.outputs if isinstance(e.outputs, tuple) else (e.outputs,)
        targets = []
        for v in outs:
            if v is None or v in names:  # nothing, or an input returned (in place)
                targets.append("_")
                if v is not None:
                    written.add(v)
                continue
            names[v] = f"v{n_val}"
            n_val += 1
            produced_names.add(v)
            info = rec.values[v]
            kind = "output" if v in keep else "pooled" if v in slot_of else "intermediate"
            buffers.append((names[v], kind, info.shape, info.dtype,
                            info.nbytes if info.owns and kind != "pooled" else 0))
            targets.append(names[v])
        fn = fn_name(e)
        if e.outputs in slot_of and targets[0] != "_":  # the out kernel writes its slot
            fn = out_name(e, fn, mem.forms[e.outputs])
            call_args.append(f"out={slot_of[e.outputs]}")
        call = f"{fn}({', '.join(call_args)})"
        if e.outputs is None:
            written.update(ins)  # a kernel returning nothing updates its inputs in place
            line = f"    {call}"
        elif isinstance(e.outputs, tuple):
            line = f"    {', '.join(targets)}{',' if len(targets) == 1 else ''} = {call}"
        else:
            line = f"    {targets[0]} = {call}"
        if e.name == "fused":
            line += f"  # {e.fn.kernel.describe()}"
        body.append(line)
        dead = [v for v in ins if last_use.get(v) == i and v in produced_names and v not in keep]
        if dead:
            body.append("    del " + ", ".join(names[v] for v in dead))

    for v in out_vids:
        name(v)
    # A parameter's gradient is a new constant Tensor each replay, as in eager code, and the
    # previous one is let go when the replay starts (as the step's `reset_grad` lets it go):
    # a gradient a caller kept stays as it was, and one nobody kept is freed before the
    # step's intermediates are made, not after them.
    epilogue = []
    if grads:
        ns["grad_tensor"] = type(grads[0][1]).make_const
    for k, (p, _, v) in enumerate(grads):
        ns[f"p{k}"] = p
        prologue.append(f"    p{k}.grad = None")
        epilogue.append(f"    p{k}.grad = grad_tensor({name(v)})")
    updates = []
    for k, (obj, attr, value) in enumerate(attr_updates):
        ns[f"o{k}"] = obj
        new = sym(value) if isinstance(value, Sym) else const(value)
        updates.append(f"    o{k}.{attr} = {new}")
    args = ", ".join(f"a{i}" for i in range(len(arg_vids)))
    outs = "".join(name(v) + ", " for v in out_vids)
    source = "\n".join([f"def replay({args}):", *prologue, *updates, *body, *epilogue,
                        f"    return ({outs})", ""])
    exec(compile(source, "<needle.compile plan>", "exec"), ns)

    for v, n in names.items():
        if n.startswith("x"):
            info = rec.values[v]
            kind = "state" if v in written else "constant"
            buffers.append((n, kind, info.shape, info.dtype, info.nbytes if info.owns else 0))
        elif n.startswith("a"):
            info = rec.values[v]
            buffers.append((n, "input", info.shape, info.dtype, info.nbytes))
    buffers.sort(key=lambda b: (b[0][0], int(b[0][1:])))
    state = sorted(names[v] for v in written if v in names)
    users = {}
    for name, k, off, v in slots:
        users.setdefault(name, (k, off, rec.values[v], []))[3].append(names[v])
    pool = [(name, k, off, info.shape, info.nbytes, vs, ns[name])
            for name, (k, off, info, vs) in users.items()]
    arena_rows = [(f"arena{k}", device.name, dtype, nbytes, arenas[k])
                  for k, (device, dtype, nbytes) in enumerate(mem.arenas)]
    return Plan(ns["replay"], source, len(events), buffers, mem, pool, arena_rows, guards,
                state, out_spec, signature)


_ITEMSIZE = {"float32": 4}  # the dtypes the memory plan pools


def _literal(x):
    """Whether repr(x) evaluates back to x (so the plan's source can show it)."""
    if x is None or isinstance(x, (bool, int, str)) and type(x) in (bool, int, str):
        return True
    if type(x) is float:
        return math.isfinite(x)
    if type(x) in (tuple, list):
        return all(_literal(a) for a in x)
    if type(x) is slice:
        return all(_literal(a) for a in (x.start, x.stop, x.step))
    return x is Ellipsis
