"""The CUDA device: its code run over NumPy (always) and over CuPy on a GPU (when present).

`ndl.cuda.simulated()` is the CUDA device's code over NumPy: the same `CUDADevice` methods, with
NumPy standing in for CuPy's module and the composed `Device` kernels standing in for the fused
CuPy ones. Every case below runs on it and compares with `cpu()`; the same cases run on the real
`cuda()` where CuPy and a GPU are present (skipped otherwise), and GPU-only cases check the raw
kernels against the composed code they replace.
"""
import gc
import importlib.util
import os
import re
import shutil
import subprocess

import numpy as np
import pytest

import needle as ndl
import needle.nn as nn
from needle import backend_ndarray as nd
from needle import ops
from needle.models import MLPResNet
from needle.backend_ndarray.cuda import CUDADevice, _PoolStats

SIM = ndl.cuda.simulated()
GPU = ndl.cuda()
needs_gpu = pytest.mark.skipif(not GPU.enabled(), reason="needs CuPy and a CUDA GPU")
no_gpu = pytest.mark.skipif(GPU.enabled(), reason="checks the behaviour without a GPU")
DEVICES = [pytest.param(SIM, id="cuda-sim"), pytest.param(GPU, id="cuda", marks=needs_gpu)]
CPU = ndl.cpu()


def _rand(*shape, seed=0, positive=False):
    rng = np.random.default_rng(seed + 7 * len(shape) + sum(shape))
    x = rng.standard_normal(shape).astype(np.float32)
    return np.abs(x) + 0.5 if positive else x


def _close(a, b, rtol=1e-5, atol=1e-5):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=rtol, atol=atol)


# ---- the device object ------------------------------------------------------------------------

def test_cuda_is_a_device_object_with_a_memory_namespace():
    dev = ndl.cuda()
    assert isinstance(dev, CUDADevice) and isinstance(dev.enabled(), bool)
    assert repr(dev) == "cuda()" and str(dev) == "cuda()"
    assert dev == nd.cuda() and dev != ndl.cpu() and not dev.simulated
    assert ndl.cuda.is_available() is dev.enabled()
    assert set(ndl.cuda.memory_stats()) == {"allocated", "reserved", "peak"}
    assert nd.all_devices()[1] == dev
    if importlib.util.find_spec("cupy") is None:
        assert dev.enabled() is False


def test_simulated_device_is_its_own_device():
    assert SIM.enabled() and SIM.simulated and repr(SIM) == "cuda(simulated)"
    assert SIM == CUDADevice(xp=np) and hash(SIM) == hash(CUDADevice(xp=np))
    assert SIM != ndl.cuda() and SIM != ndl.cpu() and ndl.cpu() != SIM
    assert SIM._kernels is None  # the composed Device kernels are what runs over NumPy


@no_gpu
def test_disabled_cuda_refuses_arrays_with_a_clear_error():
    dev = ndl.cuda()
    for make in (lambda: ndl.Tensor([1.0, 2.0], device=dev),
                 lambda: nd.array(np.ones(3), device=dev),
                 lambda: ndl.init.zeros(2, 3, device=dev),
                 lambda: ndl.Tensor([1.0]).to(dev),
                 lambda: dev.full((2,), 1.0)):
        with pytest.raises(RuntimeError, match=r"no CUDA device.*enabled\(\)"):
            make()


@no_gpu
def test_memory_stats_are_zero_without_a_gpu():
    assert ndl.cuda.memory_stats() == {"allocated": 0, "reserved": 0, "peak": 0}
    ndl.cuda.reset_peak_memory_stats()
    ndl.cuda.empty_cache()
    ndl.cuda.synchronize()


class _FakePool:
    """CuPy's MemoryPool interface (malloc, used_bytes, total_bytes) over plain integers."""

    def __init__(self):
        self.used, self.total = 0, 0

    def malloc(self, size):
        self.used += size
        self.total = max(self.total, self.used)
        return size

    def free(self, size):
        self.used -= size

    def used_bytes(self):
        return self.used

    def total_bytes(self):
        return self.total


def test_pool_stats_track_the_peak():
    pool = _FakePool()
    stats = _PoolStats(pool)
    a = stats.malloc(100)
    stats.malloc(50)
    pool.free(a)
    assert stats.stats() == {"allocated": 50, "reserved": 150, "peak": 150}
    stats.reset_peak()
    assert stats.stats()["peak"] == 50
    stats.malloc(10)
    assert stats.stats() == {"allocated": 60, "reserved": 150, "peak": 60}


@needs_gpu
def test_memory_stats_on_gpu():
    ndl.cuda.reset_peak_memory_stats()
    before = ndl.cuda.memory_stats()
    x = ndl.Tensor(np.ones((1024, 1024), np.float32), device=GPU)
    s = ndl.cuda.memory_stats()
    assert s["allocated"] >= before["allocated"] + 4 * 2 ** 20
    assert s["reserved"] >= s["allocated"] and s["peak"] >= s["allocated"]
    del x


# ---- NDArray on the device --------------------------------------------------------------------

@pytest.mark.parametrize("dev", DEVICES)
def test_constructors_and_transfers(dev):
    x = _rand(3, 4)
    a = nd.array(x, device=dev)
    assert a.device == dev and a.shape == (3, 4) and a.strides == (4, 1)
    _close(a.numpy(), x)
    out = a.numpy()
    out[0, 0] = 99.0  # numpy() is a host copy: writing to it leaves the device array alone
    assert a.numpy()[0, 0] == x[0, 0]
    assert a.to(CPU).device == CPU and a.to(CPU).to(dev).device == dev
    _close(a.to(CPU).to(dev).numpy(), x)
    _close(dev.full((2, 3), 1.5).numpy(), np.full((2, 3), 1.5))
    _close(dev.zeros((2,)).numpy(), 0)
    _close(dev.ones((2,)).numpy(), 1)
    assert dev.empty((4, 5)).shape == (4, 5)
    _close(dev.one_hot(4, np.array([2, 0])).numpy(), np.eye(4)[[2, 0]])
    for draw in ("rand", "randn"):  # one NumPy draw, moved to the device: same on every device
        np.random.seed(3)
        r = getattr(dev, draw)(2, 3).numpy()
        np.random.seed(3)
        _close(r, getattr(CPU, draw)(2, 3).numpy(), rtol=0, atol=0)
    t = ndl.Tensor(x.astype(np.float64), device=dev)
    assert t.dtype == np.float64 and t.device == dev  # a NumPy array's dtype is kept


@pytest.mark.parametrize("dev", DEVICES)
def test_views_share_the_handle_and_setitem_writes_in_place(dev):
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    a = nd.array(x, device=dev)
    ptr = a._handle.ptr()
    views = [a.reshape((6, 4)), a.permute((2, 0, 1)), a[1, 1:3, ::2],
             nd.array(x[0, 0], device=dev).broadcast_to((3, 4))]
    for v in views[:3]:
        assert v._handle.ptr() == ptr
    _close(views[1].numpy(), x.transpose(2, 0, 1))
    _close(views[2].numpy(), x[1:2, 1:3, ::2])
    assert views[2]._offset == 12 + 4 and views[3].strides == (0, 1)
    assert not views[1].is_compact() and views[1].compact().is_compact()
    v = nd.NDArray.make((3, 2), strides=(1, 4), device=dev, handle=a._handle, offset=2)
    _close(v.numpy(), x.reshape(-1)[2:][np.add.outer(np.arange(3), 4 * np.arange(2))])
    a[0, :, 1:3] = 0.0
    a[1, 0, :] = nd.array(np.full((1, 1, 4), 7.0, np.float32), device=dev)
    y = x.copy()
    y[0, :, 1:3] = 0.0
    y[1, 0, :] = 7.0
    assert a._handle.ptr() == ptr
    _close(a.numpy(), y)
    f = nd.array(x, device=dev)
    f.flat[5] += 1.0
    assert f.numpy().reshape(-1)[5] == 6.0


@pytest.mark.parametrize("dev", DEVICES)
def test_ndarray_kernels_match_numpy(dev):
    x, y = _rand(5, 6, seed=1), _rand(5, 6, seed=2)
    p = _rand(5, 6, seed=3, positive=True)
    a, b, c = (nd.array(v, device=dev) for v in (x, y, p))
    pairs = [
        (a + b, x + y), (a - b, x - y), (a * b, x * y), (a / c, x / p), (-a, -x),
        (c ** 0.5, p ** 0.5), (2.0 - a, 2.0 - x), (a + 1.5, x + 1.5), (3.0 / c, 3.0 / p),
        (a == b, (x == y)), (a >= b, (x >= y)), (a < b, (x < y)), (a != a, np.zeros_like(x)),
        (a.maximum(b), np.maximum(x, y)), (a.maximum(0.0), np.maximum(x, 0)),
        (c.log(), np.log(p)), (a.exp(), np.exp(x)), (a.tanh(), np.tanh(x)),
        (a.sum(), x.sum()), (a.sum(axis=1, keepdims=True), x.sum(1, keepdims=True)),
        (a.max(axis=0), x.max(0)), (a.min(axis=(1,)), x.min(1)), (a.argmax(axis=1), x.argmax(1)),
        (a @ b.permute((1, 0)), x @ y.T), (a.pad(((1, 0), (0, 2))), np.pad(x, ((1, 0), (0, 2)))),
        (a.flip((0, 1)), x[::-1, ::-1]), (nd.stack([a, b], 1), np.stack([x, y], 1)),
        (nd.concatenate([a, b], 0), np.concatenate([x, y])),
        (nd.where(a > b, a, 0.0), np.where(x > y, x, 0)),
    ]
    for got, want in pairs:
        assert got.device == dev
        _close(got.numpy(), want)
    s = dev.zeros((4, 6))
    s.scatter_add((dev.xp.asarray(np.array([0, 2, 0, 3, 0])),), a)
    want = np.zeros((4, 6), np.float32)
    np.add.at(want, np.array([0, 2, 0, 3, 0]), x)
    _close(s.numpy(), want)


@pytest.mark.parametrize("dev", DEVICES)
def test_matmul_tiled(dev):
    t = dev.__tile_size__
    m, n, p = 2, 3, 2
    A = _rand(m * t, n * t)
    B = _rand(n * t, p * t, seed=1)

    def tiled(mat, r, c):  # (r t, c t) -> (r, c, t, t) blocks
        return mat.reshape(r, t, c, t).transpose(0, 2, 1, 3).copy()

    a = nd.array(tiled(A, m, n), device=dev)
    b = nd.array(tiled(B, n, p), device=dev)
    out = nd.NDArray.make((m, p, t, t), device=dev)
    dev.matmul_tiled(a._handle, b._handle, out._handle, m * t, n * t, p * t)
    _close(out.numpy(), tiled(A @ B, m, p), rtol=1e-4)


# ---- every op, forward and both backward paths, against cpu() --------------------------------

def _labels(n, k, seed=0):
    return ndl.Tensor(np.random.default_rng(seed).integers(0, k, n).astype(np.float32),
                      requires_grad=False)


# (name, fn(*tensors), input arrays)
OPS = [
    ("add", lambda a, b: a + b, [_rand(3, 4), _rand(3, 4, seed=1)]),
    ("add_bcast", lambda a, b: a + b, [_rand(3, 4), _rand(1, 4, seed=1)]),
    ("sub", lambda a, b: a - b, [_rand(3, 4), _rand(3, 4, seed=1)]),
    ("mul", lambda a, b: a * b, [_rand(3, 4), _rand(3, 4, seed=1)]),
    ("div", lambda a, b: a / b, [_rand(3, 4), _rand(3, 4, seed=1, positive=True)]),
    ("power", ops.power, [_rand(3, 4, positive=True), _rand(3, 4, seed=1)]),
    ("scalars", lambda a: ops.divide_scalar(ops.mul_scalar(ops.add_scalar(a, 1.0), 3.0), 2.0)
     - 1.0, [_rand(3, 4)]),
    ("power_scalar", lambda a: ops.power_scalar(a, 3), [_rand(3, 4)]),
    ("rpow", lambda a: 2.0 ** a, [_rand(3, 4)]),
    ("negate", ops.negate, [_rand(3, 4)]),
    ("exp", ops.exp, [_rand(3, 4)]),
    ("log", ops.log, [_rand(3, 4, positive=True)]),
    ("sqrt", ops.sqrt, [_rand(3, 4, positive=True)]),
    ("relu", ops.relu, [_rand(3, 4)]),
    ("tanh", ops.tanh, [_rand(3, 4)]),
    ("sigmoid", ops.sigmoid, [_rand(3, 4)]),
    ("maximum", ops.maximum, [_rand(3, 4), _rand(3, 4, seed=1)]),
    ("matmul", ops.matmul, [_rand(3, 5), _rand(5, 4, seed=1)]),
    ("matmul_batched", ops.matmul, [_rand(2, 3, 5), _rand(5, 4, seed=1)]),
    ("summation", lambda a: ops.summation(a, (0, 2)), [_rand(2, 3, 4)]),
    ("summation_all", ops.summation, [_rand(2, 3, 4)]),
    ("mean", lambda a: ops.mean(a, 1, keepdims=True), [_rand(2, 3, 4)]),
    ("max", lambda a: ops.max(a, 1), [_rand(3, 4)]),
    ("broadcast_to", lambda a: ops.broadcast_to(a, (2, 3, 4)), [_rand(3, 1)]),
    ("reshape", lambda a: ops.reshape(a, (4, 6)), [_rand(2, 3, 4)]),
    ("transpose", ops.transpose, [_rand(2, 3, 4)]),
    ("transpose_axes", lambda a: ops.transpose(a, (0, 2)), [_rand(2, 3, 4)]),
    ("permute", lambda a: ops.permute(a, (2, 0, 1)), [_rand(2, 3, 4)]),
    ("logsumexp", lambda a: ops.logsumexp(a, (1,)), [_rand(3, 4, 2) * 10]),
    ("softmax", lambda a: ops.softmax(a, -1), [_rand(3, 4)]),
    ("logsoftmax", lambda a: ops.logsoftmax(a, 1), [_rand(3, 4)]),
    ("softmax_cross_entropy", lambda a: ops.softmax_cross_entropy(a, _labels(6, 5)),
     [_rand(6, 5)]),
    ("standardize", lambda a: ops.standardize(a, -1), [_rand(4, 6)]),
    ("standardize_batch", lambda a: ops.standardize(a, (0,)), [_rand(6, 3)]),
    ("linear", lambda a, w, b: ops.linear(a, w, b),
     [_rand(2, 3, 4), _rand(4, 5, seed=1), _rand(5, seed=2)]),
    ("layer_norm", lambda a, w, b: ops.layer_norm(a, w, b),
     [_rand(2, 4, 6), _rand(6, seed=1), _rand(6, seed=2)]),
    ("batch_norm", lambda a, w, b: ops.batch_norm_train(a, w, b),
     [_rand(6, 3), _rand(3, seed=1), _rand(3, seed=2)]),
    ("batch_norm_nchw", lambda a, w, b: ops.batch_norm_train(a, w, b, (0, 2, 3)),
     [_rand(3, 2, 4, 4), _rand(2, seed=1), _rand(2, seed=2)]),
    ("getitem_basic", lambda a: a[1:, ::2], [_rand(3, 4)]),
    ("getitem_gather", lambda a: ops.getitem(a, np.array([0, 2, 0])), [_rand(3, 4)]),
    ("flip", lambda a: ops.flip(a, (0, 1)), [_rand(3, 4)]),
    ("pad", lambda a: ops.pad(a, ((1, 0), (0, 2))), [_rand(3, 4)]),
    ("dilate", lambda a: ops.dilate(a, (0, 1), 1), [_rand(3, 4)]),
    ("undilate", lambda a: ops.undilate(a, (1,), 1), [_rand(3, 4)]),
    ("stack", lambda a, b: ops.stack([a, b], 1), [_rand(3, 4), _rand(3, 4, seed=1)]),
    ("split", lambda a: ops.split(a, 1)[1] * ops.split(a, 1)[2], [_rand(3, 4)]),
    ("conv", lambda a, b: ops.conv(a, b, stride=2, padding=1),
     [_rand(2, 5, 5, 3), _rand(3, 3, 3, 4, seed=1)]),
    ("max_pool2d", lambda a: ops.max_pool2d(a, 2), [_rand(2, 3, 4, 4)]),
    ("avg_pool2d", lambda a: ops.avg_pool2d(a, 2, 1, 1), [_rand(2, 3, 4, 4)]),
    ("attention", lambda q, k, v: ops.scaled_dot_product_attention(q, k, v, is_causal=True),
     [_rand(2, 4, 3), _rand(2, 4, 3, seed=1), _rand(2, 4, 3, seed=2)]),
]


def _run(fn, arrays, dev, create_graph):
    xs = [ndl.Tensor(a, device=dev) for a in arrays]
    out = fn(*xs)
    weights = ndl.Tensor(_rand(*out.shape, seed=9), device=dev, requires_grad=False)
    (out * weights).sum().backward(create_graph=create_graph)
    return out, [x.grad for x in xs]


@pytest.mark.parametrize("dev", DEVICES)
@pytest.mark.parametrize("name,fn,arrays", OPS, ids=[o[0] for o in OPS])
def test_op_matches_cpu(dev, name, fn, arrays):
    if name == "attention" and not hasattr(ops, "scaled_dot_product_attention"):
        pytest.skip("ops.scaled_dot_product_attention not present")
    want, want_grads = _run(fn, arrays, CPU, True)
    for create_graph in (True, False):
        got, grads = _run(fn, arrays, dev, create_graph)
        assert got.device == dev and got.dtype == want.dtype
        _close(got.numpy(), want.numpy(), rtol=1e-4, atol=1e-5)
        for g, w in zip(grads, want_grads):
            assert g.device == dev
            _close(g.numpy(), w.numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dev", DEVICES)
def test_second_derivative_and_transfer_gradient(dev):
    x = ndl.Tensor(_rand(4), device=dev)
    y = ops.tanh(x).sum()
    y.backward()
    g = x.grad
    g.sum().backward()
    t = np.tanh(_rand(4))
    _close(x.grad.numpy(), -2 * t * (1 - t ** 2), rtol=1e-4)
    c = ndl.Tensor(_rand(3))  # cpu -> device -> cpu keeps the gradient path
    z = (c.to(dev) * 2.0).to(CPU).sum()
    z.backward()
    assert c.grad.device == CPU
    _close(c.grad.numpy(), np.full(3, 2.0))


# ---- fused kernels against the unfused ops ----------------------------------------------------

@pytest.mark.parametrize("dev", [pytest.param(CPU, id="cpu")] + DEVICES)
def test_softmax_cross_entropy_kernels(dev):
    z = _rand(16, 11) * 3
    y = np.random.default_rng(1).integers(0, 11, 16)
    zt = ndl.Tensor(z)
    loss = ops.softmax_cross_entropy(zt, ndl.Tensor(y.astype(np.float32), requires_grad=False))
    (loss * 1.7).backward()
    zd, yd = nd.array(z, device=dev), nd.array(y, dtype="int64", device=dev)
    got, lse = dev.softmax_cross_entropy_fwd(zd, yd)
    assert got.shape == () and got.dtype == np.float32
    _close(got.numpy(), loss.numpy())
    _close(lse.numpy(), ops.logsumexp(zt, (1,)).numpy())
    dz = dev.softmax_cross_entropy_bwd(zd, yd, lse, nd.array(1.7, device=dev))
    _close(dz.numpy(), zt.grad.numpy())
    dz = dev.softmax_cross_entropy_bwd(zd, yd, lse, 1.7)  # a Python scale works too
    _close(dz.numpy(), zt.grad.numpy())


@pytest.mark.parametrize("dev", [pytest.param(CPU, id="cpu")] + DEVICES)
@pytest.mark.parametrize("shape,affine", [((8, 37), True), ((2, 3, 64), True), ((5, 9), False)])
def test_layer_norm_kernels(dev, shape, affine):
    x = _rand(*shape) * 2 + 1
    dy = _rand(*shape, seed=5)
    d = shape[-1]
    w, b = (_rand(d, seed=2), _rand(d, seed=3)) if affine else (None, None)
    xt = ndl.Tensor(x)
    wt = ndl.Tensor(w) if affine else None
    bt = ndl.Tensor(b) if affine else None
    yt = nn.functional.layer_norm(xt, wt, bt, 1e-5)
    (yt * ndl.Tensor(dy, requires_grad=False)).sum().backward()

    def put(a):
        return None if a is None else nd.array(a, device=dev)

    y, mean, rstd = dev.layer_norm_fwd(put(x), put(w), put(b), 1e-5)
    assert mean.shape == shape[:-1] and rstd.shape == shape[:-1]
    _close(y.numpy(), yt.numpy(), rtol=1e-4, atol=1e-4)
    _close(mean.numpy(), x.mean(-1), rtol=1e-4, atol=1e-5)
    dx, dw, db = dev.layer_norm_bwd(put(dy), put(x), mean, rstd, put(w))
    _close(dx.numpy(), xt.grad.numpy(), rtol=1e-3, atol=1e-4)
    if affine:
        _close(dw.numpy(), wt.grad.numpy(), rtol=1e-3, atol=1e-4)
        _close(db.numpy(), bt.grad.numpy(), rtol=1e-4, atol=1e-4)
    else:
        assert dw is None and db is None


@pytest.mark.parametrize("dev", [pytest.param(CPU, id="cpu")] + DEVICES)
@pytest.mark.parametrize("affine", [True, False])
def test_batch_norm_kernels(dev, affine):
    n, c = 32, 7
    x = _rand(n, c) * 3 - 1
    dy = _rand(n, c, seed=5)
    w, b = _rand(c, seed=2), _rand(c, seed=3)
    xt, wt, bt = ndl.Tensor(x), ndl.Tensor(w), ndl.Tensor(b)
    rm, rv = ndl.Tensor(np.zeros(c, np.float32)), ndl.Tensor(np.ones(c, np.float32))
    yt = nn.functional.batch_norm(xt, rm, rv, wt if affine else None, bt if affine else None,
                                  True, 0.1, 1e-5)
    (yt * ndl.Tensor(dy, requires_grad=False)).sum().backward()

    def put(a):
        return None if a is None else nd.array(a, device=dev)

    y, mean, rstd, var = dev.batch_norm_fwd(put(x), put(w) if affine else None,
                                            put(b) if affine else None, 1e-5)
    _close(y.numpy(), yt.numpy(), rtol=1e-4, atol=1e-4)
    # the kernel updates nothing; the running averages come from the statistics it returns
    _close(0.1 * mean.numpy(), rm.numpy())
    _close(0.9 + 0.1 * var.numpy(), rv.numpy(), rtol=1e-4)
    dx, dw, db = dev.batch_norm_bwd(put(dy), put(x), mean, rstd, put(w) if affine else None)
    _close(dx.numpy(), xt.grad.numpy(), rtol=1e-3, atol=1e-4)
    if affine:
        _close(dw.numpy(), wt.grad.numpy(), rtol=1e-3, atol=1e-4)
        _close(db.numpy(), bt.grad.numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dev", [pytest.param(CPU, id="cpu")] + DEVICES)
@pytest.mark.parametrize("opt,wd", [(ndl.optim.Adam, 0.0), (ndl.optim.Adam, 0.1),
                                    (ndl.optim.AdamW, 0.1)])
def test_adam_kernel_matches_the_optimizer(dev, opt, wd):
    w0 = _rand(6, 5)
    grads = [_rand(6, 5, seed=s) for s in range(1, 4)]
    p = ndl.nn.Parameter(ndl.Tensor(w0))
    o = opt([p], lr=0.05, beta1=0.8, beta2=0.95, eps=1e-6, weight_decay=wd)
    w, m, v = (nd.array(a, device=dev) for a in (w0, w0 * 0, w0 * 0))
    for t, g in enumerate(grads, start=1):
        p.grad = ndl.Tensor(g)
        o.step()
        dev.adam_update(w, nd.array(g, device=dev), m, v, 0.05, 0.8, 0.95, 1e-6, t,
                        weight_decay=wd, decoupled=o.decoupled)
    _close(w.numpy(), p.numpy(), rtol=1e-5, atol=1e-6)
    _close(m.numpy(), o.state[p]["m"].numpy(), rtol=1e-5, atol=1e-6)
    _close(v.numpy(), o.state[p]["v"].numpy(), rtol=1e-5, atol=1e-6)


@needs_gpu
def test_gpu_kernels_fall_back_for_other_dtypes():
    z = nd.array(_rand(4, 3).astype(np.float64), dtype="float64", device=GPU)
    loss, lse = GPU.softmax_cross_entropy_fwd(z, nd.array([0, 1, 2, 0], dtype="int64",
                                                          device=GPU))
    assert loss.dtype == np.float64 and lse.dtype == np.float64


# ---- a training step on the device matches the same step on cpu() ---------------------------

def _train(dev, norm, opt, steps=3, create_graph=False):
    np.random.seed(0)
    model = MLPResNet(12, hidden_dim=16, num_blocks=2, num_classes=5, norm=norm, drop_prob=0.2,
                      device=dev)
    o = opt(model.parameters(), lr=0.01)
    rng = np.random.default_rng(0)
    losses, counts = [], []
    for _ in range(steps):
        x = ndl.Tensor(rng.standard_normal((8, 12)).astype(np.float32), device=dev)
        y = ndl.Tensor(rng.integers(0, 5, 8).astype(np.float32), device=dev)
        loss = nn.SoftmaxLoss()(model(x), y)
        o.reset_grad()
        loss.backward(create_graph=create_graph)
        o.step()
        losses.append(loss.numpy().item())
        del x, y, loss
        gc.collect()
        counts.append(ndl.autograd.TENSOR_COUNTER)
    return losses, [p.numpy() for p in model.parameters()], model, counts


# Adam with eps 1e-4: the Linear bias in front of a BatchNorm has a zero gradient in exact
# arithmetic, so its float32 gradient is rounding noise (~1e-9), which Adam with eps 1e-8
# turns into steps of +-lr; kernels that round differently from cpu() (the GPU's, the
# references') would then disagree by ~lr per step on that bias. eps 1e-4 keeps noise steps
# below 1e-4 lr while real gradients (~1e-2) still take Adam's steps.
def _adam(params, lr):
    return ndl.optim.Adam(params, lr=lr, eps=1e-4)


@pytest.mark.parametrize("dev", DEVICES)
@pytest.mark.parametrize("norm,opt,create_graph", [
    (nn.BatchNorm1d, _adam, False), (nn.LayerNorm1d, ndl.optim.SGD, True)])
def test_training_step_matches_cpu(dev, norm, opt, create_graph):
    want_losses, want_params, _, _ = _train(CPU, norm, opt, create_graph=create_graph)
    losses, params, model, counts = _train(dev, norm, opt, create_graph=create_graph)
    assert all(p.device == dev for p in model.parameters())
    _close(losses, want_losses, rtol=1e-4)
    for p, q in zip(params, want_params):
        _close(p, q, rtol=1e-4, atol=1e-5)
    assert counts[-1] == counts[-2]  # no Tensors kept alive from step to step


@pytest.mark.parametrize("dev", DEVICES)
def test_module_to_device(dev):
    model = nn.Linear(4, 3)
    x = _rand(2, 4)
    want = model(ndl.Tensor(x)).numpy()
    model.to(dev)
    assert all(p.device == dev for p in model.parameters())
    _close(model(ndl.Tensor(x, device=dev)).numpy(), want)


@needs_gpu
def test_no_memory_growth_over_training_steps():
    _train(GPU, nn.BatchNorm1d, ndl.optim.Adam, steps=2)
    GPU.synchronize()
    before = ndl.cuda.memory_stats()["allocated"]
    _train(GPU, nn.BatchNorm1d, ndl.optim.Adam, steps=5)
    GPU.synchronize()
    assert ndl.cuda.memory_stats()["allocated"] <= before


# ---- scripts/gpu_check.sh ---------------------------------------------------------------------

_SCRIPT = os.path.join(os.path.dirname(__file__), "..", "scripts", "gpu_check.sh")
not_inside_gpu_check = pytest.mark.skipif(bool(os.environ.get("NEEDLE_GPU_CHECK")),
                                          reason="running inside scripts/gpu_check.sh")


@not_inside_gpu_check
@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="this machine has a GPU")
def test_gpu_check_says_there_is_no_gpu(tmp_path):
    r = subprocess.run(["bash", _SCRIPT, str(tmp_path)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "no NVIDIA GPU" in (tmp_path / "report.md").read_text()


@pytest.mark.slow
@not_inside_gpu_check
def test_gpu_check_dry_run_passes_every_stage(tmp_path):
    r = subprocess.run(["bash", _SCRIPT, "--dry-run", str(tmp_path)], capture_output=True,
                       text=True, timeout=400)
    report = (tmp_path / "report.md").read_text()
    assert r.returncode == 0, report
    passed = re.search(r"pytest exit 0: (\d+) passed, 0 failed, 0 errors, (\d+) skipped", report)
    assert passed and int(passed.group(1)) > 100, report
    assert "memory check: PASS" in report and "ndl_softmax_ce_fwd" in report
    assert report.rstrip().splitlines()[-2].startswith("**PASS**")
