"""The BLAS behind needle's CPU matrix products: which sgemm the C library (gemm.c) calls.

needle's thread pool splits each large product into blocks of rows or columns (or whole
matrices of a batch) and calls a single-threaded sgemm on each, so the BLAS itself must run
one thread: two thread pools spinning on the same cores slowed a training step 3x. Two
libraries are known:

- NumPy's OpenBLAS, found among the libraries this process has loaded (NumPy's wheels ship
  scipy-openblas; a system OpenBLAS also works). It is always set to one thread, since
  NumPy's own matmul (the small products, on the calling thread) uses it too.
- Intel's MKL runtime from the `mkl` package (`pip install -e '.[mkl]'`), when it is
  installed: `libmkl_rt` under the environment's `lib/`, loaded with its sequential threading
  layer and 32-bit integers (`cblas_sgemm`).

`NEEDLE_BLAS` picks: `auto` (the default: MKL when installed, else OpenBLAS), `mkl` (an
error when it is not installed) or `openblas`. `name()` says which one the products use.
Measured on 2026-12-07 on a 2-core Sapphire Rapids VM (benchmarks/RESULTS.md): the
Transformer LM's products took 164-166 ms of its compiled step with MKL 2026.2 against
187-199 ms with OpenBLAS 0.3 (NumPy 2's wheel).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

__all__ = ["connect", "name", "single_thread", "CHOICES"]

CHOICES = ("auto", "mkl", "openblas")
# (sgemm, 64-bit integers, set_num_threads) symbol names of the OpenBLAS builds NumPy ships
# (scipy-openblas, with 64- or 32-bit integers) and of a system OpenBLAS
_OPENBLAS_SYMBOLS = (
    ("scipy_cblas_sgemm64_", True, "scipy_openblas_set_num_threads64_"),
    ("scipy_cblas_sgemm", False, "scipy_openblas_set_num_threads"),
    ("cblas_sgemm64_", True, "openblas_set_num_threads64_"),
    ("cblas_sgemm", False, "openblas_set_num_threads"),
)
_MKL_THREADING_SEQUENTIAL, _MKL_INTERFACE_LP64 = 1, 0
_STATE = {"name": None, "set_threads": []}


def _loaded_openblas_paths():
    """Paths of the OpenBLAS libraries loaded in this process (NumPy's), Linux only."""
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if "/" in line}
    except OSError:
        return []
    return sorted(p for p in paths
                  if "openblas" in os.path.basename(p).lower() and os.path.isfile(p))


def _openblas():
    """(sgemm address, 64-bit integers, version) of the loaded OpenBLAS, set to one thread;
    None when none with a CBLAS sgemm is loaded."""
    for path in _loaded_openblas_paths():
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for gemm_name, ilp64, threads_name in _OPENBLAS_SYMBOLS:
            gemm = getattr(lib, gemm_name, None)
            set_threads = getattr(lib, threads_name, None)
            if gemm is None or set_threads is None:
                continue
            set_threads.argtypes, set_threads.restype = [ctypes.c_int], None
            set_threads(1)
            if set_threads not in _STATE["set_threads"]:
                _STATE["set_threads"].append(set_threads)
            config = getattr(lib, gemm_name.replace("cblas_sgemm", "openblas_get_config"), None)
            version = "OpenBLAS"
            if config is not None:
                config.restype = ctypes.c_char_p
                version = config().decode(errors="replace").split(" ")[:2]
                version = " ".join(version)
            return ctypes.cast(gemm, ctypes.c_void_p).value, ilp64, version
    return None


def _mkl_paths():
    """Where the `mkl` package puts its runtime (the environment's lib/), then the loader's
    search path."""
    names = ("libmkl_rt.so.3", "libmkl_rt.so.2", "libmkl_rt.so")
    seen = []
    for prefix in (sys.prefix, sys.exec_prefix, sys.base_prefix):
        for n in names:
            path = os.path.join(prefix, "lib", n)
            if path not in seen and os.path.isfile(path):
                seen.append(path)
    found = ctypes.util.find_library("mkl_rt")
    if found:
        seen.append(found)
    return seen


def _mkl():
    """(sgemm address, False, version) of MKL's runtime in its sequential layer, or None."""
    for path in _mkl_paths():
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        try:
            lib.MKL_Set_Threading_Layer.argtypes = [ctypes.c_int]
            lib.MKL_Set_Interface_Layer.argtypes = [ctypes.c_int]
            # before any other MKL call; a process that used MKL already keeps its layer,
            # so its threads are set to one as well
            lib.MKL_Set_Interface_Layer(_MKL_INTERFACE_LP64)
            lib.MKL_Set_Threading_Layer(_MKL_THREADING_SEQUENTIAL)
            lib.MKL_Set_Num_Threads.argtypes = [ctypes.c_int]
            lib.MKL_Set_Num_Threads(1)
            buf = ctypes.create_string_buffer(256)
            lib.MKL_Get_Version_String(buf, len(buf))
            gemm = lib.cblas_sgemm
        except AttributeError:  # not an MKL runtime
            continue
        words = buf.value.decode(errors="replace").split()
        version = "MKL " + next((w.split("-")[0] for w in words if w[:1].isdigit()), "")
        return ctypes.cast(gemm, ctypes.c_void_p).value, False, version.strip()
    return None


def connect(lib) -> bool:
    """Hand the C library `lib` the sgemm `NEEDLE_BLAS` picks (see the module docstring);
    False, and products stay NumPy's, when there is none."""
    choice = os.environ.get("NEEDLE_BLAS", "auto").strip().lower() or "auto"
    if choice not in CHOICES:
        raise ValueError(f"NEEDLE_BLAS={choice!r}: expected one of {', '.join(CHOICES)}")
    openblas = _openblas()  # set to one thread whichever is chosen: NumPy calls it too
    found = _mkl() if choice in ("auto", "mkl") else None
    if found is None and choice == "mkl":
        raise RuntimeError("NEEDLE_BLAS=mkl: no MKL runtime (libmkl_rt) was found; install "
                           "it with pip install -e '.[mkl]' or unset NEEDLE_BLAS")
    found = found or openblas
    if found is None:
        return False
    gemm, ilp64, _STATE["name"] = found
    lib.blas_configure(gemm, int(ilp64))
    return True


def name():
    """The BLAS the CPU products use ("MKL 2026.2.1", "OpenBLAS 0.3.29", ...), or None
    before the first product or without one (NumPy's matmul then)."""
    return _STATE["name"]


def single_thread() -> None:
    """Set OpenBLAS to one thread again (threadpoolctl, for one, may have raised it)."""
    for set_threads in _STATE["set_threads"]:
        set_threads(1)
