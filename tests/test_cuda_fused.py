"""needle.compile's fused elementwise groups on cuda(), without a GPU.

`cuda()` runs each fused group as one generated kernel (`cuda_sources.fused_elementwise_source`,
launched by `CupyKernels.fused_elementwise`). Here: the generated sources compile under NVRTC
and assemble under ptxas with no warning and no spill; and the real dispatch (CUDADevice ->
FusedElementwise -> the launch code) runs over a NumPy stand-in for CuPy whose RawKernel checks
each launch against the source's C signature and emulates the kernel loop for loop: the same
index decomposition, the same strided reads from each argument's memory, the body's C
expressions evaluated in float32. Its results equal the CPU's fused and unfused numbers.
"""
import re

import numpy as np
import pytest

import needle as ndl
from needle import nn
from needle.backend_ndarray import cuda_compile as cc
from needle.backend_ndarray.cuda import CUDADevice
from needle.backend_ndarray.cuda_kernels import CupyKernels
from needle.backend_ndarray.cuda_sources import FUSED_NAME
from needle.backend_ndarray.fused_elementwise import FusedElementwise

_C_TYPES = {"float": np.float32, "long long": np.int64, "int": np.int32}
_C_FUNCS = {"expf": "np.exp", "logf": "np.log", "tanhf": "np.tanh", "sqrtf": "np.sqrt",
            "fabsf": "np.abs", "nmax": "np.maximum", "nmin": "np.minimum"}
_FLOAT = re.compile(r"(?<![\w.])((?:\d+\.\d*|\.\d+|\d+)(?:e[-+]?\d+)?)f\b")


def _signature(code):
    m = re.search(r"__global__ void " + FUSED_NAME + r"\((.*?)\)\s*\{", code, re.S)
    out = []
    for p in m.group(1).split(","):
        words = p.replace("*", " * ").split()
        ctype = "long long" if "long" in words else ("float" if "float" in words else "int")
        out.append((words[-1], _C_TYPES[ctype], "*" in words))
    return out


def _body(code):
    """The statements between `float out;` and the store: the fused program in C."""
    return code.split("float out;", 1)[1].split("out_[i] = out;", 1)[0]


def _python(expr):
    expr = _FLOAT.sub(r"np.float32(\1)", expr)
    for c, py in _C_FUNCS.items():
        expr = re.sub(r"\b" + c + r"\(", py + "(", expr)
    return expr


class _FusedRawKernel:
    """cupy.RawKernel for generated fused kernels, over NumPy: checks the launch against the
    C signature, then runs the kernel's loop over all i at once."""

    launches = []

    def __init__(self, code, name):
        assert name == FUSED_NAME
        self.code, self.params = code, _signature(code)

    def __call__(self, grid, block, args):
        assert len(args) == len(self.params)
        assert len(block) == 1 and block[0] % 32 == 0 and len(grid) == 1 and grid[0] >= 1
        a = {}
        for (pname, ptype, pointer), arg in zip(self.params, args):
            if pointer:
                assert isinstance(arg, np.ndarray) and arg.dtype == ptype, (pname, arg)
            else:
                assert type(arg) is ptype, (pname, type(arg))
            a[pname] = arg
        _FusedRawKernel.launches.append(self.code)
        n, ndim, meta = int(a["n"]), int(a["ndim"]), a["meta"]
        inputs = [p for p, _, ptr in self.params if ptr and p.startswith("in")]
        i = np.arange(n, dtype=np.int64)  # every thread's i of the grid-stride loop
        rem, offsets = i.copy(), [np.zeros(n, np.int64) for _ in inputs]
        for d in range(ndim - 1, -1, -1):
            c = rem % meta[d]
            rem //= meta[d]
            for k in range(len(inputs)):
                offsets[k] += c * meta[(k + 1) * ndim + d]
        env = {"np": np}
        for k, pname in enumerate(inputs):  # `const float in<k> = in<k>_[o<k>];`
            o = offsets[k]
            assert (o >= 0).all()
            memory = np.lib.stride_tricks.as_strided(a[pname], (int(o.max()) + 1,), (4,))
            env[pname[:-1]] = memory[o]
        for pname, ptype, pointer in self.params:
            if not pointer and pname.startswith("s"):
                env[pname] = a[pname]
        for stmt in _body(self.code).split(";"):
            stmt = stmt.strip()
            if stmt:
                target, expr = stmt.replace("const float ", "").split("=", 1)
                env[target.strip()] = np.asarray(eval(_python(expr), env), dtype=np.float32)
        a["out_"].reshape(-1)[...] = np.broadcast_to(env["out"], (n,))


def _raw_kernel(code, name):
    """The stand-in RawKernel: generated kernels here, the fixed kernels of cuda_sources.py
    through test_cuda_reference's emulation of each."""
    if name == FUSED_NAME:
        return _FusedRawKernel(code, name)
    from test_cuda_reference import _RawKernel

    return _RawKernel(code, name)


class _NumpyCupy:
    """The parts of CuPy that cuda.py and cuda_kernels.py use, over NumPy."""

    RawKernel = staticmethod(_raw_kernel)

    def __getattr__(self, name):
        return getattr(np, name)


def _device():
    dev = CUDADevice(xp=_NumpyCupy())
    dev._kernels = CupyKernels(_NumpyCupy())
    return dev


# tanh(max(in0 * 1.01 + in1, s0)) / sqrt(abs(in2) + 1), then exp, log, min, neg, sub
PROGRAM = [("mul", (("in", 0), ("c", 1.01))), ("add", (("t", 0), ("in", 1))),
           ("maximum", (("t", 1), ("s", 0))), ("tanh", (("t", 2),)), ("abs", (("in", 2),)),
           ("add", (("t", 4), ("c", 1.0))), ("sqrt", (("t", 5),)), ("div", (("t", 3), ("t", 6))),
           ("exp", (("t", 7),)), ("log", (("t", 8),)), ("minimum", (("t", 9), ("c", 0.5))),
           ("neg", (("t", 10),)), ("sub", (("t", 11), ("in", 0)))]


def _inputs(dev, shape=(6, 9)):
    rng = np.random.default_rng(0)
    a = rng.standard_normal(shape[::-1]).astype(np.float32)  # read through a transpose
    b = rng.standard_normal((1, shape[1])).astype(np.float32)  # broadcast over rows
    c = rng.standard_normal(shape).astype(np.float32)
    return [ndl.NDArray(a, device=dev).permute((1, 0)), ndl.NDArray(b, device=dev),
            ndl.NDArray(c, device=dev)]


def _generated_sources():
    dev, seen = _device(), []
    real = dev._kernels.fused_elementwise

    def capture(params, body, name, preamble=""):
        seen.append((params, body, preamble))
        return real(params, body, name, preamble)
    dev._kernels.fused_elementwise = capture
    FusedElementwise(PROGRAM, 3, 1, (6, 9), dev)
    from needle.backend_ndarray.cuda_sources import fused_elementwise_source
    return [fused_elementwise_source(*s) for s in seen]


def test_fused_group_runs_as_one_generated_kernel_with_the_cpu_numbers():
    dev = _device()
    _FusedRawKernel.launches = []
    got = FusedElementwise(PROGRAM, 3, 1, (6, 9), dev)(*_inputs(dev), -0.25)
    assert len(_FusedRawKernel.launches) == 1
    want = FusedElementwise(PROGRAM, 3, 1, (6, 9), ndl.cpu())(*_inputs(ndl.cpu()), -0.25)
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-6, atol=1e-7)


def _mlp_losses(device, compiled, steps=6):
    ndl.init.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8, device=device), nn.ReLU(),
                          nn.Linear(8, 3, device=device))
    opt = ndl.optim.Adam(model.parameters(), lr=0.05, weight_decay=1e-3)
    rng = np.random.default_rng(1)

    def step(x, y):
        opt.reset_grad()
        z = ndl.ops.tanh(model(x) * 1.5 + 0.25) * 2.0  # an elementwise chain to fuse
        loss = nn.SoftmaxLoss()(z, y)
        loss.backward(create_graph=False)
        opt.step()
        return loss

    run = ndl.compile(step) if compiled else step
    losses = []
    for _ in range(steps):
        x = ndl.Tensor(rng.standard_normal((4, 5)).astype(np.float32), device=device)
        y = ndl.Tensor(rng.integers(0, 3, 4).astype(np.float32), device=device)
        losses.append(float(run(x, y).numpy()))
    return losses


def test_compiled_training_on_cuda_launches_the_fused_kernels():
    _FusedRawKernel.launches = []
    got = _mlp_losses(_device(), compiled=True)
    assert len(_FusedRawKernel.launches) > 0  # the replays ran generated kernels
    np.testing.assert_allclose(got, _mlp_losses(ndl.cpu(), compiled=False), rtol=1e-5)


needs_nvrtc = pytest.mark.skipif(cc.find_nvrtc() is None,
                                 reason="NVRTC not found: pip install nvidia-cuda-nvrtc-cu12")
needs_ptxas = pytest.mark.skipif(cc.find_ptxas() is None,
                                 reason="ptxas not found: pip install nvidia-cuda-nvcc-cu12")


@pytest.mark.nvrtc
@needs_nvrtc
@needs_ptxas
@pytest.mark.parametrize("arch", ["compute_80", "compute_90"])
def test_generated_source_compiles_and_assembles(arch):
    sources = _generated_sources()
    assert len(sources) == 1
    ptx = cc.compile_ptx(sources[0], FUSED_NAME, arch)
    assert re.search(r"\.entry " + FUSED_NAME + r"\(", ptx)
    if arch == "compute_90":
        r = cc.assemble(ptx, FUSED_NAME, "sm_90")[FUSED_NAME]
        assert r.spill_stores == 0 and r.spill_loads == 0 and r.stack_bytes == 0, r
