"""Fusing chains of elementwise kernels of a recording into one kernel each.

A recorded event is *fusible* when it is one of the NDArray elementwise methods in `_OPS`
or one of the elementwise Device kernels in `_DEVICE_OPS` (ReLU and the backwards of ReLU and
tanh) on float32 values, with Python numbers or scalar slots as the other operands. Walking
the events in order, a fusible event joins the group whose last result it consumes when

- that result is used nowhere else (not by another kernel, not returned, not a gradient);
- it has the group's shape (the group's inputs may broadcast, its steps do not); and
- no event between the group's first step and this one writes one of the group's inputs in
  place (the fused kernel runs at the position of the group's last step and reads its inputs
  then).

A group of two or more steps becomes one `FusedElementwise` event
(backend_ndarray/fused_elementwise.py), at the position of its last step.
"""
from __future__ import annotations

from ..backend_ndarray.fused_elementwise import FusedElementwise
from ..backend_ndarray.recording import Event, Ref
from .scalars import Sym

__all__ = ["fuse_elementwise"]

# NDArray method -> (fused op, whether the operands are swapped: other op self)
_OPS = {
    "__add__": ("add", False), "__radd__": ("add", False), "__sub__": ("sub", False),
    "__rsub__": ("sub", True), "__mul__": ("mul", False), "__rmul__": ("mul", False),
    "__truediv__": ("div", False), "__rtruediv__": ("div", True), "__neg__": ("neg", False),
    "exp": ("exp", False), "log": ("log", False), "tanh": ("tanh", False),
    "sqrt": ("sqrt", False), "abs": ("abs", False), "maximum": ("maximum", False),
    "minimum": ("minimum", False),
}


class _Group:
    def __init__(self, start):
        self.start = start
        self.events = []  # indices
        self.steps = []  # (op, operands) with operands ("v", vid) | ("t", j) | ("c", x) | Sym
        self.out = None
        self.shape = None
        self.leaves = set()


# Device kernels that are fused ops of the same name (operands: the arguments after the device)
_DEVICE_OPS = {"relu", "relu_grad", "tanh_grad"}


def _fusible(e, values):
    """(fused op, operands in order) of a fusible event, else None."""
    owner, _, method = e.name.rpartition(".")
    if e.kwargs or not isinstance(e.outputs, int):
        return None
    if owner == "NDArray" and method in _OPS:
        name, swapped = _OPS[method]
        args = [e.args[1], e.args[0]] if swapped else list(e.args)
    elif owner != "NDArray" and method in _DEVICE_OPS:
        name, args = method, list(e.args[1:])
    else:
        return None
    if values[e.outputs].dtype != "float32":
        return None
    for a in args:
        if isinstance(a, Ref):
            if values[a.vid].dtype != "float32":
                return None
        elif isinstance(a, bool) or not isinstance(a, (int, float)):
            return None
    return name, args


def _writes(e):
    """The values an event writes in place."""
    refs = [a.vid for a in e.args if isinstance(a, Ref)]
    if e.outputs is None:
        return set(refs)
    outs = e.outputs if isinstance(e.outputs, tuple) else (e.outputs,)
    return {v for v in outs if v in refs}


def fuse_elementwise(rec, keep):
    """Replace fusible chains in `rec.events` by fused events (in place); returns the number
    of groups made. `keep`: values that must stay materialized (outputs, gradients)."""
    events, values = rec.events, rec.values
    uses = {}
    for e in events:
        for a in _all_refs(e.args):
            uses[a] = uses.get(a, 0) + 1
    writes = [_writes(e) for e in events]
    tail = {}  # result value -> open group
    groups = []
    for i, e in enumerate(events):
        op = _fusible(e, values)
        if op is None:
            continue
        name, args = op
        shape = values[e.outputs].shape
        group = None
        operands = []
        for a in args:
            if isinstance(a, Ref):
                g = tail.get(a.vid)
                if (group is None and g is not None and uses.get(a.vid) == 1
                        and a.vid not in keep and g.shape == shape
                        and not any(writes[k] & g.leaves for k in range(g.start + 1, i))):
                    group = g
                    operands.append(("t", len(g.steps) - 1))
                    continue
                operands.append(("v", a.vid))
            else:
                operands.append(a if isinstance(a, Sym) else ("c", a))
        if group is None:
            group = _Group(i)
            group.shape = shape
            groups.append(group)
        else:
            del tail[group.out]
        group.leaves.update(o[1] for o in operands if isinstance(o, tuple) and o[0] == "v")
        group.steps.append((name, operands))
        group.events.append(i)
        group.out = e.outputs
        tail[e.outputs] = group
    fused = {}
    drop = set()
    for g in groups:
        if len(g.steps) < 2:
            continue
        fused[g.events[-1]] = _fused_event(g, values)
        drop.update(g.events[:-1])
    rec.events = [fused.get(i, e) for i, e in enumerate(events) if i not in drop]
    return len(fused)


def _fused_event(g, values):
    inputs, scalars, program = [], [], []
    for name, operands in g.steps:
        ops = []
        for o in operands:
            if isinstance(o, Sym):
                ops.append(("s", len(scalars)))
                scalars.append(o)
            elif o[0] == "v":
                if o[1] not in inputs:
                    inputs.append(o[1])
                ops.append(("in", inputs.index(o[1])))
            else:
                ops.append(o)
        program.append((name, ops))
    device = values[inputs[0]].array.device
    kernel = FusedElementwise(program, len(inputs), len(scalars), g.shape, device)
    args = tuple(Ref(v) for v in inputs) + tuple(scalars)
    return Event(kernel.entry(), "fused", args, {}, g.out)


def _all_refs(x):
    if isinstance(x, Ref):
        yield x.vid
    elif isinstance(x, (list, tuple)):
        for a in x:
            yield from _all_refs(a)
    elif isinstance(x, dict):
        for a in x.values():
            yield from _all_refs(a)
