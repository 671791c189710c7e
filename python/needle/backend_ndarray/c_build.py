"""Building C sources into shared libraries, once, cached on disk (fused kernels, CPU kernels).

A library is compiled by the system C compiler (`$CC`, else cc/gcc/clang on PATH) and cached
under ~/.cache/needle/<kind> ($NEEDLE_CACHE_DIR/<kind>) by the hash of its source, its flags
and, for `-march=native` builds, the CPU's model and feature flags (a cache shared between
machines never hands one CPU another's instructions). Without a working compiler every
caller falls back to its NumPy code.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile

__all__ = ["c_compiler", "build_library"]


def c_compiler():
    """The C compiler to use ($CC, else cc/gcc/clang on PATH), or None."""
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def cache_dir(kind: str) -> str:
    root = os.environ.get("NEEDLE_CACHE_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "needle")
    return os.path.join(root, kind)


def _cpu_identity() -> str:
    """The CPU's model name and feature flags (Linux), '' elsewhere."""
    try:
        with open("/proc/cpuinfo") as f:
            lines = [ln for ln in f if ln.startswith(("model name", "flags"))]
        return "".join(sorted(set(lines)))
    except OSError:
        return ""


def build_library(source: str, cc: str | None, kind: str, flags=("-O3",)):
    """The ctypes library of a C source (compiled once, cached on disk), or None when `cc`
    is None or the build fails. The compile goes to a temporary file that replaces the
    cached one atomically, so a concurrent build or an interrupted one never leaves half a
    library."""
    if cc is None:
        return None
    flags = tuple(flags)
    ident = _cpu_identity() if "-march=native" in flags else ""
    key = hashlib.sha256("\0".join((source, " ".join(flags), ident)).encode()).hexdigest()
    try:
        folder = cache_dir(kind)
        os.makedirs(folder, exist_ok=True)
        lib = os.path.join(folder, f"{key[:24]}.so")
        if not os.path.exists(lib):
            so_tmp = f"{lib}.{os.getpid()}.tmp"  # same folder: os.replace stays atomic
            try:
                with tempfile.TemporaryDirectory() as tmp:
                    c_file = os.path.join(tmp, "k.c")
                    with open(c_file, "w") as f:
                        f.write(source)
                    subprocess.run([cc, *flags, "-shared", "-fPIC", "-o", so_tmp, c_file,
                                    "-lm"], check=True, capture_output=True, timeout=120)
                os.replace(so_tmp, lib)
            finally:
                if os.path.exists(so_tmp):
                    os.unlink(so_tmp)
        return ctypes.CDLL(lib)
    except (OSError, subprocess.SubprocessError):
        return None
