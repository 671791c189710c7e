"""One kernel for a chain of elementwise operations (what `needle.compile` fuses).

A `FusedElementwise` is a small program over its inputs, e.g. for tanh(a * 1.01 + b):

    t0 = mul(in0, 1.01); t1 = add(t0, in1); t2 = tanh(t1)      -> out = t2

Inputs are float32 NDArrays broadcast to the output shape (any strides: broadcasting gives
stride 0, views keep theirs) and scalars passed at call time (the compiler's scalar slots).
It runs in one of three forms, all from the same program:

- a generated Python function making the same NumPy/CuPy calls as the unfused kernels, in
  the same order, without their per-call Python (the default: same numbers as unfused);
- generated C (when `C_MIN_ELEMENTS` is set, see below), compiled once by the system C
  compiler (`$CC`, `cc`, `gcc`, `clang`) into a shared library cached under
  ~/.cache/needle/fused ($NEEDLE_CACHE_DIR/fused) by the hash of its source and called
  with ctypes; one pass over the output, row by row, each input read at its own element
  strides (C's expf/tanhf may differ from NumPy's in the last bit). Without a working
  compiler the Python function runs;
- one device kernel from the same C step lines, on a device with an `elementwise_kernel`
  hook (CUDA kernels are built in cuda_kernels.py only; cuda() has no such hook yet).
"""
from __future__ import annotations

import ctypes
import hashlib
import math
import os

import numpy as np

from .c_build import build_library, c_compiler
from .ndarray import NDArray

__all__ = ["FusedElementwise", "FUSIBLE", "C_MIN_ELEMENTS", "c_compiler"]

# name -> (arity, C expression, NumPy function)
FUSIBLE = {
    "add": (2, "({0} + {1})", lambda xp, a, b: a + b),
    "sub": (2, "({0} - {1})", lambda xp, a, b: a - b),
    "mul": (2, "({0} * {1})", lambda xp, a, b: a * b),
    "div": (2, "({0} / {1})", lambda xp, a, b: a / b),
    "maximum": (2, "nmax({0}, {1})", lambda xp, a, b: xp.maximum(a, b)),
    "minimum": (2, "nmin({0}, {1})", lambda xp, a, b: xp.minimum(a, b)),
    "neg": (1, "(-{0})", lambda xp, a: -a),
    "exp": (1, "expf({0})", lambda xp, a: xp.exp(a)),
    "log": (1, "logf({0})", lambda xp, a: xp.log(a)),
    "tanh": (1, "tanhf({0})", lambda xp, a: xp.tanh(a)),
    "sqrt": (1, "sqrtf({0})", lambda xp, a: xp.sqrt(a)),
    "abs": (1, "fabsf({0})", lambda xp, a: xp.abs(a)),
    "relu": (1, "nrelu({0})", lambda xp, a: xp.maximum(a, 0)),
    "relu_grad": (2, "(({1}) > 0.0f ? ({0}) : 0.0f)",
                  lambda xp, g, y: xp.where(y > 0, g, 0.0)),
    "tanh_grad": (2, "((1.0f - ({1}) * ({1})) * ({0}))", lambda xp, g, y: (1.0 - y * y) * g),
}


class FusedElementwise:
    """`kernel(*arrays, *scalars)` -> a new compact float32 NDArray of `shape`.

    `program`: [(op, operands)], operands being ("in", i), ("t", j) (an earlier step),
    ("c", float) or ("s", i) (a scalar argument); the last step is the result.
    """

    def __init__(self, program, n_inputs: int, n_scalars: int, shape, device):
        self.program = [(op, tuple(operands)) for op, operands in program]
        self.n_inputs, self.n_scalars = n_inputs, n_scalars
        self.shape = tuple(shape)
        self.size = math.prod(self.shape)
        self.device = device
        ndim = max(len(self.shape), 1)
        self._c_shape = (ctypes.c_int64 * ndim)(*self.shape)
        self._c_strides = {}  # input strides -> their ctypes array (the same every replay)
        self._py = None  # the NumPy/CuPy program as one Python function, made on first use
        self._entry_out = None  # the same with out= (entry_out), made on first use
        use_c = device.xp is np and C_MIN_ELEMENTS is not None and self.size >= C_MIN_ELEMENTS
        self._c = _compiled(self) if use_c else None
        self._cuda = _cuda_kernel(self) if device.xp is not np else None

    def __call__(self, *args, out=None):
        """The result as a new NDArray, or written into `out` (a compact float32 NDArray of
        the kernel's shape: the compiler's pooled buffers), which is then returned."""
        arrays, scalars = args[:self.n_inputs], args[self.n_inputs:]
        if self._c is not None:
            return self._run_c(arrays, scalars, out)
        if self._cuda is not None:
            xp = self.device.xp
            dest = xp.empty(self.shape, dtype=np.float32) if out is None else out._array
            self._cuda(*[a._array for a in arrays], *[np.float32(s) for s in scalars], dest)
            return NDArray._wrap(dest, self.device) if out is None else out
        if out is not None:
            return self.entry_out()(*args, out=out)
        return self._run_xp(arrays, scalars)

    def entry(self):
        """The fastest function computing `self(*args)`: for the NumPy program, one generated
        function from NDArrays to an NDArray; else a call of the C or CuPy kernel. Its
        `kernel` attribute is this object."""
        if self._cuda is not None or self._c is not None:
            def run(*args):
                return self(*args)
        else:
            run = _python_function(self, self.device.xp, wrap=True)
        run.kernel = self
        return run

    def entry_out(self):
        """`entry()`'s function with an `out=` argument: `run(*args, out=o)` writes the result
        into the NDArray `o` and returns it. The NumPy program writes each step into `out`
        (a chain whose steps each read the step before), so no temporary is allocated."""
        if self._entry_out is None:
            if self._cuda is not None or self._c is not None:
                def run(*args, out):
                    return self(*args, out=out)
            else:
                run = _python_function(self, self.device.xp, wrap=True, into=True)
            run.kernel = self
            self._entry_out = run
        return self._entry_out

    def describe(self) -> str:
        """The program as one expression, e.g. `tanh(((in0 * 1.01) + in1))`."""
        exprs = []
        for op, operands in self.program:
            args = [_operand_text(o, exprs) for o in operands]
            exprs.append(FUSIBLE[op][1].format(*args))
        return exprs[-1]

    # ---- NumPy / CuPy: op by op -----------------------------------------------------------
    def _run_xp(self, arrays, scalars):
        xp = self.device.xp
        if self._py is None:
            self._py = _python_function(self, xp)
        # numbers go in as Python numbers, as the unfused kernels get them
        out = self._py(*[a._array for a in arrays], *scalars)
        if type(out) is not np.ndarray or out.dtype != np.float32:
            out = xp.asarray(out, dtype=np.float32)
        if out.shape != self.shape or not out.flags.c_contiguous:
            out = xp.array(xp.broadcast_to(out, self.shape), order="C")  # a compact copy
        return NDArray._wrap(out, self.device)

    # ---- C -------------------------------------------------------------------------------------
    def _run_c(self, arrays, scalars, into=None):
        out = np.empty(self.shape, dtype=np.float32) if into is None else into._array
        ndim = len(self.shape)
        args = [self.size, ndim, self._c_shape, out.__array_interface__["data"][0]]
        keep = []  # converted or broadcast views, alive until the call returns
        for a in arrays:
            native = a._array
            if native.dtype != np.float32:
                native = native.astype(np.float32)
            if native.shape != self.shape:
                native = np.broadcast_to(native, self.shape)
            keep.append(native)
            strides = self._c_strides.get(native.strides)
            if strides is None:
                strides = self._c_strides[native.strides] = (ctypes.c_int64 * max(ndim, 1))(
                    *[s // 4 for s in native.strides])
            args += [native.__array_interface__["data"][0], strides]
        args.append((ctypes.c_float * max(self.n_scalars, 1))(*[float(s) for s in scalars]))
        self._c(*args)
        return NDArray._wrap(out, self.device) if into is None else into


def _operand_text(o, exprs):
    kind, x = o
    if kind == "in":
        return f"in{x}"
    if kind == "t":
        return exprs[x]
    if kind == "s":
        return f"s[{x}]"
    return repr(float(x))


_PY = {"add": "({0} + {1})", "sub": "({0} - {1})", "mul": "({0} * {1})", "div": "({0} / {1})",
       "neg": "(-{0})", "maximum": "xp.maximum({0}, {1})", "minimum": "xp.minimum({0}, {1})",
       "exp": "xp.exp({0})", "log": "xp.log({0})", "tanh": "xp.tanh({0})",
       "sqrt": "xp.sqrt({0})", "abs": "xp.abs({0})", "relu": "xp.maximum({0}, 0)",
       "relu_grad": "xp.where({1} > 0, {0}, 0.0)", "tanh_grad": "((1.0 - {1} * {1}) * {0})"}


_UFUNC = {"add": "add", "sub": "subtract", "mul": "multiply", "div": "divide",
          "neg": "negative", "maximum": "maximum", "minimum": "minimum", "exp": "exp",
          "log": "log", "tanh": "tanh", "sqrt": "sqrt", "abs": "absolute"}


def _python_function(kernel, xp, wrap=False, into=False):
    """The program as one generated Python function of (inputs..., scalars...): the same
    array-module calls as the unfused kernels, without their per-call Python. With `wrap`
    it takes and returns NDArrays (the result has the layout the unfused kernels give).
    With `into` it also takes `out` (an NDArray) and writes the result there: the same
    ufuncs with `out=`, every step into `out` when each step reads only the one before it
    (what fusion makes), else temporaries and the last step into `out`."""
    ns = {"xp": xp, "ndarray": xp.ndarray, "wrap": NDArray._wrap, "device": kernel.device}
    names = [f"in{i}" for i in range(kernel.n_inputs)] + [
        f"s{j}" for j in range(kernel.n_scalars)]
    if into:
        return _python_function_into(kernel, xp, ns, names)
    lines = [f"def run({', '.join(names)}):"]
    if wrap:
        lines += [f"    in{i} = in{i}._array" for i in range(kernel.n_inputs)]
    for j, (op, operands) in enumerate(kernel.program):
        args = []
        for k, x in operands:
            if k == "c":  # the Python number the unfused kernel was given
                args.append(repr(x) if isinstance(x, int) or np.isfinite(x) else
                            f"float({str(x)!r})")
            else:
                args.append({"in": "in", "t": "t", "s": "s"}[k] + str(x))
        lines.append(f"    t{j} = {_PY[op].format(*args)}")
    last = f"t{len(kernel.program) - 1}"
    if wrap:
        # a 0-d result is a NumPy scalar; inputs that all broadcast give a smaller shape
        lines += [f"    if type({last}) is not ndarray or {last}.shape != {kernel.shape!r}:",
                  f"        {last} = xp.broadcast_to(xp.asarray({last}, dtype='float32'), "
                  f"{kernel.shape!r}).copy()",
                  f"    return wrap({last}, device)"]
    else:
        lines.append(f"    return {last}")
    exec("\n".join(lines), ns)
    return ns["run"]


def _python_function_into(kernel, xp, ns, names):
    chain = all(x == j - 1 for j, (_, operands) in enumerate(kernel.program)
                for k, x in operands if k == "t")
    last = len(kernel.program) - 1
    lines = [f"def run({', '.join(names + ['out'])}):"]
    lines += [f"    in{i} = in{i}._array" for i in range(kernel.n_inputs)]
    lines.append("    o = out._array")
    for j, (op, operands) in enumerate(kernel.program):
        args = []
        for k, x in operands:
            if k == "c":
                args.append(repr(x) if isinstance(x, int) or np.isfinite(x) else
                            f"float({str(x)!r})")
            elif k == "t":
                args.append("o" if chain else f"t{x}")
            else:
                args.append(f"{k}{x}")
        if op == "relu":
            call = f"xp.maximum({args[0]}, 0"
        elif op in _UFUNC:
            call = f"xp.{_UFUNC[op]}({', '.join(args)}"
        else:  # no ufunc (the backwards of ReLU and tanh): the expression, copied into out
            dest = "o" if chain or j == last else f"t{j}"
            if dest != "o":
                lines.append(f"    t{j} = xp.empty({kernel.shape!r}, dtype='float32')")
            lines.append(f"    xp.copyto({dest}, {_PY[op].format(*args)})")
            continue
        if chain or j == last:
            lines.append(f"    {call}, out=o)")
        else:
            lines.append(f"    t{j} = {call})")
    lines.append("    return out")
    exec("\n".join(lines), ns)
    return ns["run"]


# ---- generating and compiling C --------------------------------------------------------------
def c_source(kernel: FusedElementwise) -> str:
    """The C function of a kernel: rows of the output's last axis in row-major order; each
    input is read at its own element strides (a broadcast axis has stride 0), the outer axes
    advanced like an odometer after each row."""
    n = kernel.n_inputs
    params = "".join(f", const float *in{i}, const long long *st{i}" for i in range(n))
    lines = ["#include <math.h>", _HELPERS,
             f"void fused(long long size, int ndim, const long long *shape, float *out{params},"
             " const float *s) {",
             "  if (size == 0) return;",
             "  const long long inner = ndim ? shape[ndim - 1] : 1;",
             "  long long idx[32] = {0};",
             "  long long off[%d] = {0};" % max(n, 1)]
    lines += [f"  const long long l{i} = ndim ? st{i}[ndim - 1] : 0;" for i in range(n)]
    lines += ["  for (long long base = 0; base < size; base += inner) {"]
    lines += [f"    const float *p{i} = in{i} + off[{i}];" for i in range(n)]
    lines += ["    float *o = out + base;",
              "    for (long long j = 0; j < inner; ++j) {"]
    lines += [f"      const float x{i} = p{i}[j * l{i}];" for i in range(n)]
    lines += ["      " + line for line in _step_lines(kernel, "x{}", "s[{}]")]
    lines += [f"      o[j] = t{len(kernel.program) - 1};", "    }"]
    lines += ["    for (int d = ndim - 2; d >= 0; --d) {",
              "      if (++idx[d] < shape[d]) {"]
    lines += [f"        off[{i}] += st{i}[d];" for i in range(n)]
    lines += ["        break;", "      }", "      idx[d] = 0;"]
    lines += [f"      off[{i}] -= st{i}[d] * (shape[d] - 1);" for i in range(n)]
    lines += ["    }", "  }", "}", ""]
    return "\n".join(lines)


_HELPERS = """/* NumPy's maximum/minimum: a NaN on either side gives NaN */
static inline float nmax(float a, float b) { return (a != a || a > b) ? a : b; }
static inline float nmin(float a, float b) { return (a != a || a < b) ? a : b; }
static inline float nrelu(float a) { return a < 0.0f ? 0.0f : a; }"""


def _step_lines(kernel, input_fmt, scalar_fmt):
    """`const float t<j> = <expression>;` for each step, inputs and scalars named by the
    formats (C and CUDA share these lines)."""
    lines = []
    for j, (op, operands) in enumerate(kernel.program):
        args = [input_fmt.format(x) if k == "in" else f"t{x}" if k == "t"
                else scalar_fmt.format(x) if k == "s" else f"{float(x)!r}f"
                for k, x in operands]
        lines.append(f"const float t{j} = {FUSIBLE[op][1].format(*args)};")
    return lines


def _cuda_kernel(kernel):
    """One device kernel from the same step lines, built by the device's
    `elementwise_kernel(params, body, name, preamble)` hook (CuPy's elementwise kernels
    broadcast and walk the strides themselves); None when the device has no such hook, and
    the generated CuPy function then runs the steps op by op."""
    make = getattr(kernel.device, "elementwise_kernel", None)
    if make is None:
        return None
    params = ", ".join([f"float32 in{i}" for i in range(kernel.n_inputs)]
                       + [f"float32 s{j}" for j in range(kernel.n_scalars)])
    body = " ".join(_step_lines(kernel, "in{}", "s{}"))
    body += f" out = t{len(kernel.program) - 1};"
    return make(params, body, "needle_fused",
                _HELPERS.replace("static inline", "__device__ inline"))


_LIBRARIES = {}
# Fused groups of at least this many output elements run as generated C; None: never (the
# default). Measured 2026-12-02 on the 2-core development machine (loaded), a (2048, 512)
# group: C 6.2 ms against 3.9-4.3 ms for NumPy's calls for `max(a * b + 0.5, 0) * 2`, and
# 31 ms against 11 ms with a tanh (glibc's scalar tanhf against NumPy's SIMD loops); below
# ~16k elements the ctypes call alone costs more than the arithmetic. So the generated
# NumPy function is the default; NEEDLE_FUSED_C_MIN_ELEMENTS=<n> turns the C path on.
C_MIN_ELEMENTS = (int(os.environ["NEEDLE_FUSED_C_MIN_ELEMENTS"])
                  if os.environ.get("NEEDLE_FUSED_C_MIN_ELEMENTS", "").isdigit() else None)


def _compiled(kernel):
    """The ctypes function of the kernel's C source (compiled once, cached on disk), or None
    when no compiler works."""
    if len(kernel.shape) > 32:
        return None
    src = c_source(kernel)
    key = hashlib.sha256(src.encode()).hexdigest()[:24]
    if key in _LIBRARIES:
        return _LIBRARIES[key]
    lib = build_library(src, c_compiler(), "fused")
    fn = None
    if lib is not None:
        fn = lib.fused
        fn.restype = None
        n = kernel.n_inputs
        fn.argtypes = ([ctypes.c_int64, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
                       + [ctypes.c_void_p, ctypes.c_void_p] * n + [ctypes.c_void_p])
    _LIBRARIES[key] = fn
    return fn
