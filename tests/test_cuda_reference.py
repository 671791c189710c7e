"""The NumPy loop-for-loop references of the fused CUDA kernels (cuda_reference.py).

Without a GPU: each reference, block reduction included, matches the composed `Device` code
that `cuda()` falls back to (run over NumPy by `cuda.simulated()`), and PyTorch where it has
the op, at several block sizes and at shapes that take a partial warp, several steps of each
thread's strided loop and several row chunks. So the algorithm the kernels implement is the
composed ops' math. With a GPU (CuPy): each kernel of `CupyKernels` matches its reference
to float32 rounding (skipped elsewhere).
"""
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import needle as ndl
import needle.nn as nn
from needle import backend_ndarray as nd
from needle.backend_ndarray import cuda_reference as ref
from needle.backend_ndarray.cuda import CUDADevice
from needle.backend_ndarray.cuda_kernels import CupyKernels
from needle.backend_ndarray.cuda_sources import KERNELS, column_chunks
from needle.models import MLPResNet

# The composed Device code, what cuda() falls back to: the CUDA device's code over NumPy.
CPU = ndl.cuda.simulated()
GPU = ndl.cuda()
needs_gpu = pytest.mark.skipif(not GPU.enabled(), reason="needs CuPy and a CUDA GPU")


def _rand(*shape, seed=0, scale=1.0, shift=0.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale + shift).astype(
        np.float32)


def _close(a, b, rtol=1e-5, atol=1e-5):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=rtol, atol=atol)


def _cpu(*arrays):
    return [None if a is None else nd.array(a, device=CPU) for a in arrays]


def _np(*arrays):
    return [None if a is None else a.numpy() for a in arrays]


# ---- the block reduction ------------------------------------------------------------------

@pytest.mark.parametrize("threads", [32, 64, 96, 512, 1024])
def test_block_reduce_is_the_block_sum_and_max(threads):
    v = _rand(7, threads, seed=threads, scale=3.0)
    _close(ref.block_reduce(v, np.add, 0.0), v.astype(np.float64).sum(1), rtol=1e-5)
    np.testing.assert_array_equal(ref.block_reduce(v, np.fmax, -np.inf), v.max(1))
    ones = np.ones((2, threads), np.float32)  # every thread's value counted once
    np.testing.assert_array_equal(ref.block_reduce(ones, np.add, 0.0), [threads, threads])


def test_block_reduce_follows_the_butterfly_order():
    # float32 addition is not associative: 1e8 + 1 - 1e8 depends on the grouping. Lanes 0 and
    # 16 meet first (o = 16), so [1e8, 0 x 15, -1e8, 0 x 15] cancels before the 1.0 of lane 1
    # arrives, and the butterfly gives exactly 1.0 where a left-to-right sum gives 0.0.
    v = np.zeros((1, 32), np.float32)
    v[0, 0], v[0, 16], v[0, 1] = 1e8, -1e8, 1.0
    assert ref.block_reduce(v, np.add, 0.0)[0] == np.float32(1.0)
    assert np.float32(np.float32(1e8) + np.float32(1.0)) - np.float32(1e8) == 0.0


def test_column_chunks_cover_every_row():
    for rows in (0, 1, 63, 64, 65, 1000, 8192, 64 * 65535 + 1):
        per, chunks = column_chunks(rows)
        assert chunks <= 65535 and per * chunks >= rows and per * (chunks - 1) < max(rows, 1)


# ---- each kernel's reference against the composed Device code -------------------------------

@pytest.mark.parametrize("shape,block", [((16, 11), 512), ((5, 1500), 512), ((4, 300), 64),
                                         ((3, 2048), 1024)])
def test_softmax_ce_matches_the_composed_code_and_torch(shape, block):
    z = _rand(*shape, seed=1, scale=4.0, shift=30.0)
    z[0, : shape[1] // 2] = -np.inf  # masked logits: the max shift stays finite
    y = np.random.default_rng(2).integers(shape[1] // 2, shape[1], shape[0])
    loss, lse, rows = ref.softmax_ce_fwd(z, y, block=block)
    want_loss, want_lse = _np(*CPU.softmax_cross_entropy_fwd(*_cpu(z, y.astype(np.int64))))
    _close(loss, want_loss, rtol=1e-5)
    _close(lse, want_lse, rtol=1e-6)
    torch = pytest.importorskip("torch")
    tz = torch.tensor(z, requires_grad=True)
    tl = torch.nn.functional.cross_entropy(tz, torch.tensor(y), reduction="none")
    _close(rows, tl.detach().numpy(), rtol=1e-4, atol=1e-4)
    dz = ref.softmax_ce_bwd(z, y, lse, np.float32(1.7))
    want = CPU.softmax_cross_entropy_bwd(*_cpu(z, y.astype(np.int64), want_lse), 1.7).numpy()
    _close(dz, want, rtol=1e-5, atol=1e-7)
    (tl.mean() * 1.7).backward()
    _close(dz, tz.grad.numpy(), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("shape,block,affine", [((8, 37), 512, True), ((2, 3, 1500), 512, True),
                                                ((5, 200), 64, False), ((70, 96), 32, True)])
def test_layer_norm_matches_the_composed_code_and_torch(shape, block, affine):
    x = _rand(*shape, seed=3, scale=2.0, shift=1.0)
    dy = _rand(*shape, seed=4)
    d = shape[-1]
    w, b = (_rand(d, seed=5), _rand(d, seed=6)) if affine else (None, None)
    y, mean, rstd = ref.layer_norm_fwd(x, w, b, 1e-5, block=block)
    want_y, want_mean, want_rstd = _np(*CPU.layer_norm_fwd(*_cpu(x, w, b), 1e-5))
    _close(y, want_y, rtol=1e-4, atol=1e-5)
    _close(mean, want_mean, rtol=1e-5, atol=1e-6)
    _close(rstd, want_rstd, rtol=1e-5)
    dx, dw, db = ref.layer_norm_bwd(dy, x, mean, rstd, w, block=block)
    want = _np(*CPU.layer_norm_bwd(*_cpu(dy, x, want_mean, want_rstd, w)))
    _close(dx, want[0], rtol=1e-4, atol=1e-5)
    torch = pytest.importorskip("torch")
    tx = torch.tensor(x, requires_grad=True)
    tw = torch.tensor(w, requires_grad=True) if affine else None
    tb = torch.tensor(b, requires_grad=True) if affine else None
    torch.nn.functional.layer_norm(tx, (d,), tw, tb, 1e-5).backward(torch.tensor(dy))
    _close(dx, tx.grad.numpy(), rtol=1e-3, atol=1e-4)
    if affine:
        _close(dw, want[1], rtol=1e-4, atol=1e-4)
        _close(db, want[2], rtol=1e-5, atol=1e-5)
        _close(dw, tw.grad.numpy(), rtol=1e-3, atol=1e-4)
    else:
        assert dw is None and db is None and want[1] is None


@settings(max_examples=25, deadline=None)
@given(rows=st.integers(1, 9), d=st.integers(1, 700), warps=st.integers(1, 32),
       seed=st.integers(0, 2 ** 16))
def test_row_kernels_match_the_composed_code_at_random_shapes(rows, d, warps, seed):
    x = _rand(rows, d, seed=seed, scale=3.0, shift=0.5)
    dy, w = _rand(rows, d, seed=seed + 1), _rand(d, seed=seed + 2)
    block = 32 * warps
    y, mean, rstd = ref.layer_norm_fwd(x, w, None, 1e-5, block=block)
    want = _np(*CPU.layer_norm_fwd(*_cpu(x, w, None), 1e-5))
    _close(y, want[0], rtol=1e-4, atol=1e-4)
    _close(rstd, want[2], rtol=1e-4)
    dx = ref.layer_norm_bwd(dy, x, mean, rstd, w, block=block)[0]
    _close(dx, CPU.layer_norm_bwd(*_cpu(dy, x, mean, rstd, w))[0].numpy(), rtol=1e-3,
           atol=1e-3)
    labels = np.random.default_rng(seed).integers(0, d, rows)
    _, lse, _ = ref.softmax_ce_fwd(x, labels, block=block)
    _close(lse, CPU.softmax_cross_entropy_fwd(*_cpu(x, labels))[1].numpy(), rtol=1e-5,
           atol=1e-5)


@pytest.mark.parametrize("rows", [1, 64, 200])
def test_dot_xhat_sums_columns_over_row_chunks(rows):
    c = 9
    dy, x = _rand(rows, c, seed=7), _rand(rows, c, seed=8)
    mean_r, rstd_r = _rand(rows, seed=9), np.abs(_rand(rows, seed=10)) + 0.5
    mean_c, rstd_c = _rand(c, seed=11), np.abs(_rand(c, seed=12)) + 0.5
    f64 = np.float64
    want_r = np.einsum("ij,ij->j", dy.astype(f64), (x - mean_r[:, None]) * rstd_r[:, None])
    want_c = np.einsum("ij,ij->j", dy.astype(f64), (x - mean_c) * rstd_c)
    _close(ref.dot_xhat(dy, x, mean_r, rstd_r, True), want_r, rtol=1e-5, atol=1e-5)
    _close(ref.dot_xhat(dy, x, mean_c, rstd_c, False), want_c, rtol=1e-5, atol=1e-5)
    assert ref.dot_xhat(dy[:0], x[:0], mean_r[:0], rstd_r[:0], True).shape == (c,)


@pytest.mark.parametrize("affine", [True, False])
def test_batch_norm_matches_the_composed_code_and_torch(affine):
    n, c = 130, 7
    x, dy = _rand(n, c, seed=13, scale=3.0, shift=-1.0), _rand(n, c, seed=14)
    w, b = (_rand(c, seed=15), _rand(c, seed=16)) if affine else (None, None)
    y, mean, rstd, var = ref.batch_norm_fwd(x, w, b, 1e-5)
    want = _np(*CPU.batch_norm_fwd(*_cpu(x, w, b), 1e-5))
    for got, exp in zip((y, mean, rstd, var), want):
        _close(got, exp, rtol=1e-4, atol=1e-5)
    dx, dw, db = ref.batch_norm_bwd(dy, x, mean, rstd, w)
    want_b = _np(*CPU.batch_norm_bwd(*_cpu(dy, x, want[1], want[2], w)))
    _close(dx, want_b[0], rtol=1e-4, atol=1e-5)
    torch = pytest.importorskip("torch")
    tx = torch.tensor(x, requires_grad=True)
    tw = torch.tensor(w, requires_grad=True) if affine else None
    tb = torch.tensor(b, requires_grad=True) if affine else None
    torch.nn.functional.batch_norm(tx, None, None, tw, tb, True, 0.1, 1e-5).backward(
        torch.tensor(dy))
    _close(dx, tx.grad.numpy(), rtol=1e-3, atol=1e-4)
    if affine:
        _close(dw, want_b[1], rtol=1e-4, atol=1e-4)
        _close(db, want_b[2], rtol=1e-5, atol=1e-5)
    else:
        assert dw is None and db is None


@pytest.mark.parametrize("wd,decoupled", [(0.0, False), (0.1, False), (0.1, True)])
def test_adam_matches_the_composed_code(wd, decoupled):
    w, m, v = _rand(6, 5, seed=17), np.zeros((6, 5), np.float32), np.zeros((6, 5), np.float32)
    nw, nm, nv = _cpu(w, m, v)
    for step in range(1, 4):
        g = _rand(6, 5, seed=20 + step)
        w, m, v = ref.adam(w, g, m, v, 0.05, 0.8, 0.95, 1e-6, step, wd, decoupled)
        CPU.adam_update(nw, nd.array(g, device=CPU), nm, nv, 0.05, 0.8, 0.95, 1e-6, step,
                        weight_decay=wd, decoupled=decoupled)
    for got, want in zip((w, m, v), _np(nw, nm, nv)):
        _close(got, want, rtol=1e-5, atol=1e-6)


# ---- on a GPU: the device kernels against their references ----------------------------------

@pytest.fixture(scope="module")
def kernels():
    return CupyKernels(GPU.xp)


def _dev(*arrays):
    return [None if a is None else GPU.xp.asarray(a) for a in arrays]


def _host(*arrays):
    return [None if a is None else GPU.to_numpy(a) for a in arrays]


@needs_gpu
@pytest.mark.cuda
@pytest.mark.parametrize("shape", [(16, 11), (64, 4096), (3, 1500)])
def test_gpu_softmax_ce_matches_the_reference(kernels, shape):  # pragma: no cover
    z = _rand(*shape, seed=1, scale=4.0)
    y = np.random.default_rng(2).integers(0, shape[1], shape[0])
    loss, lse = _host(*kernels.softmax_cross_entropy_fwd(*_dev(z, y)))
    want_loss, want_lse, _ = ref.softmax_ce_fwd(z, y)
    _close(loss, want_loss, rtol=2e-6)
    _close(lse, want_lse, rtol=2e-6)
    dz, = _host(kernels.softmax_cross_entropy_bwd(*_dev(z, y, want_lse), 1.7))
    _close(dz, ref.softmax_ce_bwd(z, y, want_lse, 1.7), rtol=2e-6, atol=1e-8)


@needs_gpu
@pytest.mark.cuda
@pytest.mark.parametrize("shape", [(8, 37), (300, 1024), (2, 3, 1500)])
def test_gpu_layer_norm_matches_the_reference(kernels, shape):  # pragma: no cover
    x, dy = _rand(*shape, seed=3, scale=2.0, shift=1.0), _rand(*shape, seed=4)
    w, b = _rand(shape[-1], seed=5), _rand(shape[-1], seed=6)
    got = _host(*kernels.layer_norm_fwd(*_dev(x, w, b), 1e-5))
    want = ref.layer_norm_fwd(x, w, b, 1e-5)
    for g, e in zip(got, want):
        _close(g, e, rtol=1e-5, atol=1e-6)
    got = _host(*kernels.layer_norm_bwd(*_dev(dy, x, want[1], want[2], w)))
    for g, e in zip(got, ref.layer_norm_bwd(dy, x, want[1], want[2], w)):
        _close(g, e, rtol=1e-5, atol=1e-5)


@needs_gpu
@pytest.mark.cuda
@pytest.mark.parametrize("n,c", [(32, 7), (1024, 100), (70000, 3)])
def test_gpu_batch_norm_matches_the_reference(kernels, n, c):  # pragma: no cover
    x, dy = _rand(n, c, seed=13, scale=3.0), _rand(n, c, seed=14)
    w, b = _rand(c, seed=15), _rand(c, seed=16)
    got = _host(*kernels.batch_norm_fwd(*_dev(x, w, b), 1e-5))
    want = ref.batch_norm_fwd(x, w, b, 1e-5)
    for g, e in zip(got, want):
        _close(g, e, rtol=1e-5, atol=1e-5)
    got = _host(*kernels.batch_norm_bwd(*_dev(dy, x, want[1], want[2], w)))
    for g, e in zip(got, ref.batch_norm_bwd(dy, x, want[1], want[2], w)):
        _close(g, e, rtol=1e-4, atol=1e-4)


@needs_gpu
@pytest.mark.cuda
@pytest.mark.parametrize("decoupled", [False, True])
def test_gpu_adam_matches_the_reference(kernels, decoupled):  # pragma: no cover
    w, g = _rand(300, 70, seed=17), _rand(300, 70, seed=18)
    m, v = _rand(300, 70, seed=19) * 0.1, np.abs(_rand(300, 70, seed=20)) * 0.1
    dw, dm, dv = _dev(w, m, v)
    kernels.adam_update(dw, *_dev(g), dm, dv, 0.05, 0.8, 0.95, 1e-6, 3, 0.1, decoupled)
    for got, want in zip(_host(dw, dm, dv), ref.adam(w, g, m, v, 0.05, 0.8, 0.95, 1e-6, 3,
                                                     0.1, decoupled)):
        _close(got, want, rtol=1e-6, atol=1e-7)


# ---- cuda_kernels.py's launch code over a NumPy stand-in for CuPy ---------------------------

def _signature(name):
    """[(parameter name, NumPy type, is a pointer, is const)] of a kernel's C signature."""
    m = re.search(r"__global__ void " + name + r"\((.*?)\)\s*\{", KERNELS[name], re.S)
    out = []
    for p in m.group(1).split(","):
        words = p.replace("*", " * ").split()
        ctype = "long long" if "long" in words else ("float" if "float" in words else "int")
        out.append((words[-1], _NP_TYPES[ctype], "*" in words, words[0] == "const"))
    return out


_NP_TYPES = {"float": np.float32, "long long": np.int64, "int": np.int32}


def _emulate(name, grid, block, a):
    """Run kernel `name` with its named arguments `a` through the NumPy references."""
    t = block[0]
    if name == "ndl_softmax_ce_fwd":
        _, lse, rows = ref.softmax_ce_fwd(a["z"].reshape(grid[0], a["k"]), a["y"], block=t)
        a["lse"][...], a["loss"][...] = lse, rows
    elif name == "ndl_softmax_ce_bwd":
        z = a["z"].reshape(a["b"], a["k"])
        a["dz"][...] = ref.softmax_ce_bwd(z, a["y"], a["lse"], a["g"]).reshape(a["dz"].shape)
    elif name == "ndl_layer_norm_fwd":
        y, mu, rs = ref.layer_norm_fwd(a["x"].reshape(grid[0], a["d"]), a["w"], a["b"],
                                       a["eps"], block=t)
        a["out"][...] = y.reshape(a["out"].shape)
        a["mean"][...], a["rstd"][...] = mu.reshape(a["mean"].shape), rs.reshape(a["rstd"].shape)
    elif name == "ndl_layer_norm_bwd":
        d = a["d"]
        dx = ref.layer_norm_bwd(a["dy"].reshape(grid[0], d), a["x"].reshape(grid[0], d),
                                a["mean"], a["rstd"], a["w"], block=t)[0]
        a["dx"][...] = dx.reshape(a["dx"].shape)
    elif name == "ndl_dot_xhat_partial":
        rows, c = a["rows"], a["c"]
        assert (grid[0] * t >= c and column_chunks(rows) == (a["rows_per_chunk"], grid[1])
                and a["partial"].shape == (grid[1], c))
        a["partial"][...] = ref.dot_xhat_partial(a["dy"].reshape(rows, c),
                                                 a["x"].reshape(rows, c), a["mean"],
                                                 a["rstd"], bool(a["stats_per_row"]))
    elif name == "ndl_batch_norm_fwd":
        a["y"][...] = ref.batch_norm_normalize(a["x"], a["mean"], a["rstd"], a["w"], a["b"])
    elif name == "ndl_batch_norm_bwd":
        a["dx"][...] = ref.batch_norm_dx(a["dy"], a["x"], a["mean"], a["rstd"], a["w"],
                                         a["db"], a["dw"])
    elif name == "ndl_adam":
        a["w"][...], a["m"][...], a["v"][...] = ref.adam_kernel(
            a["w"], a["g"], a["m"], a["v"], a["lr_t"], a["b1"], a["b2"], a["inv_bc2"],
            a["eps"], a["wd"], a["keep"])
    else:
        raise AssertionError(f"no emulation for {name}")


class _RawKernel:
    """`cupy.RawKernel` over NumPy: checks a launch against the kernel's C signature (count,
    dtypes, contiguity, NumPy scalar types, block and grid limits), then emulates it."""

    launches: list = []

    def __init__(self, code, name):
        assert code == KERNELS[name]
        self.name, self.params = name, _signature(name)

    def __call__(self, grid, block, args):
        name = self.name
        assert len(args) == len(self.params), (name, len(args))
        assert len(block) == 1 and 32 <= block[0] <= 1024 and block[0] % 32 == 0, (name, block)
        assert all(isinstance(g, int) and g >= 1 for g in grid) and grid[1:2] <= (65535,)
        named = {}
        for (pname, ptype, pointer, const), arg in zip(self.params, args):
            if pointer:
                assert isinstance(arg, np.ndarray) and arg.dtype == ptype, (name, pname, arg)
                assert arg.flags.c_contiguous and (const or arg.flags.writeable), (name, pname)
            else:
                assert type(arg) is ptype, (name, pname, type(arg))
                arg = arg.item()
            named[pname] = arg
        _RawKernel.launches.append(name)
        _emulate(name, grid, block, named)


class _NumpyCupy:
    """The parts of CuPy that cuda_kernels.py uses, over NumPy."""

    RawKernel = _RawKernel

    def __getattr__(self, name):
        return getattr(np, name)


def _train(dev, norm, steps=3):
    np.random.seed(0)
    model = MLPResNet(12, hidden_dim=16, num_blocks=2, num_classes=5, norm=norm, drop_prob=0.2,
                      device=dev)
    # eps 1e-4: see _adam in test_cuda.py (the bias before a BatchNorm has a zero gradient)
    opt = ndl.optim.AdamW(model.parameters(), lr=0.01, eps=1e-4, weight_decay=0.01)
    rng = np.random.default_rng(0)
    losses = []
    for _ in range(steps):
        x = ndl.Tensor(rng.standard_normal((8, 12)).astype(np.float32), device=dev)
        y = ndl.Tensor(rng.integers(0, 5, 8).astype(np.float32), device=dev)
        loss = nn.SoftmaxLoss()(model(x), y)
        opt.reset_grad()
        loss.backward(create_graph=False)
        opt.step()
        losses.append(loss.numpy().item())
    return losses, [p.numpy() for p in model.parameters()]


@pytest.mark.parametrize("norm", [nn.BatchNorm1d, nn.LayerNorm1d])
def test_training_through_the_launch_code_matches_cpu(norm):
    """cuda.py's dispatch and every launch of cuda_kernels.py, with each kernel emulated by
    its reference: the same training steps as cpu()."""
    dev = CUDADevice(xp=np)
    dev._kernels = CupyKernels(_NumpyCupy())
    _RawKernel.launches = []
    want_losses, want_params = _train(ndl.cpu(), norm)
    losses, params = _train(dev, norm)
    _close(losses, want_losses, rtol=1e-4)
    for p, q in zip(params, want_params):
        _close(p, q, rtol=1e-4, atol=1e-5)
    kind = "ndl_batch_norm" if norm is nn.BatchNorm1d else "ndl_layer_norm"
    assert set(_RawKernel.launches) == {"ndl_softmax_ce_fwd", "ndl_softmax_ce_bwd", "ndl_adam",
                                        kind + "_fwd", kind + "_bwd", "ndl_dot_xhat_partial"}


@pytest.mark.parametrize("shape", [(3, 5, 40), (130, 7)])
def test_every_launch_matches_the_composed_code(shape):
    k = CupyKernels(_NumpyCupy())
    _RawKernel.launches = []
    x, dy = _rand(*shape, seed=1, scale=2.0), _rand(*shape, seed=2)
    w, b = _rand(shape[-1], seed=3), _rand(shape[-1], seed=4)
    for got, want in zip(k.layer_norm_fwd(x, w, b, 1e-5),
                         _np(*CPU.layer_norm_fwd(*_cpu(x, w, b), 1e-5))):
        _close(got, want, rtol=1e-4, atol=1e-5)
    _, mean, rstd = k.layer_norm_fwd(x, None, None, 1e-5)
    for weight in (w, None):
        got = k.layer_norm_bwd(dy, x, mean, rstd, weight)
        want = _np(*CPU.layer_norm_bwd(*_cpu(dy, x, mean, rstd, weight)))
        for g, e in zip(got, want):
            assert (g is None) == (e is None)
            if g is not None:
                _close(g, e, rtol=1e-4, atol=1e-4)
    z2, d2 = x.reshape(-1, shape[-1]), dy.reshape(-1, shape[-1])
    for weight, bias in ((w, b), (None, None)):
        got = k.batch_norm_fwd(z2, weight, bias, 1e-5)
        want = _np(*CPU.batch_norm_fwd(*_cpu(z2, weight, bias), 1e-5))
        for g, e in zip(got, want):
            _close(g, e, rtol=1e-4, atol=1e-5)
        got = k.batch_norm_bwd(d2, z2, got[1], got[2], weight)
        want = _np(*CPU.batch_norm_bwd(*_cpu(d2, z2, want[1], want[2], weight)))
        for g, e in zip(got, want):
            assert (g is None) == (e is None)
            if g is not None:
                _close(g, e, rtol=1e-4, atol=1e-4)
    y = np.random.default_rng(5).integers(0, shape[-1], z2.shape[0])
    loss, lse = k.softmax_cross_entropy_fwd(z2, y)
    want_loss, want_lse = _np(*CPU.softmax_cross_entropy_fwd(*_cpu(z2, y)))
    _close(loss, want_loss, rtol=1e-5)
    _close(lse, want_lse, rtol=1e-5)
    _close(k.softmax_cross_entropy_bwd(z2, y, lse, np.float32(0.5)),
           CPU.softmax_cross_entropy_bwd(*_cpu(z2, y, want_lse), 0.5).numpy(), atol=1e-7)
    assert set(_RawKernel.launches) == set(KERNELS) - {"ndl_adam"}
