"""Recording kernel calls at the NDArray/Device boundary (what `needle.compile` captures).

While a `Recorder` is active (on the thread that started it), every public NDArray method and
every public Device kernel is wrapped: the call runs as usual and is also appended to
`recorder.events` as an `Event`: the original function, its arguments with each NDArray
replaced by a `Ref` to a *value id*, and the value ids of what it returned. A value is one
native array: two NDArray objects over the same native array (an `ArrayNode` of the fast
backward and the node's value) are one value. Calls made from inside a recorded call are part
of that kernel and are not recorded again (`depth`).

Reading a value into Python inside the recorded call (`numpy()`, `item()`, host transfers)
raises the recorder's `on_read` error: the recording would bake that value into every replay.

The wrappers are installed on the classes for the duration of the recording and removed after
(`install` / `uninstall`), so code outside a recording runs the plain methods.
"""
from __future__ import annotations

import threading

from .device import Device
from .ndarray import NDArray

__all__ = ["Recorder", "Event", "Ref", "ValueInfo", "value_id"]

# NDArray's operator methods that compute, view or update values (recorded); every public
# NDArray method is recorded too (so a method added later is seen), except these queries
_NDARRAY_DUNDER_KERNELS = (
    "__add__", "__radd__", "__sub__", "__rsub__", "__mul__", "__rmul__", "__truediv__",
    "__rtruediv__", "__neg__", "__pow__", "__rpow__", "__eq__", "__ne__", "__ge__", "__gt__",
    "__le__", "__lt__", "__iadd__", "__isub__", "__imul__", "__itruediv__", "__matmul__",
    "__getitem__", "__setitem__",
)
_NDARRAY_QUERIES = {"is_compact", "process_slice"}  # layout questions, fixed by the guards
# NDArray methods that hand a value to Python (refused while recording)
_NDARRAY_READS = ("numpy", "item", "isfinite", "__array__", "__repr__", "__str__")
# Device methods that are buffer plumbing, not kernels (never recorded)
_DEVICE_PLUMBING = {"data_ptr", "as_strided", "to_numpy", "from_numpy", "enabled",
                    "get_num_threads", "set_num_threads", "matmul_tiled"}
# Device methods that move data between the host and the device (refused while recording)
_DEVICE_READS = {"pack_host", "sums_host", "from_host"}

_ACTIVE: "Recorder | None" = None  # at most one recording at a time, process-wide
_LOCK = threading.Lock()


def value_id(array: NDArray) -> int:
    """The id of the value (the native array) an NDArray holds."""
    return id(array._array)


class Ref:
    """An argument that is a recorded value."""

    __slots__ = ("vid",)

    def __init__(self, vid: int):
        self.vid = vid

    def __repr__(self):
        return f"v{self.vid}"


class ValueInfo:
    """What the plan needs to know about one value: shape, dtype, bytes, whether it owns its
    memory (a view costs nothing) and is row-major, the bytes it spans (`extent`: first and
    one past the last address, None when empty) and the NDArray seen first (for inputs and
    state)."""

    __slots__ = ("shape", "dtype", "nbytes", "owns", "contiguous", "extent", "array", "root")

    def __init__(self, array: NDArray, root_vid):
        native = array._array
        self.shape = tuple(native.shape)
        self.dtype = str(native.dtype)
        self.nbytes = int(native.nbytes)
        self.owns = native.base is None
        self.contiguous = bool(native.flags.c_contiguous)
        self.extent = _extent(native, array.device)
        self.array = array
        self.root = root_vid  # the value whose memory this one views (None: its own)


def _extent(native, device):
    if native.size == 0:
        return None
    lo = hi = device.data_ptr(native)
    for n, s in zip(native.shape, native.strides):
        if s < 0:
            lo += s * (n - 1)
        else:
            hi += s * (n - 1)
    return lo, hi + native.dtype.itemsize


class Event:
    """One recorded kernel call: `fn(*args, **kwargs)` with `Ref`s for values; `outputs` is
    the returned structure with value ids (an int, None, or a tuple of those)."""

    __slots__ = ("fn", "name", "args", "kwargs", "outputs")

    def __init__(self, fn, name, args, kwargs, outputs):
        self.fn, self.name, self.args, self.kwargs, self.outputs = fn, name, args, kwargs, outputs


class Recorder:
    """Context manager: records kernel calls made on this thread while it is active.

    `keep_events=False` records nothing but still refuses value reads (a dry run).
    `scalar_type` is a type whose instances are passed to kernels as their plain value and
    kept in the recorded arguments as they are (the compiler's scalar slots); `plain(x)`
    returns the plain value.
    """

    def __init__(self, on_read, keep_events: bool = True, scalar_type=None, plain=None):
        self.on_read = on_read
        self.keep_events = keep_events
        self.scalar_type = scalar_type
        self.plain = plain
        self.events: list = []
        self.values: dict = {}  # value id -> ValueInfo
        self.natives: dict = {}  # value id -> native array (kept alive: ids stay unique)
        self.produced: set = set()  # value ids some event returned first
        self.depth = 0
        self.thread = None
        self._patches = []

    # ---- values --------------------------------------------------------------------------
    def vid(self, array: NDArray) -> int:
        native = array._array
        v = id(native)
        if v not in self.values:
            base = native.base
            root = id(base) if base is not None and id(base) in self.values else None
            self.values[v] = ValueInfo(array, root)
            self.natives[v] = native
        return v

    def views_recorded_memory(self, vid: int) -> bool:
        """Whether a value first seen as an input views memory an event produced (a view
        made by code that bypassed the recorded methods)."""
        native = self.natives[vid]
        base = native.base
        while base is not None:
            if id(base) in self.produced:
                return True
            base = getattr(base, "base", None)
        return False

    def memory_blocks(self) -> dict:
        """value id -> block number: values whose bytes overlap are one block (a buffer and
        every view of it, found by address, so views whose `base` does not say so count
        too). Every recorded array is kept alive until the recording is dropped, so two
        values overlap only when they share memory. Empty values have no block."""
        spans = sorted((info.array.device.name, info.extent, v)
                       for v, info in self.values.items() if info.extent is not None)
        blocks, block, end, where = {}, -1, None, None
        for device, (lo, hi), v in spans:
            if end is None or lo >= end or device != where:  # (each device: its addresses)
                where = device
                block += 1
                end = hi
            else:
                end = max(end, hi)
            blocks[v] = block
        return blocks

    def _template(self, x):
        if isinstance(x, NDArray):
            return Ref(self.vid(x))
        if isinstance(x, (list, tuple)):
            t = [self._template(a) for a in x]
            return t if isinstance(x, list) else tuple(t)
        if isinstance(x, dict):
            return {k: self._template(a) for k, a in x.items()}
        return x

    def _plain(self, x):
        if self.scalar_type is not None and isinstance(x, self.scalar_type):
            return self.plain(x)
        if isinstance(x, (list, tuple)) and any(
                self.scalar_type is not None and isinstance(a, self.scalar_type) for a in x):
            t = [self._plain(a) for a in x]
            return t if isinstance(x, list) else tuple(t)
        return x

    def _outputs(self, out):
        if out is None:
            return None
        if isinstance(out, NDArray):
            if id(out._array) not in self.values:  # new: this event made it
                self.produced.add(id(out._array))
            return self.vid(out)
        if isinstance(out, (tuple, list)) and all(o is None or isinstance(o, NDArray)
                                                  for o in out):
            return tuple(self._outputs(o) for o in out)
        return _NOT_A_VALUE

    def record(self, fn, name, self_arg, args, kwargs, out):
        # the inputs are looked up before the outputs: an in-place kernel returns an input
        targs = (self._template(self_arg),) + tuple(self._template(a) for a in args)
        tkw = {k: self._template(a) for k, a in kwargs.items()}
        outs = self._outputs(out)
        if outs is _NOT_A_VALUE:
            self.on_read(f"{name} returned a {type(out).__name__}")
        self.events.append(Event(fn, name, targs, tkw, outs))

    # ---- installing the wrappers -----------------------------------------------------------
    def __enter__(self):
        global _ACTIVE
        with _LOCK:
            if _ACTIVE is not None:
                raise RuntimeError("needle.compile: a recording is already running (a "
                                   "compiled function called inside another one's first "
                                   "calls)")
            _ACTIVE = self
        self.thread = threading.get_ident()
        try:
            self._install()
        except BaseException:
            self._uninstall()
            _ACTIVE = None
            raise
        return self

    def __exit__(self, *exc):
        global _ACTIVE
        self._uninstall()
        with _LOCK:
            _ACTIVE = None
        return False

    def _patch(self, cls, name, wrapper):
        self._patches.append((cls, name, cls.__dict__[name]))
        setattr(cls, name, wrapper)

    def _install(self):
        for name in _ndarray_kernels():
            self._patch(NDArray, name, _kernel_wrapper(NDArray.__dict__[name],
                                                       f"NDArray.{name}"))
        for name in _NDARRAY_READS:
            self._patch(NDArray, name, _read_wrapper(NDArray.__dict__[name],
                                                     f"NDArray.{name}"))
        flat = NDArray.__dict__["flat"]
        self._patch(NDArray, "flat", property(_kernel_wrapper(flat.fget, "NDArray.flat")))
        self._patch(NDArray, "__init__", _init_wrapper(NDArray.__dict__["__init__"]))
        seen = set()
        for dev_cls in _device_classes():
            for cls in dev_cls.__mro__:
                if cls in seen or cls is object:
                    continue
                seen.add(cls)
                for name, fn in list(cls.__dict__.items()):
                    if name.startswith("_") or not callable(fn) or isinstance(
                            fn, (staticmethod, classmethod, type)):
                        continue
                    if name in _DEVICE_READS:
                        self._patch(cls, name, _read_wrapper(fn, f"Device.{name}"))
                    elif name not in _DEVICE_PLUMBING:
                        self._patch(cls, name, _kernel_wrapper(fn, f"{cls.__name__}.{name}"))

    def _uninstall(self):
        while self._patches:
            cls, name, original = self._patches.pop()
            setattr(cls, name, original)


_NOT_A_VALUE = object()


def _ndarray_kernels():
    names = list(_NDARRAY_DUNDER_KERNELS)
    for name, fn in NDArray.__dict__.items():
        if (not name.startswith("_") and callable(fn) and not isinstance(fn, staticmethod)
                and name not in _NDARRAY_READS and name not in _NDARRAY_QUERIES):
            names.append(name)
    return names


def _device_classes():
    out, todo = [], [Device]
    while todo:
        c = todo.pop()
        out.append(c)
        todo.extend(c.__subclasses__())
    return out


def _current():
    rec = _ACTIVE
    if rec is None or rec.depth or rec.thread != threading.get_ident():
        return None
    return rec


def _kernel_wrapper(fn, name):
    def recorded(self, *args, **kwargs):
        rec = _current()
        if rec is None:
            return fn(self, *args, **kwargs)
        rec.depth += 1
        try:
            out = fn(self, *[rec._plain(a) for a in args],
                     **{k: rec._plain(a) for k, a in kwargs.items()})
        finally:
            rec.depth -= 1
        if rec.keep_events:
            rec.record(fn, name, self, args, kwargs, out)
        return out

    recorded.__name__ = getattr(fn, "__name__", name)
    recorded.__wrapped__ = fn
    return recorded


def _read_wrapper(fn, name):
    def refused(self, *args, **kwargs):
        rec = _current()
        if rec is not None:
            rec.on_read(name)
        return fn(self, *args, **kwargs)

    refused.__wrapped__ = fn
    return refused


def _copy_ndarray(other, device=None, dtype=None):
    """NDArray(other, device, dtype) as a function (what a recorded copy replays)."""
    return NDArray(other, device=device, dtype=dtype)


def _init_wrapper(init):
    # NDArray(x) of an NDArray is a kernel (a copy of a recorded value); of a NumPy array or
    # a list it makes a constant the plan keeps
    def recorded_init(self, other, device=None, dtype=None):
        rec = _current()
        if rec is None or not isinstance(other, NDArray):
            return init(self, other, device, dtype)
        rec.depth += 1
        try:
            init(self, other, device, dtype)
        finally:
            rec.depth -= 1
        if rec.keep_events:
            targs = (rec._template(other), device, dtype)
            rec.events.append(Event(_copy_ndarray, "NDArray", targs, {},
                                    rec._outputs(self)))
        return None

    recorded_init.__wrapped__ = init
    return recorded_init
