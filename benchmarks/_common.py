"""Shared helpers for the side-by-side benchmarks: medians of repeated timings, ratio tables."""
from __future__ import annotations

import os
import platform
import statistics
import sys
import time

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(_ROOT, "python"))


def median_time(fn, repeat: int = 7, warmup: int = 2) -> float:
    """Median wall time of fn() in seconds over `repeat` runs after `warmup` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def blas_name() -> str:
    """The sgemm needle's CPU products call (NEEDLE_BLAS; `pip install -e '.[mkl]'` for MKL)."""
    from needle.backend_ndarray import blas, cpu_c  # noqa: PLC0415 (after the sys.path line)

    cpu_c.library()
    return blas.name() or "NumPy's matmul"


def machine() -> str:
    return (f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
            f"needle's BLAS: {blas_name()}")


def print_table(title: str, rows, columns=("needle", "torch")) -> None:
    """rows: (name, needle value, torch value, unit, ratio text, target text); `columns` names
    the two value columns."""
    print(f"\n{title}  ({machine()})")
    print(f"{'case':44s} {columns[0]:>12s} {columns[1]:>12s} {'unit':>10s} {'ratio':>8s}  "
          "target")
    for name, a, b, unit, ratio, target in rows:
        print(f"{name:44s} {a:12.3f} {b:12.3f} {unit:>10s} {ratio:>8s}  {target}")
