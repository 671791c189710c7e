"""`needle.compile(fn)`: run a step once, record it, replay the recording.

The life of a signature (the shapes, dtypes and devices of the Tensor inputs, the other
arguments, the modules' `training` flags, the identity of the parameters and optimizers):

1. first call: `fn` runs eagerly, as a dry run that only refuses value reads. Lazily made
   state (optimizer moments, the first `.grad`) is created here, outside any recording, as
   tinygrad's TinyJit does with its first call;
2. second call: `fn` runs eagerly under the recorder; the recording becomes a `Plan`;
3. later calls: the plan's branch guards are checked and the plan is replayed: the recorded
   kernel calls on the new inputs' NDArrays, with the scalar slots read again. No Tensor is
   made except the returned ones, no graph is built, no op validates its inputs.

A call whose signature has no plan starts again at 1 (the last short batch of an epoch runs
eagerly once and is recorded only if it comes back). Plans are kept for up to `cache_size`
signatures. `compiled.explanations` lists why each recording happened; `explain=True` also
issues each one as a `RecompileWarning`.
"""
from __future__ import annotations

import gc
import linecache
import os
import sys
import warnings
from collections import OrderedDict

from ..autograd import Tensor, is_grad_enabled
from ..backend_ndarray.recording import Recorder, value_id
from ..errors import UserError
from ..nn.nn_basic import structure_version
from .fusion import fuse_elementwise
from .plan import build_plan
from .scalars import Sym, attribute_sym, plain

__all__ = ["compile", "Compiled", "CompileError", "RecompileWarning"]

_NEEDLE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_OPS_DIR = os.path.join(_NEEDLE_DIR, "ops") + os.sep


class CompileError(UserError, RuntimeError):
    """A compiled function does something a replay cannot repeat (reads a tensor's value into
    Python, makes views outside the recorded kernels, returns something other than Tensors)."""


class RecompileWarning(UserWarning):
    """`explain=True`: why a compiled function recorded a new plan."""


def compile(fn=None, *, explain: bool = False, cache_size: int = 8, track=(),  # noqa: A001
            fuse: bool = True, reuse_buffers: bool = True):
    """A callable with `fn`'s signature that records `fn`'s kernel calls and replays them.

    `fn` takes Tensors (and other values, which become part of the signature) and returns a
    Tensor or a tuple/list of Tensors. The modules and optimizers it uses are found in its
    closure and globals (and one attribute level below them); pass others in `track`.
    `fuse=False` keeps every elementwise kernel separate (see fusion.py);
    `reuse_buffers=False` lets every kernel allocate its result on every replay instead of
    writing into the plan's pooled buffers (see memory.py). Usable as a decorator, with or
    without arguments.

    >>> step = needle.compile(train_step)
    >>> loss = step(x, y)          # eager; then recorded; then replayed
    """
    opts = dict(explain=explain, cache_size=cache_size, track=track, fuse=fuse,
                reuse_buffers=reuse_buffers)
    if fn is None:
        return lambda f: Compiled(f, **opts)
    return Compiled(fn, **opts)


class Compiled:
    """The compiled form of `fn` (see the module docstring); `plan` is the latest plan."""

    def __init__(self, fn, explain=False, cache_size=8, track=(), fuse=True,
                 reuse_buffers=True):
        if not callable(fn):
            raise TypeError(f"needle.compile: expected a function, got {type(fn).__name__}")
        self.fn = fn
        self.explain = explain
        self.fuse = fuse
        self.reuse_buffers = reuse_buffers
        self.cache_size = int(cache_size)
        self.modules, self.optimizers = _find_state(fn, track)
        self._state = None  # (fingerprint, module list, parameter list): see _state_lists
        self.plans: OrderedDict = OrderedDict()  # signature key -> Plan
        self._seen = set()  # keys run once eagerly
        self.plan = None
        self.explanations: list = []
        self.calls = {"eager": 0, "recorded": 0, "replayed": 0}
        self.__wrapped__ = fn

    # ---- the call ----------------------------------------------------------------------------
    def __call__(self, *args, **kwargs):
        key, arrays = self._key(args, kwargs)
        plan = self.plans.get(key)
        if plan is not None:
            failed = plan.guards_hold()
            if failed is None:
                self.plans.move_to_end(key)
                self.calls["replayed"] += 1
                plan.replays += 1
                return _rebuild(plan.out_spec, plan.replay(*arrays))
            self._note(f"branch guard failed ({failed})")
            del self.plans[key]
        if key not in self._seen:
            self._seen.add(key)
            self.calls["eager"] += 1
            with Recorder(self._on_read, keep_events=False, scalar_type=Sym, plain=plain):
                result = self.fn(*args, **kwargs)
            # the first step may make or replace state (an owned copy of a parameter view):
            # the signature after it is the one the next call will have
            self._seen.add(self._key(args, kwargs)[0])
            return result
        out = self._record(key, args, kwargs, arrays)
        return out

    def _record(self, key, args, kwargs, arrays):
        self._note(self._why(key))
        guards, saved = [], []
        for i, opt in enumerate(self.optimizers):
            label = f"{type(opt).__name__.lower()}{i}"
            for name in _scalar_names(opt):
                saved.append((opt, name, getattr(opt, name)))
                setattr(opt, name, attribute_sym(opt, name, label, guards))
        rec = Recorder(self._on_read, scalar_type=Sym, plain=plain)
        arg_vids = [value_id(a) for a in arrays]
        try:
            with rec:
                result = self.fn(*args, **kwargs)
        finally:
            ends = [(opt, name, getattr(opt, name)) for opt, name, _ in saved]
            for opt, name, _ in ends:
                setattr(opt, name, plain(getattr(opt, name)))
        updates = []
        for (opt, name, start), (_, _, end) in zip(saved, ends):
            if isinstance(end, Sym):
                if end.text != f"{_label(self.optimizers, opt)}.{name}":
                    updates.append((opt, name, end))
            elif end != start:
                updates.append((opt, name, end))
        out_tensors, out_spec = _flatten_outputs(result)
        out_vids = [value_id(t.realize_cached_data()) for t in out_tensors]
        grads = []
        for p in self._parameters():
            g = p.grad
            if g is not None and value_id(g.realize_cached_data()) in rec.produced:
                const = Tensor.make_const(g.realize_cached_data())
                p.grad = const
                grads.append((p, const, value_id(const.realize_cached_data())))
        signature = self._describe(key)
        if self.fuse:
            fuse_elementwise(rec, set(out_vids) | {v for _, _, v in grads})
        plan = build_plan(rec, arg_vids, out_vids, out_spec, grads, updates, guards, signature,
                          self._on_bad_view, reuse_buffers=self.reuse_buffers)
        del rec
        gc.collect()
        self.plans[key] = self.plan = plan
        while len(self.plans) > self.cache_size:
            self.plans.popitem(last=False)
        self.calls["recorded"] += 1
        return result

    # ---- signatures --------------------------------------------------------------------------
    def _key(self, args, kwargs):
        parts, arrays = [], []

        def add(x):
            if isinstance(x, Tensor):
                a = x.realize_cached_data()
                arrays.append(a)
                parts.append(("tensor", a.shape, a.dtype, a.device.name, x.requires_grad))
            elif isinstance(x, (list, tuple)):
                parts.append(type(x).__name__)
                for y in x:
                    add(y)
                parts.append("end")
            else:
                try:
                    hash(x)
                    parts.append(("value", type(x).__name__, x))
                except TypeError:
                    parts.append(("object", id(x)))

        for a in args:
            add(a)
        for k in sorted(kwargs):
            parts.append(("kw", k))
            add(kwargs[k])
        mods, params = self._state_lists()
        flags = tuple(tuple(m.training for m in ms) for ms in mods)
        params = tuple(id(p.cached_data) for p in params)
        return (tuple(parts), flags, params, is_grad_enabled()), arrays

    def _state_lists(self):
        """(per tracked module, its submodules; every parameter), walked again only when a
        module gained, replaced or lost a parameter, submodule or container, or changed its
        training flag (`nn.structure_version()`), or an optimizer's parameter list changed:
        walking the module tree on every call cost 1.2 ms per MLPResNet step (8-9 ms)."""
        state = self._state
        stamp = (structure_version(),) + tuple(
            (id(opt.params), len(opt.params)) for opt in self.optimizers)
        if state is not None and state[0] == stamp:
            return state[1], state[2]
        mods = [mod.modules_list() for mod in self.modules]
        params = self._parameters()
        self._state = (stamp, mods, params)
        return mods, params

    def _parameters(self):
        seen, out = set(), []
        for m in self.modules:
            for p in m.parameters():
                if id(p) not in seen:
                    seen.add(id(p))
                    out.append(p)
        for opt in self.optimizers:
            for p in opt.params:
                if id(p) not in seen:
                    seen.add(id(p))
                    out.append(p)
        return out

    def _describe(self, key):
        parts, flags, _, grad = key
        inputs = [f"{p[3]} {p[2]}{list(p[1])}" for p in parts if p[0] == "tensor"]
        modes = ["train" if all(f) else "eval" if not any(f) else "mixed" for f in flags]
        return (f"{getattr(self.fn, '__name__', 'fn')}({', '.join(inputs)})"
                + (f" modules: {', '.join(modes)}" if modes else "")
                + ("" if grad else " no_grad"))

    def _why(self, key):
        old = next(reversed(self.plans), None)  # the plan used last
        if old is None or old == key:
            return f"recorded {self._describe(key)}: second call with this signature"
        new = key
        what = []  # what differs from the plan used last
        if old[0] != new[0]:
            what.append(f"inputs {self._describe(old).split(' modules')[0]} -> "
                        f"{self._describe(new).split(' modules')[0]}")
        if old[1] != new[1]:
            what.append("modules' training flags changed")
        if old[2] != new[2]:
            what.append("parameters were replaced")
        if old[3] != new[3]:
            what.append("grad mode changed")
        return f"recorded {self._describe(key)}: " + ("; ".join(what) or "new signature")

    def _note(self, text):
        self.explanations.append(text)
        if self.explain:
            warnings.warn(f"needle.compile: {text}", RecompileWarning, stacklevel=3)

    # ---- refusals ----------------------------------------------------------------------------
    def _on_read(self, what):
        # an op's own input validation (the label range of softmax cross-entropy) may read
        # values: it runs at recording, and a replay skips validation as it skips shape checks
        caller = sys._getframe(2).f_code.co_filename
        if os.path.abspath(caller).startswith(_OPS_DIR) and not what.endswith("returned"):
            return
        where = _user_line(self.fn)
        raise CompileError(
            f"needle.compile: {where} reads a tensor's value into Python ({what}) inside the "
            f"compiled function {getattr(self.fn, '__name__', '')!r}; a replay runs only the "
            f"device kernels, so that value would be the recording's forever. Move the read "
            f"outside the compiled function (read the Tensor it returns after the call).")

    def _on_bad_view(self, vid):
        raise CompileError(
            f"needle.compile: {getattr(self.fn, '__name__', '')!r} uses an array view made "
            f"outside the NDArray/Device methods; the step cannot be recorded")


def _scalar_names(opt):
    names = [n for n in getattr(opt, "hyperparameter_names", ("lr",)) if hasattr(opt, n)]
    names.append("t")
    return [n for n in names if isinstance(getattr(opt, n, None), (int, float))
            and not isinstance(getattr(opt, n), bool)]


def _label(optimizers, opt):
    return f"{type(opt).__name__.lower()}{optimizers.index(opt)}"


def _flatten_outputs(result):
    """(the Tensors in `result`, a spec to rebuild it from new values)."""
    if isinstance(result, Tensor):
        return [result], ("tensor", 0)
    if isinstance(result, (tuple, list)):
        tensors, specs = [], []
        for r in result:
            if isinstance(r, Tensor):
                specs.append(("tensor", len(tensors)))
                tensors.append(r)
            elif r is None or isinstance(r, (int, float, str, bool)):
                specs.append(("value", r))
            else:
                raise CompileError(f"needle.compile: the compiled function returned a "
                                   f"{type(r).__name__} inside its result; return Tensors")
        return tensors, (type(result).__name__, specs)
    if result is None:
        return [], ("value", None)
    raise CompileError(f"needle.compile: the compiled function returned a "
                       f"{type(result).__name__}; return a Tensor or a tuple of Tensors")


def _rebuild(spec, values):
    kind = spec[0]
    if kind == "tensor":
        return Tensor.make_const(values[spec[1]])
    if kind == "value":
        return spec[1]
    items = [Tensor.make_const(values[s[1]]) if s[0] == "tensor" else s[1] for s in spec[1]]
    return tuple(items) if kind == "tuple" else items


def _user_line(fn):
    """'file:line (`source`)' of the innermost frame outside needle, else of `fn`."""
    frame = sys._getframe(1)
    code = getattr(fn, "__code__", None)
    fallback = None
    while frame is not None:
        f = frame.f_code.co_filename
        if not os.path.abspath(f).startswith(_NEEDLE_DIR + os.sep):
            break
        if frame.f_code is code and fallback is None:
            fallback = frame
        frame = frame.f_back
    frame = frame or fallback
    if frame is None:
        return "a line"
    text = linecache.getline(frame.f_code.co_filename, frame.f_lineno).strip()
    return f"{frame.f_code.co_filename}:{frame.f_lineno} (`{text}`)"


def _is_module(obj):  # duck-typed: compile/ sits below nn/ and optim.py
    return (not isinstance(obj, type) and hasattr(obj, "training")
            and callable(getattr(obj, "modules_list", None))
            and callable(getattr(obj, "parameters", None)))


def _is_optimizer(obj):
    return (not isinstance(obj, type) and isinstance(getattr(obj, "params", None), list)
            and callable(getattr(obj, "step", None)) and hasattr(obj, "state"))


def _find_state(fn, track):
    """The Modules and Optimizers `fn` refers to (closure cells, globals it names, `self`
    of a bound method, and one level below each: attributes, dict values, list items),
    plus those in `track`. An optimizer not found has its learning rate baked into the
    plan: pass it in `track`."""
    found = list(track)
    target = getattr(fn, "__func__", fn)
    if hasattr(fn, "__self__"):
        found.append(fn.__self__)
    for cell in getattr(target, "__closure__", None) or ():
        try:
            found.append(cell.cell_contents)
        except ValueError:  # an empty cell
            pass
    code, glob = getattr(target, "__code__", None), getattr(target, "__globals__", {})
    if code is not None:
        found.extend(glob[n] for n in code.co_names if n in glob)
    modules, optimizers = [], []

    def take(obj):
        if _is_module(obj) and all(obj is not m for m in modules):
            modules.append(obj)
            return True
        if _is_optimizer(obj) and all(obj is not o for o in optimizers):
            optimizers.append(obj)
            return True
        return False

    for obj in found:
        if take(obj) or isinstance(obj, type) or callable(obj) and not hasattr(obj, "__dict__"):
            continue
        if isinstance(obj, dict):
            children = list(obj.values())
        elif isinstance(obj, (list, tuple)):
            children = list(obj)
        else:
            children = list(getattr(obj, "__dict__", {}).values())
        for value in children:
            take(value)
    return modules, optimizers
