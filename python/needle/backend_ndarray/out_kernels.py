"""`out=` forms of the common kernels: the same computation written into a given array.

`needle.compile` gives the intermediates of a plan buffers that it allocates once and reuses
(compile/memory.py). A recorded kernel call whose result lives in such a buffer is replayed by
its out form: `out_form(event, values)` returns a function taking the call's arguments plus
`out=` (a compact NDArray of the recorded result's shape and dtype) that writes the result
there and returns `out`, or None when the kernel has no out form (it keeps allocating).

Each form makes the array-module call the kernel makes, with `out=` added: NumPy's and
CuPy's ufuncs, reductions and matmul compute the same numbers into a given array as into one
they allocate, so a pooled plan is bit-equal to an unpooled one. The forms are written
against the device's `xp`, so they serve cpu() (NumPy) and cuda() (CuPy) alike:

- elementwise: `+ - * /` (reflected too), `maximum minimum`, comparisons (float results),
  negation, `exp log tanh sqrt abs sign sigmoid`, and the Device kernels that take `out=`
  themselves (`relu`, `relu_grad`, `tanh_grad`, and `pack_flat`, an optimizer's flat packing);
- fused elementwise kernels (`FusedElementwise.entry_out`);
- `@` (matmul), `sum` and `max` over axes (of a row-major input: the reduction order of
  NumPy depends on the layout, so another layout runs the allocating kernel);
- copies (`compact`, `copy`, `NDArray(x)`), constructors (`zeros ones full empty`) and the
  uniform draw `rand` on NumPy devices (one `np.random.rand` draw, as the kernel makes).

Only float32 results whose NDArray operands are float32 and whose other operands are Python
numbers get an out form (a float64 operand would change the computation's type).
"""
from __future__ import annotations

import numpy as np

from .device import Device
from .ndarray import _EWISE_MIN, NDArray, _axes, _leading, _native
from .recording import Ref, _copy_ndarray

__all__ = ["out_form"]

# NDArray method -> (xp function, whether the Python number comes first: `2 - a`)
_BINARY = {
    "__add__": ("add", False), "__radd__": ("add", False), "__sub__": ("subtract", False),
    "__rsub__": ("subtract", True), "__mul__": ("multiply", False),
    "__rmul__": ("multiply", False), "__truediv__": ("divide", False),
    "__rtruediv__": ("divide", True), "maximum": ("maximum", False),
    "minimum": ("minimum", False), "__eq__": ("equal", False), "__ne__": ("not_equal", False),
    "__ge__": ("greater_equal", False), "__gt__": ("greater", False),
    "__le__": ("less_equal", False), "__lt__": ("less", False),
}
# NDArray operator -> the op name of Device._ewise (what the operator asks the device for)
_EWISE = {"__add__": "add", "__radd__": "add", "__sub__": "sub", "__rsub__": "rsub",
          "__mul__": "mul", "__rmul__": "mul", "__truediv__": "div", "__rtruediv__": "rdiv"}
_UNARY = {"__neg__": "negative", "exp": "exp", "log": "log", "tanh": "tanh", "sqrt": "sqrt",
          "abs": "absolute", "sign": "sign"}
_REDUCTIONS = {"sum", "max"}
_COPIES = {"compact", "copy"}
_CONSTRUCTORS = {"zeros": 0.0, "ones": 1.0, "full": None, "empty": None}  # the fill value
# Device kernels with an out= argument of their own
_DEVICE_OUT = {"relu", "relu_grad", "tanh_grad", "pack_flat"}

_FORMS: dict = {}  # (kernel name, xp) -> function (one function per kernel and module)


def out_form(event, values):
    """The out form of a recorded `event` (recording.Event), or None.

    `values` maps value ids to `ValueInfo`s; the result must be one float32 value, every
    NDArray operand float32 and every other operand a Python number.
    """
    if not isinstance(event.outputs, int) or values[event.outputs].dtype != "float32":
        return None
    owner, _, method = event.name.rpartition(".")
    if (method in _DEVICE_OUT and owner != "NDArray" and not event.kwargs and event.args
            and isinstance(event.args[0], Device)
            and all(values[v].dtype == "float32" for v in _refs_in(event.args))):
        return _form(method, event.args[0].xp)
    refs = [a for a in event.args if isinstance(a, Ref)]
    if not refs and event.name != "fused" and not _is_device_kernel(event):
        return None
    for a in refs:
        if values[a.vid].dtype != "float32":
            return None
    if event.name == "fused":
        return event.fn.kernel.entry_out()
    if event.fn is _copy_ndarray:
        src, device, dtype = event.args
        same = values[src.vid].array.device
        if (device is None or device == same) and (dtype is None or dtype == "float32"):
            return _form("copy", same.xp)
        return None
    if owner == "NDArray":
        if event.fn is not NDArray.__dict__.get(method):
            return None
        xp = values[refs[0].vid].array.device.xp
        if method in _BINARY or method in _UNARY or method == "sigmoid":
            others = [a for a in event.args[1:] if not isinstance(a, Ref)]
            if event.kwargs or not all(_number(a) for a in others):
                return None
            return _form(method, xp)
        if method == "__matmul__" or method in _COPIES:
            return _form(method, xp)
        if method in _REDUCTIONS and set(event.kwargs) <= {"axes", "keepdims", "axis"}:
            return _form(method, xp)
        return None
    if _is_device_kernel(event):
        device = next(a for a in event.args if isinstance(a, Device))
        if method in _CONSTRUCTORS and set(event.kwargs) <= {"dtype"}:
            return _form(method, device.xp)
        if method == "rand" and device.xp is np and set(event.kwargs) <= {"dtype"}:
            return _form(method, device.xp)
    return None


def _is_device_kernel(event):
    method = event.name.rpartition(".")[2]
    return (method in _CONSTRUCTORS or method == "rand") and event.fn is getattr(
        Device, method, None) and bool(event.args) and isinstance(event.args[0], Device)


def _refs_in(args):
    """The value ids of the Refs in `args`, lists and tuples included."""
    for a in args:
        if isinstance(a, Ref):
            yield a.vid
        elif isinstance(a, (list, tuple)):
            yield from _refs_in(a)


def _number(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _form(name, xp):
    key = (name, xp)
    fn = _FORMS.get(key)
    if fn is None:
        fn = _FORMS[key] = _make(name, xp)
    return fn


def _make(name, xp):
    if name in _BINARY:
        ufunc, reflected = _BINARY[name]
        f = getattr(xp, ufunc)
        # the kernel asks the device first for large arrays (NDArray's operators): so do these
        ewise = _EWISE.get(name)
        if reflected:  # `other - a`: the number comes first, as in the kernel
            def run(a, other, out):
                x, o = a._array, out._array
                if ewise is None or x.size < _EWISE_MIN or a.device._ewise(
                        ewise, x, other, o) is None:
                    f(_native(other), x, out=o)
                return out
        else:
            def run(a, other, out):
                x, y, o = a._array, _native(other), out._array
                if ewise is None or x.size < _EWISE_MIN or a.device._ewise(
                        ewise, x, y, o) is None:
                    f(x, y, out=o)
                return out
    elif name in _UNARY:
        f = getattr(xp, _UNARY[name])

        def run(a, out):
            f(a._array, out=out._array)
            return out
    elif name == "sigmoid":  # ndarray.stable_sigmoid: 0.5 * (tanh(0.5 * a) + 1.0)
        def run(a, out):
            o = out._array
            xp.multiply(0.5, a._array, out=o)
            xp.tanh(o, out=o)
            xp.add(o, 1.0, out=o)
            xp.multiply(0.5, o, out=o)
            return out
    elif name == "__matmul__":
        def run(a, b, out):  # the device's product, as the kernel (cpu(): its threads)
            a.device._mm(a._array, b._array, out=out._array)
            return out
    elif name in _DEVICE_OUT:
        def run(device, *args, out):  # the device kernel itself takes out=
            return getattr(device, name)(*args, out=out)
    elif name in _REDUCTIONS:
        def run(a, axes=None, keepdims=False, *, axis=None, out):
            x = a._array
            if not x.flags.c_contiguous:  # NumPy's summation order follows the layout
                return getattr(NDArray, name)(a, axes, keepdims, axis=axis)
            axes = _axes(axis if axes is None else axes)
            k = 0 if keepdims or name != "sum" else _leading(axes)
            if k and a.device._sum_leading(x, k, out=out._array) is not None:
                return out  # the kernel NDArray.sum runs (the same numbers)
            getattr(x, name)(axis=axes, keepdims=keepdims, out=out._array)
            return out
    elif name in _COPIES:
        def run(a, *args, out):
            xp.copyto(out._array, a._array)
            return out
    elif name in _CONSTRUCTORS:
        value = _CONSTRUCTORS[name]

        def run(device, shape, *args, out, dtype=None):
            if name == "full":
                out._array.fill(args[0])
            elif value is not None:
                out._array.fill(value)
            return out
    elif name == "rand":
        def run(device, *shape, out, dtype="float32"):
            xp.copyto(out._array, np.random.rand(*shape).astype(dtype))
            return out
    else:  # pragma: no cover - out_form only asks for the names above
        raise KeyError(name)
    run.__name__ = f"{name.strip('_')}_out"
    return run
