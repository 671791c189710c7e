"""Compile CUDA sources to PTX with NVRTC and assemble them with `ptxas`, without a GPU.

NVRTC is a plain shared library (`libnvrtc.so.12`, from the `nvidia-cuda-nvrtc-cu12` wheel or
a CUDA toolkit) that needs no driver, so it is called here through `ctypes`; CuPy's own NVRTC
wrapper refuses to run without a driver. `ptxas` (from `nvidia-cuda-nvcc-cu12`, or a toolkit)
turns PTX into a cubin for one SM and, with `-v`, reports each kernel's registers, shared
memory and spills. tests/test_nvrtc.py runs both over every source of cuda_sources.py.

>>> ptx = compile_ptx(KERNELS["ndl_adam"], "ndl_adam", "compute_90")
>>> assemble(ptx, "ndl_adam", "sm_90")["ndl_adam"].registers
"""
from __future__ import annotations

import ctypes
import os
import re
import shutil
import subprocess
import sys
import tempfile
from typing import NamedTuple

from ..errors import UserError

__all__ = ["KernelCompileError", "find_nvrtc", "find_ptxas", "nvrtc_version", "compile_ptx",
           "CUPY_NVRTC_OPTIONS", "KernelResources", "assemble"]


class KernelCompileError(UserError, RuntimeError):
    """A CUDA kernel source that NVRTC or ptxas rejected, or warned about: the message names
    the kernel, the architecture and the compiler's log."""


def _wheel_paths(*parts):
    for base in sys.path:
        path = os.path.join(base or ".", "nvidia", *parts)
        if os.path.exists(path):
            yield path


def find_nvrtc() -> str | None:
    """Path of libnvrtc.so.12: $NEEDLE_NVRTC, the nvidia-cuda-nvrtc-cu12 wheel, or a
    toolkit's library under $CUDA_HOME (or /usr/local/cuda); None when there is none."""
    env = os.environ.get("NEEDLE_NVRTC")
    if env:
        return env
    for path in _wheel_paths("cuda_nvrtc", "lib", "libnvrtc.so.12"):
        return path
    home = os.environ.get("CUDA_HOME", "/usr/local/cuda")
    for name in ("libnvrtc.so.12", "libnvrtc.so"):
        path = os.path.join(home, "lib64", name)
        if os.path.exists(path):
            return path
    return None


def find_ptxas() -> str | None:
    """Path of ptxas: $NEEDLE_PTXAS, the nvidia-cuda-nvcc-cu12 wheel, or the PATH."""
    env = os.environ.get("NEEDLE_PTXAS")
    if env:
        return env
    for path in _wheel_paths("cuda_nvcc", "bin", "ptxas"):
        if os.access(path, os.X_OK):
            return path
    return shutil.which("ptxas")


_LIB = {}


def _nvrtc():
    path = find_nvrtc()
    if path is None:
        raise KernelCompileError(
            "NVRTC not found: pip install nvidia-cuda-nvrtc-cu12 (in needle's `test` extra), "
            "or set NEEDLE_NVRTC to a libnvrtc.so.12")
    lib = _LIB.get(path)
    if lib is None:
        lib = ctypes.CDLL(path)
        lib.nvrtcGetErrorString.restype = ctypes.c_char_p
        lib.nvrtcGetErrorString.argtypes = [ctypes.c_int]
        lib.nvrtcCreateProgram.argtypes = [
            ctypes.POINTER(ctypes.c_void_p), ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int,
            ctypes.c_void_p, ctypes.c_void_p]
        lib.nvrtcCompileProgram.argtypes = [ctypes.c_void_p, ctypes.c_int,
                                            ctypes.POINTER(ctypes.c_char_p)]
        for fn in ("nvrtcGetProgramLogSize", "nvrtcGetPTXSize"):
            getattr(lib, fn).argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t)]
        for fn in ("nvrtcGetProgramLog", "nvrtcGetPTX"):
            getattr(lib, fn).argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.nvrtcDestroyProgram.argtypes = [ctypes.POINTER(ctypes.c_void_p)]
        _LIB[path] = lib
    return lib


def nvrtc_version() -> tuple[int, int]:
    """(major, minor) of the NVRTC found by `find_nvrtc`."""
    lib = _nvrtc()
    major, minor = ctypes.c_int(), ctypes.c_int()
    lib.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor))
    return major.value, minor.value


def _text(lib, prog, size_fn, get_fn) -> str:
    size = ctypes.c_size_t()
    getattr(lib, size_fn)(prog, ctypes.byref(size))
    buf = ctypes.create_string_buffer(size.value)
    getattr(lib, get_fn)(prog, buf)
    return buf.value.decode("utf-8", "replace")


# What CuPy adds to a RawKernel's (empty) options when it compiles with NVRTC: flush
# denormals to zero (cupy/cuda/compiler.py, `_compile_with_cache_cuda`); it picks the arch.
CUPY_NVRTC_OPTIONS = ("-ftz=true",)


def compile_ptx(source: str, name: str, arch: str = "compute_90",
                options: tuple[str, ...] = CUPY_NVRTC_OPTIONS) -> str:
    """PTX of one CUDA source, compiled by NVRTC for a virtual architecture (`compute_80`),
    with the options CuPy uses for a RawKernel unless `options` says otherwise.

    Raises KernelCompileError naming `name` when NVRTC fails or prints anything (a warning
    fails too: a kernel that compiles with warnings is not accepted).
    """
    lib = _nvrtc()
    prog = ctypes.c_void_p()
    rc = lib.nvrtcCreateProgram(ctypes.byref(prog), source.encode(), f"{name}.cu".encode(),
                                0, None, None)
    if rc:
        raise KernelCompileError(f"{name}: nvrtcCreateProgram failed: "
                                 f"{lib.nvrtcGetErrorString(rc).decode()}")
    try:
        opts = [f"--gpu-architecture={arch}", *options]
        argv = (ctypes.c_char_p * len(opts))(*(o.encode() for o in opts))
        rc = lib.nvrtcCompileProgram(prog, len(opts), argv)
        log = _text(lib, prog, "nvrtcGetProgramLogSize", "nvrtcGetProgramLog").strip()
        if rc or log:
            what = lib.nvrtcGetErrorString(rc).decode() if rc else "warnings"
            raise KernelCompileError(f"kernel {name} ({arch}): NVRTC {what}:\n{log}")
        return _text(lib, prog, "nvrtcGetPTXSize", "nvrtcGetPTX")
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))


class KernelResources(NamedTuple):
    """What `ptxas -v` reports for one kernel on one SM."""

    name: str
    arch: str
    registers: int
    shared_bytes: int
    stack_bytes: int
    spill_stores: int
    spill_loads: int
    barriers: int


_FUNC = re.compile(r"Compiling entry function '(\w+)' for '(\w+)'")
_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"Used (\d+) registers")
_SMEM = re.compile(r"(\d+) bytes smem")
_BARRIERS = re.compile(r"used (\d+) barriers")


def _parse_ptxas(log: str) -> dict[str, KernelResources]:
    found, current = {}, None
    for line in log.splitlines():
        m = _FUNC.search(line)
        if m:
            current = dict(name=m.group(1), arch=m.group(2), registers=0, shared_bytes=0,
                           stack_bytes=0, spill_stores=0, spill_loads=0, barriers=0)
            found[current["name"]] = current
            continue
        if current is None:
            continue
        m = _FRAME.search(line)
        if m:
            current.update(stack_bytes=int(m.group(1)), spill_stores=int(m.group(2)),
                           spill_loads=int(m.group(3)))
        m = _USED.search(line)
        if m:
            current["registers"] = int(m.group(1))
            s = _SMEM.search(line)
            b = _BARRIERS.search(line)
            current["shared_bytes"] = int(s.group(1)) if s else 0
            current["barriers"] = int(b.group(1)) if b else 0
    return {k: KernelResources(**v) for k, v in found.items()}


def assemble(ptx: str, name: str, sm: str = "sm_90") -> dict[str, KernelResources]:
    """Assemble PTX with `ptxas -v --gpu-name sm` and return the resources of every entry
    point in it. Raises KernelCompileError naming `name` on an error or a ptxas warning."""
    ptxas = find_ptxas()
    if ptxas is None:
        raise KernelCompileError(
            "ptxas not found: pip install nvidia-cuda-nvcc-cu12 (in needle's `test` extra), "
            "or set NEEDLE_PTXAS")
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, f"{name}.ptx")
        with open(src, "w", encoding="utf-8") as f:
            f.write(ptx)
        r = subprocess.run([ptxas, "-v", f"--gpu-name={sm}", src, "-o",
                            os.path.join(tmp, f"{name}.cubin")],
                           capture_output=True, text=True, timeout=120)
    log = (r.stdout + r.stderr).strip()
    if r.returncode or re.search(r"ptxas (warning|error|fatal)", log):
        raise KernelCompileError(f"kernel {name} ({sm}): ptxas failed:\n{log}")
    return _parse_ptxas(log)
