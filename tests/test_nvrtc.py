"""Every CUDA kernel needle has, compiled by NVRTC and assembled by ptxas, with no GPU.

The sources are the strings of `needle.backend_ndarray.cuda_sources.KERNELS` (no CuPy import):
each compiles for compute_80 and compute_90 with no error and no warning, and its compute_90
PTX assembles for sm_90 without spilling and within what its launch needs (registers for its
block size, the 48 KiB of static shared memory). The kernel count and the ptxas table are
printed in the run's terminal summary. Deliberately broken sources must fail, naming the kernel.

Needs the `nvidia-cuda-nvrtc-cu12` and `nvidia-cuda-nvcc-cu12` wheels (the `test` extra);
each test skips, saying which wheel is missing, where they are not installed.
"""
import os
import re

import pytest

from needle.backend_ndarray import cuda_compile as cc
from needle.backend_ndarray.cuda_sources import (
    COLUMN_BLOCK, ELEMENTWISE_BLOCK, KERNELS, ROW_BLOCK,
)
from needle.errors import UserError

pytestmark = pytest.mark.nvrtc

ARCHS = ("compute_80", "compute_90")
SM = "sm_90"
needs_nvrtc = pytest.mark.skipif(
    cc.find_nvrtc() is None,
    reason="NVRTC not found: pip install nvidia-cuda-nvrtc-cu12 (needle's test extra)")
needs_ptxas = pytest.mark.skipif(
    cc.find_ptxas() is None,
    reason="ptxas not found: pip install nvidia-cuda-nvcc-cu12 (needle's test extra)")

# Threads per block each kernel is launched with (cuda_kernels.py): what its registers must fit.
BLOCK = {"ndl_softmax_ce_fwd": ROW_BLOCK, "ndl_layer_norm_fwd": ROW_BLOCK,
         "ndl_layer_norm_bwd": ROW_BLOCK, "ndl_dot_xhat_partial": COLUMN_BLOCK}
_REGISTERS_PER_SM = 65536  # sm_80 and sm_90
_STATIC_SHARED = 48 * 1024

_PTX: dict = {}


def _ptx(name, arch):
    key = (name, arch)
    if key not in _PTX:
        _PTX[key] = cc.compile_ptx(KERNELS[name], name, arch)
    return _PTX[key]


def _kernels_launched_by_needle():
    """Entry points that cuda_kernels.py launches (string literals "ndl_...")."""
    path = os.path.join(os.path.dirname(cc.__file__), "cuda_kernels.py")
    return set(re.findall(r'"(ndl_\w+)"', open(path, encoding="utf-8").read()))


def test_every_kernel_needle_launches_has_a_source_here():
    assert _kernels_launched_by_needle() == set(KERNELS)
    for name, src in KERNELS.items():
        assert re.search(r'extern "C" __global__ void ' + name + r"\(", src), name
    root = os.path.dirname(os.path.dirname(cc.__file__))
    for dirpath, _, files in os.walk(root):  # no CuPy kernel built from a source elsewhere
        for f in files:
            if f.endswith(".py") and f not in ("cuda_kernels.py", "cuda_sources.py"):
                text = open(os.path.join(dirpath, f), encoding="utf-8").read()
                assert not re.search(r"(Elementwise|Reduction|Raw)Kernel\(|RawModule\(|"
                                     r"__global__", text), f
    assert all(b % 32 == 0 and b <= 1024 for b in (ROW_BLOCK, COLUMN_BLOCK, ELEMENTWISE_BLOCK))


@needs_nvrtc
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("name", sorted(KERNELS))
def test_kernel_compiles_without_warnings(name, arch, terminal_report):
    ptx = _ptx(name, arch)
    assert re.search(r"\.entry " + name + r"\(", ptx)
    assert f".target sm_{arch[-2:]}" in ptx
    major, minor = cc.nvrtc_version()
    lines = terminal_report.setdefault("NVRTC", [])
    lines[:] = [f"NVRTC {major}.{minor}: {len(_PTX)} compilations of {len(KERNELS)} kernels "
                f"({', '.join(ARCHS)}), no errors, no warnings"]


@needs_nvrtc
@needs_ptxas
@pytest.mark.parametrize("name", sorted(KERNELS))
def test_kernel_resources_on_sm90(name, terminal_report):
    res = cc.assemble(_ptx(name, "compute_90"), name, SM)
    assert set(res) == {name}
    r = res[name]
    table = terminal_report.setdefault(f"ptxas -v ({SM})", [
        f"{'kernel':24s} {'regs':>5s} {'smem B':>7s} {'stack B':>8s} {'spill st/ld B':>14s} "
        f"{'block':>6s}"])
    block = BLOCK.get(name, ELEMENTWISE_BLOCK)
    table.append(f"{name:24s} {r.registers:5d} {r.shared_bytes:7d} {r.stack_bytes:8d} "
                 f"{f'{r.spill_stores}/{r.spill_loads}':>14s} {block:6d}")
    assert r.spill_stores == 0 and r.spill_loads == 0, f"{name} spills on {SM}: {r}"
    assert r.registers * block <= _REGISTERS_PER_SM, f"{name}: {r.registers} registers x " \
        f"{block} threads do not fit one SM"
    assert r.shared_bytes <= _STATIC_SHARED, r


# ---- broken sources fail, naming the kernel -----------------------------------------------

@needs_nvrtc
def test_a_broken_source_fails_naming_the_kernel():
    src = KERNELS["ndl_adam"].replace("sqrtf(", "sqrtff(")
    with pytest.raises(cc.KernelCompileError, match=r"kernel ndl_adam \(compute_80\).*"
                       r"(?s:.*)sqrtff") as info:
        cc.compile_ptx(src, "ndl_adam", "compute_80")
    assert isinstance(info.value, UserError) and "error" in str(info.value)


@needs_nvrtc
def test_a_warning_fails_too():
    src = KERNELS["ndl_batch_norm_fwd"].replace("const long long size = n * c;",
                                                "const long long size = n * c; int unused;")
    with pytest.raises(cc.KernelCompileError, match=r"kernel ndl_batch_norm_fwd "
                       r"\(compute_90\): NVRTC warnings(?s:.*)unused"):
        cc.compile_ptx(src, "ndl_batch_norm_fwd", "compute_90")


@needs_nvrtc
@needs_ptxas
def test_ptxas_errors_and_spills_are_caught():
    with pytest.raises(cc.KernelCompileError, match=r"kernel ndl_truncated \(sm_90\): ptxas"):
        cc.assemble(_ptx("ndl_adam", "compute_90")[:-40], "ndl_truncated", SM)
    # 64 products kept live under a 32-register cap (launch bounds 1024 threads x 2 blocks)
    n = 64
    body = "".join(f"float a{i} = x[{i} * s] * x[{i} * s + 1];" for i in range(n))
    total = " + ".join(f"a{i} * a{(7 * i + 3) % n}" for i in range(n))
    src = ('extern "C" __global__ void __launch_bounds__(1024, 2) ndl_spill('
           "const float* x, float* y, long long s) {" + body
           + f"y[threadIdx.x] = {total};" + "}")
    r = cc.assemble(cc.compile_ptx(src, "ndl_spill"), "ndl_spill", SM)["ndl_spill"]
    assert r.registers <= 32 and r.spill_stores > 0 and r.spill_loads > 0


@needs_nvrtc
@needs_ptxas
def test_ptxas_reports_what_the_source_declares():
    src = ('extern "C" __global__ void ndl_probe(float* y) {'
           "__shared__ float buf[1000]; buf[threadIdx.x] = y[threadIdx.x]; __syncthreads();"
           "y[threadIdx.x] = buf[999 - threadIdx.x]; }")
    r = cc.assemble(cc.compile_ptx(src, "ndl_probe"), "ndl_probe", SM)["ndl_probe"]
    assert r.shared_bytes == 4000 and r.barriers == 1 and r.arch == SM
    assert r.spill_stores == 0 and r.stack_bytes == 0 and 0 < r.registers <= 255


def test_missing_compiler_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("NEEDLE_PTXAS", "")
    monkeypatch.setattr(cc, "find_ptxas", lambda: None)
    with pytest.raises(cc.KernelCompileError, match="ptxas not found.*nvidia-cuda-nvcc-cu12"):
        cc.assemble("", "ndl_adam")
    monkeypatch.setattr(cc, "find_nvrtc", lambda: None)
    with pytest.raises(cc.KernelCompileError, match="NVRTC not found.*nvidia-cuda-nvrtc-cu12"):
        cc.compile_ptx(KERNELS["ndl_adam"], "ndl_adam")
